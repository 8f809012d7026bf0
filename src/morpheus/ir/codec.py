"""Raw encoding and decoding of eBPF bytecode (little-endian, 8-byte slots).

`decode` and `encode_raw` are exact inverses: decode → encode_raw reproduces the input bytes.
Symbolic programs (labels, map names) are encoded by `morpheus.ir.program.encode`.
"""

from __future__ import annotations

import struct

from .instruction import Instruction, Meta, s32, s64
from .opcodes import INSN_SIZE, LD_IMM64

_SLOT = struct.Struct("<BBhi")


class DecodeError(ValueError):
    """The bytes are not a sequence of eBPF instructions."""


class EncodeError(ValueError):
    """An instruction cannot be encoded (unresolved reference, value out of range)."""


def decode(data: bytes | memoryview, *, origin: int = 0) -> list[Instruction]:
    """Decode raw bytecode into logical instructions; jumps keep their numeric offsets.

    `origin` is added to the slot index stored in each instruction's provenance metadata.
    """
    if len(data) % INSN_SIZE:
        raise DecodeError(f"bytecode length {len(data)} is not a multiple of {INSN_SIZE}")
    slots = list(_SLOT.iter_unpack(data))
    out: list[Instruction] = []
    append = out.append
    n = len(slots)
    origin_meta(origin + n)  # one shared provenance record per slot, made up front
    metas = _ORIGIN_METAS
    # tuple.__new__ directly: half the time of the NamedTuple's keyword-handling __new__,
    # and decode builds one instruction per slot of every object read.
    new = tuple.__new__
    i = 0
    while i < n:
        opcode, regs, off, imm = slots[i]
        if opcode == LD_IMM64:
            if i + 1 >= n:
                raise DecodeError(f"slot {i}: 64-bit immediate load is missing its second half")
            op2, regs2, off2, imm2 = slots[i + 1]
            if op2 or regs2 or off2:
                raise DecodeError(
                    f"slot {i}: second half of a 64-bit immediate load must be zero apart from "
                    f"its immediate (found opcode {op2:#x}, regs {regs2:#x}, off {off2})"
                )
            value = s64(((imm2 & 0xFFFFFFFF) << 32) | (imm & 0xFFFFFFFF))
            append(new(Instruction, (opcode, regs & 0xF, regs >> 4, off, value, None, None,
                                     metas[origin + i])))
            i += 2
        else:
            append(new(Instruction, (opcode, regs & 0xF, regs >> 4, off, imm, None, None,
                                     metas[origin + i])))
            i += 1
    return out


_ORIGIN_METAS: list[Meta] = []


def origin_meta(origin: int) -> Meta:
    """The (shared, immutable) metadata that only records provenance `origin`."""
    metas = _ORIGIN_METAS
    if origin >= len(metas):
        metas.extend(Meta(origin=n) for n in range(len(metas), max(origin + 1, 2 * len(metas))))
    return metas[origin]


def pack_slot(opcode: int, dst: int, src: int, off: int, imm: int) -> bytes:
    if not 0 <= dst <= 15 or not 0 <= src <= 15:
        raise EncodeError(f"register out of range: dst={dst} src={src}")
    if not -0x8000 <= off <= 0x7FFF:
        raise EncodeError(f"offset {off} does not fit in 16 bits")
    if not -0x80000000 <= imm <= 0xFFFFFFFF:
        raise EncodeError(f"immediate {imm} does not fit in 32 bits")
    return _SLOT.pack(opcode, (src << 4) | dst, off, s32(imm))


def encode_instruction(
    insn: Instruction, *, off: int | None = None, imm: int | None = None, imm_hi: int | None = None
) -> bytes:
    """Encode one instruction, with optional overrides for resolved offsets and immediates."""
    o = insn.off if off is None else off
    if insn.opcode == LD_IMM64:
        if imm is None:
            lo, hi = insn.imm & 0xFFFFFFFF, (insn.imm >> 32) & 0xFFFFFFFF
        else:
            lo = imm & 0xFFFFFFFF
            hi = (imm_hi if imm_hi is not None else 0) & 0xFFFFFFFF
        return pack_slot(insn.opcode, insn.dst, insn.src, o, s32(lo)) + pack_slot(
            0, 0, 0, 0, s32(hi)
        )
    return pack_slot(insn.opcode, insn.dst, insn.src, o, insn.imm if imm is None else imm)


def encode_raw(insns: list[Instruction] | tuple[Instruction, ...]) -> bytes:
    """Encode instructions exactly as they are, ignoring labels. References are an error."""
    parts = []
    for index, insn in enumerate(insns):
        if insn.reference is not None:
            raise EncodeError(
                f"instruction {index}: reference {insn.reference!r} is unresolved; "
                "use morpheus.ir.encode with the program"
            )
        parts.append(encode_instruction(insn))
    return b"".join(parts)
