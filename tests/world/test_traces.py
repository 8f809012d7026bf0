"""Packets for the inlined keys (world.traces.inlined_key_packets): every inlined key
written into a check frame where the site builds its key from, into one frame per L2
shape when part of the key is not traced to the packet, its one-bit near misses, and the
order that keeps a learning switch from moving guards before the inlined code is seen."""

from __future__ import annotations

from types import SimpleNamespace

from morpheus.analysis.sites import KeyByte
from morpheus.traffic.generate import Trace
from morpheus.world.traces import inlined_key_packets, l2_shape

UNTAGGED = bytes.fromhex("0a0000000001" "0a0000000002" "0800") + bytes(50)
TAGGED = bytes.fromhex("0a0000000003" "0a0000000004" "8100" "0014" "0800") + bytes(50)


def _trace(*frames: bytes) -> Trace:
    return Trace(list(frames), list(range(len(frames))), [2] * len(frames), "t", "", 0, {})


def _decision(key_bytes: list[KeyByte], *keys: bytes) -> SimpleNamespace:
    entries = [SimpleNamespace(key=k, value=b"\x01") for k in keys]
    return SimpleNamespace(site=SimpleNamespace(key_bytes=tuple(key_bytes), inner_of=None),
                           plan=SimpleNamespace(entries=entries))


def _mac_key(*, vid: str) -> list[KeyByte]:
    """A switch's FDB key: a VLAN id (`vid`: "const", or "unknown" where the analysis
    joined the tag's and the port's), then the destination MAC, bytes 0..5."""
    head = [KeyByte("const", 0), KeyByte("const", 0)] if vid == "const" else \
        [KeyByte("unknown"), KeyByte("unknown")]
    return head + [KeyByte("pkt", None, ("pkt", i, 1), 0) for i in range(6)]


def test_a_traced_key_is_written_into_the_first_frame_then_flipped_byte_by_byte() -> None:
    key = bytes(2) + bytes.fromhex("02aabbccddee")
    packets = inlined_key_packets(_trace(UNTAGGED, TAGGED), [_decision(_mac_key(vid="const"),
                                                                       key)])
    exact, *near = packets
    assert exact == (bytes.fromhex("02aabbccddee") + UNTAGGED[6:], 2)
    assert len(near) == 6
    for off, (frame, port) in enumerate(near):
        diff = [i for i in range(len(frame)) if frame[i] != exact[0][i]]
        assert diff == [off] and port == 2
        assert bin(frame[off] ^ exact[0][off]).count("1") == 1
        assert not frame[0] & 1  # never a group address


def test_an_untraced_key_byte_takes_a_frame_of_every_l2_shape() -> None:
    key = bytes.fromhex("1400") + bytes.fromhex("02aabbccddee")
    packets = inlined_key_packets(_trace(UNTAGGED, UNTAGGED, TAGGED),
                                  [_decision(_mac_key(vid="unknown"), key)])
    exact = [p for p in packets if p[0][:6] == bytes.fromhex("02aabbccddee")]
    assert sorted(l2_shape(f) for f, _ in exact) == sorted([l2_shape(UNTAGGED),
                                                            l2_shape(TAGGED)])
    assert packets[:2] == exact  # exact keys first, then their near misses
    assert len(packets) == 2 + 2 * 6


def test_packets_that_change_source_side_bytes_or_the_port_come_last() -> None:
    mac = _decision(_mac_key(vid="const"), bytes(2) + bytes.fromhex("02aabbccddee"))
    # A key of (ingress port, VLAN id byte at offset 15): the port moves the station.
    port_vid = _decision([KeyByte("ctx", None, ("ctx", 12, 4), 0), KeyByte("const", 0),
                          KeyByte("const", 0), KeyByte("const", 0),
                          KeyByte("pkt", None, ("pkt", 15, 1), 0), KeyByte("const", 0),
                          KeyByte("const", 0), KeyByte("const", 0)],
                         bytes([3, 0, 0, 0, 10, 0, 0, 0]))
    packets = inlined_key_packets(_trace(TAGGED), [port_vid, mac])
    ports = [p for _, p in packets]
    assert ports == [2] * 7 + [3] * 2  # the MAC's exact key and near misses first
    assert packets[7][0][15] == 10
