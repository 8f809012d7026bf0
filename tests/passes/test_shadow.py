"""Shadow values: hot keys of a lookup whose value the program writes, answered from shadow
slots, must leave every verdict and every map byte as the original leaves them."""

from __future__ import annotations

import random
import struct
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from morpheus.ir import Program, asm
from morpheus.ir.asm import R0, R1, R2, R7, R10
from morpheus.ir.program import with_origins
from morpheus.loader import create_map, load_collection
from morpheus.obj import MapSpec, read_object
from morpheus.optimizer import Guards, MapSnapshot, SiteHeat, SpecializeRequest, Target, specialize
from morpheus.optimizer.plan import PlanOptions
from morpheus.optimizer.shadow import shadow_eligible
from morpheus.passes.inline import InlineEntry, SitePlan
from morpheus.passes.pipeline import PassContext
from morpheus.passes.shadow import SHADOW_MAP, ShadowValues
from morpheus.uapi import MapType, ProgType
from morpheus.world import CheckRequest, Side, check

SECOND = 1_000_000_000
STATION = struct.Struct("=IIQ")  # port, flags (1 static, 2 marked), last_seen


def table_program(tail: list) -> Program:  # type: ignore[type-arg]
    """Look key 7 up in `t` (instruction 4), then `tail`."""
    return with_origins(Program("p", (
        asm.st(4, R10, -4, 7),
        asm.mov64(R2, R10),
        asm.add64(R2, -4),
        asm.ld_map_fd(R1, "t"),
        asm.call_helper("map_lookup_elem"),
        *tail,
    )))


def run_pass(program: Program) -> tuple[Program, PassContext]:
    ctx = PassContext({"t": MapSpec("t", MapType.HASH, 4, 8, 100)}, ProgType.XDP)
    plan = SitePlan(4, "t", (InlineEntry(struct.pack("<I", 7), bytes(8)),), guard_slot=0)
    return ShadowValues((plan,)).run(program, ctx), ctx


def test_a_store_ends_the_speculation_in_a_resync_and_the_writing_copy_mirrors_it() -> None:
    out, ctx = run_pass(table_program([
        asm.jeq(R0, 0, "out"),
        asm.ldx(4, R1, R0, 0),
        asm.jne(R1, 0, "out"),
        asm.st(4, R0, 4, 1),  # the write: speculation ends here
        asm.mov64(R0, 2, label="out"),
        asm.exit_(),
    ]))
    notes = [i.meta.note for i in out.insns]
    assert notes.count("shadow resync") >= 7  # the real lookup and the copy of the value
    mirrors = [i for i in out.insns if i.meta.note == "shadow mirror"]
    assert len(mirrors) == 2 and mirrors[1].is_store and mirrors[1].off == 4
    # The key, its padding, the valid word (0: not filled yet) and room for the value.
    assert ctx.maps[SHADOW_MAP].data == struct.pack("<I", 7) + bytes(4) + bytes(8) + bytes(8)
    valid = [i for i in out.insns if i.meta.note == "shadow valid"]
    assert valid[0].is_load and valid[0].off == -8 and valid[1].is_conditional_jump
    assert ctx.stats["shadow_sites"] == [4]


def test_a_callee_saved_register_the_original_path_still_needs_is_not_overwritten() -> None:
    program = table_program([
        asm.jeq(R0, 0, "out"),
        asm.mov64(R7, 5),  # r7 is read below before it is written on the NULL path
        asm.st(4, R0, 4, 1),
        asm.mov64(R0, R7, label="out"),
        asm.exit_(),
    ])
    out, ctx = run_pass(program)
    assert out is program
    assert any("r6-r9" in n for n in ctx.notes)


def test_a_pointer_handed_to_a_helper_is_left_alone() -> None:
    program = table_program([
        asm.jeq(R0, 0, "out"),
        asm.mov64(R1, R0),
        asm.mov64(R2, 8),
        asm.call_helper("csum_diff"),
        asm.mov64(R0, 1, label="out"),
        asm.exit_(),
    ])
    out, ctx = run_pass(program)
    assert out is program and any("passed to a call" in n for n in ctx.notes)


def frame(key: int, port: int, flip: bool = False) -> bytes:
    return struct.pack("<I", key) + bytes([port, int(flip)]) + bytes(58)



def _assert_equivalent(coll, prog, spec, result, packets) -> None:  # type: ignore[no-untyped-def]
    """The shadowed program against the original on `packets`, from the same maps (the
    shadow's side maps created fresh): verdicts, bytes and every written map equal."""
    extras = {n: create_map(m) for n, m in result.extra_maps.items()}
    try:
        request = CheckRequest(
            {**coll.maps, **extras},
            Side("original", prog, btf_fd=coll.btf_fd, spec=spec),
            Side("shadowed", prog, result.program, btf_fd=coll.btf_fd, spec=spec),
            packets)
        outcome = check(request)
        assert outcome.equivalent, outcome.to_json()
    finally:
        for m in extras.values():
            m.close()

@pytest.mark.kernel
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), stations=st.integers(1, 60),
       hot_fraction=st.floats(0.1, 1.0))
def test_shadowed_hot_keys_write_what_the_map_would(seed: int, stations: int,
                                                    hot_fraction: float,
                                                    test_objects: dict[str, Path]) -> None:
    """Static, fresh, due, marked and moving stations, hot and not, each seen several times
    (some frames flip the mark): the same verdicts and the same table (timestamps
    included) as the original."""
    rng = random.Random(seed)
    spec = read_object(test_objects["refresh.v3"])
    prog = spec.program("xdp_refresh")
    target = Target.analyze(spec, prog)
    (site,) = [s for s in target.facts.lookups() if s.map == "stations"]
    assert shadow_eligible(site, target.facts, spec.maps)
    now = time.monotonic_ns()
    contents = {}
    for key in rng.sample(range(1, 2**32), stations):
        kind = rng.choice(("static", "fresh", "due", "marked"))
        flags = {"static": 1, "marked": 2}.get(kind, 0)
        seen = now - 2 * SECOND if kind == "due" else now - rng.randrange(SECOND // 2)
        contents[key] = (rng.randrange(4), flags, seen)
    keys = sorted(contents)
    hot = keys[: max(1, int(len(keys) * hot_fraction))]
    absent = [k + 1 for k in hot[:2] if k + 1 not in contents]
    heat = {site.index: SiteHeat(Counter({struct.pack("<I", k): 100 + i
                                          for i, k in enumerate(hot + absent)}))}
    with load_collection(spec, programs=[]) as coll:
        table = coll.maps["stations"]
        for k, v in contents.items():
            table.update(k, STATION.pack(*v))
        snap = MapSnapshot(spec.maps["stations"], {struct.pack("<I", k): table.lookup(k)
                                                   for k in hot + absent})
        result = specialize(SpecializeRequest(target, {"stations": snap}, heat,
                                              PlanOptions(min_samples=1, min_coverage=0.0),
                                              guards=Guards(versions={"stations": 0})))
        assert result.stats.get("shadow_sites") == [site.index]
        # Known stations on their ports first (inserts and moves move the guard, and every
        # later packet takes the map), then moves and new stations.
        packets = [(frame(k, contents[k][0], rng.random() < 0.3), 0)
                   for _ in range(4) for k in rng.sample(keys, len(keys))]
        packets += [(frame(k, rng.randrange(4), rng.random() < 0.3), 0)
                    for k in rng.sample(keys + absent, len(keys + absent))]
        _assert_equivalent(coll, prog, spec, result, packets)


@pytest.mark.kernel
@pytest.mark.parametrize("marked_after", [True, False])
def test_a_store_made_after_the_snapshot_is_read_from_the_map(
        marked_after: bool, test_objects: dict[str, Path]) -> None:
    """The previous version flips a station's mark after the snapshot (a store through its
    pointer: no guard bump), then the new version runs: a hit must not answer from the
    snapshot's state, and every later frame (no flip, no refresh due) answers by the mark
    the map holds, as the original does."""
    now = time.monotonic_ns()
    before = {k: STATION.pack(1, 0 if marked_after else 2, now) for k in (11, 12, 13)}
    after = {k: STATION.pack(1, 2 if marked_after else 0, now) for k in before}
    check_after_snapshot(test_objects, before, after)


@pytest.mark.kernel
def test_an_entry_gone_after_the_snapshot_takes_the_original_null_path(
        test_objects: dict[str, Path]) -> None:
    """A hot station the real map no longer holds (the guard left alone): the resync's real
    lookup misses, and the frame takes the original path for a new station (inserted)."""
    now = time.monotonic_ns()
    before = {k: STATION.pack(1, 0, now) for k in (11, 12, 13)}
    check_after_snapshot(test_objects, before, {12: None})


def check_after_snapshot(test_objects: dict[str, Path], before: dict[int, bytes],
                         after: dict[int, bytes | None]) -> None:
    """Specialize on a snapshot of `before`, change the real map to `after` (None: the
    entry goes) without moving the guard, then frames of every station on port 1: the same
    verdicts and tables as the original."""
    spec = read_object(test_objects["refresh.v3"])
    prog = spec.program("xdp_refresh")
    target = Target.analyze(spec, prog)
    (site,) = [s for s in target.facts.lookups() if s.map == "stations"]
    keys = sorted(before)
    heat = {site.index: SiteHeat(Counter({struct.pack("<I", k): 100 for k in keys}))}
    with load_collection(spec, programs=[]) as coll:
        table = coll.maps["stations"]
        for k, value in before.items():
            table.update(k, value)
        snap = MapSnapshot(spec.maps["stations"], {struct.pack("<I", k): table.lookup(k)
                                                   for k in keys})
        result = specialize(SpecializeRequest(target, {"stations": snap}, heat,
                                              PlanOptions(min_samples=1, min_coverage=0.0),
                                              guards=Guards(versions={"stations": 0})))
        assert result.stats.get("shadow_sites") == [site.index]
        for k, changed in after.items():  # after the snapshot, guard untouched
            if changed is None:
                table.delete(k)
            else:
                table.update(k, changed)
        _assert_equivalent(coll, prog, spec, result, [(frame(k, 1), 0)
                                                      for _ in range(3) for k in keys])
