"""Checking a candidate version against the unspecialized program before it goes live.

Both programs run the same packets (BPF_PROG_TEST_RUN) from the same state: private copies
of the live maps taken at check time, one set per program, so that neither the live maps nor
the other program's side effects are touched. Compared: the verdict and output bytes of
every packet, then what the packets left in the maps the data plane writes (the keys of
hash tables, per-CPU counters summed over CPUs).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

from ..kernel import LoadedProgram, Map, xdp_ctx
from ..uapi import MapType


def table_state(m: Map) -> object:
    """What the data plane's writes to `m` left behind, comparable between two runs."""
    if m.type.is_per_cpu and m.type.is_array:
        return {k: _sum_percpu(v) for k, v in m.items()}  # type: ignore[arg-type]
    if m.type in (MapType.HASH, MapType.LRU_HASH, MapType.LPM_TRIE):
        return sorted(m.keys())
    return None


def _sum_percpu(values: list[bytes]) -> tuple[int, ...]:
    width = len(values[0]) // 8
    totals = [0] * width
    for v in values:
        for i, x in enumerate(struct.unpack(f"<{width}Q", v[: 8 * width])):
            totals[i] += x
    return tuple(totals)


@dataclass
class CheckResult:
    """The outcome of running both programs on the check packets."""

    packets: int
    mismatches: list[int] = field(default_factory=list)  # packet indexes that differed
    first: tuple[tuple[int, bytes], tuple[int, bytes]] | None = None  # (verdict, bytes) x2
    tables_differing: list[str] = field(default_factory=list)

    @property
    def equivalent(self) -> bool:
        return not self.mismatches and not self.tables_differing

    def describe(self) -> str:
        if self.equivalent:
            return f"equivalent on {self.packets} packets"
        parts = []
        if self.mismatches and self.first is not None:
            (v_base, d_base), (v_cand, d_cand) = self.first
            what = (f"verdict {v_base} vs {v_cand}" if v_base != v_cand
                    else f"output bytes differ ({len(d_base)} vs {len(d_cand)} bytes)")
            parts.append(f"{len(self.mismatches)} of {self.packets} packets differ, first "
                         f"#{self.mismatches[0]}: {what}")
        if self.tables_differing:
            parts.append("map contents differ afterwards: " + ", ".join(self.tables_differing))
        return "; ".join(parts)


def shadow_maps(maps: Mapping[str, Map], stack: ExitStack) -> dict[str, Map]:
    """Private copies of `maps`, closed with `stack`."""
    out = {}
    for name, m in maps.items():
        out[name] = stack.enter_context(m.clone())
    return out


def check_candidate(maps: Mapping[str, Map], frames: Sequence[bytes], ingress_ifindex: int,
                    load: Callable[[str, Mapping[str, Map]], LoadedProgram],
                    written: Sequence[str]) -> CheckResult:
    """Run the base and the candidate program, each loaded by `load(kind, maps)` with kind
    "base" or "candidate", on `frames` from copies of `maps`; compare what they did.

    Call it inside the network namespace of the interface `ingress_ifindex` names."""
    outputs: list[list[tuple[int, bytes]]] = []
    tables: list[dict[str, object]] = []
    with ExitStack() as outer:
        # Live maps change under running traffic: both runs start from one frozen-in-time
        # copy, or counters bumped between two copies would read as a difference.
        snapshot = shadow_maps(maps, outer)
        copies = {"candidate": shadow_maps(snapshot, outer), "base": snapshot}
        for kind in ("base", "candidate"):
            _run(kind, copies[kind], frames, ingress_ifindex, load, written, outputs, tables)
    base, candidate = outputs
    mismatches = [i for i, (a, b) in enumerate(zip(base, candidate, strict=True)) if a != b]
    return CheckResult(
        packets=len(frames), mismatches=mismatches,
        first=(base[mismatches[0]], candidate[mismatches[0]]) if mismatches else None,
        tables_differing=[n for n in tables[0] if tables[0][n] != tables[1].get(n)])


def _run(kind: str, shadow: Mapping[str, Map], frames: Sequence[bytes], ingress_ifindex: int,
         load: Callable[[str, Mapping[str, Map]], LoadedProgram], written: Sequence[str],
         outputs: list[list[tuple[int, bytes]]], tables: list[dict[str, object]]) -> None:
    with load(kind, shadow) as prog:
        out = []
        for frame in frames:
            result = prog.test_run(frame, ctx=xdp_ctx(ingress_ifindex, len(frame)))
            out.append((result.retval, result.data or b""))
        outputs.append(out)
        tables.append({n: table_state(shadow[n]) for n in written if n in shadow})
