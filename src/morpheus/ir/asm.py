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

from enum import IntEnum

from .helpers import HELPER_IDS
from .instruction import EMPTY_META, Instruction, Meta
from .opcodes import (
    BYTES_SIZE,
    LD_IMM64,
    AluOp,
    AtomicOp,
    CallSrc,
    Class,
    JmpOp,
    Mode,
    PseudoSrc,
    Source,
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


def _meta(note: str | None) -> Meta:
    return EMPTY_META if note is None else Meta(note=note)


def _alu(
    cls: Class, op: AluOp, dst: Reg, operand: Operand, label: str | None, note: str | None
) -> Instruction:
    if isinstance(operand, Reg):
        return Instruction(cls | op | Source.X, dst, operand, 0, 0, label=label, meta=_meta(note))
    if not -0x80000000 <= operand <= 0xFFFFFFFF:
        raise ValueError(f"immediate {operand:#x} does not fit in 32 bits; use ld_imm64")
    if operand > 0x7FFFFFFF:
        operand -= 0x100000000
    return Instruction(cls | op | Source.K, dst, 0, 0, operand, label=label, meta=_meta(note))


def alu64(
    op: AluOp, dst: Reg, operand: Operand, *, label: str | None = None, note: str | None = None
) -> Instruction:
    return _alu(Class.ALU64, op, dst, operand, label, note)


def alu32(
    op: AluOp, dst: Reg, operand: Operand, *, label: str | None = None, note: str | None = None
) -> Instruction:
    return _alu(Class.ALU, op, dst, operand, label, note)


def mov64(dst: Reg, operand: Operand, **kw: str | None) -> Instruction:
    return alu64(AluOp.MOV, dst, operand, **kw)  # type: ignore[arg-type]


def mov32(dst: Reg, operand: Operand, **kw: str | None) -> Instruction:
    return alu32(AluOp.MOV, dst, operand, **kw)  # type: ignore[arg-type]


def add64(dst: Reg, operand: Operand, **kw: str | None) -> Instruction:
    return alu64(AluOp.ADD, dst, operand, **kw)  # type: ignore[arg-type]


def and64(dst: Reg, operand: Operand, **kw: str | None) -> Instruction:
    return alu64(AluOp.AND, dst, operand, **kw)  # type: ignore[arg-type]


def lsh64(dst: Reg, operand: Operand, **kw: str | None) -> Instruction:
    return alu64(AluOp.LSH, dst, operand, **kw)  # type: ignore[arg-type]


def rsh64(dst: Reg, operand: Operand, **kw: str | None) -> Instruction:
    return alu64(AluOp.RSH, dst, operand, **kw)  # type: ignore[arg-type]


def xor64(dst: Reg, operand: Operand, **kw: str | None) -> Instruction:
    return alu64(AluOp.XOR, dst, operand, **kw)  # type: ignore[arg-type]


def ld_imm64(
    dst: Reg, value: int, *, label: str | None = None, note: str | None = None
) -> Instruction:
    if not -(1 << 63) <= value < (1 << 64):
        raise ValueError(f"value {value:#x} does not fit in 64 bits")
    if value >= 1 << 63:
        value -= 1 << 64
    return Instruction(LD_IMM64, dst, 0, 0, value, label=label, meta=_meta(note))


def ld_map_fd(
    dst: Reg, map_name: str, *, label: str | None = None, note: str | None = None
) -> Instruction:
    return Instruction(
        LD_IMM64, dst, PseudoSrc.MAP_FD, 0, 0, reference=map_name, label=label, meta=_meta(note)
    )


def ld_map_value(
    dst: Reg, map_name: str, offset: int = 0, *, label: str | None = None, note: str | None = None
) -> Instruction:
    """Direct value access: dst = &value_of(map_name)[0] + offset (single-entry arrays)."""
    return Instruction(
        LD_IMM64,
        dst,
        PseudoSrc.MAP_VALUE,
        0,
        offset,
        reference=map_name,
        label=label,
        meta=_meta(note),
    )


def ldx(
    size: int, dst: Reg, src: Reg, off: int, *, label: str | None = None, note: str | None = None
) -> Instruction:
    """dst = *(u<size*8> *)(src + off)."""
    return Instruction(
        Class.LDX | BYTES_SIZE[size] | Mode.MEM, dst, src, off, 0, label=label, meta=_meta(note)
    )


def stx(
    size: int, dst: Reg, off: int, src: Reg, *, label: str | None = None, note: str | None = None
) -> Instruction:
    """*(u<size*8> *)(dst + off) = src."""
    return Instruction(
        Class.STX | BYTES_SIZE[size] | Mode.MEM, dst, src, off, 0, label=label, meta=_meta(note)
    )


def st(
    size: int, dst: Reg, off: int, imm: int, *, label: str | None = None, note: str | None = None
) -> Instruction:
    """*(u<size*8> *)(dst + off) = imm."""
    return Instruction(
        Class.ST | BYTES_SIZE[size] | Mode.MEM, dst, 0, off, imm, label=label, meta=_meta(note)
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
        Class.STX | BYTES_SIZE[size] | Mode.ATOMIC,
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
    cls = Class.JMP if wide else Class.JMP32
    if isinstance(operand, Reg):
        return Instruction(
            cls | op | Source.X, dst, operand, 0, 0, reference=target, label=label, meta=_meta(note)
        )
    if not -0x80000000 <= operand <= 0xFFFFFFFF:
        raise ValueError(f"immediate {operand:#x} does not fit in 32 bits")
    if operand > 0x7FFFFFFF:
        operand -= 0x100000000
    return Instruction(
        cls | op | Source.K, dst, 0, 0, operand, reference=target, label=label, meta=_meta(note)
    )


def jeq(dst: Reg, operand: Operand, target: str, **kw: object) -> Instruction:
    return jmp(JmpOp.JEQ, dst, operand, target, **kw)  # type: ignore[arg-type]


def jne(dst: Reg, operand: Operand, target: str, **kw: object) -> Instruction:
    return jmp(JmpOp.JNE, dst, operand, target, **kw)  # type: ignore[arg-type]


def jgt(dst: Reg, operand: Operand, target: str, **kw: object) -> Instruction:
    return jmp(JmpOp.JGT, dst, operand, target, **kw)  # type: ignore[arg-type]


def jlt(dst: Reg, operand: Operand, target: str, **kw: object) -> Instruction:
    return jmp(JmpOp.JLT, dst, operand, target, **kw)  # type: ignore[arg-type]


def ja(target: str, *, label: str | None = None, note: str | None = None) -> Instruction:
    return Instruction(Class.JMP | JmpOp.JA, reference=target, label=label, meta=_meta(note))


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
        Class.JMP | JmpOp.CALL, 0, CallSrc.HELPER, 0, helper, label=label, meta=_meta(note)
    )


def call(function: str, *, label: str | None = None, note: str | None = None) -> Instruction:
    """BPF-to-BPF call of the function labelled `function`."""
    return Instruction(
        Class.JMP | JmpOp.CALL,
        0,
        CallSrc.PSEUDO_CALL,
        0,
        0,
        reference=function,
        label=label,
        meta=_meta(note),
    )


def exit_(*, label: str | None = None, note: str | None = None) -> Instruction:
    return Instruction(Class.JMP | JmpOp.EXIT, label=label, meta=_meta(note))
