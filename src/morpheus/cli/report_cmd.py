"""`morpheus report baseline [--out DIR] [--rounds N]`: the published baseline."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="generate a results report")
    p.add_argument("kind", choices=["baseline"])
    p.add_argument("--out", default="docs/results", help="directory for the report and plots")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--packets", type=int, default=10_000)
    p.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.report import baseline, write_markdown

    result = baseline(rounds=args.rounds, packets=args.packets,
                      progress=lambda line: print(line, file=sys.stderr, flush=True))
    command = f"morpheus report baseline --rounds {args.rounds} --packets {args.packets}"
    path = write_markdown(result, Path(args.out), command)
    (Path(args.out) / "baseline.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    print(path)
    return 0
