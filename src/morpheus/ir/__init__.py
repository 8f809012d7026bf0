"""Pure eBPF instruction IR: decode, encode, symbolic programs, disassembly, builder.

Nothing in this package makes a system call.
"""

from .codec import DecodeError, EncodeError, decode, encode_raw
from .disasm import format_llvm, format_symbolic, listing, objdump_lines
from .instruction import EMPTY_META, Instruction, LineInfo, Meta
from .program import EncodedProgram, Function, LinkError, Program, encode, symbolize

__all__ = [
    "EMPTY_META",
    "DecodeError",
    "EncodeError",
    "EncodedProgram",
    "Function",
    "Instruction",
    "LineInfo",
    "LinkError",
    "Meta",
    "Program",
    "decode",
    "encode",
    "encode_raw",
    "format_llvm",
    "format_symbolic",
    "listing",
    "objdump_lines",
    "symbolize",
]
