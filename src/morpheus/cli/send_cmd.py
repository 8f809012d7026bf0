"""`morpheus send PCAP --iface IF [--netns NS] [--rate PPS] [--loop N] [--json]`: transmit a
pcap into an interface with the live-frames generator, reporting what was sent and the rate
measured."""

from __future__ import annotations

import argparse
import json


def _positive_rate(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("the rate must be a positive number of packets/s")
    return value


def _loops(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("0 (until interrupted) or a positive count")
    return value


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="transmit a pcap into an interface (XDP live frames)")
    p.add_argument("pcap", metavar="PCAP", help="Ethernet pcap file (pcapng is not read)")
    p.add_argument("--iface", required=True, metavar="IF", help="device to transmit on")
    p.add_argument("--netns", metavar="NS",
                   help="named network namespace (/run/netns/NS) the device is in")
    p.add_argument("--rate", type=_positive_rate, metavar="PPS",
                   help="pace to at most PPS packets per second (default: as fast as possible)")
    p.add_argument("--loop", type=_loops, default=1, metavar="N",
                   help="send the trace N times (0: until interrupted; default 1)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.send import Sender, SendRequest
    from ..kernel.netns import NetNamespace
    from ..traffic.pcap import read_pcap

    frames = read_pcap(args.pcap)
    namespace = NetNamespace.named(args.netns) if args.netns else NetNamespace.current()
    request = SendRequest(frames, args.iface, namespace, rate_pps=args.rate, loops=args.loop)
    result = Sender(request).send()
    if args.json:
        print(json.dumps({"pcap": args.pcap, **result.to_json()}))
        return 130 if result.interrupted else 0
    where = f"{args.iface} (netns {args.netns})" if args.netns else args.iface
    refused = ("" if result.refused is None
               else f", {result.refused} refused by the device")
    target = f" (asked {args.rate:,.0f})" if args.rate else ""
    print(f"sent {result.sent:,} packets ({result.bytes:,} bytes) into {where}: "
          f"{result.loops} pass(es) over {result.packets_in_trace:,} packets{refused}")
    print(f"{result.seconds:.3f} s, {result.pps:,.0f} packets/s{target}, "
          f"{result.bytes * 8 / result.seconds / 1e6 if result.seconds else 0:,.1f} Mbit/s"
          + (" — interrupted" if result.interrupted else ""))
    return 130 if result.interrupted else 0
