"""Extern symbols: `__kconfig` variables, `__ksym` variables and kfuncs.

libbpf's rules, so that instructions (and kernel tags) come out the same:
- kconfig externs live in a synthesised read-only `.kconfig` array map, laid out by
  alignment (largest first), then size, then name; the object's loads become direct value
  loads of that map. LINUX_KERNEL_VERSION and CONFIG_* values come from the target; a weak
  extern that the target does not set is 0, a strong one is an error.
- a typed ksym variable becomes `ld_imm64 src=BTF_ID imm=<its VAR id in the kernel BTF>`; a
  typeless one (`extern const void x __ksym`) the symbol's address; a kfunc call gets
  `src=KFUNC imm=<FUNC id>`. Weak ones that the kernel lacks become 0 (dead code when guarded
  by `bpf_ksym_exists`).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..uapi import MapFlags, MapType
from .btf import BTF, Kind, essential_name
from .errors import ObjectError, UnsupportedFeature
from .spec import MapSpec

if TYPE_CHECKING:
    from .core import Target
    from .reader import _Reader

KCONFIG = ".kconfig"
KSYMS = ".ksyms"
_STB_WEAK = 2


@dataclass(frozen=True, slots=True)
class Extern:
    name: str
    section: str  # .kconfig or .ksyms
    weak: bool
    btf_id: int  # the VAR or FUNC in the object's BTF
    type_id: int  # the variable's type behind modifiers (0: typeless), or the func proto
    is_func: bool = False
    size: int = 0  # kconfig: bytes
    align: int = 1
    offset: int = 0  # kconfig: where the value is in the .kconfig map


def collect(reader: _Reader) -> dict[str, Extern]:
    """Every extern the object's code refers to, with its kconfig layout."""
    names = {}
    for sym in reader.symbols:
        if sym.shndx == 0 and sym.name and sym.bind in (1, _STB_WEAK):
            names[sym.name] = sym.bind == _STB_WEAK
    if not names:
        return {}
    btf = reader.btf
    if btf is None:
        raise ObjectError(f"extern symbols ({', '.join(sorted(names))}) need BTF (build with -g)")
    in_section: dict[int, str] = {}
    for t in btf.types:
        if t.kind == Kind.DATASEC and t.name in (KCONFIG, KSYMS):
            for m in t.members:
                in_section[m.type] = t.name
    found: list[Extern] = []
    for t in btf.types:
        if t.kind not in (Kind.VAR, Kind.FUNC) or t.name not in names:
            continue
        if t.kind == Kind.VAR and t.linkage != 2:
            continue
        if t.kind == Kind.FUNC and t.linkage != 2:
            continue
        section = in_section.get(t.id)
        if section is None:
            if t.kind == Kind.FUNC:
                raise ObjectError(
                    f"extern function {t.name!r} is not defined in this object and is not a "
                    "__ksym kfunc: link the objects first (bpftool gen object)")
            raise ObjectError(f"extern {t.name!r} is neither __kconfig nor __ksym")
        weak = names[t.name]
        if t.kind == Kind.FUNC:
            found.append(Extern(t.name, section, weak, t.id, t.ref, is_func=True))
            continue
        vt = btf.skip_modifiers(t.ref)
        if section == KCONFIG:
            size = btf.size_of(vt.id)
            found.append(Extern(t.name, section, weak, t.id, vt.id, size=size,
                                align=_align_of(btf, vt.id)))
        else:
            found.append(Extern(t.name, section, weak, t.id, vt.id))
    missing = set(names) - {e.name for e in found}
    if missing:
        raise ObjectError(f"extern symbol(s) {', '.join(sorted(missing))} have no BTF "
                          "declaration")
    # libbpf's order: kconfig by alignment (descending), size (ascending), name.
    kcfg = sorted((e for e in found if e.section == KCONFIG),
                  key=lambda e: (-e.align, e.size, e.name))
    out: dict[str, Extern] = {}
    offset = 0
    for e in kcfg:
        offset = -(-offset // e.align) * e.align
        out[e.name] = Extern(e.name, e.section, e.weak, e.btf_id, e.type_id, size=e.size,
                             align=e.align, offset=offset)
        offset += e.size
    for e in found:
        if e.section == KSYMS:
            out[e.name] = e
    return out


def _align_of(btf: BTF, type_id: int) -> int:
    t = btf.skip_modifiers(type_id)
    if t.kind == Kind.ARRAY and t.array is not None:
        return _align_of(btf, t.array[0])
    if t.kind in (Kind.INT, Kind.ENUM, Kind.ENUM64, Kind.PTR, Kind.FLOAT):
        return min(btf.size_of(t.id), 8) or 1
    if t.kind in (Kind.STRUCT, Kind.UNION):
        return max((_align_of(btf, m.type) for m in t.members), default=1)
    return 1


def kconfig_map(reader: _Reader) -> MapSpec | None:
    """The `.kconfig` map with the target's values, or None without kconfig externs."""
    kcfg = [e for e in reader.externs.values() if e.section == KCONFIG]
    if not kcfg:
        return None
    btf = reader.btf
    assert btf is not None
    size = max(e.offset + e.size for e in kcfg)
    data = bytearray(size)
    target = reader.target(f"kconfig externs ({', '.join(e.name for e in kcfg)})")
    for e in kcfg:
        raw = _kconfig_value(btf, e, target)
        if raw is not None:
            data[e.offset : e.offset + e.size] = raw
    datasec = btf.find(Kind.DATASEC, KCONFIG)
    return MapSpec(
        name=KCONFIG,
        type=MapType.ARRAY,
        key_size=4,
        value_size=size,
        max_entries=1,
        flags=int(MapFlags.RDONLY_PROG | MapFlags.MMAPABLE),
        btf_value_type_id=datasec.id if datasec is not None else 0,
        data=bytes(data),
        section=KCONFIG,
        freeze=True,
    )


def _kconfig_value(btf: BTF, e: Extern, target: Target) -> bytes | None:
    if e.name == "LINUX_KERNEL_VERSION":
        value: str | None = str(target.kernel_version)
    elif e.name == "LINUX_HAS_BPF_COOKIE":
        value = "y" if target.has_bpf_cookie else "n"
    elif e.name == "LINUX_HAS_SYSCALL_WRAPPER":
        value = "y" if target.has_syscall_wrapper else "n"
    elif e.name.startswith("LINUX_"):
        raise UnsupportedFeature(f"kconfig extern {e.name}", "libbpf does not know it either")
    elif e.name.startswith("CONFIG_"):
        config = target.kconfig
        value = None if config is None else config.get(e.name)
    else:
        raise ObjectError(f"kconfig extern {e.name!r} is neither LINUX_* nor CONFIG_*")
    if value is None:
        if e.weak:
            return None
        raise ObjectError(f"kconfig extern {e.name} (not weak) is not set in the kernel's "
                          "configuration")
    return encode_kconfig(btf, e, value)


def encode_kconfig(btf: BTF, e: Extern, value: str) -> bytes:
    """A config value as bytes of the extern's type (libbpf's set_kcfg_value_*)."""
    t = btf.skip_modifiers(e.type_id)
    what = f"kconfig extern {e.name} ({btf.describe(t.id)})"
    if t.kind == Kind.ARRAY and t.array is not None:
        elem = btf.skip_modifiers(t.array[0])
        if elem.kind != Kind.INT or elem.ref != 1:
            raise ObjectError(f"{what}: only char arrays hold strings")
        if len(value) < 2 or value[0] != '"' or value[-1] != '"':
            raise ObjectError(f"{what}: value {value!r} is not a string")
        raw = value[1:-1].encode()[: e.size - 1]
        return raw + bytes(e.size - len(raw))
    if t.kind == Kind.ENUM and t.name == "libbpf_tristate":
        tri = {"y": 1, "n": 0, "m": 2}.get(value)
        if tri is None:
            raise ObjectError(f"{what}: value {value!r} is not y, n or m")
        return tri.to_bytes(e.size, "little")
    if t.kind == Kind.INT:
        is_bool = bool((t.encoding >> 24) & 4)
        if is_bool:
            if value not in ("y", "n"):
                raise ObjectError(f"{what}: value {value!r} is not y or n")
            return bytes([value == "y"]) + bytes(e.size - 1)
        if value in ("y", "n", "m"):
            if e.size == 1:  # char: the letter itself, as libbpf stores it
                return value.encode()
            raise ObjectError(f"{what}: value {value!r} is not a number")
        try:
            number = int(value, 0)
        except ValueError:
            raise ObjectError(f"{what}: value {value!r} is not a number") from None
        bits = e.size * 8
        if t.int_signed:
            ok = -(1 << (bits - 1)) <= number < (1 << (bits - 1))
        else:
            ok = 0 <= number < (1 << bits)
        if not ok:
            raise ObjectError(f"{what}: value {number} does not fit {e.size} bytes")
        return number.to_bytes(e.size, "little", signed=number < 0)
    raise ObjectError(f"{what}: unsupported kconfig extern type")


@dataclass(frozen=True, slots=True)
class Resolved:
    """How the instructions referring to an extern are rewritten."""

    kind: str  # "kconfig", "btf_id", "address", "kfunc", "unset"
    value: int = 0  # data offset, BTF id or address
    module: str = ""  # kfuncs and ksyms of a module: its name
    slot: int = 0  # the module's index in the program's fd_array (0: vmlinux)


# The kfunc call's `off` holds the fd_array index, a signed 16-bit field.
MAX_FD_ARRAY_SLOT = 0x7FFF


@dataclass(frozen=True, slots=True)
class KsymTable:
    """Every `__ksym` extern of an object resolved at once, and the module BTFs they need.

    `module_btfs[i]` is the module whose BTF fd goes in fd_array[i + 1]; index 0 is
    reserved (a kfunc call with `off` 0 is vmlinux's). As in libbpf, modules get their
    index in the order of the first kfunc (externs sorted by name) that resolves there;
    modules that only typed ksym variables live in follow (libbpf passes them by fd in the
    ld_imm64 only; the kernel reads fd_array only at kfunc calls' `off`, so these extra
    entries change nothing, and they let a pure instruction name its module).
    """

    resolved: Mapping[str, Resolved | ObjectError]
    module_btfs: tuple[str, ...] = ()

    def get(self, name: str) -> Resolved:
        """The resolution of extern `name`; raises its error if it did not resolve."""
        how = self.resolved[name]
        if isinstance(how, ObjectError):
            raise how
        return how


def resolve_ksyms(reader: _Reader) -> KsymTable:
    """Resolve every ksym extern of the object in libbpf's order (by name), and lay out the
    module BTFs the program's fd_array must carry."""
    found: dict[str, Resolved | ObjectError] = {}
    kfunc_modules: list[str] = []
    var_modules: list[str] = []
    for e in sorted((e for e in reader.externs.values() if e.section == KSYMS),
                    key=lambda e: e.name):
        try:
            how = resolve(reader, e)
        except ObjectError as exc:
            found[e.name] = exc
            continue
        if how.module:
            modules = kfunc_modules if e.is_func else var_modules
            if how.module not in modules:
                modules.append(how.module)
        found[e.name] = how
    table = tuple(kfunc_modules + [m for m in var_modules if m not in kfunc_modules])
    if len(table) > MAX_FD_ARRAY_SLOT:
        raise ObjectError(f"the object's ksyms live in {len(table)} kernel modules; a kfunc "
                          f"call can name {MAX_FD_ARRAY_SLOT} at most (fd_array index in "
                          "the instruction's 16-bit offset)")
    slots = {module: index + 1 for index, module in enumerate(table)}
    for name, how in found.items():
        if isinstance(how, Resolved) and how.module:
            found[name] = replace(how, slot=slots[how.module])
    return KsymTable(found, table)


def resolve(reader: _Reader, e: Extern) -> Resolved:
    """Resolve one extern against the target kernel (ksyms) or the kconfig layout.

    Typed ksyms and kfuncs are looked up in vmlinux first, then in each module's own types
    (in the target's module order), as libbpf's find_ksym_btf_id. A kfunc is looked up by
    its name without a `___flavour` suffix (libbpf's essential name), so that an object
    can declare two prototypes of one kfunc for different kernels.
    """
    if e.section == KCONFIG:
        return Resolved("kconfig", e.offset)
    from .core import CoreError, types_compatible

    target = reader.target(f"__ksym extern {e.name!r}")
    local = reader.btf
    assert local is not None
    if not e.is_func and e.type_id == 0:
        address = target.kallsyms(e.name) if target.kallsyms is not None else None
        if address is None:
            if e.weak:
                return Resolved("unset")
            raise ObjectError(f"__ksym {e.name!r}: not in the kernel's symbols (kallsyms)")
        return Resolved("address", address)
    kind = Kind.FUNC if e.is_func else Kind.VAR
    wanted = essential_name(e.name) if e.is_func else e.name
    what = "kfunc" if e.is_func else "variable"
    for module, btf in (("", target.btf), *target.modules):
        found = btf.find_own(kind, wanted) if module else btf.find(kind, wanted)
        if found is None:
            continue
        try:
            if e.is_func:
                ok = types_compatible(local, e.type_id, btf, found.ref)
            else:
                ok = types_compatible(local, e.type_id, btf, btf.skip_modifiers(found.ref).id)
        except CoreError as exc:
            raise ObjectError(f"__ksym {e.name!r}: {exc}") from None
        if not ok:
            if e.is_func and e.weak:
                return Resolved("unset")  # libbpf: a weak kfunc of another prototype is unset
            raise ObjectError(
                f"__ksym {what} {e.name!r}: its declaration ({local.describe(e.type_id)}) "
                f"does not match the kernel's ({btf.describe(found.ref)}, BTF id {found.id} "
                f"in {module or target.name})")
        return Resolved("kfunc" if e.is_func else "btf_id", found.id, module)
    if e.weak:
        return Resolved("unset")
    raise ObjectError(f"__ksym {what} {e.name!r}: not found in the kernel's BTF "
                      f"({target.name}{' or its modules' if target.modules else ''})")


def sanitized_btf(btf: BTF, externs: dict[str, Extern]) -> BTF:
    """The object's BTF made acceptable to the kernel, which refuses extern linkage and
    functions inside a datasec: `.kconfig` gets its size and variable offsets, extern
    variables become allocated ones, and `.ksyms` entries point to one dummy int variable
    (two types appended at the end, so no existing type id moves)."""
    kcfg_sec = btf.find(Kind.DATASEC, KCONFIG)
    ksym_sec = btf.find(Kind.DATASEC, KSYMS)
    if kcfg_sec is None and ksym_sec is None:
        return btf
    blob = bytearray(btf.blob())
    hdr_len = btf.hdr_len
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
    types = bytearray(blob[hdr_len + type_off : hdr_len + type_off + type_len])
    strings = bytearray(blob[hdr_len + str_off : hdr_len + str_off + str_len])
    int_id = len(btf.types)
    var_id = int_id + 1
    int_name = len(strings)
    strings += b"int\0"
    var_name = len(strings)
    strings += b"__morpheus_ksym\0"
    types += struct.pack("<IIII", int_name, Kind.INT << 24, 4, (1 << 24) | 32)
    types += struct.pack("<IIII", var_name, Kind.VAR << 24, int_id, 1)

    def var_linkage_allocated(var_id_: int, type_to: int | None = None) -> None:
        var = btf[var_id_]
        if var.kind != Kind.VAR:
            return
        struct.pack_into("<I", types, var.byte_offset + 12, 1)
        if type_to is not None:
            struct.pack_into("<I", types, var.byte_offset + 8, type_to)

    if kcfg_sec is not None:
        offsets = []
        for m in kcfg_sec.members:
            var = btf[m.type]
            e = externs.get(var.name)
            offsets.append((e.offset if e else 0, m.type, e.size if e else m.size))
            var_linkage_allocated(m.type)
        offsets.sort()
        size = max((o + s for o, _, s in offsets), default=0)
        struct.pack_into("<I", types, kcfg_sec.byte_offset + 8, size)
        for i, (off, tid, sz) in enumerate(offsets):
            struct.pack_into("<III", types, kcfg_sec.byte_offset + 12 + 12 * i, tid, off, sz)
    if ksym_sec is not None:
        for i, m in enumerate(ksym_sec.members):
            t = btf[m.type]
            if t.kind == Kind.FUNC:
                # a global function with a prototype whose parameters all have names
                info = struct.unpack_from("<I", types, t.byte_offset + 4)[0]
                struct.pack_into("<I", types, t.byte_offset + 4, (info & ~0xFFFF) | 1)
                proto = btf[t.ref]
                if proto.kind == Kind.FUNC_PROTO:
                    for j, p in enumerate(proto.members):
                        if p.type and not p.name:
                            struct.pack_into("<I", types, proto.byte_offset + 12 + 8 * j,
                                             var_name)
            else:
                var_linkage_allocated(m.type, int_id)
            struct.pack_into("<III", types, ksym_sec.byte_offset + 12 + 12 * i, var_id, 4 * i, 4)
        struct.pack_into("<I", types, ksym_sec.byte_offset + 8, 4 * max(ksym_sec.vlen, 1))
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types),
                         len(strings))
    return BTF(header + bytes(types) + bytes(strings))
