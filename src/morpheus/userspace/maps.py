"""User-space maps: the runtime's native tables, read and written from Python.

A `UserMap` owns one `struct rt_map` made by the runtime. Programs reach it through a
constant copy of its header compiled into their module; Python reaches it through the
runtime's management functions. Per-CPU maps hold one value per possible CPU, like the
kernel's, so their contents can be copied from and compared with kernel maps.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

from ..uapi import MapType
from .jit import engine

# Map types the runtime implements, and those whose value is a reference (fd in the kernel's
# API, a pointer here).
SUPPORTED = frozenset({
    MapType.HASH, MapType.ARRAY, MapType.PROG_ARRAY, MapType.PERCPU_HASH,
    MapType.PERCPU_ARRAY, MapType.LRU_HASH, MapType.LRU_PERCPU_HASH, MapType.LPM_TRIE,
    MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS, MapType.DEVMAP, MapType.DEVMAP_HASH,
    MapType.XSKMAP, MapType.CPUMAP, MapType.RINGBUF,
})
REFERENCE_TYPES = frozenset({MapType.PROG_ARRAY, MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS})
PER_CPU = frozenset({MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH})
ARRAYS = frozenset({MapType.ARRAY, MapType.PERCPU_ARRAY})

_VALUES_OFFSET = 48  # offsetof(struct rt_map, values)


class UserMapError(ValueError):
    """A map operation failed with the kernel's errno (`errno`), or the map type is not
    supported in user space."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class Env(ctypes.Structure):
    """struct rt_env: shared by the programs and maps of one data plane."""

    _fields_ = [("cpu", ctypes.c_uint32), ("ncpus", ctypes.c_uint32),
                ("prandom", ctypes.c_uint64), ("fake_time", ctypes.c_uint64)]


def _round8(n: int) -> int:
    return (n + 7) & ~7


class UserMap:
    """One native map. Keys and values are bytes (ints for array indexes), as `kernel.Map`."""

    def __init__(self, name: str, mtype: int, key_size: int, value_size: int,
                 max_entries: int, flags: int, env: Env, *, ncpus: int) -> None:
        mtype = MapType(mtype)
        if mtype not in SUPPORTED:
            raise UserMapError(f"map {name}: type {mtype.name.lower()} is not supported by the "
                               "user-space backend")
        self.name = name
        self.type = mtype
        self.key_size = key_size
        self.value_size = value_size  # as the kernel's API sees it (fds are 4 bytes)
        self.max_entries = max_entries
        self.flags = flags
        self.ncpus = ncpus if mtype in PER_CPU else 1
        self._env = env
        native_size = 8 if mtype in REFERENCE_TYPES else value_size
        self.native_value_size = native_size
        self._stride = _round8(native_size)
        api = engine().api
        self._api = api
        self.address = api["rt_map_new"](int(mtype), key_size, native_size, max_entries, flags,
                                          ctypes.addressof(env))
        if not self.address:
            raise UserMapError(f"map {name}: out of memory creating {max_entries} entries")
        self.header = ctypes.string_at(self.address, api["rt_header_size"]())
        self.values_address = int.from_bytes(self.header[_VALUES_OFFSET:_VALUES_OFFSET + 8],
                                             "little")
        self._out = ctypes.create_string_buffer(self._stride * self.ncpus)
        self._keybuf = ctypes.create_string_buffer(max(key_size, 4))
        self.referenced: dict[bytes, object] = {}  # keeps inner maps / programs alive

    def close(self) -> None:
        if self.address:
            self._api["rt_map_free"](self.address)
            self.address = 0

    def __repr__(self) -> str:
        return f"UserMap({self.name!r}, {self.type.name.lower()}, {self.max_entries})"

    # --- keys and values ------------------------------------------------------------------
    def _key(self, key: bytes | int) -> bytes:
        if isinstance(key, int):
            key = key.to_bytes(self.key_size, "little")
        if len(key) != self.key_size:
            raise UserMapError(f"map {self.name}: key of {len(key)} bytes, expected "
                               f"{self.key_size}")
        return bytes(key)

    def _decode(self, raw: bytes) -> bytes | list[bytes]:
        if self.type in REFERENCE_TYPES:
            return raw[:8]
        if self.ncpus > 1 or self.type in PER_CPU:
            return [raw[c * self._stride:c * self._stride + self.value_size]
                    for c in range(self.ncpus)]
        return raw[: self.value_size]

    def _encode(self, value: bytes | list[bytes]) -> bytes:
        if self.type in PER_CPU:
            values = value if isinstance(value, list) else [bytes(value)] * self.ncpus
            if len(values) != self.ncpus:
                raise UserMapError(f"map {self.name}: {len(values)} per-CPU values, expected "
                                   f"{self.ncpus}")
            return b"".join(bytes(v).ljust(self._stride, b"\0") for v in values)
        assert isinstance(value, bytes | bytearray)
        if len(value) != self.native_value_size:
            raise UserMapError(f"map {self.name}: value of {len(value)} bytes, expected "
                               f"{self.native_value_size}")
        return bytes(value).ljust(self._stride, b"\0")

    # --- operations -----------------------------------------------------------------------
    def lookup(self, key: bytes | int) -> bytes | list[bytes] | None:
        rc = self._api["rt_map_read"](self.address, self._key(key), self._out)
        if rc:
            return None
        return self._decode(self._out.raw)

    def update(self, key: bytes | int, value: bytes | list[bytes], flags: int = 0) -> None:
        if self.type in REFERENCE_TYPES:
            raise UserMapError(f"map {self.name}: holds references; use set_reference")
        self._write(key, self._encode(value), flags)

    def _write(self, key: bytes | int, raw: bytes, flags: int) -> None:
        rc = self._api["rt_map_write"](self.address, self._key(key), raw, flags)
        if rc:
            raise UserMapError(f"map {self.name}: update failed (errno {-rc})", -rc)

    def set_reference(self, key: bytes | int, target: object, address: int) -> None:
        """Point a prog-array slot at a program's entry, or a map-of-maps slot at a map."""
        if self.type not in REFERENCE_TYPES:
            raise UserMapError(f"map {self.name}: is not a prog array or map of maps")
        k = self._key(key)
        self._write(k, address.to_bytes(8, "little"), 0)
        self.referenced[k] = target

    def reference(self, key: bytes | int) -> object | None:
        return self.referenced.get(self._key(key)) if self.lookup(key) is not None else None

    def delete(self, key: bytes | int) -> None:
        k = self._key(key)
        rc = self._api["rt_map_remove"](self.address, k)
        if rc:
            raise UserMapError(f"map {self.name}: delete failed (errno {-rc})", -rc)
        self.referenced.pop(k, None)

    def clear(self) -> None:
        self._api["rt_map_clear"](self.address)
        self.referenced.clear()

    def items(self) -> Iterator[tuple[bytes, bytes | list[bytes]]]:
        if self.type == MapType.RINGBUF:
            return
        key = ctypes.create_string_buffer(max(self.key_size, 4))
        value = ctypes.create_string_buffer(self._stride * self.ncpus)
        slot = self._api["rt_map_slot"]
        for pos in range(self.max_entries):
            rc = slot(self.address, pos, key, value)
            if rc < 0:
                break
            if rc:
                yield key.raw[: self.key_size], self._decode(value.raw)

    def contents(self) -> dict[bytes, bytes | list[bytes]]:
        if self.type in ARRAYS:
            return {n.to_bytes(4, "little"): v for n, v in enumerate(self.array_values())}
        return dict(self.items())

    def array_values(self) -> list[bytes | list[bytes]]:
        """Every value of an array, read in one copy (large arrays: the Maglev ring)."""
        blob = ctypes.string_at(self.values_address, self.max_entries * self._stride * self.ncpus)
        step = self._stride * self.ncpus
        return [self._decode(blob[n * step:(n + 1) * step]) for n in range(self.max_entries)]

    def kernel_layout_size(self) -> int:
        """Bytes per entry in the kernel's batch layout (per-CPU: 8-byte aligned copies)."""
        return self._stride * self.ncpus if self.type in PER_CPU else self.value_size

    def array_raw(self) -> bytes:
        """All values of an array in the kernel's batch layout, index order."""
        step = self._stride * self.ncpus
        blob = ctypes.string_at(self.values_address, self.max_entries * step)
        size = self.kernel_layout_size()
        if size == step:
            return blob
        return b"".join(blob[n * step:n * step + size] for n in range(self.max_entries))

    def load_array_raw(self, raw: bytes) -> None:
        """Write all values of an array from the kernel's batch layout."""
        step = self._stride * self.ncpus
        size = self.kernel_layout_size()
        if len(raw) != size * self.max_entries:
            raise UserMapError(f"map {self.name}: {len(raw)} bytes for {self.max_entries} "
                               f"entries of {size}")
        if size != step:
            pad = b"\0" * (step - size)
            raw = b"".join(raw[n * size:(n + 1) * size] + pad for n in range(self.max_entries))
        ctypes.memmove(self.values_address, raw, len(raw))

    def load_array(self, values: list[tuple[bytes, bytes | list[bytes]]]) -> None:
        """Write many array entries at once ((index, value) pairs as the kernel's batch
        lookup returns them)."""
        step = self._stride * self.ncpus
        blob = bytearray(ctypes.string_at(self.values_address, self.max_entries * step))
        for key, value in values:
            index = int.from_bytes(key[:4], "little")
            if index < self.max_entries:
                blob[index * step:(index + 1) * step] = self._encode(value)
        ctypes.memmove(self.values_address, bytes(blob), len(blob))

    def __len__(self) -> int:
        return sum(1 for _ in self.items())
