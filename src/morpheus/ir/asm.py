"""A small builder so that passes write instruction snippets readably.

    from morpheus.ir import asm
    from morpheus.ir.asm import R0, R1, R2

    snippet = [
        asm.ldx(4, R2, R1, 0),
        asm.jne(R2, 0x0A000001, "miss"),
        asm.mov64(R0, 2),
        asm.exit_(),
        asm.mov64(R0, 1, label="miss"),
    ]

Registers are `Reg` values; a plain int is an immediate. Jump targets are labels.
"""

from __future__ import annotations

import functools
from enum import IntEnum

from .helpers import HELPER_IDS
from .instruction import EMPTY_META, Instruction, Meta
from .opcodes import (
    BYTES_SIZE,
    C_ALU,
    C_ALU64,
    C_JMP,
    C_JMP32,
    C_LDX,
    C_ST,
    C_STX,
    CALL_HELPER,
    CALL_PSEUDO_CALL,
    J_CALL,
    J_EXIT,
    J_JA,
    J_JEQ,
    J_JGT,
    J_JLT,
    J_JNE,
    LD_IMM64,
    M_ATOMIC,
    M_MEM,
    OP_ADD,
    OP_AND,
    OP_LSH,
    OP_MOV,
    OP_RSH,
    OP_XOR,
    PSEUDO_MAP_FD,
    PSEUDO_MAP_VALUE,
    SRC_K,
    SRC_X,
    AluOp,
    AtomicOp,
    Class,
    JmpOp,
)


class Reg(IntEnum):
    R0 = 0
    R1 = 1
    R2 = 2
    R3 = 3
    R4 = 4
    R5 = 5
    R6 = 6
    R7 = 7
    R8 = 8
    R9 = 9
    R10 = 10


R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = Reg
FP = R10

Operand = Reg | int




@functools.lru_cache(maxsize=4096)
def _note_meta(note: str) -> Meta:
    return Meta(note=note)


def _meta(note: str | None) -> Meta:
    # Notes repeat (one per kind of snippet): Meta is immutable, so equal notes share one.
    return EMPTY_META if note is None else _note_meta(note)


def _alu(
    cls: Class, op: AluOp, dst: Reg, operand: Operand, label: str | None, note: str | None
) -> Instruction:
    if isinstance(operand, Reg):
        return Instruction(cls | op | SRC_X, dst, operand, 0, 0, None, label, _meta(note))
    if not -0x80000000 <= operand <= 0xFFFFFFFF:
        raise ValueError(f"immediate {operand:#x} does not fit in 32 bits; use ld_imm64")
    if operand > 0x7FFFFFFF:
        operand -= 0x100000000
    return Instruction(cls | op | SRC_K, dst, 0, 0, operand, None, label, _meta(note))


def alu64(
    op: AluOp, dst: Reg, operand: Operand, *, label: str | None = None, note: str | None = None
) -> Instruction:
    return _alu(C_ALU64, op, dst, operand, label, note)


def alu32(
    op: AluOp, dst: Reg, operand: Operand, *, label: str | None = None, note: str | None = None
) -> Instruction:
    return _alu(C_ALU, op, dst, operand, label, note)


def mov64(dst: Reg, operand: Operand, **kw: str | None) -> Instruction:
    return alu64(OP_MOV, dst, operand, **kw)  # type: ignore[arg-type]


def mov32(dst: Reg, operand: Operand, **kw: str | None) -> Instruction:
    return alu32(OP_MOV, dst, operand, **kw)  # type: ignore[arg-type]


def add64(dst: Reg, operand: Operand, **kw: str | None) -> Instruction:
    return alu64(OP_ADD, dst, operand, **kw)  # type: ignore[arg-type]


def and64(dst: Reg, operand: Operand, **kw: str | None) -> Instruction:
    return alu64(OP_AND, dst, operand, **kw)  # type: ignore[arg-type]


def lsh64(dst: Reg, operand: Operand, **kw: str | None) -> Instruction:
    return alu64(OP_LSH, dst, operand, **kw)  # type: ignore[arg-type]


def rsh64(dst: Reg, operand: Operand, **kw: str | None) -> Instruction:
    return alu64(OP_RSH, dst, operand, **kw)  # type: ignore[arg-type]


def xor64(dst: Reg, operand: Operand, **kw: str | None) -> Instruction:
    return alu64(OP_XOR, dst, operand, **kw)  # type: ignore[arg-type]


def ld_imm64(
    dst: Reg, value: int, *, label: str | None = None, note: str | None = None
) -> Instruction:
    if not -(1 << 63) <= value < (1 << 64):
        raise ValueError(f"value {value:#x} does not fit in 64 bits")
    if value >= 1 << 63:
        value -= 1 << 64
    return Instruction(LD_IMM64, dst, 0, 0, value, None, label, _meta(note))


def ld_map_fd(
    dst: Reg, map_name: str, *, label: str | None = None, note: str | None = None
) -> Instruction:
    return Instruction(
        LD_IMM64, dst, PSEUDO_MAP_FD, 0, 0, map_name, label, _meta(note)
    )


def ld_map_value(
    dst: Reg, map_name: str, offset: int = 0, *, label: str | None = None, note: str | None = None
) -> Instruction:
    """Direct value access: dst = &value_of(map_name)[0] + offset (single-entry arrays)."""
    return Instruction(
        LD_IMM64,
        dst,
        PSEUDO_MAP_VALUE,
        0,
        offset,
        map_name,
        label,
        _meta(note),
    )


def ldx(
    size: int, dst: Reg, src: Reg, off: int, *, label: str | None = None, note: str | None = None
) -> Instruction:
    """dst = *(u<size*8> *)(src + off)."""
    return Instruction(
        C_LDX | BYTES_SIZE[size] | M_MEM, dst, src, off, 0, None, label, _meta(note)
    )


def stx(
    size: int, dst: Reg, off: int, src: Reg, *, label: str | None = None, note: str | None = None
) -> Instruction:
    """*(u<size*8> *)(dst + off) = src."""
    return Instruction(
        C_STX | BYTES_SIZE[size] | M_MEM, dst, src, off, 0, None, label, _meta(note)
    )


def st(
    size: int, dst: Reg, off: int, imm: int, *, label: str | None = None, note: str | None = None
) -> Instruction:
    """*(u<size*8> *)(dst + off) = imm."""
    return Instruction(
        C_ST | BYTES_SIZE[size] | M_MEM, dst, 0, off, imm, None, label, _meta(note)
    )


def atomic(
    size: int,
    op: AtomicOp,
    dst: Reg,
    off: int,
    src: Reg,
    *,
    label: str | None = None,
    note: str | None = None,
) -> Instruction:
    """Atomic read-modify-write of *(dst + off) with src (size 4 or 8)."""
    return Instruction(
        C_STX | BYTES_SIZE[size] | M_ATOMIC,
        dst,
        src,
        off,
        int(op),
        label=label,
        meta=_meta(note),
    )


def jmp(
    op: JmpOp,
    dst: Reg,
    operand: Operand,
    target: str,
    *,
    wide: bool = True,
    label: str | None = None,
    note: str | None = None,
) -> Instruction:
    cls = C_JMP if wide else C_JMP32
    if isinstance(operand, Reg):
        return Instruction(
            cls | op | SRC_X, dst, operand, 0, 0, target, label, _meta(note)
        )
    if not -0x80000000 <= operand <= 0xFFFFFFFF:
        raise ValueError(f"immediate {operand:#x} does not fit in 32 bits")
    if operand > 0x7FFFFFFF:
        operand -= 0x100000000
    return Instruction(
        cls | op | SRC_K, dst, 0, 0, operand, target, label, _meta(note)
    )


def jeq(dst: Reg, operand: Operand, target: str, **kw: object) -> Instruction:
    return jmp(J_JEQ, dst, operand, target, **kw)  # type: ignore[arg-type]


def jne(dst: Reg, operand: Operand, target: str, **kw: object) -> Instruction:
    return jmp(J_JNE, dst, operand, target, **kw)  # type: ignore[arg-type]


def jgt(dst: Reg, operand: Operand, target: str, **kw: object) -> Instruction:
    return jmp(J_JGT, dst, operand, target, **kw)  # type: ignore[arg-type]


def jlt(dst: Reg, operand: Operand, target: str, **kw: object) -> Instruction:
    return jmp(J_JLT, dst, operand, target, **kw)  # type: ignore[arg-type]


def ja(target: str, *, label: str | None = None, note: str | None = None) -> Instruction:
    return Instruction(C_JMP | J_JA, 0, 0, 0, 0, target, label, _meta(note))


def call_helper(
    helper: int | str, *, label: str | None = None, note: str | None = None
) -> Instruction:
    """Call a helper by id or by name (`"map_lookup_elem"` or `"bpf_map_lookup_elem"`)."""
    if isinstance(helper, str):
        name = helper.removeprefix("bpf_")
        if name not in HELPER_IDS:
            raise ValueError(f"unknown helper {helper!r}")
        helper = HELPER_IDS[name]
    return Instruction(
        C_JMP | J_CALL, 0, CALL_HELPER, 0, helper, None, label, _meta(note)
    )


def call(function: str, *, label: str | None = None, note: str | None = None) -> Instruction:
    """BPF-to-BPF call of the function labelled `function`."""
    return Instruction(
        C_JMP | J_CALL,
        0,
        CALL_PSEUDO_CALL,
        0,
        0,
        reference=function,
        label=label,
        meta=_meta(note),
    )


def exit_(*, label: str | None = None, note: str | None = None) -> Instruction:
    return Instruction(C_JMP | J_EXIT, 0, 0, 0, 0, None, label, _meta(note))
