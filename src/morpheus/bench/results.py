"""Reports of the optimizer and the agent, for docs/results (reproducible commands)."""

from __future__ import annotations

import resource
import socket
import time
from pathlib import Path
from typing import Any

from ..nf import all_nfs, get
from ..runtime.plan import PlanOptions
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


def agent_report(*, cycles: int = 10, progress: Any = None) -> dict[str, Any]:
    """Per NF: the agent on live traffic over veth; cycle times (forced re-specialization)
    and the agent's CPU use while cycling every 0.5 s."""
    from ..bench.replay import Replay
    from ..nf.env import NFEnv, xdp_ctx
    from ..runtime.agent import Agent, AgentOptions
    from ..traffic.generate import generate

    rows = []
    for nf in all_nfs():
        trace = generate(nf, "high", 10_000, seed=1)
        ingress = trace.main_ingress if trace.main_ingress >= 2 else 10
        peer = ingress + 1 if ingress % 2 == 0 else ingress - 1
        with NFEnv.start(nf, configure=False) as env:
            agent = Agent(nf.object_path, iface=f"port{ingress}", netns=env.namespace.name,
                          name=f"report-{nf.name}", options=AgentOptions(interval=0.5))
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
                        agent._dirty = True  # a control-plane write would do the same
                        report = agent.cycle()
                        if report.outcome == "swapped":
                            totals.append(report.timings_ms)
                    # CPU use of the loop itself, cycling every 0.5 s with traffic flowing
                    start_cpu = resource.getrusage(resource.RUSAGE_SELF)
                    start = time.perf_counter()
                    deadline = start + 5.0
                    while time.perf_counter() < deadline:
                        agent.cycle()
                        time.sleep(0.5)
                    end_cpu = resource.getrusage(resource.RUSAGE_SELF)
                    wall = time.perf_counter() - start
                cpu = ((end_cpu.ru_utime - start_cpu.ru_utime)
                       + (end_cpu.ru_stime - start_cpu.ru_stime)) / wall
            finally:
                agent.stop(detach=True)

        def median(key: str, totals: list[dict[str, float]] = totals) -> float | None:
            values = sorted(t[key] for t in totals if key in t)
            return values[len(values) // 2] if values else None

        row = {"nf": nf.name, "cycles": len(totals),
               "cycle_ms": {k: median(k) for k in ("profile", "snapshot", "specialize",
                                                   "verify", "swap", "total")},
               "agent_cpu": round(cpu, 3)}
        rows.append(row)
        if progress:
            progress(f"{nf.name:<9} cycle {row['cycle_ms']['total']} ms, cpu {row['agent_cpu']}")
    return {"machine": machine(), "rows": rows}


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
             "0.5 s with traffic flowing.", "",
             "| NF | cycles | profile | snapshot | specialize | verify | swap | total | "
             "agent CPU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        c = r["cycle_ms"]

        def f(key: str, c: dict[str, Any] = c) -> str:
            return f"{c[key]:.1f}" if c.get(key) is not None else "-"

        lines.append(f"| {r['nf']} | {r['cycles']} | {f('profile')} | {f('snapshot')} | "
                     f"{f('specialize')} | {f('verify')} | {f('swap')} | {f('total')} | "
                     f"{r['agent_cpu']:.0%} |")
    path = out_dir / "agent.md"
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


_ = get
