"""Editing symbolic programs: replace, insert and delete instructions, keeping labels right.

Labels belong to instructions. When an instruction is deleted, its label moves to the next
surviving instruction; if that one already has a label, every reference to the deleted
label is redirected to it. Replacing an instruction by a sequence gives the label to the
first instruction of the sequence. Metadata of replaced instructions is kept on the first
replacement unless the replacement carries its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .instruction import EMPTY_META, Instruction
from .program import LinkError, Program


def rewrite(program: Program, edits: Mapping[int, Sequence[Instruction]]) -> Program:
    """Replace instruction `i` by `edits[i]` (empty: delete it) for every i in `edits`.

    A label on a replaced instruction is carried by the first new instruction (or, when the
    instruction is deleted, by whatever follows it).
    """
    out: list[Instruction] = []
    renames: dict[str, str] = {}
    pending: str | None = None  # label of deleted instructions waiting for a home
    for index, insn in enumerate(program.insns):
        replacement = edits.get(index)
        if replacement is None:
            new = [insn]
        else:
            new = list(replacement)
            if new and insn.label is not None and new[0].label is None:
                new[0] = new[0].with_label(insn.label)
            elif new and insn.label is not None and new[0].label != insn.label:
                renames[insn.label] = new[0].label  # type: ignore[assignment]
            if new and new[0].meta is EMPTY_META and insn.meta is not EMPTY_META:
                new[0] = new[0].with_meta_object(insn.meta)
            if not new and insn.label is not None:
                if pending is None:
                    pending = insn.label
                else:
                    renames[insn.label] = pending
        if new and pending is not None:
            first = new[0]
            if first.label is None:
                new[0] = first.with_label(pending)
            else:
                renames[pending] = first.label
            pending = None
        out.extend(new)
    if pending is not None:
        raise LinkError(f"program {program.name}: label {pending!r} would point past the end")
    if renames:
        out = _apply_renames(out, renames)
    return Program(program.name, tuple(out))


def _apply_renames(insns: list[Instruction], renames: dict[str, str]) -> list[Instruction]:
    def final(label: str) -> str:
        seen = set()
        while label in renames and label not in seen:
            seen.add(label)
            label = renames[label]
        return label

    return [i.with_reference(final(i.reference)) if i.reference in renames else i
            for i in insns]


def delete(program: Program, indices: Iterable[int]) -> Program:
    return rewrite(program, {i: () for i in indices})


def insert_before(program: Program, index: int, snippet: Sequence[Instruction], *,
                  take_label: bool = True) -> Program:
    """Insert `snippet` before instruction `index`. With `take_label`, jumps to that
    instruction now land on the snippet."""
    target = program.insns[index]
    if take_label or target.label is None:
        return rewrite(program, {index: (*snippet, target.without_label())})
    return rewrite(program, {index: (*snippet, target)})


def ensure_label(program: Program, index: int, prefix: str) -> tuple[Program, str]:
    """The label of instruction `index`, giving it a fresh one if it has none."""
    insn = program.insns[index]
    if insn.label is not None:
        return program, insn.label
    label = program.fresh_label(prefix)
    insns = list(program.insns)
    insns[index] = insn.with_label(label)
    return Program(program.name, tuple(insns)), label
