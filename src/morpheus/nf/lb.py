"""lb: an L4 load balancer in the style of Katran.

A VIP is (address, port, protocol); port 0 means every port of that address and protocol, and
is looked up only after the exact port misses. Each VIP has a Maglev consistent-hashing ring of
`RING_SIZE` slots that the control plane fills with backend indices; a flow's slot is
`flow_hash(5-tuple) % RING_SIZE`. The chosen backend is remembered per flow in an LRU
connection table. The packet leaves IP-in-IP encapsulated towards the backend, in a new
Ethernet header from the LB's MAC to the gateway's, with XDP_TX.

Maps (key → value; sizes in bytes; host byte order except be16/be32 and "net order"):

============  ===============  ==============================  ===============================
name          type             key                             value
============  ===============  ==============================  ===============================
lb_config     array[1]         u32 0 (4)                       lb_config {be32 src_addr;
                                                               u8 own_mac[6]; u8 gw_mac[6];
                                                               u32 features} (20)
lb_vips       hash[64]         {be32 addr; be16 port; u8       {u32 index; u32 flags} (8)
                               proto; u8 pad} (8)
lb_ring       array[64*4099]   u32 index*4099+slot (4)         u32 backend index (4)
lb_backends   array[1024]      u32 backend index (4)           {be32 addr; u32 flags} (8)
lb_conn       LRU hash[65536]  5-tuple, net order, padded (16) u32 backend index (4)
lb_vip_stats  percpu array     u32 VIP index (4)               {u64 packets; u64 bytes} (16)
lb_stats      percpu array     u32 Stat (4)                    {u64 packets; u64 bytes} (16)
============  ===============  ==============================  ===============================

Semantics (mirrored exactly by `Reference`): not IPv4, 802.1Q-tagged frames included →
XDP_PASS; shorter than Ethernet + IPv4, IPv4 version ≠ 4 or IHL < 5, TCP shorter than 20 or UDP
shorter than 8 bytes → XDP_DROP; IPv4 options or any fragment → XDP_PASS (Katran-style LBs leave
them to the stack: they carry no usable 5-tuple here); neither TCP nor UDP → XDP_PASS; no VIP →
XDP_PASS; the VIP's ring slot names no backend (empty ring, or an emptied backend) →
XDP_DROP; otherwise XDP_TX with the encapsulated frame.

Backend index 0 is never used: an all-zero ring (a VIP without backends) thus points at an
empty backend. A connection-table entry whose backend has since been emptied is ignored and
overwritten with the ring's current choice; backend indices are reused lowest-first, so an
entry may follow a reused index to its new backend, as in Katran. The connection table holds
65,536 entries: the model never evicts, so tests keep far fewer flows.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum

from morpheus.traffic import packet as pkt

from ._l4 import (
    NF_MAC,
    Flow,
    TableWriter,
    arp_frame,
    flow_frame,
    ipv6_frame,
    random_frame,
)
from .common import (
    XDP_DROP,
    XDP_PASS,
    XDP_TX,
    MapLike,
    Outcome,
)
from .common import decode_counter as decode_counter

# Re-exported: the encoders are part of each NF module's public API.
from .common import decode_u32 as decode_u32
from .common import encode_u32 as encode_u32

NAME = "lb"
DESCRIPTION = ("L4 load balancer in the style of Katran: VIP table, Maglev ring per VIP, LRU "
               "connection table and IP-in-IP encapsulation towards the backend.")
SOURCE = "lb"
PROGRAM = "xdp_lb"

MAX_VIPS = 64
RING_SIZE = 4099
MAX_BACKENDS = 1024
HASH_SEED = 0x4D6F7270
OUTER_TTL = 64
CONN_SIZE = 65536

F_STATS = 0x1
F_CONNTRACK = 0x2
VIP_NO_SPORT = 0x1  # hash without the source port
VIP_LRU_BYPASS = 0x2  # never use the connection table

MAP_CONFIG = "lb_config"
MAP_VIPS = "lb_vips"
MAP_RING = "lb_ring"
MAP_BACKENDS = "lb_backends"
MAP_CONN = "lb_conn"
MAP_VIP_STATS = "lb_vip_stats"
MAP_STATS = "lb_stats"


class Stat(IntEnum):
    """Slots of lb_stats."""

    NON_IP = 0
    MALFORMED = 1
    OPT_FRAG = 2
    NON_L4 = 3
    NO_VIP = 4
    CONN_HIT = 5
    CONN_MISS = 6
    NO_BACKEND = 7
    ENCAP_FAIL = 8
    TX = 9


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True, order=True)
class Backend:
    """A real server: host-order address and Maglev weight (0 = drained, in no slot)."""

    addr: int
    weight: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.addr <= 0xFFFFFFFF:
            raise ValueError("backend address must be a non-zero IPv4 address")
        if not 0 <= self.weight <= 1000:
            raise ValueError(f"weight {self.weight} out of range 0..1000")


VipKey = tuple[int, int, int]  # (addr, port, proto)


@dataclass(frozen=True, slots=True)
class Vip:
    """A virtual service; `port` 0 accepts every port. Backends are unique by address."""

    addr: int
    port: int
    proto: int
    backends: tuple[Backend, ...] = ()
    flags: int = 0  # VIP_NO_SPORT | VIP_LRU_BYPASS

    def __post_init__(self) -> None:
        if self.proto not in (pkt.IPPROTO_TCP, pkt.IPPROTO_UDP):
            raise ValueError("a VIP is TCP or UDP")
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port {self.port} out of range")
        addrs = [b.addr for b in self.backends]
        if len(set(addrs)) != len(addrs):
            raise ValueError("duplicate backend in VIP")

    @property
    def key(self) -> VipKey:
        return (self.addr, self.port, self.proto)

    def __str__(self) -> str:
        proto = "tcp" if self.proto == pkt.IPPROTO_TCP else "udp"
        return f"{pkt.ip4_str(self.addr)}:{self.port or '*'}/{proto}"


@dataclass(frozen=True, slots=True)
class LbConfig:
    """VIPs with their backends, the encapsulation addresses and the feature switches."""

    vips: tuple[Vip, ...]
    src_addr: int = pkt.ip4("10.0.0.1")
    own_mac: bytes = NF_MAC
    gw_mac: bytes = pkt.mac("02:00:00:00:00:fe")
    stats: bool = True
    conntrack: bool = True

    def __post_init__(self) -> None:
        if len(self.vips) > MAX_VIPS:
            raise ValueError(f"{len(self.vips)} VIPs; at most {MAX_VIPS}")
        keys = [v.key for v in self.vips]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate VIP")
        if len({b.addr for v in self.vips for b in v.backends}) >= MAX_BACKENDS:
            raise ValueError(f"at most {MAX_BACKENDS - 1} distinct backends")
        if len(self.own_mac) != 6 or len(self.gw_mac) != 6:
            raise ValueError("MAC addresses are 6 bytes")

    @property
    def features(self) -> int:
        return (F_STATS if self.stats else 0) | (F_CONNTRACK if self.conntrack else 0)

    def vip(self, key: VipKey) -> Vip:
        for vip in self.vips:
            if vip.key == key:
                return vip
        raise KeyError(key)


Config = LbConfig


def default_config(seed: int = 1) -> LbConfig:
    """16 VIPs on 8 addresses of 192.0.2.0/24: web (80, 443/TCP), QUIC (443/UDP, source port
    left out of the hash), DNS (53/UDP, connection table bypassed), one all-ports VIP and one
    VIP still being provisioned (no backends). 4-24 backends each from 10.1.0.0/16, some
    shared between VIPs, some weighted."""
    rng = random.Random(seed)
    pool = [pkt.ip4(f"10.1.{i // 200}.{10 + i % 200}") for i in range(120)]
    rng.shuffle(pool)
    services = [
        (80, pkt.IPPROTO_TCP, 0), (443, pkt.IPPROTO_TCP, 0),
        (443, pkt.IPPROTO_UDP, VIP_NO_SPORT), (53, pkt.IPPROTO_UDP, VIP_LRU_BYPASS),
    ]
    vips: list[Vip] = []
    for i in range(8):
        addr = pkt.ip4(f"192.0.2.{10 + i}")
        for port, proto, flags in (services[:2] if i % 2 else services[1:]):
            if len(vips) == 14:
                break
            count = rng.randint(4, 24)
            start = rng.randrange(len(pool) - count)
            weighted = rng.random() < 0.3
            backends = tuple(Backend(a, rng.randint(1, 3) if weighted else 1)
                             for a in sorted(pool[start:start + count]))
            vips.append(Vip(addr, port, proto, backends, flags))
    vips.append(Vip(pkt.ip4("192.0.2.100"), 0, pkt.IPPROTO_TCP,
                    tuple(Backend(a) for a in sorted(pool[:8])), 0))
    vips.append(Vip(pkt.ip4("192.0.2.101"), 8080, pkt.IPPROTO_TCP, (), 0))
    return LbConfig(tuple(vips))


# ---------------------------------------------------------------------------- hash, Maglev

_M32 = 0xFFFFFFFF


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def _mix_word(h: int, k: int) -> int:
    k = (k * 0xCC9E2D51) & _M32
    k = _rotl32(k, 15)
    k = (k * 0x1B873593) & _M32
    h ^= k
    h = _rotl32(h, 13)
    return (h * 5 + 0xE6546B64) & _M32


def flow_hash(src: int, dst: int, sport: int, dport: int, proto: int) -> int:
    """The data plane's flow hash (flow_hash in lb.bpf.c), host-order inputs."""
    h = HASH_SEED
    for word in (src, dst, ((sport << 16) | dport) & _M32, proto):
        h = _mix_word(h, word)
    h ^= 16
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def _permutation(addr: int, size: int) -> tuple[int, int]:
    digest = hashlib.blake2b(addr.to_bytes(4, "big"), digest_size=16,
                             person=b"morpheus-maglev").digest()
    offset = int.from_bytes(digest[:8], "little") % size
    skip = int.from_bytes(digest[8:], "little") % (size - 1) + 1
    return offset, skip


def maglev_table(backends: Sequence[Backend], size: int = RING_SIZE) -> list[int | None]:
    """Maglev lookup table: for each slot, the position in `backends` that owns it.

    Backend i prefers slots offset_i, offset_i + skip_i, ... (mod the prime `size`), offset
    and skip derived from its address only, so a backend's preferences do not depend on the
    others. Backends take turns claiming their next free preferred slot; in turn r a backend
    of weight w claims floor((r+1)w/W) - floor(rw/W) slots (W the largest weight), so shares
    follow the weights. All slots are None when no backend has a weight.
    """
    table: list[int | None] = [None] * size
    live = [i for i, b in enumerate(backends) if b.weight > 0]
    if not live:
        return table
    wmax = max(backends[i].weight for i in live)
    perms = {i: _permutation(backends[i].addr, size) for i in live}
    nxt = dict.fromkeys(live, 0)
    filled = 0
    turn = 0
    while True:
        for i in live:
            w = backends[i].weight
            claims = (turn + 1) * w // wmax - turn * w // wmax
            offset, skip = perms[i]
            for _ in range(claims):
                slot = (offset + nxt[i] * skip) % size
                while table[slot] is not None:
                    nxt[i] += 1
                    slot = (offset + nxt[i] * skip) % size
                table[slot] = i
                nxt[i] += 1
                filled += 1
                if filled == size:
                    return table
        turn += 1


# ------------------------------------------------------------------------------- encoders

_U32 = struct.Struct("=I")
_CONFIG = struct.Struct("=4s6s6sI")
_VIP_KEY = struct.Struct("!IHBx")  # addr and port in network order, as read from the packet
_VIP_META = struct.Struct("=II")
_BACKEND = struct.Struct("=4sI")
_FLOW_KEY = struct.Struct("!IIHHB3x")
_COUNTER = struct.Struct("=QQ")






def encode_config(src_addr: int, own_mac: bytes, gw_mac: bytes, features: int) -> bytes:
    return _CONFIG.pack(src_addr.to_bytes(4, "big"), own_mac, gw_mac, features)


def decode_config(raw: bytes) -> tuple[int, bytes, bytes, int]:
    src, own, gw, features = _CONFIG.unpack(raw)
    return int.from_bytes(src, "big"), own, gw, features


def encode_vip_key(addr: int, port: int, proto: int) -> bytes:
    return _VIP_KEY.pack(addr, port, proto)


def decode_vip_key(raw: bytes) -> VipKey:
    return _VIP_KEY.unpack(raw)


def encode_vip_meta(index: int, flags: int) -> bytes:
    return _VIP_META.pack(index, flags)


def decode_vip_meta(raw: bytes) -> tuple[int, int]:
    return _VIP_META.unpack(raw)


def encode_backend(addr: int, flags: int = 0) -> bytes:
    return _BACKEND.pack(addr.to_bytes(4, "big"), flags)


def decode_backend(raw: bytes) -> tuple[int, int]:
    addr, flags = _BACKEND.unpack(raw)
    return int.from_bytes(addr, "big"), flags


def encode_flow_key(src: int, dst: int, sport: int, dport: int, proto: int) -> bytes:
    """struct nf_flow_key (lb_conn's key)."""
    return _FLOW_KEY.pack(src, dst, sport, dport, proto)


def decode_flow_key(raw: bytes) -> tuple[int, int, int, int, int]:
    return _FLOW_KEY.unpack(raw)




# --------------------------------------------------------------------------- control plane


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the control plane put things: VIP → index (ring, stats), backend → index."""

    vip_index: Mapping[VipKey, int]
    backend_index: Mapping[int, int]  # backend address → slot of lb_backends (≥ 1)


def default_layout(config: LbConfig) -> Layout:
    """The layout `ControlPlane.apply` produces: VIPs in order, backends by first use."""
    backends: dict[int, int] = {}
    for vip in config.vips:
        for b in vip.backends:
            backends.setdefault(b.addr, len(backends) + 1)
    return Layout({v.key: i for i, v in enumerate(config.vips)}, backends)


def ring_backends(vip: Vip, layout: Layout) -> list[int]:
    """The ring of `vip` as lb_backends indices (0 = empty slot)."""
    ordered = sorted(vip.backends)  # by address: the ring must not depend on config order
    return [0 if i is None else layout.backend_index[ordered[i].addr]
            for i in maglev_table(ordered)]


class ControlPlane:
    """Writes an `LbConfig` into the LB's maps and keeps it up to date.

    Rings are recomputed with Maglev on every backend change and written as differences.
    Ordering keeps the data plane consistent: a backend entry is written before any ring slot
    names it, a ring before its VIP entry, and on removal the VIP entry goes first, the ring
    and unused backend entries after. The connection table and statistics belong to the data
    plane and are never written.
    """

    def __init__(self, maps: Mapping[str, MapLike]) -> None:
        self.maps = maps
        self._config_w = TableWriter(maps[MAP_CONFIG], array=True)
        self._vips_w = TableWriter(maps[MAP_VIPS], array=False)
        self._ring_w = TableWriter(maps[MAP_RING], array=True, zero=encode_u32(0))
        self._backends_w = TableWriter(maps[MAP_BACKENDS], array=True, zero=encode_backend(0))
        self._config: LbConfig | None = None
        self._vip_index: dict[VipKey, int] = {}
        self._backend_index: dict[int, int] = {}
        self._rings: dict[int, list[int]] = {}
        self.writes = 0

    @property
    def config(self) -> LbConfig:
        if self._config is None:
            raise RuntimeError("no configuration applied yet")
        return self._config

    @property
    def layout(self) -> Layout:
        return Layout(dict(self._vip_index), dict(self._backend_index))

    def apply(self, config: LbConfig) -> None:
        """Write the whole configuration, removing every other VIP."""
        for writer in (self._config_w, self._vips_w, self._ring_w, self._backends_w):
            writer.forget()
        layout = default_layout(config)
        self._vip_index = dict(layout.vip_index)
        self._backend_index = dict(layout.backend_index)
        self._rings = {}
        self.writes += self._backends_w.sync(
            {encode_u32(i): encode_backend(a) for a, i in self._backend_index.items()})
        # Slot 0 must read as empty: rings of VIPs without backends point at it.
        self.writes += self._backends_w.set(encode_u32(0), encode_backend(0))
        for vip in config.vips:
            self._write_ring(vip)
        self.writes += self._vips_w.sync({
            encode_vip_key(*v.key): encode_vip_meta(self._vip_index[v.key], v.flags)
            for v in config.vips})
        self.writes += self._config_w.sync({encode_u32(0): encode_config(
            config.src_addr, config.own_mac, config.gw_mac, config.features)})
        self._config = config

    def _write_ring(self, vip: Vip) -> None:
        index = self._vip_index[vip.key]
        ring = ring_backends(vip, self.layout)
        old = self._rings.get(index)
        base = index * RING_SIZE
        for slot, backend in enumerate(ring):
            if old is None or old[slot] != backend:
                self.writes += self._ring_w.set(encode_u32(base + slot), encode_u32(backend))
        self._rings[index] = ring

    def _clear_ring(self, index: int) -> None:
        old = self._rings.pop(index, None)
        for slot in range(RING_SIZE):
            if old is None or old[slot]:
                self.writes += self._ring_w.set(encode_u32(index * RING_SIZE + slot),
                                                encode_u32(0))

    def _ensure_backends(self, vip: Vip) -> None:
        for b in vip.backends:
            if b.addr not in self._backend_index:
                used = set(self._backend_index.values())
                index = next(i for i in range(1, MAX_BACKENDS) if i not in used)
                self._backend_index[b.addr] = index
                self.writes += self._backends_w.set(encode_u32(index), encode_backend(b.addr))

    def _release_backends(self, config: LbConfig) -> None:
        in_use = {b.addr for v in config.vips for b in v.backends}
        for addr in [a for a in self._backend_index if a not in in_use]:
            index = self._backend_index.pop(addr)
            self.writes += self._backends_w.set(encode_u32(index), encode_backend(0))

    def _replace_vip(self, vip: Vip) -> None:
        config = self.config
        self._ensure_backends(vip)
        self._write_ring(vip)
        self._config = replace(config, vips=tuple(vip if v.key == vip.key else v
                                                  for v in config.vips))
        self._release_backends(self._config)

    def add_vip(self, vip: Vip) -> None:
        """Add a VIP with its backends (ValueError if it exists or no index is free)."""
        config = self.config
        if any(v.key == vip.key for v in config.vips):
            raise ValueError(f"VIP {vip} already present")
        new_config = replace(config, vips=(*config.vips, vip))  # validates limits
        used = set(self._vip_index.values())
        index = next(i for i in range(MAX_VIPS) if i not in used)
        self._ensure_backends(vip)
        self._vip_index[vip.key] = index
        self._write_ring(vip)
        self.writes += self._vips_w.set(encode_vip_key(*vip.key),
                                        encode_vip_meta(index, vip.flags))
        self._config = new_config

    def remove_vip(self, key: VipKey) -> Vip:
        """Remove the VIP (KeyError if absent); returns it."""
        config = self.config
        vip = config.vip(key)
        self.writes += self._vips_w.sync({
            encode_vip_key(*v.key): encode_vip_meta(self._vip_index[v.key], v.flags)
            for v in config.vips if v.key != key})
        index = self._vip_index.pop(key)
        self._clear_ring(index)
        self._config = replace(config, vips=tuple(v for v in config.vips if v.key != key))
        self._release_backends(self._config)
        return vip

    def add_backend(self, key: VipKey, backend: Backend) -> None:
        """Add (or re-weight) a backend of a VIP and recompute its ring."""
        vip = self.config.vip(key)
        others = tuple(b for b in vip.backends if b.addr != backend.addr)
        self._replace_vip(replace(vip, backends=(*others, backend)))

    def remove_backend(self, key: VipKey, addr: int) -> None:
        """Remove a backend from a VIP (KeyError if absent) and recompute its ring."""
        vip = self.config.vip(key)
        if all(b.addr != addr for b in vip.backends):
            raise KeyError(addr)
        self._replace_vip(replace(vip, backends=tuple(b for b in vip.backends
                                                      if b.addr != addr)))

    def set_features(self, *, stats: bool | None = None, conntrack: bool | None = None) -> None:
        config = self.config
        config = replace(config, stats=config.stats if stats is None else stats,
                         conntrack=config.conntrack if conntrack is None else conntrack)
        self.writes += self._config_w.sync({encode_u32(0): encode_config(
            config.src_addr, config.own_mac, config.gw_mac, config.features)})
        self._config = config


# ------------------------------------------------------------------------ reference model


def encapsulate(frame: bytes, config: LbConfig, backend: int) -> bytes:
    """The frame as xdp_lb leaves it for XDP_TX: new Ethernet header, outer IPv4 header
    (TOS copied, total length = inner + 20 modulo 2^16, id 0, no flags, TTL 64, IPIP), then
    everything after the original Ethernet header, unchanged."""
    tos = frame[pkt.ETH_HLEN + 1]
    (inner_len,) = struct.unpack_from("!H", frame, pkt.ETH_HLEN + 2)
    outer = struct.pack("!BBHHHBBH4s4s", 0x45, tos, (inner_len + 20) & 0xFFFF, 0, 0,
                        OUTER_TTL, pkt.IPPROTO_IPIP, 0, config.src_addr.to_bytes(4, "big"),
                        backend.to_bytes(4, "big"))
    outer = outer[:10] + struct.pack("!H", pkt.checksum(outer)) + outer[12:]
    return (config.gw_mac + config.own_mac + struct.pack("!H", pkt.ETH_P_IP) + outer
            + frame[pkt.ETH_HLEN:])


class Reference:
    """The LB's expected behaviour, packet by packet, including its connection table.

    `stats` counts per Stat and `vip_stats` per VIP key, as the per-CPU counters summed over
    CPUs would, when statistics are enabled.
    """

    def __init__(self, config: LbConfig, layout: Layout | None = None) -> None:
        self.conn: dict[tuple[int, int, int, int, int], int] = {}
        self.stats: Counter[tuple[Stat, str]] = Counter()
        self.vip_stats: Counter[tuple[VipKey, str]] = Counter()
        self.set_config(config, layout)

    def set_config(self, config: LbConfig, layout: Layout | None = None) -> None:
        """Follow a control-plane change (pass `ControlPlane.layout` after incremental
        changes); the connection table survives, as in the kernel."""
        self.config = config
        self.layout = layout or default_layout(config)
        self._vips = {v.key: v for v in config.vips}
        self._rings = {v.key: ring_backends(v, self.layout) for v in config.vips}
        self._backend_addr = {i: a for a, i in self.layout.backend_index.items()}

    def _count(self, stat: Stat, length: int) -> None:
        if self.config.stats:
            self.stats[stat, "packets"] += 1
            self.stats[stat, "bytes"] += length

    def backend_for(self, flow: Flow) -> int | None:
        """The backend address the ring picks for `flow` (no connection table), if any."""
        vip = self._vips.get((flow.dst, flow.dport, flow.proto)) or self._vips.get(
            (flow.dst, 0, flow.proto))
        if vip is None:
            return None
        sport = 0 if vip.flags & VIP_NO_SPORT else flow.sport
        slot = flow_hash(flow.src, flow.dst, sport, flow.dport, flow.proto) % RING_SIZE
        return self._backend_addr.get(self._rings[vip.key][slot]) or None

    def process(self, frame: bytes, ingress_ifindex: int = 1) -> Outcome:
        """Verdict and output bytes for `frame`; updates the connection table."""
        del ingress_ifindex  # every interface is treated alike
        n = len(frame)
        if n < pkt.ETH_HLEN:
            return self._verdict(Stat.MALFORMED, XDP_DROP, frame)
        if struct.unpack_from("!H", frame, 12)[0] != pkt.ETH_P_IP:
            return self._verdict(Stat.NON_IP, XDP_PASS, frame)
        off = pkt.ETH_HLEN
        if n < off + pkt.IPV4_HLEN or frame[off] >> 4 != 4 or frame[off] & 0xF < 5:
            return self._verdict(Stat.MALFORMED, XDP_DROP, frame)
        (frag,) = struct.unpack_from("!H", frame, off + 6)
        if frame[off] & 0xF != 5 or frag & (pkt.IP_MF | pkt.IP_OFFMASK):
            return self._verdict(Stat.OPT_FRAG, XDP_PASS, frame)
        proto = frame[off + 9]
        if proto not in (pkt.IPPROTO_TCP, pkt.IPPROTO_UDP):
            return self._verdict(Stat.NON_L4, XDP_PASS, frame)
        if n < off + 20 + (20 if proto == pkt.IPPROTO_TCP else 8):
            return self._verdict(Stat.MALFORMED, XDP_DROP, frame)
        src, dst = struct.unpack_from("!II", frame, off + 12)
        sport, dport = struct.unpack_from("!HH", frame, off + 20)
        vip = self._vips.get((dst, dport, proto)) or self._vips.get((dst, 0, proto))
        if vip is None:
            return self._verdict(Stat.NO_VIP, XDP_PASS, frame)
        if self.config.stats:
            self.vip_stats[vip.key, "packets"] += 1
            self.vip_stats[vip.key, "bytes"] += n

        key = (src, dst, sport, dport, proto)
        use_conn = self.config.conntrack and not vip.flags & VIP_LRU_BYPASS
        backend = 0
        if use_conn and key in self.conn:
            backend = self._backend_addr.get(self.conn[key], 0)
        if backend:
            self._count(Stat.CONN_HIT, n)
        else:
            hsport = 0 if vip.flags & VIP_NO_SPORT else sport
            index = self._rings[vip.key][flow_hash(src, dst, hsport, dport, proto) % RING_SIZE]
            backend = self._backend_addr.get(index, 0)
            if not backend:
                return self._verdict(Stat.NO_BACKEND, XDP_DROP, frame)
            if use_conn:
                self.conn[key] = index
            self._count(Stat.CONN_MISS, n)
        self._count(Stat.TX, n)
        return Outcome(XDP_TX, encapsulate(frame, self.config, backend))

    def _verdict(self, stat: Stat, verdict: int, frame: bytes) -> Outcome:
        self._count(stat, len(frame))
        return Outcome(verdict, frame)


# -------------------------------------------------------------------------------- traffic

_CLIENTS = (pkt.ip4("100.64.0.0"), 10)  # clients come from 100.64.0.0/10


def _client(rng: random.Random) -> int:
    base, length = _CLIENTS
    return base | rng.getrandbits(32 - length)


def _vip_flow(vip: Vip, rng: random.Random) -> Flow:
    dport = vip.port or rng.choice((22, 80, 443, 8080, rng.randint(1, 0xFFFF)))
    return Flow(_client(rng), vip.addr, vip.proto, rng.randint(1024, 0xFFFF), dport)


def flows(config: LbConfig, count: int, rng: random.Random) -> list[Flow]:
    """`count` distinct flows: ~90% to VIPs (uniform over VIPs), ~10% to no VIP (other
    addresses, a VIP address on another port or protocol)."""
    result: dict[Flow, None] = {}
    attempts = 0
    while len(result) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise ValueError(f"cannot find {count} distinct flows")
        if config.vips and rng.random() < 0.9:
            flow = _vip_flow(config.vips[rng.randrange(len(config.vips))], rng)
        else:
            flow = _non_vip_flow(config, rng)
        result.setdefault(flow, None)
    return list(result)


def _non_vip_flow(config: LbConfig, rng: random.Random) -> Flow:
    keys = {v.key for v in config.vips}
    while True:
        proto = rng.choice((pkt.IPPROTO_TCP, pkt.IPPROTO_UDP))
        if config.vips and rng.random() < 0.5:
            dst = rng.choice(config.vips).addr
        else:
            dst = pkt.ip4("192.0.2.0") | rng.randint(150, 254)
        flow = Flow(_client(rng), dst, proto, rng.randint(1024, 0xFFFF),
                    rng.choice((25, 8443, 9000, rng.randint(1, 0xFFFF))))
        if (dst, flow.dport, proto) not in keys and (dst, 0, proto) not in keys:
            return flow


def packet(flow: Flow, rng: random.Random) -> tuple[bytes, int]:
    """One frame of `flow` (random TCP flags, payload, TTL, TOS, IP id) and its ifindex."""
    return random_frame(flow, rng), flow.ifindex


def edge_cases(config: LbConfig, rng: random.Random) -> list[tuple[bytes, int]]:
    """Frames for the parser's corners, VIP misses, VIP flags and connection-table hits.

    None is shorter than an Ethernet header: BPF_PROG_TEST_RUN refuses such frames.
    """
    vips = list(config.vips)
    served = [v for v in vips if v.backends and any(b.weight for b in v.backends)]
    vip = next((v for v in served if v.proto == pkt.IPPROTO_TCP), served[0] if served else None)
    flow = _vip_flow(vip, rng) if vip else Flow(_client(rng), pkt.ip4("192.0.2.10"),
                                                pkt.IPPROTO_TCP, 40000, 80)
    plain = flow_frame(flow, payload=b"edge")
    frames = [arp_frame(), ipv6_frame(), plain[:pkt.ETH_HLEN],
              flow_frame(flow, vlan=7), plain[:pkt.ETH_HLEN + 19]]
    bad_version = bytearray(plain)
    bad_version[14] = 0x65
    bad_ihl = bytearray(plain)
    bad_ihl[14] = 0x44
    frames += [bytes(bad_version), bytes(bad_ihl)]
    frames += [flow_frame(flow, options=b"\x01\x01\x01\x00"),
               flow_frame(flow, options=bytes([1] * 40))[:14 + 30],  # passed before length
               flow_frame(flow, flags_frag=pkt.IP_MF),
               flow_frame(flow, flags_frag=64),
               flow_frame(flow, flags_frag=pkt.IP_DF, payload=b"df is fine"),
               plain[:14 + 20 + 19]]
    udp_vip = next((v for v in served if v.proto == pkt.IPPROTO_UDP), None)
    if udp_vip is not None:
        uflow = _vip_flow(udp_vip, rng)
        frames += [flow_frame(uflow)[:14 + 20 + 7], flow_frame(uflow, payload=b"u")]
    # ICMP and GRE to a VIP address, ports and protocols that are no VIP.
    frames.append(flow_frame(Flow(flow.src, flow.dst, pkt.IPPROTO_ICMP, 1, 1)))
    frames.append(pkt.ethernet(NF_MAC, plain[6:12], pkt.ETH_P_IP,
                               pkt.ipv4(flow.src, flow.dst, 47, b"\0\0\x08\0")))
    for v in vips[:6]:
        other = pkt.IPPROTO_UDP if v.proto == pkt.IPPROTO_TCP else pkt.IPPROTO_TCP
        frames.append(flow_frame(Flow(_client(rng), v.addr, other, 40001, v.port or 1)))
        frames.append(flow_frame(Flow(_client(rng), v.addr, v.proto, 40002,
                                      (v.port + 1) & 0xFFFF)))
    frames.append(flow_frame(Flow(_client(rng), pkt.ip4("192.0.2.250"), pkt.IPPROTO_TCP,
                                  40003, 80)))
    # Every VIP, including all-ports and backendless ones, with trailing padding and odd
    # total lengths (the outer length is computed from the inner header, not the frame).
    for v in vips:
        f = _vip_flow(v, rng)
        frames.append(flow_frame(f, payload=b"p"))
        frames.append(flow_frame(f, tos=0xB8) + b"\0" * 10)
    big = bytearray(flow_frame(flow, payload=b"len"))
    big[16:18] = struct.pack("!H", 0xFFF0)  # outer length wraps modulo 2^16
    frames.append(bytes(big))
    frames.append(flow_frame(Flow(flow.src, flow.dst, flow.proto, 0, flow.dport)))
    frames.append(flow_frame(Flow(flow.src, flow.dst, flow.proto, 0xFFFF, flow.dport)))
    # Connection-table hits: the same flows again; source-port-free hashing and LRU bypass.
    for v in served[:8]:
        f = _vip_flow(v, rng)
        frames += [flow_frame(f, tcp_flags=pkt.TCP_SYN), flow_frame(f, payload=b"again"),
                   flow_frame(f, tcp_flags=pkt.TCP_FIN | pkt.TCP_ACK)]
        frames.append(flow_frame(Flow(f.src, f.dst, f.proto, f.sport ^ 0x5A5A, f.dport)))
    return [(frame, 1) for frame in frames]


__all__ = [
    "DESCRIPTION", "NAME", "PROGRAM", "SOURCE", "Backend", "Config", "ControlPlane", "Flow",
    "Layout", "LbConfig", "Reference", "Stat", "Vip", "default_config", "default_layout",
    "edge_cases", "encapsulate", "flow_hash", "flows", "maglev_table", "packet",
    "ring_backends",
]
