"""`morpheus nf list [--json]`: the built-in network functions."""

from __future__ import annotations

import argparse
import json

from ..nf import all_nfs


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="the built-in network functions")
    nsub = p.add_subparsers(dest="nf_command", metavar="SUBCOMMAND", required=True)
    lst = nsub.add_parser("list", help="list them with their built objects")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    entries = [{"name": nf.name, "object": str(nf.object_path), "description": nf.description}
               for nf in all_nfs()]
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        for e in entries:
            print(f"{e['name']:<9} {e['object']}\n          {e['description']}")
    return 0
