"""The optimizer end to end: every NF specialized, loaded, and equivalent to the original on
every packet of a trace, from the same state (verdicts, output bytes, data-plane tables)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from morpheus.bench.compare import Subject
from morpheus.ir import Program, asm
from morpheus.ir.asm import R0, R2
from morpheus.nf import NAMES, get
from morpheus.offline import optimize_program
from morpheus.optimizer import PlanOptions
from morpheus.passes.pipeline import PassContext
from morpheus.traffic.generate import generate

pytestmark = pytest.mark.kernel


def optimize(name: str, *, profile: str = "high", packets: int = 3000, seed: int = 1,
             config_seed: int = 1, passes: list | None = None) -> dict:
    nf = get(name)
    config = nf.default_config(config_seed)
    trace = generate(nf, profile, packets, seed, config=config)
    subject = Subject("original", nf.object_path, nf.program)
    return optimize_program(subject, trace, nf=nf, bench=False, passes=passes, config=config)


@pytest.mark.parametrize("name", NAMES)
def test_every_nf_is_specialized_and_equivalent(name: str) -> None:
    report = optimize(name)
    assert "error" not in report, report.get("error")
    assert report["equivalent"], report.get("mismatch")
    # The profiling trace, then held-back flows, edge cases, moves and near-miss keys.
    assert report["packets_checked"] > 3000
    inlined = [s for s in report["sites"] if s["specialized"]]
    assert len(inlined) >= 3, report["sites"]
    assert any(s["mode"] in ("hot", "table") for s in inlined)
    for s in report["sites"]:
        assert s["reason"], s


@pytest.mark.parametrize("name", ["router", "switch"])
def test_path_specialization_is_equivalent(name: str) -> None:
    """Off by default (it did not pay here), on when asked: the copies stay equivalent."""
    nf = get(name)
    trace = generate(nf, "high", 2000, 1)
    report = optimize_program(Subject("original", nf.object_path, nf.program), trace, nf=nf,
                              bench=False, options=PlanOptions(path_budget=4_000))
    assert report["equivalent"], report.get("mismatch")


@pytest.mark.parametrize("name", ["router", "switch"])
def test_inlining_alone_is_equivalent(name: str) -> None:
    """Each pass on its own: table inlining without the cleanup passes."""
    report = optimize(name, passes=[], profile="low", seed=4)
    assert report["equivalent"], report.get("mismatch")


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
@given(config_seed=st.integers(1, 10_000), traffic_seed=st.integers(1, 10_000),
       profile=st.sampled_from(["high", "low", "none"]))
def test_random_configurations_and_traffic(name: str, config_seed: int, traffic_seed: int,
                                           profile: str) -> None:
    report = optimize(name, profile=profile, packets=1500, seed=traffic_seed,
                      config_seed=config_seed)
    assert report["equivalent"], (config_seed, traffic_seed, report.get("mismatch"))
    # The trace was made for this configuration, and the maps hold it: the packets reach
    # the lookups keyed on them (under another configuration a router passes them all as
    # "not for me"), so some site is specialized to the keys the traffic brings (or, for
    # the router, its whole trie is inlined: every route the traffic takes).
    assert any(s["mode"] == "hot" or (s["map"] == "rt_routes" and s["mode"] == "table")
               for s in report["sites"]), report["sites"]
    verdicts = report["check_verdicts"]
    assert len(verdicts) > 1 or 2 not in verdicts, verdicts


@dataclass(frozen=True)
class BreakTheProgram:
    """A deliberately broken pass: reads an uninitialized register at the entry."""

    name: ClassVar[str] = "break"

    def run(self, program: Program, ctx: PassContext) -> Program:
        return program.with_insns((asm.ldx(8, R0, R2, 0), *program.insns))


def test_a_program_the_verifier_rejects_is_reported_and_not_used() -> None:
    report = optimize("router", passes=[BreakTheProgram()])
    assert report["equivalent"] is False
    assert report["speedup"] is None
    assert "R2 !read_ok" in report["error"]


def test_the_offline_profile_keeps_every_sample_of_its_trace() -> None:
    from morpheus.offline import PROFILE_RATE, profile_slots

    for packets in (1, 4096, 4097, 10_000, 60_000, 10**6):
        slots = profile_slots(packets)
        assert slots & (slots - 1) == 0 and 256 <= slots <= 4096
        assert slots >= min(4096, -(-packets // PROFILE_RATE))  # room for every sample
        assert slots == 256 or slots // 2 < -(-packets // PROFILE_RATE)  # and no more
