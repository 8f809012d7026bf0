"""`morpheus check A.o B.o (--nf NF | --maps DIR) --trace F.pcap [--program NAME] [--json]`.

Runs two builds of a program from the same map state on a recorded trace and compares
everything they do. Exit status: 0 equivalent, 1 not equivalent, 2 the check could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..nf import NAMES


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="check two builds of a program for equivalence on a trace")
    p.add_argument("a", metavar="A.o", help="the reference object")
    p.add_argument("b", metavar="B.o", help="the object to check against it")
    state = p.add_mutually_exclusive_group(required=True)
    state.add_argument("--nf", choices=NAMES, help="start from this NF's default configuration")
    state.add_argument("--maps", metavar="DIR",
                       help="start from the maps pinned under DIR by `morpheus load --pin`, "
                            "or by another owner one pin per map name (bpfman, `bpftool prog "
                            "loadall A.o PROGS pinmaps DIR`: read with A.o's definitions)")
    p.add_argument("--trace", required=True, metavar="F.pcap")
    p.add_argument("--program", help="the program to compare (objects with several)")
    p.add_argument("--ingress", type=int, default=None,
                   help="ifindex the packets arrive on (default: the NF's main port with "
                        "--nf, none with --maps)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        result = _check(args)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"morpheus check: error: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.describe())
        for note in result.notes:
            print(f"note: {note}")
    return 0 if result.equivalent else 1


def _check(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from ..traffic.pcap import read_pcap
    from ..world.objects import ObjectCheck, check_objects

    for path in (args.a, args.b):
        if not Path(path).is_file():
            raise ValueError(f"{path}: no such object file")
    frames = read_pcap(args.trace)
    if not frames:
        raise ValueError(f"{args.trace}: the trace holds no packets")
    if args.nf:
        from ..nf import get
        from ..nf.env import NFEnv
        from ..traffic.generate import default_ingress

        nf = get(args.nf)
        ingress = args.ingress if args.ingress is not None else default_ingress(nf)
        request = ObjectCheck(Path(args.a), Path(args.b), [(f, ingress) for f in frames],
                              args.program)
        with NFEnv.start(nf, object_path=args.a) as env, env.entered():
            return check_objects(request, env.collection.maps, snapshot=False,
                                 fallback_program=nf.program)
    from ..pinned import PinError, foreign_info, open_pinned_maps, pinned_info

    try:
        info = pinned_info(args.maps)
    except PinError:
        if (Path(args.maps) / "maps").is_dir():
            raise
        info = foreign_info(args.maps, args.a)  # another owner's pins, for the reference
    pinned_programs = list(info["programs"])
    fallback = pinned_programs[0] if len(pinned_programs) == 1 else None
    ingress = args.ingress or 0
    request = ObjectCheck(Path(args.a), Path(args.b), [(f, ingress) for f in frames],
                          args.program)
    maps = open_pinned_maps(args.maps, info)
    try:
        return check_objects(request, maps, snapshot=True, fallback_program=fallback)
    finally:
        for m in maps.values():
            m.close()
