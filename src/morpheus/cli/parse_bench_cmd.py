"""`morpheus parse-bench OBJ`: Python time to parse, relocate and link an object (no kernel).

CO-RE relocations and externs are resolved against the running kernel's BTF (or `--btf
FILE`), read and indexed once per process before the timed rounds, as every command does."""

from __future__ import annotations

import argparse
import json
import statistics
import time

from ..obj import read_object
from ..obj.reader import ReadOptions
from .read_args import add_read_arguments


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="time parsing and linking an object in Python")
    p.add_argument("object", help="BPF object file")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--optimize", action="store_true",
                   help="also time analysis and specialization of each program (64 hot keys "
                        "at every specializable site, synthetic snapshot)")
    p.add_argument("--json", action="store_true")
    add_read_arguments(p)
    p.set_defaults(func=run)


def optimize_timing(spec: object, rounds: int) -> list[dict[str, object]]:
    """Median Python time of analysis and of planning + inlining + cleanup, per program."""
    import random
    from collections import Counter

    from ..analysis.sites import site_spec
    from ..optimizer import MapSnapshot, SiteHeat, SpecializeRequest, Target, specialize

    out = []
    rng = random.Random(1)
    for prog in spec.programs.values():  # type: ignore[attr-defined]
        analysis, special = [], []
        for _ in range(max(3, rounds // 5)):
            t0 = time.perf_counter()
            target = Target.analyze(spec, prog)  # type: ignore[arg-type]
            facts = target.facts
            analysis.append((time.perf_counter() - t0) * 1000)
            heat, snaps = {}, {}
            for site in facts.lookups():
                if not site.specializable:
                    continue
                mspec = site_spec(site, spec.maps)  # type: ignore[attr-defined]
                assert mspec is not None
                keys = [rng.randbytes(mspec.key_size) for _ in range(64)]
                heat[site.index] = SiteHeat(Counter({k: 64 - i for i, k in enumerate(keys)}))
                snap = snaps.setdefault(site.map, MapSnapshot(mspec))
                for k in keys:
                    snap.entries[k] = bytes(mspec.value_size)
            t1 = time.perf_counter()
            result = specialize(SpecializeRequest(target, snaps, heat))
            special.append((time.perf_counter() - t1) * 1000)
        out.append({"program": prog.name, "insns": prog.insn_count,
                    "sites": sum(1 for d in result.decisions if d.plan is not None),
                    "analysis_ms": round(statistics.median(analysis), 1),
                    "specialize_ms": round(statistics.median(special), 1),
                    "passes_ms": result.timings_ms})
    return out


def _core_relocations(data: bytes) -> int:
    from ..obj.reader import _Reader

    reader = _Reader(data, "bench", None)
    reader._read_btf()
    ext = reader.btf_ext
    return sum(len(v) for v in ext.core_relos.values()) if ext is not None else 0


def relocation_ms(data: bytes, target: object, rounds: int) -> list[float]:
    """Time of the CO-RE step alone (resolve every record, patch every instruction), per
    round, on sections and BTF parsed once."""
    from ..obj import core
    from ..obj.reader import _Reader

    reader = _Reader(data, "bench", None)
    reader._read_btf()
    assert reader.btf is not None and reader.btf_ext is not None
    sections = {s.name: bytearray(reader.section_data(s)) for s in reader.sections
                if s.executable}
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        relocator = core.Relocator(reader.btf, target)  # type: ignore[arg-type]
        for name, relos in reader.btf_ext.core_relos.items():
            raw = bytearray(sections[name])
            for relo in relos:
                core.patch(raw, relo.insn_off, relocator.resolve(relo))
        out.append((time.perf_counter() - start) * 1000)
    return out


def run(args: argparse.Namespace) -> int:
    from ..kernel.btf import running_target

    with open(args.object, "rb") as f:
        data = f.read()
    relocations = _core_relocations(data)
    target_ms = None
    target = None
    if relocations or args.btf:
        start = time.perf_counter()
        target = running_target(args.btf)
        target_ms = round((time.perf_counter() - start) * 1000, 1)
    options = ReadOptions(target=target or running_target, program_type=args.program_type,
                          legacy_maps=args.legacy_maps)
    index_start = time.perf_counter()
    spec = read_object(data, name="bench", options=options)  # warm-up (imports, caches)
    first_ms = round((time.perf_counter() - index_start) * 1000, 1)
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        read_object(data, name="bench", options=options)
        times.append((time.perf_counter() - start) * 1000)
    reloc = relocation_ms(data, target, args.rounds) if relocations and target else []
    result = {
        "object": args.object,
        "programs": len(spec.programs),
        "insns": sum(p.insn_count for p in spec.programs.values()),
        "maps": len(spec.maps),
        "core_relocations": relocations,
        "target_btf": (args.btf or "vmlinux") if target is not None else None,
        "target_btf_read_ms": target_ms,
        "first_read_ms": first_ms,
        "ms": {"min": round(min(times), 2), "median": round(statistics.median(times), 2),
               "max": round(max(times), 2)},
    }
    if reloc:
        result["relocation_ms"] = {"min": round(min(reloc), 2),
                                   "median": round(statistics.median(reloc), 2),
                                   "max": round(max(reloc), 2)}
    if args.optimize:
        result["optimize"] = optimize_timing(spec, args.rounds)
    if args.json:
        print(json.dumps(result))
    else:
        ms = result["ms"]
        print(f"{args.object}: {result['programs']} programs, {result['insns']} instructions, "
              f"{result['maps']} maps")
        if result["target_btf"] is not None:
            print(f"target BTF {result['target_btf']}: read and parsed once in "
                  f"{target_ms} ms; first read (builds the candidate index) {first_ms} ms")
        what = (f"parse + {relocations} CO-RE relocations + link" if relocations
                else "parse + link")
        print(f"{what}: min {ms['min']} ms, median {ms['median']} ms, max {ms['max']} ms "
              f"over {args.rounds} rounds")
        if reloc:
            rm = result["relocation_ms"]
            print(f"of which CO-RE relocation alone: min {rm['min']} ms, median "
                  f"{rm['median']} ms, max {rm['max']} ms")
        for entry in result.get("optimize", []):
            print(f"{entry['program']}: {entry['insns']} instructions, analysis "
                  f"{entry['analysis_ms']} ms, specialization of {entry['sites']} sites "
                  f"{entry['specialize_ms']} ms {entry['passes_ms']}")
    return 0
