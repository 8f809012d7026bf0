"""Path specialization: each inlined hot value gets its own copy of the continuation, and
what the copies make constant folds (golden text forms; the end-to-end equivalence of the
NFs with it is in tests/test_optimizer.py)."""

from __future__ import annotations

import struct

from morpheus.ir import Program, asm, listing
from morpheus.ir.asm import R0, R1, R2, R3, R10
from morpheus.ir.program import with_origins
from morpheus.obj import MapSpec
from morpheus.passes.constprop import ConstantPropagation
from morpheus.passes.dce import DeadCodeElimination
from morpheus.passes.inline import InlineEntry, InlinePlan, InlineTables, SitePlan
from morpheus.passes.paths import SpecializePaths
from morpheus.passes.pipeline import PassContext
from morpheus.uapi import MapType, ProgType


def program() -> Program:
    return with_origins(Program("p", (
        asm.ldx(4, R3, R1, 0xC),  # the key: ingress_ifindex
        asm.stx(4, R10, -4, R3),
        asm.mov64(R2, R10),
        asm.add64(R2, -4),
        asm.ld_map_fd(R1, "t"),
        asm.call_helper("map_lookup_elem"),  # instruction 5
        asm.jeq(R0, 0, "out"),
        asm.ldx(4, R0, R0, 0),
        asm.exit_(),
        asm.mov64(R0, 2, label="out"),
        asm.exit_(),
    )))


def inlined(ctx: PassContext) -> Program:
    # Keys 1 and 9 share the value 10: they share one copy.
    entries = tuple(InlineEntry(struct.pack("<I", k), struct.pack("<I", v), w)
                    for k, v, w in ((1, 10, 0.2), (5, 50, 0.5), (9, 10, 0.3)))
    plan = InlinePlan((SitePlan(5, "t", entries),))
    return InlineTables(plan, values_map="mph_hot").run(program(), ctx)


def context() -> PassContext:
    return PassContext({"t": MapSpec("t", MapType.HASH, 4, 4, 100)}, ProgType.XDP)


def body(p: Program) -> list[str]:
    return [line.strip() for line in listing(p).splitlines()[1:]]


def test_golden_one_copy_per_distinct_value() -> None:
    ctx = context()
    out = SpecializePaths((5,)).run(inlined(ctx), ctx)
    text = body(out)
    assert text[6:] == [
        "7: if w3 == 0x5 goto mph5.0",
        "8: if w3 == 0x9 goto mph5.1",
        "9: if w3 != 0x1 goto mph5.miss",
        "10: r0 = map_value[mph_hot][0x8] ll  ; inlined t",
        "12: goto mph5.cont.p5.0",
        "mph5.0:",
        "13: r0 = map_value[mph_hot][0x0] ll  ; inlined t",
        "15: goto mph5.cont.p5.1",
        "mph5.1:",
        "16: r0 = map_value[mph_hot][0x8] ll  ; inlined t",
        "18: goto mph5.cont.p5.0",
        "mph5.miss:",
        "19: call bpf_map_lookup_elem",
        "mph5.cont:",  # the miss path keeps the original continuation
        "20: if r0 == 0x0 goto out",
        "21: r0 = *(u32 *)(r0 + 0x0)",
        "22: exit",
        "out:",
        "23: r0 = 0x2",
        "24: exit",
        "mph5.cont.p5.0:",
        "25: if r0 == 0x0 goto out.p5.0",
        "26: r0 = *(u32 *)(r0 + 0x0)",
        "27: exit",
        "out.p5.0:",
        "28: r0 = 0x2",
        "29: exit",
        "mph5.cont.p5.1:",
        "30: if r0 == 0x0 goto out.p5.1",
        "31: r0 = *(u32 *)(r0 + 0x0)",
        "32: exit",
        "out.p5.1:",
        "33: r0 = 0x2",
        "34: exit",
    ]
    assert ctx.stats["path_copies"] == [{"site": 5, "copies": 2, "insns": 10}]


def test_golden_the_copies_fold_to_constants() -> None:
    ctx = context()
    out = SpecializePaths((5,)).run(inlined(ctx), ctx)
    out = DeadCodeElimination().run(ConstantPropagation().run(out, ctx), ctx)
    assert body(out)[6:] == [
        "7: if w3 == 0x5 goto mph5.cont.p5.1",
        "8: if w3 == 0x9 goto mph5.cont.p5.0",
        "9: if w3 != 0x1 goto mph5.miss",
        "10: goto mph5.cont.p5.0",
        "mph5.miss:",
        "11: call bpf_map_lookup_elem",
        "mph5.cont:",
        "12: if r0 == 0x0 goto out",
        "13: r0 = *(u32 *)(r0 + 0x0)",
        "14: exit",
        "out:",
        "15: r0 = 0x2",
        "16: exit",
        "mph5.cont.p5.0:",
        "17: r0 = 0xa",
        "18: exit",
        "mph5.cont.p5.1:",
        "19: r0 = 0x32",
        "20: exit",
    ]


def test_the_budget_keeps_the_most_shared_values() -> None:
    ctx = context()
    out = SpecializePaths((5,), budget=5).run(inlined(ctx), ctx)
    text = body(out)
    assert "12: goto mph5.cont.p5.0" in text  # value 10 (two keys) got the one copy
    assert "15: goto mph5.cont" in text  # value 50 kept the shared continuation
    assert ctx.stats["path_copies"] == [{"site": 5, "copies": 1, "insns": 5}]


def test_nothing_to_copy_leaves_the_program_alone() -> None:
    ctx = context()
    before = inlined(ctx)
    assert SpecializePaths((5,), budget=4).run(before, ctx) == before  # a copy takes 5
    assert SpecializePaths((99,)).run(before, ctx) == before  # no such site
    assert SpecializePaths((5,)).run(program(), ctx) == program()  # not inlined


def test_a_site_whose_continuation_holds_another_tree_is_left_alone() -> None:
    ctx = context()
    out = SpecializePaths((5,), trees=(5, 20)).run(inlined(ctx), ctx)
    assert "p5.0" in listing(out)  # no mph20.* label after site 5: copied
    renamed = inlined(ctx)
    renamed = renamed.with_insns(i.with_label("mph20.0") if i.label == "out" else
                                 i.with_reference("mph20.0") if i.reference == "out" else i
                                 for i in renamed.insns)
    assert SpecializePaths((5,), trees=(5, 20)).run(renamed, ctx) == renamed
