"""`morpheus report baseline [--out DIR] [--rounds N]`: the published baseline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="generate a results report")
    p.add_argument("kind", choices=["baseline", "optimizer", "agent", "evaluation"])
    p.add_argument("--out", default="docs/results", help="directory for the report and plots")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--packets", type=int, default=10_000)
    p.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    p.add_argument("--quick", action="store_true",
                   help="evaluation: two sampling rates and a short demo (a first look)")
    p.add_argument("--nf", action="append", dest="nfs", metavar="NAME",
                   help="evaluation: only this NF (repeatable; default all four)")
    p.add_argument("--no-demo", action="store_true",
                   help="evaluation: leave out the dynamic-traffic phases")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.report import baseline, write_markdown
    from ..bench.results import (
        agent_report,
        optimizer_report,
        write_agent_markdown,
        write_optimizer_markdown,
    )
    from ..nf import NAMES
    from ..traffic.generate import PROFILES
    from .console import progress_lines

    out = Path(args.out)
    if args.kind == "evaluation":
        with progress_lines("report evaluation") as progress:
            return _evaluation(args, out, progress)
    if args.kind == "optimizer":
        # Two locality profiles per NF, then the sampling cost of each NF.
        with progress_lines("report optimizer", total=3 * len(NAMES)) as progress:
            result = optimizer_report(rounds=args.rounds, progress=progress)
        path = write_optimizer_markdown(result, out, f"morpheus report optimizer --rounds "
                                                     f"{args.rounds}")
        (out / "optimizer.json").write_text(json.dumps(result, indent=2))
        print(path)
        return 0
    if args.kind == "agent":
        with progress_lines("report agent") as progress:
            result = agent_report(progress=progress)
        path = write_agent_markdown(result, out, "morpheus report agent")
        (out / "agent.json").write_text(json.dumps(result, indent=2))
        print(path)
        return 0
    with progress_lines("report baseline", total=len(NAMES) * len(PROFILES)) as progress:
        result = baseline(rounds=args.rounds, packets=args.packets, progress=progress)
    command = f"morpheus report baseline --rounds {args.rounds} --packets {args.packets}"
    path = write_markdown(result, Path(args.out), command)
    (Path(args.out) / "baseline.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    print(path)
    return 0


def _evaluation(args: argparse.Namespace, out: Path, progress: object) -> int:
    from ..bench.evaluation import evaluation, write_evaluation_markdown

    command = f"morpheus report evaluation --rounds {args.rounds} --packets {args.packets}"
    command += " --quick" if args.quick else ""
    command += "".join(f" --nf {n}" for n in args.nfs or ())
    command += " --no-demo" if args.no_demo else ""
    out.mkdir(parents=True, exist_ok=True)
    result = evaluation(rounds=args.rounds, packets=args.packets, quick=args.quick,
                        nfs=tuple(args.nfs) if args.nfs else None, demo=not args.no_demo,
                        plot_dir=out, progress=progress)
    path = write_evaluation_markdown(result, out, command)
    (out / "evaluation.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    print(path)
    return 0
