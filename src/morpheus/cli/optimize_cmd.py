"""`morpheus optimize --nf NAME --profile P [--json]` and `morpheus optimize DIR --trace F`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..nf import NAMES, get
from ..traffic.generate import PROFILES


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="profile, specialize, verify and benchmark a program")
    p.add_argument("pinned", nargs="?", metavar="DIR",
                   help="a program loaded with `morpheus load OBJ --pin DIR`")
    p.add_argument("--nf", choices=NAMES, help="a built-in network function")
    p.add_argument("--profile", choices=PROFILES, help="trace locality (with --nf)")
    p.add_argument("--trace", help="pcap trace (with DIR)")
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
    p.add_argument("--throughput", action="store_true", help="also measure Mpps over veth")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..optimizer import PlanOptions

    options = PlanOptions(hot_max=args.hot_max, whole_max=args.whole_max)
    if args.pinned:
        if not args.trace:
            raise ValueError("optimizing a pinned program needs --trace FILE.pcap")
        from ..pinned import optimize_pinned

        report = optimize_pinned(args.pinned, args.trace, program=args.program,
                                 rounds=args.rounds, options=options)
        if args.pin:
            report["pinned"] = _pin(args, report)
    else:
        if args.program or args.pin:
            raise ValueError("--program and --pin go with a pinned DIR")
        if not args.nf or not args.profile:
            raise ValueError("give --nf NAME --profile P, or a pinned DIR with --trace")
        from ..offline import optimize_nf

        report = optimize_nf(get(args.nf), args.profile, packets=args.packets, seed=args.seed,
                             rounds=args.rounds, options=options, throughput=args.throughput)
    report.pop("specialization", None)
    for link in report.get("chain", ()):
        link.pop("specialization", None)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
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
                           chain)


def format_report(r: dict[str, Any]) -> str:
    lines = [f"{r.get('nf') or r.get('program')}  trace {r.get('profile') or r.get('trace')}"]
    lines.append(f"analysis {r['analysis_ms']:.1f} ms, specialization {r['specialize_ms']:.1f} ms, "
                 f"verification {r['verify_ms']:.1f} ms")
    if "insns" in r:
        lines.append(f"instructions: {r['insns']['original']} → {r['insns']['specialized']}")
    lines.append("")
    lines.append(f"{'site':>6}  {'map':<14} {'kind':<7} {'inlined':<8} reason")
    for s in r["sites"]:
        lines.append(f"{s['instruction']:>6}  {s['map']:<14} {s['kind']:<7} "
                     f"{('yes' if s['specialized'] else 'no'):<8} {s['reason']}")
    lines.append("")
    if r.get("error"):
        lines.append(f"not loaded: {r['error']}")
        return "\n".join(lines)
    if r.get("identical"):
        lines.append("nothing specialized: the candidate is the original program")
    else:
        lines.append(f"equivalent on {r['packets_checked']} packets: "
                     f"{'yes' if r['equivalent'] else 'NO'}")
    if r.get("speedup"):
        s = r["speedup"]
        ns = r["ns_per_packet"]
        lines.append(f"ns/packet: original {ns['original']['median']:.0f}, specialized "
                     f"{ns['specialized']['median']:.0f}")
        lines.append(f"speedup: min {s['min']:.2f}  median {s['median']:.2f}  max {s['max']:.2f}")
    for link in r.get("chain", ()):
        state = ("equivalent" if link.get("equivalent") else "NOT equivalent"
                 if "equivalent" in link else "optimized above")
        speedup = link.get("speedup") or {}
        lines.append(f"tail call {link['array']}[{link['slot']}] → {link['program']}: {state}"
                     + (f", speedup median {speedup['median']:.2f}" if speedup else ""))
    if r.get("pinned"):
        pinned = r["pinned"]
        lines.append(pinned["error"] if "error" in pinned else
                     f"pinned: {pinned['directory']}/progs/{pinned['program']} (id "
                     f"{pinned['id']}) with maps {', '.join(pinned['maps'])}")
    return "\n".join(lines)
