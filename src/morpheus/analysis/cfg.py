"""Control-flow graphs of the functions of a Program (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import Function, Program


@dataclass
class Block:
    """A basic block: instructions [start, end) of the program; successors by block start."""

    start: int
    end: int
    succs: list[int] = field(default_factory=list)
    preds: list[int] = field(default_factory=list)

    @property
    def last(self) -> int:
        return self.end - 1


@dataclass
class CFG:
    """Blocks of one function, keyed by their first instruction index."""

    function: Function
    blocks: dict[int, Block]
    entry: int

    def block_of(self, index: int) -> Block:
        for block in self.blocks.values():
            if block.start <= index < block.end:
                return block
        raise KeyError(index)

    def reverse_postorder(self) -> list[int]:
        seen: set[int] = set()
        order: list[int] = []
        stack: list[tuple[int, int]] = [(self.entry, 0)]
        seen.add(self.entry)
        while stack:
            node, i = stack.pop()
            succs = self.blocks[node].succs
            if i < len(succs):
                stack.append((node, i + 1))
                nxt = succs[i]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, 0))
            else:
                order.append(node)
        order.reverse()
        return order

    def reachable(self) -> set[int]:
        return set(self.reverse_postorder())


def build_cfg(program: Program, function: Function) -> CFG:
    """Basic blocks of `function`. Calls do not end blocks; jumps, exits and jump targets do."""
    labels = program.labels
    insns = program.insns
    leaders = {function.start}
    for index in range(function.start, function.end):
        insn = insns[index]
        if insn.is_branch:
            target = labels[insn.reference] if insn.reference else None
            if target is None:
                raise ValueError(f"instruction {index}: branch without a label reference")
            if not function.start <= target < function.end:
                raise ValueError(f"instruction {index}: branch leaves function {function.name}")
            leaders.add(target)
            if index + 1 < function.end:
                leaders.add(index + 1)
        elif insn.is_exit and index + 1 < function.end:
            leaders.add(index + 1)
    starts = sorted(leaders)
    blocks: dict[int, Block] = {}
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else function.end
        blocks[start] = Block(start, end)
    for block in blocks.values():
        last = insns[block.last]
        if last.is_exit:
            continue
        if last.is_branch:
            target = labels[last.reference]  # type: ignore[index]
            if last.is_conditional_jump and block.end < function.end:
                block.succs.append(block.end)
            if target not in block.succs:
                block.succs.append(target)
        elif block.end < function.end:
            block.succs.append(block.end)
    for block in blocks.values():
        for s in block.succs:
            blocks[s].preds.append(block.start)
    return CFG(function, blocks, function.start)
