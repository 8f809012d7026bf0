from morpheus.cli.status_cmd import render


def test_render_shows_sites_hit_rates_sampling_and_cycles() -> None:
    status = {
        "program": "xdp_router", "iface": "veth0", "pin_dir": "/sys/fs/bpf/morpheus/x",
        "version": {"number": 3, "kind": "specialized", "insns": 898, "packets": 1000,
                    "ns_per_packet": 104.0,
                    "sites": [{"instruction": 223, "map": "rt_routes", "mode": "hot",
                               "specialized": True, "keys": 64, "hit_rate": 0.97},
                              {"instruction": 40, "map": "rt_stats", "mode": "none",
                               "specialized": False, "keys": 0}]},
        "sampling": {"sites": [{"instruction": 223, "map": "rt_routes", "rate": 1024}]},
        "cycles": [{"outcome": "unchanged", "ms": {"total": 12.5},
                    "reason": "running version still fits the traffic"}],
        "errors": ["VerifierError: too complex"],
        "instrumentation": {"state": "measured", "ns_per_packet": 4.2, "plain_ns": 100.0,
                            "instrumented_ns": 104.2, "packets": 90000},
        "swap": {"mode": "prog-array", "last_us": 108.5},
    }
    text = render(status, {"writes": 2, "median_ms": 0.14})
    lines = text.splitlines()
    assert lines[0] == "xdp_router on veth0  (pins: /sys/fs/bpf/morpheus/x)"
    assert "version 3 (specialized), 898 instructions" in lines[1]
    (site,) = [line for line in lines if "rt_routes" in line]
    assert "64 keys, hit rate 97%, sampling 1/1024" in site
    assert not any("rt_stats" in line for line in lines)  # not specialized: not listed
    assert "control plane: 2 writes, median 0.14 ms" in text
    assert "sampling cost: +4.2 ns/packet (100.0 → 104.2 ns, 90000 packets)" in text
    assert "swaps by prog-array, last swap call 108.5 µs" in text
    assert "unchanged" in text and "error: VerifierError: too complex" in text
