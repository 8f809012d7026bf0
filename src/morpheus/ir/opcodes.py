"""eBPF instruction set constants (see the kernel's Documentation/bpf/standardization).

Only numbers live here; the meaning of an encoded instruction is built in `instruction.py`.
"""

from __future__ import annotations

from enum import IntEnum


class Class(IntEnum):
    LD = 0x00
    LDX = 0x01
    ST = 0x02
    STX = 0x03
    ALU = 0x04
    JMP = 0x05
    JMP32 = 0x06
    ALU64 = 0x07


class Size(IntEnum):
    W = 0x00
    H = 0x08
    B = 0x10
    DW = 0x18


SIZE_BYTES = {Size.W: 4, Size.H: 2, Size.B: 1, Size.DW: 8}
BYTES_SIZE = {4: Size.W, 2: Size.H, 1: Size.B, 8: Size.DW}


class Mode(IntEnum):
    IMM = 0x00
    ABS = 0x20
    IND = 0x40
    MEM = 0x60
    MEMSX = 0x80
    ATOMIC = 0xC0


class Source(IntEnum):
    K = 0x00
    X = 0x08


class AluOp(IntEnum):
    ADD = 0x00
    SUB = 0x10
    MUL = 0x20
    DIV = 0x30
    OR = 0x40
    AND = 0x50
    LSH = 0x60
    RSH = 0x70
    NEG = 0x80
    MOD = 0x90
    XOR = 0xA0
    MOV = 0xB0
    ARSH = 0xC0
    END = 0xD0


class JmpOp(IntEnum):
    JA = 0x00
    JEQ = 0x10
    JGT = 0x20
    JGE = 0x30
    JSET = 0x40
    JNE = 0x50
    JSGT = 0x60
    JSGE = 0x70
    CALL = 0x80
    EXIT = 0x90
    JLT = 0xA0
    JLE = 0xB0
    JSLT = 0xC0
    JSLE = 0xD0


CONDITIONAL_JUMPS = frozenset(
    {
        JmpOp.JEQ,
        JmpOp.JGT,
        JmpOp.JGE,
        JmpOp.JSET,
        JmpOp.JNE,
        JmpOp.JSGT,
        JmpOp.JSGE,
        JmpOp.JLT,
        JmpOp.JLE,
        JmpOp.JSLT,
        JmpOp.JSLE,
    }
)

# Opposite condition: used by passes that invert a branch.
INVERTED_JUMP = {
    JmpOp.JEQ: JmpOp.JNE,
    JmpOp.JNE: JmpOp.JEQ,
    JmpOp.JGT: JmpOp.JLE,
    JmpOp.JLE: JmpOp.JGT,
    JmpOp.JGE: JmpOp.JLT,
    JmpOp.JLT: JmpOp.JGE,
    JmpOp.JSGT: JmpOp.JSLE,
    JmpOp.JSLE: JmpOp.JSGT,
    JmpOp.JSGE: JmpOp.JSLT,
    JmpOp.JSLT: JmpOp.JSGE,
}


class AtomicOp(IntEnum):
    """Values of the immediate of a BPF_ATOMIC instruction."""

    ADD = 0x00
    OR = 0x40
    AND = 0x50
    XOR = 0xA0
    FETCH = 0x01
    XCHG = 0xE0 | 0x01
    CMPXCHG = 0xF0 | 0x01
    LOAD_ACQ = 0x100
    STORE_REL = 0x110


class PseudoSrc(IntEnum):
    """src_reg values of a 64-bit immediate load (BPF_LD | BPF_IMM | BPF_DW)."""

    NONE = 0
    MAP_FD = 1
    MAP_VALUE = 2
    BTF_ID = 3
    FUNC = 4
    MAP_IDX = 5
    MAP_IDX_VALUE = 6


class CallSrc(IntEnum):
    """src_reg values of BPF_JMP | BPF_CALL."""

    HELPER = 0
    PSEUDO_CALL = 1
    KFUNC = 2


# Every member under a plain module name, for code that runs per instruction: naming an enum
# member costs a metaclass attribute lookup (about 150 ns on CPython 3.11), a global does not.
# Unpacked in definition order, so a new member fails here instead of shifting the names.
C_LD, C_LDX, C_ST, C_STX, C_ALU, C_JMP, C_JMP32, C_ALU64 = Class
M_IMM, M_ABS, M_IND, M_MEM, M_MEMSX, M_ATOMIC = Mode
SRC_K, SRC_X = Source
(OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_OR, OP_AND, OP_LSH, OP_RSH, OP_NEG, OP_MOD, OP_XOR, OP_MOV,
 OP_ARSH, OP_END) = AluOp
(J_JA, J_JEQ, J_JGT, J_JGE, J_JSET, J_JNE, J_JSGT, J_JSGE, J_CALL, J_EXIT, J_JLT, J_JLE, J_JSLT,
 J_JSLE) = JmpOp
(PSEUDO_NONE, PSEUDO_MAP_FD, PSEUDO_MAP_VALUE, PSEUDO_BTF_ID, PSEUDO_FUNC, PSEUDO_MAP_IDX,
 PSEUDO_MAP_IDX_VALUE) = PseudoSrc
CALL_HELPER, CALL_PSEUDO_CALL, CALL_KFUNC = CallSrc

LD_IMM64 = Class.LD | Size.DW | Mode.IMM  # 0x18
CALL = Class.JMP | JmpOp.CALL  # 0x85
EXIT = Class.JMP | JmpOp.EXIT  # 0x95

INSN_SIZE = 8
MAX_REG = 10  # r10 is the read-only frame pointer
STACK_SIZE = 512
