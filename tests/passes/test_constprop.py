"""constprop: golden tests on small programs, then differential tests against the kernel.

Golden tests build a program with `morpheus.ir.asm`, run the pass and compare the listing
with the expected text. The differential tests generate random verifier-valid programs
(ALU64/ALU32 arithmetic on constants and packet bytes, stack traffic, atomics, a helper that
reads the stack, forward branches), optimize them with constprop + dce, and check that the
kernel accepts both versions and that BPF_PROG_TEST_RUN gives the same result for both.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import morpheus.passes.dce  # noqa: F401  (registers the dce pass)
from morpheus.ir import Instruction, Program, asm, encode, listing
from morpheus.ir.asm import FP, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, Reg
from morpheus.ir.opcodes import AluOp, AtomicOp, Class, JmpOp, Mode, PseudoSrc, Size, Source
from morpheus.kernel import Map, MapFlags, MapType, ProgType, load_program
from morpheus.obj import MapSpec
from morpheus.passes.constprop import ConstantPropagation, _known_direct_loads, constant_move
from morpheus.passes.pipeline import REGISTRY, PassContext, Pipeline, build


def optimize(insns: Sequence[Instruction], known: Mapping[str, bytes] | None = None,
             passes: Sequence[str] = ("constprop",)) -> Program:
    ctx = PassContext({}, ProgType.XDP, dict(known or {}))
    return Pipeline(build(passes)).run(Program("t", tuple(insns)), ctx)


def lines(text: str) -> list[str]:
    """Listing lines without indentation (labels and instructions stay distinguishable)."""
    return [line.strip() for line in text.strip().splitlines()]


def golden(insns: Sequence[Instruction], expected: str, **kw: object) -> Program:
    out = optimize(insns, **kw)  # type: ignore[arg-type]
    assert lines(listing(out)) == ["t:", *lines(expected)]
    return out


def memsx(size: int, dst: Reg, src: Reg, off: int) -> Instruction:
    """dst = *(s<size*8> *)(src + off)."""
    sizes = {1: Size.B, 2: Size.H, 4: Size.W}
    return Instruction(Class.LDX | sizes[size] | Mode.MEMSX, dst, src, off)


def movsx(dst: Reg, src: Reg, bits: int, *, wide: bool = True) -> Instruction:
    cls = Class.ALU64 if wide else Class.ALU
    return Instruction(cls | AluOp.MOV | Source.X, dst, src, bits)


# --- registration --------------------------------------------------------------------------


def test_registered_with_defaults() -> None:
    assert REGISTRY["constprop"] is ConstantPropagation
    assert build(["constprop", "dce"])[0] == ConstantPropagation()


def test_constant_move_picks_the_shortest_form() -> None:
    assert constant_move(R1, 5) == asm.mov64(R1, 5)
    assert constant_move(R1, (1 << 64) - 5) == asm.mov64(R1, -5)
    assert constant_move(R1, 0x80000000) == asm.mov32(R1, 0x80000000)  # zero-extends
    assert constant_move(R1, 0xFFFFFFFF) == asm.mov32(R1, -1)
    assert constant_move(R1, 1 << 40) == asm.ld_imm64(R1, 1 << 40)
    assert constant_move(R1, (1 << 64) - (1 << 31) - 1) == asm.ld_imm64(R1, -(1 << 31) - 1)


# --- (a) ALU results --------------------------------------------------------------------------


def test_alu_results_become_constant_moves() -> None:
    golden([
        asm.mov64(R1, 5),
        asm.mov64(R2, R1),
        asm.add64(R2, 3),
        asm.lsh64(R2, 2),
        asm.alu32(AluOp.MUL, R2, -1),  # 32-bit: 0xffffffe0, zero-extended
        asm.mov64(R3, 1),
        asm.lsh64(R3, 40),
        asm.mov32(R4, -1),
        asm.add64(R4, 1),
        movsx(R5, R2, 8),  # (s8) 0xe0
        Instruction(Class.ALU | AluOp.END | Source.X, R5, 0, 0, 16),  # be16
        asm.alu64(AluOp.NEG, R1, 0),
        asm.mov64(R0, R2),
        asm.exit_(),
    ], """
              0: r1 = 0x5
              1: r2 = 0x5
              2: r2 = 0x8
              3: r2 = 0x20
              4: w2 = -0x20
              5: r3 = 0x1
              6: r3 = 0x10000000000 ll
              8: w4 = -0x1
              9: r4 = 0x100000000 ll
             11: r5 = -0x20
             12: r5 = 0xe0ff
             13: r1 = -0x5
             14: w0 = -0x20
             15: exit
    """)


def test_division_shift_and_signed_semantics() -> None:
    golden([
        asm.mov64(R1, -7),
        asm.mov64(R2, R1),
        Instruction(Class.ALU64 | AluOp.DIV | Source.K, R2, 0, 1, 2),  # sdiv: -3
        asm.mov64(R3, R1),
        asm.alu64(AluOp.DIV, R3, 2),  # unsigned: 0x7ffffffffffffffc
        asm.mov64(R4, 0),
        asm.mov64(R5, 9),
        asm.alu64(AluOp.DIV, R5, R4),  # x / 0 = 0
        asm.mov64(R6, 9),
        asm.alu32(AluOp.MOD, R6, R4),  # x % 0 = x
        asm.mov64(R7, 1),
        asm.mov64(R8, 65),
        asm.lsh64(R7, R8),  # shift amounts are masked: 1 << 1
        asm.alu64(AluOp.ARSH, R1, 1),
        asm.mov64(R0, 0),
        asm.exit_(),
    ], """
              0: r1 = -0x7
              1: r2 = -0x7
              2: r2 = -0x3
              3: r3 = -0x7
              4: r3 = 0x7ffffffffffffffc ll
              6: r4 = 0x0
              7: r5 = 0x9
              8: r5 = 0x0
              9: r6 = 0x9
             10: r6 = 0x9
             11: r7 = 0x1
             12: r8 = 0x41
             13: r7 = 0x2
             14: r1 = -0x4
             15: r0 = 0x0
             16: exit
    """)


def test_constants_flow_through_stack_slots_but_loads_stay() -> None:
    # The analysis follows constants through the stack; the load itself is not folded
    # (loads through pointers other than direct map values never are), its users are.
    golden([
        asm.st(8, FP, -8, 42),
        asm.ldx(8, R1, FP, -8),
        asm.mov64(R0, R1),
        asm.exit_(),
    ], """
              0: *(u64 *)(r10 - 0x8) = 0x2a
              1: r1 = *(u64 *)(r10 - 0x8)
              2: r0 = 0x2a
              3: exit
    """)


# --- (b) loads through direct map-value pointers ---------------------------------------------

CFG_VALUE = struct.pack("<IHbBQ", 7, 0x1234, -3, 0x80, 0x1122334455667788) + bytes(8)


def test_direct_loads_fold_with_size_and_extension() -> None:
    golden([
        asm.ld_map_value(R6, "cfg", 4),
        asm.ldx(4, R1, R6, -4),
        asm.ldx(2, R2, R6, 0),
        memsx(1, R3, R6, 2),
        asm.ldx(1, R4, R6, 3),
        memsx(1, R4, R6, 3),
        asm.ldx(8, R5, R6, 4),
        asm.ldx(4, R7, R6, 100),  # outside the value: left alone (the verifier refuses it)
        asm.jne(R1, 7, "out"),
        asm.jeq(R6, 0, "out"),  # a direct pointer is never NULL
        asm.mov64(R0, R3),
        asm.exit_(),
        asm.mov64(R0, 0, label="out"),
        asm.exit_(),
    ], """
              0: r6 = map_value[cfg][0x4] ll
              2: r1 = 0x7
              3: r2 = 0x1234
              4: r3 = -0x3
              5: r4 = 0x80
              6: r4 = -0x80
              7: r5 = 0x1122334455667788 ll
              9: r7 = *(u32 *)(r6 + 0x64)
             10: r0 = -0x3
             11: exit
    """, known={"cfg": CFG_VALUE})


def test_direct_loads_across_blocks_and_through_copies() -> None:
    # The pointer is set up in another block and copied on both paths to the load.
    out = golden([
        asm.ld_map_value(R6, "cfg", 0),
        asm.ldx(4, R2, R1, 0xC),
        asm.jeq(R2, 1, "one"),
        asm.mov64(R7, R6, label=None),
        asm.add64(R7, 8),
        asm.ja("load"),
        asm.mov64(R7, R6, label="one"),
        asm.add64(R7, 8),
        asm.ldx(4, R0, R7, 0, label="load"),
        asm.and64(R0, 0xFF),
        asm.exit_(),
    ], """
              0: r6 = map_value[cfg][0x0] ll
              2: r2 = *(u32 *)(r1 + 0xc)
              3: if r2 == 0x1 goto one
              4: r7 = r6
              5: r7 += 0x8
              6: goto load
        one:
              7: r7 = r6
              8: r7 += 0x8
        load:
              9: r0 = 0x55667788
             10: r0 = 0x88
             11: exit
    """, known={"cfg": CFG_VALUE})
    assert len(out.insns) == 11


def test_direct_loads_in_loops() -> None:
    # r6 moves through the value: the load in the loop reads a different word each time.
    # r7 stays put: its load folds (already before the analysis).
    out = golden([
        asm.ld_map_value(R6, "cfg", 0),
        asm.ld_map_value(R7, "cfg", 4),
        asm.mov64(R2, 0),
        asm.mov64(R0, 0),
        asm.ldx(4, R1, R6, 0, label="loop"),
        asm.add64(R0, R1),
        asm.ldx(2, R1, R7, 0),
        asm.add64(R0, R1),
        asm.add64(R6, 4),
        asm.add64(R2, 1),
        asm.jlt(R2, 3, "loop"),
        asm.exit_(),
    ], """
              0: r6 = map_value[cfg][0x0] ll
              2: r7 = map_value[cfg][0x4] ll
              4: r2 = 0x0
              5: r0 = 0x0
        loop:
              6: r1 = *(u32 *)(r6 + 0x0)
              7: r0 += r1
              8: r1 = 0x1234
              9: r0 += 0x1234
             10: r6 += 0x4
             11: r2 += 0x1
             12: if r2 < 0x3 goto loop
             13: exit
    """, known={"cfg": CFG_VALUE})
    before = out.with_insns([*out.insns[:6], asm.ldx(2, R1, R7, 0), *out.insns[7:]])
    assert _known_direct_loads(before, {"cfg": CFG_VALUE}) == {6: 0x1234}


def test_direct_loads_through_a_spilled_pointer_take_a_second_analysis() -> None:
    # Only the analysis follows the pointer through the stack; the constant it loads is
    # new to the analysis, which then runs again to fold what depends on it.
    insns = [
        asm.ld_map_value(R6, "cfg", 0),
        asm.stx(8, FP, -8, R6),
        asm.ldx(8, R7, FP, -8),
        asm.ldx(4, R1, R7, 0),
        asm.mov64(R0, R1),
        asm.exit_(),
    ]
    ctx = PassContext({}, ProgType.XDP, {"cfg": CFG_VALUE})
    out = ConstantPropagation().run(Program("t", tuple(insns)), ctx)
    assert out.insns[3:5] == (asm.mov64(R1, 7), asm.mov64(R0, 7))
    assert ctx.stats["constprop"]["analyses"] == 2  # the load, then what depends on it


def test_loads_from_other_maps_are_not_folded() -> None:
    golden([
        asm.ld_map_value(R6, "other", 0),  # a direct value, but its bytes are not known
        asm.ldx(4, R1, R6, 0),
        asm.mov64(R2, 0),
        asm.st(4, FP, -4, 0),
        asm.mov64(R2, FP),
        asm.add64(R2, -4),
        asm.ld_map_fd(R1, "cfg"),
        asm.call_helper("map_lookup_elem"),  # a lookup result: contents may change
        asm.jeq(R0, 0, "out"),
        asm.ldx(4, R0, R0, 0),
        asm.exit_(),
        asm.mov64(R0, 0, label="out"),
        asm.exit_(),
    ], """
              0: r6 = map_value[other][0x0] ll
              2: r1 = *(u32 *)(r6 + 0x0)
              3: r2 = 0x0
              4: *(u32 *)(r10 - 0x4) = 0x0
              5: r2 = r10
              6: r2 += -0x4
              7: r1 = map[cfg] ll
              9: call bpf_map_lookup_elem
             10: if r0 == 0x0 goto out
             11: r0 = *(u32 *)(r0 + 0x0)
             12: exit
        out:
             13: r0 = 0x0
             14: exit
    """, known={"cfg": CFG_VALUE})


# --- (c) branches ------------------------------------------------------------------------------


def test_known_branches_become_goto_or_disappear() -> None:
    golden([
        asm.mov64(R1, 3),
        asm.jgt(R1, 2, "big"),  # always taken
        asm.mov64(R0, 1),
        asm.exit_(),
        asm.jmp(JmpOp.JSLT, R1, 0, "neg", label="big"),  # never taken
        asm.jmp(JmpOp.JSET, R1, 4, "neg", wide=False),  # 3 & 4 == 0: never taken
        asm.mov64(R0, 2),
        asm.exit_(),
        asm.mov64(R0, 3, label="neg"),
        asm.exit_(),
    ], """
              0: r1 = 0x3
              1: goto big
        big:
              2: r0 = 0x2
              3: exit
    """)


def test_branch_on_learned_equality() -> None:
    # `if r2 == 5` teaches the analysis r2 = 5 on the taken edge.
    golden([
        asm.ldx(4, R2, R1, 0xC),
        asm.jeq(R2, 5, "five"),
        asm.mov64(R0, 0),
        asm.exit_(),
        asm.mov64(R0, R2, label="five"),
        asm.jne(R2, 5, "never"),
        asm.exit_(),
        asm.mov64(R0, 9, label="never"),
        asm.exit_(),
    ], """
              0: r2 = *(u32 *)(r1 + 0xc)
              1: if r2 == 0x5 goto five
              2: r0 = 0x0
              3: exit
        five:
              4: r0 = 0x5
              5: exit
    """)


def test_a_conditional_jump_to_the_next_instruction_joins_both_edges() -> None:
    # Found by the differential test: both edges lead to L1, so r0 is not known there.
    insns = [
        asm.ldx(1, R0, R1, 0xC),
        asm.jne(R0, 0, "L1"),
        asm.mov64(R0, R0, label="L1"),
        asm.exit_(),
    ]
    assert optimize(insns).insns == tuple(insns)


def test_32_bit_comparisons_use_the_low_halves() -> None:
    golden([
        asm.ld_imm64(R1, 0x1_0000_0001),
        asm.jmp(JmpOp.JEQ, R1, 1, "low", wide=False),  # taken: low half is 1
        asm.mov64(R0, 0),
        asm.exit_(),
        asm.jeq(R1, 1, "never", label="low"),  # 64-bit: not taken
        asm.mov64(R0, 1),
        asm.exit_(),
        asm.mov64(R0, 2, label="never"),
        asm.exit_(),
    ], """
              0: r1 = 0x100000001 ll
              2: goto low
        low:
              3: r0 = 0x1
              4: exit
    """)


# --- (d) immediates ---------------------------------------------------------------------------


def test_register_operands_become_immediates() -> None:
    golden([
        asm.ldx(4, R2, R1, 0xC),  # unknown
        asm.mov64(R3, 7),
        asm.add64(R2, R3),
        asm.mov64(R4, 33),
        asm.alu32(AluOp.LSH, R2, R4),  # masked shift amount: 33 & 31
        asm.mov64(R5, 0),
        asm.alu64(AluOp.DIV, R2, R5),  # x / 0 stays (the K form is refused)
        asm.ld_imm64(R6, 0x80000000),
        asm.alu64(AluOp.OR, R2, R6),  # does not fit a sign-extended immediate
        asm.alu32(AluOp.OR, R2, R6),  # 32-bit: any value fits
        asm.jgt(R2, R3, "out"),
        asm.jgt(R3, R2, "out"),  # swapped: r2 < 7
        asm.jmp(JmpOp.JSGE, R6, R2, "out", wide=False),  # swapped: w2 s<= 0x80000000
        asm.jgt(R2, R6, "out"),  # 64-bit 0x80000000 has no immediate form
        asm.mov64(R0, 0),
        asm.exit_(),
        asm.mov64(R0, 1, label="out"),
        asm.exit_(),
    ], """
              0: r2 = *(u32 *)(r1 + 0xc)
              1: r3 = 0x7
              2: r2 += 0x7
              3: r4 = 0x21
              4: w2 <<= 0x1
              5: r5 = 0x0
              6: r2 /= r5
              7: r6 = 0x80000000 ll
              9: r2 |= r6
             10: w2 |= -0x80000000
             11: if r2 > 0x7 goto out
             12: if r2 < 0x7 goto out
             13: if w2 s<= -0x80000000 goto out
             14: if r2 > r6 goto out
             15: r0 = 0x0
             16: exit
        out:
             17: r0 = 0x1
             18: exit
    """)


def test_immediates_can_be_turned_off() -> None:
    insns = [asm.ldx(4, R2, R1, 0xC), asm.mov64(R3, 7), asm.add64(R2, R3), asm.mov64(R0, R2),
             asm.exit_()]
    ctx = PassContext({}, ProgType.XDP)
    out = ConstantPropagation(immediates=False).run(Program("t", tuple(insns)), ctx)
    assert out.insns == tuple(insns)


# --- what must not be folded --------------------------------------------------------------------


def test_pointers_are_never_folded() -> None:
    insns = [
        asm.ldx(4, R2, R1, 0),  # data
        asm.ldx(4, R3, R1, 4),  # data_end
        asm.mov64(R4, R2),
        asm.add64(R4, 14),
        asm.jgt(R4, R3, "out"),  # packet bounds check: the verifier needs it
        asm.mov64(R5, R2),
        asm.alu64(AluOp.SUB, R5, R2),  # pointer difference
        asm.jeq(R2, R2, "out"),  # pointer compare
        asm.mov64(R6, FP),
        asm.add64(R6, -8),
        asm.jeq(R6, 0, "out"),  # a stack pointer compared with NULL
        asm.ldx(1, R0, R2, 0),
        asm.exit_(),
        asm.mov64(R0, 2, label="out"),
        asm.exit_(),
    ]
    assert optimize(insns).insns == tuple(insns)


def test_helper_results_and_clobbered_registers_are_unknown() -> None:
    insns = [
        asm.mov64(R6, 1),
        asm.call_helper("ktime_get_ns"),
        asm.jeq(R0, 1, "out"),  # r0 is unknown after the call
        asm.mov64(R0, 0),
        asm.exit_(),
        asm.mov64(R0, R6, label="out"),  # r6 survives the call
        asm.exit_(),
    ]
    out = optimize(insns)
    assert [i for i in out.insns if i.is_conditional_jump] == [insns[2]]
    assert out.insns[5] == asm.mov64(R0, 1, label="out")


def test_stack_written_by_a_helper_is_not_trusted() -> None:
    # fib_lookup writes its results into the parameters: the constant stored there before
    # the call must not reach the use after it.
    insns = [
        asm.st(4, FP, -64, 5),
        asm.mov64(R6, R1),
        asm.mov64(R2, FP),
        asm.add64(R2, -64),
        asm.mov64(R3, 64),
        asm.mov64(R4, 0),
        asm.call_helper("fib_lookup"),
        asm.ldx(4, R0, FP, -64),
        asm.add64(R0, 1),
        asm.exit_(),
    ]
    assert optimize(insns).insns == tuple(insns)


def test_sign_extending_stack_loads_are_followed_exactly() -> None:
    golden([
        asm.st(1, FP, -1, 0xFF),
        memsx(1, R1, FP, -1),
        asm.mov64(R0, R1),
        asm.add64(R0, 1),
        asm.exit_(),
    ], """
              0: *(u8 *)(r10 - 0x1) = 0xff
              1: r1 = *(s8 *)(r10 - 0x1)
              2: r0 = -0x1
              3: r0 = 0x0
              4: exit
    """)


def test_atomic_fetch_results_are_unknown() -> None:
    insns = [
        asm.st(8, FP, -8, 1),
        asm.mov64(R1, 5),
        asm.atomic(8, AtomicOp(AtomicOp.ADD | AtomicOp.FETCH), FP, -8, R1),  # r1 = old value
        asm.mov64(R0, 7),
        asm.atomic(8, AtomicOp.CMPXCHG, FP, -8, R1),  # r0 = old value
        asm.mov64(R2, R0),
        asm.add64(R2, R1),
        asm.mov64(R0, R2),
        asm.exit_(),
    ]
    out = optimize(insns)
    assert out.insns == tuple(insns)


def test_functions_that_hide_a_stack_pointer_are_left_alone() -> None:
    # `r1 = 8; r1 += r10` makes a stack pointer the analysis takes for a scalar: stores
    # through it would not update its stack slots, so nothing in the function is folded.
    insns = [
        asm.st(8, FP, -8, 1),
        asm.mov64(R1, -8),
        asm.add64(R1, FP),
        asm.st(8, R1, 0, 2),
        asm.ldx(8, R0, FP, -8),
        asm.mov64(R0, R0),
        asm.mov64(R2, 1),
        asm.add64(R2, 1),
        asm.exit_(),
    ]
    assert optimize(insns).insns == tuple(insns)


def test_subprograms_fold_independently() -> None:
    golden([
        asm.mov64(R1, 4),
        asm.call("double"),
        asm.exit_(),
        asm.mov64(R0, R1, label="double"),  # r1 is an unknown argument here
        asm.add64(R0, R0),
        asm.mov64(R2, 3),
        asm.add64(R2, 3),
        asm.jeq(R2, 6, "done"),
        asm.mov64(R0, 0),
        asm.exit_(label="done"),
    ], """
              0: r1 = 0x4
              1: call double
              2: exit
        double:
              3: r0 = r1
              4: r0 += r0
              5: r2 = 0x3
              6: r2 = 0x6
              7: goto done
        done:
              8: exit
    """)


def test_idempotent_and_input_untouched() -> None:
    insns = (asm.mov64(R1, 5), asm.add64(R1, 1), asm.jeq(R1, 6, "x"), asm.mov64(R0, 1),
             asm.exit_(), asm.mov64(R0, R1, label="x"), asm.exit_())
    program = Program("t", insns)
    ctx = PassContext({}, ProgType.XDP)
    once = ConstantPropagation().run(program, ctx)
    assert program.insns == insns
    assert ConstantPropagation().run(once, ctx).insns == once.insns
    assert ctx.stats["constprop"]["taken"] == 1


def test_metadata_and_labels_survive_folding() -> None:
    first = asm.mov64(R1, 5, label="entry").with_meta(origin=0, note="keep")
    insns = [first, asm.add64(R1, 1).with_meta(origin=1), asm.mov64(R0, R1), asm.exit_()]
    out = optimize(insns)
    assert out.insns[1].meta.origin == 1
    assert out.insns[0] == first


# --- differential tests against the kernel -------------------------------------------------

PACKET = 96  # bytes of every test packet
WORK = (-48, -8)  # stack bytes the random code stores to, loads from and hands to a helper
DUMP = -136  # r0..r9 are copied here, then into the packet, when the program dumps them
CTX_SLOT = -8  # the context pointer, kept for the dump
ALU_OPS = [AluOp.ADD, AluOp.SUB, AluOp.MUL, AluOp.DIV, AluOp.OR, AluOp.AND, AluOp.LSH,
           AluOp.RSH, AluOp.MOD, AluOp.XOR, AluOp.MOV, AluOp.ARSH]
JUMP_OPS = [JmpOp.JEQ, JmpOp.JNE, JmpOp.JGT, JmpOp.JGE, JmpOp.JLT, JmpOp.JLE, JmpOp.JSET,
            JmpOp.JSGT, JmpOp.JSGE, JmpOp.JSLT, JmpOp.JSLE]
SCRATCH = [R0, R1, R2, R3, R4, R5, R6, R7, R8, R9]
regs = st.sampled_from(SCRATCH)
# Immediates that are often small and sometimes at the edges of the 32-bit range.
imm32 = st.one_of(st.integers(-4, 8), st.sampled_from([0x7FFFFFFF, -0x80000000, 0xFF, -256]),
                  st.integers(-(2**31), 2**31 - 1))
imm64 = st.one_of(imm32, st.integers(-(2**63), 2**63 - 1))


@st.composite
def constant_init(draw: st.DrawFn, reg: Reg) -> list[Instruction]:
    kind = draw(st.sampled_from(["mov64", "mov32", "ld_imm64"]))
    if kind == "ld_imm64":
        return [asm.ld_imm64(reg, draw(imm64))]
    return [(asm.mov64 if kind == "mov64" else asm.mov32)(reg, draw(imm32))]


@st.composite
def init(draw: st.DrawFn, reg: Reg) -> list[Instruction]:
    """A constant, or bytes of the packet (r2 points to it; unknown to the analysis)."""
    if draw(st.booleans()):
        return draw(constant_init(reg))
    size = draw(st.sampled_from([1, 2, 4, 8]))
    off = draw(st.integers(0, (64 - size) // size)) * size
    return [asm.ldx(size, reg, R2, off)]


@st.composite
def alu_op(draw: st.DrawFn) -> list[Instruction]:
    wide = draw(st.booleans())
    cls = Class.ALU64 if wide else Class.ALU
    bits = 64 if wide else 32
    dst = draw(regs)
    kind = draw(st.sampled_from(["binary"] * 6 + ["neg", "end", "movsx", "signed"]))
    if kind == "neg":
        return [Instruction(cls | AluOp.NEG, dst)]
    if kind == "end":
        if wide:
            return [Instruction(Class.ALU64 | AluOp.END, dst, 0, 0,
                                draw(st.sampled_from([16, 32, 64])))]
        src = draw(st.sampled_from([Source.K, Source.X]))
        return [Instruction(Class.ALU | AluOp.END | src, dst, 0, 0,
                            draw(st.sampled_from([16, 32, 64])))]
    if kind == "movsx":
        return [movsx(dst, draw(regs), draw(st.sampled_from([8, 16, 32] if wide else [8, 16])),
                      wide=wide)]
    op = draw(st.sampled_from([AluOp.DIV, AluOp.MOD] if kind == "signed" else ALU_OPS))
    off = 1 if kind == "signed" else 0
    if draw(st.booleans()):
        return [Instruction(cls | op | Source.X, dst, draw(regs), off)]
    if op in (AluOp.LSH, AluOp.RSH, AluOp.ARSH):
        imm = draw(st.integers(0, bits - 1))
    else:
        imm = draw(imm32)
        if op in (AluOp.DIV, AluOp.MOD) and imm == 0:
            imm = 3
    return [Instruction(cls | op | Source.K, dst, 0, off, imm)]


@st.composite
def stack_op(draw: st.DrawFn) -> list[Instruction]:
    size = draw(st.sampled_from([1, 2, 4, 8]))
    slots = (WORK[1] - WORK[0]) // size
    off = WORK[0] + size * draw(st.integers(0, slots - 1))
    kind = draw(st.sampled_from(["st", "stx", "ldx", "ldsx", "atomic"]))
    if kind == "st":
        return [asm.st(size, FP, off, draw(imm32))]
    if kind == "stx":
        return [asm.stx(size, FP, off, draw(regs))]
    if kind == "ldx" or (kind == "ldsx" and size == 8):
        return [asm.ldx(size, draw(regs), FP, off)]
    if kind == "ldsx":
        return [memsx(size, draw(regs), FP, off)]
    size = draw(st.sampled_from([4, 8]))
    off = WORK[0] + size * draw(st.integers(0, (WORK[1] - WORK[0]) // size - 1))
    op = draw(st.sampled_from([AtomicOp.ADD, AtomicOp.OR, AtomicOp.AND, AtomicOp.XOR,
                               AtomicOp.XCHG, AtomicOp.CMPXCHG]))
    fetch = op not in (AtomicOp.XCHG, AtomicOp.CMPXCHG) and draw(st.booleans())
    src = draw(st.sampled_from(SCRATCH[1:]))  # cmpxchg compares with r0: keep them apart
    insn = asm.atomic(size, op, FP, off, src)
    return [insn._replace(imm=insn.imm | AtomicOp.FETCH) if fetch else insn]


@st.composite
def helper_op(draw: st.DrawFn) -> list[Instruction]:
    """r0 = bpf_csum_diff(stack bytes, n, NULL, 0, seed): a helper that reads the stack.
    It clobbers r1-r5, which get constants again."""
    words = (WORK[1] - WORK[0]) // 4
    first = draw(st.integers(0, words - 1))
    count = draw(st.integers(1, words - first))
    code = [
        asm.mov64(R5, draw(st.sampled_from([R0, R6, R7, R8, R9]))),
        asm.mov64(R1, FP),
        asm.add64(R1, WORK[0] + 4 * first),
        asm.mov64(R2, 4 * count),
        asm.mov64(R3, 0),
        asm.mov64(R4, 0),
        asm.call_helper("csum_diff"),
    ]
    for reg in (R1, R2, R3, R4, R5):
        code += draw(constant_init(reg))
    return code


@st.composite
def random_program(draw: st.DrawFn) -> Program:
    """A verifier-valid XDP program: registers from constants and packet bytes, a random
    body with forward branches, r0 = low ^ high half of a chosen register at the end; with
    `dump`, r0-r9 are also copied into the packet."""
    dump = draw(st.booleans())
    code: list[Instruction] = [
        asm.stx(8, FP, CTX_SLOT, R1),
        asm.ldx(4, R2, R1, 0),
        asm.ldx(4, R3, R1, 4),
        asm.mov64(R4, R2),
        asm.add64(R4, 64),
        asm.jgt(R4, R3, "bail"),
    ]
    for reg in (R0, R1, R3, R4, R5, R6, R7, R8, R9, R2):  # r2 (the packet) last
        code += draw(init(reg))
    for off in range(WORK[0], WORK[1], 8):
        code.append(asm.stx(8, FP, off, draw(regs)) if draw(st.booleans())
                    else asm.st(8, FP, off, draw(imm32)))
    ops = draw(st.lists(st.one_of(alu_op(), alu_op(), alu_op(), stack_op(), helper_op(),
                                  st.just([Instruction(-1)])),  # a branch, placed below
                        min_size=1, max_size=30))
    targets: dict[int, str] = {}
    body: list[list[Instruction]] = []
    for n, op in enumerate(ops):
        if op[0].opcode != -1:
            body.append(op)
            continue
        target = draw(st.integers(n + 1, len(ops)))
        label = targets.setdefault(target, f"L{target}")
        # (no plain `goto`: the code after it would be unreachable, which the verifier
        # refuses; constprop makes gotos out of the branches it decides)
        wide = draw(st.booleans())
        operand: Reg | int = draw(regs) if draw(st.booleans()) else draw(imm32)
        body.append([asm.jmp(draw(st.sampled_from(JUMP_OPS)), draw(regs), operand, label,
                             wide=wide)])
    for n, op in enumerate(body):
        if n in targets:
            op[0] = op[0].with_label(targets[n])
        code += op
    result = draw(regs)
    if dump:
        tail = [asm.stx(8, FP, DUMP + 8 * r, reg) for r, reg in enumerate(SCRATCH)]
        tail += [
            asm.ldx(8, R1, FP, CTX_SLOT),
            asm.ldx(4, R2, R1, 0),
            asm.ldx(4, R3, R1, 4),
            asm.mov64(R4, R2),
            asm.add64(R4, 8 * len(SCRATCH)),
            asm.jgt(R4, R3, "bail"),
        ]
        for r in range(len(SCRATCH)):
            tail += [asm.ldx(8, R5, FP, DUMP + 8 * r), asm.stx(8, R2, 8 * r, R5)]
        tail.append(asm.ldx(8, R0, FP, DUMP + 8 * result))
    else:
        tail = [asm.mov64(R0, result)]
    tail += [
        asm.mov64(R1, R0),
        asm.rsh64(R1, 32),
        asm.xor64(R0, R1),  # the return value is 32 bits: fold the high half in
        asm.exit_(),
        asm.mov64(R0, 0, label="bail"),
        asm.exit_(),
    ]
    if len(body) in targets:
        tail[0] = tail[0].with_label(targets[len(body)])
    code += tail
    return Program("rand", tuple(code))


def run_in_kernel(program: Program, packet: bytes, maps: Mapping[str, int] | None = None
                  ) -> tuple[int, bytes | None]:
    encoded = encode(program, maps)
    with load_program(encoded.bytecode, ProgType.XDP, name=program.name) as prog:
        result = prog.test_run(packet)
        return result.retval, result.data


def cleanup(program: Program, known: Mapping[str, bytes] | None = None) -> Program:
    maps = {name: MapSpec(name, MapType.ARRAY, 4, len(value), 1, int(MapFlags.RDONLY_PROG))
            for name, value in (known or {}).items()}
    ctx = PassContext(maps, ProgType.XDP, dict(known or {}))
    return Pipeline(build(["constprop", "dce"]), validate=True).run(
        program, ctx)


@pytest.mark.kernel
@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(program=random_program(), packet=st.binary(min_size=PACKET, max_size=PACKET))
def test_random_programs_compute_the_same_in_the_kernel(program: Program,
                                                        packet: bytes) -> None:
    optimized = cleanup(program)
    assert len(optimized.insns) <= len(program.insns)
    expected = run_in_kernel(program, packet)
    got = run_in_kernel(optimized, packet)
    assert got == expected, f"{listing(program)}\n---- optimized:\n{listing(optimized)}"


@st.composite
def direct_value_program(draw: st.DrawFn, size: int) -> Program:
    """Loads of every size (zero- and sign-extending) from a direct map value, with ALU
    and branches on the results, mixed with packet bytes the analysis does not know."""
    code: list[Instruction] = [
        asm.ldx(4, R2, R1, 0),
        asm.ldx(4, R3, R1, 4),
        asm.mov64(R4, R2),
        asm.add64(R4, 64),
        asm.jgt(R4, R3, "bail"),
        asm.ldx(8, R8, R2, draw(st.integers(0, 7)) * 8),  # unknown
        asm.ld_map_value(R6, "cfg", draw(st.integers(0, 3)) * 4),
        asm.mov64(R0, 0),
    ]
    for n in range(draw(st.integers(1, 12))):
        load_size = draw(st.sampled_from([1, 2, 4, 8]))
        off = draw(st.integers(0, (size - 16 - load_size) // load_size)) * load_size
        reg = draw(st.sampled_from([R1, R3, R4, R5, R7]))
        if load_size < 8 and draw(st.booleans()):
            code.append(memsx(load_size, reg, R6, off))
        else:
            code.append(asm.ldx(load_size, reg, R6, off))
        op = draw(st.sampled_from([AluOp.ADD, AluOp.XOR, AluOp.MUL, AluOp.RSH]))
        if op == AluOp.RSH:
            code.append(asm.alu64(op, R0, draw(st.integers(0, 63))))
        code.append(asm.alu64(op if op != AluOp.RSH else AluOp.ADD, R0, reg))
        if draw(st.booleans()):
            other: Reg | int = R8 if draw(st.booleans()) else draw(imm32)
            code += [
                asm.jmp(draw(st.sampled_from(JUMP_OPS)), reg, other, f"skip{n}",
                        wide=draw(st.booleans())),
                asm.xor64(R0, draw(imm32)),
                asm.mov64(R9, 0, label=f"skip{n}"),
            ]
    code += [
        asm.mov64(R1, R0),
        asm.rsh64(R1, 32),
        asm.xor64(R0, R1),
        asm.exit_(),
        asm.mov64(R0, 0, label="bail"),
        asm.exit_(),
    ]
    return Program("direct", tuple(code))


@pytest.mark.kernel
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=st.binary(min_size=48, max_size=48),
       packet=st.binary(min_size=PACKET, max_size=PACKET))
def test_direct_map_values_fold_and_agree_with_the_kernel(data: st.DataObject, value: bytes,
                                                          packet: bytes) -> None:
    program = data.draw(direct_value_program(len(value)))
    with Map.create(MapType.ARRAY, 4, len(value), 1, flags=MapFlags.RDONLY_PROG,
                    name="cfg") as cfg:
        cfg[0] = value
        cfg.freeze()
        optimized = cleanup(program, {"cfg": value})
        # Every load from the value is folded, and then the pointer itself is dead.
        assert not any(i.src == PseudoSrc.MAP_VALUE and i.is_ld_imm64 for i in optimized.insns)
        maps = {"cfg": cfg.fd.number}
        expected = run_in_kernel(program, packet, maps)
        got = run_in_kernel(optimized, packet, maps)
        assert got == expected, f"{listing(program)}\n---- optimized:\n{listing(optimized)}"
