"""`optimize` on tests/progs/cfg_of_maps.c: inner maps behind an array of maps, at a constant
key and at the CPU id, specialized and checked against the original on the same packets and
map state (verdicts, bytes, counters); a wrong inlined inner value is caught."""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from morpheus.ir import Program
from morpheus.passes.inline import VALUES_MAP
from morpheus.passes.pipeline import PassContext
from morpheus.pinned import load_and_pin, open_pinned_maps, optimize_pinned
from morpheus.traffic.pcap import write_pcap
from tests.optimizer.cfg_env import configure, trace

pytestmark = pytest.mark.kernel


@pytest.fixture
def pinned(test_objects: dict[str, Path], tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    directory = Path("/sys/fs/bpf") / f"mph-cfg-{uuid.uuid4().hex[:8]}"
    load_and_pin(test_objects["cfg_of_maps.v3"], directory)
    maps = open_pinned_maps(directory)
    shape = configure(maps)
    pcap = tmp_path / "cfg.pcap"
    write_pcap(pcap, trace(400))
    try:
        yield directory, pcap
    finally:
        shape.close()
        for m in maps.values():
            m.close()
        shutil.rmtree(directory, ignore_errors=True)
        from morpheus.pinned import _state_path

        shutil.rmtree(_state_path(directory), ignore_errors=True)


def test_inner_maps_behind_an_outer_map_are_specialized(pinned: tuple[Path, Path]) -> None:
    report = optimize_pinned(*pinned, program="xdp_policy", rounds=1)
    assert report["equivalent"], report.get("mismatch") or report.get("error")
    sites = {s["map"]: s for s in report["sites"]}
    assert sites["policy_outer[00000000]"]["mode"] == "table"
    assert sites["policy_outer[00000000]"]["keys"] == 4
    assert sites["tuning_outer[cpu]"]["mode"] == "constant"


@dataclasses.dataclass(frozen=True)
class ForwardNothing:
    """A miscompile: the inlined action XDP_TX (3) becomes XDP_PASS (2)."""

    name: ClassVar[str] = "forward-nothing"

    def run(self, program: Program, ctx: PassContext) -> Program:
        spec = ctx.maps[VALUES_MAP]
        data = spec.data.replace((3).to_bytes(4, "little"), (2).to_bytes(4, "little"))
        ctx.maps[VALUES_MAP] = dataclasses.replace(spec, data=data)
        ctx.known_values[VALUES_MAP] = data
        return program


def test_a_wrong_inlined_inner_value_is_caught(pinned: tuple[Path, Path]) -> None:
    report = optimize_pinned(*pinned, program="xdp_policy", rounds=1,
                             passes=[ForwardNothing()])
    assert not report["equivalent"]
    assert report["mismatch"]["mismatches"] > 0, report["mismatch"]


@dataclasses.dataclass(frozen=True)
class GuardsNeverFire:
    """A miscompile: every version guard compares its register with itself (the verifier
    still sees both edges), so an inlined inner value is served after the map changed."""

    name: ClassVar[str] = "guards-never-fire"

    def run(self, program: Program, ctx: PassContext) -> Program:
        from morpheus.ir import asm
        from morpheus.ir.asm import R0

        return Program(program.name, tuple(
            asm.jne(R0, R0, str(i.reference), label=i.label, note="guard")
            if i.meta.note == "guard" and i.is_conditional_jump else i
            for i in program.insns))


def test_control_plane_writes_reach_the_resolved_inner_maps(pinned: tuple[Path, Path]
                                                            ) -> None:
    """The check writes inlined entries of the inner maps (through a clone of each inner
    map, inside a clone of its outer map), so specialized code whose guards ignore those
    writes is caught; with the guards intact it is equivalent."""
    report = optimize_pinned(*pinned, program="xdp_policy", rounds=1,
                             passes=[GuardsNeverFire()])
    assert not report["equivalent"], report.get("check")
    assert report["mismatch"]["mismatches"] > 0, report["mismatch"]
