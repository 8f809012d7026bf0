"""Deliberate miscompiles, applied to bytecode, that the verifier accepts.

Each operator takes a program (and the extra maps a specialized program brings: inlined
values) and returns a mutant, or None where it finds nothing to mutate. They model the bugs a
specialization pass could make: a wrong inlined value, a key compare one byte short, a
swapped branch, a dropped or misplaced store, a wrong redirect, a guard that never fires, a
counter bumped twice, a timestamp taken from the wrong clock.
"""

from __future__ import annotations

import dataclasses
import struct
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from morpheus.analysis.values import K_PKT, K_VALUE, analyze_values
from morpheus.ir import Instruction, Program, asm
from morpheus.ir.asm import R0, R1, R2, Reg
from morpheus.ir.edit import delete, rewrite
from morpheus.ir.helpers import HELPER_IDS
from morpheus.ir.opcodes import (
    C_JMP,
    C_JMP32,
    C_ST,
    C_STX,
    J_JEQ,
    J_JGE,
    J_JGT,
    J_JLE,
    J_JLT,
    J_JNE,
    J_JSGE,
    J_JSGT,
    J_JSLE,
    J_JSLT,
    PSEUDO_MAP_FD,
    SRC_X,
    AluOp,
)
from morpheus.obj import MapSpec
from morpheus.passes.lpmtable import VALUES_NOTE
from morpheus.passes.shadow import SHADOW_KEY

Mutant = Program | tuple[Program, Mapping[str, MapSpec]]
Operator = Callable[[Program, Mapping[str, MapSpec]], Mutant | None]

_INVERSE = {J_JEQ: J_JNE, J_JNE: J_JEQ, J_JGT: J_JLE, J_JLE: J_JGT, J_JGE: J_JLT,
            J_JLT: J_JGE, J_JSGT: J_JSLE, J_JSLE: J_JSGT, J_JSGE: J_JSLT, J_JSLT: J_JSGE}


@dataclass(frozen=True)
class Mutation:
    """A miscompile: `operator` applies it at its usual place; `placed(n)`, where given,
    at the n-th inlined site that has a place for it (in program order), so a suite can
    try every site rather than the first one."""

    name: str
    operator: Operator
    placed: Callable[[int], Operator] | None = None

    def apply(self, program: Program, extra: Mapping[str, MapSpec] | None = None
              ) -> Mutant | None:
        return self.operator(program, extra or {})

    def placements(self, limit: int = 8) -> list[Operator]:
        """Operators applying the mutation at each of its places, the usual one first, up
        to `limit` (a placement past the last site finds nothing to mutate)."""
        later = [self.placed(n) for n in range(1, limit)] if self.placed is not None else []
        return [self.operator, *later]


def _states(program: Program):  # type: ignore[no-untyped-def]
    return analyze_values(program).states


def _note(insn: Instruction) -> str:
    return insn.meta.note or ""


def _leaves(program: Program) -> list[int]:
    return [i for i, insn in enumerate(program.insns)
            if insn.is_map_load and _note(insn).startswith("inlined")]


def _site_of(program: Program, index: int) -> str | None:
    """The inlined site an instruction of a key tree belongs to: the `mphN.cont` label its
    leaves jump to, the first one at or after it."""
    for insn in program.insns[index:]:
        if insn.label and insn.label.startswith("mph") and insn.label.endswith(".cont"):
            return insn.label[:-len(".cont")]
    return None


def _per_site(program: Program, candidates: list[int]) -> list[int]:
    """The first candidate of each inlined site, in program order."""
    out, seen = [], set()
    for i in candidates:
        site = _site_of(program, i)
        if site not in seen:
            seen.add(site)
            out.append(i)
    return out


def _stores_into(program: Program, kind: int) -> list[int]:
    states = _states(program)
    out = []
    for i, insn in enumerate(program.insns):
        state = states[i]
        if state is None or not insn.is_store or _note(insn):
            continue
        if state.regs[insn.dst].kind == kind:
            out.append(i)
    return out


# --- inlined values -------------------------------------------------------------------------

def _converged_leaf(program: Program, extra: Mapping[str, MapSpec]
                    ) -> tuple[int, int, MapSpec, MapSpec, list[int]] | None:
    """The first leaf of a converging tree (`r0 = slot`, then a shared tail loads the value's
    offset from a table): (its index, slot, offsets map, values map, the table's offsets)."""
    for i, insn in enumerate(program.insns):
        if insn.is_map_load or not _note(insn).startswith("inlined") or \
                insn.opcode != 0xB7 or insn.dst != 0:
            continue
        tail = [program.insns[j] for j in range(i + 1, len(program.insns))
                if program.insns[j].is_map_load and _note(program.insns[j]) == "converge"][:2]
        if len(tail) < 2:
            return None
        offsets, values = extra.get(str(tail[0].reference)), extra.get(str(tail[1].reference))
        if offsets is None or values is None or offsets.data is None or values.data is None:
            return None
        table = [int.from_bytes(offsets.data[k:k + 4], "little")
                 for k in range(0, len(offsets.data), 4)]
        if insn.imm >= len(table):
            return None
        return i, insn.imm, offsets, values, table
    return None


def _first_leaf_is_converged(program: Program, extra: Mapping[str, MapSpec]) -> bool:
    converged = _converged_leaf(program, extra)
    leaves = _leaves(program)
    return converged is not None and (not leaves or converged[0] < leaves[0])


@dataclass(frozen=True)
class _DirectTable:
    """A trie's direct tables (passes.lpmtable) ahead of every other leaf: where the
    values load is, the values map, how many slots and how far apart."""

    index: int
    values: MapSpec
    slots: int
    stride: int
    table: MapSpec | None = None

    def widest_slot(self) -> int:
        """The slot the most table entries answer (most addresses, most traffic)."""
        data = self.table.data if self.table is not None else None
        if not data:
            return 1
        counts = Counter(e for (e,) in struct.iter_unpack("<H", data) if 0 < e < 0x8000)
        return counts.most_common(1)[0][0] if counts else 1


def _direct_table(program: Program, extra: Mapping[str, MapSpec], *, first: bool = True
                  ) -> _DirectTable | None:
    """The first direct table; with `first`, only if no other leaf comes before it."""
    leaves = _leaves(program)
    for i, insn in enumerate(program.insns):
        if not (insn.is_map_load and _note(insn) == VALUES_NOTE):
            continue
        if first and leaves and leaves[0] < i:
            return None
        values = extra.get(str(insn.reference))
        before = program.insns[max(0, i - 4):i]
        stride = next((b.imm for b in before if b.opcode == 0x27), None)  # r0 *= stride
        slots = next((b.imm for b in before if b.opcode == 0x35), None)  # if r0 >= slots
        if values is None or values.data is None or stride is None or slots is None:
            return None
        table = next((extra.get(str(b.reference)) for b in reversed(program.insns[:i])
                      if b.is_map_load and _note(b) == "lpm table"), None)
        return _DirectTable(i, values, slots, stride, table)
    return None


def _with_values(extra: Mapping[str, MapSpec], spec: MapSpec, data: bytes
                 ) -> Mapping[str, MapSpec]:
    return {**extra, spec.name: dataclasses.replace(spec, data=data)}


def _direct_value_flipped(program: Program, extra: Mapping[str, MapSpec], direct: _DirectTable
                          ) -> Mutant:
    data = bytearray(direct.values.data or b"")
    slot = direct.widest_slot()
    for i in range(slot * direct.stride, (slot + 1) * direct.stride):
        data[i] ^= 0x01
    return program, _with_values(extra, direct.values, bytes(data))


def _direct_slots_rotated(program: Program, extra: Mapping[str, MapSpec],
                          direct: _DirectTable) -> Mutant | None:
    if direct.slots <= 2:
        return None
    data = direct.values.data or b""
    slots = [data[k * direct.stride:(k + 1) * direct.stride] for k in range(direct.slots)]
    rotated = slots[:1] + slots[2:] + slots[1:2]  # every slot holds the next slot's value
    return program, _with_values(extra, direct.values, b"".join(rotated))


def direct_table_value_flipped(program: Program, extra: Mapping[str, MapSpec]
                               ) -> Mutant | None:
    """The value a trie's direct tables give the most addresses, one bit off."""
    direct = _direct_table(program, extra, first=False)
    return _direct_value_flipped(program, extra, direct) if direct is not None else None


def direct_table_slots_rotated(program: Program, extra: Mapping[str, MapSpec]
                               ) -> Mutant | None:
    """A trie's direct tables answer each range with another range's value."""
    direct = _direct_table(program, extra, first=False)
    return _direct_slots_rotated(program, extra, direct) if direct is not None else None


def inlined_value_flipped(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
    """Every byte of the first inlined entry one bit off (a wrong constant)."""
    return inlined_value_flipped_at(0)(program, extra)


def _flip_leaf(program: Program, extra: Mapping[str, MapSpec], leaf: int) -> Mutant | None:
    leaves = _leaves(program)
    first = program.insns[leaf]
    spec = extra.get(str(first.reference))
    if spec is None or spec.data is None:
        return None
    offsets = sorted({program.insns[i].imm for i in leaves
                      if program.insns[i].reference == first.reference})
    bigger = [o for o in offsets if o > first.imm]
    end = bigger[0] if bigger else len(spec.data)
    data = bytearray(spec.data)
    for i in range(first.imm, end):
        data[i] ^= 0x01
    return program, {**extra, spec.name: dataclasses.replace(spec, data=bytes(data))}


def inlined_value_flipped_at(nth: int) -> Operator:
    """`inlined_value_flipped` at the first entry of the `nth` inlined site (for n > 0, a
    site with plain leaves: converged trees keep their first placement)."""
    def op(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
        if nth == 0:
            return _inlined_value_flipped_first(program, extra)
        leaf = _pick(_per_site(program, _leaves(program)), nth)
        return _flip_leaf(program, extra, leaf) if leaf is not None else None
    return op


def _inlined_value_flipped_first(program: Program, extra: Mapping[str, MapSpec]
                                 ) -> Mutant | None:
    direct = _direct_table(program, extra)
    if direct is not None:
        return _direct_value_flipped(program, extra, direct)
    if _first_leaf_is_converged(program, extra):
        _, slot, _, values, table = _converged_leaf(program, extra)  # type: ignore[misc]
        start = table[slot]
        bigger = sorted(o for o in set(table) if o > start)
        end = bigger[0] if bigger else len(values.data or b"")
        data = bytearray(values.data or b"")
        for i in range(start, end):
            data[i] ^= 0x01
        return program, {**extra, values.name: dataclasses.replace(values, data=bytes(data))}
    leaves = _leaves(program)
    return _flip_leaf(program, extra, leaves[0]) if leaves else None


def inlined_wrong_entry(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
    """A leaf of the key tree points at another key's value."""
    return inlined_wrong_entry_at(0)(program, extra)


def _value_size(insn: Instruction, extra: Mapping[str, MapSpec]) -> int | None:
    """The value size of the map a leaf inlines (its note names it), where `extra` holds
    that map's spec too."""
    note = _note(insn)
    spec = extra.get(note[len("inlined "):]) if note.startswith("inlined ") else None
    return spec.value_size if spec is not None else None


def _retargets(program: Program, extra: Mapping[str, MapSpec]) -> list[tuple[int, int]]:
    """(leaf, another entry's offset) for leaves with another entry in their values map.
    Where the inlined map's value size is known, only an entry whose bytes differ over it
    (a leaf pointed at equal bytes reads the same constants: no miscompile)."""
    leaves = _leaves(program)
    out = []
    for i in leaves:
        insn = program.insns[i]
        others = [program.insns[j].imm for j in leaves if program.insns[j].reference ==
                  insn.reference and program.insns[j].imm != insn.imm]
        size = _value_size(insn, extra)
        values = extra.get(str(insn.reference))
        if size is not None and values is not None and values.data is not None:
            data = values.data
            others = [o for o in others
                      if data[o:o + size] != data[insn.imm:insn.imm + size]]
        if others:
            out.append((i, others[0]))
    return out


def inlined_wrong_entry_at(nth: int) -> Operator:
    """`inlined_wrong_entry` at the first leaf of the `nth` inlined site that has another
    entry to point at (for n > 0, plain leaves only)."""
    def op(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
        if nth == 0:
            return _inlined_wrong_entry_first(program, extra)
        retargets = dict(_retargets(program, extra))
        leaf = _pick(_per_site(program, list(retargets)), nth)
        if leaf is None:
            return None
        insn = program.insns[leaf]
        return rewrite(program, {leaf: [insn._replace(imm=retargets[leaf])]})
    return op


def _inlined_wrong_entry_first(program: Program, extra: Mapping[str, MapSpec]
                               ) -> Mutant | None:
    direct = _direct_table(program, extra)
    if direct is not None and direct.slots > 2:
        return _direct_slots_rotated(program, extra, direct)
    if _first_leaf_is_converged(program, extra):
        # A converged tree's first leaf is its lowest range, which traffic may never reach:
        # every slot of its table points at the next slot's entry instead.
        _, _, offsets, _, table = _converged_leaf(program, extra)  # type: ignore[misc]
        if len(set(table)) > 1:
            data = b"".join(o.to_bytes(4, "little") for o in [*table[1:], table[0]])
            return program, {**extra, offsets.name: dataclasses.replace(offsets, data=data)}
    for i, other in _retargets(program, extra):
        return rewrite(program, {i: [program.insns[i]._replace(imm=other)]})
    return None


def _leaf_compares(program: Program) -> list[int]:
    """Equality compares of a register with a key constant (`if r3 != r4 goto x.miss`)."""
    out = []
    for i, insn in enumerate(program.insns):
        if insn.is_conditional_jump and insn.opcode & 0x07 == C_JMP and \
                insn.opcode & SRC_X and insn.opcode & 0xF0 in (J_JNE, J_JEQ) and \
                i > 0 and program.insns[i - 1].is_ld_imm64 and \
                program.insns[i - 1].dst == insn.src and not _note(insn):
            out.append(i)
    return out


def _compare_at(nth: int, program: Program) -> int | None:
    """The first key compare of the `nth` inlined site that has one."""
    return _pick(_per_site(program, _leaf_compares(program)), nth)


def key_compare_short(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
    """A 64-bit key compare done on 32 bits: half the key is never compared."""
    return key_compare_short_at(0)(program, extra)


def key_compare_short_at(nth: int) -> Operator:
    """`key_compare_short` on the first compare of the `nth` site's tree."""
    def op(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
        i = _compare_at(nth, program)
        if i is None:
            return None
        insn = program.insns[i]
        return rewrite(program, {i: [insn._replace(opcode=(insn.opcode & ~0x07) | C_JMP32)]})
    return op


def _key_compares(program: Program) -> list[int]:
    """Equality compares of a loaded key chunk in r3 with a constant: with a 64-bit
    constant in r4 (`_leaf_compares`), or with an immediate (chunks of up to 4 bytes)."""
    wide = set(_leaf_compares(program))
    out = []
    for i, insn in enumerate(program.insns):
        if i in wide or (insn.is_conditional_jump and insn.dst == 3 and not _note(insn)
                         and insn.opcode & 0x07 in (C_JMP, C_JMP32)
                         and not insn.opcode & SRC_X and insn.opcode & 0xF0 in (J_JNE, J_JEQ)):
            out.append(i)
    return out


def shadow_key_compare_short(program: Program, extra: Mapping[str, MapSpec]
                             ) -> Mutant | None:
    """`key_compare_short` on the tree of a shadow-value site (a learning lookup)."""
    compares = [i for i, insn in enumerate(program.insns)
                if _note(insn) == SHADOW_KEY and insn.opcode & SRC_X
                and insn.opcode & 0x07 == C_JMP and insn.opcode & 0xF0 in (J_JNE, J_JEQ)]
    if not compares:
        return None
    i = compares[0]
    insn = program.insns[i]
    return rewrite(program, {i: [insn._replace(opcode=(insn.opcode & ~0x07) | C_JMP32)]})


def key_compare_byte_short(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
    """A key compare that ignores the key's first byte (the low byte of the loaded word):
    `if r3 != r4` becomes `r3 ^= r4; r3 >>= 8; if r3 != 0` (`if w3 != K`: `w3 ^= K`...)."""
    return key_compare_byte_short_at(0)(program, extra)


def key_compare_byte_short_at(nth: int) -> Operator:
    """`key_compare_byte_short` on the first key compare (with a 64-bit constant or an
    immediate) of the `nth` site's tree."""
    def op(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
        i = _pick(_per_site(program, _key_compares(program)), nth)
        return _skip_first_key_byte(program, i) if i is not None else None
    return op


def _skip_first_key_byte(program: Program, i: int) -> Program:
    insn = program.insns[i]
    key = Reg(insn.dst)
    if insn.opcode & SRC_X:
        const = Reg(insn.src)
        return rewrite(program, {i: [
            asm.xor64(key, const), asm.rsh64(key, 8),
            insn._replace(opcode=(insn.opcode & ~SRC_X), src=0, imm=0, label=None)]})
    narrow = insn.opcode & 0x07 == C_JMP32
    xor, shift = ((asm.alu32, asm.alu32) if narrow else (asm.alu64, asm.alu64))
    return rewrite(program, {i: [
        xor(AluOp.XOR, key, insn.imm & 0xFFFFFFFF if narrow else insn.imm),
        shift(AluOp.RSH, key, 8), insn._replace(imm=0, label=None)]})


def key_constant_bit_off(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
    """A key constant of the tree one bit off (bit 40: a byte of the key's second word)."""
    compares = _leaf_compares(program)
    if not compares:
        return None
    i = compares[0] - 1
    insn = program.insns[i]
    return rewrite(program, {i: [insn._replace(imm=insn.imm ^ (1 << 40))]})


def table_miss_as_hit(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
    """A key absent from an inlined whole table gets the table's first leaf's value."""
    return table_miss_as_hit_at(0)(program, extra)


def table_miss_as_hit_at(nth: int) -> Operator:
    """`table_miss_as_hit` in the `nth` whole table (in program order)."""
    def op(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
        leaves = _leaves(program)
        start, found = 0, []
        for i, insn in enumerate(program.insns):
            if insn.label and insn.label.endswith(".cont"):
                start = i
            if _note(insn) == "not in the table":
                before = [j for j in leaves if start < j < i]
                found.append((i, before[0] if before else None))
        picked = _pick(found, nth)
        if picked is None or picked[1] is None:
            return None
        i, first = picked
        insn, leaf = program.insns[i], program.insns[first]
        return rewrite(program, {i: [asm.ld_map_value(R0, str(leaf.reference), leaf.imm,
                                                      label=insn.label)]})
    return op


def guard_never_fires(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
    """The version check in front of an inlined table is gone."""
    for i, insn in enumerate(program.insns):
        if _note(insn) == "guard" and insn.is_conditional_jump:
            return delete(program, [i])
    return None


def branch_after_inlined_value_swapped(program: Program, extra: Mapping[str, MapSpec]
                                       ) -> Mutant | None:
    """The first test of a field of an inlined value goes the other way."""
    return branch_after_inlined_value_swapped_at(0)(program, extra)


def branch_after_inlined_value_swapped_at(nth: int) -> Operator:
    """The first test of a field of the `nth` inlined value (in program order, counting
    only values followed by such a test) goes the other way."""
    def op(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
        conts = [i for i, insn in enumerate(program.insns)
                 if insn.label and insn.label.endswith(".cont")]
        found = []
        for start in conts:
            for i in range(start + 1, min(start + 12, len(program.insns))):
                insn = program.insns[i]
                if insn.is_conditional_jump and not insn.opcode & SRC_X and insn.dst != 0:
                    found.append(i)
                    break
        i = _pick(found, nth)
        return _invert(program, i) if i is not None else None
    return op


# --- generic ---------------------------------------------------------------------------------

def _invert(program: Program, i: int) -> Program:
    insn = program.insns[i]
    op = insn.opcode & 0xF0
    return rewrite(program, {i: [insn._replace(opcode=(insn.opcode & ~0xF0) | _INVERSE[op])]})


def _reaches_exit_as_r0(program: Program, start: int, reg: int) -> bool:
    """Whether the value in `reg` after instruction `start` becomes the return value, on
    the straight-line path (following gotos) from there."""
    labels = program.labels
    i, steps = start + 1, 0
    while i < len(program.insns) and steps < 8:
        insn = program.insns[i]
        steps += 1
        if insn.is_exit:
            return reg == 0
        if insn.is_unconditional_jump and insn.reference in labels:
            i = labels[str(insn.reference)]
            continue
        if insn.is_conditional_jump or insn.is_call:
            return False
        if insn.is_alu and insn.dst == 0 and insn.opcode & SRC_X and \
                insn.opcode & 0xF0 == 0xB0 and insn.src == reg:
            reg = 0
        elif (insn.is_alu or insn.is_load) and insn.dst == reg:
            return False
        i += 1
    return False


def _pick(candidates: list[int], nth: int) -> int | None:
    return candidates[nth] if -len(candidates) <= nth < len(candidates) else None


def verdict_changed(nth: int = 0) -> Operator:
    """The `nth` constant verdict (XDP_DROP/PASS/TX) becomes the next one."""
    def op(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
        sites = [i for i, insn in enumerate(program.insns)
                 if insn.is_alu and not insn.opcode & SRC_X and insn.opcode & 0xF0 == 0xB0
                 and insn.imm in (1, 2, 3) and not _note(insn)
                 and _reaches_exit_as_r0(program, i, insn.dst)]
        i = _pick(sites, nth)
        if i is None:
            return None
        insn = program.insns[i]
        return rewrite(program, {i: [insn._replace(imm=insn.imm % 3 + 1)]})
    return op


def drop_becomes_pass(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
    """At the last exit, XDP_DROP is turned into XDP_PASS (a verdict constant miscompiled
    on the drop paths that share the exit)."""
    exits = [i for i, insn in enumerate(program.insns) if insn.is_exit]
    if not exits:
        return None
    i = exits[-1]
    insn = program.insns[i]
    out = program.fresh_label("mutant.exit")
    return rewrite(program, {i: [asm.jne(R0, 1, out, wide=False), asm.mov32(R0, 2),
                                 insn.with_label(out)]})


def map_store_dropped(nth: int = -1) -> Operator:
    """The `nth` store into a map value is gone."""
    def op(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
        i = _pick(_stores_into(program, K_VALUE), nth)
        return delete(program, [i]) if i is not None else None
    return op


def map_store_misplaced(nth: int = -1) -> Operator:
    """The `nth` store into a map value (past its first field) lands one field earlier."""
    def op(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
        sites = [i for i in _stores_into(program, K_VALUE)
                 if program.insns[i].off >= program.insns[i].size_bytes]
        i = _pick(sites, nth)
        if i is None:
            return None
        insn = program.insns[i]
        return rewrite(program, {i: [insn._replace(off=insn.off - insn.size_bytes)]})
    return op


def counter_incremented_twice(nth: int = -1) -> Operator:
    """The `nth` `x += 1` stored into a map value becomes `x += 2`, or an atomic add into a
    map value runs twice."""
    def op(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
        states = _states(program)
        sites: list[tuple[int, bool]] = []
        for i, insn in enumerate(program.insns):
            state = states[i]
            # Not the instrumentation's own counters (sampling, block counts): no miscompile
            # of the program's behaviour.
            if state is None or _note(insn):
                continue
            if insn.is_atomic and state.regs[insn.dst].kind == K_VALUE and insn.imm == 0:
                sites.append((i, True))
            elif insn.is_alu and insn.opcode & 0xF0 == 0x00 and not insn.opcode & SRC_X and \
                    insn.imm == 1:
                for j in range(i + 1, min(i + 3, len(program.insns))):
                    st, after = program.insns[j], states[j]
                    if st.is_store and st.opcode & 0x07 == C_STX and st.src == insn.dst and \
                            not _note(st) and after is not None and \
                            after.regs[st.dst].kind == K_VALUE:
                        sites.append((i, False))
                        break
        if not -len(sites) <= nth < len(sites):
            return None
        i, atomic = sites[nth]
        insn = program.insns[i]
        if atomic:
            return rewrite(program, {i: [insn, insn.with_label(None)]})
        return rewrite(program, {i: [insn._replace(imm=2)]})
    return op


def redirect_ifindex_wrong(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
    """bpf_redirect to the next ifindex."""
    for i, insn in enumerate(program.insns):
        if insn.is_helper_call and insn.imm == HELPER_IDS["redirect"]:
            return rewrite(program, {i: [asm.add64(R1, 1), insn.with_label(None)]})
    return None


def redirect_map_key_wrong(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
    """bpf_redirect_map to the neighbouring key."""
    for i, insn in enumerate(program.insns):
        if insn.is_helper_call and insn.imm == HELPER_IDS["redirect_map"]:
            return rewrite(program, {i: [asm.xor64(R2, 1), insn.with_label(None)]})
    return None


def redirect_flags_wrong(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
    """bpf_redirect with BPF_F_INGRESS instead of no flags."""
    for i, insn in enumerate(program.insns):
        if insn.is_helper_call and insn.imm == HELPER_IDS["redirect"]:
            return rewrite(program, {i: [asm.mov64(R2, 1), insn.with_label(None)]})
    return None


def packet_byte_wrong(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
    """A byte written into the packet is one bit off."""
    stores = _stores_into(program, K_PKT)
    if not stores:
        return None
    i = stores[0]
    insn = program.insns[i]
    if insn.opcode & 0x07 == C_ST:
        return rewrite(program, {i: [insn._replace(imm=insn.imm ^ 1)]})
    src = Reg(insn.src)
    return rewrite(program, {i: [asm.xor64(src, 1), insn.with_label(None), asm.xor64(src, 1)]})


def packet_store_dropped(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
    """The last write into the packet (a checksum, a MAC byte) is gone."""
    stores = _stores_into(program, K_PKT)
    return delete(program, [stores[-1]]) if stores else None


def map_update_dropped(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
    """A bpf_map_update_elem call never happens (it 'succeeds')."""
    calls = [i for i, insn in enumerate(program.insns)
             if insn.is_helper_call and insn.imm == HELPER_IDS["map_update_elem"]]
    if not calls:
        return None
    return rewrite(program, {calls[-1]: [asm.mov64(R0, 0)]})


def _replace_helper(name: str, by: str) -> Operator:
    def op(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
        for i, insn in enumerate(program.insns):
            if insn.is_helper_call and insn.imm == HELPER_IDS[name]:
                return rewrite(program, {i: [insn._replace(imm=HELPER_IDS[by])]})
        return None
    return op


def random_number_zero(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
    """bpf_get_prandom_u32() replaced by 0 (a 'constant-folded' random number)."""
    for i, insn in enumerate(program.insns):
        if insn.is_helper_call and insn.imm == HELPER_IDS["get_prandom_u32"]:
            return rewrite(program, {i: [asm.mov64(R0, 0)]})
    return None


def stack_constant_changed(value: int, by: int) -> Operator:
    """A constant put on the stack (a key being built) changes from `value` to `by`."""
    def op(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
        for i, insn in enumerate(program.insns):
            if insn.opcode & 0x07 == C_ST and insn.dst == 10 and insn.imm == value:
                return rewrite(program, {i: [insn._replace(imm=by)]})
            nxt = program.insns[i + 1] if i + 1 < len(program.insns) else None
            if insn.is_alu and not insn.opcode & SRC_X and insn.opcode & 0xF0 == 0xB0 and \
                    insn.imm == value and nxt is not None and nxt.opcode & 0x07 == C_STX and \
                    nxt.dst == 10 and nxt.src == insn.dst:
                return rewrite(program, {i: [insn._replace(imm=by)]})
        return None
    return op


def compare_constant_changed(value: int, by: int) -> Operator:
    """The first `if rX <op> value` compares with `by` instead (an off-by-one bound)."""
    def op(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
        for i, insn in enumerate(program.insns):
            if insn.is_conditional_jump and not insn.opcode & SRC_X and insn.imm == value:
                return rewrite(program, {i: [insn._replace(imm=by)]})
        return None
    return op


SPECIALIZED = (
    Mutation("inlined value one bit off", inlined_value_flipped, inlined_value_flipped_at),
    Mutation("inlined leaf points at another entry", inlined_wrong_entry,
             inlined_wrong_entry_at),
    Mutation("key compare one word short", key_compare_short, key_compare_short_at),
    Mutation("key compare one byte short", key_compare_byte_short, key_compare_byte_short_at),
    Mutation("absent key served the first entry", table_miss_as_hit, table_miss_as_hit_at),
    Mutation("branch on an inlined field swapped", branch_after_inlined_value_swapped,
             branch_after_inlined_value_swapped_at),
    Mutation("direct LPM table value one bit off", direct_table_value_flipped),
    Mutation("direct LPM table slots rotated", direct_table_slots_rotated),
)
GUARD = Mutation("guard that never fires", guard_never_fires)
# Caught only because near misses of a learning map's keys run each from the state before
# them (`CheckRequest.isolated`): learning one moves the guard, and a later wrong hit on a
# key sharing a hot key's low half would otherwise go unseen.
SHADOW_KEY_SHORT = Mutation("learning key compare one word short", shadow_key_compare_short)

def generic(stores: int = -1, verdict: int | None = 0) -> tuple[Mutation, ...]:
    """Operators for any program; `stores` and `verdict` pick which candidate site (first
    or last) the store, counter and verdict mutants go to: the one the traffic reaches (the
    first stores of an NF often sit on an early exit no test run can take, such as frames
    shorter than an Ethernet header)."""
    return (
        Mutation("verdict changed", verdict_changed(verdict)) if verdict is not None
        else Mutation("XDP_DROP returned as XDP_PASS", drop_becomes_pass),
        Mutation("store into a map value dropped", map_store_dropped(stores)),
        Mutation("store into a map value misplaced", map_store_misplaced(stores)),
        Mutation("counter incremented twice", counter_incremented_twice(stores)),
        Mutation("redirect to the wrong ifindex", redirect_ifindex_wrong),
        Mutation("packet byte one bit off", packet_byte_wrong),
        Mutation("packet store dropped", packet_store_dropped),
    )


GENERIC = generic()

# For tests/progs/checked.c, on top of GENERIC.
CHECKED = (
    Mutation("redirect flags wrong", redirect_flags_wrong),
    Mutation("redirect_map to the wrong key", redirect_map_key_wrong),
    Mutation("map update dropped", map_update_dropped),
    Mutation("timestamp from the boot clock", _replace_helper("ktime_get_ns",
                                                               "ktime_get_boot_ns")),
    Mutation("random number constant", random_number_zero),
    Mutation("per-CPU counter index off by one", stack_constant_changed(2, 3)),
    Mutation("LPM lookup with prefix length 24", stack_constant_changed(32, 24)),
    Mutation("TTL bound off by one", compare_constant_changed(2, 1)),
)


def first_change(program: Program, mutant: Program) -> int | None:
    """The first instruction where `mutant` differs from `program` (None: the same)."""
    for i, (a, b) in enumerate(zip(program.insns, mutant.insns, strict=False)):
        if a != b:
            return i
    if len(program.insns) == len(mutant.insns):
        return None
    return min(len(program.insns), len(mutant.insns))


def _inlined_name(insn: Instruction) -> str:
    return _note(insn)[len("inlined "):]


def inlined_map_at_site(program: Program, site: str) -> str | None:
    """The map the inlined site `site` (`mphN`) inlines, named by its leaves; for a trie's
    direct tables (no leaves), by the map the site's fallback lookup (`mphN.miss`) is
    called with: the nearest load of a map into r1 before it."""
    own = [i for i in _leaves(program) if _site_of(program, i) == site]
    if own:
        return _inlined_name(program.insns[own[0]])
    miss = program.labels.get(f"{site}.miss")
    if miss is None:
        return None
    for insn in reversed(program.insns[:miss]):
        if insn.is_map_load and insn.dst == 1 and insn.src == PSEUDO_MAP_FD:
            return str(insn.reference)
    return None


def inlined_map_at(program: Program, mutant: Mutant, extra: Mapping[str, MapSpec]
                   ) -> str | None:
    """The inlined map a mutant changes: the one named by the leaf nearest the first
    changed instruction (at or after it inside a key tree, before it past a `.cont`), or,
    for changed values, by the leaf of the first changed byte."""
    if isinstance(mutant, tuple):
        changed, maps = mutant
        for name, spec in maps.items():
            old = extra.get(name)
            if old is None or spec.data is None or old.data == spec.data:
                continue
            first = next(i for i, (a, b) in enumerate(zip(old.data or b"", spec.data,
                                                          strict=False)) if a != b)
            owners = [changed.insns[i] for i in _leaves(changed)
                      if str(changed.insns[i].reference) == name
                      and changed.insns[i].imm <= first]
            return _inlined_name(max(owners, key=lambda insn: insn.imm)) if owners else name
        mutant = changed
    index = first_change(program, mutant)
    if index is None:
        return None
    leaves = _leaves(mutant)
    # Past a `.cont` (a test of the value, within the window the branch operator looks at)
    # the site is that label's; otherwise the tree the instruction is in.
    for j in range(index, max(index - 12, -1), -1):
        label = mutant.insns[j].label or ""
        if j in leaves:
            break
        if label.startswith("mph") and label.endswith(".cont"):
            site = label[:-len(".cont")]
            own = [i for i in leaves if i < j and _site_of(mutant, i) == site]
            return _inlined_name(mutant.insns[own[0]]) if own else None
    site = _site_of(mutant, index)
    own = [i for i in leaves if _site_of(mutant, i) == site]
    return _inlined_name(mutant.insns[own[0]]) if own and site is not None else None
