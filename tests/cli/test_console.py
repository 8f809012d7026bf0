"""Terminal output: the tables of inspect, optimize and bench as plain text; progress bars
and spinners on a terminal, plain lines (or nothing) otherwise; and `bench` end to end in
plain mode."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

import pytest

from morpheus.cli import console
from morpheus.cli.bench_cmd import format_report as bench_text
from morpheus.cli.inspect_cmd import describe, inspect_view
from morpheus.cli.optimize_cmd import format_report as optimize_text
from morpheus.nf import get


def test_inspect_tables_list_programs_maps_and_sites() -> None:
    path = str(get("router").object_path)
    text = console.plain(inspect_view(path, describe(path, sites=True)))
    lines = text.splitlines()
    assert lines[0] == path
    (prog,) = [line for line in lines if line.startswith("xdp_router ")]
    assert prog.split()[:3] == ["xdp_router", "xdp", "xdp"]
    (routes,) = [line for line in lines if line.startswith("rt_routes ")]
    assert routes.split() == ["rt_routes", "lpm_trie", "8", "8", "65536"]
    assert "map access sites of xdp_router" in text
    assert "tag" not in lines[2]  # not loaded: no tag column rather than a blank one


def test_optimize_and_bench_reports_as_plain_tables() -> None:
    report: dict[str, Any] = {
        "nf": "router", "profile": "high", "analysis_ms": 5.0, "specialize_ms": 7.5,
        "verify_ms": 20.0, "insns": {"original": 455, "specialized": 860},
        "sites": [{"instruction": 223, "map": "rt_routes", "kind": "lookup",
                   "specialized": True, "reason": "44 hot keys"}],
        "packets_checked": 2000, "equivalent": True,
        "ns_per_packet": {"original": {"median": 222.0}, "specialized": {"median": 128.0}},
        "speedup": {"min": 1.5, "median": 1.7, "max": 1.9}}
    text = optimize_text(report)
    assert "instructions: 455 → 860" in text
    (site,) = [line for line in text.splitlines() if "rt_routes" in line]
    assert site.split() == ["223", "rt_routes", "lookup", "yes", "44", "hot", "keys"]
    assert "equivalent on 2000 packets: yes" in text
    assert "speedup: min 1.50  median 1.70  max 1.90" in text
    bench = {"nf": "router", "rounds": 3, "harness_overhead_ns": {"median": 80.0},
             "trace": {"profile": "high", "packets": 1000, "flows": 116, "top1_share": 0.33},
             "A": {"object": "/x/router.o", "program": "xdp_router", "verdicts_match": True,
                   "ns_per_packet": {"min": 100.0, "median": 110.0, "max": 120.0}},
             "speedup": {"min": 1.0, "median": 1.1, "max": 1.2}}
    text = bench_text(bench)
    (row,) = [line for line in text.splitlines() if line.startswith("A ")]
    assert row.split() == ["A", "router.o:xdp_router", "100.0", "110.0", "120.0",
                           "not", "measured", "not", "measured", "yes"]
    assert "speedup A/B: min 1.000  median 1.100  max 1.200" in text


def test_progress_off_a_terminal_prints_lines_and_on_one_draws_a_bar(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with console.progress_lines("work", total=2) as line:
        line("step 1")
    with console.working("thinking"):
        pass
    assert capsys.readouterr().err == "step 1\n"
    monkeypatch.setattr(console, "is_terminal", lambda stream=None: True)
    fake = io.StringIO()
    monkeypatch.setattr(sys, "stderr", fake)
    with console.progress_lines("work", total=2) as line:
        line("step 1")
        line("step 2")
    with console.working("thinking"):
        pass
    assert "step 2" in fake.getvalue()


@pytest.mark.kernel
def test_bench_prints_its_table_when_not_on_a_terminal() -> None:
    obj = str(get("router").object_path)
    out = subprocess.run([sys.executable, "-m", "morpheus.cli.main", "bench", obj,
                          "--nf", "router", "--profile", "high", "--rounds", "1",
                          "--packets", "500", "--no-throughput"], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "A   router.o:xdp_router" in out.stdout and "\x1b[" not in out.stdout
