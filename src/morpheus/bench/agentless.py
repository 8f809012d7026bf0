"""What keeping the data plane correct without the agent costs per packet.

A specialized program the agent leaves behind (killed, or stopped without detaching) must
still honour every later map write. Two things make that so: every inlined site checks its
map's guard version (one load and one compare; the generic lookup when it moved), and the
write watcher that moves versions on outside writes is pinned, so it outlives the agent.
The watcher costs nothing per packet; the guards do. This benchmark measures them on the
same trace and map state, interleaved (`bench.compare.run_bench`):

- A, "dp-guards": the same specialization, with guards only on the sites of maps the data
  plane writes (what correctness needs if every control-plane write is made through a live
  agent that re-specializes first);
- B, "agent": what the agent runs: every inlined site guarded.

    python -m morpheus.bench.agentless [router switch firewall lb] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..nf import NetworkFunction, get
from ..optimizer import (
    Guards,
    HeatReader,
    PlanOptions,
    SpecializeRequest,
    Target,
    instrument,
    sampled_sites,
    snapshot_maps,
    specialize,
)
from ..passes.inline import GUARD_MAP
from ..traffic.generate import generate
from .compare import Subject, _warm_up, open_environment, run_bench
from .replay import Replay


def guard_cost(nf: NetworkFunction, *, profile_name: str = "high", packets: int = 10_000,
               rounds: int = 5, seed: int = 1) -> dict[str, Any]:
    """Benchmark the specialization with data-plane guards only (A) against the agent's
    fully guarded one (B) on `nf`'s default configuration."""
    from ..kernel import Map
    from ..loader import create_map, load_program_spec

    trace = generate(nf, profile_name, packets, seed)
    original = Subject("original", nf.object_path, nf.program)
    spec, prog = original.load_spec(), original.program_spec()
    target = Target.analyze(spec, prog)
    program, facts = target.program, target.facts
    options = PlanOptions()
    candidates = sorted({s.map for s in facts.lookups() if s.specializable})
    data_plane = sorted({s.map for s in facts.lookups() if s.specializable and s.guarded})
    written = sorted(m.name for m in facts.maps.values()
                     if m.written_by_data_plane and m.name in spec.maps)
    ingress = trace.main_ingress if trace.main_ingress >= 2 else 0
    environment = open_environment(original, nf)
    saved: dict[str, Map] = {}
    try:
        _warm_up(environment, original, trace)
        sites = sampled_sites(facts, spec.maps, options)
        instrumented, inst_specs, layout = instrument(program, spec, prog, sites)
        extra: dict[str, Map] = {}
        with environment.namespace.entered():
            for name, mspec in inst_specs.items():
                extra[name] = create_map(mspec, object_name=spec.name)
        try:
            all_maps = {**environment.maps, **extra}
            with Replay(prog, spec.btf, all_maps, trace.frames, program=instrumented,
                        ingress_ifindex=ingress, namespace=environment.namespace) as replay:
                replay.run(1)
            heat = HeatReader(layout, all_maps, decay=1.0).read()
        finally:
            for m in extra.values():
                m.close()
        snapshots = snapshot_maps(environment.maps, facts, spec.maps, heat, options)
        with environment.namespace.entered(), load_program_spec(
                prog, environment.maps, btf_fd=environment.btf_fd) as loaded:
            # The yardstick of the verifier budget, as the agent measures it.
            verifier_base = loaded.info().verified_insns
        with environment.namespace.entered():
            saved = {n: environment.maps[n].clone() for n in written}
    finally:
        environment.close()

    # One slot numbering for both: run side by side, they share the guard map, and a
    # data-plane bump by one must move the same map's version for the other.
    slots = {m: n for n, m in enumerate(candidates)}

    def variant(label: str, guarded: list[str]) -> Subject:
        guards = Guards(slots={m: slots[m] for m in guarded},
                        bumps={m: slots[m] for m in data_plane},
                        versions={m: 0 for m in guarded})
        result = specialize(SpecializeRequest(target, snapshots, heat, options, guards,
                                              verifier_base=verifier_base))
        return Subject(label, nf.object_path, nf.program, program=result.program,
                       extra_maps=dict(result.extra_maps))

    def prepare(env: Any) -> None:
        # Both start from the state the profiling left (connection tables, learnt MACs).
        with env.namespace.entered():
            for name, m in saved.items():
                env.maps[name].copy_from(m)

    try:
        subjects = [variant("dp-guards", data_plane), variant("agent", candidates)]
        if GUARD_MAP in subjects[0].extra_maps:  # sized for every slot
            subjects[0].extra_maps[GUARD_MAP] = subjects[1].extra_maps[GUARD_MAP]
        report = run_bench(subjects, trace, nf=nf, rounds=rounds, throughput=False,
                           latency=False, check=False, prepare=prepare)
    finally:
        for m in saved.values():
            m.close()
    report.pop("_series", None)
    a, b = report["A"]["ns_per_packet"], report["B"]["ns_per_packet"]
    speedup = report["speedup"]  # per round: median of pairwise ns(A) / ns(B)
    return {
        "nf": nf.name, "guarded_maps": {"dp-guards": data_plane, "agent": candidates},
        "dp_guards_ns": a, "agent_ns": b,
        "cost_ns": round(b["median"] - a["median"], 1),
        # B relative to A: 1.02 means the agent's guards cost 2% per packet.
        "ratio": {"min": round(1 / speedup["max"], 3), "median": round(1 / speedup["median"], 3),
                  "max": round(1 / speedup["min"], 3)},
        "insns": {"dp-guards": report["A"]["insns"], "agent": report["B"]["insns"]},
        "harness_overhead_ns": report["harness_overhead_ns"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nfs", nargs="*", default=["router", "switch", "firewall", "lb"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--packets", type=int, default=10_000)
    args = parser.parse_args(argv)
    for name in args.nfs:
        print(json.dumps(guard_cost(get(name), rounds=args.rounds, packets=args.packets)),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
