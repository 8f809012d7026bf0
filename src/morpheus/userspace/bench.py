"""Benchmarks on the user-space backend.

- `run_user_bench`: programs A and B in user space on the same trace, interleaved, the report
  in `bench.compare.run_bench`'s shape (plus "backend": "userspace" and JIT times).
- `compare_backends`: one program in the kernel (in-kernel replay harness) and in user space
  (native replay), interleaved in the same run: ns/packet of each and the ratio.

Both start from the NF's default configuration after the trace's warm-up, the same state
the kernel benchmarks start from, and pin the process to one CPU (per-CPU maps follow it).

A round's figure for a program is the fastest of its passes, not the median: the kernel's
replay runs inside one BPF_PROG_TEST_RUN call that the scheduler does not preempt, while a
user-space pass is preempted by whatever else the (shared, 2-vCPU) machine runs; the fastest
pass is the one nobody interrupted, on both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from ..bench.compare import Prepare, _ingress, spread
from ..kernel.cpu import pinned_cpu
from ..nf import NetworkFunction
from ..traffic.generate import Trace
from ..world.environment import Environment, Subject, open_environment, warm_up
from .dataplane import UserDataPlane, UserProgram
from .replay import NativeTrace, UserReplay

SAMPLES = 5  # measured passes per program per round, alternating A and B


@dataclass
class _UserSubject:
    subject: Subject
    environment: Environment
    plane: UserDataPlane
    program: UserProgram
    replay: UserReplay
    net_ns: list[float] = field(default_factory=list)
    gross_ns: list[float] = field(default_factory=list)


def open_user_subject(stack: ExitStack, subject: Subject, trace: Trace,
                      nf: NetworkFunction | None, native: NativeTrace, *, cpu: int = 0,
                      prepare: Prepare | None = None,
                      environment: Environment | None = None,
                      config: Any = None) -> _UserSubject:
    """The subject's kernel environment (configured, warmed up), a user-space plane holding
    the same state, and the program verified by the kernel and compiled."""
    if environment is None:
        environment = open_environment(subject, nf, config)
        stack.callback(environment.close)
        warm_up(environment, subject, trace)
        if prepare is not None:
            prepare(environment)
    spec = subject.load_spec()
    plane = UserDataPlane.create(spec, cpu=cpu, extra_maps=subject.extra_maps)
    stack.callback(plane.close)
    plane.copy_from_kernel(environment.maps)
    with environment.namespace.entered():
        program = plane.load(subject.program_spec(), environment.maps, program=subject.program,
                             btf_fd=environment.btf_fd)
    return _UserSubject(subject, environment, plane, program, UserReplay(plane, program, native))


def _verdict_counts(verdicts: Sequence[int]) -> dict[str, int]:
    names = {0: "aborted", 1: "drop", 2: "pass", 3: "tx", 4: "redirect"}
    out: dict[str, int] = {}
    for v in verdicts:
        out[names.get(v, str(v))] = out.get(names.get(v, str(v)), 0) + 1
    return dict(sorted(out.items()))


def kernel_verdicts(r: _UserSubject, trace: Trace, nf: NetworkFunction | None) -> list[int]:
    """The kernel's verdict for every packet, run one by one on the subject's kernel maps
    from the state the user-space plane was copied from (the kernel maps then move on)."""
    from ..loader import load_program_spec

    env = r.environment
    ingress = _ingress(trace, nf)
    with env.namespace.entered():
        prog = load_program_spec(r.subject.program_spec(), env.maps, program=r.subject.program,
                                 btf_fd=env.btf_fd)
        try:
            return [env.run_one(prog, frame, ingress) for frame in trace.frames]
        finally:
            prog.close()


def run_user_bench(subjects: Sequence[Subject], trace: Trace, *,
                   nf: NetworkFunction | None = None, rounds: int = 5, cpu: int = 0,
                   prepare: Prepare | None = None, config: Any = None) -> dict[str, Any]:
    """`morpheus bench --backend userspace`: the subjects in user space, interleaved."""
    if not 1 <= len(subjects) <= 2:
        raise ValueError("benchmark one program, or two side by side")
    report: dict[str, Any] = {
        "backend": "userspace",
        "nf": nf.name if nf else None,
        "trace": {"profile": trace.profile or None, **trace.summary()},
        "rounds": rounds,
        "shared_maps": False,
    }
    native = NativeTrace(trace.frames, _ingress(trace, nf) or 1)
    with ExitStack() as stack, pinned_cpu(cpu):
        runners = [open_user_subject(stack, s, trace, nf, native, cpu=cpu, prepare=prepare,
                                     config=config)
                   for s in subjects]
        overhead = UserReplay(runners[0].plane, None, native)
        verdicts, matches = [], []
        for r in runners:  # an unmeasured pass, checked against the kernel packet by packet
            expected = kernel_verdicts(r, trace, nf)
            r.replay.run(record=True)
            verdicts.append(r.replay.verdicts())
            matches.append(verdicts[-1] == expected)
        overheads, ratios = [], []
        for n in range(rounds):
            order = runners if n % 2 == 0 else runners[::-1]
            base = min(overhead.run().ns_per_packet for _ in range(3))
            overheads.append(base)
            samples: dict[int, list[float]] = {id(r): [] for r in runners}
            for _ in range(SAMPLES):
                for r in order:
                    samples[id(r)].append(r.replay.run().ns_per_packet)
            for r in runners:
                gross = min(samples[id(r)])
                r.gross_ns.append(gross)
                r.net_ns.append(max(gross - base, 0.1))
            if len(runners) == 2:
                a, b = runners
                ratios.append(max(min(samples[id(a)]) - base, 0.1)
                              / max(min(samples[id(b)]) - base, 0.1))
        report["harness_overhead_ns"] = spread(overheads, 1)
        report["verdicts_match"] = all(matches)
        for key, r, v, m in zip("AB", runners, verdicts, matches, strict=False):
            report[key] = {
                "object": str(r.subject.object_path),
                "label": r.subject.label,
                "program": r.subject.program_spec().name,
                "insns": sum(i.width for i in (r.subject.program
                                               or r.subject.program_spec().program).insns),
                "ns_per_packet": spread(r.net_ns, 1),
                "ns_per_packet_with_harness": spread(r.gross_ns, 1),
                "jit_ms": round(r.program.jit_ms, 1),
                "jit_cpu_ms": round(r.program.jit_cpu_ms, 1),
                "verdicts": _verdict_counts(v),
                "verdicts_match": m,
            }
        if len(runners) == 2:
            report["speedup"] = spread(ratios)
        report["_series"] = {key: {"net_ns": r.net_ns, "mpps": [], "latencies": []}
                             for key, r in zip("AB", runners, strict=False)}
    return report


def compare_backends(subject: Subject, trace: Trace, *, nf: NetworkFunction | None = None,
                     rounds: int = 5, cpu: int = 0, prepare: Prepare | None = None,
                     config: Any = None) -> dict[str, Any]:
    """The same program in the kernel and in user space, interleaved: ns/packet of each
    (net of its own harness) and kernel/user ratios (> 1: user space is faster)."""
    from ..bench.replay import Replay

    ingress = _ingress(trace, nf)
    native = NativeTrace(trace.frames, ingress or 1)
    with ExitStack() as stack, pinned_cpu(cpu):
        environment = open_environment(subject, nf, config)
        stack.callback(environment.close)
        warm_up(environment, subject, trace)
        if prepare is not None:
            prepare(environment)
        user = open_user_subject(stack, subject, trace, nf, native, cpu=cpu,
                                 environment=environment)
        pspec, btf = subject.program_spec(), subject.load_spec().btf
        kernel = stack.enter_context(Replay(
            pspec, btf, environment.maps, trace.frames, program=subject.program,
            ingress_ifindex=ingress, namespace=environment.namespace, cpu=cpu))
        kernel_overhead = stack.enter_context(Replay(
            None, None, {}, trace.frames, ingress_ifindex=0, cpu=cpu,
            namespace=environment.namespace, share_trace_with=kernel))
        user_overhead = UserReplay(user.plane, None, native)
        kernel.run()
        kernel_overhead.run()
        user.replay.run()
        kernel_ns, user_ns, ratios, k_base_all, u_base_all = [], [], [], [], []
        for n in range(rounds):
            k_base = min(kernel_overhead.run().ns_per_packet for _ in range(3))
            u_base = min(user_overhead.run().ns_per_packet for _ in range(3))
            k_base_all.append(k_base)
            u_base_all.append(u_base)
            ks, us = [], []
            for _ in range(SAMPLES):
                for side in (("k", "u") if n % 2 == 0 else ("u", "k")):
                    if side == "k":
                        ks.append(max(kernel.run().ns_per_packet - k_base, 0.1))
                    else:
                        us.append(max(user.replay.run().ns_per_packet - u_base, 0.1))
            kernel_ns.append(min(ks))
            user_ns.append(min(us))
            ratios.append(min(ks) / min(us))
    return {
        "nf": nf.name if nf else None,
        "program": subject.label,
        "trace": {"profile": trace.profile or None, **trace.summary()},
        "rounds": rounds,
        "kernel_ns_per_packet": spread(kernel_ns, 1),
        "user_ns_per_packet": spread(user_ns, 1),
        "kernel_harness_ns": spread(k_base_all, 1),
        "user_harness_ns": spread(u_base_all, 1),
        "kernel_over_user": spread(ratios),
        "jit_ms": round(user.program.jit_ms, 1),
        "jit_cpu_ms": round(user.program.jit_cpu_ms, 1),
    }
