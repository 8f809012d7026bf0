"""The single syscall entry point can be replaced by a fake (no root needed)."""

from __future__ import annotations

import ctypes
import errno
import struct

import pytest

from morpheus.kernel import KernelError, Map, MapType, use_backend
from morpheus.uapi import Cmd


class FakeKernel:
    """Enough of bpf() for one hash map: create, info, update, lookup."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.store: dict[bytes, bytes] = {}

    def __call__(self, cmd: int, attr: ctypes.Array) -> int:
        self.calls.append(cmd)
        raw = bytes(attr)
        if cmd == Cmd.MAP_CREATE:
            import os

            return os.open("/dev/null", os.O_RDONLY)
        if cmd == Cmd.OBJ_GET_INFO_BY_FD:
            _info_len, ptr = struct.unpack_from("<IQ", raw, 4)
            info = struct.pack("<6I", MapType.HASH, 77, 4, 4, 8, 0) + b"fake".ljust(16, b"\0")
            ctypes.memmove(ptr, info, len(info))
            return 0
        key_ptr, value_ptr = struct.unpack_from("<QQ", raw, 8)
        key = ctypes.string_at(key_ptr, 4)
        if cmd == Cmd.MAP_UPDATE_ELEM:
            self.store[key] = ctypes.string_at(value_ptr, 4)
            return 0
        if cmd == Cmd.MAP_LOOKUP_ELEM:
            if key not in self.store:
                raise OSError(errno.ENOENT, "not found")
            ctypes.memmove(value_ptr, self.store[key], 4)
            return 0
        raise OSError(errno.EINVAL, "unsupported in fake")


def test_map_logic_runs_against_a_fake_kernel() -> None:
    fake = FakeKernel()
    with use_backend(fake), Map.create(MapType.HASH, 4, 4, 8, name="fake") as m:
        assert m.id == 77
        m.update(3, b"abcd")
        assert m.lookup(3) == b"abcd"
        assert m.lookup(4) is None
        with pytest.raises(KernelError, match="delete element of map 'fake'"):
            m.delete(3)
    assert fake.calls[0] == Cmd.MAP_CREATE
