"""One optimization cycle, offline: profile → snapshot → plan → specialize → verify.

The pieces are shared with the runtime agent; `optimize_nf` chains them on a built-in
network function and a generated trace, and `morpheus optimize` prints its report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import struct
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .analysis import ProgramFacts, analyze
from .bench.replay import Replay
from .ir import Program
from .ir.program import index_by_origin, with_origins
from .kernel import Map
from .obj import MapSpec, ObjectSpec, ProgramSpec
from .passes.guards import GuardBumps
from .passes.inline import GUARD_MAP, InlinePlan, InlineTables, SitePlan
from .passes.instrument import Instrument, SampledSite, SamplingLayout, layout_for
from .passes.pipeline import Pass, PassContext, Pipeline
from .runtime.heat import HeatReader, SiteHeat
from .runtime.plan import MapSnapshot, PlanOptions, SiteDecision, plan_sites
from .uapi import MapFlags, MapType

HOT_VALUES_MAP = "mph_hot"  # values of hot keys (the first inline pass uses mph_values)
HOT_OFFSETS_MAP = "mph_hot_offs"
PATH_ARRAY_MAX = 4096  # arrays up to this size are snapshotted whole for path specialization


def cleanup_passes() -> list[Pass]:
    """Constant propagation and dead-code elimination, when available."""
    from .passes import pipeline as registry

    try:
        from .passes import constprop, dce  # noqa: F401  (registers the passes)
    except ImportError:
        return []
    names = [n for n in ("constprop", "dce") if n in registry.REGISTRY]
    return registry.build(names)


@dataclass
class Specialization:
    """A specialized program with what it needs and how it was decided."""

    program: Program
    extra_maps: dict[str, MapSpec]
    decisions: list[SiteDecision]
    plan: InlinePlan
    timings_ms: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


def sampled_sites(facts: ProgramFacts, maps: Mapping[str, MapSpec],
                  options: PlanOptions) -> list[SampledSite]:
    """Sites worth watching: specializable lookups with a variable key on a map too large
    to inline whole."""
    out = []
    for site in facts.lookups():
        spec = maps.get(site.map)
        if not site.specializable or spec is None or site.constant_key is not None:
            continue
        if spec.max_entries <= options.whole_max or spec.type == MapType.ARRAY:
            continue  # inlined whole, or an array (variable indices are not inlined)
        out.append(SampledSite(site.index, site.map, spec.key_size))
    return out


def instrument(program: Program, spec: ObjectSpec, prog: ProgramSpec, sites: Sequence[SampledSite],
               *, rate: int = 16, slots: int = 256) -> tuple[Program, dict[str, MapSpec],
                                                              SamplingLayout]:
    layout = layout_for(sites, slots=slots, rate=rate)
    ctx = PassContext(dict(spec.maps), prog.type)
    out = Instrument(layout).run(program, ctx)
    extra = {k: v for k, v in ctx.maps.items() if k not in spec.maps}
    return out, extra, layout


def snapshot_maps(maps: Mapping[str, Map], facts: ProgramFacts, specs: Mapping[str, MapSpec],
                  heat: Mapping[int, SiteHeat], options: PlanOptions) -> dict[str, MapSnapshot]:
    """Read what the plan needs: small tables whole, large ones at their hot keys."""
    wanted: dict[str, set[bytes]] = {}
    for site in facts.lookups():
        if not site.specializable or site.map not in maps:
            continue
        keys = wanted.setdefault(site.map, set())
        if site.constant_key is not None:
            keys.add(site.constant_key)
        h = heat.get(site.index)
        if h is not None:
            keys.update(k for k, _ in h.hottest(options.hot_max, cover=options.hot_cover))
    out: dict[str, MapSnapshot] = {}
    for name, keys in wanted.items():
        live, spec = maps[name], specs[name]
        snap = MapSnapshot(spec)
        if spec.type == MapType.LRU_HASH:
            # Per-CPU LRU lists evict once one CPU used its share of the entries.
            share = (spec.max_entries // (os.cpu_count() or 1)
                     if spec.flags & MapFlags.NO_COMMON_LRU else spec.max_entries)
            half = max(1, share // 2)
            snap.crowded = live.count(limit=half) >= half
        small = spec.max_entries <= options.whole_max
        # Arrays the data plane only reads are read whole when affordable: path
        # specialization turns their variable indices into constants (next hop, backend).
        path_array = (spec.type == MapType.ARRAY and options.path_budget > 0
                      and spec.max_entries <= PATH_ARRAY_MAX
                      and not facts.maps[name].written_by_data_plane)
        if small or path_array:
            if spec.type == MapType.ARRAY:
                snap.entries.update(_array_entries(live, spec))
            else:
                for k, v in live.items():
                    snap.entries[k] = v  # type: ignore[assignment]
            snap.complete = True
        elif spec.type == MapType.HASH and live.count(limit=options.whole_max + 1) \
                <= options.whole_max:
            # A hash map may hold few entries although it could hold many.
            for k, v in live.items():
                snap.entries[k] = v  # type: ignore[assignment]
            snap.complete = True
        for key in keys:
            if key not in snap.entries:
                snap.entries[key] = live.lookup(key)  # type: ignore[assignment]
        out[name] = snap
    return out


def _array_entries(live: Map, spec: MapSpec) -> dict[bytes, bytes]:
    """Every index of an array: one batch walk when the kernel offers it."""
    if spec.max_entries > 64:
        try:
            return dict(live.lookup_batch())  # type: ignore[arg-type]
        except OSError:
            pass
    return {struct.pack("<I", i): live.lookup(struct.pack("<I", i))  # type: ignore[misc]
            for i in range(spec.max_entries)}


def specialize(program: Program, spec: ObjectSpec, prog: ProgramSpec, facts: ProgramFacts,
               snapshots: Mapping[str, MapSnapshot], heat: Mapping[int, SiteHeat],
               options: PlanOptions | None = None, *, guard_versions: Mapping[str, int]
               | None = None, passes: Sequence[Pass] | None = None,
               validate: bool = False, converge: frozenset[int] = frozenset(),
               drop: frozenset[int] = frozenset(), verifier_base: int | None = None,
               skip_maps: Mapping[str, str] | None = None,
               guard_slots: Mapping[str, int] | None = None,
               bump_slots: Mapping[str, int] | None = None,
               sampling: SamplingLayout | None = None) -> Specialization:
    """Plan and apply inlining plus cleanup. `program` must carry provenance
    (`with_origins`) matching `facts`' instruction indices.

    Offline, only maps the data plane writes are guarded. The agent passes `guard_slots`
    for every map it may inline (the control plane and outside writers change them too) and
    `bump_slots` for the maps the data plane writes (which get version bumps). Sites of
    the maps in `skip_maps` are left alone, with the reason given there.
    """
    with _collector_paused():
        return _specialize(program, spec, prog, facts, snapshots, heat, options,
                           guard_versions=guard_versions, passes=passes, validate=validate,
                           converge=converge, drop=drop, verifier_base=verifier_base,
                           skip_maps=skip_maps, guard_slots=guard_slots,
                           bump_slots=bump_slots, sampling=sampling)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
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


def _specialize(program: Program, spec: ObjectSpec, prog: ProgramSpec, facts: ProgramFacts,
                snapshots: Mapping[str, MapSnapshot], heat: Mapping[int, SiteHeat],
                options: PlanOptions | None, *, guard_versions: Mapping[str, int] | None,
                passes: Sequence[Pass] | None, validate: bool, converge: frozenset[int],
                drop: frozenset[int], verifier_base: int | None,
                skip_maps: Mapping[str, str] | None, guard_slots: Mapping[str, int] | None,
                bump_slots: Mapping[str, int] | None, sampling: SamplingLayout | None
                ) -> Specialization:
    start = time.perf_counter()
    options = options or PlanOptions()
    data_plane = sorted({s.map for s in facts.lookups() if s.specializable and s.guarded})
    if guard_slots is None:
        guard_slots = {name: n for n, name in enumerate(data_plane)}
    if bump_slots is None:
        bump_slots = {m: guard_slots[m] for m in data_plane if m in guard_slots}
    plan, decisions = plan_sites(facts, snapshots, heat, options, guard_slots=guard_slots,
                                 guard_versions=guard_versions, guard_all=True)
    if skip_maps:
        plan = InlinePlan(tuple(p for p in plan.sites if p.map not in skip_maps),
                          plan.guard_slots)
        for d in decisions:
            if d.plan is not None and d.plan.map in skip_maps:
                d.plan, d.mode, d.keys, d.coverage = None, "none", 0, None
                d.reason = skip_maps[d.site.map]
    if verifier_base is not None:
        costs = {name: (3.0 if m.type == MapType.LPM_TRIE else 1.0)
                 for name, m in spec.maps.items()}
        extra_converge, extra_drop = relieve_for_budget(plan, verifier_base,
                                                        options.verifier_budget,
                                                        lookup_costs=costs)
        converge, drop = converge | extra_converge, drop | extra_drop
    if converge or drop:
        plan = InlinePlan(tuple(dataclasses.replace(p, converge=p.site in converge)
                                for p in plan.sites if p.site not in drop), plan.guard_slots)
        for d in decisions:
            if d.plan is not None and d.plan.site in drop:
                d.plan, d.mode = None, "none"
                d.reason = "dropped: the verifier could not cope with the specialized program"
            elif d.plan is not None and d.plan.site in converge:
                d.reason += " (converging hits, for the verifier)"
    ctx = PassContext(dict(spec.maps), prog.type,
                      analysis=facts.analysis if facts.analysis.program is program else None)
    pipeline_passes: list[Pass] = []
    used_guards = {p.map for p in plan.sites if p.guard_slot is not None}
    bumped = {m: bump_slots[m] for m in used_guards if m in bump_slots}
    if bumped:
        read_ranges = _read_ranges(facts, plan)
        pipeline_passes.append(GuardBumps(bumped, read_ranges))
    if sampling is not None and sampling.sites:
        # Sampling goes before the comparison tree, so it sees every lookup, not only the
        # misses (which would make the next plan chase the keys it does not inline).
        pipeline_passes.append(Instrument(sampling))
    # Constant keys and whole tables first, then the cleanup passes fold what they made
    # constant; comparison trees over hot keys have nothing to fold, so they come last and
    # the cleanup passes do not have to walk them.
    early = InlinePlan(tuple(p for p in plan.sites if p.constant_key or p.complete),
                       plan.guard_slots)
    late = InlinePlan(tuple(p for p in plan.sites if not (p.constant_key or p.complete)),
                      plan.guard_slots)
    pipeline_passes.append(InlineTables(early))
    pipeline_passes += list(passes) if passes is not None else cleanup_passes()
    if late.sites:
        pipeline_passes.append(InlineTables(late, values_map=HOT_VALUES_MAP,
                                            offsets_map=HOT_OFFSETS_MAP, missing_ok=True))
    pipeline = Pipeline(pipeline_passes, validate=validate)
    out = pipeline.run(program, ctx)
    finished = False
    if late.sites and options.path_budget > 0:
        out, finished = _second_round(out, ctx, late, facts, snapshots, options, pipeline,
                                      passes, guard_slots, guard_versions)
    if options.coalesce_stores and not finished:
        out = _coalesce_stores(out, ctx, pipeline, passes)
    extra = {k: v for k, v in ctx.maps.items() if k not in spec.maps}
    if used_guards and GUARD_MAP not in extra:
        extra[GUARD_MAP] = ctx.maps[GUARD_MAP]
    result = Specialization(out, extra, decisions, plan,
                            {t.name: round(t.ms, 3) for t in pipeline.timings}, dict(ctx.stats))
    result.timings_ms["total"] = round((time.perf_counter() - start) * 1000, 3)
    return result


def _second_round(out: Program, ctx: PassContext, late: InlinePlan, facts: ProgramFacts,
                  snapshots: Mapping[str, MapSnapshot], options: PlanOptions,
                  pipeline: Pipeline, passes: Sequence[Pass] | None,
                  guard_slots: Mapping[str, int], guard_versions: Mapping[str, int] | None
                  ) -> tuple[Program, bool]:
    """Path specialization after the hot-key trees (see `path_specialization`); also
    coalesces stores when it ran (True)."""
    from .passes.stores import CoalesceStores
    from .path_specialization import PathRequest, specialize_paths

    request = PathRequest(
        late, HOT_VALUES_MAP, snapshots, options,
        inlinable_maps={s.map for s in facts.lookups() if s.specializable},
        guard_slots=guard_slots, guard_versions=guard_versions or {},
        cleanup=list(passes) if passes is not None else cleanup_passes(),
        budget=options.path_budget)
    finish = [CoalesceStores()] if options.coalesce_stores else []
    out, _, timings = specialize_paths(out, ctx, request, finish)
    pipeline.timings += [dataclasses.replace(t, name=f"paths:{t.name}") for t in timings]
    return out, any(t.name == "stores" for t in timings)


def _coalesce_stores(out: Program, ctx: PassContext, pipeline: Pipeline,
                     passes: Sequence[Pass] | None) -> Program:
    """Wide stores for the constant bytes the specialization left (then drop dead moves)."""
    from .passes.stores import CoalesceStores

    before = ctx.stats.get("coalesced_stores", 0)
    steps: list[Pass] = [CoalesceStores()]
    tail = Pipeline(steps)
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


def profile(prog: ProgramSpec, btf: object, maps: Mapping[str, Map], frames: Sequence[bytes],
            program: Program, extra_maps: Mapping[str, Map], layout: SamplingLayout, *,
            ingress: int = 0, namespace: Any = None, passes: int = 1) -> dict[int, SiteHeat]:
    """Replay the trace through the instrumented program and read the sampled keys."""
    all_maps = {**maps, **extra_maps}
    with Replay(prog, btf, all_maps, frames, program=program, ingress_ifindex=ingress,
                namespace=namespace) as replay:
        replay.run(passes)
    reader = HeatReader(layout, all_maps, decay=1.0)
    return reader.read()


def prepare(program: Program) -> tuple[Program, dict[int, int]]:
    """Give every instruction provenance; returns the program and index → provenance."""
    prepared = with_origins(program)
    return prepared, {i: o for o, i in index_by_origin(prepared).items()}


def analyze_program(prog: ProgramSpec, maps: Mapping[str, MapSpec]) -> tuple[Program,
                                                                               ProgramFacts]:
    with _collector_paused():
        program, _ = prepare(prog.program)
        return program, analyze(program, maps, prog_type=prog.type)


def all_read_ranges(facts: ProgramFacts, maps: list[str]
                     ) -> dict[str, tuple[tuple[int, int], ...] | None]:
    """Bytes any specializable site of each map reads (a superset of any plan's)."""
    out: dict[str, list[tuple[int, int]] | None] = {m: [] for m in maps}
    for site in facts.lookups():
        if site.map not in out or not site.specializable:
            continue
        for use in site.uses:
            ranges = out[site.map]
            if ranges is None or use.kind != "read":
                continue
            if use.offset is None or not use.size:
                out[site.map] = None
            else:
                ranges.append((use.offset, use.offset + use.size))
    return {k: (tuple(v) if v is not None else None) for k, v in out.items()}
