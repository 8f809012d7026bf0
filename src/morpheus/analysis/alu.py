"""Exact eBPF arithmetic and comparisons on constants (the kernel's semantics).

Values are Python ints holding the 64-bit register contents as unsigned numbers. 32-bit
operations work on the low half and zero-extend, as the ISA specifies.
"""

from __future__ import annotations

from ..ir.opcodes import AluOp, JmpOp

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1


def u64(value: int) -> int:
    return value & M64


def signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def alu(op: int, dst: int, src: int, *, wide: bool, off: int = 0) -> int:
    """Result of `dst op= src` (`off` distinguishes sdiv/smod and movsx). Inputs are
    register contents; for immediates pass the sign-extended 64-bit value."""
    bits = 64 if wide else 32
    mask = M64 if wide else M32
    a, b = dst & mask, src & mask
    if op == AluOp.ADD:
        r = a + b
    elif op == AluOp.SUB:
        r = a - b
    elif op == AluOp.MUL:
        r = a * b
    elif op == AluOp.DIV:
        if off == 1:
            sa, sb = signed(a, bits), signed(b, bits)
            r = 0 if sb == 0 else _trunc_div(sa, sb)
        else:
            r = 0 if b == 0 else a // b
    elif op == AluOp.MOD:
        if off == 1:
            sa, sb = signed(a, bits), signed(b, bits)
            r = a if sb == 0 else sa - sb * _trunc_div(sa, sb)
        else:
            r = a if b == 0 else a % b
    elif op == AluOp.OR:
        r = a | b
    elif op == AluOp.AND:
        r = a & b
    elif op == AluOp.XOR:
        r = a ^ b
    elif op == AluOp.LSH:
        r = a << (b & (bits - 1))
    elif op == AluOp.RSH:
        r = a >> (b & (bits - 1))
    elif op == AluOp.ARSH:
        r = signed(a, bits) >> (b & (bits - 1))
    elif op == AluOp.MOV:
        r = signed(src, off) if off in (8, 16, 32) else b
    elif op == AluOp.NEG:
        r = -a
    else:
        raise ValueError(f"no constant semantics for ALU operation {op:#x}")
    return r & mask


def _trunc_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def endian(value: int, bits: int, *, to_be: bool, bswap: bool = False) -> int:
    """BPF_END: to little endian is a truncation on a little-endian machine; to big endian
    (and the unconditional bswap of ALU64) reverses the bytes of the low `bits`."""
    width = bits // 8
    low = value & ((1 << bits) - 1)
    if to_be or bswap:
        return int.from_bytes(low.to_bytes(width, "little"), "big")
    return low


def compare(op: int, a: int, b: int, *, wide: bool) -> bool:
    """Whether a conditional jump with operation `op` is taken."""
    bits = 64 if wide else 32
    mask = M64 if wide else M32
    a &= mask
    b &= mask
    if op == JmpOp.JEQ:
        return a == b
    if op == JmpOp.JNE:
        return a != b
    if op == JmpOp.JGT:
        return a > b
    if op == JmpOp.JGE:
        return a >= b
    if op == JmpOp.JLT:
        return a < b
    if op == JmpOp.JLE:
        return a <= b
    if op == JmpOp.JSET:
        return bool(a & b)
    sa, sb = signed(a, bits), signed(b, bits)
    if op == JmpOp.JSGT:
        return sa > sb
    if op == JmpOp.JSGE:
        return sa >= sb
    if op == JmpOp.JSLT:
        return sa < sb
    if op == JmpOp.JSLE:
        return sa <= sb
    raise ValueError(f"not a conditional jump: {op:#x}")
