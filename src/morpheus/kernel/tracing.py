"""Tracing attachments and the facts about the running kernel that tracing programs need.

- `attach_raw_tracepoint`: attach a BPF_PROG_TYPE_RAW_TRACEPOINT program to a raw tracepoint
  (`sys_enter`, `sys_exit`, ...) with BPF_RAW_TRACEPOINT_OPEN. The kernel hands back a link
  file descriptor: closing it (or `Link.detach`) detaches the program.
- `kernel_symbol`: the address of one symbol from /proc/kallsyms.
- `KernelLayout`: byte offsets of struct members, read from the kernel's own BTF
  (/sys/kernel/btf/vmlinux), so that generated programs walk kernel structures without
  offsets hard-coded for one kernel build.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..obj.btf import BTF, Kind
from ..obj.errors import ObjectError
from ..uapi import Cmd
from .errors import KernelError
from .fd import FD
from .kallsyms import KALLSYMS, read_kallsyms
from .link import Link
from .prog import LoadedProgram
from .syscall import Attr, bpf, buffer, object_ids

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
LOCKDOWN = Path("/sys/kernel/security/lockdown")

# BPF_RAW_TRACEPOINT_OPEN from <linux/bpf.h>; not (yet) a member of uapi.Cmd.
CMD_RAW_TRACEPOINT_OPEN = Cmd.RAW_TRACEPOINT_OPEN

# The bpf() syscall as seen by the raw syscall tracepoints: the native number, and the number
# a 32-bit (ia32 compat) caller uses. x86_64 only for the compat number.
SYSCALL_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
SYSCALL_BPF_COMPAT = {"x86_64": 357}


class KernelFactError(LookupError):
    """A fact about the running kernel (a symbol address, a struct member) is unavailable."""


def bpf_syscall_numbers(machine: str | None = None) -> tuple[int, int | None]:
    """(native, compat-or-None) numbers of bpf() on this machine."""
    arch = machine or platform.machine()
    if arch not in SYSCALL_BPF:
        raise KernelFactError(f"bpf() syscall number unknown for {arch}")
    return SYSCALL_BPF[arch], SYSCALL_BPF_COMPAT.get(arch)


def attach_raw_tracepoint(prog: LoadedProgram, tracepoint: str) -> Link:
    """Attach `prog` (BPF_PROG_TYPE_RAW_TRACEPOINT) to the raw tracepoint `tracepoint`.

    Returns the link that owns the attachment: closing its last file descriptor detaches.
    """
    name = buffer(tracepoint.encode() + b"\0")
    attr = Attr().pointer(0, name).u32(8, prog.fd.number)
    fd = bpf(
        CMD_RAW_TRACEPOINT_OPEN,
        attr,
        f"attach program {prog.name!r} to raw tracepoint {tracepoint!r}",
        "ENOENT means no such tracepoint; EPERM means not root or a kernel lockdown",
    )
    return Link(FD(fd, "link"))


LINK_TYPE_RAW_TRACEPOINT = 1
_LINK_INFO_SIZE = 64


@dataclass(frozen=True, slots=True)
class RawTracepointAttachment:
    """A program attached to a raw tracepoint, by any process."""

    link_id: int
    prog_id: int
    tracepoint: str


def raw_tracepoint_attachments() -> list[RawTracepointAttachment]:
    """Every raw tracepoint link on the machine (diagnostics: another tracer on `sys_enter`
    slows every syscall, ours included)."""
    found: list[RawTracepointAttachment] = []
    for current in object_ids(Cmd.LINK_GET_NEXT_ID, "list links"):
        try:
            fd = FD(bpf(Cmd.LINK_GET_FD_BY_ID, Attr().u32(0, current), "open link"), "link")
        except KernelError as exc:
            if exc.errno == errno.ENOENT:  # gone since it was listed
                continue
            raise
        with fd:
            info, name = buffer(_LINK_INFO_SIZE), buffer(128)
            struct.pack_into("<QI", info, 16, ctypes.addressof(name), len(name))
            attr = Attr().u32(0, fd.number).u32(4, _LINK_INFO_SIZE).pointer(8, info)
            attr._keep.append(name)
            bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, "read link info")
        link_type, link_id, prog_id = struct.unpack_from("<III", info, 0)
        if link_type == LINK_TYPE_RAW_TRACEPOINT:
            tracepoint = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
            found.append(RawTracepointAttachment(link_id, prog_id, tracepoint))
    return found


def kernel_symbol(name: str, *, kallsyms: Path = KALLSYMS) -> int:
    """The address of the kernel (not module) symbol `name` from /proc/kallsyms.

    Raises KernelFactError if the symbol is absent or its address is hidden (kptr_restrict,
    or not root: the file then shows zeros).
    """
    try:
        table = read_kallsyms(kallsyms)
    except OSError as exc:
        raise KernelFactError(f"cannot read {kallsyms}: {exc.strerror}") from None
    address = table.vmlinux.get(name)
    if address is None:
        raise KernelFactError(f"kernel symbol {name!r} is not in {kallsyms}")
    if address == 0:
        raise KernelFactError(
            f"the address of kernel symbol {name!r} is hidden (kernel.kptr_restrict, or not root)"
        )
    return address


def lockdown_mode(path: Path = LOCKDOWN) -> str | None:
    """The active kernel lockdown mode ("none", "integrity", "confidentiality"), None if
    securityfs is not mounted or lockdown is not built in."""
    try:
        text = path.read_text()
    except OSError:
        return None
    found = re.search(r"\[(\w+)\]", text)
    return found.group(1) if found else None


@dataclass(frozen=True, slots=True)
class Field:
    """Where a struct member lives: byte offset and size."""

    offset: int
    size: int


class KernelLayout:
    """Struct member offsets of the running kernel, from its BTF.

    `field("task_struct", "files")` finds members also inside anonymous structs and unions,
    and refuses bitfields (a program cannot load them with one instruction).
    """

    def __init__(self, btf: BTF) -> None:
        self.btf = btf

    @classmethod
    def running(cls, path: Path = VMLINUX_BTF) -> KernelLayout:
        """The layout of the running kernel (parses /sys/kernel/btf/vmlinux, ~0.3-1 s)."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KernelFactError(
                f"cannot read the kernel's BTF at {path} ({exc.strerror}); the kernel needs "
                "CONFIG_DEBUG_INFO_BTF"
            ) from None
        try:
            return cls(BTF(data))
        except ObjectError as exc:
            raise KernelFactError(f"cannot parse the kernel's BTF at {path}: {exc}") from None

    def field(self, struct: str, member: str) -> Field:
        t = self.btf.find(Kind.STRUCT, struct) or self.btf.find(Kind.UNION, struct)
        if t is None:
            raise KernelFactError(f"the kernel's BTF has no struct {struct}")
        found = self._search(t.id, member, 0)
        if found is None:
            raise KernelFactError(f"struct {struct} of this kernel has no member {member!r}")
        return found

    def fields(self, struct: str, members: Iterable[str]) -> dict[str, Field]:
        return {m: self.field(struct, m) for m in members}

    def _search(self, type_id: int, member: str, base_bits: int) -> Field | None:
        t = self.btf.skip_modifiers(type_id)
        for m in t.members:
            # With kind_flag set, the top 8 bits of a member's offset hold its bitfield size.
            bits = m.offset & 0xFFFFFF if t.kind_flag else m.offset
            bitfield = (m.offset >> 24) if t.kind_flag else 0
            if m.name == member:
                if bitfield or (base_bits + bits) % 8:
                    raise KernelFactError(f"member {member!r} is a bitfield")
                return Field((base_bits + bits) // 8, self.btf.size_of(m.type))
            if not m.name:
                inner = self.btf.skip_modifiers(m.type)
                if inner.kind in (Kind.STRUCT, Kind.UNION):
                    found = self._search(inner.id, member, base_bits + bits)
                    if found is not None:
                        return found
        return None


__all__ = [
    "CMD_RAW_TRACEPOINT_OPEN",
    "Field",
    "KernelFactError",
    "KernelLayout",
    "RawTracepointAttachment",
    "attach_raw_tracepoint",
    "bpf_syscall_numbers",
    "kernel_symbol",
    "lockdown_mode",
    "raw_tracepoint_attachments",
]
