"""Store coalescing: golden text forms, and the kernel's answer (the bytes a program writes
into the packet and the registers it leaves) unchanged for random runs of stores."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from morpheus.ir import Instruction, Program, asm, encode, listing
from morpheus.ir.asm import R0, R1, R2, R3, R4, R6, R10
from morpheus.kernel import ProgType, load_program
from morpheus.obj import MapSpec
from morpheus.passes.pipeline import PassContext
from morpheus.passes.stores import CoalesceStores
from morpheus.uapi import MapType

FRAME = 64


def context() -> PassContext:
    return PassContext({"m": MapSpec("m", MapType.ARRAY, 4, 8, 1)}, ProgType.XDP)



def packet_program(run: list[Instruction]) -> Program:
    """data in r6, bounds checked for the whole frame, then `run`; r1 and r4 (the registers
    the runs move constants through) are then written after the bytes the run may touch,
    so the output packet shows both the stores and the registers."""
    return Program("t", (
        asm.ldx(4, R6, R1, 0),
        asm.ldx(4, R3, R1, 4),
        asm.mov64(R2, R6),
        asm.add64(R2, FRAME + 16),
        asm.jgt(R2, R3, "out"),
        asm.mov64(R1, 0),
        asm.mov64(R4, 0),
        *run,
        asm.stx(8, R6, FRAME, R1),
        asm.stx(8, R6, FRAME + 8, R4),
        asm.mov64(R0, 2),
        asm.exit_(),
        asm.mov64(R0, 1, label="out"),
        asm.exit_(),
    ))


def body(p: Program) -> list[str]:
    return [line.strip() for line in listing(p).splitlines()[1:]]


def test_golden_a_mac_rewrite_becomes_three_stores() -> None:
    mac = [0x02, 0x4E, 0x48, 0x16, 0x3D, 0xFE, 0x02, 0x52, 0x00, 0x54, 0x01, 0x00]
    run = []
    for off, byte in enumerate(mac):
        run += [asm.mov64(R1, byte), asm.stx(1, R6, off, R1)]
    out = CoalesceStores().run(packet_program(run), context())
    assert body(out)[5:] == [
        "5: *(u32 *)(r6 + 0x0) = 0x16484e02",
        "6: *(u32 *)(r6 + 0x4) = 0x5202fe3d",
        "7: *(u32 *)(r6 + 0x8) = 0x15400",
        "8: *(u64 *)(r6 + 0x40) = 0x0",  # the registers' stores are constant too
        "9: *(u64 *)(r6 + 0x48) = 0x0",
        "10: r1 = 0x0",  # the registers' last values stay for whoever reads them
        "11: r4 = 0x0",
        "12: r0 = 0x2",
        "13: exit",
        "out:",
        "14: r0 = 0x1",
        "15: exit",
    ]


def test_golden_stack_stores_merge_only_into_aligned_pieces() -> None:
    run = [asm.st(1, R10, -8, 1), asm.st(1, R10, -7, 2), asm.st(2, R10, -6, 0x0403),
           asm.st(4, R10, -12, 0), asm.st(4, R10, -16, 6), asm.st(1, R10, -3, 7),
           asm.st(1, R10, -2, 8)]
    out = CoalesceStores().run(Program("t", (*run, asm.mov64(R0, 0), asm.exit_())),
                               context())
    assert body(out) == [
        "0: *(u64 *)(r10 - 0x10) = 0x6",
        "1: *(u32 *)(r10 - 0x8) = 0x4030201",
        "2: *(u8 *)(r10 - 0x3) = 0x7",  # -3 is odd: no 2-byte store there
        "3: *(u8 *)(r10 - 0x2) = 0x8",
        "4: r0 = 0x0",
        "5: exit",
    ]


def test_a_label_or_another_instruction_ends_the_run() -> None:
    run = [asm.st(1, R6, 0, 1), asm.st(1, R6, 1, 2, label="in"), asm.st(1, R6, 2, 3),
           asm.ldx(1, R4, R6, 0), asm.st(1, R6, 3, 4), asm.st(1, R6, 4, 5),
           asm.ja("in")]
    out = CoalesceStores(min_saving=1).run(packet_program(run), context())
    assert body(out)[5:12] == [
        "5: r1 = 0x0",
        "6: r4 = 0x0",
        "7: *(u8 *)(r6 + 0x0) = 0x1",
        "in:",
        "8: *(u16 *)(r6 + 0x1) = 0x302",
        "9: r4 = *(u8 *)(r6 + 0x0)",
        "10: *(u16 *)(r6 + 0x3) = 0x504",
    ]


def test_a_pointer_of_unknown_kind_is_left_alone() -> None:
    # r1 is the context here: nothing may be stored through it, and nothing is merged.
    run = [asm.st(1, R1, 0, 1), asm.st(1, R1, 1, 2), asm.st(1, R1, 2, 3)]
    prog = Program("t", (*run, asm.mov64(R0, 0), asm.exit_()))
    assert CoalesceStores().run(prog, context()) == prog


store = st.tuples(st.sampled_from([1, 2, 4, 8]), st.integers(0, FRAME - 8),
                  st.integers(0, 2**64 - 1), st.booleans())


@pytest.mark.kernel
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
@given(stores=st.lists(store, min_size=2, max_size=24))
def test_the_kernel_sees_the_same_bytes_and_registers(stores: list[tuple[int, int, int,
                                                                          bool]]) -> None:
    run: list[Instruction] = []
    for n, (size, off, value, via_register) in enumerate(stores):
        reg = (R1, R4)[n % 2]
        if via_register:
            run += [asm.mov64(reg, value & 0x7FFFFFFF), asm.stx(size, R6, off, reg)]
        else:
            imm = value & 0xFF if size == 1 else value & 0xFFFF if size == 2 else \
                (value & 0xFFFFFFFF) - (1 << 32) * ((value >> 31) & 1)
            run.append(asm.st(size, R6, off, imm))
    original = packet_program(run)
    merged = CoalesceStores(min_saving=1).run(original, context())
    frame = bytes(range(FRAME + 16))
    results = []
    for prog in (original, merged):
        with load_program(encode(prog).bytecode, ProgType.XDP, name="stores") as loaded:
            out = loaded.test_run(frame)
            results.append((out.retval, out.data))
    assert results[0] == results[1], listing(merged)
