"""The demonstrations that a mutant placement is equivalent (tests.world.equivalent) say
yes only where the mutated instruction is reached by frames XDP never runs on, and the
kernel fact they rest on holds."""

from __future__ import annotations

import errno

import pytest

from morpheus.ir import Program, asm
from morpheus.ir.asm import R0, R1, R2, R6, R7, R8, R10
from morpheus.ir.opcodes import JmpOp
from morpheus.kernel import KernelError
from tests.world import equivalent as EQ
from tests.world.checked_env import checked_env


def _program(*, check: str = "jle", adjust: bool = False, shared: bool = False) -> Program:
    """data + 14 checked against data_end; the short path tests r6 at instruction `RUNT`
    and exits (or, with `shared`, falls into the long path's code)."""
    head = [asm.mov64(R6, R1), asm.ldx(4, R7, R1, 0), asm.ldx(4, R8, R1, 4)]
    if adjust:
        head += [asm.mov64(R1, R6), asm.mov64(R2, 4), asm.call_helper("xdp_adjust_head"),
                 asm.ldx(4, R7, R6, 0), asm.ldx(4, R8, R6, 4)]
    head += [asm.mov64(R2, R7), asm.add64(R2, 14)]
    if check == "jle":
        head.append(asm.jmp(JmpOp.JLE, R2, R8, "long"))
    else:
        head.append(asm.jgt(R2, R8, "short"))
        head.append(asm.ja("long"))
    short = [asm.mov64(R0, 1, label="short"), asm.jeq(R6, 0, "out"),
             asm.ja("long") if shared else asm.exit_()]
    long = [asm.mov64(R0, 2, label="long"), asm.jeq(R6, 0, "out"), asm.exit_(),
            asm.mov64(R0, 3, label="out"), asm.exit_()]
    return Program("t", tuple(head + short + long))


def _index(program: Program, label: str, offset: int = 1) -> int:
    return program.labels[label] + offset


@pytest.mark.parametrize("check", ["jle", "jgt"])
def test_an_instruction_behind_the_runt_check_is_reached_only_by_runts(check: str) -> None:
    program = _program(check=check)
    assert EQ.only_on_runts(program, _index(program, "short"))
    assert not EQ.only_on_runts(program, _index(program, "long"))


def test_code_the_long_path_reaches_too_is_not_runt_only() -> None:
    program = _program(shared=True)
    assert EQ.only_on_runts(program, _index(program, "short"))
    assert not EQ.only_on_runts(program, _index(program, "out", 0))


def test_no_runt_edge_after_the_packet_may_have_moved() -> None:
    # After bpf_xdp_adjust_head the analysis's packet offsets are not the frame's.
    program = _program(adjust=True)
    assert not EQ.runt_edges(program)
    assert not EQ.only_on_runts(program, _index(program, "short"))


@pytest.mark.kernel
def test_xdp_test_runs_refuse_frames_shorter_than_an_ethernet_header(test_objects) -> None:  # type: ignore[no-untyped-def]
    with checked_env(test_objects["checked.v3"]) as env:
        prog = env.collection.programs["xdp_checked"]
        prog.test_run(bytes(14))  # an Ethernet header's worth runs
        for size in (0, 1, 13):
            with pytest.raises(KernelError) as refused:
                prog.test_run(bytes(size))
            assert refused.value.errno == errno.EINVAL


def _inlined_site() -> Program:
    """An inlined lookup of map `t`: a leaf or the original lookup, then the NULL test."""
    return Program("t", (
        asm.ldx(4, R6, R1, 12), asm.st(4, R10, -4, 0), asm.mov64(R2, R10),
        asm.add64(R2, -4), asm.ld_map_fd(R1, "t"),
        asm.jne(R6, 2, "mph1.miss"),
        asm.ld_map_value(R0, "mph_values", 0, note="inlined t"), asm.ja("mph1.cont"),
        asm.call_helper("map_lookup_elem", label="mph1.miss"),
        asm.jne(R0, 0, "found", label="mph1.cont"),
        asm.mov64(R0, 1), asm.jeq(R6, 3, "out"), asm.exit_(),
        asm.mov64(R0, 2, label="found"), asm.exit_(),
        asm.mov64(R0, 3, label="out"), asm.exit_()))


def test_code_after_a_miss_is_miss_only_for_a_table_that_cannot_miss() -> None:
    program = _inlined_site()
    after_miss = program.labels["mph1.cont"] + 2  # the test of r6 on the NULL path
    assert EQ.only_on_misses(program, after_miss, {"t"})
    assert not EQ.only_on_misses(program, after_miss, {"other"})
    assert not EQ.only_on_misses(program, program.labels["found"], {"t"})
