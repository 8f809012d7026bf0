"""`morpheus traffic --nf NAME --profile P --packets N --seed S -o FILE.pcap [--json]`."""

from __future__ import annotations

import argparse
import json

from ..nf import NAMES, get
from ..traffic.generate import PROFILES, generate
from ..traffic.pcap import write_pcap


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="generate a trace for a network function")
    p.add_argument("--nf", required=True, choices=NAMES)
    p.add_argument("--profile", required=True, choices=PROFILES)
    p.add_argument("--packets", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("-o", "--output", required=True, help="pcap file to write")
    p.add_argument("--json", action="store_true", help="print the trace summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    trace = generate(get(args.nf), args.profile, args.packets, args.seed)
    write_pcap(args.output, trace.frames)
    summary = trace.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.output}: {summary['packets']} packets, {summary['flows']} flows; top 1% "
              f"of flows carry {summary['top1_share']:.1%} of packets, top 10% "
              f"{summary['top10_share']:.1%}")
    return 0
