"""The agent on the Katran-shaped balancer (maps of maps, a 1M-slot ring, a ktime stats
entry), checking every candidate on packets before it swaps it in (`run --check-trace`)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from morpheus.kernel.netns import NetNamespace
from morpheus.runtime.agent import Agent, AgentOptions
from tests.optimizer.katran_env import configure, trace

pytestmark = pytest.mark.kernel
FALLBACK = 16 + 1  # STATS_FALLBACK in katran_shape.c


def test_agent_checks_and_swaps_the_katran_shape(test_objects: dict[str, Path]) -> None:
    ns = NetNamespace.create("mph-ks")
    try:
        ns.add_veth("ks0", "ks1", up=True)
        agent = Agent(test_objects["katran_shape.v3"], iface="ks0", program="balancer_ingress",
                      netns=ns.name, name=f"ks{os.getpid()}", options=AgentOptions())
        agent.start()
        try:
            shape = configure(agent.maps)
            try:
                frames = tuple(trace(shape, 300))
                agent.options = AgentOptions(check_frames=frames)
                agent.force_respecialize()
                report = agent.cycle()
                assert report.outcome == "swapped", report.reason
                assert report.timings_ms["check"] > 0
                decisions = {d["map"]: d for d in agent.current.decisions}  # type: ignore[union-attr]
                assert decisions["vip_map"]["specialized"]
                # The check ran on the production path: every CPU has its LRU map, so the
                # live fallback counter was never touched (the check runs on copies).
                fallback = agent.maps["stats"].lookup(FALLBACK)
                assert all(struct.unpack("<QQ", v)[0] == 0 for v in fallback)  # type: ignore[union-attr]
            finally:
                shape.close()
        finally:
            agent.stop(detach=True)
    finally:
        ns.delete()
