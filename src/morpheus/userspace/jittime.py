"""`python -m morpheus.userspace.jittime`: JIT time per NF version, compiles interleaved.

For each NF: one optimization cycle (profile, specialize, verify, check in the kernel, as in
`versus`), then the generic and the specialized program each lifted and compiled `--compiles`
times against a user-space plane of the NF's maps, the pipelines named by `--pipeline` taking
turns (default: the one the JIT would choose). A compile here is what a version costs the
agent: lift plus LLVM (parse, link, passes, codegen), in CPU time of the compiling thread
(the machine's other load does not count) and wall time. Native code is never reused
between the compiles (each is closed before the next). Prints JSON: min / median / max.

    python -m morpheus.userspace.jittime --nf firewall --compiles 10 --pipeline lean \\
        --pipeline fast
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
from collections.abc import Iterator, Sequence
from typing import Any

from ..nf import NAMES, get
from ..offline import optimize_program
from ..traffic.generate import PROFILES, generate
from ..world.environment import Subject
from .dataplane import UserDataPlane


@contextlib.contextmanager
def _pipeline(name: str) -> Iterator[None]:
    old = os.environ.get("MORPHEUS_JIT_PIPELINE")
    if name:
        os.environ["MORPHEUS_JIT_PIPELINE"] = name
    else:
        os.environ.pop("MORPHEUS_JIT_PIPELINE", None)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MORPHEUS_JIT_PIPELINE", None)
        else:
            os.environ["MORPHEUS_JIT_PIPELINE"] = old


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": round(min(values), 1), "median": round(statistics.median(values), 1),
            "max": round(max(values), 1)}


def time_compiles(subject: Subject, compiles: int, pipelines: Sequence[str]
                  ) -> dict[str, Any]:
    """Compile the subject's program `compiles` times per pipeline, interleaved."""
    spec = subject.load_spec()
    program = subject.program or subject.program_spec().program
    cpu: dict[str, list[float]] = {p: [] for p in pipelines}
    wall: dict[str, list[float]] = {p: [] for p in pipelines}
    lines = 0
    with UserDataPlane.create(spec, extra_maps=subject.extra_maps) as plane:
        for _ in range(compiles):
            for pipeline in pipelines:
                with _pipeline(pipeline):
                    compiled = plane.compile(program)
                plane.programs.remove(compiled)
                compiled.close()
                assert not compiled.compiled.cached
                cpu[pipeline].append(compiled.jit_cpu_ms)
                wall[pipeline].append(compiled.jit_ms)
                lines = compiled.compiled.ir.count("\n  ")
    return {"insns": len(program.insns), "lifted_lines": lines,
            "cpu_ms": {p or "default": _spread(v) for p, v in cpu.items()},
            "wall_ms": {p or "default": _spread(v) for p, v in wall.items()}}


def jittime_nf(name: str, *, profile: str, packets: int, compiles: int,
               pipelines: Sequence[str], seed: int = 1) -> dict[str, Any]:
    nf = get(name)
    trace = generate(nf, profile, packets, seed)
    out: dict[str, Any] = {"nf": name, "profile": profile, "packets": packets}

    def measure(subjects, trace, *, nf, rounds, prepare,  # type: ignore[no-untyped-def]
                config=None):
        for label, subject in zip(("generic", "specialized"), subjects, strict=True):
            out[label] = time_compiles(subject, compiles, pipelines)
        unmeasured = {"min": 1.0, "median": 1.0, "max": 1.0}
        return {"speedup": unmeasured, "A": {"ns_per_packet": unmeasured},
                "B": {"ns_per_packet": unmeasured}}

    report = optimize_program(Subject("original", nf.object_path, nf.program), trace, nf=nf,
                              rounds=1, measure=measure)
    if report.get("error"):
        out["error"] = report["error"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m morpheus.userspace.jittime")
    p.add_argument("--nf", choices=NAMES, action="append", help="default: all four")
    p.add_argument("--profile", choices=PROFILES, default="high")
    p.add_argument("--packets", type=int, default=10_000)
    p.add_argument("--compiles", type=int, default=10)
    p.add_argument("--pipeline", action="append",
                   help="o2, fast or lean; several take turns (default: the JIT's choice)")
    args = p.parse_args(argv)
    pipelines = args.pipeline or [""]
    print(json.dumps([jittime_nf(n, profile=args.profile, packets=args.packets,
                                 compiles=args.compiles, pipelines=pipelines)
                      for n in args.nf or NAMES], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
