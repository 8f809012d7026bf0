"""`morpheus demo [--quick] [--json]`: the router under changing traffic, with and without
Morpheus."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="router under changing traffic: unoptimized vs Morpheus")
    p.add_argument("--quick", action="store_true", help="short phases (about 15 s in all)")
    p.add_argument("--seconds", type=float, help="seconds per traffic phase")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", default="demo.png", help="PNG to write (default demo.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import format_table, run_demo

    seconds = args.seconds or (1.5 if args.quick else 5.0)

    def progress(line: str) -> None:
        if not args.json:
            print(line, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    report = run_demo(seconds_per_phase=seconds, progress=progress, plot=args.plot)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print()
        print(format_table(report))
    return 0 if report["stale_verdicts"] == 0 and report["lost_packets"] <= 0 else 2
