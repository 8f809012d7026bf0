"""router: an IPv4 forwarding fast path in XDP — configuration, control plane, model, traffic.

The data plane is src/morpheus/bpf/router.bpf.c; this module mirrors its structs and its
decisions byte for byte. Per frame, in this order, the program:

1. drops runts (< 14 bytes; BPF_PROG_TEST_RUN refuses them, so they only occur live);
2. passes everything when forwarding is disabled;
3. passes frames from interfaces that are not routed (unknown or disabled), frames that are
   not IPv4 (ARP, IPv6, VLAN-tagged...), and frames not addressed to the interface's MAC;
4. drops malformed IPv4: header truncated, version ≠ 4, IHL < 5, total length < 20 or larger
   than the frame holds (shorter is fine: Ethernet padding stays in place);
5. passes packets with IP options, with a multicast / broadcast / class E destination
   (224.0.0.0/4 and 240.0.0.0/4), or with TTL ≤ 1 (the stack sends ICMP time exceeded);
6. looks the destination up in the LPM trie: no route → pass (drop with `noroute_drop`);
   blackhole route → drop; local route → pass;
7. passes when the next hop is unresolved (no neighbour MAC: the stack resolves it), its
   interface is unknown or down, or the packet exceeds that interface's MTU (the stack
   fragments or sends ICMP fragmentation needed);
8. otherwise decrements the TTL, patches the checksum incrementally (RFC 1624 eqn. 3; the
   checksum is not verified, so a wrong one stays wrong), rewrites the MAC addresses and sends
   the frame out: XDP_TX when the egress interface is the ingress one, else XDP_REDIRECT.

Fragments are routed like any packet. Nothing is modified before the decision to forward.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import ipaddress
import random
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from morpheus.traffic import packet as pkt

from .common import (
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    XDP_TX,
    CountingModel,
    MapLike,
    Outcome,
    sum_counter,
)

# Re-exported: the encoders are part of each NF module's public API.
from .common import decode_u32 as decode_u32
from .common import encode_u32 as encode_u32

__all__ = [
    "DESCRIPTION", "NAME", "PROGRAM", "SOURCE", "STATS", "Config", "ControlPlane", "Flow",
    "Interface", "NextHop", "Outcome", "Reference", "Route", "RouteKind", "default_config",
    "edge_cases", "flows", "packet",
]

NAME = "router"
DESCRIPTION = ("IPv4 router: LPM-trie routing table, next-hop and interface tables, TTL "
               "decrement with incremental checksum, redirect to the egress interface.")
SOURCE = "router"
PROGRAM = "xdp_router"

MAP_CONFIG = "rt_config"
MAP_IFACES = "rt_ifaces"
MAP_ROUTES = "rt_routes"
MAP_NEXTHOPS = "rt_nexthops"
MAP_STATS = "rt_stats"
MAPS = (MAP_CONFIG, MAP_IFACES, MAP_ROUTES, MAP_NEXTHOPS, MAP_STATS)

# rt_config.flags
FEAT_FORWARD = 1 << 0
FEAT_STATS = 1 << 1
FEAT_NOROUTE_DROP = 1 << 2
# rt_iface.flags
IF_ENABLED = 1 << 0
# rt_route.flags
ROUTE_LOCAL = 1 << 0
ROUTE_BLACKHOLE = 1 << 1
# rt_nexthop.flags
NH_VALID = 1 << 0

MAX_ROUTES = 65536
MAX_NEXTHOPS = 1024
MAX_IFACES = 64

# enum rt_stat, in order; every frame counts in exactly one reason.
STATS = ("forward", "tx", "disabled", "not_us", "not_ip", "malformed", "options", "mcast",
         "ttl", "no_route", "blackhole", "local", "no_neigh", "link_down", "mtu")

ZERO_MAC = b"\0" * 6

# Host-order layouts of the C structs ("=": native byte order, no implicit padding).
_U32 = struct.Struct("=I")
_IFACE = struct.Struct("=6sHI")  # struct rt_iface: mac, flags, mtu                     12 bytes
_LPM_KEY = struct.Struct("=I4s")  # struct rt_lpm_key: prefixlen, addr (network order)   8 bytes
_ROUTE = struct.Struct("=II")  # struct rt_route: nexthop, flags                         8 bytes
_NEXTHOP = struct.Struct("=II6s6s")  # struct rt_nexthop: ifindex, flags, dmac, smac    20 bytes
_STAT = struct.Struct("=QQ")  # struct nfc_stat: packets, bytes                         16 bytes


# name → (BPF map type, key size, value size, max_entries), as router.bpf.c declares them.
MAP_LAYOUT = {
    MAP_CONFIG: ("array", 4, 4, 1),
    MAP_IFACES: ("hash", 4, _IFACE.size, MAX_IFACES),
    MAP_ROUTES: ("lpm_trie", _LPM_KEY.size, _ROUTE.size, MAX_ROUTES),
    MAP_NEXTHOPS: ("array", 4, _NEXTHOP.size, MAX_NEXTHOPS),
    MAP_STATS: ("percpu_array", 4, _STAT.size, len(STATS)),
}


def _mask(length: int) -> int:
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interface:
    """A routed interface: frames must be addressed to `mac`; `mtu` caps the IPv4 total
    length forwarded out of it."""

    ifindex: int
    mac: bytes
    mtu: int = 1500
    enabled: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.ifindex < 2**32:
            raise ValueError(f"interface ifindex {self.ifindex} is not valid")
        if len(self.mac) != 6:
            raise ValueError(f"interface {self.ifindex}: MAC must have 6 bytes")
        if not 68 <= self.mtu <= 65535:
            raise ValueError(f"interface {self.ifindex}: MTU {self.mtu} outside 68..65535")

    @property
    def flags(self) -> int:
        return IF_ENABLED if self.enabled else 0


@dataclass(frozen=True, slots=True)
class NextHop:
    """Entry `index` of the next-hop table: a neighbour behind `ifindex`. `mac` None means
    the neighbour is not resolved (connected subnets): packets go to the stack, which ARPs."""

    index: int
    ifindex: int
    mac: bytes | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.index < MAX_NEXTHOPS:
            raise ValueError(f"next-hop index {self.index} outside 0..{MAX_NEXTHOPS - 1}")
        if self.mac is not None and len(self.mac) != 6:
            raise ValueError(f"next hop {self.index}: MAC must have 6 bytes")

    @property
    def resolved(self) -> bool:
        return self.mac is not None


class RouteKind(enum.Enum):
    FORWARD = "forward"  # to the route's next hop
    LOCAL = "local"  # an address of this host: to the stack
    BLACKHOLE = "blackhole"  # discarded

    @property
    def flags(self) -> int:
        return {RouteKind.FORWARD: 0, RouteKind.LOCAL: ROUTE_LOCAL,
                RouteKind.BLACKHOLE: ROUTE_BLACKHOLE}[self]


@dataclass(frozen=True, slots=True)
class Route:
    """`prefix`/`length` (host-order address, host bits zero) → next hop or special kind."""

    prefix: int
    length: int
    nexthop: int = 0
    kind: RouteKind = RouteKind.FORWARD

    def __post_init__(self) -> None:
        if not 0 <= self.length <= 32:
            raise ValueError(f"prefix length {self.length} outside 0..32")
        if self.prefix & ~_mask(self.length) & 0xFFFFFFFF or not 0 <= self.prefix < 2**32:
            raise ValueError(f"{pkt.ip4_str(self.prefix & 0xFFFFFFFF)}/{self.length} has host "
                             "bits set")

    @classmethod
    def parse(cls, cidr: str, nexthop: int = 0, kind: RouteKind = RouteKind.FORWARD) -> Route:
        """Route.parse("10.0.0.0/8", 3)."""
        net = ipaddress.IPv4Network(cidr)
        return cls(int(net.network_address), net.prefixlen, nexthop, kind)

    def contains(self, addr: int) -> bool:
        return addr & _mask(self.length) == self.prefix

    def __str__(self) -> str:
        target = self.kind.value if self.kind is not RouteKind.FORWARD else f"nh {self.nexthop}"
        return f"{pkt.ip4_str(self.prefix)}/{self.length} {target}"


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the control plane writes: features, interfaces, next hops and routes."""

    interfaces: tuple[Interface, ...]
    nexthops: tuple[NextHop, ...]
    routes: tuple[Route, ...]
    forwarding: bool = True
    stats: bool = True
    noroute_drop: bool = False
    _ifaces: dict[int, Interface] = field(init=False, repr=False, compare=False, hash=False)
    _nexthops: dict[int, NextHop] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name in ("interfaces", "nexthops", "routes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        ifaces = {i.ifindex: i for i in self.interfaces}
        if len(ifaces) != len(self.interfaces):
            raise ValueError("two interfaces share an ifindex")
        if len(ifaces) > MAX_IFACES:
            raise ValueError(f"at most {MAX_IFACES} interfaces")
        nexthops = {n.index: n for n in self.nexthops}
        if len(nexthops) != len(self.nexthops):
            raise ValueError("two next hops share an index")
        for n in self.nexthops:
            if n.ifindex not in ifaces:
                raise ValueError(f"next hop {n.index} uses unknown interface {n.ifindex}")
        if len({(r.prefix, r.length) for r in self.routes}) != len(self.routes):
            raise ValueError("two routes share a prefix")
        if len(self.routes) > MAX_ROUTES:
            raise ValueError(f"at most {MAX_ROUTES} routes")
        for r in self.routes:
            if r.kind is RouteKind.FORWARD and r.nexthop not in nexthops:
                raise ValueError(f"route {r} names unknown next hop {r.nexthop}")
        object.__setattr__(self, "_ifaces", ifaces)
        object.__setattr__(self, "_nexthops", nexthops)

    @property
    def features(self) -> int:
        return ((FEAT_FORWARD if self.forwarding else 0) | (FEAT_STATS if self.stats else 0)
                | (FEAT_NOROUTE_DROP if self.noroute_drop else 0))

    def interface(self, ifindex: int) -> Interface | None:
        return self._ifaces.get(ifindex)

    def nexthop(self, index: int) -> NextHop | None:
        return self._nexthops.get(index)


DEFAULT_IFINDEXES = (2, 3, 4, 5, 6)

# Special-purpose ranges (RFC 6890 and friends): blackholed by the default table, never used
# for generated prefixes.
BOGONS = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
          "172.16.0.0/12", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
          "198.51.100.0/24", "203.0.113.0/24")

# Relative frequency of prefix lengths in the generated "Internet" part of the table, shaped
# like a public IPv4 BGP table: over half /24, then /22-/23, a thin tail of short prefixes,
# and a few long ones (customer assignments, RTBH /32s).
LENGTH_WEIGHTS = {8: 4, 9: 2, 10: 4, 11: 8, 12: 20, 13: 30, 14: 50, 15: 70, 16: 300, 17: 200,
                  18: 300, 19: 550, 20: 800, 21: 900, 22: 2000, 23: 1700, 24: 10000, 25: 40,
                  26: 40, 27: 30, 28: 30, 29: 40, 30: 30, 31: 6, 32: 60}


def _bogon_networks() -> list[ipaddress.IPv4Network]:
    return [ipaddress.IPv4Network(b) for b in BOGONS]


def _is_special(prefix: int, length: int, bogons: Sequence[ipaddress.IPv4Network]) -> bool:
    net = ipaddress.IPv4Network((prefix, length))
    return prefix >= 0xE0000000 or any(net.overlaps(b) for b in bogons)


def default_config(seed: int = 1, ifindexes: Sequence[int] | None = None, *,
                   prefixes: int = 5000) -> Config:
    """A border router with ~`prefixes` routes, generated deterministically from `seed`.

    Interfaces (`ifindexes`, default 2..6): two transit uplinks (/30), a peering LAN (/24)
    with 8 peers, a datacenter LAN (/22, MTU 9000) with 8 top-of-rack routers, and a
    management interface that is down. Routes: a default route, connected subnets
    (unresolved next hops: to the stack), local /32s, neighbour /32s, datacenter server
    subnets, bogon blackholes, and an Internet part whose lengths follow LENGTH_WEIGHTS
    (every length /8-/32 present, ~30% nested inside shorter generated prefixes), spread over
    the transits and peers, with a few RTBH /32 blackholes and a few routes via the down link.
    """
    ifx = tuple(ifindexes) if ifindexes is not None else DEFAULT_IFINDEXES
    if len(ifx) != 5:
        raise ValueError("the default router has 5 interfaces: pass 5 ifindexes")
    return _default_config(seed, ifx, prefixes)


@functools.lru_cache(maxsize=8)  # configs are immutable; building one takes ~0.2 s
def _default_config(seed: int, ifx: tuple[int, ...], prefixes: int) -> Config:
    rng = random.Random(f"router-default-{seed}")

    def if_mac(i: int) -> bytes:
        return bytes([0x02, 0x52, 0x54, 0x00, seed & 0xFF, i])

    # name, ifindex, address/len, mtu, enabled, neighbour count
    lans = (("transit-a", ifx[0], "10.255.0.1/30", 1500, True, 1),
            ("transit-b", ifx[1], "10.255.0.5/30", 1500, True, 1),
            ("peering", ifx[2], "10.255.1.1/24", 1500, True, 8),
            ("datacenter", ifx[3], "10.1.0.1/22", 9000, True, 8),
            ("management", ifx[4], "10.255.2.1/24", 1500, False, 1))
    interfaces = tuple(Interface(ifindex, if_mac(i), mtu, enabled)
                       for i, (_n, ifindex, _a, mtu, enabled, _c) in enumerate(lans))
    nexthops: list[NextHop] = []
    routes: dict[tuple[int, int], Route] = {}
    neighbours: dict[str, list[int]] = {}

    def add(route: Route) -> None:
        routes.setdefault((route.prefix, route.length), route)

    for name, ifindex, cidr, _mtu, _enabled, count in lans:
        iface = ipaddress.IPv4Interface(cidr)
        # Index 0 stays empty (all-zero, unresolved) so that a stray 0 never forwards.
        connected = NextHop(len(nexthops) + 1, ifindex)
        nexthops.append(connected)
        add(Route(int(iface.network.network_address), iface.network.prefixlen, connected.index))
        add(Route(int(iface.ip), 32, kind=RouteKind.LOCAL))
        neighbours[name] = []
        for k in range(count):
            addr = int(iface.ip) + 1 + k * (1 if count == 1 else 9)
            nh = NextHop(len(nexthops) + 1, ifindex, bytes([0x02, 0x4E, 0x48]) + rng.randbytes(3))
            nexthops.append(nh)
            neighbours[name].append(nh.index)
            add(Route(addr, 32, nh.index))
    transit_a, transit_b = neighbours["transit-a"][0], neighbours["transit-b"][0]
    peers, tors = neighbours["peering"], neighbours["datacenter"]
    add(Route(0, 0, transit_a))
    for bogon in BOGONS:
        add(Route.parse(bogon, kind=RouteKind.BLACKHOLE))
    # Server subnets behind the top-of-rack routers.
    for k in range(32):
        length = rng.choice((24, 24, 25, 26))
        add(Route(0x0A020000 + (k << 8), length, tors[k % len(tors)]))

    bogons = _bogon_networks()
    lengths = sorted(LENGTH_WEIGHTS)
    weights = [LENGTH_WEIGHTS[n] for n in lengths]
    wanted = max(prefixes - len(routes), len(lengths))
    plan = lengths + rng.choices(lengths, weights, k=wanted - len(lengths))
    rng.shuffle(plan)
    plan.sort(key=lambda n: n > 16)  # generate short prefixes first so long ones can nest
    internet: list[Route] = []
    for length in plan:
        for _ in range(100):
            parents = [r for r in internet[-400:] if r.length < length]
            if parents and rng.random() < 0.3:
                parent = rng.choice(parents)
                addr = parent.prefix | (rng.getrandbits(32) & ~_mask(parent.length))
            else:
                addr = rng.randrange(0x01000000, 0xE0000000)
            prefix = addr & _mask(length)
            if (prefix, length) in routes or _is_special(prefix, length, bogons):
                continue
            roll = rng.random()
            if length == 32 and roll < 0.5:
                route = Route(prefix, 32, kind=RouteKind.BLACKHOLE)  # RTBH
            elif roll < 0.45:
                route = Route(prefix, length, transit_a)
            elif roll < 0.8:
                route = Route(prefix, length, transit_b)
            elif roll < 0.998:
                route = Route(prefix, length, rng.choice(peers))
            else:
                route = Route(prefix, length, neighbours["management"][0])
            add(route)
            internet.append(route)
            break
    return Config(interfaces, tuple(nexthops), tuple(routes.values()))


# --- encoders --------------------------------------------------------------------------------





def encode_features(flags: int) -> bytes:
    """struct rt_config (4 bytes)."""
    return _U32.pack(flags)


def encode_iface(iface: Interface) -> bytes:
    """struct rt_iface (12 bytes); the key is encode_u32(iface.ifindex)."""
    return _IFACE.pack(iface.mac, iface.flags, iface.mtu)


def decode_iface(ifindex: int, raw: bytes) -> Interface:
    mac, flags, mtu = _IFACE.unpack(raw)
    return Interface(ifindex, mac, mtu, bool(flags & IF_ENABLED))


def encode_lpm_key(prefix: int, length: int) -> bytes:
    """struct rt_lpm_key (8 bytes): host-order prefix length, then the address bytes."""
    return _LPM_KEY.pack(length, prefix.to_bytes(4, "big"))


def decode_lpm_key(raw: bytes) -> tuple[int, int]:
    """struct rt_lpm_key → (prefix, length)."""
    length, addr = _LPM_KEY.unpack(raw)
    return int.from_bytes(addr, "big"), length


def encode_route(route: Route) -> bytes:
    """struct rt_route (8 bytes); the key is encode_lpm_key(route.prefix, route.length)."""
    return _ROUTE.pack(route.nexthop if route.kind is RouteKind.FORWARD else 0,
                       route.kind.flags)


def decode_route(key: bytes, value: bytes) -> Route:
    prefix, length = decode_lpm_key(key)
    nexthop, flags = _ROUTE.unpack(value)
    if flags & ROUTE_BLACKHOLE:
        return Route(prefix, length, 0, RouteKind.BLACKHOLE)
    if flags & ROUTE_LOCAL:
        return Route(prefix, length, 0, RouteKind.LOCAL)
    return Route(prefix, length, nexthop)


def encode_nexthop(nexthop: NextHop, smac: bytes) -> bytes:
    """struct rt_nexthop (20 bytes) with `smac`, the egress interface's MAC."""
    return _NEXTHOP.pack(nexthop.ifindex, NH_VALID if nexthop.resolved else 0,
                         nexthop.mac or ZERO_MAC, smac)


def decode_nexthop(index: int, raw: bytes) -> tuple[NextHop, bytes] | None:
    """struct rt_nexthop → (next hop, smac), or None for an empty (all-zero) slot."""
    ifindex, flags, dmac, smac = _NEXTHOP.unpack(raw)
    if not any(raw):
        return None
    return NextHop(index, ifindex, dmac if flags & NH_VALID else None), smac


EMPTY_NEXTHOP = bytes(_NEXTHOP.size)



# --- control plane ---------------------------------------------------------------------------


class ControlPlane:
    """Writes a router configuration into the program's maps, and reads it back.

    The maps are the only state. Writes are ordered so that the data plane never follows a
    reference to something not yet written: interfaces, then next hops, then routes; removals
    go the other way.
    """

    def __init__(self, maps: Mapping[str, MapLike]) -> None:
        missing = [name for name in MAPS if name not in maps]
        if missing:
            raise KeyError(f"router maps missing: {', '.join(missing)}")
        self.maps = maps
        self._config = maps[MAP_CONFIG]
        self._ifaces = maps[MAP_IFACES]
        self._routes = maps[MAP_ROUTES]
        self._nexthops = maps[MAP_NEXTHOPS]
        self._stats = maps[MAP_STATS]

    def apply(self, config: Config) -> None:
        """Make the maps hold exactly `config`."""
        for iface in config.interfaces:
            self._ifaces.update(encode_u32(iface.ifindex), encode_iface(iface))
        for nh in config.nexthops:
            self.set_nexthop(nh, config.interface(nh.ifindex).mac)  # type: ignore[union-attr]
        wanted = {(r.prefix, r.length) for r in config.routes}
        for route in config.routes:
            self.add_route(route)
        for key in list(self._routes.keys()):
            if decode_lpm_key(key) not in wanted:
                self._delete(self._routes, key)
        keep = {nh.index for nh in config.nexthops}
        for nh, _smac in self.nexthops():
            if nh.index not in keep:
                self.clear_nexthop(nh.index)
        ifaces = {i.ifindex for i in config.interfaces}
        for key in list(self._ifaces.keys()):
            if decode_u32(key) not in ifaces:
                self._delete(self._ifaces, key)
        self.set_features(forwarding=config.forwarding, stats=config.stats,
                          noroute_drop=config.noroute_drop)

    def set_features(self, *, forwarding: bool, stats: bool, noroute_drop: bool) -> None:
        flags = ((FEAT_FORWARD if forwarding else 0) | (FEAT_STATS if stats else 0)
                 | (FEAT_NOROUTE_DROP if noroute_drop else 0))
        self._config.update(encode_u32(0), encode_features(flags))

    def features(self) -> int:
        raw = self._config.lookup(encode_u32(0))
        return decode_u32(raw) if isinstance(raw, bytes) else 0

    def set_interface(self, iface: Interface) -> None:
        """Add or change an interface; next hops through it get its (new) MAC as source."""
        self._ifaces.update(encode_u32(iface.ifindex), encode_iface(iface))
        for nh, smac in self.nexthops():
            if nh.ifindex == iface.ifindex and smac != iface.mac:
                self.set_nexthop(nh, iface.mac)

    def remove_interface(self, ifindex: int) -> None:
        """Remove an interface (KeyError if absent); routes through it then go to the stack."""
        self._ifaces.delete(encode_u32(ifindex))

    def interfaces(self) -> list[Interface]:
        result = []
        for key in list(self._ifaces.keys()):
            raw = self._ifaces.lookup(key)
            if isinstance(raw, bytes):
                result.append(decode_iface(decode_u32(key), raw))
        return sorted(result, key=lambda i: i.ifindex)

    def set_nexthop(self, nexthop: NextHop, smac: bytes | None = None) -> None:
        """Write next hop `nexthop.index`; the source MAC defaults to its interface's MAC."""
        if smac is None:
            raw = self._ifaces.lookup(encode_u32(nexthop.ifindex))
            if not isinstance(raw, bytes):
                raise ValueError(f"next hop {nexthop.index}: interface {nexthop.ifindex} is "
                                 "not configured")
            smac = decode_iface(nexthop.ifindex, raw).mac
        self._nexthops.update(encode_u32(nexthop.index), encode_nexthop(nexthop, smac))

    def clear_nexthop(self, index: int) -> None:
        """Empty a next-hop slot: routes through it then go to the stack."""
        self._nexthops.update(encode_u32(index), EMPTY_NEXTHOP)

    def nexthops(self) -> list[tuple[NextHop, bytes]]:
        """Every non-empty next-hop slot as (next hop, source MAC)."""
        result = []
        for key in list(self._nexthops.keys()):
            raw = self._nexthops.lookup(key)
            if isinstance(raw, bytes):
                decoded = decode_nexthop(decode_u32(key), raw)
                if decoded is not None:
                    result.append(decoded)
        return sorted(result, key=lambda item: item[0].index)

    def add_route(self, route: Route) -> None:
        """Add or replace the route for `route.prefix/route.length`."""
        self._routes.update(encode_lpm_key(route.prefix, route.length), encode_route(route))

    def remove_route(self, prefix: int, length: int) -> None:
        """Remove a route; KeyError if there is none for exactly this prefix."""
        self._routes.delete(encode_lpm_key(prefix, length))

    def routes(self) -> list[Route]:
        result = []
        for key in list(self._routes.keys()):
            raw = self._routes.lookup(key)
            if isinstance(raw, bytes):
                result.append(decode_route(key, raw))
        return sorted(result, key=lambda r: (r.prefix, r.length))

    def stats(self) -> dict[str, tuple[int, int]]:
        """Counters summed over CPUs: reason → (packets, bytes)."""
        return {name: sum_counter(self._stats.lookup(encode_u32(index)))
                for index, name in enumerate(STATS)}

    @staticmethod
    def _delete(table: MapLike, key: bytes) -> None:
        with contextlib.suppress(KeyError):  # already gone: the state we want
            table.delete(key)


# --- reference model -------------------------------------------------------------------------


def decrement_ttl(header: bytes) -> bytes:
    """The first 20 bytes of an IPv4 header after the program's TTL decrement: the checksum
    is patched with RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), m = (TTL << 8) | protocol —
    exactly the C arithmetic, so that even a wrong checksum comes out the same."""
    ttl, proto = header[8], header[9]
    (check,) = struct.unpack_from("!H", header, 10)
    old_word = (ttl << 8) | proto
    new_word = (old_word - 0x0100) & 0xFFFFFFFF
    total = (~check & 0xFFFF) + (~old_word & 0xFFFF) + new_word
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return (header[:8] + bytes([(ttl - 1) & 0xFF, proto]) + struct.pack("!H", ~total & 0xFFFF)
            + header[12:20])


class Reference(CountingModel):
    """What xdp_router does to each frame. Stateless apart from `stats`, which mirrors the
    rt_stats map summed over CPUs."""

    def __init__(self, config: Config) -> None:
        self.stats: dict[str, tuple[int, int]] = dict.fromkeys(STATS, (0, 0))
        self.set_config(config)

    def set_config(self, config: Config) -> None:
        """Follow a control-plane change. The counters survive, as rt_stats does: the control
        plane never writes it."""
        self.config = config
        self._by_length: dict[int, dict[int, Route]] = {}
        for r in config.routes:
            self._by_length.setdefault(r.length, {})[r.prefix] = r
        self._lengths = sorted(self._by_length, reverse=True)

    def lookup(self, addr: int) -> Route | None:
        """Longest-prefix match of host-order `addr`."""
        for length in self._lengths:
            route = self._by_length[length].get(addr & _mask(length))
            if route is not None:
                return route
        return None

    def resolve(self, addr: int) -> NextHop | None:
        """The next hop a routable packet to `addr` would use (None: not forwarded)."""
        route = self.lookup(addr)
        if route is None or route.kind is not RouteKind.FORWARD:
            return None
        nh = self.config.nexthop(route.nexthop)
        if nh is None or not nh.resolved:
            return None
        out = self.config.interface(nh.ifindex)
        return nh if out is not None and out.enabled else None

    def process(self, frame: bytes, ingress_ifindex: int) -> Outcome:
        """The verdict, output bytes and redirect target for `frame` from `ingress_ifindex`."""
        frame = bytes(frame)
        cfg = self.config
        size = len(frame)
        if size < pkt.ETH_HLEN:
            return self._done("malformed", size, XDP_DROP, frame)
        if not cfg.forwarding:
            return self._done("disabled", size, XDP_PASS, frame)
        iface = cfg.interface(ingress_ifindex)
        if iface is None or not iface.enabled:
            return self._done("not_us", size, XDP_PASS, frame)
        if int.from_bytes(frame[12:14], "big") != pkt.ETH_P_IP:
            return self._done("not_ip", size, XDP_PASS, frame)
        if frame[0:6] != iface.mac:
            return self._done("not_us", size, XDP_PASS, frame)
        ip = pkt.ETH_HLEN
        if size < ip + pkt.IPV4_HLEN:
            return self._done("malformed", size, XDP_DROP, frame)
        version, ihl = frame[ip] >> 4, frame[ip] & 0x0F
        if version != 4 or ihl < 5:
            return self._done("malformed", size, XDP_DROP, frame)
        (total,) = struct.unpack_from("!H", frame, ip + 2)
        if total < pkt.IPV4_HLEN or total > size - ip:
            return self._done("malformed", size, XDP_DROP, frame)
        if ihl != 5:
            return self._done("options", size, XDP_PASS, frame)
        daddr = int.from_bytes(frame[ip + 16:ip + 20], "big")
        if daddr >> 28 >= 0xE:
            return self._done("mcast", size, XDP_PASS, frame)
        if frame[ip + 8] <= 1:
            return self._done("ttl", size, XDP_PASS, frame)
        route = self.lookup(daddr)
        if route is None:
            return self._done("no_route", size, XDP_DROP if cfg.noroute_drop else XDP_PASS,
                              frame)
        if route.kind is RouteKind.BLACKHOLE:
            return self._done("blackhole", size, XDP_DROP, frame)
        if route.kind is RouteKind.LOCAL:
            return self._done("local", size, XDP_PASS, frame)
        nh = cfg.nexthop(route.nexthop)
        if nh is None or nh.mac is None:
            return self._done("no_neigh", size, XDP_PASS, frame)
        out = cfg.interface(nh.ifindex)
        if out is None or not out.enabled:
            return self._done("link_down", size, XDP_PASS, frame)
        if total > out.mtu:
            return self._done("mtu", size, XDP_PASS, frame)
        smac = out.mac  # what the control plane writes into the next hop
        frame = nh.mac + smac + frame[12:ip] + decrement_ttl(frame[ip:ip + 20]) + frame[ip + 20:]
        if nh.ifindex == ingress_ifindex:
            return self._done("tx", size, XDP_TX, frame)
        self._count("forward", size)
        return Outcome(XDP_REDIRECT, frame, nh.ifindex)



# --- traffic ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flow:
    """An IPv4 flow entering on `ingress` from the neighbour `src_mac` (host-order addresses;
    ports 0 for ICMP). Frames are addressed to the ingress interface's MAC, `dst_mac`."""

    src: int
    dst: int
    proto: int
    sport: int
    dport: int
    ingress: int
    src_mac: bytes
    dst_mac: bytes
    ttl: int = 64


def _public_address(rng: random.Random, bogons: Sequence[ipaddress.IPv4Network]) -> int:
    while True:
        addr = rng.randrange(0x01000000, 0xE0000000)
        if not _is_special(addr, 32, bogons):
            return addr


def _address_in(route: Route, model: Reference, rng: random.Random) -> int:
    """An address whose longest match is `route` if one is found quickly (else any inside)."""
    addr = route.prefix
    for _ in range(16):
        addr = route.prefix | (rng.getrandbits(32) & ~_mask(route.length) & 0xFFFFFFFF)
        if model.lookup(addr) is route:
            return addr
    return addr


def _neighbour_macs(config: Config) -> dict[int, list[bytes]]:
    macs: dict[int, list[bytes]] = {}
    for nh in config.nexthops:
        if nh.mac is not None:
            macs.setdefault(nh.ifindex, []).append(nh.mac)
    return macs


def flows(config: Config, count: int, rng: random.Random) -> list[Flow]:
    """`count` distinct flows. ~92% go to routable destinations: 70% of those pick a
    forwarding route uniformly (so mostly /24s, like real traffic over a BGP table), 30% pick
    a prefix length uniformly first (every length gets traffic); the destination address is
    one whose longest match is that route. The other ~8% go to local addresses, connected
    subnets (unresolved neighbours), blackholes and routes via the down interface. Ingress is
    an enabled interface other than the egress one 95% of the time."""
    model = Reference(config)
    enabled = [i for i in config.interfaces if i.enabled]
    if not enabled:
        raise ValueError("the configuration has no enabled interface")
    routable: list[tuple[Route, NextHop]] = []
    others: list[Route] = []
    for r in config.routes:
        nh = config.nexthop(r.nexthop) if r.kind is RouteKind.FORWARD else None
        out = config.interface(nh.ifindex) if nh is not None else None
        if nh is not None and nh.resolved and out is not None and out.enabled:
            routable.append((r, nh))
        else:
            others.append(r)
    by_length: dict[int, list[tuple[Route, NextHop]]] = {}
    for item in routable:
        by_length.setdefault(item[0].length, []).append(item)
    lengths = sorted(by_length)
    macs = _neighbour_macs(config)
    bogons = _bogon_networks()
    found: dict[Flow, None] = {}
    attempts = 0
    while len(found) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise ValueError(f"cannot find {count} distinct flows in this configuration")
        egress = None
        if routable and (rng.random() < 0.92 or not others):
            if rng.random() < 0.7:
                route, nh = rng.choice(routable)
            else:
                route, nh = rng.choice(by_length[rng.choice(lengths)])
            egress = nh.ifindex
        else:
            route = rng.choice(others)
        dst = _address_in(route, model, rng)
        if dst >> 28 >= 0xE:
            continue
        choices = [i for i in enabled if i.ifindex != egress] or enabled
        iface = rng.choice(choices) if rng.random() < 0.95 else rng.choice(enabled)
        src_mac = rng.choice(macs.get(iface.ifindex) or [b"\x02\x4e\x48" + rng.randbytes(3)])
        proto = rng.choices((pkt.IPPROTO_TCP, pkt.IPPROTO_UDP, pkt.IPPROTO_ICMP),
                            (80, 18, 2))[0]
        sport, dport = (rng.randint(1024, 65535), rng.choice((80, 443, 53, 22, 8080, 3478)))
        if proto == pkt.IPPROTO_ICMP:
            sport, dport = rng.getrandbits(16), rng.randint(1, 1000)
        ttl = rng.choice((64, 64, 128, 255, 63, 127, 254, 60, 50, 32, 3))
        flow = Flow(_public_address(rng, bogons), dst, proto, sport, dport, iface.ifindex,
                    src_mac, iface.mac, ttl)
        found[flow] = None
    return list(found)


def packet(flow: Flow, rng: random.Random) -> tuple[bytes, int]:
    """One frame of `flow` (random payload length up to 1400 bytes, DF mostly set) and its
    ingress ifindex."""
    payload = rng.randbytes(rng.choice((0, 0, 6, 18, 64, 200, 512, 1000, 1400)))
    segment = pkt.l4(flow.proto, flow.src, flow.dst, flow.sport, flow.dport, payload)
    ip = pkt.ipv4(flow.src, flow.dst, flow.proto, segment, ttl=flow.ttl,
                  ident=rng.getrandbits(16), flags_frag=pkt.IP_DF if rng.random() < 0.8 else 0,
                  tos=rng.choice((0, 0, 0, 0x10, 0xB8)))
    return pkt.ethernet(flow.dst_mac, flow.src_mac, pkt.ETH_P_IP, ip), flow.ingress


def _with_checksum(header: bytes, value: int) -> bytes:
    return header[:10] + struct.pack("!H", value) + header[12:]


def _ident_for_checksum(src: int, dst: int, proto: int, total: int, ttl: int,
                        target: int) -> int | None:
    """An IP id that makes the header's correct checksum equal `target`."""
    words = struct.unpack("!10H", struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, ttl,
                                              proto, 0, src.to_bytes(4, "big"),
                                              dst.to_bytes(4, "big")))
    base = sum(words)
    for ident in range(65536):
        s = base + ident
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        if ~s & 0xFFFF == target:
            return ident
    return None


def edge_cases(config: Config, rng: random.Random) -> list[tuple[bytes, int]]:
    """Frames covering every decision of the program: TTL 0/1/2/255, fragments, IP options,
    non-IPv4 (ARP, IPv6, 802.1Q, LLDP), truncated and malformed headers, Ethernet padding,
    foreign MACs, multicast / broadcast destinations, every route kind, unresolved neighbours,
    the down interface, MTU overflow, hairpin (XDP_TX), foreign and disabled ingress
    interfaces, no route (when the table has no default route), and checksum corner cases."""
    model = Reference(config)
    out: list[tuple[bytes, int]] = []
    enabled = [i for i in config.interfaces if i.enabled]
    if not enabled:
        return out
    bogons = _bogon_networks()
    macs = _neighbour_macs(config)
    routable = [r for r in config.routes if r.kind is RouteKind.FORWARD
                and model.resolve(r.prefix) is not None and model.lookup(r.prefix) is r]
    route = rng.choice(routable) if routable else None
    dst = _address_in(route, model, rng) if route else _public_address(rng, bogons)
    egress = model.resolve(dst)
    iface = next((i for i in enabled if egress is None or i.ifindex != egress.ifindex),
                 enabled[0])
    src_mac = (macs.get(iface.ifindex) or [b"\x02\x4e\x48\x00\x00\x01"])[0]
    src = _public_address(rng, bogons)

    def ip_frame(daddr: int = dst, *, ttl: int = 64, via: Interface = iface,
                 eth_dst: bytes | None = None, proto: int = pkt.IPPROTO_UDP,
                 payload: bytes = b"edge", flags_frag: int = 0, options: bytes = b"",
                 ident: int = 0) -> bytes:
        segment = pkt.l4(proto, src, daddr, 4000, 53, payload)
        ip = pkt.ipv4(src, daddr, proto, segment, ttl=ttl, ident=ident, flags_frag=flags_frag,
                      options=options)
        return pkt.ethernet(via.mac if eth_dst is None else eth_dst, src_mac, pkt.ETH_P_IP, ip)

    def emit(frame: bytes, via: Interface = iface) -> None:
        out.append((frame, via.ifindex))

    # TTL.
    for ttl in (0, 1, 2, 3, 255):
        emit(ip_frame(ttl=ttl))
    # Fragments: first, middle and last (no transport header in later ones), DF.
    emit(ip_frame(flags_frag=pkt.IP_MF, payload=bytes(64)))
    emit(ip_frame(flags_frag=pkt.IP_MF | 185, payload=bytes(64)))
    emit(ip_frame(flags_frag=370, payload=bytes(40)))
    emit(ip_frame(flags_frag=pkt.IP_DF))
    # IP options: NOPs + EOL, record route, and options with TTL 1.
    emit(ip_frame(options=b"\x01\x01\x01\x00"))
    emit(ip_frame(options=b"\x07\x0b\x04" + bytes(8) + b"\x00"))
    emit(ip_frame(ttl=1, options=b"\x01\x01\x01\x00"))
    # Protocols.
    for proto in (pkt.IPPROTO_TCP, pkt.IPPROTO_ICMP, pkt.IPPROTO_IPIP, 47):
        emit(ip_frame(proto=proto))
    # Not IPv4.
    arp = pkt.arp(pkt.ARPOP_REQUEST, src_mac, "10.255.0.2", ZERO_MAC, "10.255.0.1")
    emit(pkt.ethernet(b"\xff" * 6, src_mac, pkt.ETH_P_ARP, arp))
    emit(pkt.ethernet(iface.mac, src_mac, pkt.ETH_P_ARP,
                      pkt.arp(pkt.ARPOP_REPLY, src_mac, "10.255.0.2", iface.mac,
                              "10.255.0.1")))
    emit(pkt.ethernet(iface.mac, src_mac, pkt.ETH_P_IPV6,
                      pkt.ipv6(b"\x20\x01\x0d\xb8" + bytes(11) + b"\x01",
                               b"\x20\x01\x0d\xb8" + bytes(11) + b"\x02", 59, b"")))
    tagged = ip_frame()
    emit(tagged[:12] + struct.pack("!HH", pkt.ETH_P_8021Q, 100) + tagged[12:])
    emit(pkt.ethernet(pkt.mac("01:80:c2:00:00:0e"), src_mac, 0x88CC, b"\x02\x07\x04" + src_mac))
    # Truncated and malformed.
    good = ip_frame()
    emit(good[:14])
    emit(good[:24])
    emit(good[:33])
    emit(good[:34])  # complete header, total length larger than the frame
    emit(good[:-1])
    emit(good[:14] + b"\x65" + good[15:])  # version 6
    emit(good[:14] + b"\x44" + good[15:])  # IHL 4
    emit(good[:16] + struct.pack("!H", 19) + good[18:])  # total length below 20
    emit(good[:16] + struct.pack("!H", 20) + good[18:])  # header only, payload is padding
    emit(good + bytes(20))  # Ethernet padding after the IP packet
    # Layer 2 destination not ours.
    emit(ip_frame(eth_dst=b"\xff" * 6))
    emit(ip_frame(eth_dst=b"\x02" + rng.randbytes(5)))
    emit(ip_frame(eth_dst=pkt.mac("01:00:5e:00:00:05")))
    # Multicast, broadcast, class E destinations.
    for d in ("224.0.0.5", "239.255.255.250", "255.255.255.255", "240.0.0.1"):
        emit(ip_frame(pkt.ip4(d)))
    # Every kind of route: the first few of each kind.
    kinds = {"local": [], "connected": [], "blackhole": [], "down": [], "forward": []}
    for r in config.routes:
        if model.lookup(r.prefix) is not r:
            continue
        if r.kind is RouteKind.LOCAL:
            kinds["local"].append(r)
        elif r.kind is RouteKind.BLACKHOLE:
            kinds["blackhole"].append(r)
        else:
            nh = config.nexthop(r.nexthop)
            out_if = config.interface(nh.ifindex) if nh is not None else None
            if nh is None or not nh.resolved:
                kinds["connected"].append(r)
            elif out_if is None or not out_if.enabled:
                kinds["down"].append(r)
            else:
                kinds["forward"].append(r)
    for routes in kinds.values():
        for r in routes[:4]:
            emit(ip_frame(_address_in(r, model, rng)))
    # One destination per prefix length present among forwarding routes.
    by_length: dict[int, Route] = {}
    for r in kinds["forward"]:
        by_length.setdefault(r.length, r)
    for r in by_length.values():
        emit(ip_frame(_address_in(r, model, rng)))
    # No route: addresses the table does not cover (only without a default route).
    for _ in range(200):
        addr = _public_address(rng, bogons)
        if model.lookup(addr) is None:
            emit(ip_frame(addr))
            break
    # MTU: exactly the egress MTU (forwarded) and one byte more (to the stack), arriving on
    # the interface with the largest MTU so that the frame is plausible.
    if egress is not None:
        mtu = config.interface(egress.ifindex).mtu  # type: ignore[union-attr]
        big = max(enabled, key=lambda i: i.mtu)
        overhead = pkt.IPV4_HLEN + 8  # UDP
        for extra in (0, 1):
            emit(ip_frame(payload=bytes(mtu - overhead + extra), via=big), big)
        # Hairpin: arriving on the egress interface itself → XDP_TX.
        back = config.interface(egress.ifindex)
        if back is not None and back.enabled:
            emit(ip_frame(via=back), back)
    # Ingress not routed: loopback (never configured) and disabled interfaces.
    if config.interface(1) is None:
        out.append((ip_frame(), 1))
    for i in config.interfaces:
        if not i.enabled:
            emit(ip_frame(via=i), i)
    # Checksums: wrong values (kept wrong, patched incrementally) and a correct 0x0000.
    for value in (0x0000, 0xFFFF, 0x00FF, 0xFF00, 0x0100, 0xFEFF, 0x1234):
        frame = ip_frame(ttl=2)
        emit(frame[:14] + _with_checksum(frame[14:34], value) + frame[34:])
    payload = b"edge"
    total = pkt.IPV4_HLEN + 8 + len(payload)
    for ttl in (2, 64):
        ident = _ident_for_checksum(src, dst, pkt.IPPROTO_UDP, total, ttl, 0x0000)
        if ident is not None:
            emit(ip_frame(ttl=ttl, ident=ident, payload=payload))
    return out


def routes_by_length(config: Config) -> dict[int, int]:
    """How many routes of each prefix length the configuration has."""
    counts: dict[int, int] = {}
    for r in config.routes:
        counts[r.length] = counts.get(r.length, 0) + 1
    return dict(sorted(counts.items()))

