"""The README's main command, end to end: `morpheus demo --quick --json`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel


def test_quick_demo_reports_every_phase_with_no_stale_verdict_and_no_loss(
        tmp_path: Path) -> None:
    plot = tmp_path / "demo.png"
    out = subprocess.run([sys.executable, "-m", "morpheus.cli.main", "demo", "--quick",
                          "--json", "--plot", str(plot)], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-1000:]
    report = json.loads(out.stdout)
    assert [p["name"] for p in report["phases"]] == ["no locality", "high locality",
                                                     "new hot set"]
    for phase in report["phases"]:
        assert phase["baseline_mpps"] > 0 and phase["morpheus_mpps"] > 0
    assert report["stale_verdicts"] == 0 and report["probes"] > 0
    assert report["lost_packets"] == 0 and report["sent_packets"] > 0, report
    assert report["ring_dropped"] >= 0 and report["baseline_lost_packets"] == 0
    assert report["swaps"] >= 1
    # A version with hot-key sites adapts to the new hot set; one without (the router's
    # whole trie as direct tables) serves it as it is.
    if report["hot_key_sites"]:
        assert report["adaptation_s"] is not None and report["adaptation_s"] < 5
    assert report["plot"] and Path(report["plot"]).stat().st_size > 1000
    assert "netlink" in report["throughput_source"]  # the source status and metrics use
