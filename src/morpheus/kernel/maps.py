"""BPF maps: create, look up, update, delete, iterate, batch operations, freeze, pin."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..uapi import BPF_OBJ_NAME_LEN, Cmd, MapFlags, MapType, UpdateFlags
from .errors import KernelError
from .fd import FD, OwnsFD, adopt
from .syscall import Attr, bpf, buffer

# What a map without batch operations answers BPF_MAP_LOOKUP_BATCH with (524: ENOTSUPP).
_NO_BATCH_ERRNOS = frozenset({errno.EINVAL, errno.EOPNOTSUPP, 524})

_INFO_SIZE = 88


class HasFD(Protocol):
    @property
    def fd(self) -> FD: ...


@functools.cache
def possible_cpus() -> int:
    """Number of possible CPUs: the kernel sizes per-CPU map values by it."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


@dataclass(frozen=True, slots=True)
class MapInfo:
    type: MapType
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str
    btf_id: int
    map_extra: int


def map_info(fd: FD) -> MapInfo:
    raw = buffer(_INFO_SIZE)
    attr = Attr().u32(0, fd.number).u32(4, _INFO_SIZE).pointer(8, raw)
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, "read map info")
    t, mid, ks, vs, me, fl = struct.unpack_from("<6I", raw, 0)
    name = bytes(raw[24:40]).split(b"\0", 1)[0].decode()
    (btf_id,) = struct.unpack_from("<I", raw, 64)
    (extra,) = struct.unpack_from("<Q", raw, 80)
    try:
        mtype = MapType(t)
    except ValueError:
        mtype = MapType.UNSPEC
    return MapInfo(mtype, mid, ks, vs, me, fl, name, btf_id, extra)


def _name_bytes(name: str) -> bytes:
    raw = name.encode()[: BPF_OBJ_NAME_LEN - 1]
    return raw


Value = bytes | bytearray | int | HasFD | Sequence[bytes]


class Map(OwnsFD):
    """A live BPF map. Keys and values are bytes; integer keys are packed as little-endian
    u32 (array indices). Per-CPU maps return one bytes value per possible CPU."""

    def __init__(self, fd: FD, info: MapInfo, name: str | None = None) -> None:
        self.fd = fd
        self.info = info
        self.name = name or info.name
        self.type = info.type
        self.key_size = info.key_size
        self.value_size = info.value_size
        self.max_entries = info.max_entries
        self.flags = info.flags
        self._per_cpu = info.type.is_per_cpu
        self._stride = (info.value_size + 7) & ~7
        self._value_buf_size = self._stride * possible_cpus() if self._per_cpu else info.value_size

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        map_type: MapType | int,
        key_size: int,
        value_size: int,
        max_entries: int,
        *,
        flags: int = 0,
        name: str = "",
        inner_map: Map | None = None,
        btf_fd: FD | None = None,
        btf_key_type_id: int = 0,
        btf_value_type_id: int = 0,
        map_extra: int = 0,
    ) -> Map:
        mtype = MapType(map_type)
        attr = (
            Attr()
            .u32(0, mtype)
            .u32(4, key_size)
            .u32(8, value_size)
            .u32(12, max_entries)
            .u32(16, flags)
            .bytes_at(28, _name_bytes(name))
            .u64(64, map_extra)
        )
        if inner_map is not None:
            attr.u32(20, inner_map.fd.number)
        if btf_fd is not None and (btf_key_type_id or btf_value_type_id):
            attr.u32(48, btf_fd.number).u32(52, btf_key_type_id).u32(56, btf_value_type_id)
        what = (
            f"create {mtype.name.lower()} map {name!r} (key {key_size} B, value "
            f"{value_size} B, {max_entries} entries, flags {flags:#x})"
        )
        return cls._own(FD(bpf(Cmd.MAP_CREATE, attr, what, _create_hint(mtype)), "map"),
                        name or None)

    @classmethod
    def _own(cls, fd: FD, name: str | None = None) -> Map:
        return adopt(fd, lambda owned: cls(owned, map_info(owned), name))

    @classmethod
    def from_fd(cls, fd: int | FD, name: str | None = None) -> Map:
        """Adopt a duplicate of an existing map fd (the caller keeps its own)."""
        import os

        number = fd.number if isinstance(fd, FD) else fd
        return cls._own(FD(os.dup(number), "map"), name)

    @classmethod
    def from_id(cls, map_id: int) -> Map:
        attr = Attr().u32(0, map_id)
        return cls._own(FD(bpf(Cmd.MAP_GET_FD_BY_ID, attr, f"open map id {map_id}"), "map"))

    @classmethod
    def from_pin(cls, path: str | Path) -> Map:
        from .pin import obj_get

        return cls._own(obj_get(path, "map"))

    def pin(self, path: str | Path) -> None:
        from .pin import obj_pin

        obj_pin(self.fd, path, f"map {self.name!r}")

    def __repr__(self) -> str:
        return (
            f"Map({self.name!r}, {self.type.name}, key={self.key_size}, "
            f"value={self.value_size}, max={self.max_entries}, id={self.info.id})"
        )

    @property
    def id(self) -> int:
        return self.info.id

    @property
    def per_cpu(self) -> bool:
        return self._per_cpu

    # --- element operations ----------------------------------------------------------------

    def _key(self, key: bytes | bytearray | int) -> ctypes.Array:
        if isinstance(key, int):
            if self.key_size != 4:
                raise TypeError(f"map {self.name!r}: integer keys need a 4-byte key size")
            key = struct.pack("<I", key)
        if len(key) != self.key_size:
            raise ValueError(
                f"map {self.name!r}: key is {len(key)} bytes, the map's key size is {self.key_size}"
            )
        return buffer(key)

    def _value(self, value: Value) -> ctypes.Array:
        if hasattr(value, "fd") and isinstance(value.fd, FD):  # type: ignore[union-attr]
            value = value.fd.number  # type: ignore[union-attr]
        if isinstance(value, int):
            value = value.to_bytes(self.value_size, "little", signed=value < 0)
        if self._per_cpu:
            if isinstance(value, (bytes, bytearray)):
                values: Sequence[bytes] = [bytes(value)] * possible_cpus()
            else:
                values = list(value)  # type: ignore[arg-type]
            if len(values) != possible_cpus():
                raise ValueError(f"map {self.name!r}: need {possible_cpus()} per-CPU values")
            raw = b"".join(self._check_value(v).ljust(self._stride, b"\0") for v in values)
            return buffer(raw)
        return buffer(self._check_value(value))  # type: ignore[arg-type]

    def _check_value(self, value: bytes | bytearray) -> bytes:
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"map {self.name!r}: value must be bytes, not {type(value).__name__}")
        if len(value) != self.value_size:
            raise ValueError(
                f"map {self.name!r}: value is {len(value)} bytes, the map's value size is "
                f"{self.value_size}"
            )
        return bytes(value)

    def _decode_value(self, raw: ctypes.Array | bytes) -> bytes | list[bytes]:
        data = bytes(raw[: self._value_buf_size])
        if self._per_cpu:
            return [data[i : i + self.value_size] for i in range(0, len(data), self._stride)]
        return data

    def lookup(self, key: bytes | int) -> bytes | list[bytes] | None:
        """The value for `key`, None if absent. Per-CPU maps give a list, one per CPU."""
        kbuf = self._key(key)
        vbuf = buffer(self._value_buf_size)
        attr = Attr().u32(0, self.fd.number).pointer(8, kbuf).pointer(16, vbuf)
        try:
            bpf(Cmd.MAP_LOOKUP_ELEM, attr, f"look up element of map {self.name!r}")
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return self._decode_value(vbuf)

    def __getitem__(self, key: bytes | int) -> bytes | list[bytes]:
        value = self.lookup(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: bytes | int, value: Value) -> None:
        self.update(key, value)

    def __delitem__(self, key: bytes | int) -> None:
        self.delete(key)

    def __contains__(self, key: bytes | int) -> bool:
        return self.lookup(key) is not None

    def update(self, key: bytes | int, value: Value, flags: int = UpdateFlags.ANY) -> None:
        """Insert or replace. Values may be bytes, an int (packed to the value size, e.g. an
        fd), an object with an `fd` (program or map), or per-CPU a list of bytes."""
        kbuf = self._key(key)
        vbuf = self._value(value)
        attr = Attr().u32(0, self.fd.number).pointer(8, kbuf).pointer(16, vbuf).u64(24, flags)
        bpf(
            Cmd.MAP_UPDATE_ELEM,
            attr,
            f"update element of map {self.name!r}",
            _update_hint(self.type),
        )

    def delete(self, key: bytes | int) -> None:
        """Remove `key`; KeyError if it is absent."""
        kbuf = self._key(key)
        attr = Attr().u32(0, self.fd.number).pointer(8, kbuf)
        try:
            bpf(Cmd.MAP_DELETE_ELEM, attr, f"delete element of map {self.name!r}")
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                raise KeyError(key) from None
            raise

    def lookup_and_delete(self, key: bytes | int | None = None) -> bytes | list[bytes] | None:
        """Pop `key` (or, for queues and stacks, the next element); None if absent."""
        vbuf = buffer(self._value_buf_size)
        attr = Attr().u32(0, self.fd.number).pointer(16, vbuf)
        if key is not None:
            attr.pointer(8, self._key(key))
        try:
            bpf(
                Cmd.MAP_LOOKUP_AND_DELETE_ELEM,
                attr,
                f"look up and delete element of map {self.name!r}",
            )
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return self._decode_value(vbuf)

    def next_key(self, key: bytes | int | None) -> bytes | None:
        """The key after `key` (the first key if None); None at the end."""
        nbuf = buffer(self.key_size)
        attr = Attr().u32(0, self.fd.number).pointer(16, nbuf)
        if key is not None:
            attr.pointer(8, self._key(key))
        try:
            bpf(Cmd.MAP_GET_NEXT_KEY, attr, f"iterate map {self.name!r}")
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return bytes(nbuf[: self.key_size])

    def keys(self) -> Iterator[bytes]:
        key = self.next_key(None)
        while key is not None:
            yield key
            key = self.next_key(key)

    def __iter__(self) -> Iterator[bytes]:
        return self.keys()

    def items(self) -> Iterator[tuple[bytes, bytes | list[bytes]]]:
        """(key, value) pairs; keys deleted while iterating are skipped."""
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    # --- batch operations ------------------------------------------------------------------

    def lookup_batch(
        self, batch_size: int = 256, *, delete: bool = False
    ) -> Iterator[tuple[bytes, bytes | list[bytes]]]:
        """All entries, fetched `batch_size` at a time with BPF_MAP_LOOKUP_BATCH."""
        cmd = Cmd.MAP_LOOKUP_AND_DELETE_BATCH if delete else Cmd.MAP_LOOKUP_BATCH
        vsize = self._value_buf_size
        ksize = self.key_size
        for count, keys, values in self._batches(batch_size, cmd):
            # One copy of each buffer per batch: slicing the ctypes arrays entry by entry
            # (and a buffer per value) cost ~40 µs an entry, seconds per table compared.
            kraw, vraw = keys.raw[: count * ksize], values.raw[: count * vsize]
            for i in range(count):
                yield (kraw[i * ksize : (i + 1) * ksize],
                       self._decode_value(vraw[i * vsize : (i + 1) * vsize]))

    def _batches(self, batch_size: int, cmd: Cmd = Cmd.MAP_LOOKUP_BATCH
                 ) -> Iterator[tuple[int, ctypes.Array, ctypes.Array]]:
        """A batch lookup command run over the whole map: each step's entry count, keys and
        values, in buffers reused from step to step (consume a step before the next). A map
        type without batch operations refuses the first step with one of _NO_BATCH_ERRNOS."""
        token_size = max(self.key_size, 4)
        in_tok = None
        out_tok = buffer(token_size)
        keys = buffer(self.key_size * batch_size)
        values = buffer(self._value_buf_size * batch_size)
        while True:
            attr = (Attr().pointer(0, in_tok).pointer(8, out_tok).pointer(16, keys)
                    .pointer(24, values).u32(32, batch_size).u32(36, self.fd.number))
            done = False
            try:
                bpf(cmd, attr, f"batch look up map {self.name!r}")
            except KernelError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                done = True
            count = attr.read_u32(32)
            if count:
                yield count, keys, values
            if done or count == 0:
                return
            in_tok = buffer(bytes(out_tok[:token_size]))

    def update_batch(
        self, entries: Iterable[tuple[bytes | int, Value]], flags: int = UpdateFlags.ANY
    ) -> int:
        """Write many entries with one BPF_MAP_UPDATE_BATCH call; returns how many."""
        pairs = list(entries)
        if not pairs:
            return 0
        keys = b"".join(k if isinstance(k, bytes) and len(k) == self.key_size
                        else struct.pack("<I", k) if isinstance(k, int) and self.key_size == 4
                        else bytes(self._key(k)[: self.key_size]) for k, _ in pairs)
        # Plain values of the right size go in as they are: a ctypes buffer per entry costs
        # ~25 µs, which made filling a 1M-slot ring take tens of seconds.
        plain = not self._per_cpu
        values = b"".join(v if plain and isinstance(v, bytes) and len(v) == self.value_size
                          else bytes(self._value(v)[: self._value_buf_size]) for _, v in pairs)
        kbuf, vbuf = buffer(keys), buffer(values)
        attr = (
            Attr()
            .pointer(16, kbuf)
            .pointer(24, vbuf)
            .u32(32, len(pairs))
            .u32(36, self.fd.number)
            .u64(40, flags)
        )
        bpf(Cmd.MAP_UPDATE_BATCH, attr, f"batch update map {self.name!r}")
        return attr.read_u32(32)

    def delete_batch(self, keys: Iterable[bytes | int]) -> int:
        """Delete many keys with one BPF_MAP_DELETE_BATCH call; returns how many."""
        raw = [bytes(self._key(k)[: self.key_size]) for k in keys]
        if not raw:
            return 0
        kbuf = buffer(b"".join(raw))
        attr = Attr().pointer(16, kbuf).u32(32, len(raw)).u32(36, self.fd.number)
        try:
            bpf(Cmd.MAP_DELETE_BATCH, attr, f"batch delete from map {self.name!r}")
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                raise KeyError(
                    f"map {self.name!r}: a key of the batch is absent "
                    f"({attr.read_u32(32)} deleted before it)"
                ) from None
            raise
        return attr.read_u32(32)

    def freeze(self) -> None:
        """Make the map read-only for user space from now on (BPF_MAP_FREEZE)."""
        attr = Attr().u32(0, self.fd.number)
        bpf(Cmd.MAP_FREEZE, attr, f"freeze map {self.name!r}")

    def copy_from(self, other: Map) -> None:
        """Make this map's contents equal to `other`'s (same type and sizes). Maps of file
        descriptors are skipped: their values read back as ids, not fds."""
        if (other.type, other.key_size, other.value_size) != (self.type, self.key_size,
                                                              self.value_size):
            raise ValueError(f"cannot copy map {other.name!r} into {self.name!r}: "
                             "different type or sizes")
        if self.type.holds_fds and self.type not in (MapType.DEVMAP, MapType.DEVMAP_HASH):
            return
        if self.type.is_array and self._copy_batched(other):
            return
        if not self.type.is_array and not any(True for _ in self.keys()) and \
                self._copy_batched(other):
            return
        items = list(other.items())
        if not self.type.is_array:
            wanted = {k for k, _ in items}
            for key in list(self.keys()):
                if key not in wanted:
                    with contextlib.suppress(KeyError):
                        self.delete(key)
        for key, value in items:
            self.update(key, value)

    def count(self, limit: int | None = None, batch_size: int = 4096) -> int:
        """How many entries the map holds, counting stops once it reaches `limit`. Batched
        (one syscall per `batch_size` entries, nothing decoded) where the map type allows."""
        total = 0
        try:
            for count, _, _ in self._batches(batch_size):
                total += count
                if limit is not None and total >= limit:
                    break
        except KernelError as exc:
            if total or exc.errno not in _NO_BATCH_ERRNOS:
                raise
            return self._count_keys(limit)
        return total

    def _count_keys(self, limit: int | None) -> int:
        total = 0
        for _ in self.keys():
            total += 1
            if limit is not None and total >= limit:
                break
        return total

    def _copy_batched(self, other: Map, batch_size: int = 4096) -> bool:
        """Copy `other` into this map with batch lookups and updates of raw buffers (two
        syscalls per `batch_size` entries, no per-entry Python). False, having copied
        nothing, when the map type has no batch operations."""
        copied = False
        try:
            for count, keys, values in other._batches(batch_size):
                copied = True
                update = (Attr().pointer(16, keys).pointer(24, values).u32(32, count)
                          .u32(36, self.fd.number))
                bpf(Cmd.MAP_UPDATE_BATCH, update, f"batch update map {self.name!r}")
        except KernelError as exc:
            if copied or exc.errno not in _NO_BATCH_ERRNOS:
                raise
            return False
        return True

    def clone(self) -> Map:
        """A new, private map of the same type, sizes and flags holding a copy of this one's
        contents (maps of maps need an inner template and are refused)."""
        if self.type.is_map_of_maps:
            raise ValueError(f"cannot clone map {self.name!r}: a map of maps")
        flags = self.flags
        if self.type in (MapType.DEVMAP, MapType.DEVMAP_HASH, MapType.CPUMAP,
                         MapType.XSKMAP):
            # The kernel adds RDONLY_PROG to these itself and refuses it when asked for.
            flags &= ~MapFlags.RDONLY_PROG
        copy = Map.create(self.type, self.key_size, self.value_size, self.max_entries,
                          flags=flags, name=self.name[:15])
        try:
            copy.copy_from(self)
        except BaseException:
            copy.close()
            raise
        copy.name = self.name
        return copy

    def clear(self) -> None:
        """Delete every key (arrays cannot be cleared: their elements always exist)."""
        for key in list(self.keys()):
            with contextlib.suppress(KeyError):
                self.delete(key)


class MapSlot:
    """One element of a map written and read over and over with buffers allocated once
    (a check harness rewrites one element before every packet it runs)."""

    def __init__(self, m: Map, key: bytes | int) -> None:
        self.map = m
        self._key = m._key(key)
        self._value = buffer(m._value_buf_size)
        self._size = m._value_buf_size
        self._attr = (Attr().u32(0, m.fd.number).pointer(8, self._key)
                      .pointer(16, self._value).u64(24, 0))

    def write(self, value: bytes) -> None:
        if len(value) != self._size:
            raise ValueError(f"map {self.map.name!r}: value is {len(value)} bytes, the slot "
                             f"holds {self._size}")
        self._value[: self._size] = value
        bpf(Cmd.MAP_UPDATE_ELEM, self._attr, f"update element of map {self.map.name!r}")

    def read(self) -> bytes:
        bpf(Cmd.MAP_LOOKUP_ELEM, self._attr, f"look up element of map {self.map.name!r}")
        return bytes(self._value[: self._size])


def _create_hint(mtype: MapType) -> str:
    if mtype == MapType.LPM_TRIE:
        return "LPM tries need flags BPF_F_NO_PREALLOC and a key of 4 + prefix bytes"
    if mtype.is_map_of_maps:
        return "maps of maps need an inner map template"
    if mtype == MapType.RINGBUF:
        return "ring buffers need key 0, value 0 and a power-of-two page multiple size"
    return ""


def _update_hint(mtype: MapType) -> str:
    if mtype.holds_fds:
        return "the value must be the fd of a compatible program or map"
    return ""
