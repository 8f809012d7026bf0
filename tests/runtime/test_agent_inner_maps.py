"""The agent on tests/progs/cfg_of_maps.c: inner maps read through an array of maps at a
constant key and at the CPU id are inlined, and replacing the outer slot or writing the
inner map (from outside the agent, or through it) is never served stale."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from morpheus.kernel.netns import NetNamespace
from morpheus.runtime.agent import Agent, AgentOptions
from tests.optimizer.cfg_env import (
    POLICY,
    XDP_DROP,
    XDP_PASS,
    XDP_TX,
    CfgShape,
    configure,
    frame,
    policy_map,
    port_key,
    trace,
)

pytestmark = pytest.mark.kernel


@pytest.fixture
def running(test_objects: dict[str, Path]) -> Iterator[tuple[Agent, CfgShape]]:
    ns = NetNamespace.create(f"mph-cfg{os.getpid() % 10000}")
    try:
        ns.add_veth("cf0", "cf1", up=True)
        agent = Agent(test_objects["cfg_of_maps.v3"], iface="cf0", netns=ns.name,
                      name=f"cfg{os.getpid()}",
                      options=AgentOptions(check_frames=tuple(trace(200))))
        agent.start()
        try:
            shape = configure(agent.maps)
            try:
                yield agent, shape
            finally:
                shape.close()
        finally:
            agent.stop(detach=True)
    finally:
        ns.delete()


def _verdicts(agent: Agent, ports: list[int], ttl: int = 64) -> dict[int, int]:
    assert agent.current is not None
    return {p: agent.current.program.test_run(frame(p, ttl)).retval for p in ports}


def _specialize(agent: Agent) -> dict[str, dict]:
    agent.force_respecialize()
    report = agent.cycle()
    assert report.outcome == "swapped", report.reason
    assert agent.current is not None
    return {d["map"]: d for d in agent.current.decisions}


def test_inner_maps_are_inlined_and_never_stale(running: tuple[Agent, CfgShape]) -> None:
    agent, shape = running
    decisions = _specialize(agent)
    assert decisions["policy_outer[00000000]"]["mode"] == "table", decisions
    assert decisions["tuning_outer[cpu]"]["mode"] == "constant", decisions
    ports = [*POLICY, 9999]
    expected = {**POLICY, 9999: XDP_PASS}
    assert _verdicts(agent, ports) == expected
    assert set(_verdicts(agent, ports, ttl=3).values()) == {XDP_DROP}  # under the floor

    # Each write below lands on a freshly specialized version (whose guard has not moved
    # yet) and must be seen by the next packet. From outside the agent (this process is
    # not exempt from the watcher): the inner map, then the TTL floor shared by all CPUs.
    shape.policy.update(port_key(53), struct.pack("<I", XDP_TX))
    assert _verdicts(agent, [53]) == {53: XDP_TX}
    assert _specialize(agent)["policy_outer[00000000]"]["mode"] == "table"
    shape.tunings[0].update(0, struct.pack("<I", 2))
    assert _verdicts(agent, [80], ttl=3) == {80: XDP_PASS}

    # The outer slot replaced from outside: the old inner map's entries are not served.
    replacement = policy_map({80: XDP_DROP}, "policy2")
    try:
        assert _specialize(agent)["tuning_outer[cpu]"]["mode"] == "constant"
        agent.maps["policy_outer"].update(0, struct.pack("<I", replacement.fd.number))
        assert _verdicts(agent, ports) == {53: XDP_PASS, 80: XDP_DROP, 443: XDP_PASS,
                                           8080: XDP_PASS, 9999: XDP_PASS}
        # Re-specialized on the new inner map (checked on packets first), then the slot
        # replaced through the agent's API.
        decisions = _specialize(agent)
        assert decisions["policy_outer[00000000]"]["keys"] == 1, decisions
        assert _verdicts(agent, [80, 443]) == {80: XDP_DROP, 443: XDP_PASS}
        agent.update("policy_outer", 0, struct.pack("<I", shape.policy.fd.number))
        assert _verdicts(agent, [80, 53, 443]) == {80: XDP_PASS, 53: XDP_TX, 443: XDP_TX}
        # The replaced inner map is no longer read: writing it changes nothing.
        _specialize(agent)
        replacement.update(port_key(443), struct.pack("<I", XDP_DROP))
        assert _verdicts(agent, [443]) == {443: XDP_TX}
    finally:
        replacement.close()


def test_per_cpu_inner_maps_that_differ_are_not_inlined(
        running: tuple[Agent, CfgShape]) -> None:
    agent, shape = running
    shape.close()
    from morpheus.kernel.maps import possible_cpus

    if possible_cpus() < 2:
        pytest.skip("one possible CPU: every CPU's inner map is the same one")
    other = configure(agent.maps, per_cpu_floors=[8, 9])
    try:
        decisions = _specialize(agent)
        assert decisions["tuning_outer[cpu]"]["mode"] == "none"
        assert "per-CPU dispatch" in decisions["tuning_outer[cpu]"]["reason"]
        assert decisions["policy_outer[00000000]"]["mode"] == "table"
    finally:
        other.close()


def test_a_cycle_whose_plan_is_unchanged_specializes_nothing(
        running: tuple[Agent, CfgShape]) -> None:
    agent, shape = running
    _specialize(agent)
    version = agent.current
    # A write through the agent to a map no version inlines: the agent re-plans, finds
    # the running version's plan, and neither specializes nor checks again.
    agent.update("counters", 0, struct.pack("<Q", 7))
    report = agent.cycle()
    assert report.outcome == "unchanged" and "plan unchanged" in report.reason, report.reason
    assert "specialize" not in report.timings_ms and "check" not in report.timings_ms
    assert agent.current is version and not agent._dirty
    # A write to an inlined inner map changes the plan (its values and guard version).
    shape.policy.update(port_key(80), struct.pack("<I", XDP_DROP))
    assert _verdicts(agent, [80]) == {80: XDP_DROP}
    agent._dirty = True  # as the next cycle with traffic would find it (guard moved)
    report = agent.cycle()
    assert report.outcome == "swapped", report.reason
