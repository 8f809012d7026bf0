"""Snapshot conflicts with concurrent writes are retried within a cycle, then deferred to the
next cycle, and only a long run of deferred cycles is an error; status counts retries and
deferrals apart from errors. No kernel: the guard and the map copy are fakes."""

from __future__ import annotations

from typing import Any

import pytest

from morpheus.nf import get
from morpheus.runtime import agent as agent_module
from morpheus.runtime.agent import SNAPSHOT_ATTEMPTS, SNAPSHOT_DEFERRALS, Agent


class MovingGuard:
    """A guard that a write moves during each of the next `moves` snapshots."""

    def __init__(self, moves: int) -> None:
        self.moves = moves
        self.version = 0

    def versions(self) -> list[int]:
        return [self.version]

    def snapshot(self, *args: Any) -> dict[str, Any]:
        if self.moves > 0:
            self.moves -= 1
            self.version += 2
        return {}


class NoHeat:
    heat: dict[int, Any] = {}

    def read(self) -> dict[int, Any]:
        return {}


class Reached(Exception):
    pass


def _stop_here(self: Agent, heat: Any) -> None:
    raise Reached("reached")


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> Agent:
    a = Agent(get("router").object_path, iface="nowhere", name="snapshot-test")
    a.guard_slots = {"rt_routes": 0}
    a.facts = None  # type: ignore[assignment]
    a.reader = NoHeat()  # type: ignore[assignment]
    a.options = agent_module.AgentOptions(measure_instrumentation=False)
    monkeypatch.setattr(agent_module, "snapshot_maps",
                        lambda *args: a.guard.snapshot(*args))  # type: ignore[union-attr]
    monkeypatch.setattr(agent_module.time, "sleep", lambda s: None)
    # The cycle stops right after the snapshot: what follows is not under test here.
    monkeypatch.setattr(Agent, "_update_stability", _stop_here)
    return a


def test_a_snapshot_is_retaken_until_the_writes_pause(agent: Agent) -> None:
    agent.guard = MovingGuard(moves=3)  # type: ignore[assignment]
    report = agent.cycle()
    assert "reached" in report.reason  # the snapshot succeeded on the fourth attempt
    assert agent.snapshot_retries == 3 and agent.snapshot_deferrals == 0


def test_a_busy_cycle_is_deferred_and_only_a_long_run_of_them_is_an_error(
        agent: Agent) -> None:
    agent.guard = MovingGuard(moves=10**9)  # type: ignore[assignment]
    for n in range(1, SNAPSHOT_DEFERRALS):
        report = agent.cycle()
        assert report.outcome == "deferred" and "trying again next cycle" in report.reason
        assert agent.snapshot_deferrals == n and not agent.errors
    assert agent.snapshot_retries == (SNAPSHOT_DEFERRALS - 1) * (SNAPSHOT_ATTEMPTS - 1)
    report = agent.cycle()
    assert report.outcome == "failed" and len(agent.errors) == 1
    assert "SnapshotConflict" in agent.errors[0]
    status = agent.status()
    assert status["snapshot"] == {"retries": SNAPSHOT_DEFERRALS * (SNAPSHOT_ATTEMPTS - 1),
                                  "deferred_cycles": SNAPSHOT_DEFERRALS,
                                  "deferred_in_a_row": 0}  # reported: counting restarts
    report = agent.cycle()
    assert report.outcome == "deferred", report  # one error per run of busy cycles
    assert agent.status()["snapshot"]["deferred_in_a_row"] == 1
    # Writes pause: the next snapshot is good and the count of deferrals in a row restarts.
    agent.guard.moves = 0  # type: ignore[attr-defined]
    assert "reached" in agent.cycle().reason
    assert agent.status()["snapshot"]["deferred_in_a_row"] == 0


def test_status_without_a_meter_says_throughput_is_unknown(agent: Agent) -> None:
    agent.guard = MovingGuard(moves=0)  # type: ignore[assignment]
    agent.throughput_error = "cannot open netlink: test"
    status = agent.status()
    assert status["throughput"] == {"pps": None,
                                    "source": "unavailable: cannot open netlink: test"}
    assert status["run_stats"] is False
