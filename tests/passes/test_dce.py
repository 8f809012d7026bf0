"""dce: golden tests on small programs, then the network functions in the kernel.

Golden tests build a program with `morpheus.ir.asm`, run the pass and compare the listing
with the expected text (indentation aside). Random programs run against the kernel in
test_constprop.py (constprop + dce together).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

import pytest

import morpheus.passes.constprop  # noqa: F401  (registers the constprop pass)
from morpheus import nf
from morpheus.ir import Instruction, Program, asm, encode, listing
from morpheus.ir.asm import FP, R0, R1, R2, R3, R4, R5, R6, R7, R8, R10
from morpheus.ir.opcodes import LD_IMM64, AluOp, AtomicOp, PseudoSrc
from morpheus.passes.dce import DeadCodeElimination, apply_edits, register_effects
from morpheus.passes.pipeline import REGISTRY, PassContext, Pipeline, build
from morpheus.uapi import ProgType


def lines(text: str) -> list[str]:
    """Listing lines without indentation (labels and instructions stay distinguishable)."""
    return [line.strip() for line in text.strip().splitlines()]


def dce(insns: Sequence[Instruction], **options: bool) -> Program:
    ctx = PassContext({}, ProgType.XDP)
    return DeadCodeElimination(**options).run(Program("t", tuple(insns)), ctx)  # type: ignore[arg-type]


def golden(insns: Sequence[Instruction], expected: str, **options: bool) -> Program:
    out = dce(insns, **options)
    assert lines(listing(out)) == ["t:", *lines(expected)]
    return out


def key_on_stack(offset: int = -4) -> list[Instruction]:
    """r0 = bpf_map_lookup_elem(&table, &(u32 at r10 + offset)), key = 0."""
    return [
        asm.st(4, FP, offset, 0),
        asm.mov64(R2, FP),
        asm.add64(R2, offset),
        asm.ld_map_fd(R1, "table"),
        asm.call_helper("map_lookup_elem"),
    ]


def test_registered_with_defaults() -> None:
    assert REGISTRY["dce"] is DeadCodeElimination
    assert build(["dce"]) == [DeadCodeElimination()]


def test_register_effects() -> None:
    assert register_effects(asm.add64(R1, R2)) == (0b110, 0b10)
    assert register_effects(asm.mov64(R1, R2)) == (0b100, 0b10)
    assert register_effects(asm.mov64(R1, 3)) == (0, 0b10)
    # Helpers of known arity read only their arguments; the others read r1-r5.
    assert register_effects(asm.call_helper("ktime_get_ns")) == (0, 0b111111)
    assert register_effects(asm.call_helper("map_lookup_elem")) == (0b110, 0b111111)
    assert register_effects(asm.call_helper("trace_printk")) == (0b111110, 0b111111)
    assert register_effects(asm.exit_()) == (1, 0)
    assert register_effects(asm.stx(8, FP, -8, R3)) == (0b10000001000, 0)
    fetch = asm.atomic(8, AtomicOp(AtomicOp.ADD | AtomicOp.FETCH), R1, 0, R2)
    assert register_effects(fetch) == (0b110, 0b100)
    assert register_effects(asm.atomic(8, AtomicOp.CMPXCHG, R1, 0, R2)) == (0b111, 0b1)


# --- (a) unreachable code ---------------------------------------------------------------------


def test_unreachable_blocks_and_uncalled_functions_go() -> None:
    golden([
        asm.mov64(R0, 1),  # the call overwrites r0: dead
        asm.call("used"),
        asm.ja("out"),
        asm.mov64(R0, 2, label="dead"),
        asm.call("unused"),  # only called from dead code
        asm.jeq(R0, 0, "dead"),
        asm.exit_(label="out"),
        asm.mov64(R0, 3, label="used"),
        asm.exit_(),
        asm.mov64(R0, 4, label="unused"),
        asm.exit_(),
    ], """
              0: call used
        out:
              1: exit
        used:
              2: r0 = 0x3
              3: exit
    """)


def test_callbacks_stay_and_a_dead_tail_label_is_dropped() -> None:
    # A function whose address is taken (bpf_loop's callback) is live; an unreachable
    # labelled block at the very end of the program disappears with its label.
    golden([
        asm.mov64(R1, 4),
        Instruction(LD_IMM64, R2, PseudoSrc.FUNC, reference="callback"),  # r2 = &callback
        asm.mov64(R3, 0),
        asm.mov64(R4, 0),
        asm.call_helper("loop"),
        asm.exit_(),
        asm.mov64(R0, 0, label="callback"),
        asm.exit_(),
        asm.ja("callback", label="tail"),
    ], """
              0: r1 = 0x4
              1: r2 = func[callback] ll
              3: r3 = 0x0
              4: r4 = 0x0
              5: call bpf_loop
              6: exit
        callback:
              7: r0 = 0x0
              8: exit
    """)


# --- (b) dead register definitions ---------------------------------------------------------------


def test_dead_definitions_go_in_chains() -> None:
    golden([
        asm.ldx(4, R6, R1, 0xC),
        asm.mov64(R1, 5),  # overwritten
        asm.mov64(R1, 6),  # read by the call (a helper of unknown arity reads r1-r5)
        asm.mov64(R7, R6),
        asm.add64(R7, 1),
        asm.mov64(R8, R7),  # r7 and r8: a chain nothing reads
        asm.call_helper("trace_printk"),
        asm.mov64(R0, R6),
        asm.mov64(R6, 2),  # dead at exit
        asm.exit_(),
    ], """
              0: r6 = *(u32 *)(r1 + 0xc)
              1: r1 = 0x6
              2: call bpf_trace_printk
              3: r0 = r6
              4: exit
    """)


def test_registers_past_a_helpers_arguments_are_not_read() -> None:
    golden([
        asm.mov64(R6, R1),
        asm.mov64(R3, 7),  # map_lookup_elem takes two arguments: r3 is dead
        asm.mov64(R1, 1),  # ktime_get_ns takes none
        asm.call_helper("ktime_get_ns"),
        asm.mov64(R2, R10),
        asm.add64(R2, -8),
        asm.st(8, R10, -8, 0),
        asm.mov64(R4, R2),  # a stack pointer the helper is not given
        asm.ld_map_fd(R1, "m"),
        asm.call_helper("map_lookup_elem"),
        asm.exit_(),
    ], """
              0: call bpf_ktime_get_ns
              1: r2 = r10
              2: r2 += -0x8
              3: *(u64 *)(r10 - 0x8) = 0x0
              4: r1 = map[m] ll
              6: call bpf_map_lookup_elem
              7: exit
    """)


def test_only_r0_is_live_when_a_subprogram_returns() -> None:
    golden([
        asm.mov64(R6, 7),
        asm.call("f"),
        asm.add64(R0, R6),  # r6 is callee-saved: the callee's r6 is its own
        asm.exit_(),
        asm.mov64(R6, 1, label="f"),
        asm.mov64(R0, R1),
        asm.mov64(R2, 5),
        asm.exit_(),
    ], """
              0: r6 = 0x7
              1: call f
              2: r0 += r6
              3: exit
        f:
              4: r0 = r1
              5: exit
    """)


def test_side_effects_stay() -> None:
    insns = [
        asm.ldx(4, R2, R1, 0),
        asm.ldx(4, R3, R1, 4),
        asm.mov64(R4, R2),
        asm.add64(R4, 1),
        asm.jgt(R4, R3, "out"),
        asm.st(1, R2, 0, 0x42),  # a packet store
        asm.mov64(R5, 1),
        asm.atomic(8, AtomicOp(AtomicOp.ADD | AtomicOp.FETCH), FP, -8, R5),  # fetch result unused
        asm.mov64(R0, 2, label="out"),
        asm.exit_(),
    ]
    insns.insert(0, asm.st(8, FP, -8, 0))
    assert dce(insns).insns == tuple(insns)


# --- (c) dead stack stores -----------------------------------------------------------------------


def test_overwritten_and_unread_stores_go() -> None:
    golden([
        asm.st(8, FP, -8, 1),  # overwritten before any read
        asm.st(8, FP, -8, 2),
        asm.st(4, FP, -16, 3),  # never read
        asm.st(4, FP, -24, 4),  # partly read (one byte)
        asm.ldx(8, R0, FP, -8),
        asm.ldx(1, R1, FP, -21),
        asm.add64(R0, R1),
        asm.exit_(),
    ], """
              0: *(u64 *)(r10 - 0x8) = 0x2
              1: *(u32 *)(r10 - 0x18) = 0x4
              2: r0 = *(u64 *)(r10 - 0x8)
              3: r1 = *(u8 *)(r10 - 0x15)
              4: r0 += r1
              5: exit
    """)


def test_stack_read_by_a_helper_stays() -> None:
    # The key at r10 - 8 is read by the lookup, and so is everything above it; the store
    # below the key pointer is read by nothing.
    golden([
        asm.st(4, FP, -12, 9),  # below the key: dead
        asm.st(2, FP, -2, 7),  # above the key: the helper may read it
        *key_on_stack(-8),
        asm.mov64(R0, 0),
        asm.exit_(),
    ], """
              0: *(u16 *)(r10 - 0x2) = 0x7
              1: *(u32 *)(r10 - 0x8) = 0x0
              2: r2 = r10
              3: r2 += -0x8
              4: r1 = map[table] ll
              6: call bpf_map_lookup_elem
              7: r0 = 0x0
              8: exit
    """)


def test_stack_read_through_copies_and_subprogram_arguments() -> None:
    golden([
        asm.st(8, FP, -8, 1),  # read through r3
        asm.st(8, FP, -16, 2),  # read by the subprogram (r1 points to it)
        asm.st(8, FP, -24, 3),  # below every pointer: dead
        asm.mov64(R3, FP),
        asm.add64(R3, -16),
        asm.mov64(R4, R3),
        asm.ldx(8, R6, R4, 8),
        asm.mov64(R1, R3),
        asm.call("sum"),
        asm.add64(R0, R6),
        asm.exit_(),
        asm.st(8, FP, -8, 5, label="sum"),  # the subprogram's own frame: dead
        asm.ldx(8, R0, R1, 0),
        asm.exit_(),
    ], """
              0: *(u64 *)(r10 - 0x8) = 0x1
              1: *(u64 *)(r10 - 0x10) = 0x2
              2: r3 = r10
              3: r3 += -0x10
              4: r4 = r3
              5: r6 = *(u64 *)(r4 + 0x8)
              6: r1 = r3
              7: call sum
              8: r0 += r6
              9: exit
        sum:
             10: r0 = *(u64 *)(r1 + 0x0)
             11: exit
    """)


def test_unknown_offsets_and_escaped_pointers_keep_every_store() -> None:
    unknown_offset = [
        asm.st(8, FP, -8, 1),
        asm.st(8, FP, -16, 2),
        asm.ldx(4, R4, R1, 0xC),
        asm.and64(R4, 8),
        asm.mov64(R3, FP),
        asm.add64(R3, -16),
        asm.add64(R3, R4),  # r10 - 16 or r10 - 8: a read may see either slot
        asm.ldx(8, R0, R3, 0),
        asm.exit_(),
    ]
    assert dce(unknown_offset).insns == tuple(unknown_offset)
    escaped = [
        asm.st(8, FP, -8, 1),  # no load reads it, but a spilled pointer might
        asm.mov64(R3, FP),
        asm.add64(R3, -8),
        asm.stx(8, FP, -16, R3),  # the pointer goes to memory: stop tracking
        asm.ldx(8, R4, FP, -16),
        asm.ldx(8, R0, R4, 0),
        asm.exit_(),
    ]
    assert dce(escaped).insns == tuple(escaped)
    assert dce([*escaped[:1], asm.mov64(R0, 0), asm.exit_()], dead_stores=False).insns[0] \
        == escaped[0]


def test_stores_before_a_dead_load_go_too() -> None:
    # Strong liveness: the load is dead, so the store it would read is dead as well.
    golden([
        asm.st(8, FP, -8, 1),
        asm.ldx(8, R1, FP, -8),
        asm.mov64(R0, 0),
        asm.exit_(),
    ], """
              0: r0 = 0x0
              1: exit
    """)


# --- (d) jumps -----------------------------------------------------------------------------------


def test_jumps_to_the_next_instruction_go() -> None:
    golden([
        asm.ldx(4, R2, R1, 0xC),
        asm.mov64(R3, 1),  # dead once the comparison goes
        asm.jeq(R2, R3, "next"),  # to where execution goes anyway (once threaded)
        asm.ja("next2", label="next"),  # to the next instruction
        asm.mov64(R0, R2, label="next2"),
        asm.exit_(),
    ], """
              0: r2 = *(u32 *)(r1 + 0xc)
        next2:
              1: r0 = r2
              2: exit
    """)


def test_jumps_are_threaded_through_gotos() -> None:
    golden([
        asm.ldx(4, R2, R1, 0xC),
        asm.jeq(R2, 1, "hop"),
        asm.jeq(R2, 2, "hop2"),
        asm.mov64(R0, 0),
        asm.exit_(),
        asm.ja("hop2", label="hop"),
        asm.ja("end", label="hop2"),
        asm.mov64(R0, 1, label="end"),
        asm.exit_(),
    ], """
              0: r2 = *(u32 *)(r1 + 0xc)
              1: if r2 == 0x1 goto end
              2: if r2 == 0x2 goto end
              3: r0 = 0x0
              4: exit
        end:
              5: r0 = 0x1
              6: exit
    """)


def test_loops_keep_their_jumps_and_registers() -> None:
    insns = [
        asm.mov64(R0, 0),
        asm.mov64(R1, 10),
        asm.add64(R0, R1, label="loop"),
        asm.alu64(AluOp.SUB, R1, 1),
        asm.jne(R1, 0, "loop"),
        asm.exit_(),
    ]
    assert dce(insns).insns == tuple(insns)


# --- bookkeeping -------------------------------------------------------------------------------


def test_btf_function_info_moves_to_the_next_instruction() -> None:
    insns = (
        asm.mov64(R6, 5).with_meta(func_btf_id=3),  # dead: the function's first instruction
        asm.call("f"),
        asm.exit_(),
        asm.mov64(R2, 1, label="f").with_meta(func_btf_id=4),  # dead too
        asm.mov64(R0, 0),
        asm.exit_(),
    )
    out = dce(insns)
    assert lines(listing(out)) == ["t:", "0: call f", "1: exit", "f:", "2: r0 = 0x0",
                                   "3: exit"]
    assert encode(out).func_info == ((0, 3), (2, 4))


def test_apply_edits_redirects_labels_of_deleted_instructions() -> None:
    program = Program("t", (asm.jeq(R1, 0, "a"), asm.mov64(R0, 1, label="a"),
                            asm.mov64(R0, 2, label="b"), asm.exit_()))
    out = apply_edits(program, {1: ()})
    assert lines(listing(out)) == ["t:", "0: if r1 == 0x0 goto b", "b:", "1: r0 = 0x2",
                                   "2: exit"]


def test_idempotent_and_input_untouched() -> None:
    insns = (asm.mov64(R1, 1), asm.mov64(R1, 2), asm.ja("x"), asm.mov64(R0, 1, label="x"),
             asm.exit_())
    program = Program("t", insns)
    ctx = PassContext({}, ProgType.XDP)
    once = DeadCodeElimination().run(program, ctx)
    assert program.insns == insns
    assert DeadCodeElimination().run(once, ctx).insns == once.insns
    assert ctx.stats["dce"]["dead_defs"] == 2 and ctx.stats["dce"]["jumps"] == 1


def test_constprop_then_dce_removes_configuration_branches() -> None:
    # The point of the two passes: code behind a configuration constant disappears.
    config = struct.pack("<II", 0, 1)  # feature A off, feature B on
    insns = [
        asm.ld_map_value(R6, "config", 0),
        asm.ldx(4, R7, R6, 0),
        asm.ldx(4, R8, R6, 4),
        asm.mov64(R0, 2),
        asm.jeq(R7, 0, "no_a"),
        asm.st(8, FP, -8, 1),
        *key_on_stack(-8),
        asm.mov64(R0, 1),
        asm.jeq(R8, 0, "no_b", label="no_a"),
        asm.add64(R0, 1),
        asm.exit_(label="no_b"),
    ]
    ctx = PassContext({}, ProgType.XDP, {"config": config})
    out = Pipeline(build(["constprop", "dce"])).run(
        Program("t", tuple(insns)), ctx)
    assert lines(listing(out)) == ["t:", "no_a:", "0: r0 = 0x3", "no_b:", "1: exit"]


# --- the network functions in the kernel ---------------------------------------------------


@pytest.mark.kernel
@pytest.mark.parametrize("name", nf.NAMES)
def test_network_functions_still_load_after_cleanup(name: str) -> None:
    from morpheus.loader import load_program_spec
    from morpheus.nf.env import NFEnv

    with NFEnv.start(name) as env:
        spec = env.spec.program(env.nf.program)
        ctx = PassContext(dict(env.spec.maps), spec.type)
        optimized = Pipeline(build(["constprop", "dce"]), validate=True).run(spec.program, ctx)
        assert len(optimized.insns) <= len(spec.program.insns)
        with load_program_spec(spec, env.collection.maps, program=optimized,
                               btf_fd=env.collection.btf_fd) as prog:
            if name != "router":
                return
            # The router keeps no state that changes verdicts: both versions must agree on
            # every scripted edge case.
            frames = env.nf.module.edge_cases(env.config, random.Random(1))
            for frame, ingress in frames:
                expected = env.run(frame, ingress)
                got = env.run(frame, ingress, program=prog)
                assert (got.retval, got.data) == (expected.retval, expected.data)

