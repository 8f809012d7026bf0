"""Block counting: how many of the program's own instructions a packet executes.

At the start of every basic block of the entry function, add the block's length (its
instructions, a 64-bit immediate load counting once) to a u64 counter in a single-entry
array (`counter_map`, read after a replay pinned to one CPU). The counter code needs two
registers: it takes registers that are dead at the block's start (backward liveness over
the CFG) and, where fewer than two are dead, saves live ones in two stack slots below the
deepest one the program uses and restores them after. Helper calls count as one
instruction each (what a helper does inside the kernel is not counted), and so do the
instructions of subprograms (whose blocks are not instrumented).

This is a measuring tool: the counted program is not the one that runs in production.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..analysis.cfg import CFG, build_cfg
from ..analysis.values import K_STACK, analyze_values
from ..ir import Instruction, Program, asm
from ..ir.asm import Reg
from ..ir.edit import rewrite
from ..obj import MapSpec
from ..uapi import MapType
from .dce import register_effects
from .pipeline import PassContext, register

COUNTER_MAP = "mph_icount"
_R10 = 10
_ALL = (1 << 10) - 1  # r0-r9


@register
@dataclass(frozen=True)
class CountBlocks:
    """Count executed instructions into `counter_map` (see the module docstring)."""

    name: ClassVar[str] = "blockcount"
    counter_map: str = COUNTER_MAP

    def run(self, program: Program, ctx: PassContext) -> Program:
        function = program.functions()[0]
        cfg = build_cfg(program, function)
        live_in = _liveness(program, cfg)
        slots = _spill_slots(program, ctx.prog_type)
        edits: dict[int, list[Instruction]] = {}
        for start in cfg.reachable():
            block = cfg.blocks[start]
            length = block.end - block.start
            code = _counter(self.counter_map, length, live_in[start], slots)
            edits[start] = [*code, program.insns[start].with_label(None)]
        ctx.maps[self.counter_map] = MapSpec(self.counter_map, MapType.ARRAY, 4, 8, 1)
        ctx.stats["counted_blocks"] = len(edits)
        return rewrite(program, edits)


def _liveness(program: Program, cfg: CFG) -> dict[int, int]:
    """Registers live at the start of each block (bit n: rn)."""
    insns = program.insns
    summary: dict[int, tuple[int, int]] = {}  # block start -> (uses before defs, defs)
    for start, block in cfg.blocks.items():
        uses = defs = 0
        for i in range(block.start, block.end):
            u, d = register_effects(insns[i])
            uses |= u & ~defs
            defs |= d
        summary[start] = (uses, defs)
    live = dict.fromkeys(cfg.blocks, 0)
    changed = True
    while changed:
        changed = False
        for start in reversed(cfg.reverse_postorder()):
            block = cfg.blocks[start]
            out = 0
            for succ in block.succs:
                out |= live.get(succ, 0)
            uses, defs = summary[start]
            new = uses | (out & ~defs)
            if new != live[start]:
                live[start] = new
                changed = True
    return live


def _spill_slots(program: Program, prog_type: int) -> tuple[int, int]:
    """Two 8-byte-aligned stack offsets below every stack byte the program touches
    (accesses through stack pointers, and stack pointers handed to calls)."""
    analysis = analyze_values(program, prog_type)
    deepest = 0
    for insn, state in zip(program.insns, analysis.states, strict=True):
        if state is None:
            continue
        pointers = []
        if insn.is_load:
            pointers.append((state.regs[insn.src], insn.off))
        elif insn.is_store or insn.is_atomic:
            pointers.append((state.regs[insn.dst], insn.off))
        elif insn.is_call:
            pointers += [(state.regs[r], 0) for r in range(1, 6)]
        for value, off in pointers:
            if value.kind == K_STACK and value.const is not None:
                deepest = min(deepest, value.const + off)
    base = -((-deepest + 7) // 8) * 8
    return base - 8, base - 16


def _counter(counter_map: str, length: int, live: int, slots: tuple[int, int]
             ) -> list[Instruction]:
    free = [r for r in range(10) if not live >> r & 1]
    regs = free[:2]
    saved: list[tuple[int, int]] = []
    for r in range(10):
        if len(regs) == 2:
            break
        if r not in regs:
            saved.append((r, slots[len(saved)]))
            regs.append(r)
    a, b = Reg(regs[0]), Reg(regs[1])
    code = [asm.stx(8, Reg(_R10), off, Reg(r), note="count") for r, off in saved]
    code += [
        asm.ld_map_value(a, counter_map, 0, note="count"),
        asm.ldx(8, b, a, 0, note="count"),
        asm.add64(b, length, note="count"),
        asm.stx(8, a, 0, b, note="count"),
    ]
    code += [asm.ldx(8, Reg(r), Reg(_R10), off, note="count") for r, off in saved]
    return code
