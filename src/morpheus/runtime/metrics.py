"""The agent's Prometheus metrics, through prometheus-client.

Two kinds of metric:
- events, observed when they happen: cycle and phase durations, verifier and swap times
  (histograms), cycles by outcome, swaps, errors (counters). The agent calls
  `observe_cycle` with every finished cycle.
- state, read from the agent at scrape time (a custom collector): the running version,
  throughput from the interface's counters, per-site hit and sampling rates, guard versions
  (every write moves its map's guard by two, so they are counters of guard movements),
  snapshot retries, the control plane's writes.

Names kept from the hand-written page this replaces: morpheus_version,
morpheus_version_packets, morpheus_ns_per_packet, morpheus_cycle_ms, morpheus_recent_cycles,
morpheus_site_inlined_keys, morpheus_site_hit_rate, morpheus_site_lookups,
morpheus_site_sample_rate, morpheus_instrumentation_ns_per_packet,
morpheus_control_plane_writes_total, morpheus_control_plane_write_ms, morpheus_errors. New
metrics use base units (seconds, bytes) as Prometheus asks; the two kept `_ms` gauges
stay in milliseconds for the dashboards that read them. Process metrics (CPU, memory, open
fds) come from prometheus-client's process and platform collectors.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# `_created` series double every counter and histogram for a timestamp nobody graphs.
disable_created_metrics()

_CYCLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SWAP_BUCKETS = (1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.5)
_WRITE_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
# Phases a cycle reports (CycleReport.timings_ms) that are durations of their own; "total"
# is the cycle, "swap_call" the link or prog-array update alone.
_NOT_PHASES = ("total", "swap_call")


class AgentMetrics:
    """The metrics of one agent, in a registry of their own (several agents may share a
    process, as tests do)."""

    def __init__(self, agent: Any, control: Any = None, *,
                 registry: CollectorRegistry | None = None) -> None:
        self.agent = agent
        self.control = control
        self.registry = registry or CollectorRegistry()
        self._writes_seen = 0
        self._lock = threading.Lock()
        r = self.registry
        # Collected first, so that a scrape sees the control-plane writes made before it.
        r.register(_SyncCollector(self))
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.cycle_seconds = Histogram(
            "morpheus_cycle_seconds", "Duration of optimization cycles", ["outcome"],
            buckets=_CYCLE_BUCKETS, registry=r)
        self.phase_seconds = Histogram(
            "morpheus_cycle_phase_seconds", "Duration of each phase of the cycles "
            "(profile, snapshot, specialize, verify, check, swap, ...)", ["phase"],
            buckets=_CYCLE_BUCKETS, registry=r)
        self.verifier_seconds = Histogram(
            "morpheus_verifier_seconds", "Loading and verifying a candidate version "
            "(including retries with relieved plans)", buckets=_CYCLE_BUCKETS, registry=r)
        self.swap_seconds = Histogram(
            "morpheus_swap_seconds", "The atomic swap alone (BPF link update or prog-array "
            "slot update)", buckets=_SWAP_BUCKETS, registry=r)
        self.cycles = Counter("morpheus_cycles", "Optimization cycles by outcome", ["outcome"],
                              registry=r)
        self.swaps = Counter("morpheus_swaps", "Versions swapped in", registry=r)
        self.cycle_errors = Counter("morpheus_cycle_errors", "Cycles that failed, by cause",
                                    ["kind"], registry=r)
        self.write_seconds = Histogram(
            "morpheus_control_plane_write_seconds", "Latency of a write through the agent's "
            "control socket", buckets=_WRITE_BUCKETS, registry=r)
        r.register(_StateCollector(self))
        observers = getattr(agent, "cycle_observers", None)
        if observers is not None:
            observers.append(self.observe_cycle)

    def observe_cycle(self, report: Any) -> None:
        """Record one finished cycle (a CycleReport)."""
        ms = report.timings_ms
        self.cycles.labels(report.outcome).inc()
        if "total" in ms:
            self.cycle_seconds.labels(report.outcome).observe(ms["total"] / 1000)
        for phase, value in ms.items():
            if phase not in _NOT_PHASES:
                self.phase_seconds.labels(phase).observe(value / 1000)
        if "verify" in ms:
            self.verifier_seconds.observe(ms["verify"] / 1000)
        if report.outcome == "swapped":
            self.swaps.inc()
            if ms.get("swap_call") is not None:
                self.swap_seconds.observe(ms["swap_call"] / 1000)
        if report.outcome == "failed":
            self.cycle_errors.labels(report.reason.split(":", 1)[0] or "unknown").inc()

    def sync_control_plane(self) -> None:
        """Observe the control socket's writes made since the last call. The socket keeps
        the latency of its last 1,000 writes; a scrape interval with more writes than that
        observes the newest 1,000 (the count in morpheus_control_plane_writes_total stays
        exact)."""
        if self.control is None:
            return
        with self._lock:
            total = int(getattr(self.control, "writes", 0))
            latencies = list(getattr(self.control, "write_ms", []))
            new = min(total - self._writes_seen, len(latencies))
            self._writes_seen = total
            for ms in latencies[len(latencies) - new:] if new > 0 else []:
                self.write_seconds.observe(ms / 1000)

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format (what the endpoint serves)."""
        return generate_latest(self.registry)


class _SyncCollector(Collector):
    """Brings the write-latency histogram up to date at the start of every scrape."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        self.metrics.sync_control_plane()
        return iter(())


class _StateCollector(Collector):
    """Gauges and counters read from the agent's status at scrape time."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        status = m.agent.status()
        control = m.control.stats() if m.control is not None else {}
        yield from _backend_metrics(status)
        yield from _version_metrics(status)
        yield from _throughput_metrics(status)
        yield from _cycle_metrics(status)
        yield from _site_metrics(status)
        yield from _guard_metrics(status)
        yield from _control_metrics(control)


def _gauge(name: str, doc: str, value: float | None, unit: str = "") -> Iterator[Metric]:
    if value is not None:
        yield GaugeMetricFamily(name, doc, value=value, unit=unit)


def _backend_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    info = GaugeMetricFamily("morpheus_backend_info", "The data plane the agent drives "
                             "(kernel or userspace), always 1", labels=["backend"])
    info.add_metric([str(status.get("backend", "kernel"))], 1)
    yield info
    afxdp = status.get("afxdp")
    if not afxdp:
        return
    verdicts = CounterMetricFamily("morpheus_afxdp_verdicts", "Frames run by the user-space "
                                   "data plane, by XDP verdict", labels=["verdict"])
    for verdict, count in sorted((afxdp.get("verdicts") or {}).items()):
        verdicts.add_metric([verdict], count)
    yield verdicts
    yield CounterMetricFamily("morpheus_afxdp_frames", "Frames the AF_XDP poller ran through "
                              "the program", value=afxdp.get("frames", 0))
    yield CounterMetricFamily("morpheus_afxdp_batches", "Batches the AF_XDP poller ran",
                              value=afxdp.get("batches", 0))
    yield CounterMetricFamily("morpheus_afxdp_pauses", "Times the data plane was paused "
                              "between batches (control-plane writes, reads, swaps)",
                              value=afxdp.get("pauses", 0))


def _version_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    version = status.get("version") or {}
    yield from _gauge("morpheus_version", "Number of the running version",
                      version.get("number"))
    yield from _gauge("morpheus_version_instructions", "Instructions of the running version",
                      version.get("insns"))
    yield from _gauge("morpheus_run_stats_enabled", "1 when BPF run statistics are on "
                      "(--run-stats): only then are ns/packet and version packets measured",
                      1 if status.get("run_stats") else 0)
    # A gauge, not a counter: it restarts from 0 with every new version.
    yield from _gauge("morpheus_version_packets", "Packets processed by the running version "
                      "(BPF run stats; absent without --run-stats)", version.get("packets"))
    yield from _gauge("morpheus_ns_per_packet", "Average run time per packet of the running "
                      "version (BPF run stats; absent without --run-stats)",
                      version.get("ns_per_packet"))
    inlined = [s for s in version.get("sites", []) if s.get("specialized")]
    yield from _gauge("morpheus_inlined_sites", "Map access sites the running version "
                      "specializes", len(inlined) if version else None)
    yield from _gauge("morpheus_instrumentation_ns_per_packet", "What key sampling adds per "
                      "packet, measured on live traffic",
                      (status.get("instrumentation") or {}).get("ns_per_packet"))


def _throughput_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    throughput = status.get("throughput") or {}
    traffic = status.get("traffic") or {}
    iface = str(status.get("iface", ""))
    source = str(throughput.get("source", ""))
    if throughput.get("pps") is not None:
        g = GaugeMetricFamily("morpheus_throughput_packets_per_second", "Packets per second "
                              "received on the program's interface (its own counters over "
                              "netlink; the figure `status` shows)", labels=["iface", "source"])
        g.add_metric([iface, source], throughput["pps"])
        yield g
    if traffic.get("bps") is not None:
        g = GaugeMetricFamily("morpheus_throughput_bytes_per_second", "Bytes per second "
                              "received on the program's interface", labels=["iface"])
        g.add_metric([iface], traffic["bps"])
        yield g
    for key, name, doc in (("rx_packets", "morpheus_interface_receive_packets",
                            "Packets received on the program's interface (every one ran the "
                            "XDP program)"),
                           ("rx_bytes", "morpheus_interface_receive_bytes",
                            "Bytes received on the program's interface")):
        if traffic.get(key) is not None:
            c = CounterMetricFamily(name, doc, labels=["iface"])
            c.add_metric([iface], traffic[key])
            yield c


def _cycle_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    cycles = status.get("cycles", [])
    if cycles:
        yield from _gauge("morpheus_cycle_ms", "Duration of the last cycle, milliseconds",
                          cycles[-1]["ms"].get("total"))
    outcomes: dict[str, int] = {}
    for c in cycles:
        outcomes[c["outcome"]] = outcomes.get(c["outcome"], 0) + 1
    recent = GaugeMetricFamily("morpheus_recent_cycles", "Cycles by outcome among the last "
                               "ten", labels=["outcome"])
    for outcome, count in sorted(outcomes.items()):
        recent.add_metric([outcome], count)
    yield recent
    yield from _gauge("morpheus_errors", "Recent errors (the agent keeps the last 20)",
                      len(status.get("errors", [])))
    snapshot = status.get("snapshot") or {}
    for key, name, doc in (("retries", "morpheus_snapshot_retries",
                            "Map snapshots retaken because a write landed while copying"),
                           ("deferred_cycles", "morpheus_snapshot_deferred_cycles",
                            "Cycles deferred because writes never paused long enough for a "
                            "consistent snapshot")):
        if key in snapshot:
            yield CounterMetricFamily(name, doc, value=snapshot[key])
    swap = status.get("swap") or {}
    if swap.get("last_us") is not None:
        yield from _gauge("morpheus_swap_last_seconds", "The last atomic swap alone",
                          swap["last_us"] / 1e6)


def _site_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    labels = ["map", "instruction"]
    keys = GaugeMetricFamily("morpheus_site_inlined_keys", "Keys inlined at a lookup site",
                             labels=labels)
    hits = GaugeMetricFamily("morpheus_site_hit_rate", "Share of sampled lookups answered by "
                             "inlined keys", labels=labels)
    for site in (status.get("version") or {}).get("sites", []):
        key = [str(site["map"]), str(site["instruction"])]
        keys.add_metric(key, site.get("keys", 0))
        if site.get("hit_rate") is not None:
            hits.add_metric(key, site["hit_rate"])
    lookups = GaugeMetricFamily("morpheus_site_lookups", "Lookups at a sampled site since the "
                                "last cycle", labels=labels)
    rates = GaugeMetricFamily("morpheus_site_sample_rate", "One lookup in this many is "
                              "sampled at the site", labels=labels)
    for s in (status.get("sampling") or {}).get("sites", []):
        key = [str(s["map"]), str(s["instruction"])]
        if s.get("lookups") is not None:
            lookups.add_metric(key, s["lookups"])
        if s.get("rate") is not None:
            rates.add_metric(key, s["rate"])
    yield from (keys, hits, lookups, rates)


def _guard_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    guards = CounterMetricFamily("morpheus_guard_moves", "Moves of a map's guard version "
                                 "(two per write: at its start and its end; data-plane writes "
                                 "and writes seen by the watcher included)", labels=["map"])
    for name, version in sorted((status.get("guards") or {}).items()):
        guards.add_metric([name], version)
    yield guards
    paused = GaugeMetricFamily("morpheus_map_paused_cycles", "Cycles a map written all the "
                               "time stays out of the plan", labels=["map"])
    for name, left in sorted((status.get("paused_maps") or {}).items()):
        paused.add_metric([name], left)
    yield paused


def _control_metrics(control: dict[str, Any]) -> Iterator[Metric]:
    if "writes" in control:
        yield CounterMetricFamily("morpheus_control_plane_writes", "Writes made through the "
                                  "agent", value=control["writes"])
    yield from _gauge("morpheus_control_plane_write_ms", "Median latency of a write through "
                      "the agent, milliseconds", control.get("median_ms"))


class MetricsEndpoint:
    """prometheus-client's HTTP server for one registry, on 127.0.0.1 by default."""

    def __init__(self, metrics: AgentMetrics, port: int, addr: str = "127.0.0.1") -> None:
        self._server, self._thread = start_http_server(port, addr=addr,
                                                       registry=metrics.registry)
        self.port: int = self._server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(agent: Any, control: Any, port: int) -> tuple[AgentMetrics, MetricsEndpoint]:
    """Metrics for `agent` served on 127.0.0.1:`port` (0: any free port)."""
    metrics = AgentMetrics(agent, control)
    return metrics, MetricsEndpoint(metrics, port)

