"""`morpheus status` as plain text (not a terminal): sites, rates, cycles, and every figure
either measured or marked unknown; the live view's chart with swaps marked."""

from __future__ import annotations

import re
from typing import Any

from morpheus.cli.console import plain
from morpheus.cli.status_cmd import format_pps, live_view, render

STATUS: dict[str, Any] = {
    "program": "xdp_router", "iface": "veth0", "pin_dir": "/sys/fs/bpf/morpheus/x",
    "version": {"number": 3, "kind": "specialized", "insns": 898, "packets": 1000,
                "ns_per_packet": 104.0, "run_stats": True,
                "sites": [{"instruction": 223, "map": "rt_routes", "mode": "hot",
                           "specialized": True, "keys": 64, "hit_rate": 0.97},
                          {"instruction": 40, "map": "rt_stats", "mode": "none",
                           "specialized": False, "keys": 0}]},
    "run_stats": True,
    "sampling": {"sites": [{"instruction": 223, "map": "rt_routes", "rate": 1024,
                            "lookups": 5000}]},
    "cycles": [{"outcome": "unchanged", "ms": {"total": 12.5, "profile": 0.4},
                "reason": "running version still fits the traffic"}],
    "errors": ["VerifierError: too complex"],
    "instrumentation": {"state": "measured", "ns_per_packet": 4.2, "plain_ns": 100.0,
                        "instrumented_ns": 104.2, "packets": 90000},
    "swap": {"mode": "prog-array", "last_us": 108.5},
    "watcher": {"running": True, "pinned": True, "path": "/sys/fs/bpf/morpheus/x/watcher",
                "maps": 5},
    "throughput": {"pps": 1_234_567.0, "source": "netlink IFLA_STATS64 rx_packets of veth0"},
    "snapshot": {"retries": 4, "deferred_cycles": 1},
    "swaps": [],
}


def test_render_shows_sites_hit_rates_sampling_and_cycles() -> None:
    text = render(STATUS, {"writes": 2, "median_ms": 0.14, "max_ms": 0.3})
    lines = text.splitlines()
    assert lines[0] == "xdp_router on veth0  (pins: /sys/fs/bpf/morpheus/x)"
    assert "version 3 (specialized), 898 instructions, 1000 packets, 104.0 ns/packet" \
        in lines[1]
    assert lines[2].startswith("throughput 1.23 Mpps  (from netlink IFLA_STATS64")
    (site,) = [line for line in lines if "rt_routes" in line]
    assert site.split() == ["223", "rt_routes", "hot", "64", "97%", "1/1024", "5000"]
    assert not any("rt_stats" in line for line in lines)  # not specialized: not listed
    assert "control plane: 2 writes, median 0.14 ms, max 0.3 ms" in text
    assert "sampling cost: +4.2 ns/packet (100.0 → 104.2 ns, 90000 packets)" in text
    assert "swaps by prog-array, last swap call 108.5 µs" in text
    assert "write watcher: pinned at /sys/fs/bpf/morpheus/x/watcher (5 maps; outlives the " \
        "agent)" in text
    assert "snapshots retaken after concurrent writes: 4, cycles deferred: 1" in text
    (cycle,) = [line for line in lines if line.lstrip().startswith("unchanged")]
    assert cycle.split()[:4] == ["unchanged", "12.5", "0.4", "-"]  # phases not run: "-"
    assert "error: VerifierError: too complex" in text
    assert "\x1b[" not in text  # plain text: no escape sequences


def test_without_run_stats_nothing_is_printed_as_none_or_zero() -> None:
    status = {**STATUS, "run_stats": False, "throughput": {"pps": None, "source": "x"},
              "version": {k: v for k, v in STATUS["version"].items()
                          if k not in ("packets", "ns_per_packet")} | {"run_stats": False}}
    text = render(status, {"writes": 0, "median_ms": None})
    assert "ns/packet needs --run-stats" in text
    assert "throughput unknown" in text
    assert not re.search(r"\bNone\b", text) and not re.search(r"(?<!\d)0 packets", text)
    assert "control plane: 0 writes (no latency measured yet)" in text


def test_format_pps_scales() -> None:
    assert format_pps(2_500_000) == "2.50 Mpps"
    assert format_pps(250_000) == "250.0 kpps"
    assert format_pps(12) == "12 pps"
    assert format_pps(None) == "unknown"


def test_live_view_charts_throughput_and_marks_swaps() -> None:
    now = 1_000_000.0
    history = [[now - 59.5 + i * 0.5, 100_000.0 if i < 60 else 200_000.0] for i in range(119)]
    status = {**STATUS, "traffic": {"history": history},
              "swaps": [{"at": now - 30.2, "version": 3, "reason": "x"}]}
    text = plain(live_view(status, {"writes": 0}, now=now))
    lines = text.splitlines()
    assert lines[0].startswith("throughput 1.23 Mpps")
    chart = lines[1]
    spark = chart[1:chart.index("|", 1)]
    assert len(spark) == 60 and spark[-1] == "█" and spark[0] == "▄"
    assert "peak 200.0 kpps" in chart
    marks = lines[2]
    assert marks.count("▲") == 2 and "1 in the last 60 s" in marks  # the mark and the legend
    assert marks.index("▲") == 1 + 29  # 30 s ago, one column a second
    assert "rt_routes" in text  # the status follows the chart
