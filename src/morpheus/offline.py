"""`morpheus optimize`: one full optimization cycle on a built-in NF and a generated trace.

1. Load the NF with its default configuration in a namespace; process the trace's warm-up.
2. Analyse the program; instrument the sites worth watching (and add version bumps where
   the data plane writes maps that specialized sites may read); replay the trace through
   that version to sample keys.
3. Snapshot the maps (small tables whole, large ones at their hot keys) and the versions.
4. Plan, inline, clean up.
5. Load the specialized program (the verifier is the judge) and check it against the
   original on every packet of the trace, from the same state: verdicts, output bytes,
   and the data-plane-written tables at the end.
6. Benchmark original and specialized side by side (interleaved rounds).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from .bench.compare import Environment, Subject, _warm_up, open_environment, run_bench
from .bench.replay import Replay
from .ir import Program
from .kernel import Map, VerifierError, xdp_ctx
from .loader import create_map, load_program_spec
from .nf import NetworkFunction
from .obj import ObjectSpec, ProgramSpec
from .optimizer import (
    Guards,
    HeatReader,
    PlanOptions,
    SiteHeat,
    SpecializeRequest,
    Target,
    instrument,
    is_complexity_error,
    next_relief,
    sampled_sites,
    snapshot_maps,
    specialize,
    with_guard_bumps,
)
from .passes.inline import GUARD_MAP
from .passes.instrument import SamplingLayout
from .passes.pipeline import Pass
from .runtime.check import table_state
from .traffic.generate import Trace, generate
from .uapi import MapType


def state_copier(source: Mapping[str, Map], names: list[str]):  # type: ignore[no-untyped-def]
    """A `prepare` hook copying the named maps' contents from `source` into an environment."""
    def prepare(environment: Environment) -> None:
        with environment.namespace.entered():
            for name in names:
                if name in environment.maps and name in source:
                    environment.maps[name].copy_from(source[name])
    return prepare


def run_individually(environment: Environment, spec: Any, program: Any, trace: Trace,
                     ingress: int) -> list[tuple[int, bytes]]:
    with environment.namespace.entered():
        prog = load_program_spec(spec, environment.maps, program=program,
                                 btf_fd=environment.btf_fd)
    try:
        out = []
        with environment.namespace.entered():
            for frame in trace.frames:
                ctx = xdp_ctx(ingress, len(frame)) if ingress else None
                result = prog.test_run(frame, ctx=ctx)
                out.append((result.retval, result.data or b""))
        return out
    finally:
        prog.close()


def check_equivalence(nf: NetworkFunction | None, original: Subject, specialized: Subject,
                      trace: Trace, prepare: Any, written: list[str]) -> dict[str, Any]:
    """Run every packet through both programs from the same state; compare verdicts,
    output bytes and the data-plane-written tables at the end."""
    ingress = trace.main_ingress if trace.main_ingress >= 2 else 0
    results = []
    tables = []
    for subject in (original, specialized):
        environment = open_environment(subject, nf)
        try:
            _warm_up(environment, subject, trace)
            prepare(environment)
            results.append(run_individually(environment, subject.program_spec(),
                                            subject.program, trace, ingress))
            tables.append({n: table_state(environment.maps[n]) for n in written
                           if n in environment.maps})
        finally:
            environment.close()
    mismatches = [i for i, (a, b) in enumerate(zip(*results, strict=True)) if a != b]
    table_diff = [n for n in tables[0] if tables[0][n] != tables[1].get(n)]
    return {"equivalent": not mismatches and not table_diff, "packets_checked": len(trace),
            "mismatches": len(mismatches),
            "first_mismatch": mismatches[0] if mismatches else None,
            "tables_differing": table_diff}


def optimize_nf(nf: NetworkFunction, profile_name: str, *, packets: int = 10_000,
                seed: int = 1, rounds: int = 5, options: PlanOptions | None = None,
                throughput: bool = False, cleanup: bool = True) -> dict[str, Any]:
    """The offline cycle on a built-in NF with its default configuration."""
    trace = generate(nf, profile_name, packets, seed)
    subject = Subject("original", nf.object_path, nf.program)
    report = optimize_program(subject, trace, nf=nf, options=options, rounds=rounds,
                              throughput=throughput, cleanup=cleanup)
    return {"nf": nf.name, "profile": profile_name, **report}


def optimize_program(subject: Subject, trace: Trace, *, nf: NetworkFunction | None = None,
                     source_maps: Mapping[str, Map] | None = None,
                     options: PlanOptions | None = None, rounds: int = 5,
                     throughput: bool = False, cleanup: bool = True,
                     passes: Sequence[Pass] | None = None, bench: bool = True,
                     measure: Any = None) -> dict[str, Any]:
    """Profile, specialize, verify, check and benchmark one program on `trace`.

    The maps start as `nf`'s default configuration, or as copies of `source_maps` (a
    user's live maps, which are only read). `measure(original, specialized, trace,
    prepare)`, if given, runs after the benchmark and its dict joins the report.
    """
    options = options or PlanOptions()
    spec: ObjectSpec = subject.load_spec()
    prog = subject.program_spec()
    t0 = time.perf_counter()
    target = Target.analyze(spec, prog)
    facts = target.facts
    analysis_ms = (time.perf_counter() - t0) * 1000
    guarded = target.guarded_maps()
    guard_slots = {name: n for n, name in enumerate(guarded)}
    written = target.written_maps()
    # Maps holding fds (prog arrays, maps of maps) cannot be copied by value.
    copy_names = list(written) if source_maps is None else sorted(
        n for n, m in spec.maps.items() if not m.type.holds_fds or m.type in (
            MapType.DEVMAP, MapType.DEVMAP_HASH))
    ingress = trace.main_ingress if trace.main_ingress >= 2 else 0

    environment = open_environment(subject, nf)
    try:
        if source_maps is not None:
            state_copier(source_maps, copy_names)(environment)
        env_maps: dict[str, Map] = dict(environment.maps)
        base, extra_specs = with_guard_bumps(target, guard_slots)
        sites = sampled_sites(facts, spec.maps, options)
        instrumented, inst_specs, layout = instrument(base, spec, prog, sites)
        extra_specs.update(inst_specs)
        with environment.namespace.entered():
            for name, mspec in extra_specs.items():
                m = create_map(mspec, object_name=spec.name)
                environment.stack.callback(m.close)
                env_maps[name] = m
            original_prog = load_program_spec(prog, environment.maps,
                                              btf_fd=environment.btf_fd)
            base_cost = original_prog.info().verified_insns
            original_prog.close()
            warm_prog = load_program_spec(prog, env_maps, program=base,
                                          btf_fd=environment.btf_fd)
            try:
                for frame, port in trace.warmup:
                    warm_prog.test_run(frame, ctx=xdp_ctx(port, len(frame)))
            finally:
                warm_prog.close()
        t1 = time.perf_counter()
        heat = profile(prog, spec.btf, environment.maps, trace.frames, instrumented,
                       {n: env_maps[n] for n in extra_specs}, layout, ingress=ingress,
                       namespace=environment.namespace)
        profile_ms = (time.perf_counter() - t1) * 1000
        versions: dict[str, int] = {}
        if guarded:
            raw = env_maps[GUARD_MAP].lookup(0)
            assert isinstance(raw, bytes)
            versions = {name: int.from_bytes(raw[8 * n: 8 * n + 8], "little")
                        for name, n in guard_slots.items()}
        snapshots = snapshot_maps(env_maps, facts, spec.maps, heat, options)
        if passes is None and not cleanup:
            passes = []
        t2 = time.perf_counter()
        request = SpecializeRequest(target, snapshots, heat, options,
                                    guards=Guards(versions=versions), passes=passes,
                                    verifier_base=base_cost)
        result = specialize(request)
        specialize_ms = (time.perf_counter() - t2) * 1000
        # Every comparison starts from the state the profiling run left behind.
        copy_names += [GUARD_MAP] if guarded else []
        saved = {n: _clone(env_maps[n], environment) for n in copy_names}
    finally:
        environment.close()
    try:
        prepare = state_copier(saved, copy_names)
        original = subject
        special = Subject("specialized", subject.object_path, subject.program_name,
                          program=result.program, extra_maps=result.extra_maps)
        report: dict[str, Any] = {}
        verify_ms, verify_error = _verify(special, nf)
        converged: frozenset[int] = frozenset()
        dropped: frozenset[int] = frozenset()
        attempts = 1
        while verify_error is not None and is_complexity_error(verify_error) and attempts < 12:
            relief = next_relief(result, converged, dropped)
            if relief is None:
                break
            converged, dropped = relief
            result = specialize(request.relieved(converged, dropped))
            special = Subject("specialized", subject.object_path, subject.program_name,
                              program=result.program, extra_maps=result.extra_maps)
            verify_ms, verify_error = _verify(special, nf)
            attempts += 1
        report.update({"equivalent": False, "packets_checked": 0, "speedup": None,
                       "analysis_ms": round(analysis_ms, 2),
                       "specialize_ms": round(specialize_ms, 2),
                       "verify_ms": round(verify_ms, 2), "verify_attempts": attempts})
        report["sites"] = [
            {"map": d.site.map, "kind": d.site.kind, "specialized": d.plan is not None,
             "reason": d.reason, "instruction": d.site.index, "mode": d.mode,
             "keys": d.keys, "coverage": d.coverage}
            for d in result.decisions]
        report["insns"] = {"original": prog.insn_count,
                           "specialized": sum(i.width for i in result.program.insns)}
        report["passes_ms"] = result.timings_ms
        report["profile_ms"] = round(profile_ms, 2)
        if verify_error is not None:
            report["error"] = verify_error
            return report
        eq = check_equivalence(nf, original, special, trace, prepare, written)
        report["equivalent"] = eq["equivalent"]
        report["packets_checked"] = eq["packets_checked"]
        if not eq["equivalent"]:
            report["mismatch"] = eq
            return report
        report["specialization"] = result
        if not bench:
            return report
        measured = run_bench([original, special], trace, nf=nf, rounds=rounds,
                          throughput=throughput and nf is not None, prepare=prepare,
                          check=False)
        measured.pop("_series", None)
        report["speedup"] = measured["speedup"]
        report["ns_per_packet"] = {"original": measured["A"]["ns_per_packet"],
                                   "specialized": measured["B"]["ns_per_packet"]}
        if "p99_ns" in measured["A"]:
            report["p99_ns"] = {"original": measured["A"]["p99_ns"],
                                "specialized": measured["B"]["p99_ns"]}
        if "mpps" in measured["A"]:
            report["mpps"] = {"original": measured["A"]["mpps"],
                              "specialized": measured["B"]["mpps"]}
        if "latency_ns" in measured["A"]:
            report["latency_ns"] = {"original": measured["A"]["latency_ns"],
                                    "specialized": measured["B"]["latency_ns"]}
        if measure is not None:
            report.update(measure(original, special, trace, prepare))
        return report
    finally:
        for m in saved.values():
            m.close()


def profile(prog: ProgramSpec, btf: object, maps: Mapping[str, Map], frames: Sequence[bytes],
            program: Program, extra_maps: Mapping[str, Map], layout: SamplingLayout, *,
            ingress: int = 0, namespace: Any = None, passes: int = 1) -> dict[int, SiteHeat]:
    """Replay the trace through the instrumented program and read the sampled keys."""
    all_maps = {**maps, **extra_maps}
    with Replay(prog, btf, all_maps, frames, program=program, ingress_ifindex=ingress,
                namespace=namespace) as replay:
        replay.run(passes)
    return HeatReader(layout, all_maps, decay=1.0).read()


def _clone(m: Map, environment: Environment) -> Map:
    """A private copy of a map's contents (taken inside the environment's namespace)."""
    with environment.namespace.entered():
        return m.clone()


def _verify(subject: Subject, nf: NetworkFunction | None) -> tuple[float, str | None]:
    """Load the specialized program once; the verifier's verdict and the time it took."""
    environment = open_environment(subject, nf)
    try:
        start = time.perf_counter()
        try:
            with environment.namespace.entered():
                prog = load_program_spec(subject.program_spec(), environment.maps,
                                         program=subject.program, btf_fd=environment.btf_fd)
        except VerifierError as exc:
            return (time.perf_counter() - start) * 1000, str(exc)
        elapsed = (time.perf_counter() - start) * 1000
        prog.close()
        return elapsed, None
    finally:
        environment.close()
