"""The disassembler agrees with LLVM 16 (llvm-mc is the oracle for random instructions;
tests/obj/test_objects.py compares whole objects with llvm-objdump-16)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from morpheus.ir import Instruction, Program, asm, encode_raw, format_llvm, listing
from morpheus.ir.asm import R0, R1, R2, R10

from .strategies import llvm16_instructions

LLVM_MC = shutil.which("llvm-mc-16")


def llvm_disassemble(insns: list[Instruction]) -> list[str]:
    raw = encode_raw(insns)
    text = " ".join(f"0x{b:02x}" for b in raw)
    result = subprocess.run(
        [LLVM_MC, "--disassemble", "-triple=bpfel", "--print-imm-hex"],  # type: ignore[list-item]
        input=text,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "invalid" not in result.stderr, result.stderr
    return [
        line.strip()
        for line in result.stdout.splitlines()
        if line.strip() and line.strip() != ".text"
    ]


@pytest.mark.skipif(LLVM_MC is None, reason="llvm-mc-16 is not installed (apt install llvm-16)")
@settings(max_examples=60, deadline=None)
@given(st.lists(llvm16_instructions(), min_size=1, max_size=60))
def test_format_matches_llvm_mc(insns: list[Instruction]) -> None:
    assert [format_llvm(i) for i in insns] == llvm_disassemble(insns)


def test_symbolic_listing_names_labels_maps_and_helpers() -> None:
    program = Program(
        "lookup",
        (
            asm.mov64(R1, 0),
            asm.stx(4, R10, -4, R1),
            asm.mov64(R2, R10),
            asm.add64(R2, -4),
            asm.ld_map_fd(R1, "routes"),
            asm.call_helper("map_lookup_elem"),
            asm.jeq(R0, 0, "miss"),
            asm.ldx(4, R0, R0, 0),
            asm.exit_(),
            asm.mov64(R0, 2, label="miss"),
            asm.exit_(),
        ),
    )
    assert listing(program).splitlines() == [
        "lookup:",
        "      0: r1 = 0x0",
        "      1: *(u32 *)(r10 - 0x4) = r1",
        "      2: r2 = r10",
        "      3: r2 += -0x4",
        "      4: r1 = map[routes] ll",
        "      6: call bpf_map_lookup_elem",
        "      7: if r0 == 0x0 goto miss",
        "      8: r0 = *(u32 *)(r0 + 0x0)",
        "      9: exit",
        "miss:",
        "     10: r0 = 0x2",
        "     11: exit",
    ]


def test_v4_forms_use_llvm18_syntax() -> None:
    from morpheus.ir.opcodes import AluOp, Class, JmpOp, Mode, Size, Source

    assert format_llvm(Instruction(Class.ALU64 | AluOp.MOV | Source.X, 1, 2, 16)) == "r1 = (s16)r2"
    assert format_llvm(Instruction(Class.ALU64 | AluOp.DIV | Source.K, 1, 0, 1, 3)) == "r1 s/= 0x3"
    assert format_llvm(Instruction(Class.LDX | Size.H | Mode.MEMSX, 1, 2, 4)) == (
        "r1 = *(s16 *)(r2 + 0x4)"
    )
    assert format_llvm(Instruction(Class.JMP32 | JmpOp.JA, imm=-3)) == "gotol -0x3"
    assert format_llvm(Instruction(Class.ALU64 | AluOp.END, 3, imm=32)) == "r3 = bswap32 r3"
