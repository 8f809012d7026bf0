"""The lifter's SSA construction (`userspace.ssa.Registers`) on small CFGs: phis where
values differ, none where they agree, loop headers completed after their back edge, and
never a value used where it does not dominate (the JIT's differential tests run the
lifted code; these pin down the construction itself)."""

from __future__ import annotations

from morpheus.userspace.ssa import UNDEF, Registers

ENTRY = Registers.ENTRY
ARGS = {r: f"%a{r}" if 1 <= r <= 5 else UNDEF for r in range(10)}


def _emit(regs: Registers, block: int, succs: list[int], writes: dict[int, str]
          ) -> dict[int, str]:
    regs.begin(block)
    seen = {r: regs.read(r) for r in range(10)}
    for r, v in writes.items():
        regs.write(r, v)
    regs.end(block, succs)
    return seen


def test_a_join_gets_a_phi_only_where_the_values_differ() -> None:
    # 0 → 1, 0 → 2, 1 → 3, 2 → 3
    regs = Registers({0: [ENTRY], 1: [0], 2: [0], 3: [1, 2]}, ARGS)
    _emit(regs, 0, [1, 2], {6: "%t1", 7: "%t2"})
    _emit(regs, 1, [3], {6: "%t3"})
    _emit(regs, 2, [3], {})
    at_join = _emit(regs, 3, [], {})
    regs.finish()
    assert at_join[7] == "%t2" and at_join[1] == "%a1"
    phi = at_join[6]
    assert phi.startswith("%phi")
    lines = regs.phi_lines([f"use {phi}"], {0: "L0", 1: "L1", 2: "L2", ENTRY: "entry"})
    assert lines == {3: [f"  {phi} = phi i64 [ %t3, %L1 ], [ %t1, %L2 ]"]}


def test_an_undefined_path_keeps_the_phi_of_an_instruction_result() -> None:
    # r6 is written on one side only: its value there does not dominate the join.
    regs = Registers({0: [ENTRY], 1: [0], 2: [1, 0]}, ARGS)
    _emit(regs, 0, [1, 2], {})
    _emit(regs, 1, [2], {6: "%t9", 7: "42"})
    at_join = _emit(regs, 2, [], {})
    regs.finish()
    assert at_join[6].startswith("%phi")  # %t9 does not dominate block 2
    assert at_join[7] == "42"  # a constant does: the undefined path may have any value


def test_a_loop_header_is_completed_after_its_back_edge() -> None:
    # 0 → 1 (header), 1 → 2 (body), 2 → 1 (back edge), 1 → 3 (exit)
    regs = Registers({0: [ENTRY], 1: [0, 2], 2: [1], 3: [1]}, ARGS)
    _emit(regs, 0, [1], {6: "0", 7: "%t1"})
    header = _emit(regs, 1, [2, 3], {})
    body = _emit(regs, 2, [1], {6: "%t5"})  # r6 changes around the loop, r7 does not
    _emit(regs, 3, [], {})
    regs.finish()
    assert regs.render(header[7]) == "%t1"  # the trivial phi is gone
    assert regs.render(header[6]) == header[6]
    assert regs.render(body[6]) == header[6]
    lines = regs.phi_lines([header[6]], {0: "L0", 1: "L1", 2: "L2", 3: "L3", ENTRY: "entry"})
    assert lines == {1: [f"  {header[6]} = phi i64 [ 0, %L0 ], [ %t5, %L2 ]"]}
    assert regs.substitute(f"x {header[7]} {UNDEF}") == "x %t1 0"
