"""Pure tests of the router NF: encoders, control plane, reference model, traffic (no kernel)."""

from __future__ import annotations

import dataclasses
import random
import re
import struct
import sys
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from morpheus import bpf
from morpheus.nf import router as rt
from morpheus.nf.common import XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX
from morpheus.obj import read_object
from morpheus.traffic import packet as pkt

from .l23_fakes import FakeMap

LE = sys.byteorder == "little"
macs = st.binary(min_size=6, max_size=6)

IF_A, IF_B, IF_DOWN = 2, 3, 4
MAC_A, MAC_B, MAC_DOWN = (bytes([2, 0, 0, 0, 0, i]) for i in (0xA, 0xB, 0xD))
NH_A, NH_B = bytes([2, 1, 1, 1, 1, 0xA]), bytes([2, 1, 1, 1, 1, 0xB])
CLIENT = bytes([2, 9, 9, 9, 9, 9])


def small_config(**changes: object) -> rt.Config:
    interfaces = (rt.Interface(IF_A, MAC_A), rt.Interface(IF_B, MAC_B, mtu=9000),
                  rt.Interface(IF_DOWN, MAC_DOWN, enabled=False))
    nexthops = (rt.NextHop(1, IF_A, NH_A), rt.NextHop(2, IF_B, NH_B), rt.NextHop(3, IF_B),
                rt.NextHop(4, IF_DOWN, NH_A))
    routes = (
        rt.Route.parse("0.0.0.0/0", 1),
        rt.Route.parse("20.0.0.0/8", 2),
        rt.Route.parse("20.1.0.0/16", 1),
        rt.Route.parse("20.1.2.0/24", 2),
        rt.Route.parse("20.1.2.128/25", 1),
        rt.Route.parse("20.1.2.200/32", 2),
        rt.Route.parse("30.0.0.0/24", 3),  # connected: unresolved neighbour
        rt.Route.parse("30.0.0.1/32", kind=rt.RouteKind.LOCAL),
        rt.Route.parse("40.0.0.0/16", kind=rt.RouteKind.BLACKHOLE),
        rt.Route.parse("50.0.0.0/16", 4),  # via the down interface
    )
    config = rt.Config(interfaces, nexthops, routes)
    return dataclasses.replace(config, **changes) if changes else config


def ip_frame(dst: str | int, *, ttl: int = 64, eth_dst: bytes = MAC_A, payload: bytes = b"hi",
             flags_frag: int = 0, options: bytes = b"", proto: int = pkt.IPPROTO_UDP) -> bytes:
    segment = pkt.l4(proto, "1.2.3.4", dst, 1000, 53, payload)
    ip = pkt.ipv4("1.2.3.4", dst, proto, segment, ttl=ttl, flags_frag=flags_frag,
                  options=options, ident=0x1234)
    return pkt.ethernet(eth_dst, CLIENT, pkt.ETH_P_IP, ip)


def fake_maps() -> dict[str, FakeMap]:
    return {
        rt.MAP_CONFIG: FakeMap(rt.MAP_CONFIG, "array", max_entries=1, value_size=4),
        rt.MAP_IFACES: FakeMap(rt.MAP_IFACES, max_entries=rt.MAX_IFACES),
        rt.MAP_ROUTES: FakeMap(rt.MAP_ROUTES, max_entries=rt.MAX_ROUTES),
        rt.MAP_NEXTHOPS: FakeMap(rt.MAP_NEXTHOPS, "array", max_entries=rt.MAX_NEXTHOPS,
                                 value_size=20),
        rt.MAP_STATS: FakeMap(rt.MAP_STATS, "percpu_array", max_entries=len(rt.STATS),
                              value_size=16),
    }


# --- the C source and the module agree --------------------------------------------------------


def test_constants_match_c_source() -> None:
    source = (bpf.SOURCE_DIR / "router.bpf.c").read_text()
    enum = re.search(r"enum rt_stat \{(.*?)\};", source, re.S).group(1)
    names = re.findall(r"RT_STAT_(\w+) = (\d+)", enum)
    assert [(n.lower(), int(v)) for n, v in names] == \
        [*((n, i) for i, n in enumerate(rt.STATS)), ("max", len(rt.STATS))]
    defines = dict(re.findall(r"#define (RT_\w+) \(1u << (\d+)\)", source))
    for name in ("FEAT_FORWARD", "FEAT_STATS", "FEAT_NOROUTE_DROP", "IF_ENABLED",
                 "ROUTE_LOCAL", "ROUTE_BLACKHOLE", "NH_VALID"):
        assert 1 << int(defines[f"RT_{name}"]) == getattr(rt, name), name
    for name in ("MAX_ROUTES", "MAX_NEXTHOPS", "MAX_IFACES"):
        assert f"#define RT_{name} {getattr(rt, name)}" in source
    maps = re.findall(r"\} (\w+) SEC\(\"\.maps\"\)", source)
    assert sorted(maps) == sorted(rt.MAPS)
    assert f"int {rt.PROGRAM}(struct xdp_md *ctx)" in source


def test_object_maps_match_layout() -> None:
    """The compiled object's map definitions have the sizes the encoders produce."""
    try:
        path = bpf.object_path("router")
    except bpf.BuildError as exc:
        pytest.skip(f"no BPF compiler: {exc}")
    spec = read_object(path)
    assert {name: (m.type.name.lower(), m.key_size, m.value_size, m.max_entries)
            for name, m in spec.maps.items()} == rt.MAP_LAYOUT
    assert rt.PROGRAM in spec.programs


# --- encoders --------------------------------------------------------------------------------


@given(st.integers(0, 32), st.integers(0, 2**32 - 1))
def test_lpm_key_roundtrip(length: int, addr: int) -> None:
    prefix = addr & rt._mask(length)
    raw = rt.encode_lpm_key(prefix, length)
    assert len(raw) == 8 and raw[4:] == prefix.to_bytes(4, "big")
    assert rt.decode_lpm_key(raw) == (prefix, length)


@given(st.integers(0, 32), st.integers(0, 2**32 - 1), st.integers(0, rt.MAX_NEXTHOPS - 1),
       st.sampled_from(list(rt.RouteKind)))
def test_route_roundtrip(length: int, addr: int, nexthop: int, kind: rt.RouteKind) -> None:
    route = rt.Route(addr & rt._mask(length), length,
                     nexthop if kind is rt.RouteKind.FORWARD else 0, kind)
    raw = rt.encode_route(route)
    assert len(raw) == 8
    assert rt.decode_route(rt.encode_lpm_key(route.prefix, length), raw) == route


@given(st.integers(0, rt.MAX_NEXTHOPS - 1), st.integers(1, 2**32 - 1),
       st.one_of(st.none(), macs), macs)
def test_nexthop_roundtrip(index: int, ifindex: int, mac: bytes | None, smac: bytes) -> None:
    nh = rt.NextHop(index, ifindex, mac)
    raw = rt.encode_nexthop(nh, smac)
    assert len(raw) == 20
    assert rt.decode_nexthop(index, raw) == (nh, smac)


@given(st.integers(1, 2**32 - 1), macs, st.integers(68, 65535), st.booleans())
def test_iface_roundtrip(ifindex: int, mac: bytes, mtu: int, enabled: bool) -> None:
    iface = rt.Interface(ifindex, mac, mtu, enabled)
    raw = rt.encode_iface(iface)
    assert len(raw) == 12 and rt.decode_iface(ifindex, raw) == iface


@pytest.mark.skipif(not LE, reason="byte layout spelled out for little-endian hosts")
def test_byte_layouts_little_endian() -> None:
    assert rt.encode_lpm_key(pkt.ip4("10.1.2.0"), 24) == b"\x18\0\0\0\x0a\x01\x02\x00"
    assert rt.encode_route(rt.Route.parse("10.0.0.0/8", 5)) == b"\x05\0\0\0\0\0\0\0"
    assert rt.encode_route(rt.Route.parse("10.0.0.0/8", kind=rt.RouteKind.BLACKHOLE)) == \
        b"\0\0\0\0\x02\0\0\0"
    assert rt.encode_nexthop(rt.NextHop(1, 7, NH_A), MAC_A) == \
        b"\x07\0\0\0\x01\0\0\0" + NH_A + MAC_A
    assert rt.encode_iface(rt.Interface(2, MAC_A, 1500)) == MAC_A + b"\x01\0" + b"\xdc\x05\0\0"
    assert rt.decode_nexthop(3, rt.EMPTY_NEXTHOP) is None


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="host bits"):
        rt.Route(pkt.ip4("10.0.0.1"), 24)
    with pytest.raises(ValueError, match="unknown next hop"):
        rt.Config((rt.Interface(2, MAC_A),), (), (rt.Route.parse("10.0.0.0/8", 1),))
    with pytest.raises(ValueError, match="unknown interface"):
        rt.Config((), (rt.NextHop(1, 2, NH_A),), ())
    with pytest.raises(ValueError, match="share a prefix"):
        rt.Config((), (), (rt.Route.parse("10.0.0.0/8", kind=rt.RouteKind.LOCAL),) * 2)
    with pytest.raises(ValueError):
        rt.NextHop(rt.MAX_NEXTHOPS, 2)


# --- default configuration -------------------------------------------------------------------


def test_default_table_is_realistic_and_deterministic() -> None:
    config = rt.default_config()
    assert config == rt.default_config(1)
    assert config.routes != rt.default_config(2).routes
    assert len(config.routes) == 5000
    counts = rt.routes_by_length(config)
    assert set(range(8, 33)) <= set(counts)
    assert counts[0] == 1  # the default route
    assert counts[24] > 0.5 * len(config.routes)
    assert sum(counts[n] for n in range(16, 24)) > 0.25 * len(config.routes)
    assert 0 < sum(counts[n] for n in range(25, 33)) < 0.05 * len(config.routes)
    # Some generated prefixes nest inside others: the trie has depth.
    short = {(r.prefix, r.length) for r in config.routes if 8 <= r.length <= 16}
    nested = sum(any((r.prefix & rt._mask(n), n) in short for n in range(8, min(r.length, 17)))
                 for r in config.routes if r.length > 8)
    assert nested > 100
    kinds = Counter(r.kind for r in config.routes)
    assert kinds[rt.RouteKind.BLACKHOLE] > len(rt.BOGONS) and kinds[rt.RouteKind.LOCAL] == 5
    assert [i.ifindex for i in rt.default_config(ifindexes=[7, 8, 9, 10, 11]).interfaces] == \
        [7, 8, 9, 10, 11]
    assert len(rt.default_config(prefixes=1000).routes) == 1000


# --- control plane ---------------------------------------------------------------------------


def test_apply_writes_every_table() -> None:
    maps = fake_maps()
    config = rt.default_config()
    cp = rt.ControlPlane(maps)
    cp.apply(config)
    assert cp.features() == rt.FEAT_FORWARD | rt.FEAT_STATS
    assert cp.interfaces() == sorted(config.interfaces, key=lambda i: i.ifindex)
    assert cp.routes() == sorted(config.routes, key=lambda r: (r.prefix, r.length))
    nexthops = cp.nexthops()
    assert [nh for nh, _ in nexthops] == sorted(config.nexthops, key=lambda n: n.index)
    for nh, smac in nexthops:
        assert smac == config.interface(nh.ifindex).mac


def test_apply_reconciles_and_fine_grained_operations() -> None:
    maps = fake_maps()
    cp = rt.ControlPlane(maps)
    cp.apply(rt.default_config())
    small = small_config(noroute_drop=True)
    cp.apply(small)
    assert cp.routes() == sorted(small.routes, key=lambda r: (r.prefix, r.length))
    assert [nh for nh, _ in cp.nexthops()] == list(small.nexthops)
    assert [i.ifindex for i in cp.interfaces()] == [IF_A, IF_B, IF_DOWN]
    assert cp.features() == rt.FEAT_FORWARD | rt.FEAT_STATS | rt.FEAT_NOROUTE_DROP

    cp.add_route(rt.Route.parse("60.0.0.0/8", 2))
    cp.remove_route(pkt.ip4("20.1.0.0"), 16)
    with pytest.raises(KeyError):
        cp.remove_route(pkt.ip4("20.1.0.0"), 16)
    assert rt.Route.parse("60.0.0.0/8", 2) in cp.routes()
    # A new interface MAC reaches the next hops through it.
    new_mac = bytes([2, 0, 0, 0, 0, 0xEE])
    cp.set_interface(rt.Interface(IF_B, new_mac, mtu=9000))
    assert {nh.index: smac for nh, smac in cp.nexthops()} == \
        {1: MAC_A, 2: new_mac, 3: new_mac, 4: MAC_DOWN}
    cp.set_nexthop(rt.NextHop(7, IF_A, NH_B))
    assert (rt.NextHop(7, IF_A, NH_B), MAC_A) in cp.nexthops()
    cp.clear_nexthop(7)
    assert all(nh.index != 7 for nh, _ in cp.nexthops())
    with pytest.raises(ValueError, match="not configured"):
        cp.set_nexthop(rt.NextHop(8, 99, NH_A))
    cp.remove_interface(IF_DOWN)
    with pytest.raises(KeyError):
        cp.remove_interface(IF_DOWN)


def test_stats_sum_over_cpus() -> None:
    maps = fake_maps()
    maps[rt.MAP_STATS].store[rt.encode_u32(1)] = [struct.pack("=QQ", 1, 60),
                                                  struct.pack("=QQ", 2, 120)]
    stats = rt.ControlPlane(maps).stats()
    assert stats["tx"] == (3, 180) and list(stats) == list(rt.STATS)


# --- reference model -------------------------------------------------------------------------


@given(st.binary(min_size=20, max_size=20), st.integers(2, 255))
def test_ttl_decrement_keeps_a_valid_checksum(header: bytes, ttl: int) -> None:
    header = bytes([0x45]) + header[1:8] + bytes([ttl]) + header[9:10] + b"\0\0" + header[12:]
    header = header[:10] + struct.pack("!H", pkt.checksum(header)) + header[12:]
    out = rt.decrement_ttl(header)
    assert out[8] == ttl - 1
    assert out[:8] == header[:8] and out[9] == header[9] and out[12:] == header[12:]
    assert pkt.checksum(out) == 0
    # Same value as a full recomputation, except that RFC 1624 may give the other zero.
    full = pkt.checksum(out[:10] + b"\0\0" + out[12:])
    assert struct.unpack("!H", out[10:12])[0] in (full, 0xFFFF if full == 0 else full)


@given(st.integers(0, 0xFFFF), st.integers(1, 255), st.integers(0, 255))
def test_ttl_decrement_arithmetic(check: int, ttl: int, proto: int) -> None:
    header = bytes(8) + bytes([ttl, proto]) + struct.pack("!H", check) + bytes(8)
    out = rt.decrement_ttl(header)
    # RFC 1624 eqn. 3 in one's complement: HC' = ~(~HC + ~m + m').
    m, m2 = (ttl << 8) | proto, ((ttl - 1) << 8) | proto
    total = (~check & 0xFFFF) + (~m & 0xFFFF) + m2
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert struct.unpack("!H", out[10:12])[0] == ~total & 0xFFFF


def test_longest_prefix_match() -> None:
    ref = rt.Reference(small_config())
    cases = {"20.9.9.9": 8, "20.1.9.9": 16, "20.1.2.3": 24, "20.1.2.129": 25,
             "20.1.2.200": 32, "20.1.2.201": 25, "99.9.9.9": 0}
    for addr, length in cases.items():
        assert ref.lookup(pkt.ip4(addr)).length == length, addr
    assert rt.Reference(small_config(routes=small_config().routes[1:])).lookup(
        pkt.ip4("99.9.9.9")) is None


def test_forwarding_rewrites_exactly_macs_ttl_and_checksum() -> None:
    ref = rt.Reference(small_config())
    data = ip_frame("20.1.2.3", ttl=64, payload=bytes(100))
    out = ref.process(data, IF_A)
    assert (out.verdict, out.redirect_ifindex) == (XDP_REDIRECT, IF_B)
    assert out.frame[:12] == NH_B + MAC_B
    assert out.frame[12:22] == data[12:22] and out.frame[26:] == data[26:]
    assert out.frame[22] == 63 and out.frame[23] == data[23]
    assert pkt.checksum(out.frame[14:34]) == 0
    # Back out of the ingress interface: XDP_TX, same rewrite.
    tx = ref.process(ip_frame("20.1.9.9", eth_dst=MAC_A), IF_A)
    assert tx.verdict == XDP_TX and tx.redirect_ifindex is None and tx.frame[:12] == NH_A + MAC_A
    assert ref.stats["forward"] == (1, len(data)) and ref.stats["tx"][0] == 1


def test_fragments_and_padding_are_routed() -> None:
    ref = rt.Reference(small_config())
    for flags in (pkt.IP_MF, pkt.IP_MF | 100, 200, pkt.IP_DF):
        out = ref.process(ip_frame("20.1.2.3", flags_frag=flags), IF_A)
        assert out.verdict == XDP_REDIRECT
    padded = ip_frame("20.1.2.3") + bytes(18)
    out = ref.process(padded, IF_A)
    assert out.verdict == XDP_REDIRECT and out.frame.endswith(bytes(18))
    assert len(out.frame) == len(padded)


def test_exceptions_go_to_the_stack_untouched() -> None:
    ref = rt.Reference(small_config())
    good = ip_frame("20.1.2.3")
    arp = pkt.ethernet(b"\xff" * 6, CLIENT, pkt.ETH_P_ARP,
                       pkt.arp(1, CLIENT, "30.0.0.2", bytes(6), "30.0.0.1"))
    cases = [
        (ip_frame("20.1.2.3", ttl=1), IF_A, XDP_PASS, "ttl"),
        (ip_frame("20.1.2.3", ttl=0), IF_A, XDP_PASS, "ttl"),
        (ip_frame("20.1.2.3", options=b"\x01\x01\x01\x00"), IF_A, XDP_PASS, "options"),
        (arp, IF_A, XDP_PASS, "not_ip"),
        (good[:12] + b"\x81\x00\x00\x0a" + good[12:], IF_A, XDP_PASS, "not_ip"),
        (ip_frame("20.1.2.3", eth_dst=MAC_B), IF_A, XDP_PASS, "not_us"),
        (ip_frame("20.1.2.3", eth_dst=MAC_DOWN), IF_DOWN, XDP_PASS, "not_us"),
        (good, 77, XDP_PASS, "not_us"),
        (ip_frame("224.0.0.5"), IF_A, XDP_PASS, "mcast"),
        (ip_frame("255.255.255.255"), IF_A, XDP_PASS, "mcast"),
        (ip_frame("30.0.0.1"), IF_A, XDP_PASS, "local"),
        (ip_frame("30.0.0.9"), IF_A, XDP_PASS, "no_neigh"),
        (ip_frame("50.0.0.9"), IF_A, XDP_PASS, "link_down"),
        (ip_frame("40.0.1.1"), IF_A, XDP_DROP, "blackhole"),
        (good[:14], IF_A, XDP_DROP, "malformed"),
        (good[:33], IF_A, XDP_DROP, "malformed"),
        (good[:-1], IF_A, XDP_DROP, "malformed"),  # total length beyond the frame
        (good[:14] + b"\x46" + good[15:], IF_A, XDP_PASS, "options"),
        (good[:14] + b"\x55" + good[15:], IF_A, XDP_DROP, "malformed"),
        (good[:14] + b"\x44" + good[15:], IF_A, XDP_DROP, "malformed"),
        (good[:16] + b"\x00\x13" + good[18:], IF_A, XDP_DROP, "malformed"),
        (b"\x02" * 13, IF_A, XDP_DROP, "malformed"),
    ]
    for data, ifindex, verdict, reason in cases:
        before = ref.stats[reason][0]
        assert ref.process(data, ifindex) == rt.Outcome(verdict, data), (reason, data.hex())
        assert ref.stats[reason][0] == before + 1, reason


def test_mtu_boundary() -> None:
    ref = rt.Reference(small_config())
    # Arriving on B (MTU 9000), leaving through A (MTU 1500); UDP header 8, IP header 20.
    fits = ip_frame("20.1.9.9", eth_dst=MAC_B, payload=bytes(1500 - 28))
    assert ref.process(fits, IF_B).verdict == XDP_REDIRECT
    too_big = ip_frame("20.1.9.9", eth_dst=MAC_B, payload=bytes(1501 - 28))
    assert ref.process(too_big, IF_B) == rt.Outcome(XDP_PASS, too_big)


def test_no_route_and_feature_flags() -> None:
    routes = small_config().routes[1:]  # no default route
    missing = ip_frame("99.9.9.9")
    assert rt.Reference(small_config(routes=routes)).process(missing, IF_A).verdict == XDP_PASS
    dropping = rt.Reference(small_config(routes=routes, noroute_drop=True))
    assert dropping.process(missing, IF_A) == rt.Outcome(XDP_DROP, missing)
    assert dropping.stats["no_route"][0] == 1
    off = rt.Reference(small_config(forwarding=False))
    assert off.process(ip_frame("20.1.2.3"), IF_A).verdict == XDP_PASS
    assert off.stats["disabled"][0] == 1
    quiet = rt.Reference(small_config(stats=False))
    quiet.process(ip_frame("20.1.2.3"), IF_A)
    assert all(v == (0, 0) for v in quiet.stats.values())


def test_set_config_keeps_counters_and_follows_new_routes() -> None:
    ref = rt.Reference(small_config())
    data = ip_frame("20.1.2.3")
    assert ref.process(data, IF_A).redirect_ifindex == IF_B  # 20.1.2.0/24 via next hop 2
    routes = tuple(r for r in small_config().routes if str(r) != "20.1.2.0/24 nh 2")
    ref.set_config(small_config(routes=(*routes, rt.Route.parse("20.1.2.0/26", 1))))
    assert ref.lookup(pkt.ip4("20.1.2.3")).length == 26
    assert ref.process(data, IF_A).verdict == XDP_TX  # back out of IF_A through next hop 1
    assert ref.lookup(pkt.ip4("20.1.2.64")).length == 16  # outside the /26: the /16 again
    assert ref.stats["forward"] == (1, len(data)) and ref.stats["tx"] == (1, len(data))


# --- traffic ---------------------------------------------------------------------------------


def test_flows_spread_over_the_table() -> None:
    config = rt.default_config()
    flows = rt.flows(config, 5000, random.Random(1))
    assert len(flows) == len(set(flows)) == 5000
    assert flows[:50] == rt.flows(config, 50, random.Random(1))[:50]
    ref = rt.Reference(config)
    rng = random.Random(2)
    verdicts: Counter[int] = Counter()
    lengths = set()
    for flow in flows:
        data, ifindex = rt.packet(flow, rng)
        parsed = pkt.parse(data)
        assert (parsed.ip_src, parsed.ip_dst, ifindex) == (flow.src, flow.dst, flow.ingress)
        assert pkt.checksum(data[14:34]) == 0
        out = ref.process(data, ifindex)
        verdicts[out.verdict] += 1
        if out.verdict in (XDP_REDIRECT, XDP_TX):
            lengths.add(ref.lookup(flow.dst).length)
    assert verdicts[XDP_REDIRECT] + verdicts[XDP_TX] > 0.88 * len(flows)
    forwarding = {r.length for r in config.routes if ref.resolve(r.prefix) is not None}
    assert lengths >= forwarding - {32} and len(lengths) >= 24


def test_edge_cases_cover_every_decision() -> None:
    config = rt.default_config()
    ref = rt.Reference(config)
    cases = rt.edge_cases(config, random.Random(3))
    assert all(len(data) >= pkt.ETH_HLEN for data, _ in cases)
    for data, ifindex in cases:
        ref.process(data, ifindex)
    hit = {name for name, (packets, _) in ref.stats.items() if packets}
    assert hit == set(rt.STATS) - {"disabled", "no_route"}  # the default table has 0/0
    no_default = dataclasses.replace(config, routes=tuple(r for r in config.routes if r.length))
    ref = rt.Reference(no_default)
    for data, ifindex in rt.edge_cases(no_default, random.Random(3)):
        ref.process(data, ifindex)
    assert ref.stats["no_route"][0] >= 1


# --- the control plane's bytes drive a map-reading datapath like the model -------------------


def datapath(maps: dict[str, FakeMap], data: bytes, ingress: int) -> tuple[int, bytes, int]:
    """xdp_router re-read from the C source, working only on the fake maps' bytes."""

    def u32(v: int) -> bytes:
        return struct.pack("=I", v)

    features = struct.unpack("=I", maps[rt.MAP_CONFIG].lookup(u32(0)))[0]
    if len(data) < 14:
        return XDP_DROP, data, 0
    if not features & 1:
        return XDP_PASS, data, 0
    raw = maps[rt.MAP_IFACES].lookup(u32(ingress))
    if raw is None or not struct.unpack("=6sHI", raw)[1] & 1:
        return XDP_PASS, data, 0
    if data[12:14] != b"\x08\x00" or data[:6] != struct.unpack("=6sHI", raw)[0]:
        return XDP_PASS, data, 0
    if len(data) < 34 or data[14] >> 4 != 4 or data[14] & 15 < 5:
        return XDP_DROP, data, 0
    total = struct.unpack("!H", data[16:18])[0]
    if total < 20 or total > len(data) - 14:
        return XDP_DROP, data, 0
    if data[14] & 15 != 5 or data[30] >= 224 or data[22] <= 1:
        return XDP_PASS, data, 0
    daddr = data[30:34]
    best = None
    for key, value in maps[rt.MAP_ROUTES].store.items():
        length = struct.unpack("=I", key[:4])[0]
        bits = int.from_bytes(daddr, "big") ^ int.from_bytes(key[4:], "big")
        if (length == 0 or bits >> (32 - length) == 0) and (best is None or length > best[0]):
            best = (length, value)
    if best is None:
        return (XDP_DROP if features & 4 else XDP_PASS), data, 0
    nexthop, flags = struct.unpack("=II", best[1])
    if flags & 2:
        return XDP_DROP, data, 0
    if flags & 1:
        return XDP_PASS, data, 0
    raw = maps[rt.MAP_NEXTHOPS].lookup(u32(nexthop))
    ifindex, nh_flags, dmac, smac = struct.unpack("=II6s6s", raw)
    if not nh_flags & 1:
        return XDP_PASS, data, 0
    out = maps[rt.MAP_IFACES].lookup(u32(ifindex))
    if out is None or not struct.unpack("=6sHI", out)[1] & 1:
        return XDP_PASS, data, 0
    if total > struct.unpack("=6sHI", out)[2]:
        return XDP_PASS, data, 0
    data = dmac + smac + data[12:14] + rt.decrement_ttl(data[14:34]) + data[34:]
    return (XDP_TX, data, 0) if ifindex == ingress else (XDP_REDIRECT, data, ifindex)


def test_control_plane_bytes_agree_with_model() -> None:
    config = rt.default_config(prefixes=600)
    maps = fake_maps()
    rt.ControlPlane(maps).apply(config)
    ref = rt.Reference(config)
    rng = random.Random(5)
    frames = [rt.packet(f, rng) for f in rt.flows(config, 300, rng)] + rt.edge_cases(config, rng)
    for data, ifindex in frames:
        want = ref.process(data, ifindex)
        verdict, out, egress = datapath(maps, data, ifindex)
        assert (verdict, out, egress or None) == (want.verdict, want.frame,
                                                  want.redirect_ifindex), data.hex()
