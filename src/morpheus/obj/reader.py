"""Reading clang-built BPF ELF objects into an `ObjectSpec`.

pyelftools reads the ELF headers; symbol and relocation tables are unpacked directly (they
are plain arrays and this keeps a 3,000-instruction object well under 20 ms). Programs are
linked the way libbpf links them, so that the kernel computes the same program tag: the
entry function first, then each called subprogram appended on first use, depth first.
"""

from __future__ import annotations

import bisect
import io
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from elftools.elf.elffile import ELFFile

from ..ir import Instruction, LineInfo, Meta, Program, decode, symbolize
from ..ir.instruction import s32, s64
from ..ir.opcodes import CallSrc, PseudoSrc
from ..uapi import MapFlags, MapType
from . import core, externs
from .btf import BTF, BTFExt, BTFType, Kind
from .errors import ObjectError, UnsupportedFeature
from .sections import SectionDef, section_def
from .spec import MapSpec, ObjectSpec, ProgramSpec


@dataclass(frozen=True)
class ReadOptions:
    """How to read an object.

    `target` is the kernel the object is read for: its BTF (CO-RE relocations, ksyms), its
    configuration (kconfig externs). A callable is called only if the object needs it, so
    objects without CO-RE or externs never make the caller read the kernel's BTF.
    `program_type` ("xdp", "tc", "xdp.frags", ... any section name libbpf knows) sets the
    type of every program, as `bpftool prog loadall OBJ PATH type xdp` does: for sections
    with non-standard names. `legacy_maps` accepts the `SEC("maps")` `struct bpf_map_def`
    definitions that iproute2's tc loader still reads (libbpf 1.x refuses them).
    """

    target: core.Target | Callable[[], core.Target] | None = None
    program_type: str | None = None
    legacy_maps: bool = False

EM_BPF = 247
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_NOBITS = 8
SHT_REL = 9
SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHN_UNDEF = 0
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2
STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STV_DEFAULT = 0
STV_INTERNAL = 1
STV_HIDDEN = 2

R_BPF_NONE = 0
R_BPF_64_64 = 1
R_BPF_64_ABS64 = 2
R_BPF_64_ABS32 = 3
R_BPF_64_NODYLD32 = 4
R_BPF_64_32 = 10

_SYM = struct.Struct("<IBBHQQ")
_REL = struct.Struct("<QQ")

LIBBPF_PIN_BY_NAME = 1
_MAP_INT_FIELDS = {
    "type",
    "max_entries",
    "map_flags",
    "numa_node",
    "key_size",
    "value_size",
    "pinning",
    "map_extra",
}


@dataclass(frozen=True, slots=True)
class _Section:
    index: int
    name: str
    type: int
    flags: int
    size: int
    offset: int
    link: int
    info: int

    @property
    def executable(self) -> bool:
        return self.type == SHT_PROGBITS and bool(self.flags & SHF_EXECINSTR) and self.size > 0


class _Symbol(NamedTuple):
    name: str
    bind: int
    type: int
    visibility: int
    shndx: int
    value: int
    size: int


@dataclass(slots=True)
class _Function:
    name: str
    section: str
    offset: int  # bytes in the section
    insns: list[Instruction]
    bind: int


def read_object(source: str | os.PathLike[str] | bytes, name: str | None = None,
                options: ReadOptions | None = None) -> ObjectSpec:
    """Read a BPF object file (path or bytes) into an ObjectSpec.

    CO-RE relocations and extern symbols are resolved against `options.target`; an object
    that needs a target without one given is an ObjectError saying so. Raises ObjectError
    for malformed input and UnsupportedFeature (a subclass) for features the loader does not
    implement, naming them.
    """
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        path = None
        name = name or "object"
    else:
        path = os.fspath(source)
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ObjectError(f"{path}: cannot read: {exc.strerror}") from None
        name = name or Path(path).name.split(".")[0]
    where = path or name
    try:
        return _Reader(data, name, path, options or ReadOptions()).read()
    except UnsupportedFeature as exc:
        raise UnsupportedFeature(
            exc.feature, f"{where}: {exc.detail}" if exc.detail else where) from None
    except ObjectError as exc:
        raise ObjectError(f"{where}: {exc}") from None
    except Exception as exc:  # pyelftools raises assorted errors on garbage
        raise ObjectError(
            f"{where}: not a valid ELF object ({type(exc).__name__}: {exc})"
        ) from None


class _Reader:
    def __init__(self, data: bytes, name: str, path: str | None,
                 options: ReadOptions | None = None) -> None:
        self.data = data
        self.name = name
        self.path = path
        self.options = options or ReadOptions()
        self._target: core.Target | None = None
        self._relocator: core.Relocator | None = None
        self.externs: dict[str, externs.Extern] = {}
        self._ksyms: externs.KsymTable | None = None
        if data[:4] != b"\x7fELF":
            raise ObjectError("not an ELF file (bad magic)")
        if data[4] != 2:
            raise ObjectError("not a 64-bit ELF file; BPF objects are ELF64")
        if data[5] != 1:
            raise UnsupportedFeature("big-endian BPF objects")
        self.elf = ELFFile(io.BytesIO(data))
        if self.elf["e_machine"] not in ("EM_BPF", EM_BPF):
            raise ObjectError(f"ELF machine is {self.elf['e_machine']}, not BPF (EM_BPF)")
        self.sections: list[_Section] = []
        for index in range(self.elf.num_sections()):
            hdr = self.elf._get_section_header(index)
            self.sections.append(
                _Section(
                    index,
                    self.elf._get_section_name(hdr),
                    _sh_type(hdr["sh_type"]),
                    hdr["sh_flags"],
                    hdr["sh_size"],
                    hdr["sh_offset"],
                    hdr["sh_link"],
                    hdr["sh_info"],
                )
            )
        self.by_name = {s.name: s for s in self.sections}
        self.symbols = self._read_symbols()
        self.btf: BTF | None = None
        self.btf_ext: BTFExt | None = None

    def target(self, why: str) -> core.Target:
        """The kernel to read for; an error naming `why` when none was given."""
        if self._target is None:
            given = self.options.target
            if given is None:
                raise ObjectError(
                    f"{why}: the target kernel's BTF is needed (load through morpheus.loader, "
                    "or give --btf FILE)")
            self._target = given() if callable(given) else given
        return self._target

    # --- raw tables ------------------------------------------------------------------------

    def section_data(self, section: _Section) -> bytes:
        if section.type == SHT_NOBITS:
            return bytes(section.size)
        end = section.offset + section.size
        if end > len(self.data):
            raise ObjectError(f"section {section.name} extends past the end of the file")
        return self.data[section.offset : end]

    def _read_symbols(self) -> list[_Symbol]:
        symtabs = [s for s in self.sections if s.type == SHT_SYMTAB]
        if not symtabs:
            raise ObjectError("no symbol table (.symtab); was the object stripped?")
        symtab = symtabs[0]
        if not 0 < symtab.link < len(self.sections):
            raise ObjectError(f"symbol table links to section {symtab.link}, which does not "
                              "exist")
        strtab = self.section_data(self.sections[symtab.link])
        out = []
        for st_name, info, other, shndx, value, size in _SYM.iter_unpack(self.section_data(symtab)):
            end = strtab.find(b"\0", st_name)
            out.append(
                _Symbol(
                    strtab[st_name:end].decode(errors="replace"),
                    info >> 4,
                    info & 0xF,
                    other & 0x3,
                    shndx,
                    value,
                    size,
                )
            )
        return out

    def relocations(self, target: _Section) -> list[tuple[int, _Symbol, int]]:
        """(offset, symbol, type) of each relocation applying to `target`."""
        out = []
        for sec in self.sections:
            if sec.type == SHT_REL and sec.info == target.index:
                for r_offset, r_info in _REL.iter_unpack(self.section_data(sec)):
                    sym_index = r_info >> 32
                    if sym_index >= len(self.symbols):
                        raise ObjectError(
                            f"relocation in {sec.name} names symbol {sym_index}, "
                            "which does not exist"
                        )
                    out.append((r_offset, self.symbols[sym_index], r_info & 0xFFFFFFFF))
        return out

    # --- top level -------------------------------------------------------------------------

    def read(self) -> ObjectSpec:
        license = self._license()
        kern_version = self._kern_version()
        self._read_btf()
        data_sections = self._data_sections()
        maps = self._btf_maps()
        if "maps" in self.by_name and self.by_name["maps"].size:
            if not self.options.legacy_maps:
                raise UnsupportedFeature(
                    "legacy 'maps' section (struct bpf_map_def)",
                    'use BTF-defined maps in SEC(".maps"), or read with legacy maps allowed '
                    "(--legacy-maps)",
                )
            from .legacy import legacy_maps

            for mspec in legacy_maps(self):
                if mspec.name in maps:
                    raise ObjectError(f"map {mspec.name!r} is defined twice")
                maps[mspec.name] = mspec
        for sec in data_sections:
            maps[sec.name] = self._data_map(sec)
        self.externs = externs.collect(self)
        if self.externs and self.btf is not None:
            self.btf = externs.sanitized_btf(self.btf, self.externs)
        kconfig = externs.kconfig_map(self)
        if kconfig is not None:
            maps[kconfig.name] = kconfig
        functions = self._functions(data_sections, maps)
        programs = self._programs(functions, license, kern_version)
        for mspec in maps.values():
            if mspec.type == MapType.PROG_ARRAY:
                for slot, prog in mspec.init_slots:
                    if prog not in programs:
                        raise ObjectError(f"prog array {mspec.name!r} slot {slot}: {prog!r} "
                                          "is not an entry point (a subprogram?)")
        notes = ()
        if self._relocator is not None:
            assert self._target is not None
            notes = (f"CO-RE relocations applied against {self._target.core_name}",)
        return ObjectSpec(self.name, programs, maps, self.btf, license, kern_version, self.path,
                          notes)

    def _license(self) -> str:
        sec = self.by_name.get("license")
        if sec is None:
            return ""
        return self.section_data(sec).split(b"\0", 1)[0].decode(errors="replace")

    def _kern_version(self) -> int:
        sec = self.by_name.get("version")
        if sec is None:
            return 0
        raw = self.section_data(sec)
        if len(raw) != 4:
            raise ObjectError(f"'version' section is {len(raw)} bytes, expected 4")
        return struct.unpack("<I", raw)[0]

    def _read_btf(self) -> None:
        sec = self.by_name.get(".BTF")
        if sec is None:
            return
        btf = BTF(self.section_data(sec))
        variables: dict[str, tuple[int, bool]] = {}
        for sym in self.symbols:
            if sym.type == STT_OBJECT and sym.shndx not in (SHN_UNDEF, SHN_ABS, SHN_COMMON):
                hidden = sym.visibility in (STV_HIDDEN, STV_INTERNAL) and sym.bind != STB_LOCAL
                if sym.value > 0xFFFFFFFF:
                    raise ObjectError(f"symbol {sym.name!r} has offset {sym.value:#x}, past "
                                      "any section")
                variables.setdefault(sym.name, (sym.value, hidden))

        def section_size(name: str) -> int | None:
            found = self.by_name.get(name)
            return found.size if found is not None else None

        btf.fixup_datasecs(section_size, variables.get)
        self.btf = btf
        ext = self.by_name.get(".BTF.ext")
        if ext is not None:
            self.btf_ext = BTFExt(self.section_data(ext), btf)

    # --- maps ------------------------------------------------------------------------------

    def _btf_maps(self) -> dict[str, MapSpec]:
        sec = self.by_name.get(".maps")
        if sec is None:
            return {}
        if self.btf is None:
            raise ObjectError("'.maps' section present but the object has no BTF (build with -g)")
        datasec = self.btf.find(Kind.DATASEC, ".maps")
        if datasec is None:
            raise ObjectError("'.maps' section present but BTF has no '.maps' datasec")
        out: dict[str, MapSpec] = {}
        for member in datasec.members:
            var = self.btf[member.type]
            if var.kind != Kind.VAR:
                raise ObjectError(f"'.maps' datasec entry {var.id} is a {var.kind.name}, not a VAR")
            out[var.name] = self._map_def(var.name, var.ref, nested=False)
        self._static_slots(sec, datasec, out)
        return out

    def _static_slots(self, sec: _Section, datasec: BTFType, maps: dict[str, MapSpec]) -> None:
        """`.values = { [i] = &x }`: relocations inside `.maps` against programs or maps
        become (slot, name) pairs of the map they fall in (libbpf's collect_map_relos)."""
        btf = self.btf
        assert btf is not None
        slots: dict[str, dict[int, str]] = {}
        for r_offset, sym, _ in self.relocations(sec):
            holder = None
            for m in datasec.members:
                if m.offset <= r_offset < m.offset + m.size:
                    holder = btf[m.type]
                    break
            if holder is None or holder.name not in maps:
                raise ObjectError(f"'.maps' relocation at offset {r_offset} is outside every "
                                  "map definition")
            struct_t = btf.skip_modifiers(holder.ref)
            values = [i for i, mm in enumerate(struct_t.members) if mm.name == "values"]
            if not values:
                raise ObjectError(f"map {holder.name!r}: relocation at offset {r_offset} but "
                                  "no 'values' field")
            start = m.offset + struct_t.member_bit_offset(values[0]) // 8
            if r_offset < start or (r_offset - start) % 8:
                raise ObjectError(f"map {holder.name!r}: relocation at offset {r_offset} is "
                                  "not on a 'values' slot")
            slot = (r_offset - start) // 8
            target_sec = self.sections[sym.shndx] if 0 < sym.shndx < len(self.sections) else None
            mspec = maps[holder.name]
            if mspec.type == MapType.PROG_ARRAY:
                if target_sec is None or not target_sec.executable or sym.type != STT_FUNC:
                    raise ObjectError(f"prog array {holder.name!r} slot {slot}: {sym.name!r} "
                                      "is not a program")
            elif mspec.type.is_map_of_maps:
                if target_sec is None or target_sec.index != sec.index or sym.name not in maps:
                    raise ObjectError(f"map of maps {holder.name!r} slot {slot}: "
                                      f"{sym.name!r} is not a map of this object")
            else:
                raise ObjectError(f"map {holder.name!r} ({mspec.type.name}) cannot have "
                                  "static initialisers")
            if slot >= mspec.max_entries:
                raise ObjectError(f"map {holder.name!r}: initialiser slot {slot} is past "
                                  f"max_entries {mspec.max_entries}")
            slots.setdefault(holder.name, {})[slot] = sym.name
        for name, by_slot in slots.items():
            maps[name] = maps[name].with_changes(init_slots=tuple(sorted(by_slot.items())))

    def _map_def(self, name: str, type_id: int, *, nested: bool) -> MapSpec:
        btf = self.btf
        assert btf is not None
        struct_t = btf.skip_modifiers(type_id)
        if struct_t.kind != Kind.STRUCT:
            raise ObjectError(f"map {name!r}: definition is a {struct_t.kind.name}, not a struct")
        ints: dict[str, int] = {}
        key_id = value_id = 0
        key_size = value_size = None
        inner: MapSpec | None = None
        for m in struct_t.members:
            mt = btf.skip_modifiers(m.type)
            if m.name in _MAP_INT_FIELDS and mt.kind in (Kind.ENUM, Kind.ENUM64) and mt.vlen == 1:
                # newer libbpf's __ulong(name, value): an anonymous enum holding the value
                ints[m.name] = mt.members[0].offset & 0xFFFFFFFFFFFFFFFF
            elif m.name in _MAP_INT_FIELDS:
                if mt.kind != Kind.PTR:
                    raise ObjectError(
                        f"map {name!r}: field {m.name!r} must be declared with "
                        "__uint() (a pointer to an array)"
                    )
                arr = btf.skip_modifiers(mt.ref)
                if arr.kind != Kind.ARRAY or arr.array is None:
                    raise ObjectError(f"map {name!r}: field {m.name!r} is not __uint()")
                ints[m.name] = arr.array[2]
            elif m.name in ("key", "value"):
                if mt.kind != Kind.PTR:
                    raise ObjectError(
                        f"map {name!r}: field {m.name!r} must be declared with __type() (a pointer)"
                    )
                size = btf.size_of(mt.ref)
                if m.name == "key":
                    key_id, key_size = mt.ref, size
                else:
                    value_id, value_size = mt.ref, size
            elif m.name == "values":
                if mt.kind != Kind.ARRAY or mt.array is None:
                    raise ObjectError(f"map {name!r}: 'values' must be declared with __array()")
                elem = btf.skip_modifiers(mt.array[0])
                if elem.kind != Kind.PTR:
                    raise ObjectError(f"map {name!r}: 'values' elements must be pointers")
                target = btf.skip_modifiers(elem.ref)
                if target.kind == Kind.STRUCT:
                    if nested:
                        raise UnsupportedFeature("maps of maps of maps", f"map {name!r}")
                    inner = self._map_def(f"{name}.inner", target.id, nested=True)
                elif target.kind != Kind.FUNC_PROTO:
                    raise ObjectError(
                        f"map {name!r}: 'values' must point to a map definition "
                        "or a program prototype"
                    )
            else:
                raise ObjectError(f"map {name!r}: unknown field {m.name!r}")
        if "type" not in ints:
            raise ObjectError(f"map {name!r}: no 'type' field")
        try:
            mtype = MapType(ints["type"])
        except ValueError:
            raise UnsupportedFeature(f"map type {ints['type']}", f"map {name!r}") from None
        if key_size is not None and "key_size" in ints and ints["key_size"] != key_size:
            raise ObjectError(
                f"map {name!r}: key_size {ints['key_size']} disagrees with the "
                f"key type's size {key_size}"
            )
        if value_size is not None and "value_size" in ints and ints["value_size"] != value_size:
            raise ObjectError(
                f"map {name!r}: value_size {ints['value_size']} disagrees with the "
                f"value type's size {value_size}"
            )
        key_size = key_size if key_size is not None else ints.get("key_size", 0)
        value_size = value_size if value_size is not None else ints.get("value_size", 0)
        if mtype.is_map_of_maps:
            if inner is None:
                raise ObjectError(
                    f"map {name!r}: a map of maps needs an inner map "
                    "definition (__array(values, struct {...}))"
                )
            value_size = value_size or 4
        if mtype.holds_fds:
            # The kernel refuses BTF key/value types on maps holding file descriptors.
            key_id = value_id = 0
            if mtype in (MapType.PROG_ARRAY, MapType.PERF_EVENT_ARRAY, MapType.CGROUP_ARRAY):
                key_size = key_size or 4
                value_size = value_size or 4
        return MapSpec(
            name=name,
            type=mtype,
            key_size=key_size,
            value_size=value_size,
            max_entries=ints.get("max_entries", 0),
            flags=ints.get("map_flags", 0),
            inner=inner,
            pinning=ints.get("pinning", 0),
            map_extra=ints.get("map_extra", 0),
            numa_node=ints.get("numa_node", 0),
            btf_key_type_id=key_id,
            btf_value_type_id=value_id,
        )

    def _data_sections(self) -> list[_Section]:
        out = []
        for sec in self.sections:
            if not sec.flags & SHF_ALLOC or sec.flags & SHF_EXECINSTR:
                continue
            base = sec.name.split(".")[1] if sec.name.startswith(".") else ""
            is_data = sec.type in (SHT_PROGBITS, SHT_NOBITS) and sec.size > 0
            if base in ("rodata", "data", "bss") and is_data:
                out.append(sec)
        return out

    def _data_map(self, sec: _Section) -> MapSpec:
        read_only = sec.name.startswith(".rodata")
        value_id = 0
        if self.btf is not None:
            datasec = self.btf.find(Kind.DATASEC, sec.name)
            if datasec is not None:
                value_id = datasec.id
        # As libbpf does: mmap-able, so user space can read and write variables in place.
        flags = MapFlags.MMAPABLE | (MapFlags.RDONLY_PROG if read_only else 0)
        return MapSpec(
            name=sec.name,
            type=MapType.ARRAY,
            key_size=4,
            value_size=sec.size,
            max_entries=1,
            flags=int(flags),
            btf_value_type_id=value_id,
            data=self.section_data(sec),
            section=sec.name,
            freeze=read_only,
        )

    # --- code ------------------------------------------------------------------------------

    def _functions(
        self, data_sections: list[_Section], maps: dict[str, MapSpec]
    ) -> dict[str, _Function]:
        data_by_index = {s.index: s.name for s in data_sections}
        maps_index = self.by_name[".maps"].index if ".maps" in self.by_name else -1
        legacy = self.by_name.get("maps") if self.options.legacy_maps else None
        self._legacy_index = legacy.index if legacy is not None else -1
        funcs_by_section: dict[int, list[_Symbol]] = {}
        labels_by_section: dict[int, dict[int, str]] = {}
        for sym in self.symbols:
            if sym.shndx in (SHN_UNDEF, SHN_ABS, SHN_COMMON) or sym.shndx >= len(self.sections):
                continue
            if not self.sections[sym.shndx].executable:
                continue
            if sym.type == STT_FUNC:
                funcs_by_section.setdefault(sym.shndx, []).append(sym)
            elif sym.type == STT_NOTYPE and sym.name:
                labels_by_section.setdefault(sym.shndx, {}).setdefault(sym.value // 8, sym.name)

        functions: dict[str, _Function] = {}
        entry_of: dict[str, str] = {}  # call token "@section:offset" → function name
        for sec in self.sections:
            if not sec.executable:
                continue
            syms = sorted(funcs_by_section.get(sec.index, []), key=lambda s: s.value)
            if not syms:
                raise ObjectError(f"executable section {sec.name} has no function symbols")
            raw = self.section_data(sec)
            if len(raw) % 8:
                raise ObjectError(f"section {sec.name} size {len(raw)} is not a multiple of 8")
            raw, poisoned = self._apply_core(sec, raw, syms)
            insns = decode(raw)
            slot_index = _slot_index(insns)
            insns = self._apply_btf_ext(sec.name, insns, slot_index)
            for slot, note in poisoned.items():
                idx = slot_index[slot]
                meta = insns[idx].meta
                insns[idx] = insns[idx].with_meta_object(
                    Meta(meta.line, meta.func_btf_id, meta.origin, note))
            insns = self._apply_relocations(sec, insns, slot_index, data_by_index, maps_index, maps)
            names = labels_by_section.get(sec.index, {})
            for n, sym in enumerate(syms):
                start = sym.value
                end = syms[n + 1].value if n + 1 < len(syms) else len(raw)
                if start % 8 or start // 8 not in slot_index:
                    raise ObjectError(f"function {sym.name} starts mid-instruction in {sec.name}")
                first = slot_index[start // 8]
                last = slot_index.get(end // 8, len(insns))
                body = list(insns[first:last])
                if not body:
                    raise ObjectError(f"function {sym.name} in {sec.name} is empty")
                if sym.name in functions:
                    raise UnsupportedFeature(
                        "two functions with the same name",
                        f"{sym.name!r} in {sec.name} and {functions[sym.name].section}",
                    )
                body[0] = body[0].with_label(sym.name)
                base_slot = start // 8
                local_names = {
                    s - base_slot: nm for s, nm in names.items() if start // 8 <= s < end // 8
                }
                try:
                    body = symbolize(
                        body, names=local_names, namer=lambda slot, f=sym.name: f"{f}+{slot}"
                    )
                except ValueError as exc:
                    raise ObjectError(f"function {sym.name}: {exc}") from None
                functions[sym.name] = _Function(sym.name, sec.name, start, body, sym.bind)
                entry_of[_call_token(sec.index, start)] = sym.name
        for func in functions.values():
            body = func.insns
            for index, insn in enumerate(body):
                if insn.reference is not None and insn.reference.startswith("@"):
                    callee = entry_of.get(insn.reference)
                    if callee is None:
                        shndx, offset = insn.reference[1:].split(":")
                        raise ObjectError(
                            f"function {func.name}: instruction {index} calls offset {offset} "
                            f"of section {self.sections[int(shndx)].name}, which is not the "
                            "start of a function"
                        )
                    body[index] = insn._replace(reference=callee, imm=-1 if insn.is_call else 0)
        return functions

    def _apply_core(
        self, sec: _Section, raw: bytes, syms: list[_Symbol]
    ) -> tuple[bytes, dict[int, str]]:
        """Apply the section's CO-RE relocations to its raw instructions (as libbpf does,
        before linking); returns the bytes and a note per poisoned instruction slot."""
        ext = self.btf_ext
        relos = ext.core_relos.get(sec.name) if ext is not None else None
        if not relos:
            return raw, {}
        btf = self.btf
        assert btf is not None
        target = self.target(f"{len(relos)} CO-RE relocation(s) in section {sec.name}")
        if self._relocator is None:
            self._relocator = core.Relocator(btf, target)
        out = bytearray(raw)
        notes: dict[int, str] = {}
        starts = [s.value for s in syms]
        for n, relo in enumerate(relos):
            at = bisect.bisect_right(starts, relo.insn_off) - 1
            func = syms[at] if at >= 0 else None
            where = (f"program {func.name}: instruction {(relo.insn_off - func.value) // 8}"
                     if func is not None else f"section {sec.name}+{relo.insn_off}")
            try:
                result = self._relocator.resolve(relo)
                note = core.patch(out, relo.insn_off, result)
            except ObjectError as exc:
                raise ObjectError(f"{where}: CO-RE relocation #{n} "
                                  f"({core.describe(btf, relo)}): {exc}") from None
            if note:
                notes[relo.insn_off // 8] = (f"CO-RE {core.describe(btf, relo)} against "
                                             f"{target.core_name}: {note}")
        return bytes(out), notes

    def _apply_btf_ext(
        self, section: str, insns: list[Instruction], slot_index: dict[int, int]
    ) -> list[Instruction]:
        ext = self.btf_ext
        if ext is None:
            return insns
        func_recs = ext.func_info.get(section, ())
        line_recs = ext.line_info.get(section, ())
        if not func_recs and not line_recs:
            return insns
        btf = self.btf
        assert btf is not None
        out = list(insns)
        for rec in line_recs:
            idx = slot_index.get(rec.insn_off // 8)
            if idx is None:
                raise ObjectError(
                    f"line_info for {section} points mid-instruction (offset {rec.insn_off})"
                )
            line = LineInfo(rec.file_name_off, rec.line_off, rec.line, rec.col, btf)
            meta = out[idx].meta
            out[idx] = out[idx].with_meta_object(
                Meta(line, meta.func_btf_id, meta.origin, meta.note)
            )
        for rec in func_recs:
            idx = slot_index.get(rec.insn_off // 8)
            if idx is None:
                raise ObjectError(f"func_info for {section} points mid-instruction")
            meta = out[idx].meta
            out[idx] = out[idx].with_meta_object(
                Meta(meta.line, rec.type_id, meta.origin, meta.note)
            )
        return out

    def _apply_relocations(
        self,
        sec: _Section,
        insns: list[Instruction],
        slot_index: dict[int, int],
        data_by_index: dict[int, str],
        maps_index: int,
        maps: dict[str, MapSpec],
    ) -> list[Instruction]:
        """Turn relocated instructions into references: maps by name, calls and function
        addresses by a "@section:offset" token that `_functions` resolves to a name."""
        out = list(insns)
        relocated: set[int] = set()
        legacy_index = self._legacy_index
        for r_offset, sym, rtype in self.relocations(sec):
            if r_offset % 8 or r_offset // 8 not in slot_index:
                raise ObjectError(f"relocation at {sec.name}+{r_offset} is not on an instruction")
            idx = slot_index[r_offset // 8]
            insn = out[idx]
            if sym.shndx == SHN_UNDEF:
                out[idx] = self._extern_insn(sec, r_offset, insn, sym)
                relocated.add(idx)
                continue
            if rtype not in (
                R_BPF_64_64,
                R_BPF_64_32,
                R_BPF_64_ABS64,
                R_BPF_64_ABS32,
                R_BPF_64_NODYLD32,
            ):
                raise ObjectError(f"relocation type {rtype} at {sec.name}+{r_offset}")
            target_sec = self.sections[sym.shndx] if sym.shndx < len(self.sections) else None
            if insn.is_call:
                if target_sec is None or not target_sec.executable:
                    raise ObjectError(
                        f"call at {sec.name}+{r_offset} relocated against "
                        f"{sym.name!r}, which is not code"
                    )
                if insn.src != CallSrc.PSEUDO_CALL:
                    raise ObjectError(
                        f"relocated call at {sec.name}+{r_offset} is not a BPF-to-BPF call"
                    )
                target = sym.value + (insn.imm + 1) * 8
                out[idx] = insn._replace(reference=_call_token(sym.shndx, target))
                relocated.add(idx)
                continue
            if not insn.is_ld_imm64:
                raise ObjectError(
                    f"relocation at {sec.name}+{r_offset} applies to opcode "
                    f"{insn.opcode:#x}, expected a 64-bit immediate load"
                )
            lo = s32(insn.imm & 0xFFFFFFFF)
            if target_sec is not None and target_sec.executable:
                # Address of a function (callbacks for bpf_loop and friends).
                out[idx] = insn._replace(
                    src=PseudoSrc.FUNC,
                    imm=0,
                    reference=_call_token(sym.shndx, sym.value + lo),
                )
            elif sym.shndx == maps_index or (sym.shndx == legacy_index and legacy_index >= 0):
                if sym.name not in maps:
                    raise ObjectError(
                        f"{sec.name}+{r_offset} references map {sym.name!r}, "
                        "which is not defined in BTF"
                    )
                out[idx] = insn._replace(src=PseudoSrc.MAP_FD, imm=0, reference=sym.name)
            elif sym.shndx in data_by_index:
                offset = lo + (sym.value if sym.type != STT_SECTION else 0)
                out[idx] = insn._replace(
                    src=PseudoSrc.MAP_VALUE, imm=offset, reference=data_by_index[sym.shndx]
                )
            else:
                tname = target_sec.name if target_sec else f"section {sym.shndx}"
                raise UnsupportedFeature(
                    f"references into section {tname}",
                    f"symbol {sym.name!r} from {sec.name}+{r_offset}",
                )
            relocated.add(idx)
        # Calls without a relocation go to a static function of the same section; their
        # immediate is relative to the instruction.
        slot = 0
        for idx, insn in enumerate(out):
            if idx not in relocated and (insn.is_pseudo_call or insn.is_func_load):
                out[idx] = insn._replace(
                    reference=_call_token(sec.index, (slot + 1 + insn.imm) * 8)
                )
            slot += insn.width
        return out

    def _section_def(self, section: str, program: str) -> SectionDef:
        """Program type for a section: the user's `program_type` for every program (like
        bpftool's `type`), else libbpf's section names."""
        forced = self.options.program_type
        if forced is not None:
            sdef = section_def(forced)
            if sdef is None:
                raise ObjectError(f"unknown program type {forced!r} (give a section name "
                                  "libbpf knows: xdp, xdp.frags, tc, tcx/ingress, ...)")
            return sdef
        refused = _refused_section(section)
        if refused is not None:
            raise UnsupportedFeature(refused, f"program {program!r} in section {section!r}")
        sdef = section_def(section)
        if sdef is None:
            raise UnsupportedFeature(
                f"program section {section!r}",
                f"program {program!r}: unknown section name; give the type (--type xdp)",
            )
        return sdef

    def _extern_insn(self, sec: _Section, r_offset: int, insn: Instruction,
                     sym: _Symbol) -> Instruction:
        """An instruction referring to an extern, rewritten as libbpf rewrites it."""
        e = self.externs.get(sym.name)
        if e is None:
            raise ObjectError(f"{sec.name}+{r_offset} refers to undefined symbol {sym.name!r}")
        try:
            how = self._ksym_table().get(e.name) if e.section == externs.KSYMS else \
                externs.resolve(self, e)
        except ObjectError as exc:
            raise type(exc)(f"{sec.name}+{r_offset}: {exc}") from None
        if insn.is_call:
            if not e.is_func:
                raise ObjectError(f"{sec.name}+{r_offset}: extern {sym.name!r} is called but "
                                  "is not a function")
            # A module's kfunc: `off` is its BTF's index in the program's fd_array.
            return insn._replace(src=CallSrc.KFUNC, imm=how.value, off=how.slot)
        if not insn.is_ld_imm64:
            raise ObjectError(f"{sec.name}+{r_offset}: extern {sym.name!r} is referenced by "
                              f"opcode {insn.opcode:#x}, expected a 64-bit immediate load")
        if how.kind == "kconfig":
            return insn._replace(src=PseudoSrc.MAP_VALUE, imm=how.value,
                                 reference=externs.KCONFIG)
        if how.kind in ("btf_id", "kfunc"):  # a kfunc's address: `if (kfunc)` checks
            # The kernel wants a module's BTF fd in the second slot's immediate; until the
            # loader knows it, that word holds the module's fd_array index (ir.encode
            # replaces it with the fd in that slot).
            return insn._replace(src=PseudoSrc.BTF_ID, imm=how.value | how.slot << 32)
        return insn._replace(src=PseudoSrc.NONE, imm=s64(how.value))  # address, 0 if unset

    def _ksym_table(self) -> externs.KsymTable:
        """The object's ksyms, resolved together the first time an instruction needs one
        (module fd_array indices are per object, in libbpf's order)."""
        if self._ksyms is None:
            self._ksyms = externs.resolve_ksyms(self)
        return self._ksyms

    def _programs(
        self, functions: dict[str, _Function], license: str, kern_version: int
    ) -> dict[str, ProgramSpec]:
        module_btfs = self._ksyms.module_btfs if self._ksyms is not None else ()
        programs: dict[str, ProgramSpec] = {}
        for func in functions.values():
            if func.section == ".text":
                continue
            sdef = self._section_def(func.section, func.name)
            if func.bind == STB_LOCAL:
                # A static function in a program section is a subprogram, not an entry point.
                continue
            program = Program(func.name, tuple(_link(func.name, functions)))
            programs[func.name] = ProgramSpec(
                name=func.name,
                section=func.section,
                type=sdef.prog_type,
                attach_type=sdef.attach_type,
                flags=sdef.flags,
                license=license,
                kern_version=kern_version,
                program=program,
                module_btfs=module_btfs,
            )
        # No programs is fine, as for libbpf: an object can hold only maps (to pin, share).
        return programs


def _refused_section(section: str) -> str | None:
    """The feature a section belongs to when it is one this loader refuses."""
    for prefix, feature in _REFUSED_SECTIONS:
        if section == prefix or section.startswith(prefix + "/"):
            return feature
    return None


_REFUSED_SECTIONS = (
    ("struct_ops", "struct_ops programs"),
    ("struct_ops.s", "struct_ops programs"),
    ("freplace", "freplace (program extension) programs"),
    ("iter", "BPF iterators"),
    ("iter.s", "BPF iterators"),
    ("usdt", "USDT probes"),
    ("uprobe.multi", "uprobe.multi programs"),
    ("kprobe.multi", "kprobe.multi programs"),
    ("kretprobe.multi", "kprobe.multi programs"),
)


def _link(entry: str, functions: dict[str, _Function]) -> list[Instruction]:
    """Entry function, then subprograms appended depth first on first call (libbpf's order)."""
    out: list[Instruction] = []
    appended: set[str] = set()

    def append(name: str) -> None:
        appended.add(name)
        body = functions[name].insns
        out.extend(body)
        for insn in body:
            if (insn.is_pseudo_call or insn.is_func_load) and insn.reference not in appended:
                if insn.reference not in functions:
                    raise ObjectError(f"function {name} calls unknown function {insn.reference!r}")
                append(insn.reference)  # type: ignore[arg-type]

    append(entry)
    return out


def _slot_index(insns: Iterable[Instruction]) -> dict[int, int]:
    out = {}
    slot = 0
    for index, insn in enumerate(insns):
        out[slot] = index
        slot += insn.width
    return out


def _call_token(shndx: int, offset: int) -> str:
    return f"@{shndx}:{offset}"


def _sh_type(value: object) -> int:
    if isinstance(value, int):
        return value
    return {
        "SHT_PROGBITS": SHT_PROGBITS,
        "SHT_SYMTAB": SHT_SYMTAB,
        "SHT_NOBITS": SHT_NOBITS,
        "SHT_REL": SHT_REL,
    }.get(str(value), -1)


__all__ = ["read_object"]
