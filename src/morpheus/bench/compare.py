"""Side-by-side benchmarks: programs A and B on the same trace, interleaved, as ratios.

For each subject (a BPF object, optionally with replaced instructions) the NF's default
configuration is applied to its own fresh maps, the trace's warm-up frames are processed,
and then each round measures A and B (in alternating order) on:
- ns per packet by in-kernel replay, net of the harness overhead measured in the same round;
- latency percentiles (the harness times each call; a separate pass, the timing adds cost);
- end-to-end Mpps over a veth pair (optional).

Before the rounds, `verdicts_match` checks that a replay's per-packet verdicts equal those
of running every packet individually through the program, from the same starting state.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from ..nf import NetworkFunction
from ..obj import ProgramSpec
from ..traffic.generate import Trace
from ..world.environment import (
    Environment,
    Subject,
    add_extra_maps,
    maps_compatible,
    open_environment,
    warm_up,
)
from .replay import Replay, latency_percentiles
from .skb_replay import open_replay
from .throughput import Throughput

SAMPLES = 3  # alternating passes per program copy
COPIES = 4  # loads of each program per benchmark, each measured every round (identical code
# placed elsewhere by the JIT runs a little faster or slower; the copies average that out)


def _ingress(trace: Trace, nf: NetworkFunction | None) -> int:
    main = trace.main_ingress
    return main if nf is not None and main >= 2 else 0


Prepare = Callable[[Environment], None]


def check_verdicts(subject: Subject, trace: Trace, nf: NetworkFunction | None, *,
                   prepare: Prepare | None = None, config: Any = None) -> dict[str, Any]:
    """Replay once and run every packet individually, each from the same fresh state;
    compare the per-packet verdicts."""
    from ..loader import load_program_spec

    ingress = _ingress(trace, nf)
    pspec = subject.program_spec()
    first = open_environment(subject, nf, config)
    try:
        warm_up(first, subject, trace)
        if prepare is not None:
            prepare(first)
        with open_replay(pspec, first.spec.btf, first.maps, trace.frames, program=subject.program,
                    ingress_ifindex=ingress, namespace=first.namespace) as replay:
            replay.run()
            replayed = replay.verdicts()
    finally:
        first.close()
    second = open_environment(subject, nf, config)
    try:
        warm_up(second, subject, trace)
        if prepare is not None:
            prepare(second)
        with second.namespace.entered():
            prog = load_program_spec(pspec, second.maps, program=subject.program,
                                     btf_fd=second.btf_fd)
        try:
            individual = [second.run_one(prog, f, ingress) for f in trace.frames]
        finally:
            prog.close()
    finally:
        second.close()
    mismatches = [i for i, (a, b) in enumerate(zip(replayed, individual, strict=True)) if a != b]
    return {"match": not mismatches, "mismatches": len(mismatches),
            "first_mismatch": mismatches[0] if mismatches else None,
            "verdicts": _counts(individual)}


def _counts(verdicts: Sequence[int]) -> dict[str, int]:
    names = {0: "aborted", 1: "drop", 2: "pass", 3: "tx", 4: "redirect"}
    out: dict[str, int] = {}
    for v in verdicts:
        key = names.get(v, str(v))
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def spread(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits)}


@dataclass
class _Runner:
    subject: Subject
    environment: Environment
    replay: Replay
    latency: Replay | None
    throughput: Throughput | None
    gross_ns: list[float] = field(default_factory=list)
    net_ns: list[float] = field(default_factory=list)
    mpps: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    latencies: list[int] = field(default_factory=list)
    factory: Callable[[], Replay] | None = None  # a fresh copy of `replay` (new JIT image)


def _throughput_devices(ingress: int) -> tuple[str, str]:
    if ingress >= 2:
        peer = ingress + 1 if ingress % 2 == 0 else ingress - 1
        return f"port{ingress}", f"port{peer}"
    return "port10", "port11"


def run_bench(subjects: Sequence[Subject], trace: Trace, *, nf: NetworkFunction | None = None,
              rounds: int = 5, throughput: bool = True, latency: bool = True,
              check: bool = True, cpu: int = 0, prepare: Prepare | None = None,
              config: Any = None) -> dict[str, Any]:
    """Measure the subjects interleaved; returns the report as a JSON-ready dict."""
    if not 1 <= len(subjects) <= 2:
        raise ValueError("benchmark one program, or two side by side")
    report: dict[str, Any] = {
        "nf": nf.name if nf else None,
        "trace": {"profile": trace.profile or None, **trace.summary()},
        "rounds": rounds,
    }
    checks = [check_verdicts(s, trace, nf, prepare=prepare, config=config)
              for s in subjects] if check else []
    ingress = _ingress(trace, nf)
    shared = len(subjects) == 2 and maps_compatible(subjects[0], subjects[1])
    report["shared_maps"] = shared
    with ExitStack() as stack:
        runners: list[_Runner] = []
        first_replay: Replay | None = None
        environment: Environment | None = None
        for subject in subjects:
            if environment is None or not shared:
                # Programs with the same maps run against the same map instances, so that
                # only their code differs (not where the kernel put their tables).
                environment = open_environment(subject, nf, config)
                stack.callback(environment.close)
                warm_up(environment, subject, trace)
                if prepare is not None:
                    prepare(environment)
            else:
                add_extra_maps(environment, subject)
                if prepare is not None:
                    prepare(environment)
            pspec = subject.program_spec()
            btf = subject.load_spec().btf
            replay = stack.enter_context(open_replay(
                pspec, btf, environment.maps, trace.frames, program=subject.program,
                ingress_ifindex=ingress, namespace=environment.namespace, cpu=cpu,
                share_trace_with=first_replay))
            first_replay = first_replay or replay
            lat = stack.enter_context(open_replay(
                pspec, btf, environment.maps, trace.frames, program=subject.program,
                ingress_ifindex=ingress, namespace=environment.namespace, cpu=cpu,
                record_latency=True, share_trace_with=first_replay)) if latency else None
            tput = None
            if throughput and nf is not None:
                rx, tx = _throughput_devices(ingress)
                tput = stack.enter_context(Throughput(
                    pspec, btf, environment.maps, trace.frames, environment.namespace, rx, tx,
                    program=subject.program, cpu=cpu))
            def factory(pspec: ProgramSpec = pspec, btf: Any = btf,
                        environment: Environment = environment,
                        subject: Subject = subject, shared: Replay = first_replay) -> Replay:
                return open_replay(pspec, btf, environment.maps, trace.frames,
                              program=subject.program, ingress_ifindex=ingress,
                              namespace=environment.namespace, cpu=cpu,
                              share_trace_with=shared)

            runners.append(_Runner(subject, environment, replay, lat, tput, factory=factory))
        overhead = stack.enter_context(
            open_replay(None, None, {}, trace.frames, ingress_ifindex=0, cpu=cpu,
                   namespace=runners[0].environment.namespace, share_trace_with=first_replay))
        for runner in runners:  # one unmeasured pass: caches, branch predictors, lazy state
            runner.replay.run()
        overhead.run()
        overheads = []
        # Phases are separate (throughput leaves softirq and page-pool work behind that
        # slows whatever runs next), the order alternates A B / B A between rounds, and each
        # measured pass follows an unmeasured one of the same program.
        # Every round measures each of the COPIES copies of each program SAMPLES times,
        # alternating A and B pass by pass; ns/packet per round is the median pass.
        # The copies are loaded once and measured in every round: loading (verifying) a
        # large program takes longer than measuring it, and COPIES placements per program
        # are what spreads the JIT-placement effect, whichever round measures them.
        pool = {id(r): [r.replay, *(stack.enter_context(r.factory())
                                     for _ in range(COPIES - 1) if r.factory)]
                for r in runners}
        pair_ratios: list[float] = []
        for n in range(rounds):
            order = runners if n % 2 == 0 else runners[::-1]
            samples: dict[int, list[float]] = {id(r): [] for r in runners}
            overhead.run()
            base = min(overhead.run().ns_per_packet for _ in range(SAMPLES))
            overheads.append(base)
            round_ratios = []
            for copy in range(COPIES):
                copies = {id(r): pool[id(r)][copy % len(pool[id(r)])] for r in runners}
                for runner in order:  # warm both before measuring either
                    copies[id(runner)].run()
                for _ in range(SAMPLES):
                    pair = {}
                    for runner in order:
                        ns = copies[id(runner)].run().ns_per_packet
                        samples[id(runner)].append(ns)
                        pair[id(runner)] = max(ns - base, 0.1)
                    if len(runners) == 2:
                        round_ratios.append(pair[id(runners[0])] / pair[id(runners[1])])
            for runner in runners:
                gross = statistics.median(samples[id(runner)])
                runner.gross_ns.append(gross)
                runner.net_ns.append(max(gross - base, 0.1))
            if round_ratios:
                # The machine's speed drifts within milliseconds: a ratio of two passes run
                # back to back sees the same drift, so the round's speedup is the median of
                # those pairwise ratios.
                pair_ratios.append(statistics.median(round_ratios))
        for n in range(rounds):
            for runner in runners if n % 2 == 0 else runners[::-1]:
                if runner.latency is not None:
                    runner.latency.run()
                    runner.latencies.extend(ns for _, ns in runner.latency.records())
        for n in range(rounds):
            for runner in runners if n % 2 == 0 else runners[::-1]:
                if runner.throughput is not None:
                    result = runner.throughput.run()
                    runner.mpps.append(result.mpps)
                    runner.loss.append(result.loss)
        report["harness_overhead_ns"] = spread(overheads, 1)
        for key, runner, chk in zip("AB", runners, checks or [None] * len(runners),
                                    strict=False):
            entry: dict[str, Any] = {
                "object": str(runner.subject.object_path),
                "label": runner.subject.label,
                "program": runner.subject.program_spec().name,
                "insns": sum(i.width for i in (runner.subject.program
                                               or runner.subject.program_spec().program).insns),
                "ns_per_packet": spread(runner.net_ns, 1),
                "ns_per_packet_with_harness": spread(runner.gross_ns, 1),
            }
            if runner.mpps:
                entry["mpps"] = spread(runner.mpps, 3)
                entry["loss"] = round(max(runner.loss), 6)
            if runner.latencies:
                entry["latency_ns"] = latency_percentiles(runner.latencies)
                entry["p99_ns"] = entry["latency_ns"]["p99"]
            if chk is not None:
                entry["verdicts"] = chk["verdicts"]
                entry["verdicts_match"] = chk["match"]
            report[key] = entry
        if len(runners) == 2:
            report["speedup"] = spread(pair_ratios)
        if checks:
            report["verdicts_match"] = all(c["match"] for c in checks)
        report["_series"] = {key: {"net_ns": r.net_ns, "mpps": r.mpps,
                                   "latencies": r.latencies}
                             for key, r in zip("AB", runners, strict=False)}
    return report


__all__ = ["Environment", "Subject", "add_extra_maps", "check_verdicts", "maps_compatible",
           "open_environment", "run_bench", "spread", "warm_up"]
