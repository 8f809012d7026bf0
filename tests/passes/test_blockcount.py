"""Block counting: the counter equals the instructions a packet ran through, on both sides of
a branch, with registers live across the counter saved and restored (kernel test runs)."""

from __future__ import annotations

import pytest

from morpheus.ir import Program, asm, encode, listing
from morpheus.ir.asm import R0, R1, R2, R3, R4, R5, R6, R7, R8, R9
from morpheus.ir.opcodes import JmpOp
from morpheus.kernel import ProgType, load_program
from morpheus.loader import create_map
from morpheus.passes.blockcount import COUNTER_MAP, CountBlocks
from morpheus.passes.pipeline import PassContext


def branchy() -> Program:
    """Drops frames whose first byte is odd (blocks of 5, 2 and 2 instructions) and passes
    the others after keeping every register live across a block start (5, 2, 11 and 11)."""
    return Program("t", (
        asm.ldx(4, R2, R1, 0),  # 0: data
        asm.ldx(4, R3, R1, 4),  # 1: data_end
        asm.mov64(R4, R2),  # 2
        asm.add64(R4, 1),  # 3
        asm.jgt(R4, R3, "out"),  # 4
        asm.ldx(1, R5, R2, 0),  # 5
        asm.jmp(JmpOp.JSET, R5, 1, "odd"),  # 6
        *[asm.mov64(r, n) for n, r in enumerate(ALL)],  # 7-16
        asm.ja("sum"),  # 17
        asm.mov64(R0, 1, label="odd"),
        asm.exit_(),
        asm.mov64(R0, 2, label="out"),
        asm.exit_(),
        asm.add64(R0, R1, label="sum"),  # r0-r9 are all live here
        *[asm.add64(R0, r) for r in ALL[2:]],
        asm.mov64(R0, 2),
        asm.exit_(),
    ))


ALL = (R0, R1, R2, R3, R4, R5, R6, R7, R8, R9)


@pytest.mark.kernel
@pytest.mark.parametrize(("first", "verdict", "expected"), [(1, 1, 5 + 2 + 2),
                                                                    (2, 2, 5 + 2 + 11 + 11)])
def test_the_counter_is_the_path_length(first: int, verdict: int, expected: int) -> None:
    ctx = PassContext({}, ProgType.XDP)
    counted = CountBlocks().run(branchy(), ctx)
    text = listing(counted)
    assert "*(u64 *)(r10 - 0x8) = " in text  # a live register saved at the `sum` block
    with create_map(ctx.maps[COUNTER_MAP]) as counter:
        code = encode(counted, {COUNTER_MAP: counter.fd.number}).bytecode
        with load_program(code, ProgType.XDP, name="count") as prog:
            assert prog.test_run(bytes([first]) + bytes(63)).retval == verdict
        raw = counter.lookup(0)
        assert isinstance(raw, bytes)
        assert int.from_bytes(raw[:8], "little") == expected
