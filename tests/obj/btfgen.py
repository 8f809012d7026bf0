"""Writing small BTF blobs in tests: target kernels whose types differ from an object's."""

from __future__ import annotations

import struct

from morpheus.obj.btf import BTF, Kind


class BTFWriter:
    """Types are added in order and get ids 1, 2, ...; `blob()` is a raw BTF file.

    With `base`, the blob is split BTF on top of it (a kernel module's, as in
    /sys/kernel/btf/<module>): ids and string offsets continue after the base's, and types
    may refer to the base's by id."""

    def __init__(self, base: BTF | None = None) -> None:
        self.records: list[bytes] = []
        self.first_id = len(base.types) if base is not None else 1
        self.str_base = len(base.string_section) if base is not None else 0
        self.strings = bytearray(b"" if base is not None else b"\0")

    def _name(self, name: str) -> int:
        if not name:
            return 0
        at = self.str_base + len(self.strings)
        self.strings += name.encode() + b"\0"
        return at

    def _add(self, record: bytes) -> int:
        self.records.append(record)
        return self.first_id + len(self.records) - 1

    def func_proto(self, ret: int, params: list[tuple[str, int]]) -> int:
        body = b"".join(struct.pack("<II", self._name(n), t) for n, t in params)
        return self._add(struct.pack("<III", 0, Kind.FUNC_PROTO << 24 | len(params), ret) + body)

    def func(self, name: str, proto: int, linkage: int = 1) -> int:
        """A function (linkage 1: global, as kfuncs are)."""
        return self._add(struct.pack("<III", self._name(name), Kind.FUNC << 24 | linkage, proto))

    def var(self, name: str, type_id: int, linkage: int = 1) -> int:
        return self._add(struct.pack("<IIII", self._name(name), Kind.VAR << 24, type_id, linkage))

    def int(self, name: str, size: int, signed: bool = False) -> int:
        encoding = (1 if signed else 0) << 24 | size * 8
        return self._add(struct.pack("<IIII", self._name(name), Kind.INT << 24, size,
                                     encoding))

    def typedef(self, name: str, ref: int) -> int:
        return self._add(struct.pack("<III", self._name(name), Kind.TYPEDEF << 24, ref))

    def ptr(self, ref: int) -> int:
        return self._add(struct.pack("<III", 0, Kind.PTR << 24, ref))

    def struct(self, name: str, size: int,
               members: list[tuple[str, int, int, int]]) -> int:
        """members: (name, type, bit offset, bitfield size or 0)."""
        kflag = any(m[3] for m in members)
        info = (int(kflag) << 31) | (Kind.STRUCT << 24) | len(members)
        body = b"".join(
            struct.pack("<III", self._name(n), t, (bits << 24 | off) if kflag else off)
            for n, t, off, bits in members)
        return self._add(struct.pack("<III", self._name(name), info, size) + body)

    def enum(self, name: str, values: list[tuple[str, int]], size: int = 4) -> int:
        info = (Kind.ENUM << 24) | len(values)
        body = b"".join(struct.pack("<Ii", self._name(n), v) for n, v in values)
        return self._add(struct.pack("<III", self._name(name), info, size) + body)

    def blob(self) -> bytes:
        types = b"".join(self.records)
        header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types),
                             len(self.strings))
        return header + types + bytes(self.strings)
