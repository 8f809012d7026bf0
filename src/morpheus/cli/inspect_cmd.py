"""`morpheus inspect OBJ [--json] [--load]`: what an object contains."""

from __future__ import annotations

import argparse
import json

from ..loader import read_for_kernel
from .read_args import add_read_arguments, read_options


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="show the programs and maps of a BPF object")
    p.add_argument("object", help="clang-built BPF object file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--load", action="store_true",
                   help="load it with our loader and show each program's kernel tag")
    p.add_argument("--sites", action="store_true",
                   help="analyse each program's map access sites: can they be specialized?")
    add_read_arguments(p)
    p.set_defaults(func=run)


def describe(path: str, *, load: bool = False, sites: bool = False,
             read: dict | None = None) -> dict:
    spec = read_for_kernel(path, **(read or {}))
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
    if sites:
        from ..analysis import analyze

        for entry in programs:
            prog = spec.programs[entry["name"]]
            facts = analyze(prog.program, spec.maps, prog_type=prog.type)
            entry["sites"] = [
                {"instruction": s.index, "function": s.function, "map": s.map, "kind": s.kind,
                 "key": s.key_source, "specialized": s.specializable, "guarded": s.guarded,
                 "reason": s.reason}
                for s in sorted(facts.sites.values(), key=lambda s: s.index)]
            entry["data_plane_writes"] = {
                name: f.data_plane_writes for name, f in sorted(facts.maps.items())
                if f.written_by_data_plane}
    if load:
        from ..loader import load_collection

        with load_collection(spec) as coll:
            for entry in programs:
                entry["tag"] = coll.programs[entry["name"]].tag
    return {"programs": programs, "maps": maps}


def run(args: argparse.Namespace) -> int:
    info = describe(args.object, load=args.load, sites=args.sites, read=read_options(args))
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
    for p in info["programs"]:
        if "sites" not in p:
            continue
        print(f"\nmap access sites of {p['name']}:")
        print(f"  {'insn':>5} {'map':<16} {'kind':<7} {'key':<24} {'spec.':<6} reason")
        for s in p["sites"]:
            spec = "guard" if s["guarded"] else ("yes" if s["specialized"] else "no")
            print(f"  {s['instruction']:>5} {s['map']:<16} {s['kind']:<7} {s['key']:<24} "
                  f"{spec:<6} {s['reason']}")
        for name, writes in p["data_plane_writes"].items():
            print(f"  data plane writes {name}: {'; '.join(writes[:3])}"
                  f"{f' (+{len(writes) - 3} more)' if len(writes) > 3 else ''}")
    return 0
