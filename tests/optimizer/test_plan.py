"""The planner decides per site, from the analysis, a snapshot and the heat (pure)."""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

from morpheus.nf import get
from morpheus.obj import read_object
from morpheus.optimizer import MapSnapshot, PlanOptions, SiteHeat, analyze_program, plan_sites


def test_router_sites_are_planned_by_kind() -> None:
    nf = get("router")
    spec = read_object(nf.object_path)
    _, facts = analyze_program(spec.program(nf.program), spec.maps)
    sites = {s.map: s for s in facts.lookups()}
    routes = sites["rt_routes"]
    hot_keys = [struct.pack("<I4s", 32, bytes([10, 0, 0, i])) for i in range(100)]
    snapshots = {
        "rt_config": MapSnapshot(spec.maps["rt_config"], {struct.pack("<I", 0): b"\x03\0\0\0"},
                                 complete=True),
        "rt_ifaces": MapSnapshot(spec.maps["rt_ifaces"], {struct.pack("<I", i): bytes(12)
                                                          for i in (2, 3)}, complete=True),
        "rt_routes": MapSnapshot(spec.maps["rt_routes"], {k: b"\x01\0\0\0\0\0\0\0"
                                                          for k in hot_keys}),
        "rt_nexthops": MapSnapshot(spec.maps["rt_nexthops"]),
    }
    skewed = Counter({k: (1000 - i if i < 16 else 1) for i, k in enumerate(hot_keys)})
    heat = {routes.index: SiteHeat(skewed)}
    plan, decisions = plan_sites(facts, snapshots, heat, PlanOptions(hot_max=16))
    by_map: dict[str, list[str]] = {}
    for d in decisions:
        by_map.setdefault(d.site.map, []).append(d.mode)
    assert by_map["rt_config"] == ["constant"]
    assert by_map["rt_ifaces"] == ["table", "table"]
    assert by_map["rt_routes"] == ["hot"]
    assert by_map["rt_nexthops"] == ["none"]  # arrays with variable keys are left alone
    assert set(by_map["rt_stats"]) == {"none"}  # per-CPU
    routes_plan = next(p for p in plan.sites if p.map == "rt_routes")
    assert len(routes_plan.entries) == 16 and not routes_plan.complete
    assert routes_plan.entries[0].key == hot_keys[0]  # hottest first
    reasons = {d.site.map: d.reason for d in decisions if d.mode == "none"}
    assert "per-CPU" in reasons["rt_stats"]
    # Uniform traffic: 16 keys out of 100 equally hot answer too few lookups to pay off.
    flat = {routes.index: SiteHeat(Counter({k: 10 for k in hot_keys}))}
    _, decisions = plan_sites(facts, snapshots, flat, PlanOptions(hot_max=16))
    (routes_decision,) = [d for d in decisions if d.site.map == "rt_routes"]
    assert routes_decision.mode == "none" and "cover only 16%" in routes_decision.reason


def test_guards_are_planned_for_data_plane_written_maps(test_objects: dict[str, Path]) -> None:
    spec = read_object(test_objects["learn.v3"])
    _, facts = analyze_program(spec.program("xdp_learn"), spec.maps)
    (site,) = [s for s in facts.lookups() if s.map == "table"]
    key = struct.pack("<I", 1)
    snap = {"table": MapSnapshot(spec.maps["table"], {key: b"\x01\0\0\0"})}
    heat = {site.index: SiteHeat(Counter({key: 50}))}
    _, decisions = plan_sites(facts, snap, heat)
    assert decisions[0].plan is None and "guard slot" in decisions[0].reason
    plan, decisions = plan_sites(facts, snap, heat, guard_slots={"table": 3},
                                 guard_versions={"table": 8})
    assert plan.sites[0].guard_slot == 3 and plan.sites[0].guard_version == 8


def test_heat_shares_and_hottest() -> None:
    heat = SiteHeat(Counter({b"a": 60, b"b": 30, b"c": 10}))
    assert [k for k, _ in heat.hottest(2)] == [b"a", b"b"]
    assert [k for k, _ in heat.hottest(3, cover=0.85)] == [b"a", b"b"]
    assert heat.share({b"a", b"c"}) == 0.7


def test_lru_connection_table_is_inlined_behind_a_guard_until_it_fills_up() -> None:
    nf = get("lb")
    spec = read_object(nf.object_path)
    _, facts = analyze_program(spec.program(nf.program), spec.maps)
    (conn,) = [s for s in facts.lookups() if s.map == "lb_conn"]
    assert conn.specializable and conn.guarded, conn.reason
    assert "LRU" in conn.reason
    flows = [bytes([i]) * spec.maps["lb_conn"].key_size for i in range(8)]
    heat = {conn.index: SiteHeat(Counter({k: 100 - i for i, k in enumerate(flows)}))}
    snap = MapSnapshot(spec.maps["lb_conn"], {k: struct.pack("<I", i) for i, k in enumerate(flows)})
    _, decisions = plan_sites(facts, {"lb_conn": snap}, heat, guard_slots={"lb_conn": 0},
                                 guard_versions={"lb_conn": 7})
    (decision,) = [d for d in decisions if d.site.map == "lb_conn"]
    assert decision.mode == "hot" and decision.plan is not None
    assert decision.plan.guard_slot == 0 and decision.plan.guard_version == 7
    snap.crowded = True
    _, decisions = plan_sites(facts, {"lb_conn": snap}, heat, guard_slots={"lb_conn": 0})
    (decision,) = [d for d in decisions if d.site.map == "lb_conn"]
    assert decision.mode == "none" and "half full" in decision.reason
