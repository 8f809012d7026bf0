"""Constant propagation and folding: the first half of the cleanup after table inlining.

The abstract interpretation (`analysis.values`) gives the state before every instruction.
Where it proves a value, this pass writes it into the code:

- an ALU operation (or register move) whose result is a known constant becomes a constant
  move: `r = imm` (mov64) when the value is a sign-extended 32-bit immediate, `w = imm`
  (mov32, zero-extending) when it fits in 32 unsigned bits, a 64-bit immediate load otherwise;
- a load through a direct map-value pointer (`ld_imm64` BPF_PSEUDO_MAP_VALUE, offset known)
  into a map whose bytes are in `ctx.known_values` becomes a constant move of the bytes it
  reads (zero-extended, or sign-extended for BPF_MEMSX loads);
- a conditional jump whose outcome is known becomes `goto` (always taken) or disappears
  (never taken); the code this makes unreachable is removed at once, because the verifier
  refuses unreachable instructions;
- with `immediates`, a register operand holding a known constant becomes an immediate
  (`r1 += r2` → `r1 += 5`, `if r1 > r2` → `if r1 > 5`) where the K form means the same thing.

Nothing that involves a pointer is folded: no pointer arithmetic, no comparison of pointers
(packet bounds checks, NULL checks on lookup results), no load through a pointer, except
loads through direct map-value pointers into `known_values` maps and NULL checks on such
pointers (never NULL, and the verifier knows it too). Register operands become immediates
only when the other operand is a scalar.

Folding a direct load creates a constant the analysis did not see, so the pass analyses
again while that happens (bounded by `max_rounds`). No other fold teaches the analysis
anything new (it already pruned the edges of decided branches), so in the common case one
analysis suffices: loads through map-value pointers that a cheap register-only dataflow
can follow are even folded into the analysed program beforehand.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from ..analysis import alu
from ..analysis.values import (
    K_DIRECT,
    K_SCALAR,
    K_STACK,
    Analysis,
    State,
    Value,
    analyze_values,
)
from ..ir import Instruction, Meta, Program
from ..ir.edit import rewrite
from ..ir.helpers import HELPER_IDS
from ..ir.instruction import EMPTY_META, s32, s64
from ..ir.opcodes import (
    C_ALU,
    C_ALU64,
    C_JMP,
    C_LDX,
    CALL,
    CALL_HELPER,
    J_CALL,
    J_JA,
    J_JEQ,
    J_JGE,
    J_JGT,
    J_JLE,
    J_JLT,
    J_JNE,
    J_JSET,
    J_JSGE,
    J_JSGT,
    J_JSLE,
    J_JSLT,
    LD_IMM64,
    M_MEMSX,
    OP_ADD,
    OP_ARSH,
    OP_DIV,
    OP_END,
    OP_LSH,
    OP_MOD,
    OP_MOV,
    OP_NEG,
    OP_RSH,
    OP_SUB,
    PSEUDO_BTF_ID,
    PSEUDO_MAP_VALUE,
    SRC_K,
    SRC_X,
    JmpOp,
)
from .dce import apply_edits, register_effects, remove_unreachable
from .pipeline import PassContext, register

_ALU_CLASSES = (C_ALU, C_ALU64)
_JA: Final = C_JMP | J_JA
_CALLX: Final = C_JMP | J_CALL | SRC_X
_SHIFTS = (OP_LSH, OP_RSH, OP_ARSH)
# `if a op b` ⇔ `if b op' a`: used to put a known constant on the right.
_SWAPPED = {
    J_JEQ: J_JEQ, J_JNE: J_JNE, J_JSET: J_JSET,
    J_JGT: J_JLT, J_JLT: J_JGT, J_JGE: J_JLE, J_JLE: J_JGE,
    J_JSGT: J_JSLT, J_JSLT: J_JSGT, J_JSGE: J_JSLE,
    J_JSLE: J_JSGE,
}
_FIB_LOOKUP: Final = HELPER_IDS["fib_lookup"]
_WRITES_MEMORY: Final = HELPER_IDS["probe_read_kernel"]  # a helper that writes its buffer


@register
@dataclass(frozen=True)
class ConstantPropagation:
    """Fold what the abstract interpretation proves constant (see the module docstring)."""

    name: ClassVar[str] = "constprop"
    max_rounds: int = 8
    immediates: bool = True

    def run(self, program: Program, ctx: PassContext) -> Program:
        out, counts = propagate_constants(program, prog_type=ctx.prog_type,
                                          known_values=ctx.known_values,
                                          max_rounds=self.max_rounds,
                                          immediates=self.immediates, analysis=ctx.analysis)
        stats = ctx.stats.setdefault(self.name, {})
        for key, value in counts.items():
            stats[key] = stats.get(key, 0) + value
        return out


def propagate_constants(program: Program, *, prog_type: int,
                        known_values: Mapping[str, bytes] | None = None, max_rounds: int = 8,
                        immediates: bool = True, analysis: Analysis | None = None
                        ) -> tuple[Program, dict[str, int]]:
    """The constprop pass as a function: the new program and how many instructions each
    rule changed (`alu`, `loads`, `taken`, `not_taken`, `immediates`) or removed as
    unreachable (`unreachable`), and how many times the program was analysed (`analysis`,
    if it is of the very program analysed first, is reused)."""
    known = dict(known_values or {})
    counts = {"alu": 0, "loads": 0, "taken": 0, "not_taken": 0, "immediates": 0,
              "unreachable": 0, "analyses": 0}
    for _ in range(max_rounds):
        counts["analyses"] += 1
        edits, again = _fold_round(program, prog_type, known, immediates, counts, analysis)
        if not edits:
            break
        program = apply_edits(program, edits)
        if not again:
            break
    if counts["taken"] or counts["not_taken"]:
        before = len(program.insns)
        program = remove_unreachable(program)
        counts["unreachable"] += before - len(program.insns)
    return program, counts


# --- one round ------------------------------------------------------------------------------


def _fold_round(program: Program, prog_type: int, known: Mapping[str, bytes], immediates: bool,
                counts: dict[str, int], analysis: Analysis | None = None
                ) -> tuple[dict[int, Sequence[Instruction]], bool]:
    """Edits for one analysis of `program`, and whether another analysis may find more."""
    insns = program.insns
    prefolded = _known_direct_loads(program, known)
    view, positions = _analysis_view(program, prefolded)
    if analysis is None or analysis.program is not view:
        analysis = analyze_values(view, prog_type)
    states = analysis.states
    if positions is not None:
        states = [states[p] for p in positions]
    skip = _unfollowed_functions(program, states)
    edits: dict[int, Sequence[Instruction]] = {}
    again = False
    for i, insn in enumerate(insns):
        state = states[i]
        if state is None or (skip is not None and skip[i]):
            continue
        regs = state.regs
        op = insn.opcode
        cls = op & 0x07
        if cls in _ALU_CLASSES:
            if _is_constant_move(insn):
                continue
            value = _alu_result(insn, regs)
            if value is not None:
                edits[i] = (constant_move(insn.dst, value, insn.meta),)
                counts["alu"] += 1
            elif immediates:
                new = _alu_immediate_form(insn, regs)
                if new is not None:
                    edits[i] = (new,)
                    counts["immediates"] += 1
        elif cls == C_LDX and insn.is_load:
            value = _direct_load(insn, regs, known)
            if value is not None:
                edits[i] = (constant_move(insn.dst, value, insn.meta),)
                counts["loads"] += 1
                again = again or i not in prefolded
        elif insn.is_conditional_jump:
            taken = _branch_outcome(insn, regs)
            if taken is True:
                edits[i] = (Instruction(_JA, reference=insn.reference, meta=insn.meta),)
                counts["taken"] += 1
            elif taken is False:
                edits[i] = ()
                counts["not_taken"] += 1
            elif immediates:
                new = _jump_immediate_form(insn, regs)
                if new is not None:
                    edits[i] = (new,)
                    counts["immediates"] += 1
    return edits, again


def _const(value: Value) -> int | None:
    """The value of a known scalar (unsigned 64-bit), None for anything else."""
    return value.const if value.kind == K_SCALAR else None


def _is_constant_move(insn: Instruction) -> bool:
    return insn.opcode & 0xF8 == OP_MOV | SRC_K and insn.off == 0


def constant_move(dst: int, value: int, meta: Meta = EMPTY_META) -> Instruction:
    """The shortest instruction that sets `dst` to the 64-bit `value`."""
    value = alu.u64(value)
    if _fits_imm64(value):
        return Instruction(C_ALU64 | OP_MOV | SRC_K, dst, 0, 0, s32(value), meta=meta)
    if value < 1 << 32:  # mov32 zero-extends
        return Instruction(C_ALU | OP_MOV | SRC_K, dst, 0, 0, s32(value), meta=meta)
    return Instruction(LD_IMM64, dst, 0, 0, s64(value), meta=meta)


def _alu_result(insn: Instruction, regs: list[Value]) -> int | None:
    """The value an ALU instruction leaves in its destination, when constant."""
    op = insn.opcode
    wide = op & 0x07 == C_ALU64
    aop = op & 0xF0
    dst = _const(regs[insn.dst])
    if aop == OP_END:
        if dst is None or insn.imm not in (16, 32, 64):
            return None
        return alu.endian(dst, insn.imm, to_be=bool(op & SRC_X), bswap=wide)
    if aop == OP_NEG:
        return None if dst is None else alu.alu(aop, dst, 0, wide=wide)
    operand = _const(regs[insn.src]) if op & SRC_X else alu.u64(insn.imm)
    if operand is None:
        return None
    try:
        if aop == OP_MOV:
            return alu.alu(aop, 0, operand, wide=wide, off=insn.off)
        return None if dst is None else alu.alu(aop, dst, operand, wide=wide, off=insn.off)
    except ValueError:  # an operation without constant semantics
        return None


def _fits_imm64(value: int) -> bool:
    """Whether a sign-extended 32-bit immediate can stand for the 64-bit `value`."""
    return value < 1 << 31 or value >= (1 << 64) - (1 << 31)


def _alu_immediate_form(insn: Instruction, regs: list[Value]) -> Instruction | None:
    """`dst op= src` with src a known constant, as `dst op= imm`, when that means the same.

    ALU64 sign-extends its immediate, so the constant must be a sign-extended 32-bit value;
    ALU32 uses the low 32 bits either way. The verifier refuses immediate shifts by the
    width or more and immediate divisions by zero, which the register forms define (shift
    amounts are masked, x / 0 = 0): shifts take the masked amount, divisions keep their
    register."""
    op = insn.opcode
    aop = op & 0xF0
    if not op & SRC_X or aop in (OP_MOV, OP_NEG, OP_END):
        return None
    value = _const(regs[insn.src])
    if value is None or regs[insn.dst].kind != K_SCALAR:
        return None
    wide = op & 0x07 == C_ALU64
    if aop in _SHIFTS:
        imm = value & (63 if wide else 31)
    else:
        if not wide:
            value &= alu.M32
        elif not _fits_imm64(value):
            return None
        if aop in (OP_DIV, OP_MOD) and value == 0:
            return None
        imm = s32(value)
    return Instruction(op & ~SRC_X, insn.dst, 0, insn.off, imm, None, None, insn.meta)


def _jump_immediate_form(insn: Instruction, regs: list[Value]) -> Instruction | None:
    """`if a op b` with one side a known constant and the other an unknown scalar, as a
    comparison of the unknown register with an immediate (swapping the sides if needed)."""
    op = insn.opcode
    if not op & SRC_X:
        return None
    wide = op & 0x07 == C_JMP
    a, b = regs[insn.dst], regs[insn.src]
    ca, cb = _const(a), _const(b)
    if cb is not None and a.kind == K_SCALAR and ca is None:
        reg, value, jop = insn.dst, cb, op & 0xF0
    elif ca is not None and b.kind == K_SCALAR and cb is None:
        reg, value, jop = insn.src, ca, _SWAPPED[JmpOp(op & 0xF0)]
    else:
        return None
    if wide and not _fits_imm64(value):
        return None
    return Instruction((op & 0x07) | jop | SRC_K, reg, 0, 0, s32(value), insn.reference,
                       None, insn.meta)


def _branch_outcome(insn: Instruction, regs: list[Value]) -> bool | None:
    """Whether a conditional jump is always (True) or never (False) taken, if known."""
    op = insn.opcode
    wide = op & 0x07 == C_JMP
    jop = op & 0xF0
    a = regs[insn.dst]
    b = regs[insn.src] if op & SRC_X else Value(K_SCALAR, alu.u64(insn.imm))
    ca, cb = _const(a), _const(b)
    if ca is not None and cb is not None:
        return alu.compare(jop, ca, cb, wide=wide)
    # A direct map-value pointer is never NULL (the verifier knows this too).
    if wide and jop in (J_JEQ, J_JNE) and (
            (a.kind == K_DIRECT and cb == 0) or (b.kind == K_DIRECT and ca == 0)):
        return jop == J_JNE
    return None


def _read_known(data: bytes | None, offset: int, size: int, signed: bool) -> int | None:
    if data is None or offset < 0 or offset + size > len(data):
        return None
    value = int.from_bytes(data[offset:offset + size], sys.byteorder)  # the kernel's order
    return alu.u64(alu.signed(value, 8 * size)) if signed else value


def _direct_load(insn: Instruction, regs: list[Value], known: Mapping[str, bytes]
                 ) -> int | None:
    base = regs[insn.src]
    if base.kind != K_DIRECT or base.const is None or not isinstance(base.ref, str):
        return None
    return _read_known(known.get(base.ref), base.const + insn.off, insn.size_bytes,
                       insn.opcode & 0xE0 == M_MEMSX)


# --- what the analysis is given ------------------------------------------------------------


def fold_known_loads(program: Program, known: Mapping[str, bytes]) -> Program:
    """`program` with the loads through direct pointers into `known` maps that a cheap
    register dataflow can follow replaced by constant moves (no full analysis; what it
    misses, `ConstantPropagation` still folds)."""
    folded = _known_direct_loads(program, known)
    if not folded:
        return program
    insns = program.insns
    return program.with_insns(
        constant_move(insn.dst, folded[i], insn.meta).with_label(insn.label)
        if i in folded else insn for i, insn in enumerate(insns))


Pointers = dict[int, tuple[str, int]]  # register → (map, offset into its value)


def _known_direct_loads(program: Program, known: Mapping[str, bytes]) -> dict[int, int]:
    """Loads through a map-value pointer into a `known` map, with the value they read:
    folded into what the analysis sees, so that one analysis suffices.

    A small dataflow over "register → (map, offset)", in passes over the program in order:
    a labelled instruction starts with what the fall-through and every jump to it agree on
    (jumps from further down as of the previous pass; a function entry starts empty). It
    repeats until the states at the jumps stop changing. It sees less than the analysis (no
    stack, no pruned edges): what it misses, the analysis finds and the next round folds."""
    insns = program.insns
    if not known or not any(insn.opcode == LD_IMM64 and insn.src == PSEUDO_MAP_VALUE
                            and insn.reference in known for insn in insns):
        return {}
    jumps_to: dict[str, list[int]] = {}
    entries: set[str] = set()  # labels also reached by calls or function pointers
    for i, insn in enumerate(insns):
        if insn.reference is not None and not insn.is_map_load:
            if insn.is_branch:
                jumps_to.setdefault(insn.reference, []).append(i)
            else:
                entries.add(insn.reference)
    at_jump: dict[int, Pointers] = {}
    for _ in range(_PREFOLD_PASSES):
        out: dict[int, int] = {}
        changed = False
        pointers: Pointers = {}
        falls_in = False
        for i, insn in enumerate(insns):
            label = insn.label
            if label is not None:
                if label in entries:
                    pointers = {}
                else:
                    # Jumps not seen yet (further down, first pass) are left out: the passes
                    # repeat until that makes no difference.
                    incoming = [at_jump[j] for j in jumps_to.get(label, ()) if j in at_jump]
                    if falls_in:
                        incoming.append(pointers)
                    pointers = _meet(incoming)
            op = insn.opcode
            if insn.is_branch and insn.reference is not None and at_jump.get(i) != pointers:
                at_jump[i] = dict(pointers)
                changed = True
            falls_in = not (insn.is_unconditional_jump or insn.is_exit)
            if not falls_in:
                pointers = {}
                continue
            if not pointers and op != LD_IMM64:
                continue
            if insn.is_load and insn.src in pointers:
                name, offset = pointers[insn.src]
                value = _read_known(known[name], offset + insn.off, insn.size_bytes,
                                    op & 0xE0 == M_MEMSX)
                if value is not None:
                    out[i] = value
            _follow_pointers(insn, pointers, known)
        if not changed:
            return out
    return {}  # no fixed point in time: fold nothing early (the analysis still will)


_PREFOLD_PASSES = 6


def _meet(states: Sequence[Pointers]) -> Pointers:
    if not states:
        return {}
    first, *rest = states
    return {r: v for r, v in first.items() if all(s.get(r) == v for s in rest)}


def _follow_pointers(insn: Instruction, pointers: dict[int, tuple[str, int]],
                     known: Mapping[str, bytes]) -> None:
    op = insn.opcode
    if op == LD_IMM64 and insn.src == PSEUDO_MAP_VALUE and insn.reference is not None \
            and insn.reference in known:
        pointers[insn.dst] = (insn.reference, insn.imm)
    elif op == C_ALU64 | OP_MOV | SRC_X and insn.off == 0:
        if insn.src in pointers:
            pointers[insn.dst] = pointers[insn.src]
        else:
            pointers.pop(insn.dst, None)
    elif op in (C_ALU64 | OP_ADD, C_ALU64 | OP_SUB) and insn.dst in pointers:
        name, offset = pointers[insn.dst]
        pointers[insn.dst] = (name, offset + (insn.imm if op == C_ALU64 | OP_ADD
                                              else -insn.imm))
    else:
        _, defs = register_effects(insn)
        for r in [r for r in pointers if defs >> r & 1]:
            del pointers[r]


def _analysis_view(program: Program, prefolded: Mapping[int, int]
                   ) -> tuple[Program, list[int] | None]:
    """The program the analysis runs on, and where each instruction of `program` is in it
    (None: the program itself).

    Besides the prefolded direct loads, it works around what `analysis.values` does not
    model, so that no wrong constant reaches a fold:
    - BPF_MEMSX loads from the stack return the stored constant zero-extended: a
      `r = (sN) r` after each sign-extending load fixes that;
    - atomic fetch, xchg, cmpxchg and load-acquire leave the analysis's old value in the
      register they write: a definition of an unknown value follows each;
    - `bpf_fib_lookup` is counted as reading its parameters only, but it writes results
      into them: it is analysed as a helper that writes its buffer;
    - `callx` is not recognised as a call at all;
    - a conditional jump to the next instruction sends both edges to the same block, and
      the state of one replaces the other's instead of joining it (`if r0 != 0` would leave
      r0 = 0 for the next instruction): it is analysed as the `goto` it amounts to.
    """
    fixes: dict[int, tuple[Instruction, ...]] = {}
    labels = program.labels
    for i, insn in enumerate(program.insns):
        if i in prefolded:
            fixes[i] = (constant_move(insn.dst, prefolded[i]),)
            continue
        op = insn.opcode
        if insn.is_conditional_jump and insn.reference is not None \
                and labels.get(insn.reference) == i + 1:
            fixes[i] = (Instruction(_JA, reference=insn.reference),)
        elif insn.is_load and op & 0xE0 == M_MEMSX:
            fixes[i] = (insn, Instruction(C_ALU64 | OP_MOV | SRC_X, insn.dst,
                                          insn.dst, 8 * insn.size_bytes))
        elif insn.is_atomic:
            _, defs = register_effects(insn)
            unknown = tuple(Instruction(LD_IMM64, r, PSEUDO_BTF_ID)
                            for r in range(11) if defs >> r & 1)
            if unknown:
                fixes[i] = (insn, *unknown)
        elif op == CALL and insn.src == CALL_HELPER and insn.imm == _FIB_LOOKUP:
            fixes[i] = (insn._replace(imm=_WRITES_MEMORY),)
        elif op == _CALLX:
            fixes[i] = (Instruction(CALL, 0, CALL_HELPER, 0, _WRITES_MEMORY),)
    if not fixes:
        return program, None
    positions = []
    position = 0
    for i in range(len(program.insns)):
        positions.append(position)
        position += len(fixes[i]) if i in fixes else 1
    return rewrite(program, fixes), positions


def _unfollowed_functions(program: Program, states: Sequence[State | None]
                          ) -> bytearray | None:
    """Instructions of functions where the analysis loses track of a stack pointer: it
    takes `scalar += stack pointer` for a scalar, so stores through the result would not
    update its stack slots. Nothing is folded there (None: no such function)."""
    flagged = []
    add_x = C_ALU64 | OP_ADD | SRC_X
    for i, insn in enumerate(program.insns):
        state = states[i]
        if insn.opcode == add_x and state is not None \
                and state.regs[insn.src].kind == K_STACK \
                and state.regs[insn.dst].kind != K_STACK:
            flagged.append(i)
    if not flagged:
        return None
    skip = bytearray(len(program.insns))
    for fn in program.functions():
        if any(fn.start <= i < fn.end for i in flagged):
            skip[fn.start:fn.end] = b"\x01" * (fn.end - fn.start)
    return skip


__all__ = ["ConstantPropagation", "constant_move", "propagate_constants"]
