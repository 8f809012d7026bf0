"""`morpheus load OBJ --pin DIR`: load an object and pin its maps and programs."""

from __future__ import annotations

import argparse
import json

from .read_args import add_read_arguments, read_options


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="load an object with our loader and pin it on bpffs")
    p.add_argument("object")
    p.add_argument("--pin", required=True, metavar="DIR", help="directory under /sys/fs/bpf")
    p.add_argument("--json", action="store_true")
    add_read_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..pinned import load_and_pin

    info = load_and_pin(args.object, args.pin, read_options(args))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"pinned {len(info['programs'])} program(s) under {args.pin}/progs and "
              f"{len(info['maps'])} map(s) under {args.pin}/maps")
    return 0
