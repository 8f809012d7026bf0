"""The world and the checker on tests/progs/checked.c: live maps untouched, nondeterministic
helpers harmless, maps of maps and prog arrays reproduced, differences caught."""

from __future__ import annotations

import pytest

from morpheus.ir import asm
from morpheus.ir.asm import R0, R1
from morpheus.ir.edit import insert_before
from morpheus.ir.helpers import HELPER_IDS
from morpheus.world import CheckRequest, Side, World, check, harness, written_maps
from morpheus.world.harness import CLOCK_MAP, REDIRECT_MAP
from tests.world.checked_env import CheckedEnv, checked_env, packets

pytestmark = pytest.mark.kernel


@pytest.fixture
def env(test_objects):  # type: ignore[no-untyped-def]
    with checked_env(test_objects["checked.v3"], programs=("xdp_checked", "xdp_root")) as e:
        yield e


def _side(env: CheckedEnv, name: str = "xdp_checked", program=None) -> Side:  # type: ignore[no-untyped-def]
    return Side(name, env.spec.program(name), program, spec=env.spec,
                btf_fd=env.collection.btf_fd)


def _calls(program, helper: str) -> list[int]:  # type: ignore[no-untyped-def]
    return [i for i, insn in enumerate(program.insns)
            if insn.is_helper_call and insn.imm == HELPER_IDS[helper]]


def test_harness_replaces_every_nondeterministic_call_and_records_redirects(env) -> None:  # type: ignore[no-untyped-def]
    program = env.prog.program
    out = harness(program)
    assert out.nondeterministic_calls == 4  # ktime twice, prandom, smp_processor_id
    assert out.redirect_calls == 2 and set(out.map_tags.values()) == {"ports"}
    for name in ("ktime_get_ns", "get_prandom_u32", "get_smp_processor_id"):
        assert not _calls(out.program, name)
    assert len(_calls(out.program, "redirect")) == 1
    assert sum(1 for i in out.program.insns if i.reference == CLOCK_MAP) == 4
    assert sum(1 for i in out.program.insns if i.reference == REDIRECT_MAP) == 2


def test_written_maps_are_what_the_program_writes(env) -> None:  # type: ignore[no-untyped-def]
    written = written_maps([env.prog.program], env.spec.maps)
    assert written == {"flows", "sources", "counters", "stats", "conns[inner]"}


def test_a_program_storing_time_and_random_numbers_is_equivalent_to_itself(env) -> None:  # type: ignore[no-untyped-def]
    result = check(CheckRequest(env.maps, _side(env), _side(env), packets(200)))
    assert result.equivalent, result.describe()
    out = result.to_json()
    assert set(out) == {"equivalent", "packets_checked", "mismatches", "first_mismatch",
                        "tables_differing", "redirects_differing"}
    # The live maps are the source: the check wrote none of them.
    assert env.maps["flows"].count() == 0 and env.maps["sources"].count() == 0
    assert all(v == bytes(8) for vs in dict(env.maps["counters"].items()).values() for v in vs)


def test_the_root_program_runs_its_tail_call_in_the_world(env) -> None:  # type: ignore[no-untyped-def]
    result = check(CheckRequest(env.maps, _side(env, "xdp_root"), _side(env, "xdp_root"),
                                packets(60)))
    assert result.equivalent, result.describe()
    assert not result.notes  # the held program was loaded again, against the world
    # ... and a miscompile in the tail-called program is seen through the root.
    program = env.prog.program
    at = _calls(program, "redirect")[0]
    wrong = insert_before(program, at, [asm.add64(R1, 1)])
    mutant = Side("xdp_checked", env.prog, wrong, spec=env.spec, btf_fd=env.collection.btf_fd)
    caught = check(CheckRequest(env.maps, _side(env), mutant, packets(60)))
    assert not caught.equivalent and caught.redirects_differing


def test_inner_maps_of_a_map_of_maps_are_cloned_and_compared(env) -> None:  # type: ignore[no-untyped-def]
    with World.build(env.maps, {"conns[inner]"}) as world:
        assert world.maps["conns"].id != env.maps["conns"].id
        assert len(world.inner["conns"]) == 8
        assert world.maps["routes"].id == env.maps["routes"].id  # read only: shared
    # A store of the wrong timestamp into the per-CPU inner map is caught.
    program = env.prog.program
    at = _calls(program, "get_smp_processor_id")[0]
    update = next(i for i in _calls(program, "map_update_elem") if i > at)
    wrong = insert_before(program, update, [asm.ldx(8, R0, asm.R3, 0),
                                            asm.add64(R0, 1), asm.stx(8, asm.R3, 0, R0)])
    mutant = Side("xdp_checked", env.prog, wrong, spec=env.spec, btf_fd=env.collection.btf_fd)
    result = check(CheckRequest(env.maps, _side(env), mutant, packets(100)))
    assert result.tables_differing == ["conns"], result.describe()


def test_a_different_timestamp_in_a_map_is_caught_and_named(env) -> None:  # type: ignore[no-untyped-def]
    program = env.prog.program
    second = _calls(program, "ktime_get_ns")[1]
    wrong = insert_before(program, second + 1, [asm.add64(R0, 1)], take_label=False)
    mutant = Side("xdp_checked", env.prog, wrong, spec=env.spec, btf_fd=env.collection.btf_fd)
    result = check(CheckRequest(env.maps, _side(env), mutant, packets(100)))
    assert result.tables_differing == ["sources"]
    assert result.first is None and result.first_table is not None
    assert "ktime_get_ns() of packet #0" in result.first_table[1]
    assert result.packets_to_catch == 1
