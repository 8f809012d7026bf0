"""`python -m morpheus.userspace.versus`: the user-space JIT against the kernel, per NF.

For each NF: one optimization cycle (profile, specialize, verify, check equivalence in the
kernel), then the generic and the specialized program each measured in the kernel (in-kernel
replay) and in user space (native replay), interleaved, from the state the cycle's check
starts from. Prints JSON (and a Markdown table with --markdown).

    python -m morpheus.userspace.versus --profile high --packets 10000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..nf import NAMES, get
from ..offline import optimize_program
from ..traffic.generate import PROFILES, generate
from ..world.environment import Subject
from .bench import compare_backends


def versus_nf(name: str, profile: str, packets: int, rounds: int, seed: int = 1
              ) -> dict[str, Any]:
    nf = get(name)
    trace = generate(nf, profile, packets, seed)
    captured: dict[str, Any] = {}

    def measure(subjects, trace, *, nf, rounds, prepare,  # type: ignore[no-untyped-def]
                config=None):
        generic, special = subjects
        captured["generic"] = compare_backends(generic, trace, nf=nf, rounds=rounds,
                                               prepare=prepare, config=config)
        captured["specialized"] = compare_backends(special, trace, nf=nf, rounds=rounds,
                                                   prepare=prepare, config=config)
        k = captured["generic"]["kernel_ns_per_packet"]["median"]
        s = captured["specialized"]["kernel_ns_per_packet"]["median"]
        return {"speedup": {"min": k / s, "median": k / s, "max": k / s},
                "A": {"ns_per_packet": captured["generic"]["kernel_ns_per_packet"]},
                "B": {"ns_per_packet": captured["specialized"]["kernel_ns_per_packet"]}}

    report = optimize_program(Subject("original", nf.object_path, nf.program), trace, nf=nf,
                              rounds=rounds, measure=measure)
    out: dict[str, Any] = {"nf": name, "profile": profile, "packets": packets,
                           "equivalent": report.get("equivalent"),
                           "insns": report.get("insns"), **captured}
    if "generic" in captured:
        out["userspace_specialized_over_kernel_specialized"] = \
            captured["specialized"]["kernel_over_user"]
        out["userspace_generic_over_kernel_generic"] = captured["generic"]["kernel_over_user"]
    if report.get("error"):
        out["error"] = report["error"]
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| NF | version | kernel ns/pkt (min/med/max) | user ns/pkt (min/med/max) | "
        "kernel/user (min/med/max) | JIT ms (wall / CPU) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for version in ("generic", "specialized"):
            c = r.get(version)
            if c is None:
                continue
            k, u, q = c["kernel_ns_per_packet"], c["user_ns_per_packet"], c["kernel_over_user"]
            lines.append(
                f"| {r['nf']} | {version} | {k['min']:.0f} / {k['median']:.0f} / "
                f"{k['max']:.0f} | {u['min']:.0f} / {u['median']:.0f} / {u['max']:.0f} | "
                f"{q['min']:.2f} / {q['median']:.2f} / {q['max']:.2f} | "
                f"{c['jit_ms']:.0f} / {c['jit_cpu_ms']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m morpheus.userspace.versus")
    p.add_argument("--nf", choices=NAMES, action="append", help="default: all four")
    p.add_argument("--profile", choices=PROFILES, default="high")
    p.add_argument("--packets", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--afxdp", action="store_true",
                   help="instead: end-to-end Mpps over the NF's veth pair, AF_XDP into user "
                        "space vs native XDP in the kernel (generic programs)")
    args = p.parse_args(argv)
    if args.afxdp:
        from .throughput import afxdp_vs_kernel

        print(json.dumps([afxdp_vs_kernel(n, profile=args.profile, rounds=args.rounds)
                          for n in args.nf or NAMES], indent=2))
        return 0
    results = [versus_nf(n, args.profile, args.packets, args.rounds) for n in args.nf or NAMES]
    print(json.dumps(results, indent=2))
    if args.markdown:
        print(markdown(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
