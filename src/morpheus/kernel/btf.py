"""Uploading BTF blobs to the kernel, and reading the running kernel's BTF and configuration
(the one place that does: `obj` takes them as data)."""

from __future__ import annotations

import ctypes
import errno
import functools
import gc
import os
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..obj.btf import BTF
from ..obj.core import Target
from ..obj.errors import ObjectError
from ..uapi import Cmd
from .errors import BTFError, KernelError
from .fd import FD
from .kallsyms import Kallsyms, read_kallsyms
from .syscall import Attr, bpf, buffer, object_ids

_LOG_SIZE = 1 << 20


def load_btf(blob: bytes, *, what: str = "object BTF") -> FD:
    """Load a BTF blob; on refusal, retry with a log and raise BTFError carrying it."""
    data = buffer(blob)
    attr = Attr().pointer(0, data).u32(16, len(blob))
    try:
        return FD(bpf(Cmd.BTF_LOAD, attr, f"load {what}"), "btf")
    except KernelError as first:
        log = buffer(_LOG_SIZE)
        attr = (
            Attr().pointer(0, data).pointer(8, log).u32(16, len(blob)).u32(20, _LOG_SIZE).u32(24, 1)
        )
        try:
            return FD(bpf(Cmd.BTF_LOAD, attr, f"load {what}"), "btf")
        except KernelError:
            text = bytes(log).split(b"\0", 1)[0].decode(errors="replace")
            raise BTFError(first.errno or 0, f"load {what}", text) from None


# --- BTF objects in the kernel: vmlinux's, modules', programs' ----------------------------

_BTF_INFO_SIZE = 32  # struct bpf_btf_info: btf, btf_size, id, name, name_len, kernel_btf
_BTF_NAME_LEN = 64  # libbpf's buffer for a module name (MODULE_NAME_LEN is 56)


@dataclass(frozen=True, slots=True)
class BTFObjectInfo:
    """What BPF_OBJ_GET_INFO_BY_FD says about a BTF object. `kernel_btf` is true for the
    kernel's own (vmlinux) and its modules' BTF, whose `name` is the module's."""

    id: int
    name: str
    kernel_btf: bool


def btf_object_info(fd: FD) -> BTFObjectInfo:
    raw = buffer(_BTF_INFO_SIZE)
    name = buffer(_BTF_NAME_LEN)
    struct.pack_into("<QI", raw, 16, ctypes.addressof(name), _BTF_NAME_LEN)
    attr = Attr().u32(0, fd.number).u32(4, _BTF_INFO_SIZE).pointer(8, raw)
    attr._keep.append(name)
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, "read BTF object info")
    (btf_id,) = struct.unpack_from("<I", raw, 12)
    (kernel_btf,) = struct.unpack_from("<I", raw, 28)
    text = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return BTFObjectInfo(btf_id, text, bool(kernel_btf))


def btf_object_ids() -> Iterator[int]:
    """Ids of the BTF objects in the kernel, ascending (BPF_BTF_GET_NEXT_ID)."""
    return object_ids(Cmd.BTF_GET_NEXT_ID, "list the kernel's BTF objects")


def open_btf_object(btf_id: int) -> FD:
    """An fd of BTF object `btf_id` (BPF_BTF_GET_FD_BY_ID)."""
    return FD(bpf(Cmd.BTF_GET_FD_BY_ID, Attr().u32(0, btf_id), f"open BTF object {btf_id}"),
              "btf")


def kernel_btf_objects() -> list[BTFObjectInfo]:
    """The kernel's own BTF objects (vmlinux and every module with BTF), in id order: the
    order in which libbpf searches modules for a ksym."""
    out = []
    for btf_id in btf_object_ids():
        try:
            fd = open_btf_object(btf_id)
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                continue  # freed meanwhile (a program's BTF, an unloaded module)
            raise
        with fd:
            info = btf_object_info(fd)
        if info.kernel_btf:
            out.append(info)
    return out


class ModuleBTFMissing(KernelError):
    """A program needs the BTF of a kernel module that is not loaded (any more)."""


def open_module_btfs(names: Sequence[str]) -> dict[str, FD]:
    """Fds of the BTF objects of the kernel modules `names` (one walk over the kernel's
    BTF objects, as libbpf's load_module_btfs), to pass in a program's fd_array. The
    caller closes them; the kernel holds its own references once a program is loaded."""
    wanted = set(names)
    found: dict[str, FD] = {}
    try:
        for btf_id in btf_object_ids():
            if len(found) == len(wanted):
                break
            try:
                fd = open_btf_object(btf_id)
            except KernelError as exc:
                if exc.errno == errno.ENOENT:
                    continue
                raise
            try:
                info = btf_object_info(fd)
            except BaseException:
                fd.close()
                raise
            if info.kernel_btf and info.name in wanted and info.name not in found:
                found[info.name] = fd
            else:
                fd.close()
    except BaseException:
        for fd in found.values():
            fd.close()
        raise
    missing = [n for n in names if n not in found]
    if missing:
        for fd in found.values():
            fd.close()
        raise ModuleBTFMissing(
            errno.ENOENT, f"open BTF of kernel module(s) {', '.join(missing)}",
            "the program calls kfuncs or reads ksyms of these modules: load them (modprobe) "
            "before loading the program")
    return found


# --- the running kernel's type information and configuration, read once per process -------

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
SYS_BTF = Path("/sys/kernel/btf")


@functools.cache
def vmlinux_btf(path: str | None = None) -> BTF:
    """The kernel's BTF (or the BTF file at `path`), parsed once per process: over 100,000
    types, which take most of a second to parse in Python."""
    source = Path(path) if path is not None else VMLINUX_BTF
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ObjectError(f"{source}: cannot read BTF: {exc.strerror}") from None
    if data[:4] == b"\x7fELF":
        data = _btf_section_of_elf(source, data)
    try:
        return BTF(data)
    except ObjectError as exc:
        raise ObjectError(f"{source}: {exc}") from None


def _btf_section_of_elf(source: Path, data: bytes) -> bytes:
    """The .BTF section of an ELF file (a vmlinux image given with --btf)."""
    import io

    from elftools.elf.elffile import ELFFile

    try:
        section = ELFFile(io.BytesIO(data)).get_section_by_name(".BTF")
    except Exception as exc:  # pyelftools raises assorted errors on garbage
        raise ObjectError(f"{source}: not a BTF file or an ELF file with .BTF ({exc})") from None
    if section is None:
        raise ObjectError(f"{source}: ELF file without a .BTF section")
    return section.data()


@functools.cache
def module_btfs() -> tuple[tuple[str, BTF], ...]:
    """Split BTF of every loaded module with BTF (/sys/kernel/btf/<module>), in the order of
    their BTF object ids, as libbpf searches them for ksyms (by name where the kernel will
    not list its BTF objects)."""
    out = []
    if not SYS_BTF.is_dir():
        return ()
    entries = [e for e in SYS_BTF.iterdir() if e.name != "vmlinux"]
    if not entries:
        return ()
    try:
        order = {info.name: info.id for info in kernel_btf_objects()}
    except KernelError:
        order = {}
    for entry in sorted(entries, key=lambda e: (order.get(e.name, 1 << 32), e.name)):
        try:
            out.append((entry.name, BTF(entry.read_bytes(), base=vmlinux_btf())))
        except (OSError, ObjectError):
            continue  # a module unloaded meanwhile, or BTF we cannot read: not a candidate
    return tuple(out)


@functools.cache
def kernel_config() -> dict[str, str] | None:
    """CONFIG_* values of the running kernel from /proc/config.gz or
    /boot/config-$(uname -r); None if neither exists."""
    import gzip

    text = None
    try:
        text = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode(errors="replace")
    except OSError:
        try:
            text = Path(f"/boot/config-{os.uname().release}").read_text(errors="replace")
        except OSError:
            return None
    config = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.startswith("CONFIG_"):
            config[name.strip()] = value.strip()
    return config


def kernel_version_code(release: str | None = None) -> int:
    """KERNEL_VERSION(a, b, c) of the running kernel, as libbpf computes
    LINUX_KERNEL_VERSION (the patch level saturates at 255)."""
    release = release or os.uname().release
    parts = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if parts is None:
        return 0
    major, minor, patch = (int(p) if p else 0 for p in parts.groups())
    return (major << 16) + (minor << 8) + min(patch, 255)


class AmbiguousKsym(ObjectError):
    """A typeless __ksym names a symbol that /proc/kallsyms lists at two addresses."""


def _kallsyms() -> Kallsyms:
    try:
        return read_kallsyms()
    except OSError:
        return Kallsyms()


def kallsyms_address(name: str) -> int | None:
    """A kernel symbol's address (typeless __ksym externs); None if absent or hidden.

    Raises AmbiguousKsym when two symbols of that name have different addresses: libbpf
    refuses such an extern ("resolution is ambiguous") rather than pick one."""
    table = _kallsyms()
    if name in table.ambiguous:
        first, other = table.ambiguous[name]
        raise AmbiguousKsym(f"__ksym {name!r}: resolution is ambiguous: /proc/kallsyms lists "
                            f"it at {first:#x} and {other:#x} (two static symbols of that "
                            "name); libbpf refuses it too. Declare it with a type (BTF) or "
                            "use another symbol")
    return table.addresses.get(name) or None


def kallsyms_listed(name: str) -> bool:
    """Whether /proc/kallsyms names `name` at a visible address (for error messages)."""
    return bool(_kallsyms().addresses.get(name))


@functools.cache
def running_target(btf_path: str | None = None) -> Target:
    """What objects are read for on this machine: the kernel's BTF, module BTF, kconfig and
    version. With `btf_path`, CO-RE relocates against that BTF file instead (libbpf's
    btf_custom_path), while ksyms still resolve against the running kernel."""
    core_btf = vmlinux_btf(btf_path) if btf_path is not None else None
    try:
        btf = vmlinux_btf()
        modules = module_btfs()
    except ObjectError:
        if core_btf is None:
            raise
        btf, modules = core_btf, ()
    for parsed in (btf, core_btf, *(m for _, m in modules)):
        if parsed is not None:
            parsed.candidates("")  # build the CO-RE candidate index now, before freezing
    # Half a million long-lived tuples: left to the cyclic collector, every full collection
    # walks them all (it tripled the time to read an object). They never form cycles.
    gc.freeze()
    return Target(
        btf=btf,
        modules=modules,
        name="vmlinux",
        core_btf=core_btf,
        core_path=btf_path or "",
        kconfig=kernel_config(),
        kernel_version=kernel_version_code(),
        kallsyms=kallsyms_address,
    )
