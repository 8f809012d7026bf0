"""What the agent's additions cost a program: sampling instrumentation and version guards.

`instrumentation_cost(nf)` benchmarks, interleaved on the same trace and maps:
A = the original program, B = the version the agent starts with (version bumps where the
data plane writes inlinable maps, plus key sampling at every watched site).
"""

from __future__ import annotations

from typing import Any

from ..nf import NetworkFunction
from ..optimizer import PlanOptions, Target, instrument, sampled_sites, with_guard_bumps
from ..passes.instrument import SampledSite
from ..traffic.generate import generate
from .compare import Subject, run_bench


def instrumentation_cost(nf: NetworkFunction, *, profile: str = "high", packets: int = 10_000,
                         rounds: int = 5, rate: int = 16, every_site: bool = False
                         ) -> dict[str, Any]:
    """A against B as above. With `every_site`, B is the naive instrumentation instead:
    key sampling at every lookup with a variable key (whatever its map), and no guards."""
    trace = generate(nf, profile, packets, seed=1)
    original = Subject("original", nf.object_path, nf.program)
    spec = original.load_spec()
    prog = original.program_spec()
    target = Target.analyze(spec, prog)
    sites = sampled_sites(target.facts, spec.maps, PlanOptions())
    if every_site:
        sites = [SampledSite(s.index, s.map, spec.maps[s.map].key_size)
                 for s in target.facts.lookups()
                 if s.constant_key is None and s.map in spec.maps]
    guarded = [] if every_site else target.guarded_maps()
    base, extra = with_guard_bumps(target, {m: n for n, m in enumerate(guarded)})
    instrumented, inst_maps, _layout = instrument(base, spec, prog, sites, rate=rate)
    extra.update(inst_maps)
    subject = Subject("instrumented", nf.object_path, nf.program, program=instrumented,
                      extra_maps=extra)
    report = run_bench([original, subject], trace, nf=nf, rounds=rounds, throughput=False,
                       latency=False)
    report.pop("_series", None)
    a, b = report["A"]["ns_per_packet"]["median"], report["B"]["ns_per_packet"]["median"]
    return {"nf": nf.name, "sites": [f"{s.map}@{s.site}" for s in sites],
            "rate": rate, "every_site": every_site, "original_ns": a, "instrumented_ns": b,
            "cost_ns": round(b - a, 1), "cost_ratio": round(b / a, 3) if a else None,
            "verdicts_match": report.get("verdicts_match")}
