"""Encoding and decoding: decode → encode is the identity, and the reverse."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from morpheus.ir import DecodeError, EncodeError, Instruction, decode, encode_raw
from morpheus.ir.asm import R1, ld_map_fd

from .strategies import all_instructions


def strip(insns: list[Instruction]) -> list[tuple[int, int, int, int, int]]:
    return [(i.opcode, i.dst, i.src, i.off, i.imm) for i in insns]


@given(st.lists(all_instructions(), min_size=1, max_size=40))
def test_encode_then_decode_is_identity(insns: list[Instruction]) -> None:
    assert strip(decode(encode_raw(insns))) == strip(insns)


@given(st.lists(all_instructions(), min_size=1, max_size=40))
def test_decode_then_encode_is_identity(insns: list[Instruction]) -> None:
    raw = encode_raw(insns)
    assert encode_raw(decode(raw)) == raw


@given(st.lists(all_instructions(), min_size=1, max_size=20))
def test_provenance_is_the_slot_index(insns: list[Instruction]) -> None:
    decoded = decode(encode_raw(insns))
    slot = 0
    for insn in decoded:
        assert insn.meta.origin == slot
        slot += insn.width


def test_ld_imm64_is_one_instruction_two_slots_wide() -> None:
    raw = bytes.fromhex("180100007856341200000000f0debc9a")
    (insn,) = decode(raw)
    assert insn.width == 2
    assert insn.imm == 0x9ABCDEF012345678 - (1 << 64)
    assert encode_raw([insn]) == raw


def test_truncated_and_malformed_bytecode_is_rejected() -> None:
    with pytest.raises(DecodeError, match="multiple of 8"):
        decode(b"\x95\0\0\0")
    with pytest.raises(DecodeError, match="missing its second half"):
        decode(bytes.fromhex("1801000000000000"))
    with pytest.raises(DecodeError, match="second half"):
        decode(bytes.fromhex("18010000000000009500000000000000"))


def test_raw_encoding_refuses_unresolved_references() -> None:
    with pytest.raises(EncodeError, match="unresolved"):
        encode_raw([ld_map_fd(R1, "routes")])


def test_out_of_range_fields_are_refused() -> None:
    with pytest.raises(EncodeError, match="16 bits"):
        encode_raw([Instruction(0x05, 0, 0, 40000, 0)])
    with pytest.raises(EncodeError, match="32 bits"):
        encode_raw([Instruction(0xB7, 1, 0, 0, 1 << 40)])
