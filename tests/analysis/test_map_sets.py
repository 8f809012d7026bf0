"""Map pointers are tracked as sets of maps through joins; a write through a pointer that may
be several maps (or values of several lookups) is a possible write to each."""

from __future__ import annotations

from pathlib import Path

from morpheus.analysis import analyze
from morpheus.ir import Program, asm
from morpheus.ir.asm import R0, R1, R2, R3, R4, R6, R10
from morpheus.obj import MapSpec, read_object
from morpheus.passes.guards import GuardBumps
from morpheus.passes.pipeline import PassContext
from morpheus.uapi import MapType, ProgType

MAPS = {name: MapSpec(name, MapType.HASH, 4, 8, 16) for name in ("a", "b", "c")}


def _key_on_stack() -> list:
    return [asm.st(4, R10, -4, 1), asm.st(8, R10, -16, 0), asm.mov64(R2, R10),
            asm.add64(R2, -4)]


def either_map_then(*tail: object) -> Program:
    """r1 = a or b depending on the packet's first byte, then `tail`."""
    return Program("p", (
        asm.ldx(4, R6, R1, 0),
        asm.ldx(1, R6, R6, 0),
        asm.ld_map_fd(R1, "a"),
        asm.jeq(R6, 0, "joined"),
        asm.ld_map_fd(R1, "b"),
        asm.mov64(R0, R0, label="joined"),
        *tail,
    ))


def test_an_update_through_one_of_two_maps_writes_both() -> None:
    program = either_map_then(
        *_key_on_stack(), asm.mov64(R3, R10), asm.add64(R3, -16), asm.mov64(R4, 0),
        asm.call_helper("map_update_elem"), asm.mov64(R0, 2), asm.exit_())
    facts = analyze(program, MAPS, prog_type=ProgType.XDP)
    (site,) = facts.sites.values()
    assert site.maps == frozenset({"a", "b"}) and site.map == "a|b"
    assert facts.maps["a"].written_by_data_plane and facts.maps["b"].written_by_data_plane
    assert not facts.maps["c"].written_by_data_plane
    assert "one of a, b" in facts.maps["a"].data_plane_writes[0]


def test_a_lookup_through_one_of_two_maps_is_not_inlined_and_its_writes_count_for_both() -> None:
    program = either_map_then(
        *_key_on_stack(), asm.call_helper("map_lookup_elem"), asm.jeq(R0, 0, "out"),
        asm.st(8, R0, 0, 5), asm.mov64(R0, 2, label="out"), asm.exit_())
    facts = analyze(program, MAPS, prog_type=ProgType.XDP)
    (site,) = facts.lookups()
    assert not site.specializable and "among a, b" in site.reason
    assert facts.maps["a"].written_by_data_plane and facts.maps["b"].written_by_data_plane


def test_values_of_two_lookups_meeting_at_a_store_are_both_written() -> None:
    # clang merges `p->x = v` after two lookups into one store at the join.
    program = Program("p", (
        *_key_on_stack(), asm.ld_map_fd(R1, "a"), asm.call_helper("map_lookup_elem"),
        asm.jeq(R0, 0, "out"), asm.mov64(R6, R0),
        *_key_on_stack(), asm.ld_map_fd(R1, "b"), asm.call_helper("map_lookup_elem"),
        asm.jeq(R0, 0, "out"),
        asm.ldx(4, R1, R0, 0), asm.jeq(R1, 0, "store"), asm.mov64(R0, R6),
        asm.st(8, R0, 0, 1, label="store"),
        asm.mov64(R0, 2, label="out"), asm.exit_()))
    facts = analyze(program, MAPS, prog_type=ProgType.XDP)
    a, b = (s for s in facts.lookups())
    assert a.map == "a" and b.map == "b"
    assert not a.specializable and not b.specializable  # both values are written
    assert facts.maps["a"].written_by_data_plane and facts.maps["b"].written_by_data_plane


def test_an_update_on_a_map_the_analysis_lost_may_write_any_map() -> None:
    program = Program("p", (
        *_key_on_stack(), asm.ldx(8, R1, R1, 0),  # a "map" read from the context
        asm.mov64(R3, R10), asm.add64(R3, -16), asm.mov64(R4, 0),
        asm.call_helper("map_update_elem"), asm.mov64(R0, 2), asm.exit_()))
    facts = analyze(program, MAPS, prog_type=ProgType.XDP)
    assert all(facts.maps[n].written_by_data_plane for n in MAPS)


def test_version_bumps_cover_every_map_an_update_may_write() -> None:
    program = either_map_then(
        *_key_on_stack(), asm.mov64(R3, R10), asm.add64(R3, -16), asm.mov64(R4, 0),
        asm.call_helper("map_update_elem"), asm.mov64(R0, 2), asm.exit_())
    ctx = PassContext(dict(MAPS), ProgType.XDP)
    out = GuardBumps({"a": 0, "b": 1, "c": 2}).run(program, ctx)
    slots = [i.imm for i in out.insns if i.is_ld_imm64 and i.reference == "mph_guard"]
    assert sorted(set(slots)) == [0, 8]  # a and b, before and after; not c
    assert ctx.stats["guard_bumps"] == 1


def test_katran_shape_connection_table_is_either_lru(test_objects: dict[str, Path]) -> None:
    spec = read_object(test_objects["katran_shape.v3"])
    prog = spec.program("balancer_ingress")
    facts = analyze(prog.program, spec.maps, prog_type=prog.type)
    conn = [s for s in facts.sites.values() if s.maps and len(s.maps) > 1]
    assert {s.kind for s in conn} == {"lookup", "update"}
    assert all(s.maps == {"fallback_cache", "lru_mapping[inner]"} for s in conn)
    for name in ("fallback_cache", "lru_mapping[inner]"):
        assert facts.maps[name].written_by_data_plane
    read_only = {s.map for s in facts.lookups() if s.specializable and not s.guarded}
    assert read_only == {"vip_map"}  # the ring and the reals are arrays: already cheap
