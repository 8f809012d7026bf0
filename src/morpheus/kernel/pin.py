"""Pinning kernel objects on bpffs and opening pinned ones."""

from __future__ import annotations

from pathlib import Path

from ..uapi import Cmd
from .fd import FD
from .syscall import Attr, bpf, buffer


def obj_pin(fd: FD, path: str | Path, what: str) -> None:
    """Pin `fd` at `path` (which must be on a bpffs mount, e.g. /sys/fs/bpf)."""
    raw = buffer(str(path).encode() + b"\0")
    attr = Attr().pointer(0, raw).u32(8, fd.number)
    bpf(
        Cmd.OBJ_PIN,
        attr,
        f"pin {what} at {path}",
        "the directory must exist on a bpffs mount and the path must be free",
    )


def obj_get(path: str | Path, kind: str) -> FD:
    """Open the object pinned at `path`."""
    raw = buffer(str(path).encode() + b"\0")
    attr = Attr().pointer(0, raw)
    return FD(bpf(Cmd.OBJ_GET, attr, f"open pinned {kind} {path}"), kind)


def is_bpffs(path: str | Path) -> bool:
    """True if `path` lies on a mounted bpf filesystem."""
    import os

    BPF_FS_MAGIC = 0xCAFE4A11
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(120)
        if libc.statfs(os.fsencode(str(path)), buf) != 0:
            return False
        return int.from_bytes(bytes(buf[:8]), "little") == BPF_FS_MAGIC
    except OSError:
        return False
