"""`morpheus report baseline`: ns/packet, Mpps and p99 of the four NFs, unoptimized, under
the high/low/none traffic profiles, written to docs/results/baseline.md with plots."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import Any

from ..nf import all_nfs
from .compare import Subject, run_bench

PROFILES = ("high", "low", "none")


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"kernel": platform.release(), "cpu": cpu, "cpus": str(os.cpu_count()),
            "python": platform.python_version(),
            "date": datetime.date.today().isoformat()}


def baseline(*, rounds: int = 5, packets: int = 10_000, progress: Any = None
             ) -> dict[str, Any]:
    from ..traffic.generate import generate

    rows = []
    for nf in all_nfs():
        for profile in PROFILES:
            trace = generate(nf, profile, packets, seed=1)
            subject = Subject(nf.name, nf.object_path, nf.program)
            r = run_bench([subject], trace, nf=nf, rounds=rounds)
            r.pop("_series", None)
            a = r["A"]
            rows.append({"nf": nf.name, "profile": profile, "insns": a["insns"],
                         "ns_per_packet": a["ns_per_packet"],
                         "ns_with_harness": a["ns_per_packet_with_harness"],
                         "mpps": a.get("mpps"), "p50_ns": a["latency_ns"]["p50"],
                         "p99_ns": a["latency_ns"]["p99"], "p999_ns": a["latency_ns"]["p999"],
                         "harness_ns": r["harness_overhead_ns"]["median"],
                         "verdicts": a.get("verdicts"),
                         "verdicts_match": r.get("verdicts_match")})
            if progress:
                progress(f"{nf.name:<9} {profile:<5} {a['ns_per_packet']['median']:7.1f} ns  "
                         f"{a.get('mpps', {}).get('median', 0):5.2f} Mpps  "
                         f"p99 {a['latency_ns']['p99']:.0f} ns")
    return {"machine": machine(), "rounds": rounds, "packets": packets, "rows": rows}


def write_markdown(result: dict[str, Any], out_dir: Path, command: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(result, out_dir)
    m = result["machine"]
    lines = [
        "# Baseline: the four network functions, unoptimized",
        "",
        f"Produced by `{command}` on {m['date']}: kernel {m['kernel']}, {m['cpu']}, "
        f"{m['cpus']} vCPUs, Python {m['python']}. Traces of {result['packets']} packets "
        f"(seed 1), {result['rounds']} interleaved rounds; min/median/max over rounds.",
        "",
        "- **ns/packet**: in-kernel trace replay (live frames, every packet rewritten),",
        "  the harness overhead (an empty program under test, measured in the same rounds)",
        "  subtracted; the raw figure is in the last column.",
        "- **Mpps**: end to end over a veth pair on one core, generator and program under",
        "  test (native XDP) on the same CPU, packets dropped after the verdict.",
        "- **p50/p99/p99.9**: per-packet time around the call in the harness",
        "  (`bpf_ktime_get_ns`, which adds its own ~20 ns).",
        "- **verdicts**: every packet of the replay gives the same verdict as an individual",
        "  BPF_PROG_TEST_RUN from the same starting state.",
        "",
        "| NF | profile | insns | ns/packet (min / med / max) | Mpps (med) | p50 | p99 | "
        "p99.9 | verdicts | with harness |",
        "|---|---|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in result["rows"]:
        ns = r["ns_per_packet"]
        mpps = f"{r['mpps']['median']:.2f}" if r["mpps"] else "-"
        ok = "match" if r["verdicts_match"] else "**differ**"
        lines.append(f"| {r['nf']} | {r['profile']} | {r['insns']} | {ns['min']:.0f} / "
                     f"{ns['median']:.0f} / {ns['max']:.0f} | {mpps} | {r['p50_ns']:.0f} | "
                     f"{r['p99_ns']:.0f} | {r['p999_ns']:.0f} | {ok} | "
                     f"{r['ns_with_harness']['median']:.0f} |")
    lines += ["", "Verdict mix per trace (individual runs):", ""]
    for r in result["rows"]:
        lines.append(f"- {r['nf']} {r['profile']}: " + ", ".join(
            f"{k} {v}" for k, v in (r["verdicts"] or {}).items()))
    lines += ["", *[f"![{Path(p).stem}]({Path(p).name})" for p in plots], ""]
    path = out_dir / "baseline.md"
    path.write_text("\n".join(lines))
    return path


def _plots(result: dict[str, Any], out_dir: Path) -> list[str]:
    from .plots import figure, save

    nfs = sorted({r["nf"] for r in result["rows"]}, key=[n.name for n in all_nfs()].index)
    written = []
    for metric, label, fname in (("ns_per_packet", "ns per packet (median)", "baseline_ns.png"),
                                 ("mpps", "Mpps, one core (median)", "baseline_mpps.png"),
                                 ("p99_ns", "p99 ns per packet", "baseline_p99.png")):
        fig, ax = figure(7, 3.5)
        width = 0.25
        for i, profile in enumerate(PROFILES):
            values = []
            for nf in nfs:
                row = next(r for r in result["rows"] if r["nf"] == nf and r["profile"] == profile)
                v = row[metric]
                values.append(v["median"] if isinstance(v, dict) else (v or 0))
            ax.bar([x + (i - 1) * width for x in range(len(nfs))], values, width, label=profile)
        ax.set_xticks(range(len(nfs)))
        ax.set_xticklabels(nfs)
        ax.set_ylabel(label)
        ax.legend(title="locality")
        ax.grid(axis="y", alpha=0.3)
        written.append(save(fig, out_dir / fname))
    return written
