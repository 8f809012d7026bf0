"""Symbolic programs: labels and references resolved late, errors that name the problem."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from morpheus.ir import (
    Instruction,
    LineInfo,
    LinkError,
    Meta,
    Program,
    asm,
    decode,
    encode,
    symbolize,
)
from morpheus.ir.asm import R0, R1
from morpheus.ir.opcodes import PseudoSrc


def test_jumps_are_resolved_at_encode_time() -> None:
    program = Program(
        "p",
        (
            asm.mov64(R0, 1),
            asm.jeq(R1, 0, "out"),
            asm.ld_imm64(R0, 1 << 40),
            asm.mov64(R0, 2),
            asm.exit_(label="out"),
        ),
    )
    raw = decode(encode(program).bytecode)
    jump = raw[1]
    assert jump.off == 3  # skips the two-slot ld_imm64 and the mov


def test_inserting_instructions_keeps_jumps_right() -> None:
    program = Program("p", (asm.jeq(R1, 0, "out"), asm.mov64(R0, 2), asm.exit_(label="out")))
    bigger = program.with_insns((*program.insns[:1], *[asm.mov64(R0, 3)] * 5, *program.insns[1:]))
    assert decode(encode(bigger).bytecode)[0].off == 6


def test_missing_and_duplicate_labels_are_errors_naming_them() -> None:
    with pytest.raises(LinkError, match="undefined label 'nowhere'"):
        encode(Program("p", (asm.ja("nowhere"), asm.exit_())))
    with pytest.raises(LinkError, match="label 'x' defined at instructions 0 and 1"):
        encode(Program("p", (asm.mov64(R0, 0, label="x"), asm.exit_(label="x"))))


def test_map_references_need_a_file_descriptor() -> None:
    program = Program("p", (asm.ld_map_value(R1, "config", 8), asm.mov64(R0, 0), asm.exit_()))
    with pytest.raises(LinkError, match="map 'config' has no file descriptor"):
        encode(program)
    raw = encode(program, {"config": 7}).bytecode
    assert raw[1] >> 4 == PseudoSrc.MAP_VALUE
    assert int.from_bytes(raw[4:8], "little") == 7
    assert int.from_bytes(raw[12:16], "little") == 8


def test_subprogram_calls_and_func_info() -> None:
    program = Program(
        "main",
        (
            asm.mov64(R1, 1).with_meta(func_btf_id=5),
            asm.call("helper"),
            asm.exit_(),
            asm.mov64(R0, R1, label="helper").with_meta(func_btf_id=9),
            asm.exit_(),
        ),
    )
    encoded = encode(program)
    assert decode(encoded.bytecode)[1].imm == 1
    assert encoded.func_info == ((0, 5), (3, 9))
    assert [f.name for f in program.functions()] == ["main", "helper"]


def test_line_info_follows_instructions_and_every_function_gets_one() -> None:
    line = LineInfo(1, 2, 10, 3)
    program = Program(
        "main",
        (
            asm.mov64(R0, 0),  # inserted by a pass: no line of its own
            asm.mov64(R1, 1).with_meta(line=line),
            asm.exit_(),
        ),
    )
    encoded = encode(program)
    assert encoded.line_info == ((0, 1, 2, (10 << 10) | 3), (1, 1, 2, (10 << 10) | 3))


def test_fresh_label_avoids_existing_ones() -> None:
    program = Program("p", (asm.mov64(R0, 0, label="miss"), asm.exit_(label="miss.1")))
    assert program.fresh_label("miss") == "miss.2"
    assert program.fresh_label("hit") == "hit"


@given(st.lists(st.integers(0, 7), min_size=1, max_size=30))
def test_symbolize_then_encode_reproduces_the_bytecode(targets: list[int]) -> None:
    """Random forward jumps: decode → symbolize → encode gives back the same bytes."""
    n = len(targets)
    insns = []
    for i, t in enumerate(targets):
        off = min(t, n - i - 1)  # stay inside the program (the last one jumps to exit)
        insns.append(Instruction(0x15, 1, 0, off, 0))  # if r1 == 0 goto +off
    insns.append(asm.exit_())
    raw = encode(Program("p", tuple(insns))).bytecode
    symbolic = symbolize(decode(raw))
    assert encode(Program("p", tuple(symbolic))).bytecode == raw
    assert all(i.reference is not None for i in symbolic if i.is_branch)


def test_metadata_survives_rewriting() -> None:
    insn = asm.mov64(R0, 1).with_meta(origin=12)
    moved = insn.with_label("here").with_reference(None)
    assert moved.meta == Meta(origin=12)
