"""Hypothesis strategies for valid eBPF instructions."""

from __future__ import annotations

from hypothesis import strategies as st

from morpheus.ir import Instruction
from morpheus.ir.opcodes import (
    CONDITIONAL_JUMPS,
    LD_IMM64,
    AluOp,
    AtomicOp,
    Class,
    JmpOp,
    Mode,
    Size,
    Source,
)

regs = st.integers(0, 10)
imm32 = st.integers(-(2**31), 2**31 - 1)
off16 = st.integers(-(2**15), 2**15 - 1)
imm64 = st.integers(-(2**63), 2**63 - 1)
sizes = st.sampled_from(list(Size))
binary_alu = [op for op in AluOp if op not in (AluOp.NEG, AluOp.END)]


@st.composite
def alu(draw: st.DrawFn, *, v4: bool = False) -> Instruction:
    cls = draw(st.sampled_from([Class.ALU, Class.ALU64]))
    kind = draw(st.sampled_from(["binary", "neg", "end"]))
    dst = draw(regs)
    if kind == "neg":
        return Instruction(cls | AluOp.NEG, dst)
    if kind == "end":
        src = draw(st.sampled_from([Source.K, Source.X]))
        return Instruction(
            Class.ALU | AluOp.END | src, dst, 0, 0, draw(st.sampled_from([16, 32, 64]))
        )
    op = draw(st.sampled_from(binary_alu))
    src = draw(st.sampled_from([Source.K, Source.X]))
    off = 0
    if v4 and op in (AluOp.DIV, AluOp.MOD):
        off = draw(st.sampled_from([0, 1]))
    if v4 and op == AluOp.MOV and src == Source.X:
        off = draw(st.sampled_from([0, 8, 16, 32]))
    if src == Source.X:
        return Instruction(cls | op | src, dst, draw(regs), off, 0)
    return Instruction(cls | op | src, dst, 0, off, draw(imm32))


@st.composite
def jump(draw: st.DrawFn, *, jset: bool = True) -> Instruction:
    kind = draw(st.sampled_from(["cond", "cond32", "ja", "call", "pcall", "exit"]))
    if kind == "exit":
        return Instruction(Class.JMP | JmpOp.EXIT)
    if kind == "ja":
        return Instruction(Class.JMP | JmpOp.JA, 0, 0, draw(off16), 0)
    if kind == "call":
        return Instruction(Class.JMP | JmpOp.CALL, 0, 0, 0, draw(st.integers(1, 211)))
    if kind == "pcall":
        return Instruction(Class.JMP | JmpOp.CALL, 0, 1, 0, draw(imm32))
    cls = Class.JMP if kind == "cond" else Class.JMP32
    # LLVM 16 has no JSET (`if r1 & r2 goto`); the kernel has.
    op = draw(st.sampled_from(sorted(CONDITIONAL_JUMPS - ({JmpOp.JSET} if not jset else set()))))
    if draw(st.booleans()):
        return Instruction(cls | op | Source.X, draw(regs), draw(regs), draw(off16), 0)
    return Instruction(cls | op | Source.K, draw(regs), 0, draw(off16), draw(imm32))


@st.composite
def memory(draw: st.DrawFn, *, store_imm: bool = True) -> Instruction:
    # LLVM 16 has no BPF_ST (store immediate) instructions; the kernel does.
    kinds = ["ldx", "stx", "atomic", "abs", "ind"] + (["st"] if store_imm else [])
    kind = draw(st.sampled_from(kinds))
    size = draw(sizes)
    if kind == "ldx":
        return Instruction(Class.LDX | size | Mode.MEM, draw(regs), draw(regs), draw(off16), 0)
    if kind == "st":
        return Instruction(Class.ST | size | Mode.MEM, draw(regs), 0, draw(off16), draw(imm32))
    if kind == "stx":
        return Instruction(Class.STX | size | Mode.MEM, draw(regs), draw(regs), draw(off16), 0)
    if kind in ("abs", "ind"):
        small = draw(st.sampled_from([Size.B, Size.H, Size.W]))
        mode = Mode.ABS if kind == "abs" else Mode.IND
        src = draw(regs) if kind == "ind" else 0
        return Instruction(Class.LD | small | mode, 0, src, 0, draw(imm32))
    width = draw(st.sampled_from([Size.W, Size.DW]))
    if width == Size.W:
        # LLVM 16 knows only the locked add (with or without fetch) on 32 bits.
        op = draw(st.sampled_from([AtomicOp.ADD, AtomicOp.ADD | AtomicOp.FETCH]))
    else:
        op = draw(
            st.sampled_from(
                [
                    AtomicOp.ADD,
                    AtomicOp.OR,
                    AtomicOp.AND,
                    AtomicOp.XOR,
                    AtomicOp.ADD | AtomicOp.FETCH,
                    AtomicOp.OR | AtomicOp.FETCH,
                    AtomicOp.AND | AtomicOp.FETCH,
                    AtomicOp.XOR | AtomicOp.FETCH,
                    AtomicOp.XCHG,
                    AtomicOp.CMPXCHG,
                ]
            )
        )
    return Instruction(
        Class.STX | width | Mode.ATOMIC, draw(regs), draw(regs), draw(off16), int(op)
    )


@st.composite
def ld_imm64(draw: st.DrawFn) -> Instruction:
    return Instruction(LD_IMM64, draw(regs), 0, 0, draw(imm64))


def llvm16_instructions() -> st.SearchStrategy[Instruction]:
    """Instructions LLVM 16 decodes exactly as the kernel defines them."""
    return st.one_of(alu(), jump(jset=False), memory(store_imm=False), ld_imm64())


def all_instructions() -> st.SearchStrategy[Instruction]:
    """Every valid form, including the v4 sign-extension forms and gotol."""
    gotol = st.builds(lambda imm: Instruction(Class.JMP32 | JmpOp.JA, 0, 0, 0, imm), imm32)
    ldsx = st.builds(
        lambda size, d, s, o: Instruction(Class.LDX | size | Mode.MEMSX, d, s, o, 0),
        st.sampled_from([Size.B, Size.H, Size.W]),
        regs,
        regs,
        off16,
    )
    bswap = st.builds(
        lambda d, b: Instruction(Class.ALU64 | AluOp.END, d, 0, 0, b),
        regs,
        st.sampled_from([16, 32, 64]),
    )
    return st.one_of(alu(v4=True), jump(), memory(), ld_imm64(), gotol, ldsx, bswap)
