"""Path specialization: each inlined hot value gets its own copy of the code after the site.

After table inlining, every hit of a comparison tree loads a pointer to its frozen value and
jumps to the one continuation shared by all hits (and by the map's own answer on a miss).
There the value is unknown again: the router still loads the route's next-hop index, looks
the next hop up, loads its egress interface and MAC addresses. Give each distinct inlined
value its own copy of the continuation and those loads read constants (`constprop` folds
them), the next lookup's key becomes a constant (the next planning round inlines it), and
the branches on the value's flags fold away. The miss path keeps the original continuation.

A copy is everything reachable from the continuation in the entry function, so copies are
closed: their jumps stay inside the copy, and only calls leave it (to subprograms, which are
shared). Hits with the same value (routes sharing a next hop) share one copy. Copies are
made, most used value first, while the instructions they add stay within `budget`; a site
whose continuation holds another site's comparison tree is left alone (copies of copies
multiply).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..ir import Instruction, Program
from ..ir.opcodes import LD_IMM64, PSEUDO_MAP_VALUE
from .pipeline import PassContext, register

DEFAULT_BUDGET = 4_000  # instructions the copies may add, over all sites


@register
@dataclass(frozen=True)
class SpecializePaths:
    """Duplicate the continuation of the hot-key hits at `sites` (lookup provenances)."""

    name: ClassVar[str] = "paths"
    sites: tuple[int, ...] = ()
    values_map: str = "mph_hot"
    budget: int = DEFAULT_BUDGET
    # Sites whose tree must not be in the way of another site's copies (all planned trees).
    trees: tuple[int, ...] = field(default=())

    def run(self, program: Program, ctx: PassContext) -> Program:
        left = self.budget
        copies: list[dict[str, object]] = []
        for site in self.sites:
            program, made, added = _specialize_site(program, site, self.values_map, left,
                                                    set(self.trees) | set(self.sites))
            left -= added
            if made:
                copies.append({"site": site, "copies": made, "insns": added})
        ctx.stats["path_copies"] = ctx.stats.get("path_copies", []) + copies
        return program


def _cont_label(site: int) -> str:
    return f"mph{site}.cont"


def _is_hit_load(insn: Instruction, values_map: str) -> bool:
    return (insn.opcode == LD_IMM64 and insn.src == PSEUDO_MAP_VALUE
            and insn.reference == values_map and (insn.meta.note or "").startswith("inlined"))


def _region(program: Program, start: int, end: int) -> list[int] | None:
    """Indices reachable from `start` within [start.., end) of the entry function, sorted;
    None if control can leave the function other than by a call or exit."""
    labels = program.labels
    insns = program.insns
    seen: set[int] = set()
    work = [start]
    while work:
        i = work.pop()
        if i in seen:
            continue
        if not 0 <= i < end:
            return None
        seen.add(i)
        insn = insns[i]
        if insn.is_exit:
            continue
        if insn.is_branch:
            target = labels.get(insn.reference or "")
            if target is None:
                return None
            work.append(target)
            if insn.is_unconditional_jump:
                continue
        work.append(i + 1)
    return sorted(seen)


def _specialize_site(program: Program, site: int, values_map: str, budget: int,
                     trees: set[int]) -> tuple[Program, int, int]:
    """The program with copies for the hottest values of `site`, how many copies, and
    how many instructions they added."""
    cont = _cont_label(site)
    labels = program.labels
    start = labels.get(cont)
    if start is None:
        return program, 0, 0
    insns = program.insns
    functions = program.functions()
    end = functions[0].end if functions else len(insns)
    if start >= end:
        return program, 0, 0
    # Hits: `r0 = &values[off]` immediately followed by `goto cont`.
    hits: dict[int, list[int]] = {}  # value offset -> indices of the `goto cont`
    for i in range(1, len(insns)):
        insn = insns[i]
        if insn.reference == cont and insn.is_unconditional_jump and \
                _is_hit_load(insns[i - 1], values_map) and insns[i - 1].dst == 0:
            hits.setdefault(insns[i - 1].imm, []).append(i)
    if not hits:
        return program, 0, 0
    region = _region(program, start, end)
    if region is None:
        return program, 0, 0
    others = tuple(f"mph{t}." for t in trees if t != site)
    for i in region:
        label = insns[i].label or ""
        if others and label.startswith(others):
            return program, 0, 0  # another site's tree: copies would multiply
    size = len(region)
    # Most shared values first (they stand for the most hot keys), then tree order.
    order = sorted(hits, key=lambda off: (-len(hits[off]), hits[off][0]))
    count = min(len(order), budget // max(size, 1))
    if count <= 0:
        return program, 0, 0
    retarget: dict[int, str] = {}
    tail: list[Instruction] = []
    region_labels = {insns[i].label for i in region if insns[i].label is not None}
    for n, off in enumerate(order[:count]):
        suffix = f".p{site}.{n}"

        def rename(label: str | None, suffix: str = suffix) -> str | None:
            return f"{label}{suffix}" if label in region_labels else label

        for i in region:
            insn = insns[i]
            meta = insn.meta
            if meta.func_btf_id is not None:  # func_info belongs to the function's start
                meta = meta._replace(func_btf_id=None)
            copied = insn._replace(label=rename(insn.label), meta=meta)
            if insn.reference is not None and insn.is_branch:
                copied = copied._replace(reference=rename(insn.reference))
            tail.append(copied)
        for j in hits[off]:
            retarget[j] = f"{cont}{suffix}"
    new = [insn.with_reference(retarget[i]) if i in retarget else insn
           for i, insn in enumerate(insns)]
    # The entry function ends with an exit or a jump, so nothing falls into the copies.
    out = Program(program.name, tuple(new[:end]) + tuple(tail) + tuple(new[end:]))
    return out, count, len(tail)
