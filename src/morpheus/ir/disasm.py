"""Disassembler: LLVM's BPF assembly syntax, in two flavours.

`format_llvm` prints exactly what `llvm-objdump-16 -d` prints for an instruction (raw offsets,
hex immediates, no ALU32 register names on loads and stores). `format_symbolic` prints the same
syntax with labels, map names and helper names instead of numbers, for humans and golden tests.
"""

from __future__ import annotations

from collections.abc import Mapping

from .helpers import helper_name
from .instruction import Instruction, s32
from .opcodes import (
    AluOp,
    AtomicOp,
    Class,
    JmpOp,
    Mode,
    PseudoSrc,
    Size,
)
from .program import Program

_ALU_SYMBOL = {
    AluOp.ADD: "+=",
    AluOp.SUB: "-=",
    AluOp.MUL: "*=",
    AluOp.DIV: "/=",
    AluOp.OR: "|=",
    AluOp.AND: "&=",
    AluOp.LSH: "<<=",
    AluOp.RSH: ">>=",
    AluOp.MOD: "%=",
    AluOp.XOR: "^=",
    AluOp.MOV: "=",
    AluOp.ARSH: "s>>=",
}

_JMP_SYMBOL = {
    JmpOp.JEQ: "==",
    JmpOp.JGT: ">",
    JmpOp.JGE: ">=",
    JmpOp.JSET: "&",
    JmpOp.JNE: "!=",
    JmpOp.JSGT: "s>",
    JmpOp.JSGE: "s>=",
    JmpOp.JLT: "<",
    JmpOp.JLE: "<=",
    JmpOp.JSLT: "s<",
    JmpOp.JSLE: "s<=",
}

_SIZE_NAME = {Size.B: "u8", Size.H: "u16", Size.W: "u32", Size.DW: "u64"}
_SIGNED_SIZE_NAME = {Size.B: "s8", Size.H: "s16", Size.W: "s32", Size.DW: "s64"}

_ATOMIC_SYMBOL = {AtomicOp.ADD: "+=", AtomicOp.OR: "|=", AtomicOp.AND: "&=", AtomicOp.XOR: "^="}
_ATOMIC_FETCH_NAME = {
    AtomicOp.ADD: "atomic_fetch_add",
    AtomicOp.OR: "atomic_fetch_or",
    AtomicOp.AND: "atomic_fetch_and",
    AtomicOp.XOR: "atomic_fetch_xor",
}


class UnknownInstruction(ValueError):
    pass


def _hex(value: int) -> str:
    return f"-{-value:#x}" if value < 0 else f"{value:#x}"


def _addr(base: int, off: int) -> str:
    return f"(r{base} - {-off:#x})" if off < 0 else f"(r{base} + {off:#x})"


def _rel(off: int) -> str:
    return f"-{-off:#x}" if off < 0 else f"+{off:#x}"


def format_llvm(insn: Instruction) -> str:
    """The instruction as llvm-objdump-16 prints it (without address or symbol suffix).

    Instructions LLVM 16 does not know (the v4 sign-extension and byte-swap forms, gotol,
    load-acquire/store-release) are printed in LLVM 18's syntax.
    """
    return _format(insn, symbolic=False, maps=None)


def format_symbolic(insn: Instruction) -> str:
    """LLVM syntax with labels, map names and helper names (`goto L5`, `call bpf_tail_call`)."""
    return _format(insn, symbolic=True, maps=None)


def _format(insn: Instruction, *, symbolic: bool, maps: Mapping[int, str] | None) -> str:
    cls = insn.cls
    if cls in (Class.ALU, Class.ALU64):
        return _format_alu(insn)
    if cls in (Class.JMP, Class.JMP32):
        return _format_jump(insn, symbolic)
    if cls == Class.LD:
        return _format_ld(insn, symbolic)
    if cls == Class.LDX:
        if insn.mode == Mode.MEM:
            return f"r{insn.dst} = *({_SIZE_NAME[insn.size]} *){_addr(insn.src, insn.off)}"
        if insn.mode == Mode.MEMSX:
            return f"r{insn.dst} = *({_SIGNED_SIZE_NAME[insn.size]} *){_addr(insn.src, insn.off)}"
        raise UnknownInstruction(f"unknown load mode in opcode {insn.opcode:#x}")
    if cls == Class.ST:
        if insn.mode != Mode.MEM:
            raise UnknownInstruction(f"unknown store mode in opcode {insn.opcode:#x}")
        return f"*({_SIZE_NAME[insn.size]} *){_addr(insn.dst, insn.off)} = {_hex(insn.imm)}"
    # STX
    if insn.mode == Mode.MEM:
        return f"*({_SIZE_NAME[insn.size]} *){_addr(insn.dst, insn.off)} = r{insn.src}"
    if insn.mode == Mode.ATOMIC:
        return _format_atomic(insn, symbolic)
    raise UnknownInstruction(f"unknown store mode in opcode {insn.opcode:#x}")


def _format_alu(insn: Instruction) -> str:
    wide = insn.cls == Class.ALU64
    r = "r" if wide else "w"
    op = insn.alu_op
    dst = f"{r}{insn.dst}"
    if op == AluOp.NEG:
        return f"{dst} = -{dst}"
    if op == AluOp.END:
        if wide:
            return f"r{insn.dst} = bswap{insn.imm} r{insn.dst}"
        kind = "be" if insn.uses_reg_source else "le"
        return f"r{insn.dst} = {kind}{insn.imm} r{insn.dst}"
    if op not in _ALU_SYMBOL:
        raise UnknownInstruction(f"unknown ALU operation in opcode {insn.opcode:#x}")
    if op == AluOp.MOV and insn.off in (8, 16, 32) and insn.uses_reg_source:
        return f"{dst} = (s{insn.off}){r}{insn.src}"
    symbol = _ALU_SYMBOL[op]
    if op in (AluOp.DIV, AluOp.MOD) and insn.off == 1:
        symbol = "s" + symbol
    if insn.uses_reg_source:
        return f"{dst} {symbol} {r}{insn.src}"
    return f"{dst} {symbol} {_hex(insn.imm)}"


def _format_jump(insn: Instruction, symbolic: bool) -> str:
    op = insn.jmp_op
    target = insn.reference if symbolic and insn.reference else None
    if op == JmpOp.CALL:
        if insn.src == 1:
            return f"call {target}" if target else f"call {_hex(insn.imm)}"
        if insn.src == 2:
            return f"call kfunc#{insn.imm}" if symbolic else f"call {_hex(insn.imm)}"
        if insn.uses_reg_source:
            return f"callx r{insn.dst}"
        return f"call {helper_name(insn.imm)}" if symbolic else f"call {_hex(insn.imm)}"
    if op == JmpOp.EXIT:
        return "exit"
    if op == JmpOp.JA:
        if insn.cls == Class.JMP32:
            return f"gotol {target}" if target else f"gotol {_rel(insn.imm)}"
        return f"goto {target}" if target else f"goto {_rel(insn.off)}"
    if op not in _JMP_SYMBOL:
        raise UnknownInstruction(f"unknown jump operation in opcode {insn.opcode:#x}")
    r = "r" if insn.cls == Class.JMP else "w"
    rhs = f"{r}{insn.src}" if insn.uses_reg_source else _hex(insn.imm)
    where = target if target else _rel(insn.off)
    return f"if {r}{insn.dst} {_JMP_SYMBOL[op]} {rhs} goto {where}"


def _format_ld(insn: Instruction, symbolic: bool) -> str:
    if insn.is_ld_imm64:
        if symbolic and insn.reference is not None:
            if insn.src == PseudoSrc.MAP_FD:
                return f"r{insn.dst} = map[{insn.reference}] ll"
            if insn.src == PseudoSrc.MAP_VALUE:
                return f"r{insn.dst} = map_value[{insn.reference}][{insn.imm:#x}] ll"
            if insn.src == PseudoSrc.FUNC:
                return f"r{insn.dst} = func[{insn.reference}] ll"
        if insn.src != PseudoSrc.NONE:
            return f"ld_pseudo\tr{insn.dst}, {insn.src:#x}, {insn.imm & 0xFFFFFFFF:#x}"
        return f"r{insn.dst} = {_hex(insn.imm)} ll"
    size = _SIZE_NAME[insn.size]
    if insn.mode == Mode.ABS:
        return f"r0 = *({size} *)skb[{_hex(insn.imm)}]"
    if insn.mode == Mode.IND:
        # LLVM prints the index register only; the immediate is not shown.
        return f"r0 = *({size} *)skb[r{insn.src}]"
    raise UnknownInstruction(f"unknown LD mode in opcode {insn.opcode:#x}")


def _format_atomic(insn: Instruction, symbolic: bool) -> str:
    size = insn.size
    addr = _addr(insn.dst, insn.off)
    imm = insn.imm
    if size == Size.W:
        if imm in (AtomicOp.ADD, AtomicOp.ADD | AtomicOp.FETCH) and not symbolic:
            # LLVM 16 without alu32 decodes both 32-bit adds as the plain locked add and
            # knows no other 32-bit atomic.
            return f"lock *(u32 *){addr} += r{insn.src}"
        if not symbolic:
            return "<unknown>"
        return _format_atomic_wide(insn, "w", "u32", "32_32")
    if size != Size.DW:
        if imm == AtomicOp.LOAD_ACQ:
            return f"r{insn.dst} = load_acquire(({_SIZE_NAME[size]} *){_addr(insn.src, insn.off)})"
        if imm == AtomicOp.STORE_REL:
            return f"store_release(({_SIZE_NAME[size]} *){addr}, r{insn.src})"
        raise UnknownInstruction(f"atomic operation of size {size.name}")
    return _format_atomic_wide(insn, "r", "u64", "_64")


def _format_atomic_wide(insn: Instruction, r: str, size_name: str, suffix: str) -> str:
    addr = _addr(insn.dst, insn.off)
    inner = addr[1:-1]
    imm = insn.imm
    src = f"{r}{insn.src}"
    if imm in _ATOMIC_SYMBOL:
        return f"lock *({size_name} *){addr} {_ATOMIC_SYMBOL[AtomicOp(imm)]} {src}"
    base = imm & ~AtomicOp.FETCH
    if imm & AtomicOp.FETCH and base in _ATOMIC_FETCH_NAME and imm not in (
        AtomicOp.XCHG,
        AtomicOp.CMPXCHG,
    ):
        name = _ATOMIC_FETCH_NAME[AtomicOp(base)]
        return f"{src} = {name}(({size_name} *){addr}, {src})"
    if imm == AtomicOp.XCHG:
        return f"{src} = xchg{suffix}({inner}, {src})"
    if imm == AtomicOp.CMPXCHG:
        return f"{r}0 = cmpxchg{suffix}({inner}, {r}0, {src})"
    if imm == AtomicOp.LOAD_ACQ:
        return f"{r}{insn.dst} = load_acquire(({size_name} *){_addr(insn.src, insn.off)})"
    if imm == AtomicOp.STORE_REL:
        return f"store_release(({size_name} *){addr}, {src})"
    raise UnknownInstruction(f"unknown atomic operation {imm:#x}")


def objdump_lines(
    insns: list[Instruction] | tuple[Instruction, ...], symbols: Mapping[int, str] | None = None
) -> list[str]:
    """Lines as llvm-objdump-16 -d --no-show-raw-insn prints them for a section.

    `symbols` maps slot offsets to symbol names; they are used for jump target annotations
    (`goto +0x3 <LBB0_2>`), as llvm-objdump does.
    """
    symbols = symbols or {}
    out = []
    slot = 0
    for insn in insns:
        text = format_llvm(insn)
        if insn.is_branch:
            rel = insn.imm if insn.is_gotol else insn.off
            target = symbols.get(slot + 1 + rel)
            if target is not None:
                text += f" <{target}>"
        out.append(f"{slot:8d}:\t{text}")
        slot += insn.width
    return out


def listing(program: Program) -> str:
    """A readable, symbolic listing of a program with labels and slot numbers."""
    lines = [f"{program.name}:"]
    offsets = program.slot_offsets()
    for index, insn in enumerate(program.insns):
        if insn.label is not None:
            lines.append(f"{insn.label}:")
        note = f"  ; {insn.meta.note}" if insn.meta.note else ""
        lines.append(f"  {offsets[index]:5d}: {format_symbolic(insn)}{note}")
    return "\n".join(lines)


__all__ = [
    "UnknownInstruction",
    "format_llvm",
    "format_symbolic",
    "listing",
    "objdump_lines",
    "s32",
]
