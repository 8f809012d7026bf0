"""Traces: seeded and byte-identical, with the locality each profile promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from morpheus.cli.main import main as cli
from morpheus.nf import NAMES, get
from morpheus.traffic.generate import generate, summarize
from morpheus.traffic.pcap import PcapError, read_pcap, write_pcap


@pytest.mark.parametrize("name", NAMES)
def test_profiles_have_their_locality(name: str) -> None:
    nf = get(name)
    high = generate(nf, "high", 10_000, seed=3).summary()
    none = generate(nf, "none", 10_000, seed=3).summary()
    low = generate(nf, "low", 10_000, seed=3).summary()
    assert high["top1_share"] >= 0.5
    assert 0.005 <= none["top1_share"] <= 0.02
    assert none["top1_share"] < low["top1_share"] < high["top1_share"]
    assert high["packets"] == none["packets"] == 10_000


def test_shift_changes_the_hot_set() -> None:
    trace = generate(get("router"), "shift", 10_000, seed=2)
    first, second = trace.segment(0, 5_000), trace.segment(5_000, 10_000)
    hot_first = {f for f, _ in sorted(((f, first.flow_ids.count(f))
                                       for f in set(first.flow_ids)), key=lambda x: -x[1])[:10]}
    hot_second = {f for f, _ in sorted(((f, second.flow_ids.count(f))
                                        for f in set(second.flow_ids)), key=lambda x: -x[1])[:10]}
    assert not hot_first & hot_second
    assert first.summary()["top1_share"] >= 0.4 and second.summary()["top1_share"] >= 0.4


def test_same_seed_same_pcap_bytes(tmp_path: Path) -> None:
    for n in (1, 2):
        assert cli(["traffic", "--nf", "lb", "--profile", "low", "--packets", "2000", "--seed",
                    "9", "-o", str(tmp_path / f"{n}.pcap")]) == 0
    assert (tmp_path / "1.pcap").read_bytes() == (tmp_path / "2.pcap").read_bytes()
    assert cli(["traffic", "--nf", "lb", "--profile", "low", "--packets", "2000", "--seed",
                "10", "-o", str(tmp_path / "3.pcap")]) == 0
    assert (tmp_path / "3.pcap").read_bytes() != (tmp_path / "1.pcap").read_bytes()


def test_traffic_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert cli(["traffic", "--nf", "switch", "--profile", "high", "--packets", "1000",
                "--seed", "1", "-o", str(tmp_path / "t.pcap"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"packets", "flows", "top1_share", "top10_share"}
    assert len(read_pcap(tmp_path / "t.pcap")) == out["packets"] == 1000


def test_pcap_round_trip_and_errors(tmp_path: Path) -> None:
    frames = [bytes([i]) * (60 + i) for i in range(50)]
    write_pcap(tmp_path / "f.pcap", frames)
    assert read_pcap(tmp_path / "f.pcap") == frames
    (tmp_path / "bad.pcap").write_bytes(b"not a pcap file at all, sorry")
    with pytest.raises(PcapError, match="not a pcap"):
        read_pcap(tmp_path / "bad.pcap")
    raw = (tmp_path / "f.pcap").read_bytes()
    (tmp_path / "cut.pcap").write_bytes(raw[:-10])
    with pytest.raises(PcapError, match="truncated"):
        read_pcap(tmp_path / "cut.pcap")


def test_summary_of_flows() -> None:
    s = summarize([1] * 50 + list(range(2, 52)))
    assert s == {"packets": 100, "flows": 51, "top1_share": 0.5, "top10_share": 0.54}
