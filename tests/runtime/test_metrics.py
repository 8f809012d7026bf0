"""The Prometheus metrics: standard exposition that a Prometheus parser reads back, the right
types, the names the hand-written page had, histograms observed from cycle reports."""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from morpheus.runtime.agent import CycleReport
from morpheus.runtime.metrics import AgentMetrics, MetricsEndpoint

STATUS: dict[str, Any] = {
    "program": "xdp_router", "iface": "port2",
    "version": {"number": 2, "kind": "specialized", "insns": 900, "packets": 10,
                "ns_per_packet": 55.5, "run_stats": True,
                "sites": [{"map": "m", "instruction": 4, "keys": 3, "hit_rate": 0.9,
                           "specialized": True, "mode": "hot"},
                          {"map": "b", "instruction": 9, "keys": 0, "specialized": False,
                           "mode": "none"}]},
    "cycles": [{"outcome": "swapped", "ms": {"total": 80}, "reason": ""},
               {"outcome": "unchanged", "ms": {"total": 20}, "reason": ""}],
    "errors": [], "run_stats": True,
    "sampling": {"sites": [{"map": "m", "instruction": 4, "lookups": 100, "rate": 16},
                           {"map": "b", "instruction": 9, "lookups": 50, "rate": 1024}]},
    "throughput": {"pps": 250000.0, "source": "netlink IFLA_STATS64 rx_packets of port2"},
    "traffic": {"bps": 1.6e7, "rx_packets": 123456, "rx_bytes": 7901184},
    "snapshot": {"retries": 3, "deferred_cycles": 1},
    "guards": {"m": 8, "b": 2}, "paused_maps": {"b": 5},
    "swap": {"mode": "link", "last_us": 23000.0},
    "instrumentation": {"state": "measured", "ns_per_packet": 4.2},
}


class FakeAgent:
    def __init__(self) -> None:
        self.cycle_observers: list[Any] = []

    def status(self) -> dict[str, Any]:
        return STATUS


class FakeControl:
    def __init__(self) -> None:
        self.writes = 0
        self.write_ms: list[float] = []

    def stats(self) -> dict[str, Any]:
        return {"writes": self.writes, "median_ms": 0.4}


def _families(metrics: AgentMetrics) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}


def _value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    for family in families.values():
        for s in family.samples:
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {sample_name} {labels}")


def test_exposition_parses_with_types_and_kept_names() -> None:
    agent, control = FakeAgent(), FakeControl()
    metrics = AgentMetrics(agent, control)
    families = _families(metrics)
    kinds = {name: f.type for name, f in families.items()}
    for name in ("morpheus_version", "morpheus_version_packets", "morpheus_ns_per_packet",
                 "morpheus_cycle_ms", "morpheus_recent_cycles", "morpheus_site_inlined_keys",
                 "morpheus_site_hit_rate", "morpheus_site_lookups", "morpheus_site_sample_rate",
                 "morpheus_instrumentation_ns_per_packet", "morpheus_control_plane_write_ms",
                 "morpheus_errors", "morpheus_throughput_packets_per_second"):
        assert kinds.get(name) == "gauge", (name, kinds.get(name))
    for name in ("morpheus_control_plane_writes", "morpheus_guard_moves",
                 "morpheus_snapshot_retries", "morpheus_interface_receive_packets",
                 "morpheus_cycles", "morpheus_swaps"):
        assert kinds.get(name) == "counter", (name, kinds.get(name))
    for name in ("morpheus_cycle_seconds", "morpheus_cycle_phase_seconds",
                 "morpheus_verifier_seconds", "morpheus_swap_seconds",
                 "morpheus_control_plane_write_seconds"):
        assert kinds.get(name) == "histogram", (name, kinds.get(name))
    assert "process_cpu_seconds" in kinds and "python_info" in kinds  # process metrics
    assert _value(families, "morpheus_version") == 2
    assert _value(families, "morpheus_site_hit_rate", map="m", instruction="4") == 0.9
    assert _value(families, "morpheus_site_sample_rate", map="b", instruction="9") == 1024
    assert _value(families, "morpheus_throughput_packets_per_second", iface="port2") == 250000
    assert _value(families, "morpheus_guard_moves_total", map="m") == 8
    assert _value(families, "morpheus_snapshot_retries_total") == 3
    assert _value(families, "morpheus_recent_cycles", outcome="swapped") == 1
    assert _value(families, "morpheus_cycle_ms") == 20  # the last cycle
    assert _value(families, "morpheus_inlined_sites") == 1


def test_cycles_fill_histograms_and_counters() -> None:
    agent, control = FakeAgent(), FakeControl()
    metrics = AgentMetrics(agent, control)
    assert agent.cycle_observers == [metrics.observe_cycle]
    swapped = CycleReport(0.0, "swapped", "version 2", {
        "profile": 1.0, "snapshot": 2.0, "specialize": 30.0, "verify": 170.0, "swap": 24.0,
        "swap_call": 23.0, "total": 230.0})
    failed = CycleReport(0.0, "failed", "VerifierError: too complex", {"total": 50.0})
    for report in (swapped, failed, failed):
        metrics.observe_cycle(report)
    control.writes, control.write_ms = 3, [0.2, 0.3, 4.0]
    families = _families(metrics)
    assert _value(families, "morpheus_cycles_total", outcome="failed") == 2
    assert _value(families, "morpheus_swaps_total") == 1
    assert _value(families, "morpheus_cycle_errors_total", kind="VerifierError") == 2
    assert _value(families, "morpheus_verifier_seconds_sum") == 0.17
    assert _value(families, "morpheus_swap_seconds_count") == 1
    assert _value(families, "morpheus_swap_seconds_bucket", le="0.025") == 1
    assert _value(families, "morpheus_swap_seconds_bucket", le="0.01") == 0
    assert _value(families, "morpheus_cycle_phase_seconds_count", phase="specialize") == 1
    assert _value(families, "morpheus_cycle_seconds_count", outcome="failed") == 2
    assert _value(families, "morpheus_control_plane_write_seconds_count") == 3
    assert _value(families, "morpheus_control_plane_write_seconds_bucket", le="0.001") == 2
    # A second scrape observes only the writes made since the first.
    control.writes, control.write_ms = 4, [0.2, 0.3, 4.0, 0.1]
    assert _value(_families(metrics), "morpheus_control_plane_write_seconds_count") == 4


def test_without_run_stats_nothing_pretends_to_be_measured() -> None:
    agent = FakeAgent()
    plain = {**STATUS, "run_stats": False,
             "version": {k: v for k, v in STATUS["version"].items()
                         if k not in ("packets", "ns_per_packet")}}
    agent.status = lambda: plain  # type: ignore[method-assign]
    families = _families(AgentMetrics(agent))
    assert "morpheus_ns_per_packet" not in families
    assert "morpheus_version_packets" not in families
    assert _value(families, "morpheus_run_stats_enabled") == 0


def test_the_endpoint_serves_the_registry_on_localhost() -> None:
    metrics = AgentMetrics(FakeAgent(), FakeControl())
    endpoint = MetricsEndpoint(metrics, 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics",
                                    timeout=10) as reply:
            assert reply.headers["Content-Type"].startswith("text/plain")
            body = reply.read().decode()
        assert "morpheus_version 2.0" in body
    finally:
        endpoint.close()
