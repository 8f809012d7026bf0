"""`morpheus parse-bench OBJ`: Python time to parse and link an object (no kernel)."""

from __future__ import annotations

import argparse
import json
import statistics
import time

from ..obj import read_object


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="time parsing and linking an object in Python")
    p.add_argument("object", help="BPF object file")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with open(args.object, "rb") as f:
        data = f.read()
    spec = read_object(data, name="bench")  # warm-up (imports, caches)
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        read_object(data, name="bench")
        times.append((time.perf_counter() - start) * 1000)
    result = {
        "object": args.object,
        "programs": len(spec.programs),
        "insns": sum(p.insn_count for p in spec.programs.values()),
        "maps": len(spec.maps),
        "ms": {"min": round(min(times), 2), "median": round(statistics.median(times), 2),
               "max": round(max(times), 2)},
    }
    if args.json:
        print(json.dumps(result))
    else:
        ms = result["ms"]
        print(f"{args.object}: {result['programs']} programs, {result['insns']} instructions, "
              f"{result['maps']} maps")
        print(f"parse + link: min {ms['min']} ms, median {ms['median']} ms, max {ms['max']} ms "
              f"over {args.rounds} rounds")
    return 0
