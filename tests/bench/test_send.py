"""`morpheus send` and bench.send: a pcap transmitted over a veth pair inside a namespace the
test creates, counted at the other end by an XDP program."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from morpheus.bench.send import Sender, SendError, SendRequest
from morpheus.kernel import Link, Map, MapType, ProgType, load_program
from morpheus.kernel.netns import NetNamespace, temporary_netns
from morpheus.traffic.pcap import write_pcap
from morpheus.uapi import XDP_FLAGS_DRV_MODE
from tests.kernel.frame_counter import TEST_ETHERTYPE, frame_counter

pytestmark = pytest.mark.kernel


def _frames(count: int) -> list[bytes]:
    # Lengths vary so that bytes are checked too; the index makes each frame distinct.
    return [bytes.fromhex("ffffffffffff020000000001") + TEST_ETHERTYPE
            + struct.pack("<I", i) + bytes(46 + i % 7) for i in range(count)]


class Receiver:
    def __init__(self, counter: Map) -> None:
        self.counter = counter

    def counts(self) -> tuple[int, int]:
        raw = self.counter.lookup(0)
        assert isinstance(raw, bytes)
        return struct.unpack("<QQ", raw)  # type: ignore[return-value]


@contextmanager
def veth_with_receiver() -> Iterator[tuple[NetNamespace, Receiver]]:
    """Namespace with tx/rx veths; an XDP counter on rx (native mode)."""
    with temporary_netns("morpheus-sendtest") as ns, \
            Map.create(MapType.ARRAY, 4, 16, 1, name="counter") as counter, \
            load_program(frame_counter(counter, count_bytes=True), ProgType.XDP,
                         name="rxcount") as prog:
        ns.add_veth("tx", "rx")
        with ns.entered():
            link = Link.xdp(prog, ns.ifindex("rx"), XDP_FLAGS_DRV_MODE)
        with link:
            yield ns, Receiver(counter)


def test_every_packet_of_every_loop_arrives_with_its_bytes() -> None:
    frames = _frames(300)
    with veth_with_receiver() as (ns, rx):
        result = Sender(SendRequest(frames, "tx", ns, loops=7)).send()
        packets, nbytes = rx.counts()
    assert result.generated == result.sent == 300 * 7 and result.refused == 0
    assert result.loops == 7 and not result.interrupted
    assert result.bytes == 7 * sum(len(f) for f in frames)
    assert (packets, nbytes) == (2100, result.bytes)


def test_a_trace_longer_than_a_window_goes_window_by_window(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from morpheus.bench import send

    monkeypatch.setattr(send, "WINDOW", 64)  # 150 packets: windows of 64, 64 and 22
    frames = _frames(150)
    with veth_with_receiver() as (ns, rx):
        result = Sender(SendRequest(frames, "tx", ns, loops=2)).send()
        packets, nbytes = rx.counts()
    assert result.sent == packets == 300 and result.loops == 2
    assert result.bytes == nbytes == 2 * sum(len(f) for f in frames)


def test_rate_is_paced_and_the_measured_rate_reported() -> None:
    frames = _frames(500)
    with veth_with_receiver() as (ns, rx):
        result = Sender(SendRequest(frames, "tx", ns, rate_pps=10_000, loops=4)).send()
        packets, _ = rx.counts()
    assert packets == result.sent == 2000
    # 2,000 packets at 10 kpps: 0.2 s; never faster than asked, and not much slower.
    assert 0.19 <= result.seconds <= 0.26, result.seconds
    assert 0.75 * 10_000 <= result.pps <= 10_000 * 1.01
    assert result.pps == pytest.approx(result.sent / result.seconds)


def test_pacing_follows_the_clock_without_sending_early() -> None:
    """With a fake clock: each burst leaves only when its last packet is due."""
    now = [0.0]
    calls: list[tuple[float, int]] = []
    frames = _frames(50)
    with veth_with_receiver() as (ns, rx):
        sender = Sender(SendRequest(frames, "tx", ns, rate_pps=5_000, loops=2),
                        clock=lambda: now[0],
                        sleep=lambda s: (calls.append((now[0] + s, 0)),
                                         now.__setitem__(0, now[0] + s)))
        result = sender.send()
        packets, _ = rx.counts()
    assert packets == 100 and result.generated == 100
    # Bursts of 5 (1 ms worth at 5 kpps): the k-th burst's last packet (index 5k+4) is due
    # at (5k+4)/5000 s.
    assert [round(t, 6) for t, _ in calls] == [round((5 * k + 4) / 5000, 6) for k in range(20)]


def test_errors_are_specific() -> None:
    with veth_with_receiver() as (ns, _rx):
        with pytest.raises(SendError, match="no packets"):
            Sender(SendRequest([], "tx", ns))
        with pytest.raises(SendError, match="packet 1 has 9000 bytes"):
            Sender(SendRequest([bytes(60), bytes(9000)], "tx", ns))
        with pytest.raises(RuntimeError, match="no device 'nope'"):
            Sender(SendRequest(_frames(3), "nope", ns))
        ns.add_veth("lonely", "lonelyp")  # the peer runs no XDP program, GRO is off
        with pytest.raises(SendError, match="peer lonelyp runs no XDP program and has GRO"):
            Sender(SendRequest(_frames(10), "lonely", ns))


def test_a_veth_peer_with_gro_on_takes_the_frames_without_an_xdp_program() -> None:
    from pyroute2.ethtool.ioctl import IoctlEthtool

    with temporary_netns("morpheus-sendtest") as ns:
        ns.add_veth("tx", "rx")
        with ns.entered():
            ethtool = IoctlEthtool("rx")
            try:
                ethtool.set_offload_flag("generic-receive-offload", 1)
            finally:
                ethtool.close()
        before = ns.link_stats("rx")["rx_packets"]
        result = Sender(SendRequest(_frames(400), "tx", ns)).send()
        # The kernel's own IPv6 chatter may add a few packets of its own.
        assert result.sent == 400 and ns.link_stats("rx")["rx_packets"] - before >= 400


def test_cli_send_json_and_text(tmp_path: Path) -> None:
    pcap = tmp_path / "t.pcap"
    write_pcap(pcap, _frames(200))
    cmd = [sys.executable, "-m", "morpheus.cli.main", "send", str(pcap), "--iface", "tx"]
    with veth_with_receiver() as (ns, rx):
        out = subprocess.run([*cmd, "--netns", ns.name, "--loop", "3", "--json"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert rx.counts()[0] == 600
        text = subprocess.run([*cmd, "--netns", ns.name, "--rate", "20000"],
                              capture_output=True, text=True, timeout=60)
        assert text.returncode == 0, text.stderr
        assert rx.counts()[0] == 800
    assert report["sent"] == 600 and report["loops"] == 3 and report["refused"] == 0
    assert report["netns"] == ns.name and report["pcap"] == str(pcap)
    assert report["pps"] > 0 and report["target_pps"] is None
    assert "sent 200 packets" in text.stdout and "(asked 20,000)" in text.stdout
    missing = subprocess.run([*cmd, "--netns", "morpheus-no-such-ns"], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 1
    assert "no network namespace named 'morpheus-no-such-ns'" in missing.stderr


def test_loop_zero_sends_until_interrupted_and_reports_what_was_sent(tmp_path: Path) -> None:
    pcap = tmp_path / "t.pcap"
    write_pcap(pcap, _frames(100))
    with veth_with_receiver() as (ns, rx):
        proc = subprocess.Popen([sys.executable, "-m", "morpheus.cli.main", "send", str(pcap),
                                 "--iface", "tx", "--netns", ns.name, "--loop", "0",
                                 "--rate", "20000", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while rx.counts()[0] < 2000 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        received = rx.counts()[0]
    assert proc.returncode == 130, err
    report = json.loads(out)
    assert report["interrupted"] is True and report["sent"] >= 2000
    assert report["sent"] == received  # exact, wherever the interrupt fell
    assert report["loops"] == report["sent"] // 100
