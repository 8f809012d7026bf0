"""Store coalescing: runs of narrow constant stores become a few wide ones.

Once inlined values are constants, code that copied them byte by byte (a MAC rewrite from
an inlined next hop is twelve `r1 = imm; *(u8 *)(r6 + k) = r1` pairs) stores constants
that `constprop` already knows. A straight run of constant moves and stores through one
base register writes a known set of bytes: the same bytes can be written by 4-byte
immediate stores (8-byte ones where the value sign-extends from 32 bits), and the moved
registers get their last value once at the end (dead-code elimination drops those nobody
reads).

Only packet and map-value pointers take unaligned wide stores here (the verifier checks
their alignment only in strict mode, which XDP and TC programs on x86 do not use); stores
into the stack, which the verifier always checks for alignment, are merged only into
naturally aligned pieces. The run may hold no other instruction and no label past its
first instruction (nothing may jump into its middle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from ..analysis.values import K_DIRECT, K_PKT, K_STACK, K_VALUE, Analysis, analyze_values
from ..ir import Instruction, Program
from ..ir.asm import Reg, st
from ..ir.edit import rewrite
from ..ir.opcodes import C_ALU, C_ALU64, C_ST, C_STX, M_MEM, OP_MOV, SRC_K
from .pipeline import PassContext, register

_R10: Final = 10
_WIDTHS = (8, 4, 2, 1)


@register
@dataclass(frozen=True)
class CoalesceStores:
    """Merge runs of constant stores through one base register (see the module docstring)."""

    name: ClassVar[str] = "stores"
    min_saving: int = 2  # instructions a run must save to be rewritten

    def run(self, program: Program, ctx: PassContext) -> Program:
        runs = _runs(program)
        if not runs:
            return program
        analysis: Analysis | None = None
        edits: dict[int, list[Instruction]] = {}
        saved = 0
        for start, end, base in runs:
            aligned_only = base == _R10
            if not aligned_only:
                if analysis is None:
                    analysis = analyze_values(program, ctx.prog_type)
                state = analysis.states[start]
                if state is None:
                    continue
                kind = state.regs[base].kind
                if kind == K_STACK:
                    aligned_only = True
                elif kind not in (K_PKT, K_VALUE, K_DIRECT):
                    continue
            code = _merged(program.insns[start:end], base, aligned_only)
            if code is None or (end - start) - len(code) < self.min_saving:
                continue
            code[0] = code[0].with_meta_object(program.insns[start].meta)
            edits[start] = code
            for i in range(start + 1, end):
                edits[i] = []
            saved += (end - start) - len(code)
        if not edits:
            return program
        ctx.stats["coalesced_stores"] = ctx.stats.get("coalesced_stores", 0) + saved
        return rewrite(program, edits)


def _constant_move(insn: Instruction) -> int | None:
    """The value a `r = imm` / `w = imm` move leaves in its register (64-bit), else None."""
    op = insn.opcode
    if op & 0xF8 != OP_MOV | SRC_K or insn.off != 0 or op & 0x07 not in (C_ALU, C_ALU64):
        return None
    if op & 0x07 == C_ALU64:
        return insn.imm & (1 << 64) - 1
    return insn.imm & (1 << 32) - 1


def _store(insn: Instruction, known: dict[int, int]) -> tuple[int, int, int, int] | None:
    """(base, offset, size, value) of a plain store of a known constant, else None."""
    op = insn.opcode
    if op & 0xE0 != M_MEM:
        return None
    size = insn.size_bytes
    if op & 0x07 == C_ST:
        value = insn.imm & (1 << 64) - 1
    elif op & 0x07 == C_STX and insn.src in known:
        value = known[insn.src]
    else:
        return None
    return insn.dst, insn.off, size, value & ((1 << (8 * size)) - 1)


def _runs(program: Program) -> list[tuple[int, int, int]]:
    """(start, end, base) of maximal runs of constant moves and stores through one base
    that hold at least two stores."""
    out = []
    insns = program.insns
    i = 0
    n = len(insns)
    while i < n:
        start = i
        base: int | None = None
        stores = 0
        known: dict[int, int] = {}
        j = i
        while j < n:
            insn = insns[j]
            if j > start and insn.label is not None:
                break
            value = _constant_move(insn)
            if value is not None:
                if insn.dst == base:
                    break
                known[insn.dst] = value
                j += 1
                continue
            store = _store(insn, known)
            if store is None or (base is not None and store[0] != base) \
                    or store[0] in known:
                break
            base = store[0]
            stores += 1
            j += 1
        if stores >= 2 and base is not None:
            # Trailing moves are kept as they are (they may feed what follows).
            end = j
            while end > start and _constant_move(insns[end - 1]) is not None:
                end -= 1
            out.append((start, end, base))
            i = max(j, start + 1)
        else:
            i = start + 1
    return out


def _merged(run: tuple[Instruction, ...], base: int, aligned_only: bool
            ) -> list[Instruction] | None:
    """The run rewritten as wide stores followed by each moved register's last value."""
    known: dict[int, int] = {}
    last_move: dict[int, Instruction] = {}
    data: dict[int, int] = {}  # offset -> byte
    for insn in run:
        value = _constant_move(insn)
        if value is not None:
            known[insn.dst] = value
            last_move[insn.dst] = insn
            continue
        store = _store(insn, known)
        if store is None:
            return None
        _, off, size, v = store
        for k in range(size):
            data[off + k] = (v >> (8 * k)) & 0xFF
    code: list[Instruction] = []
    offsets = sorted(data)
    k = 0
    while k < len(offsets):
        off = offsets[k]
        for width in _WIDTHS:
            if aligned_only and off % width:
                continue
            if not all(off + b in data for b in range(width)):
                continue
            value = sum(data[off + b] << (8 * b) for b in range(width))
            if width == 8 and not (value < 1 << 31 or value >= (1 << 64) - (1 << 31)):
                continue  # the immediate of an 8-byte store is sign-extended from 32 bits
            imm = value - (1 << 8 * width) if width >= 4 and value >= 1 << (8 * width - 1) \
                else value
            code.append(st(width, Reg(base), off, imm))
            k += width
            break
    for reg, insn in last_move.items():
        code.append(insn.with_label(None) if reg != base else insn)
    return code

