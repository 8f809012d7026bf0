"""`morpheus inspect OBJ [--json] [--load]`: what an object contains."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from ..loader import read_for_kernel
from .console import show, table
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
    show(inspect_view(args.object, info))
    return 0


def inspect_view(path: str, info: dict[str, Any]) -> RenderableType:
    """The programs, maps and (with --sites) map access sites of an object, as tables."""
    parts: list[RenderableType] = [Text(path, style="bold")]
    loaded = any("tag" in p for p in info["programs"])
    programs = table("program", "section", "type", "insns", *(("tag",) if loaded else ()),
                     title="programs", right=("insns",))
    for p in info["programs"]:
        programs.add_row(p["name"], p["section"], p["type"], str(p["insns"]),
                         *((p["tag"],) if loaded else ()))
    parts += [Text(""), programs]
    maps = table("map", "type", "key", "value", "entries", title="maps",
                 right=("key", "value", "entries"))
    for m in info["maps"]:
        maps.add_row(m["name"], m["type"], str(m["key_size"]), str(m["value_size"]),
                     str(m["max_entries"]))
    parts += [Text(""), maps]
    for p in info["programs"]:
        if "sites" not in p:
            continue
        sites = table("insn", "map", "kind", "key", "spec.", "reason",
                      title=f"map access sites of {p['name']}", right=("insn",))
        for s in p["sites"]:
            spec = "guard" if s["guarded"] else ("yes" if s["specialized"] else "no")
            sites.add_row(str(s["instruction"]), s["map"], s["kind"], s["key"], spec,
                          s["reason"])
        parts += [Text(""), sites]
        for name, writes in p["data_plane_writes"].items():
            more = f" (+{len(writes) - 3} more)" if len(writes) > 3 else ""
            parts.append(Text(f"data plane writes {name}: {'; '.join(writes[:3])}{more}"))
    return Group(*parts)
