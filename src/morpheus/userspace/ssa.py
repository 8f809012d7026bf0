"""SSA construction for the lifter: eBPF registers as LLVM values, phis at block joins.

Blocks are emitted in program order. A block starts with its predecessors' register values:
one predecessor's as they are; at a join, a register whose value differs between the
predecessors gets a phi; a block with a predecessor not emitted yet (a loop header before
its back edge) gets a phi per register, completed once that predecessor is emitted. Phis
that turn out trivial (one value besides themselves) are replaced by that value, and only
phis some instruction uses are written out. Registers never go through memory, so LLVM gets
SSA already instead of allocas for SROA and mem2reg to promote. (Per block, not per register
read as in Braun et al.'s on-demand construction: a dict copy per block costs less in
Python than the walks of on-demand reads through comparison trees of ~2,000 blocks.)

Values are LLVM operand text (`%t12`, `42`, a constant expression). `UNDEF` is a register no
path has written (or a caller-saved register after a call): the verifier never lets a program
read one, except as an unused helper argument, so any value will do; it renders as `0`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

UNDEF = "%undef"
REGISTERS = 10  # r0-r9; r10, the frame pointer, is read-only and not tracked
_PHI = re.compile(r"%phi\d+")
# Values defined in the entry block (or constants): they dominate every block.
_ENTRY_VALUES = frozenset({"%fpi", "%ctx", "%a1", "%a2", "%a3", "%a4", "%a5"})


def _everywhere(value: str) -> bool:
    return not value.startswith("%") or value in _ENTRY_VALUES


class Registers:
    """The values of r0-r9 through one function, built while the lifter emits it.

    `preds` maps each block (its first instruction's index; the function's entry block is
    `ENTRY`) to its predecessors, one entry per CFG edge."""

    ENTRY = -1

    def __init__(self, preds: Mapping[int, Sequence[int]], entry: Mapping[int, str]) -> None:
        self.preds = preds
        self.ends: dict[int, dict[int, str]] = {self.ENTRY: dict(entry)}
        self.unfilled = {b: sum(q != self.ENTRY for q in p) for b, p in preds.items()}
        self.incomplete: dict[int, dict[int, str]] = {}  # block → register → its phi
        self.phis: dict[str, tuple[int, list[str]]] = {}  # phi → its block, operands
        self.replaced: dict[str, str] = {}
        self.current: dict[int, str] = {}

    # --- construction --------------------------------------------------------------------
    def begin(self, block: int) -> None:
        """Start emitting `block`: its registers are its predecessors' at their ends."""
        preds = self.preds[block]
        if not preds:  # unreachable
            self.current = dict.fromkeys(range(REGISTERS), UNDEF)
            return
        if self.unfilled[block]:  # a loop header: a phi per register, operands later
            phis = {r: self._phi(block) for r in range(REGISTERS)}
            self.incomplete[block] = phis
            self.current = dict(phis)
            return
        first = self.ends[preds[0]]
        if all(p == preds[0] for p in preds):
            self.current = dict(first)
            return
        ends = [self.ends[p] for p in preds]
        state: dict[int, str] = {}
        for reg in range(REGISTERS):
            distinct = {e[reg] for e in ends}
            if len(distinct) == 1:
                state[reg] = self.resolve(distinct.pop())
                continue
            values = [self.resolve(e[reg]) for e in ends]
            v = values[0]
            if all(x == v for x in values):
                state[reg] = v
            else:
                phi = self._phi(block)
                self.phis[phi] = (block, values)
                state[reg] = self._try_trivial(phi)
        self.current = state

    def read(self, reg: int) -> str:
        return self.resolve(self.current[reg])

    def write(self, reg: int, value: str) -> None:
        self.current[reg] = value

    def end(self, block: int, successors: Iterable[int]) -> None:
        """`block` is emitted: complete the loop headers whose last predecessor it was."""
        self.ends[block] = self.current
        for succ in successors:
            self.unfilled[succ] -= 1
            if not self.unfilled[succ] and succ in self.incomplete:
                for reg, phi in self.incomplete.pop(succ).items():
                    self.phis[phi] = (succ, [self.ends[p][reg] for p in self.preds[succ]])
                    self._try_trivial(phi)

    def _phi(self, block: int) -> str:
        name = f"%phi{len(self.phis)}"
        self.phis[name] = (block, [])
        return name

    def _try_trivial(self, phi: str) -> str:
        """`phi`, or its one value if it has only one besides itself. UNDEF operands are
        left out only when that value is available everywhere (a constant, an argument):
        an instruction's result would not dominate the paths UNDEF comes from."""
        operands = self.phis[phi][1]
        same = None
        undef = False
        for op in operands:
            op = self.resolve(op)
            if op == UNDEF:
                undef = True
                continue
            if op in (phi, same):
                continue
            if same is not None:
                return phi
            same = op
        if same is None:
            self.replaced[phi] = UNDEF
        elif not undef or _everywhere(same):
            self.replaced[phi] = same
        else:
            return phi
        return self.replaced[phi]

    def resolve(self, value: str) -> str:
        seen = value
        while seen in self.replaced:
            seen = self.replaced[seen]
        if seen != value:
            self.replaced[value] = seen
        return seen

    # --- output --------------------------------------------------------------------------
    def finish(self) -> None:
        """Drop phis made trivial by later replacements (around loops), to a fixpoint."""
        changed = True
        while changed:
            changed = False
            for phi, (_, operands) in self.phis.items():
                if operands and phi not in self.replaced:
                    self._try_trivial(phi)
                    changed = changed or phi in self.replaced

    def phi_lines(self, body: Iterable[str], labels: Mapping[int, str]
                  ) -> dict[int, list[str]]:
        """The phis to emit at the top of each block: those the `body` text uses, directly
        or through other phis. `labels` names each block's last LLVM block (the one that
        branches to the successor)."""
        used: set[str] = set()
        work = [self.resolve(m) for text in body for m in _PHI.findall(text)]
        while work:
            phi = work.pop()
            if phi in used or phi in self.replaced or phi not in self.phis:
                continue
            used.add(phi)
            work.extend(self.resolve(op) for op in self.phis[phi][1])
        out: dict[int, list[str]] = {}
        for phi, (block, operands) in self.phis.items():
            if phi not in used:
                continue
            incoming = ", ".join(f"[ {self.render(op)}, %{labels[p]} ]"
                                 for op, p in zip(operands, self.preds[block], strict=True))
            out.setdefault(block, []).append(f"  {phi} = phi i64 {incoming}")
        return out

    def render(self, value: str) -> str:
        value = self.resolve(value)
        return "0" if value == UNDEF else value

    def substitute(self, text: str) -> str:
        """`text` with every replaced phi written as its final value."""
        if self.replaced:
            text = _PHI.sub(lambda m: self.render(m.group(0)), text)
        return text.replace(UNDEF, "0")
