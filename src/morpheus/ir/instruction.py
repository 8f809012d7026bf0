"""The logical eBPF instruction.

An `Instruction` is one logical instruction: a 64-bit immediate load is one instruction two
slots wide. Jumps, calls to subprograms and map loads carry a `reference` (a label or a map
name) instead of a numeric offset or file descriptor; the instruction a jump lands on carries
a `label`. Offsets and fds are filled in only by `encode`, so passes insert and delete
instructions freely.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

from .opcodes import (
    CALL,
    CALL_HELPER,
    CALL_KFUNC,
    CALL_PSEUDO_CALL,
    CONDITIONAL_JUMPS,
    EXIT,
    LD_IMM64,
    PSEUDO_FUNC,
    SRC_X,
    AluOp,
    Class,
    JmpOp,
    Mode,
    PseudoSrc,
    Size,
)


class LineInfo(NamedTuple):
    """A .BTF.ext line_info record. Offsets point into the object's BTF string table,
    which is uploaded unchanged, so they stay valid for the kernel."""

    file_name_off: int
    line_off: int
    line: int
    col: int
    strings: StringTable | None = None

    @property
    def file(self) -> str:
        return self.strings.string(self.file_name_off) if self.strings is not None else ""

    @property
    def text(self) -> str:
        """The source line (clang stores it in BTF)."""
        return self.strings.string(self.line_off) if self.strings is not None else ""


class StringTable(Protocol):
    def string(self, offset: int) -> str: ...


class Meta(NamedTuple):
    """Per-instruction metadata; immutable, replaced as a whole (copy-on-write).

    `func_btf_id` is set on the first instruction of a function that has BTF func_info.
    `origin` is the index of the instruction in the program as it was read from the object
    (provenance through passes); `note` says which pass produced a synthesized instruction.
    """

    line: LineInfo | None = None
    func_btf_id: int | None = None
    origin: int | None = None
    note: str | None = None


EMPTY_META = Meta()

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


def s16(value: int) -> int:
    value &= 0xFFFF
    return value - 0x10000 if value & 0x8000 else value


def s32(value: int) -> int:
    value &= _U32
    return value - 0x100000000 if value & 0x80000000 else value


def s64(value: int) -> int:
    value &= _U64
    return value - 0x10000000000000000 if value & 0x8000000000000000 else value


_GOTOL = Class.JMP32 | JmpOp.JA
_ATOMIC = Class.STX | Mode.ATOMIC
_JA_OPCODES = frozenset({Class.JMP | JmpOp.JA, _GOTOL})
_MAP_PSEUDO = frozenset(
    {PseudoSrc.MAP_FD, PseudoSrc.MAP_VALUE, PseudoSrc.MAP_IDX, PseudoSrc.MAP_IDX_VALUE}
)
_SIZE_OF = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}


def _table(predicate: Callable[[int], bool]) -> tuple[bool, ...]:
    return tuple(predicate(op) for op in range(256))


_IS_COND = _table(
    lambda op: (op & 0x07) in (Class.JMP, Class.JMP32) and (op & 0xF0) in CONDITIONAL_JUMPS
)
_IS_BRANCH = _table(lambda op: _IS_COND[op] or op in _JA_OPCODES)
_IS_LOAD = _table(lambda op: (op & 0x07) == Class.LDX and (op & 0xE0) in (Mode.MEM, Mode.MEMSX))
_IS_STORE = _table(lambda op: (op & 0x07) in (Class.ST, Class.STX) and (op & 0xE0) == Mode.MEM)


class Instruction(NamedTuple):
    """One logical eBPF instruction (immutable; a NamedTuple because passes create millions
    and frozen dataclasses are four times slower to construct).

    For a 64-bit immediate load without a reference, `imm` is the full 64-bit value (signed).
    With a map reference (src MAP_FD / MAP_VALUE), `imm` is the offset into the map value and
    the map fd is filled in at encode time. Jumps and pseudo calls with a reference get their
    offset at encode time; without one, `off` (or `imm` for calls and `gotol`) is used as is.
    """

    opcode: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    reference: str | None = None
    label: str | None = None
    meta: Meta = EMPTY_META

    # --- structure -------------------------------------------------------------------------
    # Predicates index 256-entry tables built once from the opcode byte: they run for every
    # instruction in every pass, so they must not construct enums.

    @property
    def cls(self) -> Class:
        return Class(self.opcode & 0x07)

    @property
    def width(self) -> int:
        """Number of 8-byte slots the instruction occupies."""
        return 2 if self.opcode == LD_IMM64 else 1

    @property
    def size(self) -> Size:
        return Size(self.opcode & 0x18)

    @property
    def size_bytes(self) -> int:
        return _SIZE_OF[self.opcode & 0x18]

    @property
    def mode(self) -> Mode:
        return Mode(self.opcode & 0xE0)

    @property
    def uses_reg_source(self) -> bool:
        return bool(self.opcode & SRC_X)

    @property
    def alu_op(self) -> AluOp:
        return AluOp(self.opcode & 0xF0)

    @property
    def jmp_op(self) -> JmpOp:
        return JmpOp(self.opcode & 0xF0)

    @property
    def is_alu(self) -> bool:
        return (self.opcode & 0x07) in (0x04, 0x07)

    @property
    def is_alu64(self) -> bool:
        return (self.opcode & 0x07) == 0x07

    @property
    def is_jump_class(self) -> bool:
        return (self.opcode & 0x07) in (0x05, 0x06)

    @property
    def is_ld_imm64(self) -> bool:
        return self.opcode == LD_IMM64

    @property
    def is_call(self) -> bool:
        return self.opcode == CALL

    @property
    def is_helper_call(self) -> bool:
        return self.opcode == CALL and self.src == CALL_HELPER

    @property
    def is_pseudo_call(self) -> bool:
        return self.opcode == CALL and self.src == CALL_PSEUDO_CALL

    @property
    def is_kfunc_call(self) -> bool:
        return self.opcode == CALL and self.src == CALL_KFUNC

    @property
    def is_exit(self) -> bool:
        return self.opcode == EXIT

    @property
    def is_unconditional_jump(self) -> bool:
        return self.opcode in _JA_OPCODES

    @property
    def is_conditional_jump(self) -> bool:
        return _IS_COND[self.opcode]

    @property
    def is_branch(self) -> bool:
        """A jump to another instruction of the same function (not a call or exit)."""
        return _IS_BRANCH[self.opcode]

    @property
    def is_load(self) -> bool:
        return _IS_LOAD[self.opcode]

    @property
    def is_store(self) -> bool:
        return _IS_STORE[self.opcode]

    @property
    def is_atomic(self) -> bool:
        return (self.opcode & 0xE7) == _ATOMIC

    @property
    def is_map_load(self) -> bool:
        return self.opcode == LD_IMM64 and self.src in _MAP_PSEUDO

    @property
    def is_func_load(self) -> bool:
        return self.opcode == LD_IMM64 and self.src == PSEUDO_FUNC

    @property
    def is_gotol(self) -> bool:
        return self.opcode == _GOTOL

    @property
    def constant(self) -> int:
        """The immediate as a value: 64-bit for ld_imm64, sign-extended 32-bit otherwise."""
        return self.imm

    # --- rewriting -------------------------------------------------------------------------

    # Direct construction: dataclasses.replace is several times slower and these run for
    # every instruction of every object read.
    def with_label(self, label: str | None) -> Instruction:
        return Instruction(
            self.opcode, self.dst, self.src, self.off, self.imm, self.reference, label, self.meta
        )

    def with_reference(self, reference: str | None) -> Instruction:
        return Instruction(
            self.opcode, self.dst, self.src, self.off, self.imm, reference, self.label, self.meta
        )

    def with_target(self, reference: str | None, label: str | None) -> Instruction:
        return Instruction(
            self.opcode, self.dst, self.src, self.off, self.imm, reference, label, self.meta
        )

    def with_meta_object(self, meta: Meta) -> Instruction:
        return Instruction(
            self.opcode, self.dst, self.src, self.off, self.imm, self.reference, self.label, meta
        )

    def with_meta(self, **changes: object) -> Instruction:
        return self._replace(meta=self.meta._replace(**changes))  # type: ignore[arg-type]

    def without_label(self) -> Instruction:
        return self if self.label is None else self._replace(label=None)
