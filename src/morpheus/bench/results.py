"""Reports of the optimizer and the agent, for docs/results (reproducible commands)."""

from __future__ import annotations

import dataclasses
import resource
import socket
import time
from pathlib import Path
from typing import Any

from ..nf import all_nfs, get
from ..optimizer import PlanOptions
from .report import machine


def optimizer_report(*, rounds: int = 5, progress: Any = None) -> dict[str, Any]:
    """`morpheus optimize` on every NF under high and no locality, plus the cost of the
    sampling instrumentation."""
    from ..offline import optimize_nf
    from .costs import instrumentation_cost

    rows = []
    for nf in all_nfs():
        for profile in ("high", "none"):
            r = optimize_nf(nf, profile, rounds=rounds, options=PlanOptions())
            r.pop("specialization", None)
            rows.append(r)
            if progress:
                progress(f"{nf.name:<9} {profile:<5} equivalent={r['equivalent']} "
                         f"speedup={r.get('speedup')}")
    costs = []
    for nf in all_nfs():
        c = instrumentation_cost(nf, rounds=rounds)
        costs.append(c)
        if progress:
            progress(f"{nf.name:<9} instrumentation {c['cost_ns']} ns ({c['cost_ratio']}x)")
    return {"machine": machine(), "rounds": rounds, "rows": rows, "instrumentation": costs}


CHECK_PACKETS = 1000


def agent_report(*, cycles: int = 10, progress: Any = None) -> dict[str, Any]:
    """Per NF: the agent on live traffic over veth; cycle times (forced re-specialization),
    the pre-swap check, and the agent's CPU use while cycling every 0.5 s. Then the router
    again with the prog-array trampoline: its swap time and its per-packet cost."""
    rows = []
    for nf in all_nfs():
        row = _agent_row(nf, "link", cycles, progress)
        rows.append(row)
        if progress:
            progress(f"{nf.name:<9} cycle {row['cycle_ms']['total']} ms, cpu {row['agent_cpu']}")
    router = next(r for r in rows if r["nf"] == "router")
    tramp = _agent_row(get("router"), "prog-array", cycles, progress)
    swaps = {"link_us": router["swap_call_us"], "prog_array_us": tramp["swap_call_us"],
             "tail_call_ns": tramp["tail_call_ns"]}
    if progress:
        progress(f"swap: link {swaps['link_us']} us, prog-array {swaps['prog_array_us']} us, "
                 f"tail call {swaps['tail_call_ns']:+.0f} ns/packet")
    return {"machine": machine(), "rows": rows, "swap": swaps}


def _agent_row(nf: Any, swap: str, cycles: int, progress: Any) -> dict[str, Any]:
    from ..bench.replay import Replay
    from ..kernel import xdp_ctx
    from ..nf.env import NFEnv
    from ..runtime.agent import Agent, AgentOptions
    from ..traffic.generate import generate

    trace = generate(nf, "high", 10_000, seed=1)
    ingress = trace.main_ingress if trace.main_ingress >= 2 else 10
    peer = ingress + 1 if ingress % 2 == 0 else ingress - 1
    full = swap == "link"  # the trampoline run only measures what differs
    row: dict[str, Any] = {"nf": nf.name, "swap": swap}
    with NFEnv.start(nf, configure=False) as env:
        agent = Agent(nf.object_path, iface=f"port{ingress}", netns=env.namespace.name,
                      name=f"report-{nf.name}", options=AgentOptions(interval=0.5, swap=swap))
        agent.start()
        try:
            with env.entered():
                nf.control_plane(agent.control_maps()).apply(env.config)
                for frame, port in trace.warmup:  # e.g. the switch learning its stations
                    agent.current.program.test_run(  # type: ignore[union-attr]
                        frame, ctx=xdp_ctx(port, len(frame)))
                tx = socket.if_nametoindex(f"port{peer}")
            with Replay(None, None, {}, trace.frames, namespace=env.namespace,
                        redirect_ifindex=tx) as gen:
                gen.run(2)
                agent.cycle()
                totals = []
                for _ in range(cycles):
                    gen.run(2)
                    agent.force_respecialize()  # a control-plane write would do the same
                    report = agent.cycle()
                    if report.outcome == "swapped":
                        totals.append(report.timings_ms)
                row["cycles"] = len(totals)
                row["cycle_ms"] = {k: _median([t[k] for t in totals if k in t])
                                   for k in ("profile", "snapshot", "specialize", "verify",
                                             "swap", "total")}
                calls = _median([t["swap_call"] for t in totals if "swap_call" in t])
                row["swap_call_us"] = round(calls * 1000, 1) if calls is not None else None
                if full:
                    row.update(_checked_cycles(agent, gen, trace, nf.name, progress))
                    row["agent_cpu"] = _agent_cpu(agent)
                else:
                    with env.entered():
                        row["tail_call_ns"] = _tail_call_ns(agent)
        finally:
            agent.stop(detach=True)
    return row


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def _checked_cycles(agent: Any, gen: Any, trace: Any, name: str,
                    progress: Any) -> dict[str, Any]:
    """Three forced cycles with the pre-swap check on packets of the trace: its cost, and
    that correct candidates pass it on live, changing state."""
    plain = agent.options
    agent.options = dataclasses.replace(plain, check_frames=tuple(trace.frames[:CHECK_PACKETS]))
    checks = []
    try:
        for _ in range(3):
            gen.run(1)
            agent.force_respecialize()
            report = agent.cycle()
            checks.append(report.timings_ms.get("check") if report.outcome == "swapped"
                          else None)
            if report.outcome != "swapped" and progress:
                progress(f"{name:<9} checked cycle {report.outcome}: {report.reason}")
    finally:
        agent.options = plain
    passed = [c for c in checks if c is not None]
    return {"check_ms": _median(passed) if len(passed) == len(checks) else None,
            "check_passed": len(passed), "check_cycles": len(checks)}


def _agent_cpu(agent: Any) -> float:
    """The agent's share of one core while cycling every 0.5 s with traffic flowing."""
    start_cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    while time.perf_counter() < start + 5.0:
        agent.cycle()
        time.sleep(0.5)
    end_cpu = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - start
    return round(((end_cpu.ru_utime - start_cpu.ru_utime)
                  + (end_cpu.ru_stime - start_cpu.ru_stime)) / wall, 3)


def _tail_call_ns(agent: Any, rounds: int = 7, repeat: int = 200_000) -> float:
    """What the trampoline adds per packet: the same frame (not IPv4, so the router hands it
    to the stack unchanged and every repetition does the same work) through the trampoline
    and through the running version directly, interleaved; median of the differences."""
    frame = bytes(12) + b"\x86\xdd" + bytes(50)
    diffs = []
    for _ in range(rounds):
        via = agent.trampoline.program.test_run(frame, repeat=repeat).duration_ns
        direct = agent.current.program.test_run(frame, repeat=repeat).duration_ns
        diffs.append(via - direct)
    return float(_median(diffs) or 0.0)


def write_optimizer_markdown(result: dict[str, Any], out_dir: Path, command: str) -> Path:
    m = result["machine"]
    lines = ["# The optimizer on the four network functions", "",
             f"Produced by `{command}` on {m['date']}: kernel {m['kernel']}, {m['cpu']}, "
             f"{m['cpus']} vCPUs. Each row is one `morpheus optimize --nf NF --profile P` "
             "cycle: profile a 10,000-packet trace with the instrumented program, specialize, "
             "load (the verifier judges), check every packet against the original from the "
             f"same state, then benchmark both interleaved ({result['rounds']} rounds; "
             "speedup = original ns / specialized ns, median of back-to-back pass ratios).",
             "",
             "| NF | profile | equivalent | packets | speedup (min / med / max) | ns original → "
             "specialized | insns | analysis ms | specialize ms | verify ms | inlined sites |",
             "|---|---|---|---:|---|---|---|---:|---:|---:|---|"]
    for r in result["rows"]:
        s = r.get("speedup") or {}
        ns = r.get("ns_per_packet") or {}
        inlined = ", ".join(
            f"{x['map']} ({x['mode']}" + (f", {x['keys']} keys)" if x["mode"] == "hot" else ")")
            for x in r["sites"] if x["specialized"])
        lines.append(
            f"| {r['nf']} | {r['profile']} | {'yes' if r['equivalent'] else '**no**'} | "
            f"{r['packets_checked']} | {s.get('min', 0):.2f} / {s.get('median', 0):.2f} / "
            f"{s.get('max', 0):.2f} | {ns.get('original', {}).get('median', 0):.0f} → "
            f"{ns.get('specialized', {}).get('median', 0):.0f} | {r['insns']['original']} → "
            f"{r['insns']['specialized']} | {r['analysis_ms']:.1f} | {r['specialize_ms']:.1f} | "
            f"{r['verify_ms']:.1f} | {inlined} |")
    lines += ["", "Sites left alone, and why:", ""]
    for r in result["rows"]:
        if r["profile"] != "high":
            continue
        reasons = sorted({f"{x['map']}: {x['reason']}" for x in r["sites"]
                          if not x["specialized"]})
        lines.append(f"- **{r['nf']}**: " + "; ".join(reasons))
    lines += ["", "## Cost of the sampling instrumentation", "",
              "The version the agent starts with (key sampling at every watched site, one "
              "lookup in 16, plus version bumps at data-plane writes to inlinable maps) "
              "against the original, same trace (high locality), interleaved:", "",
              "| NF | sampled sites | original ns | instrumented ns | cost |",
              "|---|---|---:|---:|---:|"]
    for c in result["instrumentation"]:
        lines.append(f"| {c['nf']} | {', '.join(c['sites']) or '-'} | {c['original_ns']:.0f} | "
                     f"{c['instrumented_ns']:.0f} | {c['cost_ns']:+.0f} ns "
                     f"({c['cost_ratio']}x) |")
    path = out_dir / "optimizer.md"
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_agent_markdown(result: dict[str, Any], out_dir: Path, command: str) -> Path:
    m = result["machine"]
    lines = ["# The agent: cycle times and CPU use", "",
             f"Produced by `{command}` on {m['date']}: kernel {m['kernel']}, {m['cpu']}, "
             f"{m['cpus']} vCPUs. The agent runs each NF in native XDP on a veth with traffic "
             "(high locality) replayed into its peer; each cycle is forced to produce a new "
             "version (as after a control-plane write). Median milliseconds per phase of the "
             "cycles that swapped; CPU is the agent's share of one core while cycling every "
             "0.5 s with traffic flowing. The last columns are three more forced cycles with "
             f"the pre-swap equivalence check on {CHECK_PACKETS:,} packets of the trace "
             "(`morpheus run --check-trace`): how many candidates passed it, and the median "
             "time it took (copies of the live maps, two more loads, the packets through "
             "both programs).", "",
             "| NF | cycles | profile | snapshot | specialize | verify | swap | total | "
             "agent CPU | checks passed | check ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        c = r["cycle_ms"]

        def f(key: str, c: dict[str, Any] = c) -> str:
            return f"{c[key]:.1f}" if c.get(key) is not None else "-"

        lines.append(f"| {r['nf']} | {r['cycles']} | {f('profile')} | {f('snapshot')} | "
                     f"{f('specialize')} | {f('verify')} | {f('swap')} | {f('total')} | "
                     f"{r['agent_cpu']:.0%} | {r.get('check_passed', '-')} / "
                     f"{r.get('check_cycles', '-')} | "
                     + (f"{r['check_ms']:.1f}" if r.get("check_ms") is not None else "-")
                     + " |")
    swap = result.get("swap")
    if swap:
        lines += ["", "## Swapping: link update or prog-array trampoline", "",
                  "The router again under `morpheus run --swap prog-array`: the attached "
                  "program tail-calls slot 0 of a one-entry prog array, so a swap is one map "
                  "update. Median time of the swapping call alone (the rest of the swap "
                  "column above is bookkeeping), and what the tail call adds per packet "
                  "(BPF_PROG_TEST_RUN of one frame, through the trampoline vs direct, "
                  "interleaved).", "",
                  "| swap | swap call µs | per-packet cost |", "|---|---:|---:|",
                  f"| link (BPF_LINK_UPDATE) | {swap['link_us']} | - |",
                  f"| prog-array | {swap['prog_array_us']} | {swap['tail_call_ns']:+.0f} ns |"]
    path = out_dir / "agent.md"
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


_ = get
