"""`morpheus report evaluation`: the paper's evaluation, re-done side by side in one run.

For every NF and locality (high, low, none) one full `morpheus optimize` cycle (profile,
specialize, verify, check every packet of the trace against the original) and then, from
the same state, original and specialized interleaved: replay ns/packet, veth Mpps,
per-packet p50/p99/p99.9, and instructions executed per packet (a block-counting copy of
each program, `passes.blockcount`). Per NF, an XDP_DROP program over the same veth pair is
the floor of the end-to-end path. Then the cost of the sampling instrumentation against the
sampling rate (router), naive against adaptive instrumentation (every NF), and the demo's
dynamic-traffic phases. Written to docs/results/evaluation.md with PNG plots.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..nf import all_nfs, get
from ..optimizer import PlanOptions
from .report import PROFILES, machine

RATES = (1, 4, 16, 64, 256, 1024)
QUICK_RATES = (1, 1024)


def evaluation(*, rounds: int = 7, packets: int = 10_000, quick: bool = False,
               nfs: tuple[str, ...] | None = None, demo: bool = True,
               plot_dir: Path | None = None, progress: Any = None) -> dict[str, Any]:
    """Everything the report shows, as a JSON-ready dict. `quick` measures fewer rates and
    demo seconds (for tests and a first look); `plot_dir` receives the demo's timeline."""
    from .costs import instrumentation_cost
    from .insncount import drop_floor_mpps, executed_insns

    say = progress or (lambda line: None)
    started = time.perf_counter()
    chosen = [get(n) for n in nfs] if nfs else all_nfs()
    rows = []
    floors: dict[str, Any] = {}
    for nf in chosen:
        for profile in PROFILES:
            def measure(original: Any, special: Any, trace: Any, prepare: Any,
                        nf: Any = nf, profile: str = profile) -> dict[str, Any]:
                out: dict[str, Any] = {"insns_per_packet": {
                    "original": round(executed_insns(original, trace, nf, prepare), 1),
                    "specialized": round(executed_insns(special, trace, nf, prepare), 1)}}
                if nf.name not in floors:
                    floors[nf.name] = drop_floor_mpps(original, trace, nf, max(1, rounds // 2))
                return out

            r = _cycle(nf, profile, packets=packets, rounds=rounds, measure=measure)
            rows.append(r)
            say(f"{nf.name:<9} {profile:<5} equivalent={r.get('equivalent')} "
                f"speedup={(r.get('speedup') or {}).get('median')} "
                f"insns/packet={r.get('insns_per_packet')}")
    sampling = []
    router = get("router")
    for rate in QUICK_RATES if quick else RATES:
        c = instrumentation_cost(router, rounds=rounds, rate=rate,
                                 packets=min(packets, 10_000))
        sampling.append(c)
        say(f"router    sampling 1/{rate}: {c['cost_ns']:+} ns ({c['cost_ratio']}x)")
    modes = []
    for nf in chosen:
        naive = instrumentation_cost(nf, rounds=rounds, rate=1, every_site=True,
                                     packets=min(packets, 10_000))
        adaptive = instrumentation_cost(nf, rounds=rounds, packets=min(packets, 10_000))
        modes.append({"nf": nf.name, "naive": naive, "adaptive": adaptive})
        say(f"{nf.name:<9} naive {naive['cost_ns']:+} ns, adaptive {adaptive['cost_ns']:+} ns")
    dynamic = None
    if demo:
        from ..demo import run_demo

        timeline = str(plot_dir / "evaluation_dynamic_timeline.png") if plot_dir else None
        dynamic = run_demo(seconds_per_phase=1.0 if quick else 4.0,
                           packets=5_000 if quick else 20_000, plot=timeline)
        say(f"dynamic   {dynamic['phases']}")
    return {"machine": machine(), "rounds": rounds, "packets": packets, "quick": quick,
            "rows": rows, "drop_floor_mpps": floors, "sampling": sampling,
            "instrumentation_modes": modes, "dynamic": dynamic,
            "elapsed_s": round(time.perf_counter() - started, 1)}


def _cycle(nf: Any, profile: str, *, packets: int, rounds: int, measure: Any
           ) -> dict[str, Any]:
    """`optimize_nf` with the extra measurements, from the state the cycle left."""
    from ..offline import optimize_program
    from ..traffic.generate import generate
    from ..world.environment import Subject

    trace = generate(nf, profile, packets, 1)
    subject = Subject("original", nf.object_path, nf.program)
    t0 = time.perf_counter()
    report = optimize_program(subject, trace, nf=nf, options=PlanOptions(), rounds=rounds,
                              throughput=True, extra_measures=measure)
    spec = report.pop("specialization", None)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    if spec is not None:
        report["path_copies"] = spec.stats.get("path_copies", [])
    return {"nf": nf.name, "profile": profile, **report}


# --- the report --------------------------------------------------------------------------------


def _cycle_ms(r: dict[str, Any]) -> float:
    return round(r.get("analysis_ms", 0) + r.get("specialize_ms", 0) + r.get("verify_ms", 0), 1)


def _med(d: dict[str, Any] | None, key: str | None = None) -> float | None:
    if d is None:
        return None
    v = d[key] if key else d
    return v.get("median") if isinstance(v, dict) else v


def write_evaluation_markdown(result: dict[str, Any], out_dir: Path, command: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(result, out_dir, command)
    m = result["machine"]
    where = (f"{m['cpus']} vCPU VM ({m['cpu']}), kernel {m['kernel']}, Python {m['python']}, "
             f"{m['date']}")
    lines = [
        "# Evaluation: the paper's figures, original and specialized side by side",
        "",
        f"Produced by `{command}` in one run of {result['elapsed_s']} s on a {where}. "
        f"Traces of {result['packets']} packets (seed 1); {result['rounds']} interleaved "
        "rounds; min / median / max over rounds. The machine was shared with other work while "
        "this ran: absolute numbers drift, the ratios (each from back-to-back passes of the "
        "two programs) are what to compare.",
        "",
        "Each row is one full cycle of `morpheus optimize --nf NF --profile P --throughput`: "
        "profile with the sampling instrumentation, specialize, load (the verifier judges), "
        "check every packet of the trace against the original from the same state (verdicts, "
        "bytes, data-plane tables), then measure both from that state.",
        "",
        "- **ns/packet**: in-kernel replay (live frames, fresh bytes per packet), harness "
        "subtracted; **speedup** = original / specialized, median of back-to-back pass ratios.",
        "- **Mpps**: XDP live frames over a veth pair in a namespace, generator and program on "
        "one core; **floor** is an XDP_DROP program on the same pair in the same run (what "
        "the path costs with no program work).",
        "- **p50 / p99 / p99.9**: per packet, timed around the call in the replay harness.",
        "- **insns/packet**: BPF instructions executed per packet, counted by a block-counting "
        "copy of each program (`passes.blockcount`); helper calls count one each (the map "
        "lookups the specialization removes cost far more than one instruction).",
        "- **cycle ms**: analysis + specialization + verification of the cycle.",
        "",
        "## Throughput and per-packet cost",
        "",
        "| NF | locality | equivalent | speedup (min / med / max) | ns orig → spec | "
        "Mpps orig → spec (floor) | insns/packet orig → spec | program insns orig → spec | "
        "cycle ms |",
        "|---|---|---|---|---|---|---|---|---:|",
    ]
    floors = result["drop_floor_mpps"]
    for r in result["rows"]:
        sp = r.get("speedup") or {}
        ns = r.get("ns_per_packet") or {}
        mpps = r.get("mpps") or {}
        ipp = r.get("insns_per_packet") or {}
        floor = _med(floors.get(r["nf"]))
        speed = (f"{sp['min']:.2f} / **{sp['median']:.2f}** / {sp['max']:.2f}" if sp
                 else r.get("error", "not measured")[:60])
        ns_s = (f"{_med(ns, 'original'):.0f} → {_med(ns, 'specialized'):.0f}" if ns else "-")
        mp_s = (f"{_med(mpps, 'original'):.2f} → {_med(mpps, 'specialized'):.2f}"
                f" ({floor:.2f})" if mpps and floor is not None else "-")
        ip_s = (f"{ipp['original']:.0f} → {ipp['specialized']:.0f}" if ipp else "-")
        lines.append(f"| {r['nf']} | {r['profile']} | {'yes' if r.get('equivalent') else 'NO'} "
                     f"| {speed} | {ns_s} | {mp_s} | {ip_s} | {r['insns']['original']} → "
                     f"{r['insns']['specialized']} | {_cycle_ms(r)} |")
    lines += ["", "## Per-packet latency (ns)", "",
              "| NF | locality | p50 orig → spec | p99 orig → spec | p99.9 orig → spec | "
              "p99 change |", "|---|---|---|---|---|---:|"]
    for r in result["rows"]:
        lat = r.get("latency_ns")
        if not lat:
            continue
        a, b = lat["original"], lat["specialized"]
        change = (b["p99"] - a["p99"]) / a["p99"] * 100 if a["p99"] else 0.0
        lines.append(f"| {r['nf']} | {r['profile']} | {a['p50']:.0f} → {b['p50']:.0f} | "
                     f"{a['p99']:.0f} → {b['p99']:.0f} | {a['p999']:.0f} → {b['p999']:.0f} | "
                     f"{change:+.0f}% |")
    lines += ["", "## Cost of the instrumentation", "",
              "Router, high locality: the version the agent profiles with (key sampling at the "
              "watched site, version bumps where the data plane writes inlinable maps) against "
              "the original, by sampling rate:", "",
              "| sampled | original ns | instrumented ns | cost |", "|---|---:|---:|---:|"]
    for c in result["sampling"]:
        lines.append(f"| 1 in {c['rate']} | {c['original_ns']:.0f} | {c['instrumented_ns']:.0f} "
                     f"| {c['cost_ns']:+.0f} ns ({c['cost_ratio']}x) |")
    lines += ["", "Naive instrumentation (every lookup with a variable key records its key on "
              "every packet, as a profiler that does not choose would) against adaptive (only "
              "the sites worth specializing, one lookup in 16, which is what the agent runs "
              "while it profiles):", "",
              "| NF | naive sites | naive cost | adaptive sites | adaptive cost |",
              "|---|---:|---:|---:|---:|"]
    for mo in result["instrumentation_modes"]:
        n, a = mo["naive"], mo["adaptive"]
        lines.append(f"| {mo['nf']} | {len(n['sites'])} | {n['cost_ns']:+.0f} ns "
                     f"({n['cost_ratio']}x) | {len(a['sites'])} | {a['cost_ns']:+.0f} ns "
                     f"({a['cost_ratio']}x) |")
    dyn = result.get("dynamic")
    if dyn:
        lines += ["", "## Dynamic traffic (the demo's phases)", "",
                  "The router under `morpheus demo`'s three phases (no locality, high locality, "
                  "a new hot set), unoptimized and with the agent, interleaved in 0.25 s "
                  "slices over two identical namespaces:", "",
                  "| phase | unoptimized Mpps | Morpheus Mpps | ratio |", "|---|---:|---:|---:|"]
        for ph in dyn["phases"]:
            ratio = ph["morpheus_mpps"] / ph["baseline_mpps"] if ph["baseline_mpps"] else 0
            lines.append(f"| {ph['name']} | {ph['baseline_mpps']:.3f} | "
                         f"{ph['morpheus_mpps']:.3f} | {ratio:.2f}x |")
        adapted = dyn.get("adaptation_s")
        # None when the running version has no hot-key site (the route table inlined whole):
        # a moved hot set changes nothing it serves.
        adaptation = (f"Adaptation after the hot set moved: {adapted} s" if adapted is not None
                      else "Adaptation after the hot set moved: none needed (no hot-key site: "
                      "the route table is inlined whole)")
        lines += ["", f"{adaptation}; "
                  f"swaps: {dyn.get('swaps')}; stale verdicts: {dyn.get('stale_verdicts')}; "
                  f"packets lost by the program's side: {dyn.get('lost_packets')}."]
    lines += ["", "## Figures", ""]
    if dyn and dyn.get("plot"):
        plots = [*plots, dyn["plot"]]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    lines.append("")
    path = out_dir / "evaluation.md"
    path.write_text("\n".join(lines))
    return path


def _caption(ax: Any, command: str, result: dict[str, Any]) -> None:
    m = result["machine"]
    ax.set_title(f"`{command}` · {m['cpus']} vCPU VM · kernel {m['kernel']}", fontsize=7)


def _plots(result: dict[str, Any], out_dir: Path, command: str) -> list[str]:
    from .plots import figure, save

    written = []
    rows = [r for r in result["rows"] if r.get("ns_per_packet")]
    labels = [f"{r['nf']}\n{r['profile']}" for r in rows]
    xs = range(len(rows))

    def bars(metric: str, ylabel: str, fname: str, floor: bool = False) -> None:
        fig, ax = figure(max(7, len(rows) * 0.7), 3.6)
        for k, (side, off) in enumerate((("original", -0.2), ("specialized", 0.2))):
            vals = [_med(r.get(metric) or {}, side) or 0 for r in rows]
            ax.bar([x + off for x in xs], vals, 0.4, label=side, color=("C0", "C2")[k])
        if floor:
            vals = [_med(result["drop_floor_mpps"].get(r["nf"])) or 0 for r in rows]
            ax.scatter(list(xs), vals, marker="_", s=400, color="k", label="XDP_DROP floor")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        _caption(ax, command, result)
        written.append(save(fig, out_dir / fname))

    if rows:
        bars("ns_per_packet", "replay ns/packet (median)", "evaluation_ns.png")
        bars("mpps", "veth Mpps, one core (median)", "evaluation_mpps.png", floor=True)
        fig, ax = figure(max(7, len(rows) * 0.7), 3.6)
        for k, (pct, off) in enumerate((("p50", -0.3), ("p99", -0.1), ("p999", 0.1))):
            for side, shift, color in (("original", 0.0, "C0"), ("specialized", 0.1, "C2")):
                vals = [(r.get("latency_ns") or {}).get(side, {}).get(pct, 0) for r in rows]
                ax.bar([x + off + shift - 0.1 for x in xs], vals, 0.1, color=color,
                       alpha=(1.0, 0.7, 0.45)[k],
                       label=f"{pct} {side}")
        ax.set_yscale("log")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel("ns per packet")
        ax.legend(fontsize=6, ncol=3)
        _caption(ax, command, result)
        written.append(save(fig, out_dir / "evaluation_latency.png"))
        fig, axes = figure(max(7, len(rows) * 0.7), 3.6)
        for k, (side, off) in enumerate((("original", -0.2), ("specialized", 0.2))):
            vals = [(r.get("insns_per_packet") or {}).get(side, 0) for r in rows]
            axes.bar([x + off for x in xs], vals, 0.4, label=f"executed/packet, {side}",
                     color=("C0", "C2")[k])
            size = [r["insns"][side] for r in rows]
            axes.scatter([x + off for x in xs], size, marker="x", color=("C0", "C2")[k],
                         label=f"program size, {side}")
        axes.set_yscale("log")
        axes.set_xticks(list(xs))
        axes.set_xticklabels(labels, fontsize=7)
        axes.set_ylabel("BPF instructions")
        axes.legend(fontsize=6)
        _caption(axes, command, result)
        written.append(save(fig, out_dir / "evaluation_insns.png"))
    if result["sampling"]:
        fig, ax = figure(7, 3.4)
        rates = [c["rate"] for c in result["sampling"]]
        ax.plot(rates, [c["cost_ns"] for c in result["sampling"]], "o-",
                label="router, adaptive sites")
        for mo in result["instrumentation_modes"]:
            ax.scatter([1], [mo["naive"]["cost_ns"]], marker="s",
                       label=f"{mo['nf']} naive (every site, 1 in 1)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("one lookup sampled in N")
        ax.set_ylabel("added ns/packet")
        ax.axhline(0, color="k", lw=0.5)
        ax.legend(fontsize=6)
        _caption(ax, command, result)
        written.append(save(fig, out_dir / "evaluation_sampling.png"))
    dyn = result.get("dynamic")
    if dyn:
        fig, ax = figure(7, 3.2)
        names = [p["name"] for p in dyn["phases"]]
        ax.bar([x - 0.2 for x in range(len(names))], [p["baseline_mpps"] for p in dyn["phases"]],
               0.4, label="unoptimized", color="C0")
        ax.bar([x + 0.2 for x in range(len(names))], [p["morpheus_mpps"] for p in dyn["phases"]],
               0.4, label="Morpheus agent", color="C2")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names)
        ax.set_ylabel("router Mpps (veth)")
        ax.legend(fontsize=7)
        _caption(ax, command, result)
        written.append(save(fig, out_dir / "evaluation_dynamic.png"))
    return written
