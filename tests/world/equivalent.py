"""Demonstrations that a mutant placement is equivalent on every input the program can get.

A mutant the check does not catch is a miss unless one of these shows, from the mutant's
own bytecode, that no input tells it from the program:

- `only_on_runts`: the mutated instruction is reached only after the program found the
  frame shorter than an Ethernet header. XDP never runs a program on such a frame: the
  kernel refuses them to BPF_PROG_TEST_RUN (`runts_refused`), and bpf_xdp_adjust_head /
  bpf_xdp_adjust_tail refuse to leave fewer than ETH_HLEN bytes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection

from morpheus.analysis.values import K_PKT, K_PKT_END, analyze_values
from morpheus.ir import Program
from morpheus.ir.helpers import HELPER_IDS
from morpheus.ir.opcodes import C_JMP, SRC_X, JmpOp
from tests.world import mutants as M

ETH_HLEN = 14
_MOVES_PACKET = {HELPER_IDS[n] for n in ("xdp_adjust_head", "xdp_adjust_tail",
                                         "xdp_adjust_meta")}


def _successors(program: Program, index: int) -> list[int]:
    insn = program.insns[index]
    if insn.is_exit:
        return []
    target = program.labels.get(str(insn.reference)) if insn.is_branch else None
    if insn.is_unconditional_jump:
        return [target] if target is not None else []
    out = [index + 1] if index + 1 < len(program.insns) else []
    if insn.is_conditional_jump and target is not None:
        out.append(target)
    return out


def _reachable(program: Program, starts: list[int], cut: set[tuple[int, int]]) -> set[int]:
    """Instructions reachable from `starts` without taking an edge in `cut` (pseudo calls
    followed into nothing: callers only)."""
    seen = set(starts)
    queue = deque(starts)
    while queue:
        i = queue.popleft()
        for j in _successors(program, i):
            if (i, j) not in cut and j not in seen:
                seen.add(j)
                queue.append(j)
    return seen


def runt_edges(program: Program) -> set[tuple[int, int]]:
    """Edges out of a bounds check `data + c` against `data_end` (c <= ETH_HLEN) taken
    only when the frame is shorter than c bytes, where the packet pointers are still the
    entry's (no helper that moves them can have run before the check)."""
    states = analyze_values(program).states
    movers = [i for i, insn in enumerate(program.insns)
              if insn.is_helper_call and insn.imm in _MOVES_PACKET]
    after_move = _reachable(program, movers, set()) if movers else set()
    out: set[tuple[int, int]] = set()
    for i, insn in enumerate(program.insns):
        state = states[i]
        if state is None or i in after_move or not insn.is_conditional_jump or \
                insn.opcode & 0x07 != C_JMP or not insn.opcode & SRC_X:
            continue
        a, b = state.regs[insn.dst], state.regs[insn.src]
        op = insn.opcode & 0xF0
        if a.kind == K_PKT_END and b.kind == K_PKT:  # end OP ptr: mirror it
            a, b = b, a
            op = {JmpOp.JGT: JmpOp.JLT, JmpOp.JLT: JmpOp.JGT, JmpOp.JGE: JmpOp.JLE,
                  JmpOp.JLE: JmpOp.JGE}.get(op, 0)
        if a.kind != K_PKT or b.kind != K_PKT_END or a.const is None or \
                not 0 < a.const <= ETH_HLEN:
            continue
        target = program.labels.get(str(insn.reference))
        if target is None:
            continue
        # ptr > end and ptr >= end+1.. : taken means short; ptr <= end, ptr < end: not.
        if op == JmpOp.JGT:
            out.add((i, target))
        elif op == JmpOp.JLE:
            out.add((i, i + 1))
    return out


def only_through(program: Program, index: int, edges: set[tuple[int, int]]) -> bool:
    """Whether every path from the entry to instruction `index` takes one of `edges`: with
    them removed the instruction is unreachable, and it is reachable with them (it is not
    simply dead code)."""
    return bool(edges) and index in _reachable(program, [0], set()) and \
        index not in _reachable(program, [0], edges)


def only_on_runts(program: Program, index: int) -> bool:
    """Whether every path to instruction `index` goes through a runt edge (`runt_edges`)."""
    return only_through(program, index, runt_edges(program))


def miss_edges(program: Program, maps: Collection[str]) -> set[tuple[int, int]]:
    """Edges taken when an inlined lookup on one of `maps` found nothing: the NULL test at
    the site's `.cont`, where r0 is a leaf's value pointer (never NULL) or the result of
    the original lookup on a miss of the tree."""
    out: set[tuple[int, int]] = set()
    for i, insn in enumerate(program.insns):
        label = insn.label or ""
        if not (label.startswith("mph") and label.endswith(".cont")):
            continue
        if not insn.is_conditional_jump or insn.opcode & 0x07 != C_JMP or \
                insn.opcode & SRC_X or insn.dst != 0 or insn.imm != 0:
            continue
        if M.inlined_map_at_site(program, label[:-len(".cont")]) not in maps:
            continue
        target = program.labels.get(str(insn.reference))
        op = insn.opcode & 0xF0
        if op == JmpOp.JEQ and target is not None:
            out.add((i, target))
        elif op == JmpOp.JNE:
            out.add((i, i + 1))
    return out


def only_on_misses(program: Program, index: int, maps: Collection[str]) -> bool:
    """Whether every path to instruction `index` goes through a miss of an inlined lookup
    on one of `maps` (`miss_edges`)."""
    return only_through(program, index, miss_edges(program, maps))

