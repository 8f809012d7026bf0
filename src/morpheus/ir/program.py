"""A symbolic eBPF program: instructions with labels and references, encoded late."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from .codec import EncodeError, encode_instruction
from .instruction import _GOTOL, _IS_BRANCH, Instruction
from .opcodes import CALL, LD_IMM64, CallSrc, PseudoSrc


class LinkError(ValueError):
    """A label is missing or defined twice, or a resolved offset does not fit."""


@dataclass(frozen=True, slots=True)
class Function:
    """A function of a linked program: `name` labels its first instruction."""

    name: str
    start: int  # instruction index
    end: int  # one past the last instruction index
    btf_id: int | None


@dataclass(frozen=True, slots=True)
class EncodedProgram:
    """Bytecode plus the BTF func_info and line_info records rebuilt from metadata.

    func_info entries are (insn_off, type_id); line_info entries are
    (insn_off, file_name_off, line_off, line_col) with line_col = line << 10 | col.
    """

    bytecode: bytes
    func_info: tuple[tuple[int, int], ...]
    line_info: tuple[tuple[int, int, int, int], ...]

    @property
    def slot_count(self) -> int:
        return len(self.bytecode) // 8


@dataclass(frozen=True, slots=True)
class Program:
    """An ordered tuple of instructions; the first one is the entry point.

    Subprograms follow the main function; each starts at an instruction whose label is the
    function's name and is referenced by pseudo calls (or function-pointer loads).
    """

    name: str
    insns: tuple[Instruction, ...]
    _labels: dict[str, int] | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.insns)

    def __iter__(self) -> Iterator[Instruction]:
        return iter(self.insns)

    def __getitem__(self, index: int) -> Instruction:
        return self.insns[index]

    def with_insns(self, insns: Iterable[Instruction]) -> Program:
        return Program(self.name, tuple(insns))

    @property
    def labels(self) -> dict[str, int]:
        """Label → instruction index. Raises LinkError on a duplicate label."""
        cached = self._labels
        if cached is not None:
            return cached
        out: dict[str, int] = {}
        for index, insn in enumerate(self.insns):
            if insn.label is not None:
                if insn.label in out:
                    raise LinkError(
                        f"program {self.name}: label {insn.label!r} defined at instructions "
                        f"{out[insn.label]} and {index}"
                    )
                out[insn.label] = index
        object.__setattr__(self, "_labels", out)
        return out

    def target(self, index: int) -> int:
        """Instruction index that instruction `index` refers to (jump target or callee)."""
        insn = self.insns[index]
        if insn.reference is None:
            raise LinkError(f"program {self.name}: instruction {index} has no reference")
        try:
            return self.labels[insn.reference]
        except KeyError:
            raise LinkError(
                f"program {self.name}: instruction {index} refers to undefined label "
                f"{insn.reference!r}"
            ) from None

    def slot_offsets(self) -> list[int]:
        """Slot offset of each instruction, plus the total slot count at the end."""
        offsets = [0]
        total = 0
        for insn in self.insns:
            total += insn.width
            offsets.append(total)
        return offsets

    def functions(self) -> list[Function]:
        """Functions in instruction order: the entry function and every called subprogram.

        A function's BTF id is the first func_info found in its body, so that a pass may
        insert instructions before a function's original first instruction.
        """
        starts: dict[int, str] = {0: self.insns[0].label or self.name} if self.insns else {}
        for index, insn in enumerate(self.insns):
            if (insn.is_pseudo_call or insn.is_func_load) and insn.reference is not None:
                target = self.target(index)
                starts.setdefault(target, insn.reference)
        ordered = sorted(starts)
        out = []
        for n, start in enumerate(ordered):
            end = ordered[n + 1] if n + 1 < len(ordered) else len(self.insns)
            btf_id = next((i.meta.func_btf_id for i in self.insns[start:end]
                           if i.meta.func_btf_id is not None), None)
            out.append(Function(starts[start], start, end, btf_id))
        return out

    def fresh_label(self, prefix: str) -> str:
        """A label not used in this program, starting with `prefix`."""
        labels = self.labels
        if prefix not in labels:
            return prefix
        for n in itertools.count(1):
            candidate = f"{prefix}.{n}"
            if candidate not in labels:
                return candidate
        raise AssertionError("unreachable")


def symbolize(
    insns: Sequence[Instruction],
    *,
    names: Mapping[int, str] | None = None,
    namer: Callable[[int], str] = lambda slot: f"L{slot}",
) -> list[Instruction]:
    """Replace numeric jump and call offsets by references to labels.

    `names` maps slot offsets to existing symbol names (from the ELF symbol table); targets
    without a name get `namer(slot)`. Instructions that already carry a reference are left
    alone, and so are calls and function loads whose target lies outside the sequence (the
    object reader links those to other sections).
    """
    slot_of: list[int] = []
    index_of: dict[int, int] = {}
    slot = 0
    # (index, relative slot offset, is_branch) of every instruction that points somewhere
    pointing: list[tuple[int, int, bool]] = []
    for index, insn in enumerate(insns):
        slot_of.append(slot)
        index_of[slot] = index
        opcode = insn.opcode
        if insn.reference is None:
            if _IS_BRANCH[opcode]:
                pointing.append((index, insn.imm if opcode == _GOTOL else insn.off, True))
            elif (opcode == CALL and insn.src == CallSrc.PSEUDO_CALL) or (
                opcode == LD_IMM64 and insn.src == PseudoSrc.FUNC
            ):
                pointing.append((index, insn.imm, False))
        slot += 2 if opcode == LD_IMM64 else 1
    total = slot

    targets: dict[int, int] = {}  # instruction index → target instruction index
    for index, relative, is_branch in pointing:
        target_slot = slot_of[index] + 1 + relative
        target = index_of.get(target_slot)
        if target is None:
            if is_branch:
                raise LinkError(
                    f"instruction {index}: jump to slot {target_slot} is outside the "
                    "function or into the middle of an instruction"
                )
            if 0 <= target_slot < total:
                raise LinkError(
                    f"instruction {index}: target slot {target_slot} is mid-instruction"
                )
            continue
        targets[index] = target

    if not targets:
        return list(insns)
    label_of: dict[int, str] = {}
    names = names or {}
    for target in sorted(set(targets.values())):
        existing = insns[target].label
        if existing is not None:
            label_of[target] = existing
        else:
            label_of[target] = names.get(slot_of[target]) or namer(slot_of[target])

    out = list(insns)
    for target, label in label_of.items():
        if out[target].label != label:
            out[target] = out[target].with_label(label)
    for index, target in targets.items():
        out[index] = out[index].with_reference(label_of[target])
    return out


def encode(program: Program, maps: Mapping[str, int] | None = None,
           fd_array: Sequence[int] = ()) -> EncodedProgram:
    """Resolve labels and map references and produce loadable bytecode.

    `maps` maps map names to file descriptors; a map load whose name is missing raises
    LinkError. `fd_array` is what the program is loaded with: a BTF_ID load of a module's
    ksym holds the module's fd_array index in its high word, replaced here by the fd in
    that slot (the kernel wants the module BTF's fd there). Pure: no syscalls, the program
    is not modified.
    """
    maps = maps or {}
    offsets = program.slot_offsets()
    labels = program.labels
    parts: list[bytes] = []
    func_info: list[tuple[int, int]] = []
    line_info: list[tuple[int, int, int, int]] = []
    function_starts = {f.start: f for f in program.functions()}
    pending_line_for_function = False
    for index, insn in enumerate(program.insns):
        slot = offsets[index]
        if index in function_starts:
            fn = function_starts[index]
            if fn.btf_id is not None:
                func_info.append((slot, fn.btf_id))
            pending_line_for_function = True
        line = insn.meta.line
        if line is not None:
            # The kernel wants a line_info record at the first instruction of every function.
            line_info.append(
                (slot, line.file_name_off, line.line_off, (line.line << 10) | line.col)
            )
            pending_line_for_function = False
        elif pending_line_for_function and index in function_starts:
            borrowed = _first_line(program.insns, index, function_starts)
            if borrowed is not None:
                line_info.append(
                    (
                        slot,
                        borrowed.file_name_off,
                        borrowed.line_off,
                        (borrowed.line << 10) | borrowed.col,
                    )
                )
                pending_line_for_function = False
        try:
            if insn.opcode == LD_IMM64 and insn.src == PseudoSrc.BTF_ID and insn.imm >> 32:
                parts.append(_encode_module_btf_id(insn, fd_array))
                continue
            parts.append(_encode_one(program, index, insn, slot, offsets, labels, maps))
        except EncodeError as exc:
            raise LinkError(f"program {program.name}: instruction {index}: {exc}") from None
    if func_info and len(func_info) != len(function_starts):
        missing = [f.name for f in function_starts.values() if f.btf_id is None]
        raise LinkError(
            f"program {program.name}: functions {missing} have no BTF func_info while others do"
        )
    return EncodedProgram(b"".join(parts), tuple(func_info), tuple(line_info))


def _encode_module_btf_id(insn: Instruction, fd_array: Sequence[int]) -> bytes:
    index = (insn.imm >> 32) & 0xFFFFFFFF
    if not 0 < index < len(fd_array):
        raise EncodeError(f"ksym load names fd_array index {index} (a module's BTF), but the "
                          f"program's fd_array has {len(fd_array)} entries")
    return encode_instruction(insn, imm=insn.imm & 0xFFFFFFFF, imm_hi=fd_array[index])


def _first_line(insns: Sequence[Instruction], start: int, starts: Mapping[int, Function]):
    end = starts[start].end
    for insn in insns[start:end]:
        if insn.meta.line is not None:
            return insn.meta.line
    return None


def _encode_one(
    program: Program,
    index: int,
    insn: Instruction,
    slot: int,
    offsets: list[int],
    labels: Mapping[str, int],
    maps: Mapping[str, int],
) -> bytes:
    ref = insn.reference
    if ref is None:
        return encode_instruction(insn)
    if insn.is_map_load:
        if ref not in maps:
            raise EncodeError(f"map {ref!r} has no file descriptor")
        src = insn.src
        fd = maps[ref]
        if src in (PseudoSrc.MAP_FD, PseudoSrc.MAP_IDX):
            return encode_instruction(insn, imm=fd, imm_hi=0)
        return encode_instruction(insn, imm=fd, imm_hi=insn.imm)
    if ref not in labels:
        raise EncodeError(f"reference to undefined label {ref!r}")
    relative = offsets[labels[ref]] - (slot + 1)
    if insn.is_gotol or insn.is_pseudo_call or insn.is_func_load:
        if insn.is_func_load:
            return encode_instruction(insn, imm=relative, imm_hi=0)
        return encode_instruction(insn, imm=relative)
    if insn.is_branch:
        if not -0x8000 <= relative <= 0x7FFF:
            raise EncodeError(f"jump to {ref!r} spans {relative} slots, more than 16 bits allow")
        return encode_instruction(insn, off=relative)
    raise EncodeError(f"instruction with opcode {insn.opcode:#x} cannot carry reference {ref!r}")


def with_origins(program: Program) -> Program:
    """The program with each instruction's provenance set to its current index.

    Passes locate instructions (lookup sites) by provenance, which survives the insertion
    and removal of other instructions; call this on the program a pipeline starts from.
    """
    from .codec import origin_meta
    from .instruction import Meta

    insns = []
    for index, insn in enumerate(program.insns):
        meta = insn.meta
        if meta.line is None and meta.func_btf_id is None and meta.note is None:
            new_meta = origin_meta(index)
        else:
            new_meta = Meta(meta.line, meta.func_btf_id, index, meta.note)
        insns.append(insn.with_meta_object(new_meta))
    return Program(program.name, tuple(insns))


def index_by_origin(program: Program) -> dict[int, int]:
    """Provenance → current index, for instructions that have one."""
    return {insn.meta.origin: i for i, insn in enumerate(program.insns)
            if insn.meta.origin is not None}
