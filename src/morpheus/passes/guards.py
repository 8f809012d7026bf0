"""Version bumps where the data plane writes a map that specialized code depends on.

Every specialized site on such a map checks a version (one load and one compare, see
`inline`); this pass makes every data-plane write to the map move that version before and
after the write: update and delete helper calls, and stores or atomics through a value
pointer that touch bytes some specialized site reads. The bump before means no specialized
site uses the old value once the new one can be seen; the bump after means a snapshot taken
while the write was in flight can never match the version that follows it.

Writes through a value pointer to bytes no specialized site reads (a "last seen" timestamp
next to the forwarding decision) need no bump: the inlined bytes stay true.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from ..analysis.sites import ProgramFacts, analyze
from ..analysis.values import DELETE, UPDATE, Kind, Value, map_set, value_refs
from ..ir import Instruction, Program, asm
from ..ir.asm import FP, R0, R1, R2, R3, R5
from ..ir.edit import rewrite
from ..ir.opcodes import AtomicOp, Class, Mode
from .inline import GUARD_MAP
from .instrument import _frame_floors, _function_of
from .pipeline import PassContext, register


@register
@dataclass(frozen=True)
class GuardBumps:
    """`slots` maps each guarded map to its version slot; `read_ranges` gives, per map, the
    value byte ranges specialized sites read (None: unknown, bump on every write)."""

    name: ClassVar[str] = "guard-bumps"
    slots: Mapping[str, int] = field(default_factory=dict)
    read_ranges: Mapping[str, tuple[tuple[int, int], ...] | None] = field(default_factory=dict)
    guard_map: str = GUARD_MAP

    def run(self, program: Program, ctx: PassContext) -> Program:
        if not self.slots:
            return program
        facts = analyze(program, ctx.maps, prog_type=ctx.prog_type)
        floors = _frame_floors(program, facts.analysis)
        edits: dict[int, list[Instruction]] = {}
        bumps = 0
        for index, insn in enumerate(program.insns):
            state = facts.analysis.states[index]
            if state is None:
                continue
            if insn.is_helper_call and insn.imm in (UPDATE, DELETE):
                # The map may be one of several: bump every guarded one it may be.
                targets = sorted(m for m in (map_set(state.regs[1]) or self.slots)
                                 if m in self.slots)
                if targets:
                    scratch = R5 if insn.imm == UPDATE else R3
                    # After the call r1-r5 are dead (the call clobbered them); r0 is the
                    # helper's result and must survive.
                    before = [i for m in targets for i in self._bump_at_call(m, R0, scratch)]
                    after = [i for m in targets for i in self._bump_at_call(m, R1, R2)]
                    edits[index] = [*before, insn, *after]
                    bumps += 1
                continue
            cls = insn.opcode & 0x07
            if cls in (Class.ST, Class.STX) and insn.mode in (Mode.MEM, Mode.ATOMIC):
                base = state.regs[insn.dst]
                offset = None if base.const is None else base.const + insn.off
                targets = sorted(m for m in _value_maps(base, facts) if m in self.slots
                                 and self._touches_read_bytes(m, offset, insn.size_bytes))
                if targets:
                    floor = floors[_function_of(program, index)]
                    free = [r for r in range(6) if state.regs[r].kind == Kind.UNINIT
                            and r not in (insn.dst, insn.src)]
                    bump = [i for m in targets for i in self._bump_anywhere(m, floor, free)]
                    edits[index] = [*bump, insn, *bump]
                    bumps += 1
        ctx.stats["guard_bumps"] = bumps
        return rewrite(program, edits) if edits else program

    def _touches_read_bytes(self, map_name: str, offset: int | None, size: int) -> bool:
        ranges = self.read_ranges.get(map_name)
        if ranges is None or offset is None:
            return True
        return any(offset < hi and lo < offset + size for lo, hi in ranges)

    def _bump_at_call(self, map_name: str, base: int, scratch: int) -> list[Instruction]:
        # Before a helper call r0 is dead (the call overwrites it) and `scratch` is not an
        # argument of the helper; after it, r1-r5 are dead.
        slot = 8 * self.slots[map_name]
        b, s = asm.Reg(base), asm.Reg(scratch)
        return [asm.ld_map_value(b, self.guard_map, slot, note="guard bump"),
                asm.mov64(s, 1, note="guard bump"),
                asm.atomic(8, AtomicOp.ADD, b, 0, s, note="guard bump")]

    def _bump_anywhere(self, map_name: str, floor: int, free: list[int]) -> list[Instruction]:
        # Uninitialized registers are dead and free to use; otherwise borrow r0/r1 through
        # stack slots below the function's frame (8-byte spills keep pointer types).
        slot = 8 * self.slots[map_name]
        regs = [asm.Reg(r) for r in free[:2]]
        saved: list[tuple[asm.Reg, int]] = []
        for n, reg in enumerate((R0, R1)):
            if len(regs) < 2 and reg not in regs:
                regs.append(reg)
                saved.append((reg, floor - 32 - 8 * n))
        a, b = regs[0], regs[1]
        code = [asm.stx(8, FP, off, reg, note="guard bump") for reg, off in saved]
        code += [asm.ld_map_value(a, self.guard_map, slot, note="guard bump"),
                 asm.mov64(b, 1, note="guard bump"),
                 asm.atomic(8, AtomicOp.ADD, a, 0, b, note="guard bump")]
        code += [asm.ldx(8, reg, FP, off, note="guard bump") for reg, off in reversed(saved)]
        return code


def _value_maps(base: Value, facts: ProgramFacts) -> set[str]:
    """The maps a store through `base` may write: the maps of every lookup its value may
    come from (each of several, for a lookup on one of several maps)."""
    out: set[str] = set()
    for name, site_index in value_refs(base) if base.kind in (Kind.VALUE, Kind.VALUES) else ():
        site = facts.sites.get(site_index)
        out |= set(site.maps) if site is not None and site.maps is not None else {name}
    return out
