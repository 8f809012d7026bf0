"""`morpheus bench A.o [B.o] --nf NAME (--profile P | --trace FILE.pcap) --rounds N`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from ..bench.compare import Subject, run_bench
from ..nf import NAMES, get
from ..traffic.generate import PROFILES, default_ingress, from_frames, generate
from ..traffic.pcap import read_pcap
from .console import plain, show, table, working


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="benchmark one program, or two side by side")
    p.add_argument("objects", nargs="+", metavar="OBJ", help="one or two BPF objects (A, B)")
    p.add_argument("--nf", choices=NAMES, help="apply this NF's default configuration")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--profile", choices=PROFILES, help="generate a trace with this locality")
    src.add_argument("--trace", help="replay this pcap file")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--packets", type=int, default=10_000, help="generated trace length")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--program", help="program name in the objects (default: the NF's)")
    p.add_argument("--ingress", type=int, help="ingress ifindex the packets arrive on")
    p.add_argument("--no-throughput", action="store_true", help="skip the veth measurement")
    p.add_argument("--cpu", type=int, default=0, help="CPU to run on")
    p.add_argument("--backend", choices=["kernel", "userspace"], default="kernel",
                   help="run the programs in the kernel (default) or in the user-space LLVM "
                        "JIT (after the kernel verifier accepted them)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", metavar="DIR", help="write PNG plots into DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if len(args.objects) > 2:
        raise ValueError("give one object, or two to compare")
    if args.profile and not args.nf:
        raise ValueError("--profile generates traffic for a network function: add --nf")
    nf = get(args.nf) if args.nf else None
    if args.trace:
        ingress = args.ingress if args.ingress is not None else (
            default_ingress(nf) if nf else 0)
        trace = from_frames(read_pcap(args.trace), ingress, name=Path(args.trace).name)
    else:
        assert nf is not None
        trace = generate(nf, args.profile, args.packets, args.seed)
    program = args.program or (nf.program if nf else None)
    subjects = [Subject(label, Path(path), program)
                for label, path in zip("AB", args.objects, strict=False)]
    with working(f"benchmarking {' vs '.join(s.object_path.name for s in subjects)} "
                 f"({args.rounds} rounds, {len(trace)} packets, {args.backend})"):
        if args.backend == "userspace":
            from ..userspace.bench import run_user_bench

            report = run_user_bench(subjects, trace, nf=nf, rounds=args.rounds, cpu=args.cpu)
        else:
            report = run_bench(subjects, trace, nf=nf, rounds=args.rounds,
                               throughput=not args.no_throughput, cpu=args.cpu)
            report["backend"] = "kernel"
    series = report.pop("_series")
    if args.plot:
        from ..bench.plots import plot_bench

        report["plots"] = plot_bench(report, series, Path(args.plot))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        show(report_view(report))
    return 0 if report.get("verdicts_match", True) else 2


def report_view(report: dict[str, Any]) -> RenderableType:
    """The benchmark as a header and one table row per program."""
    t = report["trace"]
    parts: list[RenderableType] = [
        Text(f"nf {report['nf'] or '-'}   trace {t.get('profile') or '-'}: {t['packets']} "
             f"packets, {t['flows']} flows, top 1% carry {t['top1_share']:.1%}   rounds "
             f"{report['rounds']}"),
        Text(f"harness overhead {report['harness_overhead_ns']['median']:.0f} ns/packet "
             "(subtracted below)")]
    rows = table("", "program", "ns/packet min", "median", "max", "Mpps", "p99 ns",
                 "verdicts ok", right=("ns/packet min", "median", "max", "Mpps", "p99 ns"))
    for key in ("A", "B"):
        if key not in report:
            continue
        e = report[key]
        ns = e["ns_per_packet"]
        mpps = f"{e['mpps']['median']:.2f}" if "mpps" in e else "not measured"
        p99 = f"{e['p99_ns']:.0f}" if "p99_ns" in e else "not measured"
        ok = {True: "yes", False: "NO", None: "not compared"}[e.get("verdicts_match")]
        rows.add_row(key, f"{Path(e['object']).name}:{e['program']}", f"{ns['min']:.1f}",
                     f"{ns['median']:.1f}", f"{ns['max']:.1f}", mpps, p99, ok)
    parts.append(rows)
    if "speedup" in report:
        s = report["speedup"]
        parts.append(Text(f"speedup A/B: min {s['min']:.3f}  median {s['median']:.3f}  "
                          f"max {s['max']:.3f}", style="bold"))
    return Group(*parts)


def format_report(report: dict[str, Any]) -> str:
    """The benchmark as plain text."""
    return plain(report_view(report))
