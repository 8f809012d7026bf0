"""`morpheus optimize --nf NAME --profile P [--json]`, `morpheus optimize DIR --trace F` and
`morpheus optimize MAPDIR --object OBJ --trace F` (maps pinned by another owner, e.g. bpfman)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from ..nf import NAMES, get
from ..traffic.generate import PROFILES
from .console import plain, show, table, working


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..optimizer import PlanOptions

    p = sub.add_parser(name, help="profile, specialize, verify and benchmark a program")
    p.add_argument("pinned", nargs="?", metavar="DIR",
                   help="a program loaded with `morpheus load OBJ --pin DIR`, or with "
                        "--object, a directory of maps another owner pinned for OBJ")
    p.add_argument("--nf", choices=NAMES, help="a built-in network function")
    p.add_argument("--profile", choices=PROFILES, help="trace locality (with --nf)")
    p.add_argument("--trace", help="pcap trace (with DIR)")
    p.add_argument("--object", metavar="OBJ",
                   help="the object whose maps DIR holds, pinned by another owner one per map "
                        "name (bpfman's /run/bpfman/fs/maps/PROG_ID, `bpftool prog loadall "
                        "OBJ PROGS pinmaps DIR`); read only")
    p.add_argument("--program", metavar="NAME",
                   help="the program of DIR to optimize (needed when DIR holds several)")
    p.add_argument("--pin", metavar="DIR2",
                   help="pin the specialized program and its maps under DIR2 (with DIR; only "
                        "when it was verified equivalent)")
    p.add_argument("--packets", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--hot-max", type=int, default=64, help="hot keys inlined per site")
    p.add_argument("--whole-max", type=int, default=64,
                   help="tables up to this many entries are inlined whole")
    p.add_argument("--lpm-max", type=int, default=PlanOptions.lpm_max,
                   help="LPM tries with at most this many prefixes are inlined whole, as "
                        "address ranges (default %(default)s; 0: hot keys only)")
    p.add_argument("--path-budget", type=int, default=0,
                   help="instructions path specialization may add after hot hits "
                        "(0, the default, turns it off)")
    p.add_argument("--throughput", action="store_true", help="also measure Mpps over veth")
    p.add_argument("--backend", choices=["kernel", "userspace"], default="kernel",
                   help="where the benchmark runs: the kernel (default), or the user-space "
                        "LLVM JIT (the verifier still judges, the equivalence check still "
                        "runs in the kernel)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..optimizer import PlanOptions

    options = PlanOptions(hot_max=args.hot_max, whole_max=args.whole_max,
                          path_budget=args.path_budget, lpm_max=args.lpm_max)
    measure = None
    if args.backend == "userspace":
        if args.pinned:
            raise ValueError("--backend userspace works on built-in NFs (--nf) for now")
        if args.throughput:
            raise ValueError("--throughput measures the kernel over veth; not with "
                             "--backend userspace")
        from ..userspace.bench import run_user_bench

        measure = run_user_bench
    if args.pinned:
        if not args.trace:
            raise ValueError("optimizing a pinned program needs --trace FILE.pcap")
        from ..pinned import optimize_pinned

        with working(f"optimizing {args.pinned}"):
            report = optimize_pinned(args.pinned, args.trace, program=args.program,
                                     rounds=args.rounds, options=options,
                                     object_path=args.object)
        if args.pin:
            report["pinned"] = _pin(args, report)
    else:
        if args.program or args.pin or args.object:
            raise ValueError("--program, --object and --pin go with a pinned DIR")
        if not args.nf or not args.profile:
            raise ValueError("give --nf NAME --profile P, or a pinned DIR with --trace")
        from ..offline import optimize_nf

        with working(f"optimizing {args.nf} under {args.profile} locality "
                     f"({args.rounds} rounds, {args.backend})"):
            report = optimize_nf(get(args.nf), args.profile, packets=args.packets,
                                 seed=args.seed, rounds=args.rounds, options=options,
                                 throughput=args.throughput, measure=measure)
    report.pop("specialization", None)
    for link in report.get("chain", ()):
        link.pop("specialization", None)
    report["backend"] = args.backend
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        show(report_view(report))
    return 0 if report.get("equivalent") else 2


def _pin(args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    """Pin the specialized version, if there is a verified one."""
    from ..pinned import pin_specialized

    if not report.get("equivalent") or report.get("specialization") is None:
        return {"directory": args.pin, "error": "not pinned: no specialized version was "
                "verified equivalent"}
    chain = [(link["array"], link["slot"], link["program"], link.get("specialization"))
             for link in report.get("chain", ())]
    return pin_specialized(args.pinned, args.pin, report["program"], report["specialization"],
                           chain, object_path=args.object)


def report_view(r: dict[str, Any]) -> RenderableType:
    """What `optimize` found: timings, a table of the sites, the check and the speedup."""
    parts: list[RenderableType] = [
        Text(f"{r.get('nf') or r.get('program')}  trace {r.get('profile') or r.get('trace')}",
             style="bold"),
        Text(f"analysis {r['analysis_ms']:.1f} ms, specialization {r['specialize_ms']:.1f} ms, "
             f"verification {r['verify_ms']:.1f} ms")]
    if "insns" in r:
        parts.append(Text(f"instructions: {r['insns']['original']} → "
                          f"{r['insns']['specialized']}"))
    sites = table("site", "map", "kind", "inlined", "reason", title="sites", right=("site",))
    for s in r["sites"]:
        sites.add_row(str(s["instruction"]), s["map"], s["kind"],
                      "yes" if s["specialized"] else "no", s["reason"])
    parts.append(sites)
    if r.get("error"):
        parts.append(Text(f"not loaded: {r['error']}", style="red"))
        return Group(*parts)
    if r.get("identical"):
        parts.append(Text("nothing specialized: the candidate is the original program"))
    else:
        parts.append(Text(f"equivalent on {r['packets_checked']} packets: "
                          f"{'yes' if r['equivalent'] else 'NO'}",
                          style="green" if r["equivalent"] else "bold red"))
    if r.get("speedup"):
        s = r["speedup"]
        ns = r["ns_per_packet"]
        parts.append(Text(f"ns/packet: original {ns['original']['median']:.0f}, specialized "
                          f"{ns['specialized']['median']:.0f}"))
        parts.append(Text(f"speedup: min {s['min']:.2f}  median {s['median']:.2f}  "
                          f"max {s['max']:.2f}", style="bold"))
    for link in r.get("chain", ()):
        state = ("equivalent" if link.get("equivalent") else "NOT equivalent"
                 if "equivalent" in link else "optimized above")
        speedup = link.get("speedup") or {}
        parts.append(Text(f"tail call {link['array']}[{link['slot']}] → {link['program']}: "
                          f"{state}" + (f", speedup median {speedup['median']:.2f}"
                                        if speedup else "")))
    if r.get("pinned"):
        pinned = r["pinned"]
        parts.append(Text(pinned["error"] if "error" in pinned else
                          f"pinned: {pinned['directory']}/progs/{pinned['program']} (id "
                          f"{pinned['id']}) with maps {', '.join(pinned['maps'])}"))
    return Group(*parts)


def format_report(r: dict[str, Any]) -> str:
    """The report as plain text (what `optimize` prints when not on a terminal)."""
    return plain(report_view(r))
