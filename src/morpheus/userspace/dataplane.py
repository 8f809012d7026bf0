"""A user-space data plane: native maps, JIT-compiled programs, frames run through them.

Safety comes from the kernel: `UserDataPlane.load` first loads the program into the kernel
(against kernel maps of the same layout) so the verifier judges it, closes it without ever
attaching it, and only then lifts and compiles it. A program the verifier refuses never runs
here.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Self

from ..ir import Program
from ..kernel import Map, possible_cpus
from ..obj import MapSpec, ObjectSpec, ProgramSpec
from ..uapi import MapType, ProgType
from .jit import CompiledModule, compile_module, engine, fresh_symbol
from .lift import LiftRequest, MapBinding, lift
from .maps import ARRAYS, REFERENCE_TYPES, SUPPORTED, Env, UserMap, UserMapError

FRAME_SLOT = 4096
HEADROOM = 256
TAILROOM = 320
MAX_FRAME = FRAME_SLOT - HEADROOM - TAILROOM  # the longest frame a program here can get
_MAP_32BIT = 0x40
_PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE
_MAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_32BIT

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)


class UserspaceError(RuntimeError):
    """The user-space backend cannot run this program (the message says why)."""


class XdpContext(ctypes.Structure):
    """struct rt_xdp: struct xdp_md (32-bit pointers) followed by what the helpers need."""

    _fields_ = [("data", ctypes.c_uint32), ("data_end", ctypes.c_uint32),
                ("data_meta", ctypes.c_uint32), ("ingress_ifindex", ctypes.c_uint32),
                ("rx_queue_index", ctypes.c_uint32), ("egress_ifindex", ctypes.c_uint32),
                ("hard_start", ctypes.c_uint64), ("hard_end", ctypes.c_uint64),
                ("env", ctypes.c_void_p), ("tail_calls", ctypes.c_uint32),
                ("redirect_kind", ctypes.c_uint32), ("redirect_map", ctypes.c_uint64),
                ("redirect_key", ctypes.c_uint32), ("redirect_ifindex", ctypes.c_uint32),
                ("redirect_flags", ctypes.c_uint64)]


class LowMemory:
    """Memory mapped below 2 GiB (MAP_32BIT), where packet frames must live."""

    def __init__(self, size: int) -> None:
        self.size = size
        address = _libc.mmap(None, size, _PROT_RW, _MAP_FLAGS, -1, 0)
        if address in (None, ctypes.c_void_p(-1).value) or address >= 1 << 32:
            raise UserspaceError(f"cannot map {size} bytes below 4 GiB for packet frames "
                                 f"(errno {ctypes.get_errno()})")
        self.address: int = address

    def close(self) -> None:
        if self.address:
            _libc.munmap(self.address, self.size)
            self.address = 0


@dataclass(frozen=True, slots=True)
class FrameResult:
    """What one frame did: the program's return value, the packet after it, the redirect."""

    retval: int
    data: bytes
    redirect_ifindex: int | None = None
    redirect_map: str | None = None
    redirect_key: int | None = None


@dataclass
class UserProgram:
    """A verified, compiled program. `compile_ms` is the JIT time (lift + LLVM)."""

    name: str
    program: Program
    compiled: CompiledModule
    lift_ms: float
    lift_cpu_ms: float
    maps_used: frozenset[str]

    @property
    def entry_address(self) -> int:
        return self.compiled.entry_address

    @property
    def jit_ms(self) -> float:
        """Wall-clock time from Program to native code (lift, LLVM optimization, codegen)."""
        return self.lift_ms + self.compiled.compile_ms

    @property
    def jit_cpu_ms(self) -> float:
        """The same in CPU time: what it costs without the machine's other load."""
        return self.lift_cpu_ms + self.compiled.compile_cpu_ms

    def close(self) -> None:
        self.compiled.close()


@dataclass
class UserDataPlane:
    """Native maps of one object plus the programs compiled against them."""

    spec: ObjectSpec | None
    env: Env
    maps: dict[str, UserMap] = field(default_factory=dict)
    programs: list[UserProgram] = field(default_factory=list)
    unsupported: dict[str, str] = field(default_factory=dict)  # map name → its type
    _frames: LowMemory | None = None
    _ctx: XdpContext = field(default_factory=XdpContext)

    @classmethod
    def create(cls, spec: ObjectSpec | None = None, *, cpu: int = 0,
               extra_maps: Mapping[str, MapSpec] | None = None) -> Self:
        """Maps for every map of `spec` (and `extra_maps`), with their initial data."""
        env = Env(cpu=cpu, ncpus=possible_cpus(), prandom=0x9E3779B97F4A7C15, fake_time=0)
        plane = cls(spec, env)
        try:
            for name, mspec in {**(spec.maps if spec else {}), **(extra_maps or {})}.items():
                if mspec.type not in SUPPORTED:
                    # Only an error for a program that uses it (see _check_maps).
                    plane.unsupported[name] = mspec.type.name.lower()
                    continue
                plane.maps[name] = plane.create_map(name, mspec)
            plane._frames = LowMemory(FRAME_SLOT)
        except BaseException:
            plane.close()
            raise
        return plane

    def create_map(self, name: str, mspec: MapSpec) -> UserMap:
        m = UserMap(name, mspec.type, mspec.key_size, mspec.value_size, mspec.max_entries,
                    mspec.flags, self.env, ncpus=self.env.ncpus)
        if mspec.data is not None and any(mspec.data):
            m.update(0, mspec.data)
        return m

    def close(self) -> None:
        for prog in self.programs:
            prog.close()
        self.programs.clear()
        for m in self.maps.values():
            for inner in m.referenced.values():
                if isinstance(inner, UserMap):
                    inner.close()
            m.close()
        self.maps.clear()
        if self._frames is not None:
            self._frames.close()
            self._frames = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- programs -------------------------------------------------------------------------
    def compile(self, program: Program, *, name: str | None = None) -> UserProgram:
        """Lift and compile `program` against this plane's maps. Does NOT verify: use `load`
        unless the kernel has accepted this exact program already."""
        import time

        started = time.perf_counter()
        started_cpu = time.thread_time()
        symbol = fresh_symbol()
        used = frozenset(i.reference for i in program.insns
                         if i.is_map_load and i.reference is not None)
        bindings = {}
        for ref in used:
            if ref not in self.maps:
                raise UserspaceError(f"program {program.name}: map {ref!r} is not in the "
                                     "user-space data plane")
            m = self.maps[ref]
            bindings[ref] = MapBinding(m.header, m.values_address, int(m.type))
        text = lift(LiftRequest(program, bindings, ctypes.addressof(self.env),
                                engine().helpers, symbol))
        lift_ms = (time.perf_counter() - started) * 1000
        lift_cpu_ms = (time.thread_time() - started_cpu) * 1000
        compiled = compile_module(text, symbol)
        prog = UserProgram(name or program.name, program, compiled, lift_ms, lift_cpu_ms, used)
        self.programs.append(prog)
        return prog

    def load(self, pspec: ProgramSpec, kernel_maps: Mapping[str, Map], *,
             program: Program | None = None, btf_fd: object = None) -> UserProgram:
        """Verify `program` (default: the spec's) in the kernel against `kernel_maps`, then
        compile it. Raises the kernel's VerifierError when it is refused."""
        from ..loader import load_program_spec

        if pspec.type != ProgType.XDP:
            raise UserspaceError(f"program {pspec.name}: the user-space backend runs XDP "
                                 f"programs only, not {pspec.type.name.lower()}")
        program = program or pspec.program
        self._check_maps(program)
        self.check_helpers(program)
        verified = load_program_spec(pspec, kernel_maps, program=program,
                                     btf_fd=btf_fd)  # type: ignore[arg-type]
        verified.close()
        return self.compile(program, name=pspec.name)

    def check_helpers(self, program: Program) -> None:
        """Raise UnsupportedHelper for the first helper the runtime lacks (before the kernel
        spends time verifying a program we cannot run)."""
        from ..ir.helpers import HELPER_NAMES
        from .lift import UnsupportedHelper

        helpers = engine().helpers
        for index, insn in enumerate(program.insns):
            if insn.is_helper_call and insn.imm != 12:
                name = HELPER_NAMES[insn.imm] if 0 <= insn.imm < len(HELPER_NAMES) else ""
                if f"rt_helper_{name}" not in helpers:
                    raise UnsupportedHelper(program.name, index, insn.imm)

    def _check_maps(self, program: Program) -> None:
        for insn in program.insns:
            if insn.is_map_load and insn.reference in self.unsupported:
                raise UserspaceError(
                    f"program {program.name}: map {insn.reference!r} is a "
                    f"{self.unsupported[insn.reference]} map, which the user-space backend "
                    "does not implement")
            if insn.is_map_load and insn.reference not in self.maps:
                raise UserspaceError(f"program {program.name}: map {insn.reference!r} has no "
                                     "user-space counterpart")

    def set_program(self, prog_array: str, index: int, program: UserProgram) -> None:
        self.maps[prog_array].set_reference(index, program, program.entry_address)

    def set_inner_map(self, outer: str, key: bytes | int, inner: UserMap) -> None:
        self.maps[outer].set_reference(key, inner, inner.address)

    # --- running --------------------------------------------------------------------------
    def run(self, program: UserProgram, frame: bytes, ingress_ifindex: int = 1) -> FrameResult:
        """Run one frame through `program` (one native call; for tests and checks)."""
        assert self._frames is not None
        if len(frame) > MAX_FRAME:
            raise UserspaceError(f"frame of {len(frame)} bytes does not fit a frame slot")
        ctx = self._ctx
        api = engine().api
        retval = api["rt_run_frame"](program.entry_address, ctypes.addressof(ctx),
                                     self._frames.address, frame, len(frame), ingress_ifindex,
                                     ctypes.addressof(self.env))
        data = ctypes.string_at(ctx.data, ctx.data_end - ctx.data)
        result = FrameResult(retval & 0xFFFFFFFF, data)
        if ctx.redirect_kind == 1:
            result = FrameResult(result.retval, data, redirect_ifindex=ctx.redirect_ifindex)
        elif ctx.redirect_kind == 2:
            name = next((n for n, m in self.maps.items() if m.address == ctx.redirect_map),
                        None)
            result = FrameResult(result.retval, data, redirect_map=name,
                                 redirect_key=ctx.redirect_key)
        return result

    # --- state ----------------------------------------------------------------------------
    def copy_from_kernel(self, kernel_maps: Mapping[str, Map],
                         names: list[str] | None = None,
                         snapshot: Mapping[str, object] | None = None
                         ) -> None:
        """Make the user-space maps hold what the kernel maps hold (prog arrays excepted:
        their slots name kernel programs, fill them with `set_program`). `snapshot` (from
        `kernel_snapshot`) saves reading the kernel maps again."""
        for name in names if names is not None else list(self.maps):
            if name not in kernel_maps:
                continue
            mine, theirs = self.maps[name], kernel_maps[name]
            if mine.type in (MapType.PROG_ARRAY, MapType.RINGBUF):
                continue
            for inner in mine.referenced.values():
                if isinstance(inner, UserMap):
                    inner.close()
            mine.clear()
            if mine.type in REFERENCE_TYPES:
                self._copy_map_of_maps(name, mine, theirs)
                continue
            if mine.type in ARRAYS:
                raw = (snapshot[name] if snapshot is not None and name in snapshot
                       else read_array_raw(theirs))
                mine.load_array_raw(raw)  # type: ignore[arg-type]
                continue
            entries = (snapshot[name] if snapshot is not None and name in snapshot
                       else read_entries(theirs))
            for key, value in entries:
                mine.update(key, value)  # type: ignore[arg-type]

    def _copy_map_of_maps(self, name: str, mine: UserMap, theirs: Map) -> None:
        mspec = self.spec.maps.get(name) if self.spec is not None else None
        if mspec is None or mspec.inner is None:
            raise UserMapError(f"map {name}: no inner map template to copy into")
        for key, value in theirs.items():
            inner_id = int.from_bytes(bytes(value)[:4], "little")  # type: ignore[arg-type]
            with Map.from_id(inner_id) as kernel_inner:
                inner = self.create_map(f"{name}.inner", mspec.inner)
                for k, v in kernel_inner.items():
                    inner.update(k, v)
            mine.set_reference(key, inner, inner.address)


def read_entries(m: Map) -> list[tuple[bytes, object]]:
    """All entries of a kernel map, by batch lookup where the map type has it."""
    from ..kernel import KernelError

    try:
        return [(bytes(k), v) for k, v in m.lookup_batch(4096)]
    except KernelError:
        return [(bytes(k), v) for k, v in m.items()]


def read_array_raw(m: Map) -> bytes:
    """An array's values in index order, as the batch lookup returns them (one bytes object:
    the Maglev ring of the load balancer has 262,000 entries)."""
    size = m._value_buf_size  # the kernel layer's per-entry size in batch buffers
    parts = []
    for count, _keys, values in m._batches(4096):
        parts.append(bytes(values[:count * size]))
    return b"".join(parts)


def kernel_snapshot(kernel_maps: Mapping[str, Map], names: list[str]) -> dict[str, object]:
    """The entries of the named value maps (not prog arrays, maps of maps, ring buffers):
    arrays as `read_array_raw` bytes, other maps as (key, value) lists."""
    out: dict[str, object] = {}
    for name in names:
        m = kernel_maps.get(name)
        if m is None:
            continue
        mtype = MapType(m.info.type)
        if mtype in (REFERENCE_TYPES | {MapType.RINGBUF}):
            continue
        out[name] = read_array_raw(m) if mtype in ARRAYS else read_entries(m)
    return out
