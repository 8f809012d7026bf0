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
    p.add_argument("--optimize", action="store_true",
                   help="also time analysis and specialization of each program (64 hot keys "
                        "at every specializable site, synthetic snapshot)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def optimize_timing(spec: object, rounds: int) -> list[dict[str, object]]:
    """Median Python time of analysis and of planning + inlining + cleanup, per program."""
    import random
    from collections import Counter

    from ..optimizer import MapSnapshot, SiteHeat, SpecializeRequest, Target, specialize

    out = []
    rng = random.Random(1)
    for prog in spec.programs.values():  # type: ignore[attr-defined]
        analysis, special = [], []
        for _ in range(max(3, rounds // 5)):
            t0 = time.perf_counter()
            target = Target.analyze(spec, prog)  # type: ignore[arg-type]
            facts = target.facts
            analysis.append((time.perf_counter() - t0) * 1000)
            heat, snaps = {}, {}
            for site in facts.lookups():
                if not site.specializable:
                    continue
                mspec = spec.maps[site.map]  # type: ignore[attr-defined]
                keys = [rng.randbytes(mspec.key_size) for _ in range(64)]
                heat[site.index] = SiteHeat(Counter({k: 64 - i for i, k in enumerate(keys)}))
                snap = snaps.setdefault(site.map, MapSnapshot(mspec))
                for k in keys:
                    snap.entries[k] = bytes(mspec.value_size)
            t1 = time.perf_counter()
            result = specialize(SpecializeRequest(target, snaps, heat))
            special.append((time.perf_counter() - t1) * 1000)
        out.append({"program": prog.name, "insns": prog.insn_count,
                    "sites": sum(1 for d in result.decisions if d.plan is not None),
                    "analysis_ms": round(statistics.median(analysis), 1),
                    "specialize_ms": round(statistics.median(special), 1),
                    "passes_ms": result.timings_ms})
    return out


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
    if args.optimize:
        result["optimize"] = optimize_timing(spec, args.rounds)
    if args.json:
        print(json.dumps(result))
    else:
        ms = result["ms"]
        print(f"{args.object}: {result['programs']} programs, {result['insns']} instructions, "
              f"{result['maps']} maps")
        print(f"parse + link: min {ms['min']} ms, median {ms['median']} ms, max {ms['max']} ms "
              f"over {args.rounds} rounds")
        for entry in result.get("optimize", []):
            print(f"{entry['program']}: {entry['insns']} instructions, analysis "
                  f"{entry['analysis_ms']} ms, specialization of {entry['sites']} sites "
                  f"{entry['specialize_ms']} ms {entry['passes_ms']}")
    return 0
