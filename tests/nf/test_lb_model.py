"""Pure tests of the lb NF: encoders, hash, Maglev, control plane, reference model."""

from __future__ import annotations

import random
import struct
import sys
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from morpheus.nf import lb
from morpheus.nf._l4 import Flow, flow_frame
from morpheus.nf.common import XDP_DROP, XDP_PASS, XDP_TX
from morpheus.traffic import packet as pkt

TCP, UDP = pkt.IPPROTO_TCP, pkt.IPPROTO_UDP


class FakeMap:
    """A dict behind the MapLike protocol; every write goes to a shared log."""

    def __init__(self, name: str, log: list[tuple[str, str, bytes]]) -> None:
        self.name = name
        self.store: dict[bytes, bytes] = {}
        self.log = log

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        self.store[key] = value
        self.log.append(("update", self.name, key))

    def delete(self, key: bytes) -> None:
        del self.store[key]
        self.log.append(("delete", self.name, key))

    def lookup(self, key: bytes) -> bytes | None:
        return self.store.get(key)

    def keys(self) -> Iterator[bytes]:
        return iter(list(self.store))


def fake_maps() -> tuple[dict[str, FakeMap], list[tuple[str, str, bytes]]]:
    log: list[tuple[str, str, bytes]] = []
    names = (
        lb.MAP_CONFIG,
        lb.MAP_VIPS,
        lb.MAP_RING,
        lb.MAP_BACKENDS,
        lb.MAP_CONN,
        lb.MAP_VIP_STATS,
        lb.MAP_STATS,
    )
    return {n: FakeMap(n, log) for n in names}, log


def backends(n: int, base: str = "10.2.0.1", weight: int = 1) -> tuple[lb.Backend, ...]:
    return tuple(lb.Backend(pkt.ip4(base) + 3 * i, weight) for i in range(n))


def ring_of(maps: dict[str, FakeMap], index: int) -> list[int]:
    store = maps[lb.MAP_RING].store
    return [
        lb.decode_u32(store.get(lb.encode_u32(index * lb.RING_SIZE + s), bytes(4)))
        for s in range(lb.RING_SIZE)
    ]


def datapath_backend(maps: dict[str, FakeMap], flow: Flow) -> int | None:
    """The backend address xdp_lb's ring lookup (no connection table) finds in the maps."""
    raw = maps[lb.MAP_VIPS].lookup(lb.encode_vip_key(flow.dst, flow.dport, flow.proto)) or maps[
        lb.MAP_VIPS
    ].lookup(lb.encode_vip_key(flow.dst, 0, flow.proto))
    if raw is None:
        return None
    index, flags = lb.decode_vip_meta(raw)
    sport = 0 if flags & lb.VIP_NO_SPORT else flow.sport
    slot = lb.flow_hash(flow.src, flow.dst, sport, flow.dport, flow.proto) % lb.RING_SIZE
    bidx = lb.decode_u32(maps[lb.MAP_RING].store[lb.encode_u32(index * lb.RING_SIZE + slot)])
    addr, _ = lb.decode_backend(maps[lb.MAP_BACKENDS].store.get(lb.encode_u32(bidx), bytes(8)))
    return addr or None


# ------------------------------------------------------------------------------- encoders

u32s = st.integers(0, 0xFFFFFFFF)
u16s = st.integers(0, 0xFFFF)
macs = st.binary(min_size=6, max_size=6)


@given(u32s, macs, macs, u32s)
def test_config_round_trip(src, own, gw, features) -> None:
    raw = lb.encode_config(src, own, gw, features)
    assert len(raw) == 20
    assert raw[:4] == src.to_bytes(4, "big")
    assert lb.decode_config(raw) == (src, own, gw, features)


@given(u32s, u16s, st.integers(0, 255))
def test_vip_key_round_trip(addr, port, proto) -> None:
    raw = lb.encode_vip_key(addr, port, proto)
    assert len(raw) == 8 and raw[7] == 0
    assert raw[4:6] == port.to_bytes(2, "big")
    assert lb.decode_vip_key(raw) == (addr, port, proto)


@given(u32s, u32s)
def test_vip_meta_and_backend_round_trip(a, b) -> None:
    assert lb.decode_vip_meta(lb.encode_vip_meta(a, b)) == (a, b)
    raw = lb.encode_backend(a, b)
    assert len(raw) == 8 and raw[:4] == a.to_bytes(4, "big")
    assert lb.decode_backend(raw) == (a, b)


@given(u32s, u32s, u16s, u16s, st.integers(0, 255))
def test_flow_key_round_trip(src, dst, sport, dport, proto) -> None:
    raw = lb.encode_flow_key(src, dst, sport, dport, proto)
    assert len(raw) == 16 and raw[13:] == bytes(3)
    assert lb.decode_flow_key(raw) == (src, dst, sport, dport, proto)


def test_u32_is_host_order() -> None:
    assert lb.encode_u32(4099) == (4099).to_bytes(4, sys.byteorder)


# ---------------------------------------------------------------------------- hash, Maglev


def test_flow_hash_is_pinned() -> None:
    # Golden values computed by flow_hash() of lb.bpf.c compiled for the host: a change on
    # either side breaks the mirror.
    got = [
        lb.flow_hash(pkt.ip4("100.64.1.2"), pkt.ip4("192.0.2.10"), 40000, 443, TCP),
        lb.flow_hash(pkt.ip4("100.64.1.2"), pkt.ip4("192.0.2.10"), 0, 443, UDP),
    ]
    assert got == [GOLDEN_HASH_TCP, GOLDEN_HASH_UDP]
    assert all(0 <= h <= 0xFFFFFFFF for h in got)


GOLDEN_HASH_TCP = 4277038527
GOLDEN_HASH_UDP = 1251384362


def test_flow_hash_spreads() -> None:
    rng = random.Random(1)
    slots = Counter(
        lb.flow_hash(rng.getrandbits(32), pkt.ip4("192.0.2.10"), rng.randint(1024, 65535), 443, TCP)
        % 16
        for _ in range(16000)
    )
    assert min(slots.values()) > 850 and max(slots.values()) < 1150


@pytest.mark.parametrize("n", [1, 3, 10, 37])
def test_maglev_fills_every_slot_evenly(n: int) -> None:
    table = lb.maglev_table(backends(n))
    assert None not in table
    shares = Counter(table)
    assert set(shares) == set(range(n))
    assert max(shares.values()) - min(shares.values()) <= 1  # Maglev's near-perfect balance


def test_maglev_weights() -> None:
    group = tuple(lb.Backend(pkt.ip4("10.3.0.1") + i, w) for i, w in enumerate((1, 2, 3, 0)))
    shares = Counter(lb.maglev_table(group))
    assert 3 not in shares  # weight 0: drained
    assert abs(shares[1] / shares[0] - 2) < 0.05 and abs(shares[2] / shares[0] - 3) < 0.05
    assert lb.maglev_table((lb.Backend(1, 0),)) == [None] * lb.RING_SIZE
    assert lb.maglev_table(()) == [None] * lb.RING_SIZE


def test_maglev_minimal_disruption() -> None:
    group = backends(10)
    before = [group[i].addr for i in lb.maglev_table(group)]
    removed = group[4]
    rest = tuple(b for b in group if b != removed)
    after = [rest[i].addr for i in lb.maglev_table(rest)]
    moved = sum(1 for a, b in zip(before, after, strict=True) if a != removed.addr and a != b)
    assert all(b != removed.addr for b in after)
    assert moved / lb.RING_SIZE < 0.03  # ideal is 0; Maglev promises "close to"
    # Adding a backend back restores the original table exactly (pure function of the set).
    assert [group[i].addr for i in lb.maglev_table(group)] == before


def test_maglev_does_not_depend_on_config_order() -> None:
    group = backends(6)
    vip_a = lb.Vip(pkt.ip4("192.0.2.1"), 80, TCP, group)
    vip_b = lb.Vip(pkt.ip4("192.0.2.1"), 80, TCP, tuple(reversed(group)))
    layout = lb.default_layout(lb.LbConfig((vip_a,)))
    assert lb.ring_backends(vip_a, layout) == lb.ring_backends(vip_b, layout)


# ------------------------------------------------------------------------- control plane


def test_default_config_is_deterministic() -> None:
    config = lb.default_config()
    assert config == lb.default_config(1) and config != lb.default_config(2)
    assert len(config.vips) == 16
    flags = {v.flags for v in config.vips}
    assert {0, lb.VIP_NO_SPORT, lb.VIP_LRU_BYPASS} <= flags
    assert any(v.port == 0 for v in config.vips) and any(not v.backends for v in config.vips)
    shared = Counter(b.addr for v in config.vips for b in v.backends)
    assert max(shared.values()) > 1
    assert any(b.weight > 1 for v in config.vips for b in v.backends)


def test_apply_writes_everything_in_order() -> None:
    config = lb.default_config()
    maps, log = fake_maps()
    maps[lb.MAP_VIPS].update(lb.encode_vip_key(1, 2, TCP), lb.encode_vip_meta(9, 0))  # stale
    cp = lb.ControlPlane(maps)
    cp.apply(config)
    layout = cp.layout
    assert layout == lb.default_layout(config)
    vips = {lb.decode_vip_key(k): lb.decode_vip_meta(v) for k, v in maps[lb.MAP_VIPS].store.items()}
    assert vips == {v.key: (layout.vip_index[v.key], v.flags) for v in config.vips}
    for vip in config.vips:
        assert ring_of(maps, layout.vip_index[vip.key]) == lb.ring_backends(vip, layout)
    for addr, index in layout.backend_index.items():
        assert lb.decode_backend(maps[lb.MAP_BACKENDS].store[lb.encode_u32(index)]) == (addr, 0)
    assert lb.decode_backend(maps[lb.MAP_BACKENDS].store[lb.encode_u32(0)]) == (0, 0)
    assert lb.decode_config(maps[lb.MAP_CONFIG].store[lb.encode_u32(0)]) == (
        config.src_addr,
        config.own_mac,
        config.gw_mac,
        lb.F_STATS | lb.F_CONNTRACK,
    )
    # Order: backends, then rings, then VIP entries, then the config.
    first = {}
    last = {}
    for i, (_, name, _) in enumerate(log[1:]):  # skip the stale entry we planted
        first.setdefault(name, i)
        last[name] = i
    assert last[lb.MAP_BACKENDS] < first[lb.MAP_RING] < last[lb.MAP_RING] < first[lb.MAP_VIPS]
    assert last[lb.MAP_VIPS] < first[lb.MAP_CONFIG]
    assert not maps[lb.MAP_CONN].store and not maps[lb.MAP_STATS].store


def test_datapath_view_matches_reference() -> None:
    config = lb.default_config()
    maps, _ = fake_maps()
    cp = lb.ControlPlane(maps)
    cp.apply(config)
    ref = lb.Reference(config, cp.layout)
    rng = random.Random(4)
    for flow in lb.flows(config, 1500, rng):
        assert datapath_backend(maps, flow) == ref.backend_for(flow)


def test_backend_changes_rewrite_little_and_reuse_indices() -> None:
    config = lb.default_config()
    maps, log = fake_maps()
    cp = lb.ControlPlane(maps)
    cp.apply(config)
    vip = next(v for v in config.vips if len(v.backends) >= 10)
    index = cp.layout.vip_index[vip.key]
    old_ring = ring_of(maps, index)
    victim = vip.backends[2]
    victim_index = cp.layout.backend_index[victim.addr]
    writes = cp.writes
    cp.remove_backend(vip.key, victim.addr)
    new_ring = ring_of(maps, index)
    assert victim_index not in new_ring
    changed = sum(1 for a, b in zip(old_ring, new_ring, strict=True) if a != b)
    assert cp.writes - writes < changed + 5  # writes are the diff (+ a freed backend slot)
    assert changed < 2 * old_ring.count(victim_index)
    with pytest.raises(KeyError):
        cp.remove_backend(vip.key, victim.addr)
    still_used = any(victim.addr in {b.addr for b in v.backends} for v in cp.config.vips)
    if not still_used:
        assert lb.decode_backend(maps[lb.MAP_BACKENDS].store[lb.encode_u32(victim_index)])[0] == 0
        # The lowest free index is reused by the next new backend.
        newcomer = lb.Backend(pkt.ip4("10.77.0.1"))
        del log[:]
        cp.add_backend(vip.key, newcomer)
        assert cp.layout.backend_index[newcomer.addr] == victim_index
        assert log[0][1] == lb.MAP_BACKENDS  # the backend exists before a slot names it
    ref = lb.Reference(cp.config, cp.layout)
    rng = random.Random(5)
    for flow in lb.flows(cp.config, 500, rng):
        assert datapath_backend(maps, flow) == ref.backend_for(flow)


def test_vip_add_and_remove() -> None:
    config = lb.default_config()
    maps, log = fake_maps()
    cp = lb.ControlPlane(maps)
    cp.apply(config)
    gone = config.vips[3]
    index = cp.layout.vip_index[gone.key]
    del log[:]
    assert cp.remove_vip(gone.key) == gone
    assert log[0] == ("delete", lb.MAP_VIPS, lb.encode_vip_key(*gone.key))  # VIP first
    assert set(ring_of(maps, index)) == {0}
    with pytest.raises(KeyError):
        cp.remove_vip(gone.key)
    new = lb.Vip(pkt.ip4("198.51.100.1"), 443, TCP, backends(5, "10.8.0.1"), lb.VIP_NO_SPORT)
    del log[:]
    cp.add_vip(new)
    assert cp.layout.vip_index[new.key] == index  # lowest free VIP index reused
    assert log[-1] == ("update", lb.MAP_VIPS, lb.encode_vip_key(*new.key))  # VIP last
    with pytest.raises(ValueError):
        cp.add_vip(new)
    ref = lb.Reference(cp.config, cp.layout)
    rng = random.Random(6)
    for flow in lb.flows(cp.config, 500, rng):
        assert datapath_backend(maps, flow) == ref.backend_for(flow)


def test_feature_switches() -> None:
    maps, _ = fake_maps()
    cp = lb.ControlPlane(maps)
    cp.apply(lb.default_config())
    cp.set_features(conntrack=False)
    assert lb.decode_config(maps[lb.MAP_CONFIG].store[lb.encode_u32(0)])[3] == lb.F_STATS
    cp.set_features(stats=False, conntrack=True)
    assert lb.decode_config(maps[lb.MAP_CONFIG].store[lb.encode_u32(0)])[3] == lb.F_CONNTRACK


# ------------------------------------------------------------------------ reference model

VIP_ADDR = pkt.ip4("192.0.2.10")
CLIENT = pkt.ip4("100.64.3.4")


def small_config(**kw) -> lb.LbConfig:
    return lb.LbConfig(
        (
            lb.Vip(VIP_ADDR, 80, TCP, backends(4)),
            lb.Vip(VIP_ADDR, 0, UDP, backends(3, "10.4.0.1")),  # every UDP port
            lb.Vip(VIP_ADDR, 443, UDP, backends(5, "10.5.0.1"), lb.VIP_NO_SPORT),
            lb.Vip(VIP_ADDR, 53, TCP, backends(5, "10.6.0.1"), lb.VIP_LRU_BYPASS),
            lb.Vip(VIP_ADDR, 8080, TCP, ()),
        ),
        **kw,
    )


def to_vip(sport=40000, dport=80, proto=TCP, **kw) -> bytes:
    return flow_frame(Flow(CLIENT, VIP_ADDR, proto, sport, dport), **kw)


def test_encapsulation_is_valid_ipip() -> None:
    config = small_config()
    ref = lb.Reference(config)
    data = to_vip(payload=b"hello", tos=0x10) + b"\0" * 6  # with Ethernet padding
    out = ref.process(data, 1)
    assert out.verdict == XDP_TX and out.redirect_ifindex is None
    frame = out.frame
    assert len(frame) == len(data) + 20
    assert frame[:6] == config.gw_mac and frame[6:12] == config.own_mac
    assert frame[12:14] == b"\x08\x00"
    outer = frame[14:34]
    assert pkt.checksum(outer) == 0
    parsed = pkt.parse(frame)
    assert parsed is not None
    assert parsed.ip_proto == pkt.IPPROTO_IPIP and parsed.ip_ttl == 64
    assert parsed.ip_src == config.src_addr
    assert parsed.ip_dst == ref.backend_for(Flow(CLIENT, VIP_ADDR, TCP, 40000, 80))
    assert parsed.ip_tos == 0x10 and parsed.ip_flags_frag == 0
    assert parsed.ip_total_length == len(data) - 6 - 14 + 20  # from the inner header
    assert frame[34:] == data[14:]  # the inner packet is untouched


def test_outer_length_wraps_like_the_c_code() -> None:
    data = bytearray(to_vip())
    data[16:18] = struct.pack("!H", 0xFFF0)
    out = lb.Reference(small_config()).process(bytes(data), 1)
    assert out.verdict == XDP_TX
    assert struct.unpack_from("!H", out.frame, 16)[0] == (0xFFF0 + 20) & 0xFFFF
    assert pkt.checksum(out.frame[14:34]) == 0


def test_verdicts_for_non_vip_and_corners() -> None:
    ref = lb.Reference(small_config())
    plain = to_vip()
    cases = {
        "vlan": (to_vip(vlan=3), XDP_PASS),
        "arp": (pkt.ethernet(b"\xff" * 6, b"\x02" * 6, pkt.ETH_P_ARP, bytes(28)), XDP_PASS),
        "eth only": (plain[:14], XDP_DROP),
        "short ip": (plain[:33], XDP_DROP),
        "short tcp": (plain[: 14 + 20 + 19], XDP_DROP),
        "short udp": (to_vip(proto=UDP, dport=9)[: 14 + 20 + 7], XDP_DROP),
        "options": (to_vip(options=b"\x01" * 4), XDP_PASS),
        "first fragment": (to_vip(flags_frag=pkt.IP_MF), XDP_PASS),
        "later fragment": (to_vip(flags_frag=77), XDP_PASS),
        "icmp": (flow_frame(Flow(CLIENT, VIP_ADDR, pkt.IPPROTO_ICMP, 1, 1)), XDP_PASS),
        "other port": (to_vip(dport=81), XDP_PASS),
        "other address": (flow_frame(Flow(CLIENT, VIP_ADDR + 1, TCP, 1, 80)), XDP_PASS),
        "no backends": (to_vip(dport=8080), XDP_DROP),
        "all-ports vip": (to_vip(proto=UDP, dport=12345), XDP_TX),
        "df is fine": (to_vip(flags_frag=pkt.IP_DF), XDP_TX),
    }
    for name, (data, expected) in cases.items():
        out = ref.process(data, 1)
        assert out.verdict == expected, name
        if expected != XDP_TX:
            assert out.frame == data, name
    bad = bytearray(plain)
    bad[14] = 0x44
    assert ref.process(bytes(bad), 1).verdict == XDP_DROP
    bad[14] = 0x65
    assert ref.process(bytes(bad), 1).verdict == XDP_DROP


def test_connection_table() -> None:
    config = small_config()
    maps, _ = fake_maps()
    cp = lb.ControlPlane(maps)
    cp.apply(config)
    ref = lb.Reference(config, cp.layout)
    first = ref.process(to_vip(sport=1111), 1).frame
    assert len(ref.conn) == 1
    # Even after the VIP's backend set changes, the flow sticks to its backend...
    vip = config.vips[0]
    chosen = struct.unpack_from("!I", first, 30)[0]
    for backend in backends(20, "10.9.0.1"):
        cp.add_backend(vip.key, backend)
    ref.set_config(cp.config, cp.layout)
    assert ref.process(to_vip(sport=1111), 1).frame == first
    assert ref.stats[lb.Stat.CONN_HIT, "packets"] == 1
    # ...until its backend disappears: then the ring picks again and the entry is replaced.
    cp.remove_backend(vip.key, chosen)
    ref.set_config(cp.config, cp.layout)
    again = ref.process(to_vip(sport=1111), 1).frame
    assert struct.unpack_from("!I", again, 30)[0] != chosen
    assert ref.stats[lb.Stat.CONN_MISS, "packets"] == 2
    assert ref.process(to_vip(sport=1111), 1).frame == again
    assert ref.stats[lb.Stat.CONN_HIT, "packets"] == 2
    # LRU bypass VIPs never touch the table; without the feature nothing does.
    ref.process(to_vip(dport=53), 1)
    assert len(ref.conn) == 1
    off = lb.Reference(small_config(conntrack=False))
    off.process(to_vip(), 1)
    assert not off.conn


def test_no_sport_hashing_keeps_clients_together() -> None:
    ref = lb.Reference(small_config(conntrack=False))
    outs = {
        ref.process(to_vip(proto=UDP, dport=443, sport=s), 1).frame[30:34]
        for s in range(1024, 1224)
    }
    assert len(outs) == 1
    spread = {
        ref.process(to_vip(proto=UDP, dport=9999, sport=s), 1).frame[30:34]
        for s in range(1024, 1224)
    }
    assert len(spread) == 3


def test_stats() -> None:
    ref = lb.Reference(small_config())
    data = to_vip()
    ref.process(data, 1)
    ref.process(to_vip(dport=81), 1)
    assert ref.stats[lb.Stat.TX, "packets"] == 1 and ref.stats[lb.Stat.TX, "bytes"] == len(data)
    assert ref.stats[lb.Stat.NO_VIP, "packets"] == 1
    assert ref.vip_stats[(VIP_ADDR, 80, TCP), "packets"] == 1
    quiet = lb.Reference(small_config(stats=False))
    quiet.process(data, 1)
    assert not quiet.stats and not quiet.vip_stats


# -------------------------------------------------------------------------------- traffic


def test_flows_and_packets() -> None:
    config = lb.default_config()
    rng = random.Random(8)
    flows = lb.flows(config, 3000, rng)
    assert len(set(flows)) == 3000
    vip_keys = {v.key for v in config.vips}
    to_vips = [
        f for f in flows if (f.dst, f.dport, f.proto) in vip_keys or (f.dst, 0, f.proto) in vip_keys
    ]
    assert 0.85 < len(to_vips) / len(flows) < 0.95
    hit = Counter(
        (f.dst, f.dport if (f.dst, f.dport, f.proto) in vip_keys else 0, f.proto) for f in to_vips
    )
    assert set(hit) == vip_keys
    ref = lb.Reference(config)
    verdicts = Counter()
    for flow in flows[:500]:
        data, ifindex = lb.packet(flow, rng)
        assert pkt.checksum(data[14:34]) == 0
        verdicts[ref.process(data, ifindex).verdict] += 1
    assert set(verdicts) == {XDP_TX, XDP_PASS, XDP_DROP}


def test_edge_cases_cover_every_outcome() -> None:
    config = lb.default_config()
    cases = lb.edge_cases(config, random.Random(3))
    assert all(len(f) >= pkt.ETH_HLEN for f, _ in cases)
    ref = lb.Reference(config)
    for data, ifindex in cases:
        ref.process(data, ifindex)
    for stat in set(lb.Stat) - {lb.Stat.ENCAP_FAIL}:  # needs a kernel without headroom
        assert ref.stats[stat, "packets"] > 0, stat
