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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .bench.compare import run_bench
from .bench.skb_replay import open_replay
from .ir import Program
from .kernel import Map, VerifierError, xdp_ctx
from .loader import create_map, load_program_spec
from .nf import NetworkFunction
from .obj import MapSpec, ObjectSpec, ProgramSpec
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
from .traffic.generate import Trace, generate
from .uapi import MapType
from .world import CheckRequest, CheckResult, Side, World, Write, check, written_maps
from .world.environment import Environment, Subject, add_extra_maps, open_environment, warm_up
from .world.traces import check_plan, isolated_packets


def state_copier(source: Mapping[str, Map], names: list[str],
                 shared: Mapping[str, Map] | None = None,
                 outers: Sequence[str] = ()):  # type: ignore[no-untyped-def]
    """A `prepare` hook giving an environment the state to start from: the named maps'
    contents copied from `source`, the `shared` maps (a user's maps the data plane only
    reads) used as they are instead of the environment's own, and the `outers` (maps of
    maps whose inner maps the data plane writes) reproduced from `source`: a new outer map
    holding clones of the source's inner maps, so the program runs the path it runs in
    production (Katran's per-CPU LRU maps, not its fallback) without touching the
    source's inner maps."""
    def prepare(environment: Environment) -> None:
        with environment.namespace.entered():
            for name in outers:
                if name in environment.maps and name in source:
                    world = World.build({name: source[name]}, {f"{name}[inner]"})
                    environment.stack.callback(world.close)
                    environment.maps[name] = world.maps[name]
            for name, m in (shared or {}).items():
                if name in environment.maps:
                    handle = Map.from_fd(m.fd, name)
                    environment.stack.callback(handle.close)
                    environment.maps[name] = handle
            for name in names:
                if name in environment.maps and name in source:
                    environment.maps[name].copy_from(source[name])
    return prepare


def check_equivalence(nf: NetworkFunction | None, original: Subject, specialized: Subject,
                      trace: Trace, prepare: Any, written: list[str]) -> dict[str, Any]:
    """Run every packet through both programs from the same state (`morpheus.world`):
    verdicts, output bytes and length, redirect targets, and every key and value of every
    map either program writes. Returns the `morpheus check` JSON shape."""
    return check_subjects(nf, original, specialized, trace, prepare, written).to_json()


def check_subjects(nf: NetworkFunction | None, original: Subject, specialized: Subject,
                   trace: Trace, prepare: Any = None, written: Sequence[str] = (),
                   config: Any = None, writes: Sequence[Write] = ()) -> CheckResult:
    """`check_equivalence`'s result object (with notes and packets-to-catch)."""
    environment = open_environment(original, nf, config)
    try:
        warm_up(environment, original, trace)
        add_extra_maps(environment, specialized)
        if prepare is not None:
            prepare(environment)
        return _check_in(environment, nf, original, specialized, trace, written,
                         writes=writes)
    finally:
        environment.close()


def _check_in(environment: Environment, nf: NetworkFunction | None, original: Subject,
              specialized: Subject, trace: Trace, written: Sequence[str],
              own_maps: Mapping[str, MapSpec] | None = None, *,
              writes: Sequence[Write] = ()) -> CheckResult:
    """The check from the state `environment` holds (which it leaves as it found it)."""
    packets = [(frame, port if nf is not None and port >= 2 else 0)
               for frame, port in zip(trace.frames, trace.ingress, strict=True)]
    own = dict(own_maps or {})
    source = {n: m for n, m in environment.maps.items() if n not in own}
    request = CheckRequest(
        source,
        Side(original.label, original.program_spec(), original.program,
             spec=original.load_spec(), btf_fd=environment.btf_fd),
        Side(specialized.label, specialized.program_spec(), specialized.program,
             spec=specialized.load_spec(), btf_fd=environment.btf_fd, fresh_maps=own),
        packets, written=written, writes=writes, isolated=isolated_packets(trace))
    with environment.namespace.entered():
        return check(request)


# Given the specialized program and the maps it brings (inlined values), other versions to
# check like it: name -> program, or (program, its own extra maps).
Variant = Program | tuple[Program, Mapping[str, MapSpec]]
Variants = Callable[[Program, Mapping[str, MapSpec]], Mapping[str, Variant]]


def _check_variants(nf: NetworkFunction | None, original: Subject, special: Subject,
                    trace: Trace, prepare: Any, written: Sequence[str],
                    programs: Mapping[str, Variant], config: Any = None,
                    writes: Sequence[Write] = ()) -> dict[str, dict[str, Any]]:
    """Check each variant like the specialized program, all from one starting state."""
    out: dict[str, dict[str, Any]] = {}
    environment = open_environment(original, nf, config)
    try:
        warm_up(environment, original, trace)
        add_extra_maps(environment, special)
        if prepare is not None:
            prepare(environment)
        for name, version in programs.items():
            program, extra = version if isinstance(version, tuple) else (version,
                                                                           special.extra_maps)
            # Maps the variant brings itself (other inlined values) replace the source's.
            own = {n: m for n, m in extra.items() if special.extra_maps.get(n) != m}
            variant = Subject(name, special.object_path, special.program_name,
                              program=program, spec=special.spec, extra_maps=dict(extra))
            try:
                result = _check_in(environment, nf, original, variant, trace, written, own,
                                   writes=writes)
            except VerifierError as exc:
                out[name] = {"rejected": str(exc).splitlines()[0]}
                continue
            out[name] = {**result.to_json(), "packets_to_catch": result.packets_to_catch}
    finally:
        environment.close()
    return out


def optimize_nf(nf: NetworkFunction, profile_name: str, *, packets: int = 10_000,
                seed: int = 1, rounds: int = 5, options: PlanOptions | None = None,
                throughput: bool = False, cleanup: bool = True,
                measure: Any = None) -> dict[str, Any]:
    """The offline cycle on a built-in NF with its default configuration."""
    trace = generate(nf, profile_name, packets, seed)
    subject = Subject("original", nf.object_path, nf.program)
    report = optimize_program(subject, trace, nf=nf, options=options, rounds=rounds,
                              throughput=throughput, cleanup=cleanup, measure=measure)
    return {"nf": nf.name, "profile": profile_name, **report}


def optimize_program(subject: Subject, trace: Trace, *, nf: NetworkFunction | None = None,
                     source_maps: Mapping[str, Map] | None = None,
                     options: PlanOptions | None = None, rounds: int = 5,
                     throughput: bool = False, cleanup: bool = True,
                     passes: Sequence[Pass] | None = None, bench: bool = True,
                     variants: Variants | None = None, config: Any = None,
                     measure: Any = None, extra_measures: Any = None) -> dict[str, Any]:
    """Profile, specialize, verify, check and benchmark one program on `trace`.

    The maps start as `nf`'s default configuration, or as copies of `source_maps` (a
    user's live maps, which are only read). With `nf`, `config` is the configuration the
    maps get (default: the NF's default configuration). `variants`, given the specialized program,
    names other versions to check against the original from the same state (mutation
    testing of the checker); their results are under "variants". `measure` replaces
    `run_bench` for the benchmark (the user-space backend passes its own, with the same
    arguments and report). `extra_measures(original, specialized, trace, prepare)`, if
    given, runs after the benchmark and its dict joins the report.
    """
    options = options or PlanOptions()
    spec: ObjectSpec = subject.load_spec()
    prog = subject.program_spec()
    t0 = time.perf_counter()
    target = Target.analyze(spec, prog)
    facts = target.facts
    analysis_ms = (time.perf_counter() - t0) * 1000
    guarded = target.guarded_maps(shadow=options.shadow)
    guard_slots = {name: n for n, name in enumerate(guarded)}
    may_write = written_maps([target.program], spec.maps, prog.type)  # conservative on lost maps
    written = sorted(n for n in may_write if n in spec.maps)
    # Only the maps the data plane writes are copied; a user's maps it only reads are
    # shared (read, never written) by the profile, the check and the benchmark.
    copy_names = list(written)
    # Maps of maps whose inner maps are written: reproduced (clones inside a new outer).
    outers = [n for n, m in spec.maps.items()
              if m.type.is_map_of_maps and f"{n}[inner]" in may_write]
    shared: dict[str, Map] = {}
    ingress = trace.main_ingress if trace.main_ingress >= 2 else 0

    environment = open_environment(subject, nf, config)
    try:
        if source_maps is not None:
            inner_written = {n.removesuffix("[inner]") for n in may_write}
            shared = {n: m for n, m in source_maps.items()
                      if n in spec.maps and n not in copy_names and (
                          not m.type.holds_fds or m.type in (MapType.DEVMAP,
                                                             MapType.DEVMAP_HASH)
                          or (m.type.is_map_of_maps and n not in inner_written))}
            state_copier(source_maps, copy_names, shared, outers)(environment)
        env_maps: dict[str, Map] = dict(environment.maps)
        base, extra_specs = with_guard_bumps(target, guard_slots)
        sites = sampled_sites(facts, spec.maps, options)
        instrumented, inst_specs, layout = instrument(base, spec, prog, sites,
                                                      slots=profile_slots(len(trace)))
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
        with environment.namespace.entered():
            saved_outers = World.build({n: env_maps[n] for n in outers},
                                       {f"{n}[inner]" for n in outers})
    finally:
        environment.close()
    try:
        prepare = state_copier({**saved, **saved_outers.maps}, copy_names, shared, outers)
        original = subject
        # The specialized program comes from the object as the original was read (with the
        # user's --type, --btf, --legacy-maps): re-reading it by path would lose them.
        special = Subject("specialized", subject.object_path, subject.program_name,
                          program=result.program, spec=spec,
                          extra_maps=result.extra_maps)
        report: dict[str, Any] = {}
        verify_ms, verify_error = _verify(special, nf, config)
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
                              program=result.program, spec=spec,
                              extra_maps=result.extra_maps)
            verify_ms, verify_error = _verify(special, nf, config)
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
        if _same_code(result.program, prog.program):
            # Nothing was specialized and the cleanup found nothing: the candidate is the
            # original, instruction for instruction; there is nothing to check or measure.
            report.update({"equivalent": True, "identical": True, "specialization": result})
            return report
        # The check sees more than the profile (held-back flows on every port, the NF's
        # edge cases, near-miss keys of every specialized site) and control-plane writes
        # between its packets: the plan the agent's pre-swap check runs too.
        plan = check_plan(trace, result, nf=nf, facts=facts, config=config)
        checked_trace, writes = plan.trace, plan.writes
        checked = check_subjects(nf, original, special, checked_trace, prepare, written,
                                 config, writes)
        eq = checked.to_json()
        report["equivalent"] = eq["equivalent"]
        report["packets_checked"] = eq["packets_checked"]
        report["check"] = eq
        report["check_verdicts"] = checked.verdict_counts()
        if variants is not None:
            wanted = variants(result.program, result.extra_maps)
            report["variants"] = _check_variants(nf, original, special, checked_trace,
                                                 prepare, written, wanted, config, writes)
        if not eq["equivalent"]:
            report["mismatch"] = eq
            return report
        report["specialization"] = result
        if not bench:
            return report
        if measure is not None:
            measured = measure([original, special], trace, nf=nf, rounds=rounds,
                               prepare=prepare, config=config)
        else:
            measured = run_bench([original, special], trace, nf=nf, rounds=rounds,
                                 throughput=throughput and nf is not None, prepare=prepare,
                                 check=False, config=config)
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
        if extra_measures is not None:
            report.update(extra_measures(original, special, trace, prepare))
        return report
    finally:
        for m in saved.values():
            m.close()
        saved_outers.close()


PROFILE_RATE = 16  # instrument()'s default sampling rate
PROFILE_SLOTS_MAX = 4096


def profile_slots(packets: int, rate: int = PROFILE_RATE) -> int:
    """Sample slots per site for a profile of `packets` read once at the end: enough for
    every sample (a power of two, at least the agent's 256, at most 4,096). With 256, a
    10,000-packet trace's profile saw only its last 256 of ~625 samples: the load
    balancer's 64 hot flows covered 74% of the trace's packets, not the 90% they could."""
    slots = 256
    while slots < min(PROFILE_SLOTS_MAX, -(-packets // rate)):
        slots *= 2
    return slots


def _same_code(a: Program, b: Program) -> bool:
    """The same instructions (labels and provenance aside)."""
    def key(p: Program) -> list[tuple[object, ...]]:
        return [(i.opcode, i.dst, i.src, i.off, i.imm, i.reference) for i in p.insns]
    return len(a.insns) == len(b.insns) and key(a) == key(b)


def profile(prog: ProgramSpec, btf: object, maps: Mapping[str, Map], frames: Sequence[bytes],
            program: Program, extra_maps: Mapping[str, Map], layout: SamplingLayout, *,
            ingress: int = 0, namespace: Any = None, passes: int = 1) -> dict[int, SiteHeat]:
    """Replay the trace through the instrumented program and read the sampled keys."""
    all_maps = {**maps, **extra_maps}
    with open_replay(prog, btf, all_maps, frames, program=program, ingress_ifindex=ingress,
                     namespace=namespace) as replay:
        replay.run(passes)
    return HeatReader(layout, all_maps, decay=1.0).read()


def _clone(m: Map, environment: Environment) -> Map:
    """A private copy of a map's contents (taken inside the environment's namespace)."""
    with environment.namespace.entered():
        return m.clone()


def _verify(subject: Subject, nf: NetworkFunction | None, config: Any = None
            ) -> tuple[float, str | None]:
    """Load the specialized program once; the verifier's verdict and the time it took."""
    environment = open_environment(subject, nf, config)
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
