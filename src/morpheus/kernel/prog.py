"""Loading programs, reading their kernel info, and BPF_PROG_TEST_RUN."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..uapi import BPF_OBJ_NAME_LEN, Cmd, ProgType
from .errors import KernelError, VerifierError
from .fd import FD, OwnsFD, adopt
from .syscall import Attr, bpf, buffer

_PROG_INFO_SIZE = 232
_MAX_LOG = (1 << 30) - 1
_FIRST_LOG = 1 << 20


@dataclass(frozen=True, slots=True)
class ProgInfo:
    type: int
    id: int
    tag: str
    jited_len: int
    xlated_len: int
    map_ids: tuple[int, ...]
    name: str
    btf_id: int
    run_time_ns: int
    run_cnt: int
    verified_insns: int


@dataclass(frozen=True, slots=True)
class TestRunResult:
    """Result of BPF_PROG_TEST_RUN. `duration_ns` is the kernel's average per repetition."""

    retval: int
    duration_ns: int
    data: bytes | None
    ctx: bytes | None


def prog_info(fd: FD, *, with_map_ids: bool = True) -> ProgInfo:
    raw = buffer(_PROG_INFO_SIZE)
    attr = Attr().u32(0, fd.number).u32(4, _PROG_INFO_SIZE).pointer(8, raw)
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, "read program info")
    nr_map_ids = struct.unpack_from("<I", raw, 52)[0]
    map_ids: tuple[int, ...] = ()
    if with_map_ids and nr_map_ids:
        ids = buffer(4 * nr_map_ids)
        raw2 = buffer(_PROG_INFO_SIZE)
        struct.pack_into("<I", raw2, 52, nr_map_ids)
        struct.pack_into("<Q", raw2, 56, _address(ids))
        attr = Attr().u32(0, fd.number).u32(4, _PROG_INFO_SIZE).pointer(8, raw2)
        attr._keep.append(ids)
        bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, "read program map ids")
        map_ids = struct.unpack_from(f"<{nr_map_ids}I", ids, 0)
    ptype, pid = struct.unpack_from("<II", raw, 0)
    tag = bytes(raw[8:16]).hex()
    jited, xlated = struct.unpack_from("<II", raw, 16)
    name = bytes(raw[64:80]).split(b"\0", 1)[0].decode()
    (btf_id,) = struct.unpack_from("<I", raw, 128)
    run_time, run_cnt = struct.unpack_from("<QQ", raw, 192)
    (verified,) = struct.unpack_from("<I", raw, 216)
    return ProgInfo(
        ptype, pid, tag, jited, xlated, map_ids, name, btf_id, run_time, run_cnt, verified
    )


def _address(buf: object) -> int:
    import ctypes

    return ctypes.addressof(buf)  # type: ignore[arg-type]


def enable_run_stats() -> FD:
    """Turn on run-time statistics (prog_info run_cnt / run_time_ns) while the returned fd
    is open (BPF_ENABLE_STATS, BPF_STATS_RUN_TIME)."""
    return FD(bpf(Cmd.ENABLE_STATS, Attr().u32(0, 0), "enable program run-time statistics"),
              "stats")


def xlated_instructions(fd: FD) -> bytes:
    """The program as the kernel rewrote it (after verification), as raw bytecode."""
    info = prog_info(fd, with_map_ids=False)
    out = buffer(info.xlated_len)
    raw = buffer(_PROG_INFO_SIZE)
    struct.pack_into("<I", raw, 20, info.xlated_len)
    struct.pack_into("<Q", raw, 32, _address(out))
    attr = Attr().u32(0, fd.number).u32(4, _PROG_INFO_SIZE).pointer(8, raw)
    attr._keep.append(out)
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, "read translated instructions")
    return bytes(out[: info.xlated_len])


class LoadedProgram(OwnsFD):
    """A program the verifier accepted."""

    def __init__(self, fd: FD, name: str, prog_type: int) -> None:
        self.fd = fd
        self.name = name
        self.type = prog_type
        self.verifier_log = ""

    @classmethod
    def from_id(cls, prog_id: int) -> LoadedProgram:
        return cls._own(FD(
            bpf(Cmd.PROG_GET_FD_BY_ID, Attr().u32(0, prog_id), f"open program id {prog_id}"), "prog"
        ))

    @classmethod
    def from_pin(cls, path: str | Path) -> LoadedProgram:
        from .pin import obj_get

        return cls._own(obj_get(path, "prog"))

    @classmethod
    def from_fd(cls, fd: int) -> LoadedProgram:
        return cls._own(FD(os.dup(fd), "prog"))

    @classmethod
    def _own(cls, fd: FD) -> LoadedProgram:
        def build(owned: FD) -> LoadedProgram:
            info = prog_info(owned, with_map_ids=False)
            return cls(owned, info.name, info.type)

        return adopt(fd, build)

    def info(self) -> ProgInfo:
        return prog_info(self.fd)

    @property
    def tag(self) -> str:
        return prog_info(self.fd, with_map_ids=False).tag

    @property
    def id(self) -> int:
        return prog_info(self.fd, with_map_ids=False).id

    def xlated(self) -> bytes:
        return xlated_instructions(self.fd)

    def pin(self, path: str | Path) -> None:
        from .pin import obj_pin

        obj_pin(self.fd, path, f"program {self.name!r}")

    def test_run(self, data: bytes = b"", **kwargs: object) -> TestRunResult:
        """BPF_PROG_TEST_RUN on this program; see `test_run`."""
        return test_run(self.fd, data, **kwargs)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"LoadedProgram({self.name!r}, fd={self.fd})"


def load_program(
    bytecode: bytes,
    prog_type: ProgType | int,
    *,
    name: str = "",
    license: str = "GPL",
    expected_attach_type: int = 0,
    btf_fd: FD | None = None,
    func_info: Sequence[tuple[int, int]] = (),
    line_info: Sequence[tuple[int, int, int, int]] = (),
    prog_flags: int = 0,
    kern_version: int = 0,
    log_level: int = 0,
    attach_btf_id: int = 0,
    attach_prog_fd: FD | None = None,
    fd_array: Sequence[int] = (),
) -> LoadedProgram:
    """Load bytecode. On refusal, load again with a verifier log (growing the buffer until
    the whole log fits) and raise VerifierError carrying it.

    `fd_array` (attr fd_array) holds the fds a kfunc call's `off` indexes: module BTFs,
    index 0 unused, as libbpf passes them (without fd_array_cnt, so the kernel reads only
    the slots that kfunc calls name)."""
    insns = buffer(bytecode)
    lic = buffer(license.encode() + b"\0")
    fi = buffer(b"".join(struct.pack("<II", *rec) for rec in func_info)) if func_info else None
    li = buffer(b"".join(struct.pack("<IIII", *rec) for rec in line_info)) if line_info else None
    fds = buffer(struct.pack(f"<{len(fd_array)}i", *fd_array)) if fd_array else None

    def attempt(level: int, log_size: int) -> tuple[int, str, int]:
        log = buffer(log_size) if level else None
        attr = (
            Attr()
            .u32(0, int(prog_type))
            .u32(4, len(bytecode) // 8)
            .pointer(8, insns)
            .pointer(16, lic)
            .u32(24, level)
            .u32(28, log_size if level else 0)
            .pointer(32, log)
            .u32(40, kern_version)
            .u32(44, prog_flags)
            .bytes_at(48, name.encode()[: BPF_OBJ_NAME_LEN - 1])
            .u32(68, expected_attach_type)
            .u32(108, attach_btf_id)
        )
        if attach_prog_fd is not None:
            attr.u32(112, attach_prog_fd.number)
        if fds is not None:
            attr.pointer(120, fds)
        if btf_fd is not None:
            attr.u32(72, btf_fd.number)
            if fi is not None:
                attr.u32(76, 8).pointer(80, fi).u32(88, len(func_info))
            if li is not None:
                attr.u32(92, 16).pointer(96, li).u32(104, len(line_info))
        try:
            fd = bpf(Cmd.PROG_LOAD, attr, f"load program {name!r}")
            text = bytes(log).split(b"\0", 1)[0].decode(errors="replace") if log else ""
            return fd, text, 0
        except KernelError as exc:
            text = bytes(log).split(b"\0", 1)[0].decode(errors="replace") if log else ""
            true_size = attr.read_u32(140)
            if exc.errno == errno.ENOSPC and level:
                return -errno.ENOSPC, text, true_size
            return -(exc.errno or errno.EINVAL), text, true_size

    what = f"load {ProgType(prog_type).name.lower()} program {name!r} ({len(bytecode) // 8} insns)"
    fd, log, _ = attempt(log_level, _FIRST_LOG if log_level else 0)
    if fd >= 0:
        prog = LoadedProgram(FD(fd, "prog"), name, int(prog_type))
        prog.verifier_log = log
        return prog
    first_errno = -fd
    size = _FIRST_LOG
    truncated = False
    while True:
        level = log_level or 1
        fd, log, true_size = attempt(level, size)
        if fd >= 0:
            # Accepted with a log although refused without one: should not happen, but the
            # program is good, so keep it.
            prog = LoadedProgram(FD(fd, "prog"), name, int(prog_type))
            prog.verifier_log = log
            return prog
        if fd == -errno.ENOSPC and size < _MAX_LOG:
            size = min(_MAX_LOG, max(size * 4, true_size + 1))
            continue
        truncated = fd == -errno.ENOSPC
        break
    err = first_errno if first_errno != errno.ENOSPC else -fd
    raise VerifierError(err, what, log, truncated)


XDP_MD = struct.Struct("<6I")  # data, data_end, data_meta, ingress_ifindex, rx_queue, egress


def xdp_ctx(ingress_ifindex: int, frame_len: int) -> bytes:
    """An xdp_md for BPF_PROG_TEST_RUN: the frame arrives on `ingress_ifindex` (which must
    exist in the caller's network namespace)."""
    return XDP_MD.pack(0, frame_len, 0, ingress_ifindex, 0, 0)


def test_run(
    prog_fd: FD,
    data: bytes = b"",
    *,
    repeat: int = 1,
    ctx: bytes | None = None,
    data_out_size: int | None = None,
    ctx_out_size: int | None = None,
    flags: int = 0,
    cpu: int = 0,
    batch_size: int = 0,
) -> TestRunResult:
    """Run the program with BPF_PROG_TEST_RUN.

    By default the output packet buffer is as large as the input plus 256 bytes of
    headroom for encapsulation; pass data_out_size=0 (and no ctx out) for live-frames mode.
    """
    din = buffer(data) if data else None
    out_size = len(data) + 256 if data_out_size is None else data_out_size
    dout = buffer(out_size) if out_size else None
    cin = buffer(ctx) if ctx is not None else None
    cout_size = (len(ctx) if ctx is not None else 0) if ctx_out_size is None else ctx_out_size
    cout = buffer(cout_size) if cout_size else None
    attr = (
        Attr()
        .u32(0, prog_fd.number)
        .u32(8, len(data))
        .u32(12, out_size)
        .pointer(16, din)
        .pointer(24, dout)
        .u32(32, repeat)
        .u32(40, len(ctx) if ctx is not None else 0)
        .u32(44, cout_size)
        .pointer(48, cin)
        .pointer(56, cout)
        .u32(64, flags)
        .u32(68, cpu)
        .u32(72, batch_size)
    )
    bpf(
        Cmd.PROG_TEST_RUN,
        attr,
        "test run program",
        "XDP frames need at least 14 bytes; live frames need data_out/ctx_out unset",
    )
    retval = attr.read_u32(4)
    duration = attr.read_u32(36)
    data_len = attr.read_u32(12)
    ctx_len = attr.read_u32(44)
    out = bytes(dout[:data_len]) if dout is not None else None
    ctx_bytes = bytes(cout[:ctx_len]) if cout is not None else None
    return TestRunResult(retval, duration, out, ctx_bytes)


class TestRunner:
    """BPF_PROG_TEST_RUN of one program, one packet per call, with buffers allocated once.

    `test_run` builds its attr and buffers on every call; a checker running thousands of
    packets through two programs spends most of its time there. Frames up to `max_frame`
    bytes; the output buffer has `headroom` bytes more (encapsulation)."""

    def __init__(self, prog_fd: FD, *, max_frame: int = 9216, headroom: int = 256,
                 ctx_size: int = 0) -> None:
        self._fd = prog_fd
        self._din = buffer(max_frame)
        self._dout = buffer(max_frame + headroom)
        self._out_size = max_frame + headroom
        self._max = max_frame
        self._cin = buffer(ctx_size) if ctx_size else None
        self._cout = buffer(ctx_size) if ctx_size else None
        self._ctx_size = ctx_size
        self._attr = (Attr().u32(0, prog_fd.number).pointer(16, self._din)
                      .pointer(24, self._dout).u32(32, 1))
        self._cin_addr = ctypes.addressof(self._cin) if self._cin is not None else 0
        self._cout_addr = ctypes.addressof(self._cout) if self._cout is not None else 0

    def run(self, data: bytes, ctx: bytes | None = None) -> tuple[int, bytes]:
        """(return value, output bytes) of one run of `data` (and `ctx`, if given)."""
        if len(data) > self._max:
            raise ValueError(f"frame of {len(data)} bytes: the runner takes {self._max} at most")
        self._din[: len(data)] = data
        attr = self._attr.u32(8, len(data)).u32(12, self._out_size)
        if ctx is not None:
            if len(ctx) != self._ctx_size or self._cin is None:
                raise ValueError(f"context of {len(ctx)} bytes: the runner takes "
                                 f"{self._ctx_size}")
            self._cin[: len(ctx)] = ctx
            attr.u32(40, len(ctx)).u32(44, self._ctx_size)
            attr.u64(48, self._cin_addr).u64(56, self._cout_addr)
        else:  # no context at all: the kernel then makes one up (ingress: loopback)
            attr.u32(40, 0).u32(44, 0).u64(48, 0).u64(56, 0)
        bpf(Cmd.PROG_TEST_RUN, attr, "test run program",
            "XDP frames need at least 14 bytes")
        return attr.read_u32(4), bytes(self._dout[: attr.read_u32(12)])


__all__ = [
    "KernelError",
    "LoadedProgram",
    "ProgInfo",
    "TestRunResult",
    "TestRunner",
    "VerifierError",
    "load_program",
    "prog_info",
    "test_run",
    "xlated_instructions",
]
