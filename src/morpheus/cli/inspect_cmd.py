"""`morpheus inspect OBJ [--json] [--load]`: what an object contains."""

from __future__ import annotations

import argparse
import json

from ..obj import read_object


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="show the programs and maps of a BPF object")
    p.add_argument("object", help="clang-built BPF object file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--load", action="store_true",
                   help="load it with our loader and show each program's kernel tag")
    p.set_defaults(func=run)


def describe(path: str, *, load: bool = False) -> dict:
    spec = read_object(path)
    programs = [
        {"name": p.name, "section": p.section, "type": p.type.name.lower(),
         "insns": p.insn_count}
        for p in spec.programs.values()
    ]
    maps = [
        {"name": m.name, "type": m.type.name.lower(), "key_size": m.key_size,
         "value_size": m.value_size, "max_entries": m.max_entries}
        for m in spec.maps.values()
    ]
    if load:
        from ..loader import load_collection

        with load_collection(spec) as coll:
            for entry in programs:
                entry["tag"] = coll.programs[entry["name"]].tag
    return {"programs": programs, "maps": maps}


def run(args: argparse.Namespace) -> int:
    info = describe(args.object, load=args.load)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.object}")
    print("programs:")
    for p in info["programs"]:
        tag = f"  tag {p['tag']}" if "tag" in p else ""
        print(f"  {p['name']:<24} {p['section']:<16} {p['type']:<10} {p['insns']:>6} insns{tag}")
    print("maps:")
    for m in info["maps"]:
        print(f"  {m['name']:<24} {m['type']:<14} key {m['key_size']:>3}  value "
              f"{m['value_size']:>5}  entries {m['max_entries']}")
    return 0
