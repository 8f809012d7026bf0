"""CO-RE: relocating field offsets, sizes, type and enum facts to a target kernel's BTF.

Pure: the target BTF is parsed data handed in by the caller. The rules are libbpf's
(relo_core.c), so that a relocated instruction is byte for byte what libbpf produces and the
kernel computes the same program tag:

- a relocation names a local type (root) and an access string "0:1:2" (array index into the
  root, then member or array indices);
- candidates are the target's types of the same kind whose name, without a `___flavour`
  suffix, equals the local name without its suffix; vmlinux first, module BTF only if vmlinux
  has none;
- a candidate matches when every named member of the access path exists (found by name,
  through anonymous structs and unions) with a compatible type;
- all matching candidates must agree (same bit offset and same value), or it is an error;
- no candidate: existence checks give 0; a field access or enum value is "poisoned": the
  instruction becomes a call to helper 0xbad2310, harmless when it is dead code (behind
  `bpf_core_field_exists`), refused by the verifier otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from .btf import BTF, BTFType, CoreRelo, Kind, essential_name
from .errors import ObjectError

POISON_IMM = 0xBAD2310  # libbpf's "bad relo" helper id: "invalid func unknown#195896080"
MAX_SPEC_LEN = 64  # libbpf's BPF_CORE_SPEC_MAX_LEN
MAX_DEPTH = 32


class RelocKind(IntEnum):
    FIELD_BYTE_OFFSET = 0
    FIELD_BYTE_SIZE = 1
    FIELD_EXISTS = 2
    FIELD_SIGNED = 3
    FIELD_LSHIFT_U64 = 4
    FIELD_RSHIFT_U64 = 5
    TYPE_ID_LOCAL = 6
    TYPE_ID_TARGET = 7
    TYPE_EXISTS = 8
    TYPE_SIZE = 9
    ENUMVAL_EXISTS = 10
    ENUMVAL_VALUE = 11
    TYPE_MATCHES = 12

    @property
    def field_based(self) -> bool:
        return self <= RelocKind.FIELD_RSHIFT_U64

    @property
    def type_based(self) -> bool:
        return self in _TYPE_BASED

    @property
    def enumval_based(self) -> bool:
        return self in (RelocKind.ENUMVAL_EXISTS, RelocKind.ENUMVAL_VALUE)


_TYPE_BASED = frozenset({RelocKind.TYPE_ID_LOCAL, RelocKind.TYPE_ID_TARGET,
                         RelocKind.TYPE_EXISTS, RelocKind.TYPE_SIZE, RelocKind.TYPE_MATCHES})
_COMPOSITE = (Kind.STRUCT, Kind.UNION)
_ANY_ENUM = (Kind.ENUM, Kind.ENUM64)


class CoreError(ObjectError):
    """A CO-RE relocation that cannot be applied (not merely unsatisfied: that poisons)."""


@dataclass(frozen=True)
class Target:
    """The kernel an object is read for.

    `btf` is its BTF (vmlinux) and `modules` its modules' split BTF by module name: ksyms
    and kfuncs resolve there. `core_btf`, when given, replaces both for CO-RE relocations
    only (libbpf's btf_custom_path: relocating for another kernel's BTF file). `kconfig`
    maps CONFIG_* names to their values as the config file writes them ("y", "m", "42",
    '"str"'); `kallsyms` gives a kernel symbol's address (typeless ksyms), called lazily.
    """

    btf: BTF
    modules: tuple[tuple[str, BTF], ...] = ()
    name: str = "vmlinux"
    core_btf: BTF | None = None
    core_path: str = ""
    kconfig: Mapping[str, str] | None = None
    kernel_version: int = 0
    kallsyms: Callable[[str], int | None] | None = None
    has_bpf_cookie: bool = True
    has_syscall_wrapper: bool = True

    @property
    def core_name(self) -> str:
        return self.core_path or self.name


@dataclass(slots=True)
class _Accessor:
    type_id: int  # for a named accessor, the composite (struct/union) holding the member
    index: int
    name: str | None = None  # member or enumerator name; None for an array index


@dataclass(slots=True)
class _Spec:
    btf: BTF
    root_id: int
    kind: RelocKind
    accessors: list[_Accessor] = field(default_factory=list)
    raw: list[int] = field(default_factory=list)
    bit_offset: int = 0


@dataclass(frozen=True, slots=True)
class Result:
    """What a relocation does to its instruction."""

    orig: int
    new: int
    poison: bool = False
    validate: bool = True
    orig_size: int = 0
    new_size: int = 0
    fail_memsz_adjust: bool = False
    description: str = ""


# --- BTF helpers -----------------------------------------------------------------------------


def _skip(btf: BTF, type_id: int) -> tuple[BTFType, int]:
    t = btf.skip_modifiers(type_id)
    return t, t.id


def _is_flex_array(btf: BTF, prev: _Accessor | None, array: BTFType) -> bool:
    """An array of zero elements that is the last member of its struct."""
    if prev is None or prev.name is None or array.array is None or array.array[2] != 0:
        return False
    parent = btf[prev.type_id]
    return prev.index == parent.vlen - 1


def _kinds_compatible(a: BTFType, b: BTFType) -> bool:
    return a.kind == b.kind or (a.kind in _ANY_ENUM and b.kind in _ANY_ENUM)


def _enumerators(t: BTFType) -> Sequence[tuple[str, int]]:
    return [(m.name, m.offset) for m in t.members]


# --- the local side --------------------------------------------------------------------------


def parse_spec(btf: BTF, relo: CoreRelo) -> _Spec:
    """The local access path of a relocation (libbpf's bpf_core_parse_spec)."""
    try:
        kind = RelocKind(relo.kind)
    except ValueError:
        raise CoreError(f"unknown CO-RE relocation kind {relo.kind}") from None
    try:
        raw = [int(part) for part in relo.access.split(":")] if relo.access else []
    except ValueError:
        raise CoreError(f"malformed access string {relo.access!r}") from None
    if not raw or len(raw) > MAX_SPEC_LEN or any(i < 0 for i in raw):
        raise CoreError(f"malformed access string {relo.access!r}")
    spec = _Spec(btf, relo.type_id, kind, raw=raw)
    if kind.type_based:
        if relo.access != "0":
            raise CoreError(f"type relocation with access string {relo.access!r}, expected '0'")
        return spec
    t, tid = _skip(btf, relo.type_id)
    first = _Accessor(tid, raw[0])
    spec.accessors.append(first)
    if kind.enumval_based:
        if t.kind not in _ANY_ENUM or len(raw) > 1 or raw[0] >= t.vlen:
            raise CoreError(f"enum value relocation on {btf.describe(tid)} with access "
                            f"{relo.access!r}")
        first.name = t.members[raw[0]].name
        return spec
    spec.bit_offset = raw[0] * btf.size_of(tid) * 8
    for index in raw[1:]:
        t, tid = _skip(btf, tid)
        if t.kind in _COMPOSITE:
            if index >= t.vlen:
                raise CoreError(f"access {relo.access!r}: {btf.describe(tid)} has no member "
                                f"#{index}")
            spec.bit_offset += t.member_bit_offset(index)
            member = t.members[index]
            if member.name:
                spec.accessors.append(_Accessor(tid, index, member.name))
            tid = member.type
        elif t.kind == Kind.ARRAY and t.array is not None:
            _, tid = _skip(btf, t.array[0])
            prev = spec.accessors[-1] if spec.accessors else None
            if not _is_flex_array(btf, prev, t) and index >= t.array[2]:
                raise CoreError(f"access {relo.access!r}: index {index} past an array of "
                                f"{t.array[2]}")
            spec.accessors.append(_Accessor(tid, index))
            spec.bit_offset += index * btf.size_of(tid) * 8
        else:
            raise CoreError(f"access {relo.access!r} goes into {t.kind.name} "
                            f"{btf.describe(tid)}, which has no members")
    return spec


# --- compatibility ---------------------------------------------------------------------------


def fields_compatible(lbtf: BTF, lid: int, tbtf: BTF, tid: int) -> bool:
    """libbpf's bpf_core_fields_are_compat."""
    for _ in range(MAX_DEPTH):
        lt, lid = _skip(lbtf, lid)
        tt, tid = _skip(tbtf, tid)
        if lt.kind in _COMPOSITE and tt.kind in _COMPOSITE:
            return True
        if not _kinds_compatible(lt, tt):
            return False
        if lt.kind in (Kind.PTR, Kind.FLOAT):
            return True
        if lt.kind in (Kind.FWD, Kind.ENUM, Kind.ENUM64):
            ln, tn = essential_name(lt.name), essential_name(tt.name)
            return not lt.name or not tt.name or ln == tn
        if lt.kind == Kind.INT:
            return lt.int_bit_offset == 0 and tt.int_bit_offset == 0
        if lt.kind == Kind.ARRAY and lt.array is not None and tt.array is not None:
            lid, tid = lt.array[0], tt.array[0]
            continue
        return False
    raise CoreError(f"type {lid}: nesting deeper than {MAX_DEPTH}")


def types_compatible(lbtf: BTF, lid: int, tbtf: BTF, tid: int, level: int = MAX_DEPTH) -> bool:
    """libbpf's bpf_core_types_are_compat (type exists, type size, target id, ksyms)."""
    if level <= 0:
        raise CoreError(f"type {lid}: nesting deeper than {MAX_DEPTH}")
    if not _kinds_compatible(lbtf[lid], tbtf[tid]):
        return False
    for _ in range(MAX_DEPTH):
        lt, lid = _skip(lbtf, lid)
        tt, tid = _skip(tbtf, tid)
        if not _kinds_compatible(lt, tt):
            return False
        if lt.kind in (Kind.UNKN, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.FWD, Kind.ENUM64):
            return True
        if lt.kind == Kind.INT:
            return lt.int_bit_offset == 0 and tt.int_bit_offset == 0
        if lt.kind == Kind.PTR:
            lid, tid = lt.ref, tt.ref
            continue
        if lt.kind == Kind.ARRAY and lt.array is not None and tt.array is not None:
            lid, tid = lt.array[0], tt.array[0]
            continue
        if lt.kind == Kind.FUNC_PROTO:
            if lt.vlen != tt.vlen:
                return False
            for lp, tp in zip(lt.members, tt.members, strict=True):
                if not types_compatible(lbtf, _skip(lbtf, lp.type)[1], tbtf,
                                        _skip(tbtf, tp.type)[1], level - 1):
                    return False
            lid, tid = _skip(lbtf, lt.ref)[1], _skip(tbtf, tt.ref)[1]
            continue
        return False
    raise CoreError(f"type {lid}: nesting deeper than {MAX_DEPTH}")


def _names_match(local: str, target: str) -> bool:
    if not target:
        return not local
    return essential_name(local) == essential_name(target)


def types_match(lbtf: BTF, lid: int, tbtf: BTF, tid: int, behind_ptr: bool = False,
                level: int = MAX_DEPTH) -> bool:
    """libbpf's bpf_core_types_match (bpf_core_type_matches): a stricter, shape-level match."""
    if level <= 0:
        raise CoreError(f"type {lid}: nesting deeper than {MAX_DEPTH}")
    for _ in range(MAX_DEPTH):
        lt, lid = _skip(lbtf, lid)
        tt, tid = _skip(tbtf, tid)
        if not _names_match(lt.name, tt.name):
            return False
        lk, tk = lt.kind, tt.kind
        if lk == Kind.UNKN:
            return lk == tk
        if lk == Kind.FWD:
            if behind_ptr:
                if lk == tk:
                    return lt.kind_flag == tt.kind_flag
                return (tk == Kind.STRUCT and not lt.kind_flag) or (
                    tk == Kind.UNION and lt.kind_flag)
            return lk == tk and lt.kind_flag == tt.kind_flag
        if lk in _ANY_ENUM:
            return tk in _ANY_ENUM and _enums_match(lt, tt)
        if lk in _COMPOSITE:
            if behind_ptr:
                if lk == tk:
                    return True
                return tk == Kind.FWD and (lk == Kind.UNION) == tt.kind_flag
            return lk == tk and _composites_match(lbtf, lt, tbtf, tt, behind_ptr, level)
        if lk == Kind.INT:
            return lk == tk and lt.ref == tt.ref and lt.int_signed == tt.int_signed
        if lk == Kind.PTR:
            if lk != tk:
                return False
            behind_ptr = True
            lid, tid = lt.ref, tt.ref
            continue
        if lk == Kind.ARRAY and lt.array is not None:
            if lk != tk or tt.array is None or lt.array[2] != tt.array[2]:
                return False
            lid, tid = lt.array[0], tt.array[0]
            continue
        if lk == Kind.FUNC_PROTO:
            if lk != tk or lt.vlen != tt.vlen:
                return False
            for lp, tp in zip(lt.members, tt.members, strict=True):
                if not types_match(lbtf, lp.type, tbtf, tp.type, behind_ptr, level - 1):
                    return False
            lid, tid = lt.ref, tt.ref
            continue
        return False
    raise CoreError(f"type {lid}: nesting deeper than {MAX_DEPTH}")


def _enums_match(lt: BTFType, tt: BTFType) -> bool:
    if lt.ref != tt.ref or lt.vlen > tt.vlen:
        return False
    names = [m.name for m in tt.members]
    return all(any(_names_match(m.name, n) for n in names) for m in lt.members)


def _composites_match(lbtf: BTF, lt: BTFType, tbtf: BTF, tt: BTFType, behind_ptr: bool,
                      level: int) -> bool:
    if lt.vlen > tt.vlen:
        return False
    for lm in lt.members:
        if not any(_names_match(lm.name, tm.name)
                   and types_match(lbtf, lm.type, tbtf, tm.type, behind_ptr, level - 1)
                   for tm in tt.members):
            return False
    return True


# --- matching a candidate --------------------------------------------------------------------


def _match_member(local: _Spec, acc: _Accessor, tbtf: BTF, tid: int, spec: _Spec,
                  depth: int = 0) -> int | None:
    """Find local member `acc` in target composite `tid` (through anonymous members).
    Returns the member's type id in the target, or None; extends `spec` on success."""
    if depth > MAX_DEPTH:
        raise CoreError(f"target type {tid}: anonymous members nested deeper than {MAX_DEPTH}")
    tt, tid = _skip(tbtf, tid)
    if tt.kind not in _COMPOSITE:
        return None
    lt = local.btf[acc.type_id]
    lmember = lt.members[acc.index]
    for i, m in enumerate(tt.members):
        if len(spec.raw) >= MAX_SPEC_LEN:
            raise CoreError("access path longer than 64")
        bit = tt.member_bit_offset(i)
        spec.bit_offset += bit
        spec.raw.append(i)
        if not m.name:
            found = _match_member(local, acc, tbtf, m.type, spec, depth + 1)
            if found is not None:
                return found
        elif m.name == lmember.name:
            if not fields_compatible(local.btf, lmember.type, tbtf, m.type):
                return None
            spec.accessors.append(_Accessor(tid, i, m.name))
            return m.type
        spec.bit_offset -= bit
        spec.raw.pop()
    return None


def match_spec(local: _Spec, tbtf: BTF, target_id: int) -> _Spec | None:
    """The candidate's access path if it matches the local one (bpf_core_spec_match)."""
    spec = _Spec(tbtf, target_id, local.kind)
    if local.kind.type_based:
        if local.kind == RelocKind.TYPE_MATCHES:
            ok = types_match(local.btf, local.root_id, tbtf, target_id)
        else:
            ok = types_compatible(local.btf, local.root_id, tbtf, target_id)
        return spec if ok else None
    if local.kind.enumval_based:
        tt, tid = _skip(tbtf, target_id)
        if tt.kind not in _ANY_ENUM:
            return None
        want = essential_name(local.accessors[0].name or "")
        for i, m in enumerate(tt.members):
            if essential_name(m.name) == want:
                spec.accessors.append(_Accessor(tid, i, m.name))
                spec.raw.append(i)
                return spec
        return None
    tid = target_id
    for n, acc in enumerate(local.accessors):
        tt, tid = _skip(tbtf, tid)
        if acc.name is not None:
            found = _match_member(local, acc, tbtf, tid, spec)
            if found is None:
                return None
            tid = found
            continue
        if n > 0:
            if tt.kind != Kind.ARRAY or tt.array is None:
                return None
            prev = spec.accessors[-1] if spec.accessors else None
            if not _is_flex_array(tbtf, prev, tt) and acc.index >= tt.array[2]:
                return None
            tid = _skip(tbtf, tt.array[0])[1]
        if len(spec.raw) >= MAX_SPEC_LEN:
            raise CoreError("access path longer than 64")
        spec.accessors.append(_Accessor(tid, acc.index))
        spec.raw.append(acc.index)
        spec.bit_offset += acc.index * tbtf.size_of(tid) * 8
    return spec


# --- computing values ------------------------------------------------------------------------


class _Poison(Exception):
    pass


def _field_value(kind: RelocKind, spec: _Spec | None) -> tuple[int, int, int, bool]:
    """(value, field size, field type id, validate) of a field relocation on one side."""
    if kind == RelocKind.FIELD_EXISTS:
        return (1 if spec is not None else 0), 0, 0, True
    if spec is None:
        raise _Poison
    btf = spec.btf
    acc = spec.accessors[-1]
    if acc.name is None:
        size = btf.size_of(acc.type_id)
        if kind == RelocKind.FIELD_BYTE_OFFSET:
            return spec.bit_offset // 8, size, acc.type_id, True
        if kind == RelocKind.FIELD_BYTE_SIZE:
            return size, 0, 0, True
        raise CoreError(f"{kind.name} cannot apply to an array element access")
    parent = btf[acc.type_id]
    member = parent.members[acc.index]
    mt, field_id = _skip(btf, member.type)
    bit_off = spec.bit_offset
    bit_size = parent.member_bitfield_size(acc.index)
    bitfield = bit_size > 0
    if bitfield:
        byte_size = mt.ref if mt.kind in (Kind.INT, Kind.ENUM, Kind.ENUM64) else 0
        if byte_size <= 0:
            raise CoreError(f"bitfield {member.name!r} of {btf.describe(acc.type_id)} has a "
                            "type without size")
        byte_off = bit_off // 8 // byte_size * byte_size
        while bit_off + bit_size - byte_off * 8 > byte_size * 8:
            if byte_size >= 8:
                raise CoreError(f"bitfield {member.name!r} cannot be read with a 64-bit window")
            byte_size *= 2
            byte_off = bit_off // 8 // byte_size * byte_size
    else:
        byte_size = btf.size_of(field_id)
        byte_off = bit_off // 8
        bit_size = byte_size * 8
    validate = not bitfield
    if kind == RelocKind.FIELD_BYTE_OFFSET:
        return byte_off, (0 if bitfield else byte_size), (0 if bitfield else field_id), validate
    if kind == RelocKind.FIELD_BYTE_SIZE:
        return byte_size, 0, 0, validate
    if kind == RelocKind.FIELD_SIGNED:
        signed = (mt.kind in _ANY_ENUM and mt.kind_flag) or (
            mt.kind == Kind.INT and mt.int_signed)
        return int(signed), 0, 0, True
    if kind == RelocKind.FIELD_LSHIFT_U64:
        return 64 - (bit_off + bit_size - byte_off * 8), 0, 0, validate
    if kind == RelocKind.FIELD_RSHIFT_U64:
        return 64 - bit_size, 0, 0, True
    raise CoreError(f"unexpected relocation kind {kind.name}")


def _type_value(kind: RelocKind, spec: _Spec | None) -> tuple[int, bool]:
    if spec is None:
        return 0, True
    if kind == RelocKind.TYPE_ID_TARGET:
        return spec.root_id, False
    if kind in (RelocKind.TYPE_EXISTS, RelocKind.TYPE_MATCHES):
        return 1, True
    if kind == RelocKind.TYPE_SIZE:
        return spec.btf.size_of(spec.root_id), True
    raise CoreError(f"unexpected relocation kind {kind.name}")


def _enum_value(kind: RelocKind, spec: _Spec | None) -> int:
    if kind == RelocKind.ENUMVAL_EXISTS:
        return 1 if spec is not None else 0
    if spec is None:
        raise _Poison
    acc = spec.accessors[0]
    value = spec.btf[acc.type_id].members[acc.index].offset
    return value & 0xFFFFFFFFFFFFFFFF


def calc(local: _Spec, target: _Spec | None) -> Result:
    """libbpf's bpf_core_calc_relo: original and new value of one relocation."""
    kind = local.kind
    try:
        if kind.field_based:
            orig, orig_size, orig_type, validate = _field_value(kind, local)
            new, new_size, new_type, _ = _field_value(kind, target)
            fail = False
            if orig_size != new_size and target is not None:
                ot, nt = local.btf[orig_type], target.btf[new_type]
                both_ptr = ot.kind == Kind.PTR and nt.kind == Kind.PTR
                both_unsigned = (ot.kind == Kind.INT and nt.kind == Kind.INT
                                 and not ot.int_signed and not nt.int_signed)
                fail = not (both_ptr or both_unsigned)
            return Result(orig, new, validate=validate, orig_size=orig_size,
                          new_size=new_size, fail_memsz_adjust=fail)
        if kind.type_based:
            orig, validate = _type_value(kind, local)
            new, _ = _type_value(kind, target)
            return Result(orig, new, validate=validate)
        return Result(_enum_value(kind, local), _enum_value(kind, target))
    except _Poison:
        return Result(0, 0, poison=True)


# --- one relocation --------------------------------------------------------------------------


@dataclass
class Relocator:
    """Resolves the CO-RE relocations of one object against one target (candidates cached
    per local type, as libbpf caches them)."""

    local: BTF
    target: Target
    _cands: dict[int, list[tuple[BTF, int]]] = field(default_factory=dict)
    # A result depends only on (local type, access, kind): objects repeat the same accesses
    # hundreds of times (every `skb->len`), so each is resolved once.
    _results: dict[tuple[int, str, int], Result | CoreError] = field(default_factory=dict)

    def candidates(self, local_id: int) -> list[tuple[BTF, int]]:
        cached = self._cands.get(local_id)
        if cached is not None:
            return cached
        lt = self.local[local_id]
        want = essential_name(lt.name)
        found: list[tuple[BTF, int]] = []
        if self.target.core_btf is not None:
            searched: tuple[BTF, ...] = (self.target.core_btf,)
        else:
            searched = (self.target.btf, *(b for _, b in self.target.modules))
        for btf in searched:
            for tid in btf.candidates(want):
                if _kinds_compatible(btf[tid], lt):
                    found.append((btf, tid))
            if found:
                break  # vmlinux first: modules only when vmlinux has none
        self._cands[local_id] = found
        return found

    def resolve(self, relo: CoreRelo) -> Result:
        """The relocation's result (libbpf's bpf_core_calc_relo_insn)."""
        key = (relo.type_id, relo.access, relo.kind)
        known = self._results.get(key)
        if known is None:
            try:
                known = self._resolve(relo)
            except CoreError as exc:
                known = exc
            self._results[key] = known
        if isinstance(known, CoreError):
            raise CoreError(str(known))
        return known

    def _resolve(self, relo: CoreRelo) -> Result:
        local = parse_spec(self.local, relo)
        if local.kind == RelocKind.TYPE_ID_LOCAL:
            return Result(local.root_id, local.root_id, validate=False)
        if not self.local[relo.type_id].name:
            raise CoreError("relocation on an anonymous type (no candidates to search)")
        chosen: Result | None = None
        chosen_spec: _Spec | None = None
        for btf, tid in self.candidates(relo.type_id):
            spec = match_spec(local, btf, tid)
            if spec is None:
                continue
            result = calc(local, spec)
            if chosen is None:
                chosen, chosen_spec = result, spec
            elif chosen_spec is not None and spec.bit_offset != chosen_spec.bit_offset:
                raise CoreError(
                    f"ambiguous: candidates [{chosen_spec.root_id}] and [{tid}] of "
                    f"{self.local.describe(relo.type_id)} put the field at bit "
                    f"{chosen_spec.bit_offset} and {spec.bit_offset}")
            elif result.poison != chosen.poison or result.new != chosen.new:
                raise CoreError(
                    f"ambiguous: candidates [{chosen_spec.root_id if chosen_spec else 0}] and "
                    f"[{tid}] of {self.local.describe(relo.type_id)} give {chosen.new} and "
                    f"{result.new}")
        if chosen is None:
            chosen = calc(local, None)
        return chosen


def describe(btf: BTF, relo: CoreRelo) -> str:
    """`kind of <type> access 'a:b:c' (member.path)` for messages."""
    try:
        kind = RelocKind(relo.kind).name.lower()
    except ValueError:
        kind = f"kind {relo.kind}"
    try:
        what = btf.describe(relo.type_id)
    except ObjectError:
        what = f"type {relo.type_id}"
    path = _member_path(btf, relo)
    return f"{kind} of [{relo.type_id}] {what}, access '{relo.access}'" + (
        f" ({path})" if path else "")


def _member_path(btf: BTF, relo: CoreRelo) -> str:
    try:
        spec = parse_spec(btf, relo)
    except ObjectError:
        return ""
    if spec.kind.enumval_based:
        return spec.accessors[0].name or ""
    names = [a.name if a.name is not None else f"[{a.index}]" for a in spec.accessors[1:]]
    return ".".join(names).replace(".[", "[")


# --- patching instructions -------------------------------------------------------------------

_CLS_LD, _CLS_LDX, _CLS_ST, _CLS_STX, _CLS_ALU, _CLS_ALU64 = 0, 1, 2, 3, 4, 7
_SIZE_CODE = {1: 0x10, 2: 0x08, 4: 0x00, 8: 0x18}
_SIZE_BYTES = {v: k for k, v in _SIZE_CODE.items()}


def _poison(raw: bytearray, at: int) -> None:
    raw[at : at + 8] = bytes((0x85, 0, 0, 0)) + POISON_IMM.to_bytes(4, "little")


def patch(raw: bytearray, at: int, result: Result) -> str:
    """Apply `result` to the instruction at byte `at` of a section (libbpf's
    bpf_core_patch_insn). Returns a note when the instruction was poisoned, else ""."""
    if at < 0 or at % 8 or at + 8 > len(raw):
        raise CoreError(f"instruction offset {at} is outside the section")
    code = raw[at]
    cls = code & 0x07
    is_ldimm64 = code == 0x18
    if result.poison:
        if is_ldimm64 and at + 16 <= len(raw):
            _poison(raw, at + 8)
        _poison(raw, at)
        return "poisoned: no matching field or enumerator in the target BTF"
    orig, new = result.orig, result.new
    if cls in (_CLS_ALU, _CLS_ALU64):
        if code & 0x08:
            raise CoreError("relocated ALU instruction uses a register operand")
        imm = int.from_bytes(raw[at + 4 : at + 8], "little", signed=True)
        if result.validate and imm & 0xFFFFFFFFFFFFFFFF != orig:
            raise CoreError(f"instruction has immediate {imm}, expected {orig}")
        raw[at + 4 : at + 8] = (new & 0xFFFFFFFF).to_bytes(4, "little")
        return ""
    if cls in (_CLS_LDX, _CLS_ST, _CLS_STX):
        off = int.from_bytes(raw[at + 2 : at + 4], "little", signed=True)
        if result.validate and off & 0xFFFFFFFFFFFFFFFF != orig:
            raise CoreError(f"instruction has offset {off}, expected {orig}")
        if new > 0x7FFF:
            raise CoreError(f"relocated offset {new} does not fit an instruction")
        if result.fail_memsz_adjust:
            _poison(raw, at)
            return ("poisoned: the field's size changed and it is neither a pointer nor an "
                    "unsigned integer")
        raw[at + 2 : at + 4] = new.to_bytes(2, "little", signed=True)
        if result.new_size != result.orig_size:
            size = _SIZE_BYTES.get(code & 0x18)
            if size != result.orig_size:
                raise CoreError(f"instruction accesses {size} bytes, expected "
                                f"{result.orig_size}")
            new_code = _SIZE_CODE.get(result.new_size)
            if new_code is None:
                raise CoreError(f"invalid new access size {result.new_size}")
            raw[at] = (code & 0xE7) | new_code
        return ""
    if is_ldimm64:
        if at + 16 > len(raw):
            raise CoreError("64-bit immediate load is cut off at the end of the section")
        second = raw[at + 8 : at + 16]
        if raw[at + 1] >> 4 or raw[at + 2 : at + 4] != b"\0\0" or second[:4] != b"\0\0\0\0":
            raise CoreError("64-bit immediate load has an unexpected form")
        imm = int.from_bytes(raw[at + 4 : at + 8], "little") | (
            int.from_bytes(second[4:8], "little") << 32)
        if result.validate and imm != orig:
            raise CoreError(f"instruction loads {imm}, expected {orig}")
        raw[at + 4 : at + 8] = (new & 0xFFFFFFFF).to_bytes(4, "little")
        raw[at + 12 : at + 16] = ((new >> 32) & 0xFFFFFFFF).to_bytes(4, "little")
        return ""
    raise CoreError(f"cannot relocate instruction with opcode {code:#04x}")


__all__ = [
    "POISON_IMM",
    "CoreError",
    "RelocKind",
    "Relocator",
    "Result",
    "Target",
    "describe",
    "patch",
]
