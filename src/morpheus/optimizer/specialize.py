"""Specialization: plan the sites, inline, clean up, within the verifier budget.

`specialize(request)` is the one entry point; the runtime agent and the offline cycle both
build a `SpecializeRequest` and read back a `Specialization`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..analysis import ProgramFacts
from ..ir import Program
from ..obj import MapSpec
from ..passes.guards import GuardBumps
from ..passes.inline import GUARD_MAP, InlinePlan, InlineTables, SitePlan
from ..passes.instrument import Instrument, SamplingLayout
from ..passes.pipeline import Pass, PassContext, Pipeline
from ..passes.shadow import ShadowValues
from ..uapi import MapType
from .budget import relieve_for_budget
from .heat import SiteHeat
from .plan import MapSnapshot, PlanOptions, SiteDecision, plan_sites
from .shadow import is_shadow_site, plan_shadow_sites, shadow_maps, stable_value
from .target import Target

HOT_VALUES_MAP = "mph_hot"  # values of hot keys (the first inline pass uses mph_values)
HOT_OFFSETS_MAP = "mph_hot_offs"


def cleanup_passes() -> list[Pass]:
    """Constant propagation and dead-code elimination, when available."""
    from ..passes import pipeline as registry

    try:
        from ..passes import constprop, dce  # noqa: F401  (registers the passes)
    except ImportError:
        return []
    names = [n for n in ("constprop", "dce") if n in registry.REGISTRY]
    return registry.build(names)


@dataclass(frozen=True)
class Guards:
    """Which maps' inlined sites carry a version guard, and at which versions.

    `slots` (map → guard slot): None guards only the maps the data plane writes, numbered
    in name order (offline). The agent passes a slot for every map it may inline, since the
    control plane and outside writers change them too. `bumps` (map → slot): the maps whose
    data-plane writes get version bumps (None: those of `slots` the data plane writes).
    `versions`: the version each map's snapshot was taken at.
    """

    slots: Mapping[str, int] | None = None
    bumps: Mapping[str, int] | None = None
    versions: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SpecializeRequest:
    """Everything one specialization needs.

    `passes` replaces the cleanup passes (None: constant propagation and DCE); `sampling`
    keeps key sampling in the specialized version; `skip_maps` leaves the sites of those
    maps alone, with the reason given; `verifier_base` (the original's verified_insns)
    turns on the verifier budget; `converge`/`drop` are sites given up after a verifier
    refusal (see `relieved`); `final_passes` run on the finished program, after the hot-key
    trees and store coalescing (the agent's custom passes; tests inject miscompiles there).
    """

    target: Target
    snapshots: Mapping[str, MapSnapshot]
    heat: Mapping[int, SiteHeat]
    options: PlanOptions = field(default_factory=PlanOptions)
    guards: Guards = field(default_factory=Guards)
    passes: Sequence[Pass] | None = None
    sampling: SamplingLayout | None = None
    skip_maps: Mapping[str, str] = field(default_factory=dict)
    verifier_base: int | None = None
    converge: frozenset[int] = frozenset()
    drop: frozenset[int] = frozenset()
    validate: bool = False
    final_passes: Sequence[Pass] = ()

    def relieved(self, converge: frozenset[int], drop: frozenset[int]) -> SpecializeRequest:
        """The same request with these sites converged and dropped."""
        return dataclasses.replace(self, converge=converge, drop=drop)


@dataclass
class Specialization:
    """A specialized program with what it needs and how it was decided."""

    program: Program
    extra_maps: dict[str, MapSpec]
    decisions: list[SiteDecision]
    plan: InlinePlan
    timings_ms: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


def specialize(request: SpecializeRequest) -> Specialization:
    """Plan and apply inlining plus cleanup, then path specialization after the hot-key
    trees and store coalescing (`optimizer.paths`).

    Sites of the maps in `request.skip_maps` are left alone; with a `verifier_base`, the
    least valuable comparison trees converge or are dropped to keep the verifier's work
    under `options.verifier_budget`.
    """
    with collector_paused():
        return _specialize(request)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the duration: the passes allocate hundreds of
    thousands of short-lived tuples (instructions, abstract states) and make no cycles, and
    its generation-2 sweeps over that heap took 40% of a specialization."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class PlannedRequest:
    """The plan a request leads to, before any code is made (`plan_request`)."""

    plan: InlinePlan
    decisions: list[SiteDecision]
    guard_slots: Mapping[str, int]
    bump_slots: Mapping[str, int]

    def fingerprint(self, request: SpecializeRequest) -> tuple[object, ...]:
        """What the specialized program depends on: the sites, their keys and inlined
        values, guard slots and versions, the sampling rates, the sites given up. Two
        requests with one fingerprint make the same program (weights only order the
        comparison trees), so a runtime can skip specializing and checking again."""
        facts = request.target.facts
        sites = tuple((p.site, p.map, p.complete, p.constant_key, p.guard_slot,
                       p.guard_version, p.converge, p.direct, p.known_bytes,
                       tuple((e.key, stable_value(p, e.value, facts)) for e in p.entries))
                      for p in self.plan.sites)
        rates = request.sampling.rates if request.sampling is not None else ()
        return (sites, self.plan.guard_slots, tuple(rates), tuple(sorted(request.skip_maps)),
                tuple(sorted(request.converge)), tuple(sorted(request.drop)),
                request.passes is None)


def plan_request(request: SpecializeRequest) -> PlannedRequest:
    """Plan the sites of `request` (cheap: no code is made); `specialize` starts here."""
    facts = request.target.facts
    data_plane = sorted({s.map for s in facts.lookups() if s.specializable and s.guarded}
                        | (shadow_maps(facts, request.target.spec.maps)
                           if request.options.shadow else set()))
    guard_slots = request.guards.slots
    if guard_slots is None:
        guard_slots = {name: n for n, name in enumerate(data_plane)}
    bump_slots = request.guards.bumps
    if bump_slots is None:
        bump_slots = {m: guard_slots[m] for m in data_plane if m in guard_slots}
    plan, decisions = plan_sites(facts, request.snapshots, request.heat, request.options,
                                 guard_slots=guard_slots,
                                 guard_versions=request.guards.versions, guard_all=True)
    if request.options.shadow:
        shadow = plan_shadow_sites(facts, request.snapshots, request.heat, request.options,
                                   guard_slots, request.guards.versions, decisions)
        plan = InlinePlan(plan.sites + tuple(shadow), plan.guard_slots)
    skip_maps = request.skip_maps
    if skip_maps:
        plan = InlinePlan(tuple(p for p in plan.sites if p.map not in skip_maps),
                          plan.guard_slots)
        for d in decisions:
            if d.plan is not None and d.plan.map in skip_maps:
                d.plan, d.mode, d.keys, d.coverage = None, "none", 0, None
                d.reason = skip_maps[d.site.map]
    return PlannedRequest(plan, decisions, guard_slots, bump_slots)


def _specialize(request: SpecializeRequest) -> Specialization:
    start = time.perf_counter()
    target, options = request.target, request.options
    facts, spec, prog, program = target.facts, target.spec, target.prog, target.program
    planned = plan_request(request)
    plan, decisions = planned.plan, planned.decisions
    guard_slots, bump_slots = planned.guard_slots, planned.bump_slots
    converge, drop = request.converge, request.drop
    if request.verifier_base is not None:
        costs = {name: (3.0 if m.type == MapType.LPM_TRIE else 1.0)
                 for name, m in spec.maps.items()}
        # Shadow hits rejoin the original code as soon as their pointer is dead: their
        # states multiply only the short copy after the site, not the program.
        trees = InlinePlan(tuple(p for p in plan.sites if not is_shadow_site(p, facts)),
                           plan.guard_slots)
        extra_converge, extra_drop = relieve_for_budget(trees, request.verifier_base,
                                                        options.verifier_budget,
                                                        lookup_costs=costs)
        converge, drop = converge | extra_converge, drop | extra_drop
    if converge or drop:
        plan = InlinePlan(tuple(dataclasses.replace(p, converge=p.converge or p.site in converge)
                                for p in plan.sites if p.site not in drop), plan.guard_slots)
        for d in decisions:
            if d.plan is not None and d.plan.site in drop:
                d.plan, d.mode = None, "none"
                d.reason = "dropped: the verifier could not cope with the specialized program"
            elif d.plan is not None and d.plan.site in converge:
                d.reason += " (converging hits, for the verifier)"
    ctx = PassContext(dict(spec.maps), prog.type,
                      analysis=facts.analysis if facts.analysis.program is program else None)
    # Inner maps resolved through their outer map are inlined under the slot's name (the
    # miss path still calls the helper on the pointer the outer lookup returned).
    resolved = {s.map: request.snapshots[s.map].spec for s in facts.lookups()
                if s.inner_of is not None and s.map in request.snapshots}
    ctx.maps.update(resolved)
    pipeline_passes: list[Pass] = []
    used_guards = {p.map for p in plan.sites if p.guard_slot is not None}
    bumped = {m: bump_slots[m] for m in used_guards if m in bump_slots}
    if bumped:
        pipeline_passes.append(GuardBumps(bumped, _read_ranges(facts, plan)))
    sampling = request.sampling
    if sampling is not None and sampling.sites:
        # Sampling goes before the comparison tree, so it sees every lookup, not only the
        # misses (which would make the next plan chase the keys it does not inline).
        pipeline_passes.append(Instrument(sampling))
    # Constant keys and whole tables first, then the cleanup passes fold what they made
    # constant; comparison trees over hot keys have nothing to fold, so they come last and
    # the cleanup passes do not have to walk them.
    # Converged address-range searches and direct tables fold nothing either (their values
    # sit behind a variable offset), and trees are large: they come last too.
    def folds(p: SitePlan) -> bool:
        return p.constant_key or (p.complete and not (p.ranges and (p.converge or p.direct)))

    shadowed = tuple(p for p in plan.sites if is_shadow_site(p, facts))
    inlined = [p for p in plan.sites if p not in shadowed]
    early = InlinePlan(tuple(p for p in inlined if folds(p)), plan.guard_slots)
    late = InlinePlan(tuple(p for p in inlined if not folds(p)), plan.guard_slots)
    pipeline_passes.append(InlineTables(early))
    cleanup = list(request.passes) if request.passes is not None else cleanup_passes()
    if options.widen and any(p.name == "dce" for p in cleanup):
        # Before the cleanup, whose dce drops the byte chains the wide accesses replace.
        from ..passes.widen import WidenBytes

        pipeline_passes.append(WidenBytes())
    pipeline_passes += cleanup
    if late.sites:
        pipeline_passes.append(InlineTables(late, values_map=HOT_VALUES_MAP,
                                            offsets_map=HOT_OFFSETS_MAP, missing_ok=True))
    if shadowed:
        pipeline_passes.append(ShadowValues(shadowed))
    pipeline = Pipeline(pipeline_passes, validate=request.validate)
    out = pipeline.run(program, ctx)
    finished = False
    if late.sites and options.path_budget > 0:
        out, finished = _second_round(out, ctx, late, request, guard_slots, pipeline)
    if options.coalesce_stores and not finished:
        out = _coalesce_stores(out, ctx, pipeline, request.passes)
    if request.final_passes:
        final = Pipeline(list(request.final_passes), validate=request.validate)
        out = final.run(out, ctx)
        pipeline.timings += final.timings
    extra = {k: v for k, v in ctx.maps.items() if k not in spec.maps and k not in resolved}
    if used_guards and GUARD_MAP not in extra:
        extra[GUARD_MAP] = ctx.maps[GUARD_MAP]
    result = Specialization(out, extra, decisions, plan,
                            {t.name: round(t.ms, 3) for t in pipeline.timings}, dict(ctx.stats))
    result.timings_ms["total"] = round((time.perf_counter() - start) * 1000, 3)
    return result


def _second_round(out: Program, ctx: PassContext, late: InlinePlan,
                  request: SpecializeRequest, guard_slots: Mapping[str, int],
                  pipeline: Pipeline) -> tuple[Program, bool]:
    """Path specialization after the hot-key trees (see `optimizer.paths`); also coalesces
    stores when it ran (True)."""
    from ..passes.stores import CoalesceStores
    from .paths import PathRequest, specialize_paths

    options = request.options
    path_request = PathRequest(
        late, HOT_VALUES_MAP, request.snapshots, options,
        inlinable_maps=_second_round_maps(request),
        guard_slots=guard_slots, guard_versions=request.guards.versions,
        cleanup=list(request.passes) if request.passes is not None else cleanup_passes(),
        budget=options.path_budget,
        written_maps={m.name for m in request.target.facts.maps.values()
                      if m.written_by_data_plane})
    finish = [CoalesceStores()] if options.coalesce_stores else []
    out, _, timings = specialize_paths(out, ctx, path_request, finish)
    pipeline.timings += [dataclasses.replace(t, name=f"paths:{t.name}") for t in timings]
    return out, any(t.name == "stores" for t in timings)


def _second_round_maps(request: SpecializeRequest) -> set[str]:
    """Maps the second round may inline at the constant keys the copies make. With guard
    slots given (the agent), only those maps: a write by anyone moves their guard. Without
    (offline), the maps the data plane does not write, as in the first round."""
    facts = request.target.facts
    if request.guards.slots is not None:
        return set(request.guards.slots)
    return {name for name, m in facts.maps.items() if not m.written_by_data_plane}


def _coalesce_stores(out: Program, ctx: PassContext, pipeline: Pipeline,
                     passes: Sequence[Pass] | None) -> Program:
    """Wide stores for the constant bytes the specialization left (then drop dead moves)."""
    from ..passes.stores import CoalesceStores

    before = ctx.stats.get("coalesced_stores", 0)
    tail = Pipeline([CoalesceStores()])
    out = tail.run(out, ctx)
    if ctx.stats.get("coalesced_stores", 0) > before:
        dce = [p for p in (list(passes) if passes is not None else cleanup_passes())
               if p.name == "dce"]
        more = Pipeline(dce)
        out = more.run(out, ctx)
        tail.timings += more.timings
    pipeline.timings += [dataclasses.replace(t, name=f"stores:{t.name}")
                         for t in tail.timings]
    return out


def _read_ranges(facts: ProgramFacts, plan: InlinePlan
                 ) -> dict[str, tuple[tuple[int, int], ...] | None]:
    """Value bytes the planned sites read, per map (None when a read has an unknown
    offset or size)."""
    out: dict[str, list[tuple[int, int]] | None] = {}
    for p in plan.sites:
        site = facts.sites.get(p.site)
        if site is None:
            out[p.map] = None
            continue
        if is_shadow_site(p, facts):
            # Its hits read shadow slots that its own stores keep in step: those stores
            # need no bump (they would send every hit back to the map).
            out.setdefault(p.map, [])
            continue
        ranges = out.setdefault(p.map, [])
        for use in site.uses:
            if ranges is None:
                break
            if use.kind == "read" and use.offset is not None and use.size:
                ranges.append((use.offset, use.offset + use.size))
            elif use.kind == "read":
                out[p.map] = None
                ranges = None
    return {k: (tuple(v) if v is not None else None) for k, v in out.items()}
