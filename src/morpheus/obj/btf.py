"""BTF and BTF.ext parsing: the type information of a BPF object.

Only what the loader needs is interpreted (type sizes, map definitions, datasecs, function
and line info); the raw blob is kept so that it can be uploaded to the kernel after the
fix-ups clang leaves to the loader (datasec sizes and variable offsets).
"""

from __future__ import annotations

import gc
import struct
from collections.abc import Callable, Mapping
from enum import IntEnum
from typing import NamedTuple

from .errors import ObjectError

BTF_MAGIC = 0xEB9F


class Kind(IntEnum):
    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


# Kind by its 5-bit number (None where the number is not a kind), faster than Kind(n).
_KIND_BY_NUMBER: tuple[Kind | None, ...] = tuple(
    Kind(n) if n in Kind._value2member_map_ else None for n in range(32)
)
_K_INT, _K_ARRAY, _K_STRUCT, _K_UNION, _K_ENUM = 1, 3, 4, 5, 6
_K_FUNC, _K_FUNC_PROTO, _K_VAR, _K_DATASEC, _K_DECL_TAG, _K_ENUM64 = 12, 13, 14, 15, 17, 19

# Kinds whose third header word is a size; the others carry a referenced type id there.
_SIZED = frozenset(
    {Kind.INT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.DATASEC, Kind.FLOAT, Kind.ENUM64}
)
_MODIFIERS = frozenset({Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})

# Longest chain of references (typedefs, qualifiers, arrays) followed before calling it a
# loop; libbpf uses the same bound (MAX_RESOLVE_DEPTH).
MAX_CHAIN = 32

INT_SIGNED = 1

VAR_STATIC = 0
VAR_GLOBAL_ALLOCATED = 1
VAR_GLOBAL_EXTERN = 2


def essential_name(name: str) -> str:
    """`name` without its last `___flavour` suffix, as libbpf's CO-RE strips it: the
    separator is three underscores between a non-underscore and a non-underscore."""
    if "___" not in name:
        return name
    for i in range(len(name) - 5, -1, -1):
        if name[i] != "_" and name[i + 1 : i + 4] == "___" and name[i + 4] != "_":
            return name[: i + 1]
    return name


class Member(NamedTuple):
    name: str
    type: int
    offset: int  # bits (struct/union members); value for enums; byte offset for datasec vars
    size: int = 0  # datasec vars only


class BTFType(NamedTuple):
    """One BTF type. `ref` is the size for sized kinds and the referenced type otherwise."""

    id: int
    kind: Kind
    name: str
    ref: int
    vlen: int
    kind_flag: bool
    members: tuple[Member, ...] = ()
    array: tuple[int, int, int] | None = None  # (elem type, index type, nelems)
    linkage: int = 0  # VAR and FUNC
    byte_offset: int = 0  # where this type's record starts in the type section
    encoding: int = 0  # INT only: the encoding word (signedness, bit offset, bit size)

    @property
    def int_signed(self) -> bool:
        return bool((self.encoding >> 24) & INT_SIGNED)

    @property
    def int_bit_offset(self) -> int:
        return (self.encoding >> 16) & 0xFF

    def member_bit_offset(self, index: int) -> int:
        """Bit offset of member `index` of a struct or union (bitfield-aware)."""
        offset = self.members[index].offset
        return offset & 0xFFFFFF if self.kind_flag else offset

    def member_bitfield_size(self, index: int) -> int:
        """Bit size of member `index` if it is a bitfield (kind_flag set), else 0."""
        return self.members[index].offset >> 24 if self.kind_flag else 0


class BTF:
    """Parsed BTF of an object; `blob()` returns the bytes to upload with fix-ups applied."""

    def __init__(self, data: bytes, base: BTF | None = None) -> None:
        """Parse `data`. With `base`, `data` is split BTF (a kernel module's): its type ids
        and string offsets continue after the base's, as in /sys/kernel/btf/<module>."""
        if len(data) < 24:
            raise ObjectError("BTF section is shorter than its header")
        magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise ObjectError(f"BTF magic is {magic:#x}, expected {BTF_MAGIC:#x}")
        if version != 1:
            raise ObjectError(f"unsupported BTF version {version}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self.hdr_len = hdr_len
        self._data = bytearray(data)
        self._type_start = hdr_len + type_off
        self._strings = bytes(data[hdr_len + str_off : hdr_len + str_off + str_len])
        self._string_cache: dict[int, str] = {}
        self.base = base
        self._str_base = len(base._strings) if base is not None else 0
        # id 0 is void; split BTF numbers its types after the base's
        self.types: list[BTFType] = (
            list(base.types) if base is not None else [BTFType(0, Kind.UNKN, "", 0, 0, False)]
        )
        self.first_id = len(self.types) if base is not None else 1
        self._core_index: dict[str, list[int]] | None = None
        self._by_name: dict[tuple[Kind, str], int] | None = None
        self._own_by_name: dict[tuple[Kind, str], int] | None = None
        # Parsing the kernel's BTF allocates some 400,000 small tuples, none of them part of a
        # reference cycle; the cyclic collector's passes over them would double the time.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._parse(bytes(data[self._type_start : self._type_start + type_len]))
        finally:
            if collecting:
                gc.enable()

    # --- strings and lookup ----------------------------------------------------------------

    def string(self, offset: int) -> str:
        cached = self._string_cache.get(offset)
        if cached is not None:
            return cached
        if offset < self._str_base:
            assert self.base is not None
            return self.base.string(offset)
        local = offset - self._str_base
        end = self._strings.find(b"\0", local)
        if end < 0 or local >= len(self._strings) or offset < 0:
            raise ObjectError(f"BTF string offset {offset} is out of range")
        text = self._strings[local:end].decode(errors="replace")
        self._string_cache[offset] = text
        return text

    def __getitem__(self, type_id: int) -> BTFType:
        try:
            return self.types[type_id]
        except IndexError:
            raise ObjectError(f"BTF type id {type_id} does not exist") from None

    def find(self, kind: Kind, name: str) -> BTFType | None:
        if self._by_name is None:
            self._by_name = {}
            for t in self.types:
                if t.name:
                    self._by_name.setdefault((t.kind, t.name), t.id)
        found = self._by_name.get((kind, name))
        return None if found is None else self.types[found]

    def find_own(self, kind: Kind, name: str) -> BTFType | None:
        """The first type of `kind` called `name` among this BTF's own types: a split
        BTF's (a module's), not its base's (libbpf's btf__find_by_name_kind_own)."""
        if self.base is None:
            return self.find(kind, name)
        if self._own_by_name is None:
            self._own_by_name = {}
            for t in self.types[self.first_id :]:
                if t.name:
                    self._own_by_name.setdefault((t.kind, t.name), t.id)
        found = self._own_by_name.get((kind, name))
        return None if found is None else self.types[found]

    def candidates(self, essential: str) -> list[int]:
        """Ids of this BTF's own named types (not a split BTF's base) whose name without a
        `___flavour` suffix is `essential`, in id order: CO-RE's candidate search. The index
        is built once per BTF (the kernel's has over 100,000 types)."""
        index = self._core_index
        if index is None:
            index = {}
            for t in self.types[self.first_id :]:
                if t.name:
                    index.setdefault(essential_name(t.name), []).append(t.id)
            self._core_index = index
        return index.get(essential, [])

    def skip_modifiers(self, type_id: int) -> BTFType:
        """The type behind typedefs and qualifiers. A chain longer than MAX_CHAIN (a loop,
        since clang never nests that deep) is an error naming the type: unbounded, a typedef
        that refers to itself would hang every reader."""
        t = self[type_id]
        for _ in range(MAX_CHAIN):
            if t.kind not in _MODIFIERS:
                return t
            t = self[t.ref]
        raise ObjectError(
            f"BTF type {type_id}: chain of typedefs/qualifiers longer than {MAX_CHAIN} "
            "(a reference loop?)"
        )

    def size_of(self, type_id: int) -> int:
        """Size in bytes of a type, following typedefs, qualifiers and arrays."""
        depth = 0
        multiplier = 1
        t = self[type_id]
        while True:
            depth += 1
            if depth > MAX_CHAIN:
                raise ObjectError(
                    f"BTF type {type_id}: chain of references longer than {MAX_CHAIN} "
                    "(a reference loop?)"
                )
            if t.kind in _SIZED:
                return t.ref * multiplier
            if t.kind == Kind.PTR:
                return 8 * multiplier
            if t.kind == Kind.ARRAY:
                assert t.array is not None
                multiplier *= t.array[2]
                t = self[t.array[0]]
                continue
            if t.kind in _MODIFIERS or t.kind == Kind.VAR:
                t = self[t.ref]
                continue
            raise ObjectError(f"BTF type {type_id} ({t.kind.name} {t.name!r}) has no size")

    def describe(self, type_id: int) -> str:
        t = self[type_id]
        if t.kind in (Kind.STRUCT, Kind.UNION, Kind.ENUM):
            return f"{t.kind.name.lower()} {t.name}"
        return t.name or t.kind.name.lower()

    # --- parsing ---------------------------------------------------------------------------

    def _parse(self, raw: bytes) -> None:
        # Hot loop: the kernel's own BTF (/sys/kernel/btf/vmlinux) has over 100,000 types, so
        # per-type enum construction and method calls are avoided: kinds come from a table,
        # dispatch is on the raw kind number, and every string is decoded once up front.
        names = self._string_table()
        get = names.get
        string = self.string
        pos = 0
        n = len(raw)
        unpack = struct.unpack_from
        iter_unpack = struct.iter_unpack
        append = self.types.append
        kinds = _KIND_BY_NUMBER
        # tuple.__new__ builds the named tuples without their Python-level __new__.
        new = tuple.__new__
        tid = len(self.types)
        while pos < n:
            start = pos
            name_off, info, ref = unpack("<III", raw, pos)
            pos += 12
            vlen = info & 0xFFFF
            kind_raw = (info >> 24) & 0x1F
            kind = kinds[kind_raw]
            if kind is None:
                raise ObjectError(f"BTF type {tid}: unknown kind {kind_raw}")
            kflag = bool(info >> 31)
            name = get(name_off)
            if name is None:
                name = string(name_off)
            members: tuple[Member, ...] = ()
            array = None
            linkage = 0
            encoding = 0
            if kind_raw == _K_FUNC:
                linkage = vlen
            elif kind_raw == _K_FUNC_PROTO:
                end = pos + 8 * vlen
                members = tuple(
                    [
                        new(Member, (get(p_name) or string(p_name), p_type, 0, 0))
                        for p_name, p_type in iter_unpack("<II", raw[pos:end])
                    ]
                )
                pos = end
            elif kind_raw in (_K_STRUCT, _K_UNION):
                end = pos + 12 * vlen
                members = tuple(
                    [
                        new(Member, (get(m_name) or string(m_name), m_type, m_off, 0))
                        for m_name, m_type, m_off in iter_unpack("<III", raw[pos:end])
                    ]
                )
                pos = end
            elif kind_raw == _K_INT:
                (encoding,) = unpack("<I", raw, pos)
                pos += 4
            elif kind_raw == _K_ARRAY:
                array = unpack("<III", raw, pos)
                pos += 12
            elif kind_raw == _K_ENUM:
                end = pos + 8 * vlen
                members = tuple(
                    [
                        Member(string(m_name), 0, m_val)
                        for m_name, m_val in iter_unpack("<Ii", raw[pos:end])
                    ]
                )
                pos = end
            elif kind_raw == _K_ENUM64:
                end = pos + 12 * vlen
                members = tuple(
                    [
                        Member(string(m_name), 0, (hi << 32) | lo)
                        for m_name, lo, hi in iter_unpack("<III", raw[pos:end])
                    ]
                )
                pos = end
            elif kind_raw == _K_VAR:
                (linkage,) = unpack("<I", raw, pos)
                pos += 4
            elif kind_raw == _K_DATASEC:
                end = pos + 12 * vlen
                members = tuple(
                    [
                        Member("", v_type, v_off, v_size)
                        for v_type, v_off, v_size in iter_unpack("<III", raw[pos:end])
                    ]
                )
                pos = end
            elif kind_raw == _K_DECL_TAG:
                pos += 4
            if pos > n:
                raise ObjectError(f"BTF type {tid} ({kind.name}) runs past the type section")
            record = (tid, kind, name, ref, vlen, kflag, members, array, linkage, start, encoding)
            append(new(BTFType, record))
            tid += 1

    def _string_table(self) -> dict[int, str]:
        """Offset → string for every string of the section (shared with `string()`'s cache;
        offsets pointing into the middle of a string are decoded on demand there)."""
        table = self._string_cache
        offset = self._str_base
        for part in self._strings.split(b"\0"):
            table[offset] = part.decode(errors="replace")
            offset += len(part) + 1
        return table

    # --- fix-ups before upload -------------------------------------------------------------

    def fixup_datasecs(
        self,
        section_size: Callable[[str], int | None],
        symbol: Callable[[str], tuple[int, bool] | None],
    ) -> None:
        """Fill in what clang leaves at zero: each datasec's size (the ELF section size) and
        each variable's offset (the symbol's value), and mark hidden globals static, then
        sort variables by offset, as the kernel requires.

        `section_size(name)` gives an ELF section's size; `symbol(name)` gives a variable's
        (offset, hidden) or None.
        """
        for t in self.types:
            if t.kind != Kind.DATASEC:
                continue
            if t.name in (".kconfig", ".ksyms"):
                continue
            rec = self._type_start + t.byte_offset
            size = t.ref
            fix_offsets = False
            if size == 0:
                found = section_size(t.name)
                if found is None:
                    raise ObjectError(f"BTF datasec {t.name!r} has no ELF section")
                size = found
                fix_offsets = True
                struct.pack_into("<I", self._data, rec + 8, size)
            new_members = []
            for m in t.members:
                var = self[m.type]
                offset = m.offset
                sym = symbol(var.name)
                if var.kind == Kind.VAR and sym is not None:
                    sym_offset, hidden = sym
                    if fix_offsets:
                        offset = sym_offset
                    if hidden and var.linkage == VAR_GLOBAL_ALLOCATED:
                        struct.pack_into(
                            "<I", self._data, self._type_start + var.byte_offset + 12, VAR_STATIC
                        )
                new_members.append(Member(m.name, m.type, offset, m.size))
            new_members.sort(key=lambda m: m.offset)
            for i, m in enumerate(new_members):
                struct.pack_into("<III", self._data, rec + 12 + 12 * i, m.type, m.offset, m.size)
            self.types[t.id] = BTFType(
                t.id,
                t.kind,
                t.name,
                size,
                t.vlen,
                t.kind_flag,
                tuple(new_members),
                t.array,
                t.linkage,
                t.byte_offset,
                t.encoding,
            )

    def blob(self) -> bytes:
        """The BTF bytes to upload (after `fixup_datasecs`)."""
        return bytes(self._data)

    @property
    def type_section(self) -> bytes:
        type_off, type_len = struct.unpack_from("<II", self._data, 8)
        start = self.hdr_len + type_off
        return bytes(self._data[start : start + type_len])

    @property
    def string_section(self) -> bytes:
        return self._strings

    def rebased_types(self, id_shift: int, str_shift: int) -> bytes:
        """This BTF's type records with every type id moved up by `id_shift` and every
        string offset by `str_shift`, for appending after another BTF's types."""
        raw = bytearray(self.type_section)

        def name(pos: int) -> None:
            (off,) = struct.unpack_from("<I", raw, pos)
            if off:  # anonymous stays anonymous: the kernel refuses names on some kinds
                struct.pack_into("<I", raw, pos, off + str_shift)

        def ref(pos: int) -> None:
            (tid,) = struct.unpack_from("<I", raw, pos)
            if tid:  # void stays void
                struct.pack_into("<I", raw, pos, tid + id_shift)

        for t in self.types[1:]:
            pos = t.byte_offset
            name(pos)
            body = pos + 12
            kind = t.kind
            if kind in _MODIFIERS or kind in (Kind.PTR, Kind.FUNC, Kind.VAR, Kind.DECL_TAG):
                ref(pos + 8)
            elif kind == Kind.ARRAY:
                ref(body)
                ref(body + 4)
            elif kind in (Kind.STRUCT, Kind.UNION):
                for i in range(t.vlen):
                    name(body + 12 * i)
                    ref(body + 12 * i + 4)
            elif kind == Kind.ENUM:
                for i in range(t.vlen):
                    name(body + 8 * i)
            elif kind == Kind.ENUM64:
                for i in range(t.vlen):
                    name(body + 12 * i)
            elif kind == Kind.FUNC_PROTO:
                ref(pos + 8)
                for i in range(t.vlen):
                    name(body + 8 * i)
                    ref(body + 8 * i + 4)
            elif kind == Kind.DATASEC:
                for i in range(t.vlen):
                    ref(body + 12 * i)
        return bytes(raw)


def merge_btf(base: BTF, extra: BTF) -> tuple[BTF, int, int]:
    """One BTF holding `base`'s types followed by `extra`'s.

    Returns the merged BTF and the shifts to apply to `extra`'s type ids and string offsets
    (for func_info and line_info of code taken from the object `extra` came with).
    """
    id_shift = len(base.types) - 1
    str_shift = len(base.string_section)
    types = base.type_section + extra.rebased_types(id_shift, str_shift)
    strings = base.string_section + extra.string_section
    header = struct.pack("<HBBIIIII", BTF_MAGIC, 1, 0, 24, 0, len(types), len(types),
                         len(strings))
    return BTF(header + types + strings), id_shift, str_shift


class ExtRecord(NamedTuple):
    """A .BTF.ext record: func_info (type_id) or line_info (file/line offsets, line, col)."""

    insn_off: int  # bytes from the start of the section
    type_id: int = 0
    file_name_off: int = 0
    line_off: int = 0
    line: int = 0
    col: int = 0


class CoreRelo(NamedTuple):
    insn_off: int
    type_id: int
    access: str
    kind: int


class BTFExt:
    """Parsed .BTF.ext: per ELF section, func_info, line_info and CO-RE relocations."""

    def __init__(self, data: bytes, btf: BTF) -> None:
        if len(data) < 24:
            raise ObjectError(".BTF.ext section is shorter than its header")
        magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC or version != 1:
            raise ObjectError(f".BTF.ext has magic {magic:#x} version {version}")
        try:
            self._parse(data, hdr_len, btf)
        except struct.error:
            raise ObjectError(".BTF.ext: a record runs past the end of the section") from None

    def _parse(self, data: bytes, hdr_len: int, btf: BTF) -> None:
        fi_off, fi_len, li_off, li_len = struct.unpack_from("<IIII", data, 8)
        core_off = core_len = 0
        if hdr_len >= 32:
            core_off, core_len = struct.unpack_from("<II", data, 24)
        base = hdr_len
        self.func_info: dict[str, list[ExtRecord]] = {}
        self.line_info: dict[str, list[ExtRecord]] = {}
        self.core_relos: dict[str, list[CoreRelo]] = {}
        for sec, rec in self._sections(data, base + fi_off, fi_len, btf, 8):
            off, type_id = struct.unpack_from("<II", rec)
            self.func_info.setdefault(sec, []).append(ExtRecord(off, type_id=type_id))
        for sec, rec in self._sections(data, base + li_off, li_len, btf, 16):
            off, file_off, line_off, line_col = struct.unpack_from("<IIII", rec)
            self.line_info.setdefault(sec, []).append(
                ExtRecord(
                    off,
                    file_name_off=file_off,
                    line_off=line_off,
                    line=line_col >> 10,
                    col=line_col & 0x3FF,
                )
            )
        if core_len:
            for sec, rec in self._sections(data, base + core_off, core_len, btf, 16):
                off, type_id, access_off, kind = struct.unpack_from("<IIII", rec)
                self.core_relos.setdefault(sec, []).append(
                    CoreRelo(off, type_id, btf.string(access_off), kind)
                )

    @staticmethod
    def _sections(data: bytes, start: int, length: int, btf: BTF, min_rec: int):
        if not length:
            return
        end = start + length
        if start + length > len(data):
            raise ObjectError(".BTF.ext: a subsection runs past the end of the section")
        (rec_size,) = struct.unpack_from("<I", data, start)
        if rec_size < min_rec:
            raise ObjectError(f".BTF.ext record size {rec_size} is smaller than {min_rec}")
        pos = start + 4
        while pos < end:
            sec_off, count = struct.unpack_from("<II", data, pos)
            pos += 8
            sec = btf.string(sec_off)
            if pos + count * rec_size > end:
                raise ObjectError(f".BTF.ext: {count} records for {sec} run past their "
                                  "subsection")
            for _ in range(count):
                yield sec, data[pos : pos + rec_size]
                pos += rec_size


def resolve_strings(btf: BTF, records: Mapping[str, list[ExtRecord]]) -> None:
    """Check that every string offset of the line records exists (fail early, not in the
    kernel)."""
    for recs in records.values():
        for r in recs:
            btf.string(r.file_name_off)
            btf.string(r.line_off)
