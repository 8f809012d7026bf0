"""Uploading BTF blobs to the kernel."""

from __future__ import annotations

from ..uapi import Cmd
from .errors import BTFError, KernelError
from .fd import FD
from .syscall import Attr, bpf, buffer

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
