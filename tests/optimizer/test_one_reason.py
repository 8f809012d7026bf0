"""Whether a site can be specialized is decided once, by the analysis: `inspect --sites`
and the plan `optimize` reports give the same verdict and the same reason."""

from __future__ import annotations

from pathlib import Path

from morpheus.cli.inspect_cmd import describe
from morpheus.nf import get
from morpheus.obj import read_object
from morpheus.optimizer import MapSnapshot, PlanOptions, Target, plan_sites


def _compare(path: Path) -> int:
    spec = read_object(path)
    shown = {p["name"]: {s["instruction"]: s for s in p["sites"]}
             for p in describe(str(path), sites=True)["programs"]}
    compared = 0
    for prog in spec.programs.values():
        target = Target.analyze(spec, prog)
        # Every table complete and empty: nothing dynamic stands in the way.
        snaps = {n: MapSnapshot(m, complete=True) for n, m in spec.maps.items()}
        _, decisions = plan_sites(target.facts, snaps, {}, PlanOptions())
        for d in decisions:
            s = shown[prog.name][d.site.index]
            if not s["specialized"]:
                assert d.plan is None and d.reason == s["reason"], (prog.name, d.site.index)
            else:
                assert "already cheap" not in d.reason
            compared += 1
    return compared


def test_inspect_and_plan_agree_on_variable_index_arrays(test_objects: dict[str, Path]) -> None:
    spec = read_object(test_objects["katran_shape.v3"])
    facts = Target.analyze(spec, spec.program("balancer_ingress")).facts
    rings = [s for s in facts.lookups() if s.map in ("ch_rings", "reals")]
    assert rings and all(not s.specializable and "already cheap" in s.reason for s in rings)
    assert _compare(test_objects["katran_shape.v3"]) > 5


def test_inspect_and_plan_agree_on_the_network_functions() -> None:
    for name in ("router", "lb", "firewall", "switch"):
        assert _compare(get(name).object_path) > 0
