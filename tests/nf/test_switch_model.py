"""Pure tests of the switch NF: encoders, control plane, reference model, traffic (no kernel)."""

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
from morpheus.nf import switch as sw
from morpheus.nf.common import XDP_DROP, XDP_PASS, XDP_REDIRECT
from morpheus.obj import read_object
from morpheus.traffic import packet as pkt

from .l23_fakes import BPF_EXIST, BPF_NOEXIST, FakeMap, MapFull

LE = sys.byteorder == "little"
macs = st.binary(min_size=6, max_size=6)
u32 = st.integers(0, 2**32 - 1)

A1, A2, T1, T2 = 11, 12, 21, 22  # access ports (VLAN 10), trunks (native 1, tagged 10/20)
M = {name: bytes([0x02, 0, 0, 0, 0, i]) for i, name in enumerate("abcdefgh", 1)}


def small_config(**changes: object) -> sw.Config:
    ports = (
        sw.Port(A1, pvid=10),
        sw.Port(A2, pvid=10),
        sw.Port(T1, pvid=1, trunk=True, vlans=frozenset({10, 20})),
        sw.Port(T2, pvid=1, trunk=True, vlans=frozenset({10, 20})),
        sw.Port(30, pvid=20, enabled=False),
        sw.Port(31, pvid=20, learning=False),
    )
    config = sw.Config(ports, (sw.StaticMac(M["h"], 10, T2),))
    return dataclasses.replace(config, **changes) if changes else config


def frame(dst: bytes, src: bytes, vlan: int | None = None, payload: bytes = b"x" * 46) -> bytes:
    return pkt.ethernet(dst, src, 0x0800, payload, vlan=vlan)


def fake_maps() -> dict[str, FakeMap]:
    return {
        sw.MAP_CONFIG: FakeMap(sw.MAP_CONFIG, "array", max_entries=1, value_size=4),
        sw.MAP_PORTS: FakeMap(sw.MAP_PORTS, max_entries=sw.MAX_PORTS),
        sw.MAP_VLANS: FakeMap(sw.MAP_VLANS, max_entries=sw.VLAN_TABLE_SIZE),
        sw.MAP_FDB: FakeMap(sw.MAP_FDB, max_entries=sw.FDB_SIZE),
        sw.MAP_TX: FakeMap(sw.MAP_TX, max_entries=sw.MAX_PORTS),
        sw.MAP_STATS: FakeMap(
            sw.MAP_STATS, "percpu_array", max_entries=len(sw.STATS), value_size=16
        ),
    }


# --- the C source and the module agree --------------------------------------------------------


def test_constants_match_c_source() -> None:
    source = (bpf.SOURCE_DIR / "switch.bpf.c").read_text()
    enum = re.search(r"enum sw_stat \{(.*?)\};", source, re.S).group(1)
    names = re.findall(r"SW_STAT_(\w+) = (\d+)", enum)
    assert [(n.lower(), int(v)) for n, v in names] == [
        *((n, i) for i, n in enumerate(sw.STATS)),
        ("max", len(sw.STATS)),
    ]
    defines = dict(re.findall(r"#define (SW_\w+) \(1u << (\d+)\)", source))
    for name in (
        "FEAT_VLAN",
        "FEAT_LEARN",
        "FEAT_STATS",
        "PORT_ENABLED",
        "PORT_TRUNK",
        "PORT_LEARN",
        "FDB_STATIC",
        "VLAN_MEMBER",
    ):
        assert 1 << int(defines[f"SW_{name}"]) == getattr(sw, name), name
    assert f"#define SW_FDB_SIZE {sw.FDB_SIZE}" in source
    assert f"#define SW_MAX_PORTS {sw.MAX_PORTS}" in source
    maps = re.findall(r"\} (\w+) SEC\(\"\.maps\"\)", source)
    assert sorted(maps) == sorted(sw.MAPS)
    assert all(len(name) <= 15 for name in maps)
    assert f"int {sw.PROGRAM}(struct xdp_md *ctx)" in source


def test_object_maps_match_layout() -> None:
    """The compiled object's map definitions have the sizes the encoders produce."""
    try:
        path = bpf.object_path("switch")
    except bpf.BuildError as exc:
        pytest.skip(f"no BPF compiler: {exc}")
    spec = read_object(path)
    assert {name: (m.type.name.lower(), m.key_size, m.value_size, m.max_entries)
            for name, m in spec.maps.items()} == sw.MAP_LAYOUT
    assert sw.PROGRAM in spec.programs


# --- encoders --------------------------------------------------------------------------------


@given(st.integers(0, 4095), macs)
def test_fdb_key_roundtrip(vlan: int, mac: bytes) -> None:
    raw = sw.encode_fdb_key(vlan, mac)
    assert len(raw) == 8
    assert sw.decode_fdb_key(raw) == (vlan, mac)
    assert raw[2:] == mac  # the MAC stays in wire order after the host-order VLAN id


@given(u32, st.booleans(), st.integers(0, 2**64 - 1))
def test_fdb_entry_roundtrip(ifindex: int, static: bool, last_seen: int) -> None:
    entry = sw.FdbEntry(ifindex, static, last_seen)
    raw = sw.encode_fdb_entry(entry)
    assert len(raw) == 16
    assert sw.decode_fdb_entry(raw) == entry


@given(u32, st.integers(0, 4095))
def test_vlan_key_roundtrip(ifindex: int, vid: int) -> None:
    raw = sw.encode_vlan_key(ifindex, vid)
    assert len(raw) == 8 and sw.decode_vlan_key(raw) == (ifindex, vid)


@given(st.integers(1, 2**32 - 1), st.integers(0, 4094), st.booleans(), st.booleans(), st.booleans())
def test_port_roundtrip(
    ifindex: int, pvid: int, trunk: bool, enabled: bool, learning: bool
) -> None:
    port = sw.Port(
        ifindex, pvid, trunk, frozenset({5}) if trunk else frozenset(), enabled, learning
    )
    raw = sw.encode_port(port)
    assert len(raw) == 8
    flags, got_pvid = sw.decode_port(raw)
    assert got_pvid == pvid
    assert bool(flags & sw.PORT_TRUNK) == trunk and bool(flags & sw.PORT_ENABLED) == enabled
    assert bool(flags & sw.PORT_LEARN) == learning


@pytest.mark.skipif(not LE, reason="byte layout spelled out for little-endian hosts")
def test_byte_layouts_little_endian() -> None:
    assert sw.encode_fdb_key(10, M["a"]) == b"\x0a\x00" + M["a"]
    assert sw.encode_fdb_entry(
        sw.FdbEntry(7, True, 1)
    ) == b"\x07\0\0\0" + b"\x01\0\0\0" + b"\x01" + bytes(7)
    assert sw.encode_port(sw.Port(3, pvid=10, trunk=True)) == b"\x07\0\0\0\x0a\0\0\0"
    assert sw.encode_vlan_key(3, 20) == b"\x03\0\0\0\x14\0\0\0"


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="share an ifindex"):
        sw.Config((sw.Port(2), sw.Port(2)))
    with pytest.raises(ValueError, match="trunk"):
        sw.Port(2, vlans=frozenset({10}))
    with pytest.raises(ValueError, match="VLAN id"):
        sw.Port(2, pvid=4095)
    with pytest.raises(ValueError, match="unknown port"):
        sw.Config((sw.Port(2),), (sw.StaticMac(M["a"], 1, 3),))
    with pytest.raises(ValueError, match="unicast"):
        sw.StaticMac(b"\xff" * 6, 1, 2)
    with pytest.raises(ValueError, match="share"):
        sw.Config((sw.Port(2),), (sw.StaticMac(M["a"], 1, 2), sw.StaticMac(M["a"], 1, 2)))


def test_default_config_is_deterministic() -> None:
    a, b = sw.default_config(), sw.default_config()
    assert a == b and a != sw.default_config(seed=2)
    assert len(a.ports) == 8 and len(a.static_macs) == 69
    assert a.features == sw.FEAT_VLAN | sw.FEAT_LEARN | sw.FEAT_STATS
    assert [p.ifindex for p in sw.default_config(ifindexes=range(20, 28)).ports] == list(
        range(20, 28)
    )
    assert sum(not p.enabled for p in a.ports) == 1 and sum(p.trunk for p in a.ports) == 2


# --- control plane ---------------------------------------------------------------------------


def test_apply_writes_every_table() -> None:
    maps = fake_maps()
    config = sw.default_config()
    cp = sw.ControlPlane(maps)
    cp.apply(config)
    assert cp.features() == config.features
    assert cp.port_ifindexes() == sorted(p.ifindex for p in config.ports)
    assert len(maps[sw.MAP_TX].store) == 8
    assert all(sw.decode_u32(v) == sw.decode_u32(k) for k, v in maps[sw.MAP_TX].store.items())
    trunk_vlans = sum(len(p.vlans) for p in config.ports if p.trunk)
    assert len(maps[sw.MAP_VLANS].store) == trunk_vlans
    fdb = cp.fdb()
    assert fdb == {(m.vlan, m.mac): sw.FdbEntry(m.ifindex, True) for m in config.static_macs}
    for port in config.ports:
        flags, pvid = sw.decode_port(maps[sw.MAP_PORTS].store[sw.encode_u32(port.ifindex)])
        assert (flags, pvid) == (port.flags, port.pvid)


def test_apply_reconciles() -> None:
    maps = fake_maps()
    cp = sw.ControlPlane(maps)
    cp.apply(small_config())
    # A learned entry behind A1 and one behind T1.
    maps[sw.MAP_FDB].update(sw.encode_fdb_key(10, M["a"]), sw.encode_fdb_entry(sw.FdbEntry(A1)))
    maps[sw.MAP_FDB].update(sw.encode_fdb_key(10, M["b"]), sw.encode_fdb_entry(sw.FdbEntry(T1)))
    smaller = sw.Config(
        (sw.Port(A1, pvid=10), sw.Port(T2, pvid=1, trunk=True, vlans=frozenset({20}))),
        (sw.StaticMac(M["g"], 20, T2),),
        learning=False,
    )
    cp.apply(smaller)
    assert cp.port_ifindexes() == [A1, T2]
    assert sorted(sw.decode_u32(k) for k in maps[sw.MAP_TX].store) == [A1, T2]
    assert [sw.decode_vlan_key(k) for k in maps[sw.MAP_VLANS].store] == [(T2, 20)]
    assert cp.fdb() == {(10, M["a"]): sw.FdbEntry(A1), (20, M["g"]): sw.FdbEntry(T2, True)}
    assert cp.features() == sw.FEAT_VLAN | sw.FEAT_STATS


def test_fine_grained_operations() -> None:
    maps = fake_maps()
    cp = sw.ControlPlane(maps)
    cp.apply(small_config())
    cp.add_static_mac(M["a"], 10, A2)
    assert cp.fdb()[(10, M["a"])] == sw.FdbEntry(A2, True)
    cp.remove_mac(M["a"], 10)
    with pytest.raises(KeyError):
        cp.remove_mac(M["a"], 10)
    with pytest.raises(ValueError):
        cp.add_static_mac(b"\x01" + bytes(5), 10, A2)
    fdb = maps[sw.MAP_FDB]
    fdb.update(sw.encode_fdb_key(10, M["b"]), sw.encode_fdb_entry(sw.FdbEntry(A1, False, 100)))
    fdb.update(sw.encode_fdb_key(10, M["c"]), sw.encode_fdb_entry(sw.FdbEntry(A2, False, 900)))
    assert cp.expire(max_age_ns=500, now_ns=1000) == 1  # b: 900 ns old; c: 100 ns
    assert (10, M["c"]) in cp.fdb() and (10, M["b"]) not in cp.fdb()
    assert cp.flush_dynamic(A1) == 0 and cp.flush_dynamic() == 1
    assert cp.fdb() == {(10, M["h"]): sw.FdbEntry(T2, True)}
    cp.set_port(sw.Port(T1, pvid=1, trunk=True, vlans=frozenset({30})))
    assert sorted(sw.decode_vlan_key(k) for k in maps[sw.MAP_VLANS].store) == [
        (T1, 30),
        (T2, 10),
        (T2, 20),
    ]
    cp.remove_port(T2)  # takes its static MAC along
    assert cp.fdb() == {}
    with pytest.raises(KeyError):
        cp.remove_port(T2)


def test_stats_sum_over_cpus() -> None:
    maps = fake_maps()
    stats = maps[sw.MAP_STATS]
    stats.store[sw.encode_u32(0)] = [struct.pack("=QQ", 3, 300), struct.pack("=QQ", 4, 400)]
    result = sw.ControlPlane(maps).stats()
    assert result["forward"] == (7, 700) and result["moved"] == (0, 0)
    assert list(result) == list(sw.STATS)


def test_missing_map_is_reported() -> None:
    maps = fake_maps()
    del maps[sw.MAP_FDB]
    with pytest.raises(KeyError, match="sw_fdb"):
        sw.ControlPlane(maps)


# --- reference model -------------------------------------------------------------------------


def test_learning_and_forwarding() -> None:
    ref = sw.Reference(small_config())
    a_to_b = frame(M["b"], M["a"])
    assert ref.process(a_to_b, A1).verdict == XDP_PASS  # b unknown: flooded by the stack
    assert ref.fdb[(10, M["a"])] == sw.FdbEntry(A1)
    out = ref.process(frame(M["a"], M["b"]), A2)
    assert (out.verdict, out.redirect_ifindex, out.frame) == (
        XDP_REDIRECT,
        A1,
        frame(M["a"], M["b"]),
    )
    assert ref.process(a_to_b, A1) == sw.Outcome(XDP_REDIRECT, a_to_b, A2)
    assert ref.stats["learned"] == (2, 2 * len(a_to_b))
    assert ref.stats["forward"][0] == 2 and ref.stats["unknown"][0] == 1


def test_moved_mac_follows_and_static_stays() -> None:
    ref = sw.Reference(small_config())
    ref.process(frame(b"\xff" * 6, M["a"]), A1)
    ref.process(frame(b"\xff" * 6, M["a"], vlan=10), T1)  # a moves to the trunk
    assert ref.fdb[(10, M["a"])] == sw.FdbEntry(T1) and ref.stats["moved"][0] == 1
    assert ref.process(frame(M["a"], M["b"]), A2).redirect_ifindex == T1
    # h is static on T2: a frame from h on A1 neither moves nor replaces it.
    ref.process(frame(M["b"], M["h"]), A1)
    assert ref.fdb[(10, M["h"])] == sw.FdbEntry(T2, True)
    out = ref.process(frame(M["h"], M["a"], vlan=10), T1)
    assert (out.verdict, out.redirect_ifindex) == (XDP_REDIRECT, T2)
    assert out.frame == frame(M["h"], M["a"], vlan=10)  # tagged to tagged: unchanged


def test_tag_push_and_pop() -> None:
    ref = sw.Reference(small_config())
    ref.process(frame(b"\xff" * 6, M["a"]), A1)
    ref.process(frame(b"\xff" * 6, M["b"], vlan=10), T1)
    pushed = ref.process(frame(M["b"], M["a"]), A1)
    assert pushed.frame == frame(M["b"], M["a"], vlan=10)
    assert pkt.parse(pushed.frame).vlan == 10
    popped = ref.process(frame(M["a"], M["b"], vlan=10), T1)
    assert popped.frame == frame(M["a"], M["b"]) and popped.redirect_ifindex == A1
    # Native VLAN between trunks travels untagged.
    ref.process(frame(b"\xff" * 6, M["c"]), T2)
    native = ref.process(frame(M["c"], M["d"]), T1)
    assert native == sw.Outcome(XDP_REDIRECT, frame(M["c"], M["d"]), T2)
    # A bare 14-byte header gets its tag too.
    bare = M["b"] + M["a"] + b"\x08\x00"
    assert ref.process(bare, A1).frame == M["b"] + M["a"] + b"\x81\x00\x00\x0a\x08\x00"


def test_drops_and_passes() -> None:
    ref = sw.Reference(small_config())
    ref.process(frame(b"\xff" * 6, M["a"]), A1)
    ref.process(frame(b"\xff" * 6, M["c"]), A1)
    cases = [
        (frame(M["a"], M["c"]), A1, XDP_DROP, "hairpin"),
        (frame(M["a"], M["b"], vlan=30), T1, XDP_DROP, "vlan"),  # trunk does not carry 30
        (frame(M["a"], M["b"], vlan=20), A1, XDP_DROP, "vlan"),  # tagged on an access port
        (frame(M["a"], M["b"], vlan=0), T1, XDP_DROP, "invalid"),  # priority tag
        (frame(M["a"], M["b"], vlan=4095), T1, XDP_DROP, "invalid"),
        (M["a"] + M["b"] + b"\x81\x00\x00\x0a", T1, XDP_DROP, "invalid"),  # truncated tag
        (frame(M["a"], b"\x01" + M["b"][1:]), A2, XDP_DROP, "invalid"),  # group source
        (frame(M["a"], bytes(6)), A2, XDP_DROP, "invalid"),
        (frame(M["a"], M["b"]), 30, XDP_DROP, "port_down"),
        (frame(M["a"], M["b"]), 99, XDP_PASS, "not_port"),
        (frame(b"\xff" * 6, M["b"]), A2, XDP_PASS, "flood"),
        (frame(b"\x33\x33\0\0\0\x01", M["b"]), A2, XDP_PASS, "flood"),
        (frame(M["g"], M["b"]), A2, XDP_PASS, "unknown"),
        (b"\x02" * 13, A1, XDP_DROP, "invalid"),
    ]
    for data, ifindex, verdict, reason in cases:
        before = ref.stats[reason][0]
        out = ref.process(data, ifindex)
        assert out == sw.Outcome(verdict, data), (reason, data.hex())
        assert ref.stats[reason][0] == before + 1, reason


def test_disabled_egress_and_no_learning_port() -> None:
    config = small_config(static_macs=(sw.StaticMac(M["g"], 20, 30),))
    ref = sw.Reference(config)
    assert ref.process(frame(M["g"], M["a"], vlan=20), T1).verdict == XDP_DROP
    assert ref.stats["port_down"][0] == 1
    ref.process(frame(b"\xff" * 6, M["e"]), 31)  # port 31 does not learn
    assert (20, M["e"]) not in ref.fdb
    ref.process(frame(b"\xff" * 6, M["f"], vlan=10), T1)
    out = ref.process(frame(M["f"], M["a"], vlan=10), T2)  # dst learnt behind T1
    assert out.redirect_ifindex == T1


def test_learning_off_and_vlan_filtering_off() -> None:
    ref = sw.Reference(small_config(learning=False))
    ref.process(frame(b"\xff" * 6, M["a"]), A1)
    assert ref.fdb == {(10, M["h"]): sw.FdbEntry(T2, True)}
    flat = sw.Reference(small_config(vlan_filtering=False))
    tagged = frame(b"\xff" * 6, M["a"], vlan=30)
    assert flat.process(tagged, A1).verdict == XDP_PASS
    assert (0, M["a"]) in flat.fdb
    out = flat.process(frame(M["a"], M["b"], vlan=99), T1)  # tags are payload
    assert out == sw.Outcome(XDP_REDIRECT, frame(M["a"], M["b"], vlan=99), A1)


def test_stats_off_counts_nothing() -> None:
    ref = sw.Reference(small_config(stats=False))
    ref.process(frame(b"\xff" * 6, M["a"]), A1)
    assert all(v == (0, 0) for v in ref.stats.values())


def test_full_table_stops_learning() -> None:
    ref = sw.Reference(small_config(), fdb_capacity=3)
    for name in "abcd":
        ref.process(frame(b"\xff" * 6, M[name]), A1)
    assert len(ref.fdb) == 3 and ref.stats["learned"][0] == 2
    ref.process(frame(b"\xff" * 6, M["a"], vlan=10), T1)  # a move needs no new slot
    assert ref.fdb[(10, M["a"])].ifindex == T1


# --- traffic ---------------------------------------------------------------------------------


def test_flows_are_distinct_deterministic_and_mostly_known() -> None:
    config = sw.default_config()
    flows = sw.flows(config, 3000, random.Random(1))
    assert len(flows) == len(set(flows)) == 3000
    assert flows == sw.flows(config, 3000, random.Random(1))
    ref = sw.Reference(config)
    for data, ifindex in sw.warmup(config, flows):
        assert ref.process(data, ifindex).verdict == XDP_PASS
    rng = random.Random(2)
    verdicts = Counter()
    for flow in flows:
        data, ifindex = sw.packet(flow, rng)
        assert ifindex == flow.ingress
        parsed = pkt.parse(data)
        assert parsed.eth_src == flow.src and parsed.eth_dst == flow.dst
        assert parsed.vlan == (flow.vlan if flow.tagged else None)
        out = ref.process(data, ifindex)
        verdicts[out.verdict] += 1
        if out.verdict == XDP_REDIRECT:
            assert out.redirect_ifindex == flow.egress
    assert verdicts[XDP_REDIRECT] > 0.8 * len(flows)
    assert ref.stats["unknown"][0] < 0.07 * len(flows)


def test_edge_cases_cover_every_decision() -> None:
    config = sw.default_config()
    ref = sw.Reference(config)
    cases = sw.edge_cases(config, random.Random(3))
    assert all(len(data) >= pkt.ETH_HLEN for data, _ in cases)  # test runs need 14 bytes
    for data, ifindex in cases:
        ref.process(data, ifindex)
    hit = {name for name, (packets, _) in ref.stats.items() if packets}
    assert hit == set(sw.STATS) - {"error"}


# --- the control plane's bytes drive a map-reading datapath like the model -------------------


def datapath(maps: dict[str, FakeMap], data: bytes, ingress: int) -> tuple[int, bytes, int]:
    """xdp_switch re-read from the C source, working only on the fake maps' bytes."""

    def u32(v: int) -> bytes:
        return struct.pack("=I", v)

    features = struct.unpack("=I", maps[sw.MAP_CONFIG].lookup(u32(0)))[0]
    raw = maps[sw.MAP_PORTS].lookup(u32(ingress))
    if raw is None:
        return XDP_PASS, data, 0
    in_flags, in_pvid, _ = struct.unpack("=IHH", raw)
    if not in_flags & 1:
        return XDP_DROP, data, 0

    def has_vlan(flags: int, pvid: int, ifindex: int, vid: int) -> bool:
        if vid == pvid:
            return True
        if not flags & 2:
            return False
        member = maps[sw.MAP_VLANS].lookup(struct.pack("=II", ifindex, vid))
        return member is not None and bool(struct.unpack("=I", member)[0] & 1)

    vid, tagged = 0, False
    if features & 1:
        if data[12:14] == b"\x81\x00":
            if len(data) < 18:
                return XDP_DROP, data, 0
            vid = struct.unpack("!H", data[14:16])[0] & 0xFFF
            if vid in (0, 0xFFF) or not has_vlan(in_flags, in_pvid, ingress, vid):
                return XDP_DROP, data, 0
            tagged = True
        else:
            vid = in_pvid
            if not vid:
                return XDP_DROP, data, 0
    if data[6] & 1 or data[6:12] == bytes(6):
        return XDP_DROP, data, 0
    fdb = maps[sw.MAP_FDB]
    if features & 2 and in_flags & 4:
        key = struct.pack("=H6s", vid, data[6:12])
        entry = fdb.lookup(key)
        fresh = struct.pack("=IIQ", ingress, 0, 0)
        try:
            if entry is None:
                fdb.update(key, fresh, BPF_NOEXIST)
            elif (
                not struct.unpack("=IIQ", entry)[1] & 1
                and struct.unpack("=IIQ", entry)[0] != ingress
            ):
                fdb.update(key, fresh, BPF_EXIST)
        except MapFull:
            pass
    if data[0] & 1:
        return XDP_PASS, data, 0
    entry = fdb.lookup(struct.pack("=H6s", vid, data[0:6]))
    if entry is None:
        return XDP_PASS, data, 0
    egress = struct.unpack("=IIQ", entry)[0]
    if egress == ingress:
        return XDP_DROP, data, 0
    raw = maps[sw.MAP_PORTS].lookup(u32(egress))
    if raw is None or not struct.unpack("=IHH", raw)[0] & 1:
        return XDP_DROP, data, 0
    out_flags, out_pvid, _ = struct.unpack("=IHH", raw)
    if features & 1:
        if not has_vlan(out_flags, out_pvid, egress, vid):
            return XDP_DROP, data, 0
        if tagged and vid == out_pvid:
            data = data[:12] + data[16:]
        elif not tagged and vid != out_pvid:
            data = data[:12] + struct.pack("!HH", 0x8100, vid) + data[12:]
    if maps[sw.MAP_TX].lookup(u32(egress)) is None:
        return XDP_DROP, data, 0
    return XDP_REDIRECT, data, egress


def test_set_config_follows_apply_on_a_learned_table() -> None:
    """Reference.set_config keeps exactly what ControlPlane.apply keeps in a MAC table the
    data plane has filled: statics rewritten, a dropped static and a removed port's MACs gone,
    learned MACs elsewhere kept."""
    config = small_config()
    maps = fake_maps()
    cp = sw.ControlPlane(maps)
    cp.apply(config)
    ref = sw.Reference(config)

    def both(data: bytes, ingress: int) -> None:
        want = ref.process(data, ingress)
        verdict, out, egress = datapath(maps, data, ingress)
        assert (verdict, out, egress or None) == (want.verdict, want.frame,
                                                  want.redirect_ifindex), data.hex()

    both(frame(sw.BROADCAST, M["a"]), A1)
    both(frame(sw.BROADCAST, M["b"], vlan=20), T1)
    both(frame(sw.BROADCAST, M["c"]), A2)
    ports = tuple(dataclasses.replace(p, pvid=20) if p.ifindex == A2 else p
                  for p in config.ports if p.ifindex != T1)
    new = dataclasses.replace(config, ports=ports, static_macs=(sw.StaticMac(M["a"], 10, T2),))
    cp.apply(new)
    ref.set_config(new)
    assert ref.fdb == {(10, M["a"]): sw.FdbEntry(T2, True), (10, M["c"]): sw.FdbEntry(A2)}
    assert ref.tx_ports == {A1, A2, T2, 30, 31}
    assert cp.fdb() == ref.fdb
    # Traffic goes on under the new configuration: A2's frames are now in VLAN 20 (where `a`
    # is unknown), VLAN 10 reaches `a` through its static entry, T1 is no port any more.
    both(frame(M["a"], M["c"]), A2)
    both(frame(M["a"], M["d"]), A1)
    both(frame(M["d"], M["e"], vlan=10), T1)
    assert cp.fdb() == ref.fdb and (20, M["c"]) in ref.fdb


@pytest.mark.parametrize("variant", ["default", "flat", "small"])
def test_control_plane_bytes_agree_with_model(variant: str) -> None:
    config = {
        "default": sw.default_config(),
        "flat": dataclasses.replace(sw.default_config(), vlan_filtering=False),
        "small": small_config(),
    }[variant]
    maps = fake_maps()
    sw.ControlPlane(maps).apply(config)
    ref = sw.Reference(config)
    rng = random.Random(4)
    flows = sw.flows(config, 400, rng)
    frames = (
        sw.warmup(config, flows)[:200]
        + [sw.packet(f, rng) for f in flows]
        + sw.edge_cases(config, rng)
    )
    for data, ifindex in frames:
        want = ref.process(data, ifindex)
        verdict, out, egress = datapath(maps, data, ifindex)
        assert (verdict, out, egress or None) == (
            want.verdict,
            want.frame,
            want.redirect_ifindex,
        ), data.hex()
    kernel_fdb = {
        sw.decode_fdb_key(k): sw.decode_fdb_entry(v) for k, v in maps[sw.MAP_FDB].store.items()
    }
    assert kernel_fdb == ref.fdb
