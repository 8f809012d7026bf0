"""The verifier-cost model that decides which comparison trees converge or are dropped."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from morpheus.optimizer import relieve_for_budget, verifier_estimate
from morpheus.passes.inline import InlineEntry, InlinePlan, SitePlan


def tree(site: int, keys: int, weight: float, map_name: str = "t") -> SitePlan:
    entries = tuple(InlineEntry(struct.pack("<I", k), struct.pack("<I", k), weight / keys)
                    for k in range(keys))
    return SitePlan(site, map_name, entries)


def constant(site: int) -> SitePlan:
    entry = InlineEntry(struct.pack("<I", 0), struct.pack("<I", 1), 1.0)
    return SitePlan(site, "cfg", (entry,), constant_key=True, guard_slot=0)


def test_trees_multiply_by_their_keys_and_converged_trees_by_two() -> None:
    plan = InlinePlan((constant(1), tree(2, 64, 0.9), tree(3, 9, 0.5)))
    assert verifier_estimate(plan, 1000) == 1000 * 65 * 10
    assert verifier_estimate(plan, 1000, converge={2}) == 1000 * 2 * 10
    assert verifier_estimate(plan, 1000, converge={2}, drop={3}) == 1000 * 2


def test_a_plan_under_budget_is_left_alone() -> None:
    # The router: 570 instructions, one tree of 64 routes.
    plan = InlinePlan((constant(1), tree(2, 64, 0.9)))
    assert relieve_for_budget(plan, 570, 400_000) == (frozenset(), frozenset())


def test_least_valuable_trees_converge_first() -> None:
    # The firewall: four 64-key trees over a 2,923-instruction program.
    plan = InlinePlan((tree(1, 64, 0.84), tree(2, 64, 0.85), tree(3, 64, 0.88),
                       tree(4, 64, 0.99)))
    converge, drop = relieve_for_budget(plan, 2923, 400_000)
    assert converge == {1, 2, 3, 4} and not drop
    # With a looser budget the most valuable tree keeps its constants.
    converge, drop = relieve_for_budget(plan, 2923, 2923 * 8 * 65)
    assert converge == {1, 2, 3} and not drop


def test_lookup_costs_weigh_the_order() -> None:
    plan = InlinePlan((tree(1, 64, 0.9, "hash"), tree(2, 64, 0.5, "lpm")))
    converge, _ = relieve_for_budget(plan, 1000, 1000 * 65 * 2,
                                     lookup_costs={"lpm": 3.0})
    assert converge == {1}


def test_trees_are_dropped_when_converging_is_not_enough() -> None:
    plan = InlinePlan(tuple(tree(i, 8, 0.1 * i) for i in range(1, 6)))
    converge, drop = relieve_for_budget(plan, 100_000, 450_000)
    assert drop == {1, 2, 3} and converge == {4, 5}


@given(st.lists(st.integers(2, 64), min_size=1, max_size=8), st.integers(100, 200_000),
       st.integers(1_000, 2_000_000))
def test_relief_meets_the_budget_or_drops_every_tree(keys: list[int], base: int,
                                                       budget: int) -> None:
    plan = InlinePlan(tuple(tree(i, k, 1.0 / (i + 1)) for i, k in enumerate(keys)))
    converge, drop = relieve_for_budget(plan, base, budget)
    assert not converge & drop
    estimate = verifier_estimate(plan, base, converge, drop)
    assert estimate <= budget or drop == {p.site for p in plan.sites}
    if verifier_estimate(plan, base) <= budget:
        assert not converge and not drop
