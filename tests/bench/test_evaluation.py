"""The evaluation report's writer: every section and figure from one result (no kernel; the
measurements themselves are what `morpheus report evaluation` runs)."""

from __future__ import annotations

from pathlib import Path

from morpheus.bench.evaluation import write_evaluation_markdown


def spread(v: float) -> dict[str, float]:
    return {"min": v * 0.9, "median": v, "max": v * 1.1}


def row(nf: str, profile: str, equivalent: bool = True) -> dict:
    lat = {"p50": 100.0, "p99": 400.0, "p999": 900.0}
    return {
        "nf": nf, "profile": profile, "equivalent": equivalent, "speedup": spread(2.0),
        "ns_per_packet": {"original": spread(200), "specialized": spread(100)},
        "mpps": {"original": spread(1.0), "specialized": spread(1.5)},
        "latency_ns": {"original": lat, "specialized": {**lat, "p99": 200.0}},
        "insns_per_packet": {"original": 190.0, "specialized": 120.0},
        "insns": {"original": 455, "specialized": 1500},
        "analysis_ms": 10.0, "specialize_ms": 100.0, "verify_ms": 20.0,
    }


def cost(rate: int, ns: float, every: bool = False) -> dict:
    return {"nf": "router", "sites": ["rt_routes@223"] * (4 if every else 1), "rate": rate,
            "every_site": every, "original_ns": 200.0, "instrumented_ns": 200 + ns,
            "cost_ns": ns, "cost_ratio": round((200 + ns) / 200, 3)}


def test_every_section_and_figure_is_written(tmp_path: Path) -> None:
    result = {
        "machine": {"kernel": "6.18", "cpu": "EPYC", "cpus": "2", "python": "3.11",
                    "date": "2026-12-01"},
        "rounds": 7, "packets": 10_000, "quick": False, "elapsed_s": 1.0,
        "rows": [row("router", p) for p in ("high", "low", "none")] + [row("lb", "high", False)],
        "drop_floor_mpps": {"router": spread(4.0), "lb": spread(4.0)},
        "sampling": [cost(r, 40.0 / r) for r in (1, 16, 1024)],
        "instrumentation_modes": [{"nf": "router", "naive": cost(1, 60.0, True),
                                   "adaptive": cost(16, 5.0)}],
        "dynamic": {"phases": [{"name": "no locality", "baseline_mpps": 1.0,
                                "morpheus_mpps": 1.2}], "adaptation_s": 0.5, "swaps": 3,
                    "stale_verdicts": 0, "lost_packets": 0, "plot": None},
    }
    path = write_evaluation_markdown(result, tmp_path, "morpheus report evaluation")
    text = path.read_text()
    assert "| router | high | yes | 1.80 / **2.00** / 2.20 | 200 → 100 | 1.00 → 1.50 (4.00) " \
           "| 190 → 120 | 455 → 1500 | 130.0 |" in text
    assert "| lb | high | NO |" in text
    assert "| router | high | 100 → 100 | 400 → 200 | 900 → 900 | -50% |" in text
    assert "| 1 in 1024 | 200 | 200 | +0 ns (1.0x) |" in text
    assert "| router | 4 | +60 ns (1.3x) | 1 | +5 ns (1.025x) |" in text
    assert "| no locality | 1.000 | 1.200 | 1.20x |" in text
    for name in ("ns", "mpps", "latency", "insns", "sampling", "dynamic"):
        figure = tmp_path / f"evaluation_{name}.png"
        assert figure.stat().st_size > 1000, figure
        assert f"![evaluation_{name}](evaluation_{name}.png)" in text
    assert "`morpheus report evaluation`" in text and "kernel 6.18" in text
