"""Pure tests of the firewall NF: encoders, rule compilation, control plane, reference model."""

from __future__ import annotations

import random
import struct
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from morpheus.nf import firewall as fw
from morpheus.nf._l4 import Flow, flow_frame
from morpheus.nf.common import XDP_DROP, XDP_PASS
from morpheus.traffic import packet as pkt

TCP, UDP, ICMP = pkt.IPPROTO_TCP, pkt.IPPROTO_UDP, pkt.IPPROTO_ICMP
LE = sys.byteorder == "little"


class FakeMap:
    """A dict behind the MapLike protocol, logging every write (to a log it may share)."""

    def __init__(self, name: str, log: list[tuple[str, str, bytes]] | None = None) -> None:
        self.name = name
        self.store: dict[bytes, bytes] = {}
        self.log: list[tuple[str, str, bytes]] = [] if log is None else log

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        self.store[key] = value
        self.log.append(("update", self.name, key))

    def delete(self, key: bytes) -> None:
        del self.store[key]  # KeyError if missing, as the protocol says
        self.log.append(("delete", self.name, key))

    def lookup(self, key: bytes) -> bytes | None:
        return self.store.get(key)

    def keys(self) -> Iterator[bytes]:
        return iter(list(self.store))


def fake_maps(log: list[tuple[str, str, bytes]] | None = None) -> dict[str, FakeMap]:
    return {
        n: FakeMap(n, log)
        for n in (
            fw.MAP_CONFIG,
            fw.MAP_SRC,
            fw.MAP_DST,
            fw.MAP_SPORT,
            fw.MAP_DPORT,
            fw.MAP_PROTO,
            fw.MAP_ACTIONS,
            fw.MAP_CONNTRACK,
            fw.MAP_STATS,
            fw.MAP_RULE_STATS,
        )
    }


def datapath_classify(
    maps: dict[str, FakeMap], src: int, dst: int, proto: int, sport: int | None, dport: int | None
) -> int | None:
    """What xdp_firewall's classify() computes from the map contents: the matching rule id."""
    _, _, _, words = fw.decode_config(maps[fw.MAP_CONFIG].store[fw.encode_u32(0)])

    def lpm(table: FakeMap, addr: int) -> int | None:
        best = None
        for key, value in table.store.items():
            prefix = fw.decode_lpm_key(key)
            if prefix.contains(addr) and (best is None or prefix.length > best[0]):
                best = (prefix.length, fw.decode_bitvec(value))
        return None if best is None else best[1]

    def port(table: FakeMap, value: int | None) -> int | None:
        raw = table.lookup(fw.encode_u32(fw.PORT_NONE if value is None else value))
        if raw is None and value is not None:
            raw = table.lookup(fw.encode_u32(fw.PORT_DEFAULT))
        return None if raw is None else fw.decode_bitvec(raw)

    vectors = [
        lpm(maps[fw.MAP_SRC], src),
        lpm(maps[fw.MAP_DST], dst),
        fw.decode_bitvec(maps[fw.MAP_PROTO].store[fw.encode_u32(proto)]),
        port(maps[fw.MAP_SPORT], sport),
        port(maps[fw.MAP_DPORT], dport),
    ]
    if any(v is None for v in vectors):
        return None
    bits = (1 << (64 * words)) - 1
    for v in vectors:
        bits &= v
    if not bits:
        return None
    rank = (bits & -bits).bit_length() - 1
    _, rule_id = fw.decode_action(maps[fw.MAP_ACTIONS].store[fw.encode_u32(rank)])
    return rule_id


def reference_rule(config: fw.FirewallConfig, *args: int | None) -> int | None:
    rule = fw.Reference(config).classify(*args)  # type: ignore[arg-type]
    return None if rule is None else rule.rule_id


def probe_tuples(config: fw.FirewallConfig, rng: random.Random, count: int):
    for flow in fw.flows(config, count, rng):
        ports = (flow.sport, flow.dport) if flow.proto in (TCP, UDP) else (None, None)
        yield (flow.src, flow.dst, flow.proto, *ports)
        if flow.proto in (TCP, UDP):
            yield (flow.src, flow.dst, flow.proto, None, None)  # as a later fragment
    for rule in config.rules:
        if not rule.port_wildcard:
            src = rule.src.addr | 1
            dst = rule.dst.addr | 1
            proto = rule.proto or TCP
            for s, d in (
                (rule.sport.lo, rule.dport.lo),
                (rule.sport.hi, rule.dport.hi),
                (rule.sport.lo, (rule.dport.hi + 1) & 0xFFFF),
                ((rule.sport.lo - 1) & 0xFFFF, rule.dport.lo),
            ):
                yield (src, dst, proto, s, d)


# ------------------------------------------------------------------------------- encoders

u32s = st.integers(0, 0xFFFFFFFF)
u16s = st.integers(0, 0xFFFF)


@st.composite
def prefixes(draw) -> fw.Prefix:
    length = draw(st.integers(0, 32))
    mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
    return fw.Prefix(draw(u32s) & mask, length)


@given(prefixes())
def test_lpm_key_round_trip(prefix: fw.Prefix) -> None:
    raw = fw.encode_lpm_key(prefix)
    assert len(raw) == 8
    assert fw.decode_lpm_key(raw) == prefix
    assert raw[4:] == prefix.addr.to_bytes(4, "big")  # the address stays in network order


def test_lpm_key_layout() -> None:
    raw = fw.encode_lpm_key(fw.Prefix.parse("10.1.0.0/16"))
    assert raw == (16).to_bytes(4, sys.byteorder) + bytes([10, 1, 0, 0])


@given(st.integers(0, (1 << fw.MAX_RULES) - 1))
def test_bitvec_round_trip(bits: int) -> None:
    raw = fw.encode_bitvec(bits)
    assert len(raw) == 64
    assert fw.decode_bitvec(raw) == bits


def test_bitvec_layout_and_width() -> None:
    raw = fw.encode_bitvec(1 << 65)
    assert struct.unpack("=8Q", raw) == (0, 2, 0, 0, 0, 0, 0, 0)
    with pytest.raises(ValueError):
        fw.encode_bitvec(1 << fw.MAX_RULES)


@given(
    st.sampled_from(list(fw.Action)),
    st.integers(0, 3),
    st.booleans(),
    st.booleans(),
    st.integers(0, fw.WORDS),
)
def test_config_round_trip(action, _unused, conntrack, stats, words) -> None:
    raw = fw.encode_config(action, conntrack, stats, words)
    assert len(raw) == 16
    assert fw.decode_config(raw) == (action, conntrack, stats, words)


@given(st.sampled_from(list(fw.Action)), u32s)
def test_action_round_trip(action, rule_id) -> None:
    raw = fw.encode_action(action, rule_id)
    assert len(raw) == 8
    assert fw.decode_action(raw) == (action, rule_id)


@given(u32s, u32s, u16s, u16s, st.integers(0, 255))
def test_flow_key_round_trip(src, dst, sport, dport, proto) -> None:
    raw = fw.encode_flow_key(src, dst, sport, dport, proto)
    assert len(raw) == 16
    assert raw[13:] == b"\0\0\0"  # explicit padding: hash keys compare every byte
    assert raw[8:10] == sport.to_bytes(2, "big")
    assert fw.decode_flow_key(raw) == (src, dst, sport, dport, proto)


@given(st.integers(0, 2**64 - 1), u32s, st.booleans())
def test_ct_value_round_trip(packets, rule, reply) -> None:
    raw = fw.encode_ct_value(packets, rule, reply)
    assert len(raw) == 16
    assert fw.decode_ct_value(raw) == (packets, rule, reply)


def test_u32_is_host_order() -> None:
    assert fw.encode_u32(0x10000) == (0x10000).to_bytes(4, sys.byteorder)
    assert fw.decode_u32(fw.encode_u32(443)) == 443


# -------------------------------------------------------------------------- configuration


def test_prefix_and_range_validation() -> None:
    with pytest.raises(ValueError):
        fw.Prefix(pkt.ip4("10.0.0.1"), 8)
    with pytest.raises(ValueError):
        fw.Prefix(0, 33)
    with pytest.raises(ValueError):
        fw.PortRange(10, 9)
    with pytest.raises(ValueError):
        fw.Rule(1, 1, fw.Action.DROP, proto=ICMP, dport=fw.PortRange(80, 80))
    with pytest.raises(ValueError):
        fw.FirewallConfig((fw.Rule(1, 1, fw.Action.DROP), fw.Rule(1, 2, fw.Action.DROP)))
    assert fw.Prefix.parse("10.1.2.0/24").contains(pkt.ip4("10.1.2.99"))
    assert fw.ANY_PREFIX.covers(fw.Prefix.parse("1.2.3.4/32"))


def test_generator_is_deterministic_and_classbench_like() -> None:
    a, b = fw.default_config(7), fw.default_config(7)
    assert a == b
    assert a != fw.default_config(8)
    rules = a.rules
    assert len(rules) == 300
    assert {r.action for r in rules} == {fw.Action.ACCEPT, fw.Action.DROP}
    assert {r.proto for r in rules} >= {TCP, UDP, None, ICMP}
    lengths = {r.src.length for r in rules} | {r.dst.length for r in rules}
    assert {0, 32, 24, 16} <= lengths
    ranges = {r.dport for r in rules}
    assert fw.PortRange(1024, 0xFFFF) in ranges and fw.ANY_PORT in ranges
    assert any(
        r.lo != r.hi and r not in (fw.ANY_PORT, fw.PortRange(1024, 0xFFFF), fw.PortRange(0, 1023))
        for r in ranges
    )
    assert not any(r.src.length == 0 and r.dst.length == 0 and r.port_wildcard for r in rules)
    nested = sum(
        1
        for r in rules
        for q in rules
        if r is not q and 0 < q.src.length < r.src.length and q.src.covers(r.src)
    )
    assert nested > 0


# ------------------------------------------------------------------- compilation, control


def test_compiled_tables_agree_with_linear_search() -> None:
    config = fw.default_config(3)
    maps = fake_maps()
    fw.ControlPlane(maps).apply(config)
    rng = random.Random(3)
    checked = 0
    for probe in probe_tuples(config, rng, 600):
        assert datapath_classify(maps, *probe) == reference_rule(config, *probe), probe
        checked += 1
    assert checked > 900


def test_port_tables_keep_only_non_default_ports() -> None:
    compiled = fw.compile_rules(fw.default_config().rules)
    default = compiled.dport[fw.PORT_DEFAULT]
    explicit = [p for p in compiled.dport if p < 0x10000]
    assert all(compiled.dport[p] != default for p in explicit)
    assert len(explicit) < 0x10000 // 2
    assert compiled.words == (300 + 63) // 64


def test_apply_writes_exactly_the_tables() -> None:
    config = fw.default_config()
    log: list[tuple[str, str, bytes]] = []
    maps = fake_maps(log)
    maps[fw.MAP_SPORT].update(fw.encode_u32(4242), fw.encode_bitvec(1))  # stale entry
    del log[:]
    cp = fw.ControlPlane(maps)
    cp.apply(config)
    tables = fw.compile_rules(config.rules).tables()
    for name in (fw.MAP_SRC, fw.MAP_DST, fw.MAP_SPORT, fw.MAP_DPORT, fw.MAP_PROTO):
        assert maps[name].store == tables[name], name
    assert len(maps[fw.MAP_PROTO].store) == 256
    assert fw.decode_config(maps[fw.MAP_CONFIG].store[fw.encode_u32(0)]) == (
        fw.Action.DROP,
        True,
        True,
        5,
    )
    assert len(maps[fw.MAP_ACTIONS].store) == fw.MAX_RULES
    written = {name for _, name, _ in log}
    assert fw.MAP_CONNTRACK not in written and fw.MAP_STATS not in written
    # Actions first, the config (whose rule_words exposes the vectors) last.
    assert log[0][1] == fw.MAP_ACTIONS and log[-1][1] == fw.MAP_CONFIG
    assert ("delete", fw.MAP_SPORT, fw.encode_u32(4242)) in log
    assert cp.writes == len(log)
    writes = cp.writes
    cp.apply(config)  # a fresh apply rewrites everything it owns
    assert cp.writes > writes


def test_rule_changes_recompile_with_few_writes() -> None:
    config = fw.default_config(5)
    maps = fake_maps()
    cp = fw.ControlPlane(maps)
    cp.apply(config)
    before = cp.writes
    cp.set_default_policy(fw.Action.ACCEPT)
    assert cp.writes - before == 1  # only fw_config changes
    assert fw.decode_config(maps[fw.MAP_CONFIG].store[fw.encode_u32(0)])[0] == fw.Action.ACCEPT

    victim = config.ordered()[10]
    assert cp.remove_rule(victim.rule_id) == victim
    with pytest.raises(KeyError):
        cp.remove_rule(victim.rule_id)
    top = fw.Rule(
        5000,
        0,
        fw.Action.DROP,
        fw.Prefix.parse("10.0.0.0/8"),
        dport=fw.PortRange(22, 22),
        proto=TCP,
    )
    cp.add_rule(top)
    with pytest.raises(ValueError):
        cp.add_rule(top)
    assert cp.config.ordered()[0] == top
    rng = random.Random(1)
    for probe in probe_tuples(cp.config, rng, 300):
        assert datapath_classify(maps, *probe) == reference_rule(cp.config, *probe)
    # A fresh compile of the same rules yields the same tables: the diffs were complete.
    tables = fw.compile_rules(cp.config.rules).tables()
    for name in (fw.MAP_SRC, fw.MAP_DST, fw.MAP_SPORT, fw.MAP_DPORT, fw.MAP_PROTO):
        assert maps[name].store == tables[name], name


def test_shrinking_rule_set_clears_stale_actions() -> None:
    maps = fake_maps()
    cp = fw.ControlPlane(maps)
    rules = tuple(
        fw.Rule(i, i, fw.Action.ACCEPT, dst=fw.Prefix(pkt.ip4("10.0.0.0") + i, 32))
        for i in range(1, 70)
    )
    cp.apply(fw.FirewallConfig(rules))
    assert fw.decode_config(maps[fw.MAP_CONFIG].store[fw.encode_u32(0)])[3] == 2
    for i in range(1, 66):
        cp.remove_rule(i)
    assert fw.decode_config(maps[fw.MAP_CONFIG].store[fw.encode_u32(0)])[3] == 1
    for rank in range(4, 69):
        assert fw.decode_action(maps[fw.MAP_ACTIONS].store[fw.encode_u32(rank)]) == (
            fw.Action.DROP,
            0,
        )


# ------------------------------------------------------------------------ reference model

A = pkt.ip4("10.1.2.3")
B = pkt.ip4("192.168.7.9")


def frame(src=A, dst=B, proto=TCP, sport=40000, dport=80, flags=pkt.TCP_ACK, **kw) -> bytes:
    return flow_frame(Flow(src, dst, proto, sport, dport), tcp_flags=flags, **kw)


def small_config(**kw) -> fw.FirewallConfig:
    rules = (
        fw.Rule(
            1,
            10,
            fw.Action.DROP,
            src=fw.Prefix.parse("10.1.2.0/24"),
            proto=TCP,
            dport=fw.PortRange(22, 22),
        ),
        fw.Rule(
            2,
            20,
            fw.Action.ACCEPT,
            src=fw.Prefix.parse("10.0.0.0/8"),
            proto=TCP,
            dport=fw.PortRange(1, 1023),
        ),
        fw.Rule(
            3,
            30,
            fw.Action.DROP,
            dst=fw.Prefix.parse("192.168.7.0/24"),
            proto=UDP,
            sport=fw.PortRange(1024, 0xFFFF),
            dport=fw.PortRange(5000, 5099),
        ),
        fw.Rule(4, 40, fw.Action.ACCEPT, dst=fw.Prefix.parse("192.168.0.0/16")),
        fw.Rule(5, 50, fw.Action.ACCEPT, proto=None, dport=fw.PortRange(53, 53)),
    )
    return fw.FirewallConfig(rules, **kw)


def verdict(ref: fw.Reference, data: bytes) -> int:
    out = ref.process(data, 1)
    assert out.frame == data and out.redirect_ifindex is None  # never rewritten
    return out.verdict


def test_priority_wildcards_and_ranges() -> None:
    ref = fw.Reference(small_config(conntrack=False))
    assert ref.classify(A, B, TCP, 40000, 22).rule_id == 1  # beats the broader accept
    assert ref.classify(pkt.ip4("10.9.9.9"), B, TCP, 40000, 22).rule_id == 2
    assert ref.classify(A, B, TCP, 40000, 1023).rule_id == 2
    assert ref.classify(A, B, TCP, 40000, 1024).rule_id == 4  # falls to the dst wildcard rule
    assert ref.classify(A, B, UDP, 1024, 5099).rule_id == 3
    assert ref.classify(A, B, UDP, 1023, 5000).rule_id == 4  # sport outside 1024-65535
    assert ref.classify(A, B, UDP, 2000, 5100).rule_id == 4
    outside, dns = pkt.ip4("185.1.1.1"), pkt.ip4("8.8.8.8")
    assert ref.classify(A, dns, TCP, 2000, 53).rule_id == 2  # rule 2 first
    assert ref.classify(outside, dns, UDP, 2000, 53).rule_id == 5
    assert ref.classify(outside, dns, TCP, 2000, 53).rule_id == 5  # any protocol
    assert ref.classify(outside, dns, TCP, 2000, 54) is None
    # Without ports only rules that leave both ports wildcard match.
    assert ref.classify(A, B, TCP, None, None).rule_id == 4
    assert ref.classify(A, pkt.ip4("8.8.8.8"), ICMP, None, None) is None
    assert verdict(ref, frame(dport=22)) == XDP_DROP
    assert verdict(ref, frame(dport=443)) == XDP_PASS
    assert verdict(ref, frame(dst=pkt.ip4("8.8.8.8"), dport=8443)) == XDP_DROP  # default


def test_default_policy() -> None:
    other = frame(src=pkt.ip4("185.1.1.1"), dst=pkt.ip4("8.8.8.8"), dport=443)
    assert verdict(fw.Reference(small_config()), other) == XDP_DROP
    assert verdict(fw.Reference(small_config(default_action=fw.Action.ACCEPT)), other) == XDP_PASS


def test_parser_corners() -> None:
    ref = fw.Reference(small_config(conntrack=False))
    good = frame(dport=22)
    assert verdict(ref, good[: pkt.ETH_HLEN]) == XDP_DROP  # truncated IPv4
    assert verdict(ref, good[:20]) == XDP_DROP
    assert verdict(ref, good[: 14 + 20 + 19]) == XDP_DROP  # truncated TCP
    bad = bytearray(good)
    bad[14] = 0x44  # IHL 4
    assert verdict(ref, bytes(bad)) == XDP_DROP
    bad[14] = 0x55  # version 5
    assert verdict(ref, bytes(bad)) == XDP_DROP
    assert verdict(ref, frame(dport=22, options=bytes([1] * 40))) == XDP_DROP  # rule 1 again
    assert verdict(ref, frame(dport=443, options=b"\x01" * 8)) == XDP_PASS
    assert verdict(ref, frame(dport=22, vlan=100)) == XDP_DROP
    assert verdict(ref, frame(dport=443, vlan=100)) == XDP_PASS
    assert ref.process(good[:16] + b"\x81\x00", 1).verdict == XDP_DROP  # truncated tag
    for non_ip in (
        pkt.ethernet(b"\xff" * 6, b"\x02" * 6, pkt.ETH_P_ARP, b"\0" * 28),
        pkt.ethernet(b"\xff" * 6, b"\x02" * 6, pkt.ETH_P_IPV6, b"\0" * 40),
    ):
        assert verdict(ref, non_ip) == XDP_PASS
    # A later fragment has no ports: rule 1 (port 22) cannot match, rule 4 (wildcard) does.
    assert verdict(ref, frame(dport=22, flags_frag=10)) == XDP_PASS
    # The first fragment has its ports.
    assert verdict(ref, frame(dport=22, flags_frag=pkt.IP_MF)) == XDP_DROP
    # A later fragment is never too short for its (absent) transport header.
    assert verdict(ref, frame(dport=22, flags_frag=10)[: 14 + 20]) == XDP_PASS
    assert verdict(ref, frame(proto=ICMP, dst=pkt.ip4("8.8.8.8"))) == XDP_DROP


def test_conntrack_lets_established_flows_through() -> None:
    config = fw.FirewallConfig(
        (
            fw.Rule(
                1,
                1,
                fw.Action.ACCEPT,
                dst=fw.Prefix.parse("192.168.0.0/16"),
                proto=TCP,
                dport=fw.PortRange(80, 80),
            ),
            fw.Rule(
                2,
                2,
                fw.Action.ACCEPT,
                dst=fw.Prefix.parse("192.168.0.0/16"),
                proto=UDP,
                dport=fw.PortRange(53, 53),
            ),
        )
    )
    ref = fw.Reference(config)
    reply = {"src": B, "dst": A, "sport": 80, "dport": 40000}
    assert verdict(ref, frame(**reply, flags=pkt.TCP_SYN | pkt.TCP_ACK)) == XDP_DROP
    assert verdict(ref, frame(flags=pkt.TCP_ACK)) == XDP_PASS  # accepted, opens nothing
    assert not ref.conntrack
    assert verdict(ref, frame(flags=pkt.TCP_SYN | pkt.TCP_RST)) == XDP_PASS
    assert not ref.conntrack
    assert verdict(ref, frame(flags=pkt.TCP_SYN)) == XDP_PASS
    assert len(ref.conntrack) == 2
    assert verdict(ref, frame(**reply, flags=pkt.TCP_SYN | pkt.TCP_ACK)) == XDP_PASS
    assert verdict(ref, frame(**reply, flags=pkt.TCP_FIN | pkt.TCP_ACK)) == XDP_PASS
    assert verdict(ref, frame(**reply, flags=pkt.TCP_RST)) == XDP_PASS  # hit, then closed
    assert not ref.conntrack
    assert verdict(ref, frame(**reply, flags=pkt.TCP_ACK)) == XDP_DROP
    # UDP: any accepted datagram opens the flow.
    assert verdict(ref, frame(proto=UDP, dport=53)) == XDP_PASS
    assert verdict(ref, frame(proto=UDP, src=B, dst=A, sport=53, dport=40000)) == XDP_PASS
    hits = ref.stats[fw.Stat.CT_HIT, "packets"]
    assert hits == 4 and ref.stats[fw.Stat.CT_NEW, "packets"] == 2
    # Disabled: no state, replies are classified (and dropped).
    off = fw.Reference(fw.FirewallConfig(config.rules, conntrack=False))
    assert verdict(off, frame(flags=pkt.TCP_SYN)) == XDP_PASS
    assert not off.conntrack
    assert verdict(off, frame(**reply)) == XDP_DROP


def test_conntrack_survives_config_change() -> None:
    config = small_config()
    ref = fw.Reference(config)
    assert verdict(ref, frame(dport=443, flags=pkt.TCP_SYN)) == XDP_PASS
    ref.set_config(fw.FirewallConfig(config.rules[:1]))
    assert verdict(ref, frame(dport=443)) == XDP_PASS  # established
    assert verdict(ref, frame(dport=444)) == XDP_DROP


def test_conntrack_entries_hold_what_the_map_holds() -> None:
    """Each entry mirrors a fw_conntrack value: packet count, the accepting rule's rank at the
    time of the opening packet (RULE_NONE for the default policy), and the direction."""
    config = small_config(default_action=fw.Action.ACCEPT)
    ref = fw.Reference(config)
    key, rev = (A, B, 40000, 80, TCP), (B, A, 80, 40000, TCP)
    assert verdict(ref, frame(flags=pkt.TCP_SYN)) == XDP_PASS  # rule 2, rank 1, accepts
    assert ref.conntrack == {key: fw.CtEntry(1, 1, False), rev: fw.CtEntry(0, 1, True)}
    verdict(ref, frame())
    verdict(ref, frame(src=B, dst=A, sport=80, dport=40000))
    assert (ref.conntrack[key].packets, ref.conntrack[rev].packets) == (2, 1)
    # A rule change shifts ranks but leaves the stored ones alone, as the kernel does.
    ref.set_config(fw.FirewallConfig((fw.Rule(9, 1, fw.Action.DROP, proto=ICMP),
                                      *config.rules), default_action=fw.Action.ACCEPT))
    assert ref.conntrack[key].rule == 1
    udp = frame(src=pkt.ip4("172.16.0.1"), dst=pkt.ip4("8.8.8.8"), proto=UDP, sport=1234,
                dport=4321)
    assert verdict(ref, udp) == XDP_PASS
    opened = ref.conntrack[pkt.ip4("172.16.0.1"), pkt.ip4("8.8.8.8"), 1234, 4321, UDP]
    assert opened == fw.CtEntry(1, fw.RULE_NONE, False)


def test_stats_follow_the_switch() -> None:
    ref = fw.Reference(small_config())
    data = frame(dport=22)
    ref.process(data, 1)
    assert ref.stats[fw.Stat.RULE_DROP, "packets"] == 1
    assert ref.stats[fw.Stat.RULE_DROP, "bytes"] == len(data)
    assert ref.rule_stats[1, "packets"] == 1
    quiet = fw.Reference(small_config(stats=False))
    quiet.process(data, 1)
    assert not quiet.stats and not quiet.rule_stats


# -------------------------------------------------------------------------------- traffic


def test_flows_spread_over_rules_and_verdicts() -> None:
    config = fw.default_config()
    rng = random.Random(11)
    flows = fw.flows(config, 2000, rng)
    assert len(flows) == len(set(flows)) == 2000
    ref = fw.Reference(fw.FirewallConfig(config.rules, conntrack=False))
    verdicts = set()
    for flow in flows:
        data, ifindex = fw.packet(flow, rng)
        parsed = pkt.parse(data)
        assert parsed is not None and parsed.ip_src == flow.src and parsed.ip_dst == flow.dst
        assert pkt.checksum(data[14:34]) == 0
        verdicts.add(ref.process(data, ifindex).verdict)
    assert verdicts == {XDP_PASS, XDP_DROP}
    assert len({k for k in ref.rule_stats if k[1] == "packets"}) > 200
    assert ref.stats[fw.Stat.DEFAULT_DROP, "packets"] > 0


def test_edge_cases_cover_every_outcome() -> None:
    config = fw.default_config()
    cases = fw.edge_cases(config, random.Random(2))
    assert len(cases) > 60
    assert all(len(f) >= pkt.ETH_HLEN for f, _ in cases)
    ref = fw.Reference(config)
    for data, ifindex in cases:
        ref.process(data, ifindex)
    for stat in set(fw.Stat) - {fw.Stat.DEFAULT_ACCEPT}:  # the default policy is DROP
        assert ref.stats[stat, "packets"] > 0, stat
