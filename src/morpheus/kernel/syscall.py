"""The single entry point for bpf(2). Tests replace it with a fake through `use_backend`.

Attributes are passed as a mutable byte buffer laid out like `union bpf_attr`; pointers inside
it are addresses of ctypes buffers that the caller keeps alive for the duration of the call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..uapi import Cmd
from .errors import KernelError

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
ATTR_SIZE = 144

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long

Backend = Callable[[int, ctypes.Array], int]


def _real_bpf(cmd: int, attr: ctypes.Array) -> int:
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise OSError(f"bpf() syscall number unknown for {platform.machine()}")
    ret = _libc.syscall(ctypes.c_long(number), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


_backend: Backend = _real_bpf


@contextmanager
def use_backend(backend: Backend) -> Iterator[None]:
    """Route every bpf() call through `backend` (a fake for tests) inside the block."""
    global _backend
    previous = _backend
    _backend = backend
    try:
        yield
    finally:
        _backend = previous


class Attr:
    """A `union bpf_attr` being filled in, plus the buffers its pointers refer to."""

    __slots__ = ("_keep", "buf")

    def __init__(self, size: int = ATTR_SIZE) -> None:
        self.buf = ctypes.create_string_buffer(size)
        self._keep: list[object] = []

    def u32(self, offset: int, value: int) -> Attr:
        struct.pack_into("<I", self.buf, offset, value & 0xFFFFFFFF)
        return self

    def u64(self, offset: int, value: int) -> Attr:
        struct.pack_into("<Q", self.buf, offset, value & 0xFFFFFFFFFFFFFFFF)
        return self

    def bytes_at(self, offset: int, data: bytes) -> Attr:
        self.buf[offset : offset + len(data)] = data
        return self

    def pointer(self, offset: int, buffer: ctypes.Array | None) -> Attr:
        """Store the address of `buffer` (kept alive with this attr) at `offset`."""
        if buffer is None:
            return self.u64(offset, 0)
        self._keep.append(buffer)
        return self.u64(offset, ctypes.addressof(buffer))

    def read_u32(self, offset: int) -> int:
        return struct.unpack_from("<I", self.buf, offset)[0]

    def read_u64(self, offset: int) -> int:
        return struct.unpack_from("<Q", self.buf, offset)[0]


def bpf(cmd: Cmd, attr: Attr, operation: str, hint: str = "") -> int:
    """Call bpf(cmd, attr); raise KernelError naming `operation` on failure."""
    try:
        return _backend(int(cmd), attr.buf)
    except OSError as exc:
        raise KernelError(exc.errno or 0, operation, hint) from None


def buffer(data: bytes | bytearray | memoryview | int) -> ctypes.Array:
    """A ctypes byte buffer holding `data` (or `data` zero bytes if an int)."""
    if isinstance(data, int):
        return ctypes.create_string_buffer(data)
    raw = bytes(data)
    # Initialised in one copy: slice assignment copies byte by byte (1.5 s for 15 MB, the
    # trace of a 10,000-packet replay).
    return ctypes.create_string_buffer(raw or b"\0", len(raw) or 1)


def object_ids(cmd: Cmd, operation: str) -> Iterator[int]:
    """Ids of one kind of kernel BPF object, ascending, through a *_GET_NEXT_ID command
    (BTF_GET_NEXT_ID, LINK_GET_NEXT_ID, ...); ends where the kernel says ENOENT."""
    current = 0
    while True:
        attr = Attr().u32(0, current)
        try:
            bpf(cmd, attr, operation)
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise
        current = attr.read_u32(4)
        yield current
