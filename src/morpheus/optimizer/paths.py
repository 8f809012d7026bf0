"""The second specialization round: copies of the code after hot hits, then what they fold.

`passes.paths` gives each inlined hot value its own continuation; constant propagation then
turns that value's fields into constants, and lookups keyed by them (the router's next hop
and egress interface, the load balancer's backend) get constant keys. This round analyses
the result again and inlines those lookups from the snapshot, like the first round inlines
constant keys, then cleans up once more.

Only maps the data plane does not write are inlined here: the version bumps at data-plane
writes were placed by the first round for the maps it inlined, and a second-round inline
of another written map would read a guard nothing moves. Guards for the maps the caller
guards (the agent guards every map it may inline) are placed exactly as in the first round.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from ..analysis import ProgramFacts, analyze
from ..ir import Program
from ..ir.program import with_origins
from ..passes.constprop import fold_known_loads
from ..passes.inline import InlinePlan, InlineTables
from ..passes.paths import DEFAULT_BUDGET, SpecializePaths
from ..passes.pipeline import Pass, PassContext, PassTiming, Pipeline
from .plan import MapSnapshot, PlanOptions, SiteDecision, plan_sites

PATH_VALUES_MAP = "mph_path"
PATH_OFFSETS_MAP = "mph_path_offs"


@dataclass(frozen=True)
class PathRequest:
    """What the second round works from (the first round's plan and its inputs)."""

    plan: InlinePlan  # the first round's hot-key sites
    values_map: str  # where the first round put the hot values
    snapshots: Mapping[str, MapSnapshot]
    options: PlanOptions
    inlinable_maps: Collection[str]  # maps the second round may inline (guarded or read-only)
    guard_slots: Mapping[str, int]
    guard_versions: Mapping[str, int]
    cleanup: Sequence[Pass]
    budget: int = DEFAULT_BUDGET
    written_maps: Collection[str] = ()  # maps the data plane writes: no copies after them


def path_sites(plan: InlinePlan, written: Collection[str] = ()) -> tuple[int, ...]:
    """Hot-key comparison trees whose hits carry a constant pointer (not converged), on
    maps the data plane does not write (`written`): measured on the load balancer's
    connection table, copies after such a site cost more than they saved (1.6x -> 1.3x),
    its inserts move the guard and send hits down the miss path until the next cycle."""
    return tuple(p.site for p in plan.sites
                 if not p.constant_key and not p.complete and not p.converge and p.entries
                 and p.map not in written)


def specialize_paths(program: Program, ctx: PassContext, request: PathRequest,
                     finish: Sequence[Pass] = ()) -> tuple[Program, list[SiteDecision],
                                                           list[PassTiming]]:
    """Copy continuations, fold, inline the lookups that became constant, fold again.

    `finish` runs just before the last dead-code elimination (store coalescing, which
    wants the folded constants and leaves dead moves behind). The copies are neither folded
    nor cleaned up before the second analysis: one constant propagation and one dead-code
    elimination at the end do it for both.
    """
    sites = path_sites(request.plan, request.written_maps)
    timings: list[PassTiming] = []
    if not sites:
        return program, [], timings
    # Constant propagation folds, dead-code elimination runs last but one; any other pass
    # the caller gave runs after both, as it does in the first round.
    fold = [p for p in request.cleanup if p.name == "constprop"]
    dce = [p for p in request.cleanup if p.name == "dce"]
    others = [p for p in request.cleanup if p.name not in ("constprop", "dce")]
    first = Pipeline([SpecializePaths(sites, request.values_map, request.budget,
                                      trees=sites)])
    copied = first.run(program, ctx)
    timings += first.timings
    if not ctx.stats.get("path_copies"):
        return program, [], timings
    # The values' fields the copies load become constants before the analysis (a register
    # dataflow, not the full constant propagation): keys stored from them are then seen as
    # constant keys, and one constant propagation after the second inlining does the rest.
    if fold:
        copied = fold_known_loads(copied, ctx.known_values)
    prepared = with_origins(copied)
    facts = analyze(prepared, ctx.maps, prog_type=ctx.prog_type)
    candidates = {
        index: site for index, site in facts.sites.items()
        if site.is_lookup and site.specializable and site.constant_key is not None
        and not site.guarded and site.map in request.inlinable_maps
        and site.map in request.snapshots
        # the first round's own miss paths (`mphN.miss`) stay calls
        and not (prepared.insns[index].label or "").startswith("mph")}
    plan = InlinePlan(())
    decisions: list[SiteDecision] = []
    if candidates:
        narrowed = ProgramFacts(prepared, facts.analysis, candidates, facts.maps)
        plan, decisions = plan_sites(narrowed, request.snapshots, {}, request.options,
                                     guard_slots=request.guard_slots,
                                     guard_versions=request.guard_versions, guard_all=True)
        plan = InlinePlan(plan.sites, max(plan.guard_slots, request.plan.guard_slots))
    steps: list[Pass] = []
    if plan.sites:
        steps.append(InlineTables(plan, values_map=PATH_VALUES_MAP,
                                  offsets_map=PATH_OFFSETS_MAP))
    steps += fold  # the copies fold even when no lookup in them became constant
    second = Pipeline([*steps, *finish, *dce, *others])
    out = second.run(prepared, ctx)
    timings += second.timings
    ctx.stats["path_inlined_sites"] = len(plan.sites)
    return out, decisions, timings
