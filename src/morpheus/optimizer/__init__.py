"""The optimizer: heat model, planning, specialization requests and the verifier budget.

Used by the runtime agent and by the offline cycle (`morpheus optimize`); it imports
neither. One entry point, `specialize(SpecializeRequest(...))`:

    target = Target.analyze(spec, spec.program("xdp_main"))
    snapshots = snapshot_maps(maps, target.facts, spec.maps, heat, options)
    result = specialize(SpecializeRequest(target, snapshots, heat, options))
"""

from .budget import is_complexity_error, next_relief, relieve_for_budget, verifier_estimate
from .heat import HeatReader, SiteHeat
from .plan import MapSnapshot, PlanOptions, SiteDecision, plan_sites
from .snapshot import WholeReads, snapshot_maps
from .specialize import (
    HOT_OFFSETS_MAP,
    HOT_VALUES_MAP,
    Guards,
    PlannedRequest,
    Specialization,
    SpecializeRequest,
    cleanup_passes,
    plan_request,
    specialize,
)
from .target import (
    Target,
    all_read_ranges,
    analyze_program,
    guarded_maps,
    instrument,
    prepare,
    sampled_sites,
    tail_call_arrays,
    with_guard_bumps,
)

__all__ = [
    "HOT_OFFSETS_MAP",
    "HOT_VALUES_MAP",
    "Guards",
    "HeatReader",
    "MapSnapshot",
    "PlanOptions",
    "PlannedRequest",
    "SiteDecision",
    "SiteHeat",
    "Specialization",
    "SpecializeRequest",
    "Target",
    "WholeReads",
    "all_read_ranges",
    "analyze_program",
    "cleanup_passes",
    "guarded_maps",
    "instrument",
    "is_complexity_error",
    "next_relief",
    "plan_request",
    "plan_sites",
    "prepare",
    "relieve_for_budget",
    "sampled_sites",
    "snapshot_maps",
    "specialize",
    "tail_call_arrays",
    "verifier_estimate",
    "with_guard_bumps",
]
