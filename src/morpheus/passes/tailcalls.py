"""Tail calls redirected to a prog array of the optimizer's own, behind a guard.

A root program that tail-calls through a prog array the user fills (Katran's root array)
reaches programs the optimizer specializes too. Their specialized versions live in another
prog array (the user's slots are never written: a user write racing ours would be lost);
this pass makes each tail call through a redirected array take the optimizer's array while
the user's array is as it was when the versions were made, that is while the array's guard
version (moved by every write to it, see `runtime.watch`) is the one recorded:

    r0 = &guard[slot]; r0 = *(u64 *)r0; r4 = version
    if r0 != r4 goto call       ; the user wrote the array: run what it holds now
    r2 = own array
  call: call bpf_tail_call

r0, r4 and r5 are free before the call: a helper call clobbers r0-r5 and `bpf_tail_call`
reads only r1-r3. Only tail calls whose r2 is exactly one redirected array are rewritten
(a call that may go through several arrays keeps going through the user's).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from ..analysis.values import TAIL_CALL, analyze_values, map_set
from ..ir import Instruction, Program, asm
from ..ir.asm import R0, R2, R4
from ..ir.edit import rewrite
from .inline import GUARD_MAP
from .pipeline import PassContext, register


@dataclass(frozen=True)
class Redirect:
    """Where tail calls through one user prog array go instead, and under which guard."""

    array: str  # the optimizer's own prog array (a map name the program is encoded with)
    guard_slot: int
    guard_version: int


@register
@dataclass(frozen=True)
class RedirectTailCalls:
    """`redirects` maps a user prog array's name to its `Redirect`."""

    name: ClassVar[str] = "redirect-tail-calls"
    redirects: Mapping[str, Redirect] = field(default_factory=dict)
    guard_map: str = GUARD_MAP

    def run(self, program: Program, ctx: PassContext) -> Program:
        if not self.redirects:
            return program
        analysis = analyze_values(program, ctx.prog_type,
                                  {n: s.type for n, s in ctx.maps.items()})
        edits: dict[int, list[Instruction]] = {}
        for index, insn in enumerate(program.insns):
            state = analysis.states[index]
            if state is None or not insn.is_helper_call or insn.imm != TAIL_CALL:
                continue
            arrays = map_set(state.regs[2])
            if arrays is None or len(arrays) != 1:
                continue
            redirect = self.redirects.get(next(iter(arrays)))
            if redirect is None:
                continue
            call = f"mphtc{index}.call"
            note = f"tail call via {redirect.array} while its guard holds"
            edits[index] = [
                asm.ld_map_value(R0, self.guard_map, 8 * redirect.guard_slot, note=note),
                asm.ldx(8, R0, R0, 0, note=note),
                asm.ld_imm64(R4, redirect.guard_version, note=note),
                asm.jne(R0, R4, call, note=note),
                asm.ld_map_fd(R2, redirect.array, note=note),
                insn.with_label(call),
            ]
        ctx.stats["redirected_tail_calls"] = len(edits)
        return rewrite(program, edits) if edits else program
