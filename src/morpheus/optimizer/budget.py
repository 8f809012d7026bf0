"""The verifier budget: how much a plan costs the verifier, and what to give up when it is
too much (converge comparison trees first, then drop them)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

from ..passes.inline import InlinePlan, SitePlan

if TYPE_CHECKING:
    from .specialize import Specialization


def verifier_estimate(plan: InlinePlan, base_cost: int,
                      converge: Collection[int] = frozenset(),
                      drop: Collection[int] = frozenset()) -> int:
    """An upper bound on the instructions the verifier processes for `plan` applied to a
    program whose original costs `base_cost` (prog_info.verified_insns).

    The verifier walks the code after a site once per distinct state leaving it. A
    comparison tree over K hot keys leaves K + 1 (each hit carries its own constants from
    the frozen values, and where those reach a branch, as bit vectors ANDed and tested do,
    nothing prunes them); converging the hits leaves two (the inlined pointer and the map's
    own). Whole tables and constant keys fold away; their guards send a packet to code the
    original had anyway, and are not counted. Sites in sequence multiply.
    """
    cost = base_cost
    for p in plan.sites:
        if p.site not in drop and _is_tree(p):
            cost *= 2 if p.site in converge else len(p.entries) + 1
    return cost


def _is_tree(p: SitePlan) -> bool:
    """A comparison tree over hot keys (not a constant key, not a whole table)."""
    return not p.constant_key and not p.complete and len(p.entries) > 1


def relieve_for_budget(plan: InlinePlan, base_cost: int, budget: int,
                       lookup_costs: Mapping[str, float] | None = None
                       ) -> tuple[frozenset[int], frozenset[int]]:
    """Sites to converge, then to drop, so that `verifier_estimate` stays under `budget`.

    The estimate is pessimistic (constants that only feed stores and the next lookup's key
    prune well: the router's 64 hot routes cost the verifier 2.4x, not 65x), so plans under
    the budget are left alone. Over it, the least valuable comparison trees converge first;
    when all have converged, the least valuable are dropped.
    """
    costs = lookup_costs or {}

    def value(p: SitePlan) -> float:
        share = 1.0 if p.constant_key else sum(e.weight for e in p.entries)
        return share * costs.get(p.map, 1.0)

    converge: set[int] = set()
    drop: set[int] = set()
    trees = sorted((p for p in plan.sites if _is_tree(p)), key=value)
    for p in trees:
        if verifier_estimate(plan, base_cost, converge, drop) <= budget:
            break
        converge.add(p.site)
    for p in trees:
        if verifier_estimate(plan, base_cost, converge, drop) <= budget:
            break
        drop.add(p.site)
    return frozenset(converge - drop), frozenset(drop)


def is_complexity_error(message: str) -> bool:
    """The verifier gave up on the program's size or path count (not a safety violation)."""
    return any(text in message for text in ("too large", "E2BIG", "too complex",
                                            "Argument list too long", "states"))


def next_relief(spec: Specialization, converged: frozenset[int], dropped: frozenset[int]
                ) -> tuple[frozenset[int], frozenset[int]] | None:
    """After a complexity failure: converge the largest site not yet converged, or when all
    are, drop the largest one. None when nothing is left to give up."""
    sites = sorted((p for p in spec.plan.sites if not p.constant_key),
                   key=lambda p: -len(p.entries))
    for p in sites:
        if p.site not in converged and len(p.entries) > 1:
            return converged | {p.site}, dropped
    for p in sites:
        if p.site not in dropped:
            return converged, dropped | {p.site}
    return None
