"""Planning shadow-value sites: which lookups qualify, which keys are inlined, and what a
runtime's fingerprint of the plan ignores."""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

from morpheus.obj import read_object
from morpheus.optimizer import Guards, MapSnapshot, SiteHeat, SpecializeRequest, Target
from morpheus.optimizer.plan import PlanOptions
from morpheus.optimizer.shadow import shadow_eligible
from morpheus.optimizer.specialize import plan_request

STATION = struct.Struct("=IIQ")


def request(test_objects: dict[str, Path], values: dict[int, tuple[int, int, int] | None],
            heat: dict[int, int], **options: object) -> SpecializeRequest:
    spec = read_object(test_objects["refresh.v3"])
    target = Target.analyze(spec, spec.program("xdp_refresh"))
    (site,) = [s for s in target.facts.lookups() if s.map == "stations"]
    snap = MapSnapshot(spec.maps["stations"], {
        struct.pack("<I", k): None if v is None else STATION.pack(*v) for k, v in values.items()})
    hot = {site.index: SiteHeat(Counter({struct.pack("<I", k): w for k, w in heat.items()}))}
    return SpecializeRequest(target, {"stations": snap}, hot, PlanOptions(**options),  # type: ignore[arg-type]
                             guards=Guards(versions={"stations": 3}))


def test_a_lookup_written_through_its_pointer_qualifies_and_one_only_updated_does_not(
        test_objects: dict[str, Path]) -> None:
    spec = read_object(test_objects["refresh.v3"])
    target = Target.analyze(spec, spec.program("xdp_refresh"))
    (site,) = [s for s in target.facts.lookups() if s.map == "stations"]
    assert not site.specializable and shadow_eligible(site, target.facts, spec.maps)
    learn = read_object(test_objects["learn.v3"])
    other = Target.analyze(learn, learn.program("xdp_learn"))
    assert not any(shadow_eligible(s, other.facts, learn.maps) for s in other.facts.lookups())


def test_present_hot_keys_are_planned_behind_the_guard(test_objects: dict[str, Path]) -> None:
    planned = plan_request(request(test_objects, {1: (2, 0, 5), 2: None, 3: (1, 1, 0)},
                                   {1: 50, 2: 30, 3: 20}, min_samples=1, min_coverage=0.0))
    (plan,) = planned.plan.sites
    assert sorted(struct.unpack("<I", e.key)[0] for e in plan.entries) == [1, 3]
    assert plan.guard_slot == planned.guard_slots["stations"] and plan.guard_version == 3
    (decision,) = [d for d in planned.decisions if d.plan is plan]
    assert decision.mode == "shadow" and decision.keys == 2


def test_too_little_coverage_leaves_the_site_to_the_map(test_objects: dict[str, Path]) -> None:
    planned = plan_request(request(test_objects, {1: (2, 0, 5), 2: None},
                                   {1: 10, 2: 90}, min_samples=1))
    assert not planned.plan.sites


def test_the_fingerprint_ignores_the_values_but_not_the_keys_present(
        test_objects: dict[str, Path]) -> None:
    """Slots fill from the map, so no value byte is in the program; which keys the map
    holds is."""
    def fingerprint(value: tuple[int, int, int] | None) -> tuple[object, ...]:
        req = request(test_objects, {1: value}, {1: 50}, min_samples=1)
        return plan_request(req).fingerprint(req)

    assert fingerprint((2, 0, 5)) == fingerprint((2, 0, 7_000_000_000))
    assert fingerprint((2, 0, 5)) == fingerprint((3, 2, 5))
    assert fingerprint((2, 0, 5)) != fingerprint(None)
