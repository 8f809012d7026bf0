"""firewall: an ACL classifier in the style of bpf-iptables, with connection tracking.

Rules are 5-tuple matches (source and destination prefix, protocol or any, source and
destination port range) with a priority and an action. The control plane compiles the ordered
rule set into Linear Bit-Vector Search tables, one per field, mapping a field value to the bit
vector of the rules it satisfies (bit i = the rule of rank i in priority order). The data plane
(`bpf/firewall.bpf.c`) ANDs the five vectors and takes the lowest set bit.

Maps (key → value; sizes in bytes; host byte order except be16/be32 and "net order"):

=============  ===========  ==============================  ================================
name           type         key                             value
=============  ===========  ==============================  ================================
fw_config      array[1]     u32 0 (4)                       fw_config {default_action,
                                                            conntrack, stats, rule_words} (16)
fw_src/fw_dst  LPM trie     {u32 prefixlen; be32 addr} (8)  bit vector: u64 word[8] (64)
fw_sport/dport hash         u32 port | 0x10000 default |    bit vector (64)
                            0x10001 no ports (4)
fw_proto       array[256]   u32 protocol (4)                bit vector (64)
fw_actions     array[512]   u32 rank (4)                    {u32 action; u32 rule_id} (8)
fw_conntrack   LRU hash     5-tuple, net order, padded (16) {u64 packets; u32 rule;
                                                            u32 reply} (16)
fw_stats       percpu arr   u32 Stat (4)                    {u64 packets; u64 bytes} (16)
fw_rule_stats  percpu arr   u32 rank (4)                    {u64 packets; u64 bytes} (16)
=============  ===========  ==============================  ================================

Semantics (mirrored exactly by `Reference`):

- Shorter than Ethernet, truncated 802.1Q tag, truncated or invalid IPv4 header (version ≠ 4,
  IHL < 5, options past the end), truncated TCP (20 bytes) or UDP (8 bytes) header of a packet
  that has ports → XDP_DROP. One 802.1Q tag is skipped; anything else that is not IPv4
  (ARP, IPv6, a second tag) → XDP_PASS.
- Accepted → XDP_PASS, dropped → XDP_DROP; no rule matches → the default policy.
- Packets without ports (neither TCP nor UDP, or a non-first fragment) match only rules whose
  port ranges are both wildcards; a rule that names ports never matches them.
- Connection tracking (if enabled; TCP and UDP packets with ports only): a packet whose 5-tuple
  is in the table is accepted unclassified; a TCP RST among them deletes both directions. An
  accepted UDP packet, or an accepted TCP packet with SYN and neither ACK nor RST, inserts its
  5-tuple and the reverse one. The table is an LRU of 65,536 entries: the model never evicts,
  so tests stay well below that (each new flow takes two entries).
"""

from __future__ import annotations

import ipaddress
import itertools
import random
import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum

from morpheus.traffic import packet as pkt

from ._l4 import (
    Flow,
    TableWriter,
    arp_frame,
    flow_frame,
    ipv6_frame,
    random_frame,
)
from .common import XDP_DROP, XDP_PASS, MapLike, Outcome
from .common import decode_counter as decode_counter

# Re-exported: the encoders are part of each NF module's public API.
from .common import decode_u32 as decode_u32
from .common import encode_u32 as encode_u32

NAME = "firewall"
DESCRIPTION = ("ACL firewall in the style of bpf-iptables: prioritized 5-tuple rules compiled "
               "into per-field bit vectors, connection tracking and a default policy.")
SOURCE = "firewall"
PROGRAM = "xdp_firewall"

MAX_RULES = 512
WORDS = MAX_RULES // 64
PORT_DEFAULT = 0x10000
PORT_NONE = 0x10001
RULE_NONE = 0xFFFFFFFF
CONNTRACK_SIZE = 65536

MAP_CONFIG = "fw_config"
MAP_SRC = "fw_src"
MAP_DST = "fw_dst"
MAP_SPORT = "fw_sport"
MAP_DPORT = "fw_dport"
MAP_PROTO = "fw_proto"
MAP_ACTIONS = "fw_actions"
MAP_CONNTRACK = "fw_conntrack"
MAP_STATS = "fw_stats"
MAP_RULE_STATS = "fw_rule_stats"


class Action(IntEnum):
    """What a rule (or the default policy) does with a packet; values as in the C enum."""

    DROP = 0
    ACCEPT = 1


class Stat(IntEnum):
    """Slots of fw_stats."""

    NON_IP = 0
    MALFORMED = 1
    CT_HIT = 2
    RULE_ACCEPT = 3
    RULE_DROP = 4
    DEFAULT_ACCEPT = 5
    DEFAULT_DROP = 6
    CT_NEW = 7


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True, order=True)
class Prefix:
    """An IPv4 prefix: host-order address (host bits zero) and length 0..32."""

    addr: int
    length: int

    def __post_init__(self) -> None:
        if not 0 <= self.length <= 32:
            raise ValueError(f"prefix length {self.length} out of range")
        if self.addr & ~self.mask & 0xFFFFFFFF or not 0 <= self.addr <= 0xFFFFFFFF:
            raise ValueError(f"{pkt.ip4_str(self.addr & 0xFFFFFFFF)}/{self.length} has host bits")

    @classmethod
    def parse(cls, text: str) -> Prefix:
        net = ipaddress.IPv4Network(text)
        return cls(int(net.network_address), net.prefixlen)

    @property
    def mask(self) -> int:
        return (0xFFFFFFFF << (32 - self.length)) & 0xFFFFFFFF

    def contains(self, addr: int) -> bool:
        return addr & self.mask == self.addr

    def covers(self, other: Prefix) -> bool:
        """True if every address of `other` is in this prefix."""
        return self.length <= other.length and self.contains(other.addr)

    def __str__(self) -> str:
        return f"{pkt.ip4_str(self.addr)}/{self.length}"


ANY_PREFIX = Prefix(0, 0)


@dataclass(frozen=True, slots=True, order=True)
class PortRange:
    """An inclusive port range."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not 0 <= self.lo <= self.hi <= 0xFFFF:
            raise ValueError(f"bad port range {self.lo}-{self.hi}")

    @property
    def is_any(self) -> bool:
        return self.lo == 0 and self.hi == 0xFFFF

    def contains(self, port: int) -> bool:
        return self.lo <= port <= self.hi

    def __str__(self) -> str:
        return "*" if self.is_any else (str(self.lo) if self.lo == self.hi
                                         else f"{self.lo}-{self.hi}")


ANY_PORT = PortRange(0, 0xFFFF)


@dataclass(frozen=True, slots=True)
class Rule:
    """One ACL rule. Lower `priority` wins; equal priorities are ordered by `rule_id`."""

    rule_id: int
    priority: int
    action: Action
    src: Prefix = ANY_PREFIX
    dst: Prefix = ANY_PREFIX
    proto: int | None = None  # None: any protocol
    sport: PortRange = ANY_PORT
    dport: PortRange = ANY_PORT

    def __post_init__(self) -> None:
        if not 0 <= self.rule_id <= 0xFFFFFFFF:
            raise ValueError(f"rule id {self.rule_id} does not fit in u32")
        if self.proto is not None and not 0 <= self.proto <= 255:
            raise ValueError(f"protocol {self.proto} out of range")
        if (not (self.sport.is_any and self.dport.is_any)
                and self.proto not in (None, pkt.IPPROTO_TCP, pkt.IPPROTO_UDP)):
            raise ValueError(f"rule {self.rule_id}: port ranges need TCP, UDP or any protocol")

    @property
    def port_wildcard(self) -> bool:
        return self.sport.is_any and self.dport.is_any

    def matches(self, src: int, dst: int, proto: int, sport: int | None,
                dport: int | None) -> bool:
        """Does the rule match? `sport`/`dport` are None for packets without ports."""
        if not (self.src.contains(src) and self.dst.contains(dst)):
            return False
        if self.proto is not None and self.proto != proto:
            return False
        if sport is None or dport is None:
            return self.port_wildcard
        return self.sport.contains(sport) and self.dport.contains(dport)

    def __str__(self) -> str:
        proto = {None: "any", 6: "tcp", 17: "udp", 1: "icmp"}.get(self.proto, str(self.proto))
        return (f"#{self.rule_id} prio {self.priority} {proto} {self.src}:{self.sport} -> "
                f"{self.dst}:{self.dport} {self.action.name}")


@dataclass(frozen=True, slots=True)
class FirewallConfig:
    """A rule set plus the run-time switches of fw_config."""

    rules: tuple[Rule, ...]
    default_action: Action = Action.DROP
    conntrack: bool = True
    stats: bool = True

    def __post_init__(self) -> None:
        if len(self.rules) > MAX_RULES:
            raise ValueError(f"{len(self.rules)} rules; at most {MAX_RULES}")
        ids = [r.rule_id for r in self.rules]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate rule ids")

    def ordered(self) -> tuple[Rule, ...]:
        """The rules in priority order: index = rank = bit number in the vectors."""
        return tuple(sorted(self.rules, key=lambda r: (r.priority, r.rule_id)))


Config = FirewallConfig


# ---------------------------------------------------------------- ClassBench-like generator

# Address trees the rules are drawn from, so that prefixes nest and rules overlap as in real
# ACLs; the traffic generator draws "outside" hosts from elsewhere.
_NETWORKS = tuple(Prefix.parse(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "198.18.0.0/15",
    "203.0.113.0/24", "198.51.100.0/24"))
_WELL_KNOWN = (20, 21, 22, 23, 25, 53, 67, 69, 80, 110, 123, 143, 161, 179, 389, 443, 445, 514,
               636, 993, 995, 1194, 1433, 1521, 3306, 3389, 5060, 5432, 6379, 8080, 8443, 9090)
# (length, weight): ClassBench seeds have many /32 and /24 hosts and a fair share of wildcards.
_SRC_LENGTHS = ((0, 25), (8, 3), (12, 2), (16, 10), (20, 6), (24, 20), (28, 8), (32, 26))
_DST_LENGTHS = ((0, 12), (8, 3), (12, 2), (16, 10), (20, 6), (24, 22), (28, 10), (32, 35))


def _prefix(rng: random.Random, lengths: Sequence[tuple[int, int]],
            pool: list[Prefix]) -> Prefix:
    length = rng.choices([ln for ln, _ in lengths], [w for _, w in lengths])[0]
    if length == 0:
        return ANY_PREFIX
    # Nest under an earlier prefix a third of the time: overlapping rules are the hard part.
    parents = [p for p in pool if 0 < p.length < length]
    base = rng.choice(parents) if parents and rng.random() < 0.35 else rng.choice(_NETWORKS)
    mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
    if base.length >= length:
        return Prefix(base.addr & mask, length)
    host = rng.getrandbits(32) & ~base.mask & 0xFFFFFFFF
    prefix = Prefix((base.addr | host) & mask, length)
    pool.append(prefix)
    return prefix


def _port_range(rng: random.Random, weights: Sequence[int]) -> PortRange:
    kind = rng.choices(("any", "hi", "lo", "exact", "range"), weights)[0]
    if kind == "any":
        return ANY_PORT
    if kind == "hi":
        return PortRange(1024, 0xFFFF)
    if kind == "lo":
        return PortRange(0, 1023)
    if kind == "exact":
        port = rng.choice(_WELL_KNOWN)
        return PortRange(port, port)
    width = rng.choice((7, 15, 63, 255, 1023))
    lo = rng.randrange(1024, 0xFFFF - width)
    return PortRange(lo, lo + width)


def generate_rules(rng: random.Random, count: int = 300) -> tuple[Rule, ...]:
    """`count` ClassBench-like rules in priority order (priority 10, 20, ...; ids 1, 2, ...).

    Mixes exact hosts, prefixes of many lengths and wildcards (nested under each other), port
    classes wildcard / 1024-65535 / 0-1023 / well-known exact / arbitrary range, TCP (60%),
    UDP (25%), any (10%) and ICMP (5%), ACCEPT (60%) and DROP. No rule is a full wildcard, so
    some traffic always reaches the default policy.
    """
    pool: list[Prefix] = []
    rules: list[Rule] = []
    while len(rules) < count:
        proto = rng.choices((pkt.IPPROTO_TCP, pkt.IPPROTO_UDP, None, pkt.IPPROTO_ICMP),
                            (60, 25, 10, 5))[0]
        src = _prefix(rng, _SRC_LENGTHS, pool)
        dst = _prefix(rng, _DST_LENGTHS, pool)
        if proto in (pkt.IPPROTO_TCP, pkt.IPPROTO_UDP):
            sport = _port_range(rng, (80, 10, 2, 5, 3))
            dport = _port_range(rng, (15, 10, 5, 60, 10))
        else:
            sport = dport = ANY_PORT
        if src.length == 0 and dst.length == 0 and sport.is_any and dport.is_any:
            continue  # a catch-all would hide the default policy
        action = Action.ACCEPT if rng.random() < 0.6 else Action.DROP
        n = len(rules) + 1
        rules.append(Rule(n, 10 * n, action, src, dst, proto, sport, dport))
    return tuple(rules)


def default_config(seed: int = 1) -> FirewallConfig:
    """300 generated rules, default DROP, connection tracking and statistics on."""
    return FirewallConfig(generate_rules(random.Random(seed), 300))


# ------------------------------------------------------------------------------- encoders

_CONFIG = struct.Struct("=IIII")
_LPM_KEY = struct.Struct("=I4s")
_U32 = struct.Struct("=I")
_BITVEC = struct.Struct(f"={WORDS}Q")
_ACTION = struct.Struct("=II")
_FLOW_KEY = struct.Struct("!IIHHB3x")  # everything in network order, as read from the packet
_CT_VALUE = struct.Struct("=QII")
_COUNTER = struct.Struct("=QQ")


def encode_config(default_action: int, conntrack: bool, stats: bool, rule_words: int) -> bytes:
    return _CONFIG.pack(default_action, int(conntrack), int(stats), rule_words)


def decode_config(raw: bytes) -> tuple[int, bool, bool, int]:
    action, conntrack, stats, words = _CONFIG.unpack(raw)
    return action, bool(conntrack), bool(stats), words


def encode_lpm_key(prefix: Prefix) -> bytes:
    return _LPM_KEY.pack(prefix.length, prefix.addr.to_bytes(4, "big"))


def decode_lpm_key(raw: bytes) -> Prefix:
    length, addr = _LPM_KEY.unpack(raw)
    return Prefix(int.from_bytes(addr, "big"), length)






def encode_bitvec(bits: int) -> bytes:
    """Rule bit vector: bit i of the integer is bit i % 64 of word i // 64."""
    if bits >> MAX_RULES:
        raise ValueError("bit vector wider than MAX_RULES")
    return _BITVEC.pack(*((bits >> (64 * w)) & 0xFFFFFFFFFFFFFFFF for w in range(WORDS)))


def decode_bitvec(raw: bytes) -> int:
    return sum(word << (64 * w) for w, word in enumerate(_BITVEC.unpack(raw)))


def encode_action(action: int, rule_id: int) -> bytes:
    return _ACTION.pack(action, rule_id)


def decode_action(raw: bytes) -> tuple[Action, int]:
    action, rule_id = _ACTION.unpack(raw)
    return Action(action), rule_id


def encode_flow_key(src: int, dst: int, sport: int, dport: int, proto: int) -> bytes:
    """struct nf_flow_key: the 5-tuple in network order with 3 bytes of zero padding."""
    return _FLOW_KEY.pack(src, dst, sport, dport, proto)


def decode_flow_key(raw: bytes) -> tuple[int, int, int, int, int]:
    return _FLOW_KEY.unpack(raw)


def encode_ct_value(packets: int, rule: int, reply: bool) -> bytes:
    return _CT_VALUE.pack(packets, rule, int(reply))


def decode_ct_value(raw: bytes) -> tuple[int, int, bool]:
    packets, rule, reply = _CT_VALUE.unpack(raw)
    return packets, rule, bool(reply)




# ---------------------------------------------------------------------------- compilation


@dataclass(frozen=True, slots=True)
class Compiled:
    """A rule set compiled into table contents (integers; `tables` encodes them)."""

    ordered: tuple[Rule, ...]
    src: dict[Prefix, int]
    dst: dict[Prefix, int]
    sport: dict[int, int]  # port, PORT_DEFAULT, PORT_NONE → bits
    dport: dict[int, int]
    proto: tuple[int, ...]  # 256 entries
    words: int

    def tables(self) -> dict[str, dict[bytes, bytes]]:
        """Encoded contents of every table the control plane owns, except fw_config."""
        actions = {encode_u32(i): encode_action(r.action, r.rule_id)
                   for i, r in enumerate(self.ordered)}
        return {
            MAP_SRC: {encode_lpm_key(p): encode_bitvec(b) for p, b in self.src.items()},
            MAP_DST: {encode_lpm_key(p): encode_bitvec(b) for p, b in self.dst.items()},
            MAP_SPORT: {encode_u32(k): encode_bitvec(b) for k, b in self.sport.items()},
            MAP_DPORT: {encode_u32(k): encode_bitvec(b) for k, b in self.dport.items()},
            MAP_PROTO: {encode_u32(p): encode_bitvec(b) for p, b in enumerate(self.proto)},
            MAP_ACTIONS: actions,
        }


def _compile_prefixes(prefixes: Sequence[Prefix]) -> dict[Prefix, int]:
    # Each trie entry holds the rules whose prefix covers it. The longest entry matching an
    # address then holds exactly the rules matching it: a matching rule prefix that is longer
    # than that entry would itself be a longer matching entry.
    entries = {*prefixes, ANY_PREFIX}
    table = {}
    for entry in entries:
        bits = 0
        for rank, prefix in enumerate(prefixes):
            if prefix.covers(entry):
                bits |= 1 << rank
        table[entry] = bits
    return table


def _compile_ports(ranges: Sequence[PortRange]) -> dict[int, int]:
    # Cut the port space into elementary intervals on which every range is constant; the
    # class (bit vector) covering the most ports becomes PORT_DEFAULT, and only ports of other
    # classes get their own entry: a few thousand for the default rule set.
    cuts = sorted({0, 0x10000, *(r.lo for r in ranges), *(r.hi + 1 for r in ranges)})
    intervals = []
    weight: Counter[int] = Counter()
    for lo, end in itertools.pairwise(cuts):
        bits = 0
        for rank, r in enumerate(ranges):
            if r.lo <= lo <= r.hi:
                bits |= 1 << rank
        intervals.append((lo, end, bits))
        weight[bits] += end - lo
    default = max(weight.items(), key=lambda kv: (kv[1], -kv[0]))[0]
    table = {port: bits for lo, end, bits in intervals if bits != default
             for port in range(lo, end)}
    table[PORT_DEFAULT] = default
    table[PORT_NONE] = sum(1 << rank for rank, r in enumerate(ranges) if r.is_any)
    return table


def compile_rules(rules: Iterable[Rule]) -> Compiled:
    """Compile rules (any order; sorted here by priority) into per-field bit vector tables."""
    ordered = tuple(sorted(rules, key=lambda r: (r.priority, r.rule_id)))
    if len(ordered) > MAX_RULES:
        raise ValueError(f"{len(ordered)} rules; at most {MAX_RULES}")
    # A rule with port ranges and "any" protocol constrains ports only of packets that have
    # them; packets without ports are handled by PORT_NONE, which excludes such rules.
    proto = tuple(sum(1 << i for i, r in enumerate(ordered) if r.proto in (None, p))
                  for p in range(256))
    return Compiled(
        ordered=ordered,
        src=_compile_prefixes([r.src for r in ordered]),
        dst=_compile_prefixes([r.dst for r in ordered]),
        sport=_compile_ports([r.sport for r in ordered]),
        dport=_compile_ports([r.dport for r in ordered]),
        proto=proto,
        words=(len(ordered) + 63) // 64,
    )


# --------------------------------------------------------------------------- control plane


class ControlPlane:
    """Writes a `FirewallConfig` into the firewall's maps and keeps it up to date.

    Every change recompiles the whole rule set and writes only the entries that differ from
    what this object wrote before. Order of writes for a growing rule set: actions, then field
    tables, then fw_config (whose rule_words exposes new words last); a packet classified
    during a recompilation that shifts ranks may still see a mix of old and new vectors.
    The connection table and the statistics belong to the data plane and are never written.
    """

    def __init__(self, maps: Mapping[str, MapLike]) -> None:
        self.maps = maps
        self._writers = {
            MAP_SRC: TableWriter(maps[MAP_SRC], array=False),
            MAP_DST: TableWriter(maps[MAP_DST], array=False),
            MAP_SPORT: TableWriter(maps[MAP_SPORT], array=False),
            MAP_DPORT: TableWriter(maps[MAP_DPORT], array=False),
            MAP_PROTO: TableWriter(maps[MAP_PROTO], array=True, zero=encode_bitvec(0)),
            MAP_ACTIONS: TableWriter(maps[MAP_ACTIONS], array=True,
                                     zero=encode_action(Action.DROP, 0)),
            MAP_CONFIG: TableWriter(maps[MAP_CONFIG], array=True),
        }
        self._config: FirewallConfig | None = None
        self.writes = 0  # map writes so far (updates + deletes), for tests and benchmarks

    @property
    def config(self) -> FirewallConfig:
        if self._config is None:
            raise RuntimeError("no configuration applied yet")
        return self._config

    def apply(self, config: FirewallConfig) -> None:
        """Write the whole configuration, removing whatever else the tables hold."""
        for writer in self._writers.values():
            writer.forget()
        self._install(config, stale_ranks=MAX_RULES)

    def _install(self, config: FirewallConfig, stale_ranks: int | None = None) -> None:
        compiled = compile_rules(config.rules)
        tables = compiled.tables()
        actions = tables.pop(MAP_ACTIONS)
        # Ranks past the new rule count are reset so that no stale action lingers (no vector
        # has their bits, so this is hygiene, not correctness).
        if stale_ranks is None:
            stale_ranks = len(self._config.rules) if self._config is not None else MAX_RULES
        actions.update({encode_u32(i): encode_action(Action.DROP, 0)
                        for i in range(len(compiled.ordered), stale_ranks)})
        self.writes += self._writers[MAP_ACTIONS].sync(actions)
        for name, contents in tables.items():
            self.writes += self._writers[name].sync(contents)
        cfg = encode_config(config.default_action, config.conntrack, config.stats,
                            compiled.words)
        self.writes += self._writers[MAP_CONFIG].sync({encode_u32(0): cfg})
        self._config = config

    def add_rule(self, rule: Rule) -> None:
        """Insert a rule at the place its priority gives it."""
        config = self.config
        if any(r.rule_id == rule.rule_id for r in config.rules):
            raise ValueError(f"rule id {rule.rule_id} already present")
        self._install(replace(config, rules=(*config.rules, rule)))

    def remove_rule(self, rule_id: int) -> Rule:
        """Remove the rule with `rule_id` (KeyError if absent); returns it."""
        config = self.config
        for rule in config.rules:
            if rule.rule_id == rule_id:
                self._install(replace(config, rules=tuple(
                    r for r in config.rules if r.rule_id != rule_id)))
                return rule
        raise KeyError(rule_id)

    def set_default_policy(self, action: Action) -> None:
        self._install(replace(self.config, default_action=Action(action)))

    def set_conntrack(self, enabled: bool) -> None:
        self._install(replace(self.config, conntrack=enabled))

    def set_stats(self, enabled: bool) -> None:
        self._install(replace(self.config, stats=enabled))


# ------------------------------------------------------------------------ reference model


@dataclass(slots=True)
class _Headers:
    src: int
    dst: int
    proto: int
    sport: int | None
    dport: int | None
    tcp_flags: int


FlowTuple = tuple[int, int, int, int, int]  # (src, dst, sport, dport, proto), host order


@dataclass(frozen=True, slots=True)
class CtEntry:
    """A fw_conntrack value as the data plane writes it."""

    packets: int  # the opening packet counts on the forward entry; each hit adds one
    rule: int  # rank of the rule that accepted the opening packet; RULE_NONE: default policy
    reply: bool  # the entry of the reverse direction


class Reference:
    """The firewall's expected behaviour, packet by packet, including conntrack state.

    `conntrack` mirrors fw_conntrack entry by entry (5-tuple → `CtEntry`). `stats` and
    `rule_stats` count (packets, bytes) as the program's per-CPU counters summed over CPUs
    would, when the configuration enables statistics; `rule_stats` is keyed by rule id, while
    fw_rule_stats is indexed by the rule's rank at the time of the packet.
    """

    def __init__(self, config: FirewallConfig) -> None:
        self.conntrack: dict[FlowTuple, CtEntry] = {}
        self.stats: Counter[tuple[Stat, str]] = Counter()
        self.rule_stats: Counter[tuple[int, str]] = Counter()  # by rule_id
        self.set_config(config)

    def set_config(self, config: FirewallConfig) -> None:
        """Follow a control-plane change; the connection table survives, as in the kernel."""
        self.config = config
        self._ordered = config.ordered()
        self._rank = {rule.rule_id: rank for rank, rule in enumerate(self._ordered)}

    def classify(self, src: int, dst: int, proto: int, sport: int | None,
                 dport: int | None) -> Rule | None:
        """The first rule in priority order that matches, if any."""
        for rule in self._ordered:
            if rule.matches(src, dst, proto, sport, dport):
                return rule
        return None

    def _count(self, stat: Stat, length: int) -> None:
        if self.config.stats:
            self.stats[stat, "packets"] += 1
            self.stats[stat, "bytes"] += length

    def _parse(self, frame: bytes) -> _Headers | Stat:
        if len(frame) < pkt.ETH_HLEN:
            return Stat.MALFORMED
        (ethertype,) = struct.unpack_from("!H", frame, 12)
        off = pkt.ETH_HLEN
        if ethertype == pkt.ETH_P_8021Q:
            if len(frame) < off + pkt.VLAN_HLEN:
                return Stat.MALFORMED
            (ethertype,) = struct.unpack_from("!H", frame, 16)
            off += pkt.VLAN_HLEN
        if ethertype != pkt.ETH_P_IP:
            return Stat.NON_IP
        if len(frame) < off + pkt.IPV4_HLEN:
            return Stat.MALFORMED
        vihl = frame[off]
        ihl = vihl & 0x0F
        if vihl >> 4 != 4 or ihl < 5 or len(frame) < off + ihl * 4:
            return Stat.MALFORMED
        (frag,) = struct.unpack_from("!H", frame, off + 6)
        proto = frame[off + 9]
        src, dst = struct.unpack_from("!II", frame, off + 12)
        l4 = off + ihl * 4
        sport = dport = None
        flags = 0
        if not frag & pkt.IP_OFFMASK and proto in (pkt.IPPROTO_TCP, pkt.IPPROTO_UDP):
            if len(frame) < l4 + (20 if proto == pkt.IPPROTO_TCP else 8):
                return Stat.MALFORMED
            sport, dport = struct.unpack_from("!HH", frame, l4)
            if proto == pkt.IPPROTO_TCP:
                flags = frame[l4 + 13]
        return _Headers(src, dst, proto, sport, dport, flags)

    def process(self, frame: bytes, ingress_ifindex: int = 1) -> Outcome:
        """Verdict for `frame`; the firewall never rewrites a frame."""
        del ingress_ifindex  # the firewall applies one rule set to every interface
        headers = self._parse(frame)
        if isinstance(headers, Stat):
            self._count(headers, len(frame))
            return Outcome(XDP_PASS if headers is Stat.NON_IP else XDP_DROP, frame)
        h = headers
        tracked = self.config.conntrack and h.sport is not None and h.dport is not None
        key = (h.src, h.dst, h.sport or 0, h.dport or 0, h.proto)
        reverse = (h.dst, h.src, h.dport or 0, h.sport or 0, h.proto)
        entry = self.conntrack.get(key) if tracked else None
        if entry is not None:
            self.conntrack[key] = replace(entry, packets=entry.packets + 1)
            if h.proto == pkt.IPPROTO_TCP and h.tcp_flags & pkt.TCP_RST:
                self.conntrack.pop(key, None)
                self.conntrack.pop(reverse, None)
            self._count(Stat.CT_HIT, len(frame))
            return Outcome(XDP_PASS, frame)
        rule = self.classify(h.src, h.dst, h.proto, h.sport, h.dport)
        if rule is not None:
            accept = rule.action == Action.ACCEPT
            if self.config.stats:
                self.rule_stats[rule.rule_id, "packets"] += 1
                self.rule_stats[rule.rule_id, "bytes"] += len(frame)
            self._count(Stat.RULE_ACCEPT if accept else Stat.RULE_DROP, len(frame))
        else:
            accept = self.config.default_action == Action.ACCEPT
            self._count(Stat.DEFAULT_ACCEPT if accept else Stat.DEFAULT_DROP, len(frame))
        if not accept:
            return Outcome(XDP_DROP, frame)
        opens = (h.proto == pkt.IPPROTO_UDP or h.tcp_flags & (
            pkt.TCP_SYN | pkt.TCP_ACK | pkt.TCP_RST) == pkt.TCP_SYN)
        if tracked and opens:
            rank = RULE_NONE if rule is None else self._rank[rule.rule_id]
            # Forward, then reverse: a flow that is its own reverse ends as a reply entry.
            self.conntrack[key] = CtEntry(1, rank, False)
            self.conntrack[reverse] = CtEntry(0, rank, True)
            self._count(Stat.CT_NEW, len(frame))
        return Outcome(XDP_PASS, frame)


# -------------------------------------------------------------------------------- traffic

# Hosts outside every rule tree: their traffic mostly falls through to the default policy.
_OUTSIDE = Prefix.parse("185.0.0.0/8")


def _sample_addr(rng: random.Random, prefix: Prefix) -> int:
    return prefix.addr | (rng.getrandbits(32) & ~prefix.mask & 0xFFFFFFFF)


def _sample_port(rng: random.Random, ports: PortRange) -> int:
    if ports.is_any:
        return rng.randint(1024, 0xFFFF) if rng.random() < 0.8 else rng.choice(_WELL_KNOWN)
    return rng.randint(ports.lo, ports.hi)


def flow_for_rule(rule: Rule, rng: random.Random) -> Flow:
    """A flow that matches `rule` (an earlier rule may match it first)."""
    proto = rule.proto
    if proto is None:
        choices = [pkt.IPPROTO_TCP, pkt.IPPROTO_UDP]
        if rule.port_wildcard:
            choices.append(pkt.IPPROTO_ICMP)
        proto = rng.choice(choices)
    src = _sample_addr(rng, rule.src if rule.src.length else _OUTSIDE)
    dst = _sample_addr(rng, rule.dst if rule.dst.length else rng.choice(_NETWORKS))
    if proto in (pkt.IPPROTO_TCP, pkt.IPPROTO_UDP):
        return Flow(src, dst, proto, _sample_port(rng, rule.sport), _sample_port(rng, rule.dport))
    return Flow(src, dst, proto, rng.getrandbits(16), rng.getrandbits(16))


def flows(config: FirewallConfig, count: int, rng: random.Random) -> list[Flow]:
    """`count` distinct flows: ~85% drawn from a rule (spread over all rules, so both actions
    occur), ~12% between random hosts (mostly the default policy), ~3% ICMP."""
    rules = config.ordered()
    result: dict[Flow, None] = {}
    attempts = 0
    while len(result) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise ValueError(f"cannot find {count} distinct flows")
        roll = rng.random()
        if rules and roll < 0.85:
            flow = flow_for_rule(rules[rng.randrange(len(rules))], rng)
        elif roll < 0.97:
            flow = Flow(_sample_addr(rng, _OUTSIDE), _sample_addr(rng, rng.choice(_NETWORKS)),
                        rng.choice((pkt.IPPROTO_TCP, pkt.IPPROTO_UDP)),
                        rng.randint(1024, 0xFFFF), rng.choice((*_WELL_KNOWN, 4242, 31337)))
        else:
            flow = Flow(_sample_addr(rng, _OUTSIDE), _sample_addr(rng, rng.choice(_NETWORKS)),
                        pkt.IPPROTO_ICMP, rng.getrandbits(16), rng.getrandbits(16))
        result.setdefault(flow, None)
    return list(result)


def packet(flow: Flow, rng: random.Random) -> tuple[bytes, int]:
    """One frame of `flow` (random TCP flags, payload, TTL, IP id) and its ingress ifindex."""
    return random_frame(flow, rng), flow.ifindex


def _overlap_flow(high: Rule, low: Rule, rng: random.Random) -> Flow | None:
    """A flow matching both rules, if their fields intersect (prefixes nest)."""
    src = high.src if low.src.covers(high.src) else low.src if high.src.covers(low.src) else None
    dst = high.dst if low.dst.covers(high.dst) else low.dst if high.dst.covers(low.dst) else None
    if src is None or dst is None:
        return None
    if high.proto is not None and low.proto is not None and high.proto != low.proto:
        return None
    proto = high.proto if high.proto is not None else low.proto
    if proto is None:
        proto = pkt.IPPROTO_TCP
    sport = PortRange(max(high.sport.lo, low.sport.lo), max(high.sport.lo, low.sport.lo)) \
        if max(high.sport.lo, low.sport.lo) <= min(high.sport.hi, low.sport.hi) else None
    dport = PortRange(max(high.dport.lo, low.dport.lo), max(high.dport.lo, low.dport.lo)) \
        if max(high.dport.lo, low.dport.lo) <= min(high.dport.hi, low.dport.hi) else None
    if sport is None or dport is None:
        return None
    if proto not in (pkt.IPPROTO_TCP, pkt.IPPROTO_UDP):
        if not (high.port_wildcard and low.port_wildcard):
            return None
        return Flow(_sample_addr(rng, src), _sample_addr(rng, dst), proto, 1, 1)
    return Flow(_sample_addr(rng, src), _sample_addr(rng, dst), proto, sport.lo, dport.lo)


def edge_cases(config: FirewallConfig, rng: random.Random) -> list[tuple[bytes, int]]:
    """Frames for the corners of the parser and the classifier, in an order that matters
    (conntrack sequences open, use and close connections)."""
    rules = config.ordered()
    accept_rules = [r for r in rules if r.action == Action.ACCEPT and r.proto != pkt.IPPROTO_ICMP]
    frames: list[bytes] = []
    tcp_rule = next((r for r in accept_rules if r.proto == pkt.IPPROTO_TCP), None)
    some = rules[rng.randrange(len(rules))] if rules else None
    base = flow_for_rule(tcp_rule or some, rng) if (tcp_rule or some) else \
        Flow(pkt.ip4("185.1.2.3"), pkt.ip4("10.1.2.3"), pkt.IPPROTO_TCP, 40000, 80)
    if base.proto not in (pkt.IPPROTO_TCP, pkt.IPPROTO_UDP):
        base = Flow(base.src, base.dst, pkt.IPPROTO_TCP, 40000, 80)
    plain = flow_frame(base, tcp_flags=pkt.TCP_ACK, payload=b"edge")

    # Link layer: not IPv4, truncated, tagged. (Frames shorter than an Ethernet header
    # cannot be injected: BPF_PROG_TEST_RUN refuses them, and no NIC delivers them.)
    frames += [arp_frame(), ipv6_frame(), plain[:pkt.ETH_HLEN],
               plain[:12] + b"\x81\x00\x00",  # truncated 802.1Q tag
               flow_frame(base, vlan=42, payload=b"vlan"),
               # QinQ: the inner tag is not IPv4 as far as a one-tag parser goes
               pkt.ethernet(pkt.mac("02:00:00:00:00:01"), pkt.mac("02:00:00:00:10:01"),
                            pkt.ETH_P_8021Q, struct.pack("!HH", 7, pkt.ETH_P_IP) + plain[14:],
                            vlan=5)]
    # IPv4 header: truncated, bad version, IHL < 5, options past the end, options.
    ip = bytearray(plain[14:])
    frames.append(plain[:14 + 12])
    bad_version = bytearray(ip)
    bad_version[0] = 0x65
    bad_ihl = bytearray(ip)
    bad_ihl[0] = 0x44
    frames += [plain[:14] + bytes(bad_version), plain[:14] + bytes(bad_ihl)]
    long_options = flow_frame(base, options=bytes([1] * 40), payload=b"x")
    frames.append(long_options[:14 + 40])  # IHL 15, header cut inside the options
    for opts in (b"\x01\x01\x01\x00", bytes([7, 7, 4]) + b"\0" * 5, bytes([1] * 40)):
        frames.append(flow_frame(base, options=opts, tcp_flags=pkt.TCP_SYN))
    # Transport header truncated, for TCP and UDP, with and without options.
    frames.append(plain[:14 + 20 + 10])
    udp_base = Flow(base.src, base.dst, pkt.IPPROTO_UDP, base.sport, base.dport)
    frames.append(flow_frame(udp_base)[:14 + 20 + 4])
    frames.append(flow_frame(base, options=b"\x01" * 4)[:14 + 24 + 19])
    # Fragments: first (ports present), later (classified without ports), later + truncated.
    frames.append(flow_frame(base, flags_frag=pkt.IP_MF, payload=b"first"))
    frames.append(flow_frame(base, flags_frag=pkt.IP_MF | 100, payload=b"middle"))
    frames.append(flow_frame(base, flags_frag=185, payload=b"")[:14 + 20])
    frames.append(flow_frame(udp_base, flags_frag=pkt.IP_MF | 3, payload=b"udp-frag"))
    # Protocols without ports, and trailing Ethernet padding.
    frames.append(flow_frame(Flow(base.src, base.dst, pkt.IPPROTO_ICMP, 9, 1)))
    gre = pkt.ipv4(base.src, base.dst, 47, b"\0\0\x08\0" + b"g" * 8)
    frames.append(pkt.ethernet(pkt.mac("02:00:00:00:00:01"), pkt.mac("02:00:00:00:10:01"),
                               pkt.ETH_P_IP, gre))
    frames.append(flow_frame(udp_base) + b"\0" * 8)
    # Port ranges at and just outside their bounds.
    for rule in [r for r in rules if not r.port_wildcard][:12]:
        flow = flow_for_rule(rule, rng)
        for ports in ((rule.sport.lo, rule.dport.lo), (rule.sport.hi, rule.dport.hi),
                      (rule.sport.lo, (rule.dport.lo - 1) & 0xFFFF),
                      (rule.sport.hi, (rule.dport.hi + 1) & 0xFFFF)):
            frames.append(flow_frame(Flow(flow.src, flow.dst, flow.proto, *ports)))
    for ports in ((0, 0), (0xFFFF, 0xFFFF), (1023, 1024)):
        frames.append(flow_frame(Flow(base.src, base.dst, base.proto, *ports)))
    # Priority overlaps: a packet inside two rules of different actions.
    # At most one pair per higher-priority rule, so that the pairs spread over the rule set.
    found = 0
    for i, high in enumerate(rules):
        if found >= 32:
            break
        for low in rules[i + 1:]:
            flow = None if high.action == low.action else _overlap_flow(high, low, rng)
            if flow is not None:
                frames.append(flow_frame(flow, tcp_flags=pkt.TCP_ACK))
                found += 1
                break
    # Connection tracking: open, use both directions, close with RST, use again.
    for rule in accept_rules[:6]:
        flow = flow_for_rule(rule, rng)
        if flow.proto == pkt.IPPROTO_TCP:
            sequence = [(flow, pkt.TCP_SYN), (flow, pkt.TCP_ACK), (flow.reply(),
                        pkt.TCP_SYN | pkt.TCP_ACK), (flow.reply(), pkt.TCP_ACK),
                        (flow, pkt.TCP_FIN | pkt.TCP_ACK), (flow.reply(), pkt.TCP_RST),
                        (flow, pkt.TCP_ACK), (flow.reply(), pkt.TCP_ACK)]
        else:
            sequence = [(flow, 0), (flow.reply(), 0), (flow, 0)]
        frames += [flow_frame(f, tcp_flags=flags, payload=b"ct") for f, flags in sequence]
    # A SYN+ACK or an ACK first does not open a connection.
    if tcp_rule is not None:
        flow = flow_for_rule(tcp_rule, rng)
        frames += [flow_frame(flow, tcp_flags=pkt.TCP_SYN | pkt.TCP_ACK),
                   flow_frame(flow.reply(), tcp_flags=pkt.TCP_ACK),
                   flow_frame(flow, tcp_flags=pkt.TCP_SYN | pkt.TCP_RST),
                   flow_frame(flow.reply(), tcp_flags=pkt.TCP_ACK)]
    return [(frame, 1) for frame in frames]


__all__ = [
    "ANY_PORT", "ANY_PREFIX", "DESCRIPTION", "NAME", "PROGRAM", "SOURCE", "Action", "Compiled",
    "Config", "ControlPlane", "CtEntry", "FirewallConfig", "Flow", "PortRange", "Prefix",
    "Reference", "Rule", "Stat", "compile_rules", "default_config", "edge_cases", "flows",
    "generate_rules", "packet",
]
