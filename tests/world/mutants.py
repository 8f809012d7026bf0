"""Deliberate miscompiles, applied to bytecode, that the verifier accepts.

Each operator takes a program (and the extra maps a specialized program brings: inlined
values) and returns a mutant, or None where it finds nothing to mutate. They model the bugs a
specialization pass could make: a wrong inlined value, a key compare one byte short, a
swapped branch, a dropped or misplaced store, a wrong redirect, a guard that never fires, a
counter bumped twice, a timestamp taken from the wrong clock.
"""

from __future__ import annotations

import dataclasses
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
    SRC_X,
)
from morpheus.obj import MapSpec
from morpheus.passes.shadow import SHADOW_KEY

Mutant = Program | tuple[Program, Mapping[str, MapSpec]]
Operator = Callable[[Program, Mapping[str, MapSpec]], Mutant | None]

_INVERSE = {J_JEQ: J_JNE, J_JNE: J_JEQ, J_JGT: J_JLE, J_JLE: J_JGT, J_JGE: J_JLT,
            J_JLT: J_JGE, J_JSGT: J_JSLE, J_JSLE: J_JSGT, J_JSGE: J_JSLT, J_JSLT: J_JSGE}


@dataclass(frozen=True)
class Mutation:
    name: str
    operator: Operator

    def apply(self, program: Program, extra: Mapping[str, MapSpec] | None = None
              ) -> Mutant | None:
        return self.operator(program, extra or {})


def _states(program: Program):  # type: ignore[no-untyped-def]
    return analyze_values(program).states


def _note(insn: Instruction) -> str:
    return insn.meta.note or ""


def _leaves(program: Program) -> list[int]:
    return [i for i, insn in enumerate(program.insns)
            if insn.is_map_load and _note(insn).startswith("inlined")]


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


def inlined_value_flipped(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
    """Every byte of the first inlined entry one bit off (a wrong constant)."""
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
    if not leaves:
        return None
    first = program.insns[leaves[0]]
    spec = extra.get(str(first.reference))
    if spec is None or spec.data is None:
        return None
    offsets = sorted({program.insns[i].imm for i in leaves
                      if program.insns[i].reference == first.reference})
    start = first.imm
    bigger = [o for o in offsets if o > start]
    end = bigger[0] if bigger else len(spec.data)
    data = bytearray(spec.data)
    for i in range(start, end):
        data[i] ^= 0x01
    changed = dict(extra)
    changed[spec.name] = dataclasses.replace(spec, data=bytes(data))
    return program, changed


def inlined_wrong_entry(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
    """A leaf of the key tree points at another key's value."""
    if _first_leaf_is_converged(program, extra):
        # A converged tree's first leaf is its lowest range, which traffic may never reach:
        # every slot of its table points at the next slot's entry instead.
        _, _, offsets, _, table = _converged_leaf(program, extra)  # type: ignore[misc]
        if len(set(table)) > 1:
            data = b"".join(o.to_bytes(4, "little") for o in [*table[1:], table[0]])
            return program, {**extra, offsets.name: dataclasses.replace(offsets, data=data)}
    leaves = _leaves(program)
    for i in leaves:
        insn = program.insns[i]
        others = [program.insns[j].imm for j in leaves if program.insns[j].reference ==
                  insn.reference and program.insns[j].imm != insn.imm]
        if others:
            return rewrite(program, {i: [insn._replace(imm=others[0])]})
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


def key_compare_short(program: Program, extra: Mapping[str, MapSpec]) -> Mutant | None:
    """A 64-bit key compare done on 32 bits: half the key is never compared."""
    compares = _leaf_compares(program)
    if not compares:
        return None
    i = compares[0]
    insn = program.insns[i]
    return rewrite(program, {i: [insn._replace(opcode=(insn.opcode & ~0x07) | C_JMP32)]})


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
    `if r3 != r4` becomes `r3 ^= r4; r3 >>= 8; if r3 != 0`."""
    compares = _leaf_compares(program)
    if not compares:
        return None
    i = compares[0]
    insn = program.insns[i]
    key, const = Reg(insn.dst), Reg(insn.src)
    return rewrite(program, {i: [
        asm.xor64(key, const), asm.rsh64(key, 8),
        insn._replace(opcode=(insn.opcode & ~SRC_X), src=0, imm=0, label=None)]})


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
    leaves = _leaves(program)
    start = 0
    for i, insn in enumerate(program.insns):
        if insn.label and insn.label.endswith(".cont"):
            start = i
        if _note(insn) == "not in the table":
            before = [j for j in leaves if start < j < i]
            if not before:
                return None
            leaf = program.insns[before[0]]
            return rewrite(program, {i: [asm.ld_map_value(R0, str(leaf.reference), leaf.imm,
                                                          label=insn.label)]})
    return None


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
    Mutation("inlined value one bit off", inlined_value_flipped),
    Mutation("inlined leaf points at another entry", inlined_wrong_entry),
    Mutation("key compare one word short", key_compare_short),
    Mutation("key compare one byte short", key_compare_byte_short),
    Mutation("absent key served the first entry", table_miss_as_hit),
    Mutation("branch on an inlined field swapped", branch_after_inlined_value_swapped),
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
