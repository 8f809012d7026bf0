"""`morpheus demo [--quick] [--json]`: the router under changing traffic, with and without
Morpheus."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="router under changing traffic: unoptimized vs Morpheus")
    p.add_argument("--quick", action="store_true", help="short phases (about 15 s in all)")
    p.add_argument("--seconds", type=float, help="seconds per traffic phase")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", default="demo.png", help="PNG to write (default demo.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import PHASES, format_table, run_demo
    from .console import progress_lines

    seconds = args.seconds or (1.5 if args.quick else 5.0)
    # One line per 0.25 s slice and router: 2 x seconds per phase, two routers.
    slices = round(len(PHASES) * 2 * seconds / 0.25)
    with progress_lines("demo: unoptimized and Morpheus, interleaved", total=slices) as line:
        report = run_demo(seconds_per_phase=seconds, progress=line, plot=args.plot)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
    return 0 if report["stale_verdicts"] == 0 and report["lost_packets"] <= 0 else 2
