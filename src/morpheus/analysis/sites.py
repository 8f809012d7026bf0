"""Map access sites and per-map facts, from the abstract interpretation.

An access site is a helper call on a map (lookup, update, delete). For each lookup the
analysis records where the key is and which of its bytes are constants or come from the
packet, and every instruction that reads, writes or leaks the value pointer it returns.
Per map it records whether the data plane writes it (update/delete helpers, stores or
atomics through value pointers, value pointers handed to helpers or subprograms) or only
the control plane does. `Site.specializable` and `Site.reason` say whether the optimizer may
inline the site and, if not, why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..ir import Program
from ..ir.helpers import helper_name
from ..ir.opcodes import C_LDX, C_ST, C_STX, CALL, EXIT, M_MEM, M_MEMSX, SRC_X
from ..obj import MapSpec
from ..uapi import MapType, ProgType
from . import pktbytes
from .values import (
    CPU_ID_ORIGIN,
    DELETE,
    K_DIRECT,
    K_PKT,
    K_SCALAR,
    K_STACK,
    K_VALUE,
    K_VALUE_OR_NULL,
    K_VALUES,
    LOOKUP,
    LOOKUP_AND_DELETE,
    MAP_HELPERS_READ,
    MAP_HELPERS_WRITE,
    READ_ONLY_MEMORY_HELPERS,
    UPDATE,
    Analysis,
    State,
    Value,
    analyze_values,
    map_name,
    map_set,
    value_refs,
)

MAX_KEY_SIZE = 64  # keys compared inline; larger ones are not worth a comparison tree

INLINABLE_TYPES = frozenset({MapType.ARRAY, MapType.HASH, MapType.LRU_HASH,
                             MapType.LPM_TRIE})


@dataclass(frozen=True)
class KeyByte:
    """Where one byte of a key comes from: a constant, a packet/context/value field, or
    unknown."""

    kind: str  # "const", "pkt", "ctx", "value", "unknown"
    value: int | None = None  # the byte, for constants
    field: tuple[object, ...] | None = None  # origin of the scalar the byte belongs to
    byte: int | None = None  # which byte of that scalar (0: the least significant)


@dataclass
class ValueUse:
    index: int
    kind: str  # "read", "write", "atomic", "helper", "escape", "call"
    offset: int | None
    size: int
    detail: str = ""


@dataclass
class Site:
    """A helper call on a map."""

    index: int  # instruction index of the call
    function: str
    helper: int
    map: str  # a name, `outer[inner]`, `a|b` for one of several maps, "?" for unknown
    key: Value | None = None  # the key pointer (r2)
    key_bytes: tuple[KeyByte, ...] | None = None  # when the key is on the stack
    uses: list[ValueUse] = field(default_factory=list)
    specializable: bool = False
    guarded: bool = False  # the map may change under the site: needs a version guard
    reason: str = ""
    maps: frozenset[str] | None = None  # every map the site may act on (None: any map)
    # A lookup in an inner map resolved through its outer lookup: (outer map, the outer
    # key, or None when the key is the CPU id). `map` then names the slot, `outer[<key
    # hex>]` or `outer[cpu]`, and `inner_spec` is the inner maps' template.
    inner_of: tuple[str, bytes | None] | None = None
    inner_spec: MapSpec | None = None

    @property
    def is_lookup(self) -> bool:
        return self.helper == LOOKUP

    @property
    def kind(self) -> str:
        return {LOOKUP: "lookup", UPDATE: "update", DELETE: "delete",
                LOOKUP_AND_DELETE: "lookup_and_delete"}.get(self.helper,
                                                            helper_name(self.helper))

    @property
    def constant_key(self) -> bytes | None:
        """The key, when every byte of it is a known constant."""
        if not self.key_bytes or any(b.kind != "const" for b in self.key_bytes):
            return None
        return bytes(b.value for b in self.key_bytes)  # type: ignore[misc]

    @property
    def value_writes(self) -> list[ValueUse]:
        return [u for u in self.uses if u.kind in ("write", "atomic", "helper", "escape",
                                                   "call")]

    @property
    def value_reads(self) -> list[ValueUse]:
        return [u for u in self.uses if u.kind == "read"]

    @property
    def key_source(self) -> str:
        """A short description of where the key comes from."""
        if self.key is None:
            return "unknown"
        if self.key.kind == K_PKT:
            return "packet"
        if self.key.kind == K_VALUE:
            return "map value"
        if not self.key_bytes:
            return {K_STACK: "stack"}.get(self.key.kind, "unknown")
        kinds = {b.kind for b in self.key_bytes}
        if kinds == {"const"}:
            return "constant"
        parts = sorted(kinds - {"const"})
        return "+".join(parts) + (" (+ constants)" if "const" in kinds else "")


@dataclass
class MapFacts:
    name: str
    spec: MapSpec | None
    lookups: list[int] = field(default_factory=list)
    data_plane_writes: list[str] = field(default_factory=list)
    # Byte ranges of the value the data plane may change through pointers (None: anywhere)
    written_ranges: list[tuple[int, int] | None] = field(default_factory=list)
    helper_writes: bool = False  # update / delete helpers change which keys exist

    @property
    def written_by_data_plane(self) -> bool:
        return bool(self.data_plane_writes)


@dataclass
class ProgramFacts:
    program: Program
    analysis: Analysis
    sites: dict[int, Site]
    maps: dict[str, MapFacts]

    def lookups(self) -> list[Site]:
        return [s for s in self.sites.values() if s.is_lookup]


def analyze(program: Program, maps: Mapping[str, MapSpec], *,
            prog_type: int = ProgType.XDP) -> ProgramFacts:
    """Find every map access site of `program` and what the data plane does to each map."""
    analysis = analyze_values(program, prog_type, {n: s.type for n, s in maps.items()})
    sites: dict[int, Site] = {}
    facts: dict[str, MapFacts] = {name: MapFacts(name, spec) for name, spec in maps.items()}
    # What an unidentified map may be: any map of the object, or an inner map of any of
    # its maps of maps.
    any_map = frozenset([*maps, *(f"{n}[inner]" for n, s in maps.items()
                                  if s.type.is_map_of_maps)])
    function_of = {}
    for fn in program.functions():
        for i in range(fn.start, fn.end):
            function_of[i] = fn.name

    def facts_for(name: str) -> MapFacts:
        if name not in facts:
            facts[name] = MapFacts(name, maps.get(name))
        return facts[name]

    for index, insn in enumerate(program.insns):
        state = analysis.states[index]
        if state is None or not insn.is_helper_call:
            continue
        helper = insn.imm
        if helper in (LOOKUP, UPDATE, DELETE, LOOKUP_AND_DELETE) or helper in MAP_HELPERS_WRITE:
            name = map_name(state.regs[1])
            site = Site(index, function_of.get(index, "?"), helper, name, state.regs[2],
                        maps=map_set(state.regs[1]))
            site.key_bytes = _key_bytes(state, state.regs[2], maps.get(name))
            sites[index] = site
            if helper == LOOKUP:
                facts_for(name).lookups.append(index)
                continue
            # A write through a map that may be several is a possible write to each; through
            # one the analysis lost, a possible write to any.
            where = f"{site.kind} helper at instruction {index}"
            if site.maps is None:
                where += " on a map the analysis could not identify"
            elif len(site.maps) > 1:
                where += f" on one of {', '.join(sorted(site.maps))}"
            for member in sorted(site.maps if site.maps is not None else any_map | {name}):
                mf = facts_for(member)
                mf.data_plane_writes.append(where)
                mf.helper_writes = True
                mf.written_ranges.append(None)

    _collect_value_uses(program, analysis, sites, facts_for, any_map)
    for site in sites.values():
        if site.is_lookup and site.map.endswith("[inner]"):
            _resolve_inner(site, analysis.states[site.index], sites, facts, maps)
            if site.inner_of is not None:
                _judge(site, None, site.inner_spec)
                if site.specializable:
                    site.guarded = True
                    site.reason = _resolved_reason(site)
                continue
            if site.reason:
                continue
        _judge(site, facts.get(site.map), maps.get(site.map))
    return ProgramFacts(program, analysis, sites, facts)


def site_spec(site: Site, maps: Mapping[str, MapSpec]) -> MapSpec | None:
    """The map spec a lookup site acts on: the map's, or the inner template for a lookup
    in a resolved inner map."""
    return site.inner_spec if site.inner_of is not None else maps.get(site.map)


def _resolved_reason(site: Site) -> str:
    outer, key = site.inner_of  # type: ignore[misc]
    where = "the CPU id" if key is None else f"constant key {key.hex()}"
    return (f"inner map of {outer} at {where}: resolved when specializing, behind a version "
            f"guard that writes to {outer} and to the inner map move")


def _resolve_inner(site: Site, state: State | None, sites: Mapping[int, Site],
                   facts: Mapping[str, MapFacts], maps: Mapping[str, MapSpec]) -> None:
    """Name the inner map a lookup acts on when its outer lookup always reads one slot (a
    constant key) or the CPU's own (the CPU id), and neither the outer map nor its inner
    maps are written by the data plane; otherwise leave the site generic and say why."""
    if state is None or state.regs[1].kind != K_VALUE:
        return
    outer, outer_index = state.regs[1].ref  # type: ignore[misc]
    outer_site, outer_spec = sites.get(outer_index), maps.get(outer)
    if outer_site is None or outer_spec is None or not outer_spec.type.is_map_of_maps:
        return
    why = ""
    key = outer_site.constant_key
    cpu = key is None and _is_cpu_key(outer_site, outer_spec)
    outer_facts, inner_facts = facts.get(outer), facts.get(f"{outer}[inner]")
    if outer_spec.inner is None:
        why = "map of maps without an inner map template"
    elif key is None and not cpu:
        why = "map of maps: the outer key is neither a constant nor the CPU id"
    elif outer_facts is not None and outer_facts.written_by_data_plane:
        why = f"map of maps: {outer} is written by the data plane"
    elif inner_facts is not None and inner_facts.written_by_data_plane:
        why = f"map of maps: the inner maps of {outer} are written by the data plane"
    if why:
        site.reason = why
        site.specializable = False
        return
    site.inner_of = (outer, key)
    site.inner_spec = outer_spec.inner
    site.key_bytes = _key_bytes(state, state.regs[2], outer_spec.inner)
    site.map = f"{outer}[{'cpu' if key is None else key.hex()}]"


def _is_cpu_key(outer_site: Site, spec: MapSpec) -> bool:
    """The key of `outer_site` is the CPU id, exactly (not a function of it)."""
    if spec.key_size != 4 or not outer_site.key_bytes or len(outer_site.key_bytes) != 4:
        return False
    return all(b.kind == "cpu" and b.field == CPU_ID_ORIGIN and b.byte == n
               for n, b in enumerate(outer_site.key_bytes))


def _key_bytes(state: State, key: Value, spec: MapSpec | None) -> tuple[KeyByte, ...] | None:
    if spec is None or key.kind != K_STACK or key.const is None:
        return None
    out = []
    base = key.const
    for i in range(spec.key_size):
        off = base + i
        found = None
        for slot_off, (size, value) in state.stack.items():
            if slot_off <= off < slot_off + size:
                found = (slot_off, size, value)
                break
        if found is None:
            out.append(KeyByte("unknown"))
            continue
        slot_off, size, value = found
        if value.kind == K_SCALAR and value.const is not None:
            byte = (value.const >> (8 * (off - slot_off))) & 0xFF
            out.append(KeyByte("const", byte))
        elif value.kind == K_SCALAR and value.origin:
            out.append(_origin_byte(value.origin, off - slot_off))
        else:
            out.append(KeyByte("unknown"))
    return tuple(out)


def _origin_byte(origin: tuple[object, ...], byte: int) -> KeyByte:
    """Key byte `byte` of a scalar from `origin`. A byte of assembled packet bytes that is
    one known packet byte is told as that byte alone, ("pkt", offset, 1); the others keep
    the scalar's origin."""
    if len(origin) == 4 and origin[0] == "pkt":
        offset = pktbytes.byte_offsets(origin[3])[byte]  # type: ignore[arg-type]
        if offset is not None:
            return KeyByte("pkt", None, ("pkt", offset, 1), 0)
        return KeyByte("pkt", None, ("pkt", None, 0), byte)
    return KeyByte(str(origin[0]), None, origin, byte)


def _collect_value_uses(program: Program, analysis: Analysis, sites: dict[int, Site],
                        facts_for: object, any_map: frozenset[str]) -> None:
    """Attribute every dereference or leak of a map value pointer to its lookup site."""
    get_facts = facts_for  # type: ignore[assignment]

    def record(value: Value, kind: str, size: int, index: int, detail: str = "", *,
               extra_off: int = 0) -> None:
        if value.kind == K_VALUES:
            # Into one of several lookups' values: a use of each.
            for ref in sorted(value_refs(value)):
                record(Value(K_VALUE, value.const, ref), kind, size, index, detail,
                       extra_off=extra_off)
            return
        if value.kind not in (K_VALUE, K_VALUE_OR_NULL, K_DIRECT):
            return
        if value.kind == K_DIRECT:
            name = str(value.ref)
            site = None
        else:
            name, site_index = value.ref  # type: ignore[misc]
            site = sites.get(site_index)
        offset = None if value.const is None else value.const + extra_off
        use = ValueUse(index, kind, offset, size, detail)
        if site is not None:
            site.uses.append(use)
        if kind != "read":
            where = f"{kind} through a value pointer at instruction {index}"
            if detail:
                where += f" ({detail})"
            # The value of a lookup on one of several maps is in one of them; of a lookup on
            # a map the analysis lost, in any.
            members: frozenset[str] | None = frozenset({name})
            if site is not None:
                members = site.maps
            for member in sorted(members if members is not None else any_map | {name}):
                mf = get_facts(member)  # type: ignore[operator]
                mf.data_plane_writes.append(where)
                mf.written_ranges.append(None if offset is None or kind in ("helper", "escape",
                                                                              "call")
                                         else (offset, offset + size))

    pointers = (K_VALUE, K_VALUE_OR_NULL, K_DIRECT, K_VALUES)
    for index, insn in enumerate(program.insns):
        state = analysis.states[index]
        if state is None:
            continue
        op = insn.opcode
        cls = op & 0x07
        mode = op & 0xE0
        regs = state.regs
        # Only loads, stores, calls and exits can use a value pointer, and most of them
        # have none at hand: skip those before the finer tests.
        if cls == C_LDX:
            if regs[insn.src].kind not in pointers:
                continue
        elif cls in (C_ST, C_STX):
            if regs[insn.dst].kind not in pointers and regs[insn.src].kind not in pointers:
                continue
        elif op not in (CALL, EXIT) or not any(r.kind in pointers for r in regs[:6]):
            continue
        if cls == C_LDX and mode in (M_MEM, M_MEMSX):
            record(regs[insn.src], "read", insn.size_bytes, index, extra_off=insn.off)
        elif cls in (C_ST, C_STX) and mode == M_MEM:
            record(regs[insn.dst], "write", insn.size_bytes, index, extra_off=insn.off)
            if cls == C_STX:
                stored = regs[insn.src]
                if stored.kind in (K_VALUE, K_VALUE_OR_NULL, K_VALUES) and \
                        regs[insn.dst].kind != K_STACK:
                    record(stored, "escape", 0, index, "pointer stored in memory")
        elif insn.is_atomic:
            record(regs[insn.dst], "atomic", insn.size_bytes, index, extra_off=insn.off)
        elif insn.is_helper_call:
            helper = insn.imm
            for r in range(1, 6):
                arg = regs[r]
                if arg.kind not in (K_VALUE, K_VALUE_OR_NULL, K_VALUES):
                    continue
                if helper in (LOOKUP, UPDATE, DELETE) and r in (1, 2, 3):
                    if r == 1:
                        continue  # an inner map taken out of a map of maps
                    record(arg, "read", 0, index, f"passed to {helper_name(helper)}")
                elif helper in READ_ONLY_MEMORY_HELPERS or helper in MAP_HELPERS_READ:
                    record(arg, "read", 0, index, f"passed to {helper_name(helper)}")
                else:
                    record(arg, "helper", 0, index, f"passed to {helper_name(helper)}")
        elif insn.is_pseudo_call:
            for r in range(1, 6):
                record(regs[r], "call", 0, index, f"passed to {insn.reference}")
        elif insn.is_exit:
            record(regs[0], "escape", 0, index, "returned")
        elif insn.is_alu and insn.opcode & SRC_X and insn.opcode & 0xF0 not in (0xB0,):
            pass


def _judge(site: Site, facts: MapFacts | None, spec: MapSpec | None) -> None:
    if not site.is_lookup:
        site.reason = f"{site.kind} helper: writes the map"
        return
    if site.map == "?" or spec is None:
        if site.maps is not None and len(site.maps) > 1:
            site.reason = (f"map chosen at run time among {', '.join(sorted(site.maps))}: "
                           "not inlined")
        elif site.map.endswith("[inner]"):
            site.reason = "map of maps: inner maps are not inlined"
        else:
            site.reason = "map not identified (passed in a register the analysis lost)"
        return
    if spec.type.is_per_cpu:
        site.reason = "per-CPU map: each CPU sees its own value"
        return
    if spec.type not in INLINABLE_TYPES:
        site.reason = f"{spec.type.name.lower()} maps are not inlined"
        return
    if site.key is None or site.key.kind not in (K_STACK, K_PKT, K_VALUE):
        site.reason = "key pointer not followed"
        return
    if spec.key_size > MAX_KEY_SIZE:
        site.reason = f"key of {spec.key_size} bytes is too large to compare inline"
        return
    if spec.type == MapType.ARRAY and site.constant_key is None:
        # The verifier already turns an array lookup into a bounds check and an address
        # computation: a comparison tree would be slower. Only constant indices pay.
        site.reason = "array lookup with a variable index (already cheap)"
        return
    if site.value_writes:
        first = site.value_writes[0]
        site.reason = (f"value {first.kind} at instruction {first.index}"
                       f"{' (' + first.detail + ')' if first.detail else ''}: the pointer must "
                       "stay into the real map")
        return
    site.specializable = True
    if spec.type == MapType.LRU_HASH:
        # The kernel evicts only to make room for an insert, and every insert moves the
        # guard (data-plane update sites bump it; the agent and the watcher bump it for the
        # control plane), so an inlined entry is never served after its eviction.
        site.guarded = True
        site.reason = "LRU map: specialized behind a version guard that every insert moves"
    elif facts is not None and facts.written_by_data_plane:
        site.guarded = True
        site.reason = "map written by the data plane: specialized behind a version guard"
    else:
        site.reason = "read-only in the data plane"
