"""Writing small BTF blobs in tests: target kernels whose types differ from an object's."""

from __future__ import annotations

import struct

from morpheus.obj.btf import Kind


class BTFWriter:
    """Types are added in order and get ids 1, 2, ...; `blob()` is a raw BTF file."""

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.strings = bytearray(b"\0")

    def _name(self, name: str) -> int:
        if not name:
            return 0
        at = len(self.strings)
        self.strings += name.encode() + b"\0"
        return at

    def _add(self, record: bytes) -> int:
        self.records.append(record)
        return len(self.records)

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
