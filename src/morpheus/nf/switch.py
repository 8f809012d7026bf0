"""switch: an 802.1Q learning bridge in XDP — configuration, control plane, model, traffic.

The data plane is src/morpheus/bpf/switch.bpf.c; this module mirrors its structs and its
decisions byte for byte. Per frame the program:

1. drops runts (< 14 bytes; BPF_PROG_TEST_RUN refuses them, so they only occur live);
2. passes frames from interfaces that are not bridge ports, drops frames from disabled ports;
3. with VLAN filtering on, classifies the frame: an 802.1Q tag gives the VLAN (VID 0 and 4095
   and truncated tags are invalid: drop; a VLAN the port does not carry: drop), an untagged
   frame gets the port's PVID (no PVID: drop). With filtering off every frame is in VLAN 0 and
   tags are left alone;
4. drops frames whose source MAC is multicast or all-zero;
5. learns the source MAC when learning is on globally and on the port: a new MAC is inserted
   (unless the table is full), a dynamic MAC seen on another port moves, static entries are
   never touched;
6. passes broadcast / multicast destinations and unknown unicast to the stack (which floods);
7. drops a frame whose destination sits on the ingress port (hairpin) or on a disabled or
   unknown port, or (VLAN filtering) on a port that does not carry the frame's VLAN;
8. otherwise pushes or pops the 802.1Q tag (the egress port sends its PVID untagged and every
   other VLAN tagged) and redirects the frame to the egress port through the `sw_tx_ports`
   devmap.

Frames are modified (tag push/pop) only once the program has decided to redirect them.
"""

from __future__ import annotations

import contextlib
import math
import random
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from morpheus.traffic import packet as pkt

from .common import XDP_DROP, XDP_PASS, XDP_REDIRECT, CountingModel, MapLike, Outcome, sum_counter

# Re-exported: the encoders are part of each NF module's public API.
from .common import decode_u32 as decode_u32
from .common import encode_u32 as encode_u32

__all__ = [
    "DESCRIPTION", "NAME", "PROGRAM", "SOURCE", "STATS", "Config", "ControlPlane", "FdbEntry",
    "Flow", "Outcome", "Port", "Reference", "StaticMac", "Station", "default_config",
    "edge_cases", "flows", "packet", "stations", "warmup",
]

NAME = "switch"
DESCRIPTION = ("802.1Q learning bridge: MAC learning, static FDB entries, per-port VLANs, "
               "redirect to the egress port.")
SOURCE = "switch"
PROGRAM = "xdp_switch"

MAP_CONFIG = "sw_config"
MAP_PORTS = "sw_ports"
MAP_VLANS = "sw_vlans"
MAP_FDB = "sw_fdb"
MAP_TX = "sw_tx_ports"
MAP_STATS = "sw_stats"
MAPS = (MAP_CONFIG, MAP_PORTS, MAP_VLANS, MAP_FDB, MAP_TX, MAP_STATS)

# sw_config.flags
FEAT_VLAN = 1 << 0
FEAT_LEARN = 1 << 1
FEAT_STATS = 1 << 2
# sw_port.flags
PORT_ENABLED = 1 << 0
PORT_TRUNK = 1 << 1
PORT_LEARN = 1 << 2
# sw_fdb_entry.flags
FDB_STATIC = 1 << 0
# sw_vlans value
VLAN_MEMBER = 1 << 0

MAX_PORTS = 256
VLAN_TABLE_SIZE = 4096
FDB_SIZE = 16384
REFRESH_NS = 1_000_000_000
VID_MASK = 0x0FFF

# enum sw_stat, in order. Every frame counts in exactly one of the reasons before "learned";
# "learned" and "moved" count learning events.
STATS = ("forward", "flood", "unknown", "not_port", "hairpin", "vlan", "port_down", "invalid",
         "error", "learned", "moved")

# bpf_map_update_elem flags
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BROADCAST = b"\xff" * 6
ZERO_MAC = b"\0" * 6

# Host-order ("=": native byte order, no padding) layouts of the C structs.
_U32 = struct.Struct("=I")
_PORT = struct.Struct("=IHH")  # struct sw_port: flags, pvid, pad                    8 bytes
_VLAN_KEY = struct.Struct("=II")  # struct sw_vlan_key: ifindex, vid                8 bytes
_FDB_KEY = struct.Struct("=H6s")  # struct sw_fdb_key: vid, mac                      8 bytes
_FDB_ENTRY = struct.Struct("=IIQ")  # struct sw_fdb_entry: ifindex, flags, last_seen 16 bytes
_STAT = struct.Struct("=QQ")  # struct nfc_stat: packets, bytes                     16 bytes


# name → (BPF map type, key size, value size, max_entries), as switch.bpf.c declares them.
MAP_LAYOUT = {
    MAP_CONFIG: ("array", 4, 4, 1),
    MAP_PORTS: ("hash", 4, _PORT.size, MAX_PORTS),
    MAP_VLANS: ("hash", _VLAN_KEY.size, 4, VLAN_TABLE_SIZE),
    MAP_FDB: ("hash", _FDB_KEY.size, _FDB_ENTRY.size, FDB_SIZE),
    MAP_TX: ("devmap_hash", 4, 4, MAX_PORTS),
    MAP_STATS: ("percpu_array", 4, _STAT.size, len(STATS)),
}


def _is_group(mac: bytes) -> bool:
    return bool(mac[0] & 1)


def _check_mac(mac: bytes, what: str) -> None:
    if len(mac) != 6:
        raise ValueError(f"{what}: a MAC address has 6 bytes, got {len(mac)}")


def _check_vid(vid: int, what: str) -> None:
    if not 1 <= vid <= 4094:
        raise ValueError(f"{what}: VLAN id {vid} is outside 1..4094")


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Port:
    """One bridge port.

    `pvid` is the VLAN of untagged frames (access VLAN, or a trunk's native VLAN; 0: the port
    accepts no untagged frames); a trunk also carries the tagged VLANs in `vlans`. On egress
    the port sends its PVID untagged and every other VLAN tagged.
    """

    ifindex: int
    pvid: int = 1
    trunk: bool = False
    vlans: frozenset[int] = frozenset()
    enabled: bool = True
    learning: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.ifindex < 2**32:
            raise ValueError(f"port ifindex {self.ifindex} is not a valid interface index")
        if self.pvid:
            _check_vid(self.pvid, f"port {self.ifindex} pvid")
        for vid in self.vlans:
            _check_vid(vid, f"port {self.ifindex} vlans")
        if self.vlans and not self.trunk:
            raise ValueError(f"port {self.ifindex}: only trunk ports carry tagged VLANs")
        object.__setattr__(self, "vlans", frozenset(self.vlans))

    @property
    def flags(self) -> int:
        return ((PORT_ENABLED if self.enabled else 0) | (PORT_TRUNK if self.trunk else 0)
                | (PORT_LEARN if self.learning else 0))

    def carries(self, vid: int) -> bool:
        """Whether frames of VLAN `vid` may enter or leave through this port."""
        return vid == self.pvid or (self.trunk and vid in self.vlans)


@dataclass(frozen=True, slots=True)
class StaticMac:
    """A static FDB entry: `mac` in VLAN `vlan` (0 without VLAN filtering) is behind `ifindex`."""

    mac: bytes
    vlan: int
    ifindex: int

    def __post_init__(self) -> None:
        _check_mac(self.mac, "static MAC")
        if _is_group(self.mac) or self.mac == ZERO_MAC:
            raise ValueError(f"static MAC {pkt.mac_str(self.mac)} is not a unicast address")
        if not 0 <= self.vlan <= 4094:
            raise ValueError(f"static MAC VLAN {self.vlan} is outside 0..4094")


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the control plane writes: features, ports and static MAC entries."""

    ports: tuple[Port, ...]
    static_macs: tuple[StaticMac, ...] = ()
    vlan_filtering: bool = True
    learning: bool = True
    stats: bool = True
    _by_ifindex: dict[int, Port] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ports", tuple(self.ports))
        object.__setattr__(self, "static_macs", tuple(self.static_macs))
        by_ifindex = {p.ifindex: p for p in self.ports}
        if len(by_ifindex) != len(self.ports):
            raise ValueError("two ports share an ifindex")
        if len(by_ifindex) > MAX_PORTS:
            raise ValueError(f"at most {MAX_PORTS} ports")
        keys = {(m.vlan, m.mac) for m in self.static_macs}
        if len(keys) != len(self.static_macs):
            raise ValueError("two static entries share a (VLAN, MAC)")
        for m in self.static_macs:
            if m.ifindex not in by_ifindex:
                raise ValueError(f"static MAC {pkt.mac_str(m.mac)} names unknown port "
                                 f"{m.ifindex}")
        object.__setattr__(self, "_by_ifindex", by_ifindex)

    @property
    def features(self) -> int:
        return ((FEAT_VLAN if self.vlan_filtering else 0) | (FEAT_LEARN if self.learning else 0)
                | (FEAT_STATS if self.stats else 0))

    def port(self, ifindex: int) -> Port | None:
        return self._by_ifindex.get(ifindex)

    def vlans(self) -> list[int]:
        """Every VLAN some enabled port carries (just [0] without VLAN filtering)."""
        if not self.vlan_filtering:
            return [0]
        found = set()
        for p in self.ports:
            if p.enabled:
                found.update(p.vlans)
                if p.pvid:
                    found.add(p.pvid)
        return sorted(found)


DEFAULT_IFINDEXES = tuple(range(2, 10))


def default_config(seed: int = 1, ifindexes: Sequence[int] | None = None) -> Config:
    """An 8-port switch: 2 trunks, 5 access ports in 4 VLANs, 1 port shut; 69 static MACs.

    Ports 0 and 1 are trunks (native VLAN 1, tagged 10/20/30/40; port 1 does not learn,
    like an uplink to a router whose MACs are pinned statically). Ports 2-6 are access ports in
    VLANs 1, 10, 10, 20, 30; port 7 is an access port in VLAN 40 that is administratively
    down. Static entries: a gateway MAC per VLAN on trunk 1, and 64 "servers" dealt in turn to
    ports 2-7 and to trunk 0's four tagged VLANs (six of them behind the shut port).
    `ifindexes` (8 values, default 2..9) places the ports on real interfaces; kernel tests
    need interfaces with these indexes.
    """
    ifx = tuple(ifindexes) if ifindexes is not None else DEFAULT_IFINDEXES
    if len(ifx) != 8:
        raise ValueError("the default switch has 8 ports: pass 8 ifindexes")
    tagged = frozenset({10, 20, 30, 40})
    ports = (
        Port(ifx[0], pvid=1, trunk=True, vlans=tagged),
        Port(ifx[1], pvid=1, trunk=True, vlans=tagged, learning=False),
        Port(ifx[2], pvid=1),
        Port(ifx[3], pvid=10),
        Port(ifx[4], pvid=10),
        Port(ifx[5], pvid=20),
        Port(ifx[6], pvid=30),
        Port(ifx[7], pvid=40, enabled=False),
    )
    rng = random.Random(f"switch-default-{seed}")
    macs: set[bytes] = set()

    def new_mac(first: int) -> bytes:
        while True:
            m = bytes([first]) + rng.randbytes(5)
            if m not in macs:
                macs.add(m)
                return m

    static = [StaticMac(new_mac(0x02), vid, ifx[1]) for vid in (1, 10, 20, 30, 40)]
    homes = [(p.ifindex, p.pvid) for p in ports[2:]] + [(ifx[0], v) for v in sorted(tagged)]
    for i in range(64):
        ifindex, vid = homes[i % len(homes)]
        static.append(StaticMac(new_mac(0x02), vid, ifindex))
    return Config(ports, tuple(static))


# --- encoders --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FdbEntry:
    """A MAC table value: the port, whether the entry is static, and its last refresh (ns)."""

    ifindex: int
    static: bool = False
    last_seen: int = 0





def encode_features(flags: int) -> bytes:
    """struct sw_config (4 bytes)."""
    return _U32.pack(flags)


def encode_port(port: Port) -> bytes:
    """struct sw_port value (8 bytes) of `port`; its key is encode_u32(port.ifindex)."""
    return _PORT.pack(port.flags, port.pvid, 0)


def decode_port(raw: bytes) -> tuple[int, int]:
    """struct sw_port → (flags, pvid)."""
    flags, pvid, _pad = _PORT.unpack(raw)
    return flags, pvid


def encode_vlan_key(ifindex: int, vid: int) -> bytes:
    """struct sw_vlan_key (8 bytes)."""
    return _VLAN_KEY.pack(ifindex, vid)


def decode_vlan_key(raw: bytes) -> tuple[int, int]:
    """struct sw_vlan_key → (ifindex, vid)."""
    ifindex, vid = _VLAN_KEY.unpack(raw)
    return ifindex, vid


def encode_fdb_key(vlan: int, mac: bytes) -> bytes:
    """struct sw_fdb_key (8 bytes): host-order VLAN id, then the MAC in wire order."""
    _check_mac(mac, "FDB key")
    return _FDB_KEY.pack(vlan, mac)


def decode_fdb_key(raw: bytes) -> tuple[int, bytes]:
    """struct sw_fdb_key → (vlan, mac)."""
    vlan, mac = _FDB_KEY.unpack(raw)
    return vlan, mac


def encode_fdb_entry(entry: FdbEntry) -> bytes:
    """struct sw_fdb_entry (16 bytes)."""
    return _FDB_ENTRY.pack(entry.ifindex, FDB_STATIC if entry.static else 0, entry.last_seen)


def decode_fdb_entry(raw: bytes) -> FdbEntry:
    ifindex, flags, last_seen = _FDB_ENTRY.unpack(raw)
    return FdbEntry(ifindex, bool(flags & FDB_STATIC), last_seen)



# --- control plane ---------------------------------------------------------------------------


class ControlPlane:
    """Writes a switch configuration into the program's maps, and reads back its state.

    `maps` maps the map names (MAPS) to kernel maps or in-memory fakes. The maps are the only
    state: a new ControlPlane on maps already in use picks up where another left off. Writes
    are ordered so that the data plane never sees a reference to something not yet written
    (a port's devmap entry and VLANs before the port; a port's MACs go before the port does).
    """

    def __init__(self, maps: Mapping[str, MapLike]) -> None:
        missing = [name for name in MAPS if name not in maps]
        if missing:
            raise KeyError(f"switch maps missing: {', '.join(missing)}")
        self.maps = maps
        self._config = maps[MAP_CONFIG]
        self._ports = maps[MAP_PORTS]
        self._vlans = maps[MAP_VLANS]
        self._fdb = maps[MAP_FDB]
        self._tx = maps[MAP_TX]
        self._stats = maps[MAP_STATS]

    def apply(self, config: Config) -> None:
        """Make the maps hold `config`; learned MACs survive unless their port goes away."""
        for port in config.ports:
            self.set_port(port)
        wanted = {(m.vlan, m.mac) for m in config.static_macs}
        for m in config.static_macs:
            self.add_static_mac(m.mac, m.vlan, m.ifindex)
        for (vlan, mac), entry in self.fdb().items():
            if entry.static and (vlan, mac) not in wanted:
                self._delete(self._fdb, encode_fdb_key(vlan, mac))
        keep = {p.ifindex for p in config.ports}
        for ifindex in self.port_ifindexes():
            if ifindex not in keep:
                self.remove_port(ifindex)
        # Features last: switching VLAN filtering on with half-written ports would misfile
        # frames, so the mode changes only once the tables are complete.
        self.set_features(vlan_filtering=config.vlan_filtering, learning=config.learning,
                          stats=config.stats)

    def set_features(self, *, vlan_filtering: bool, learning: bool, stats: bool) -> None:
        flags = ((FEAT_VLAN if vlan_filtering else 0) | (FEAT_LEARN if learning else 0)
                 | (FEAT_STATS if stats else 0))
        self._config.update(encode_u32(0), encode_features(flags))

    def features(self) -> int:
        raw = self._config.lookup(encode_u32(0))
        return decode_u32(raw) if isinstance(raw, bytes) else 0

    def set_port(self, port: Port) -> None:
        """Add or reconfigure a port (its devmap entry, tagged VLANs, then the port itself)."""
        key = encode_u32(port.ifindex)
        self._tx.update(key, encode_u32(port.ifindex))
        wanted = set(port.vlans) if port.trunk else set()
        for vid in sorted(wanted):
            self._vlans.update(encode_vlan_key(port.ifindex, vid), encode_u32(VLAN_MEMBER))
        self._ports.update(key, encode_port(port))
        for ifindex, vid in self._vlan_keys():
            if ifindex == port.ifindex and vid not in wanted:
                self._delete(self._vlans, encode_vlan_key(ifindex, vid))

    def remove_port(self, ifindex: int) -> None:
        """Remove a port and every MAC behind it; KeyError if it is not a port."""
        self._ports.delete(encode_u32(ifindex))
        for (vlan, mac), entry in self.fdb().items():
            if entry.ifindex == ifindex:
                self._delete(self._fdb, encode_fdb_key(vlan, mac))
        for port, vid in self._vlan_keys():
            if port == ifindex:
                self._delete(self._vlans, encode_vlan_key(port, vid))
        self._delete(self._tx, encode_u32(ifindex))

    def port_ifindexes(self) -> list[int]:
        return sorted(decode_u32(k) for k in list(self._ports.keys()))

    def add_static_mac(self, mac: bytes, vlan: int, ifindex: int) -> None:
        """Pin `mac` in `vlan` to port `ifindex` (replacing a learned entry)."""
        StaticMac(mac, vlan, ifindex)  # validates
        self._fdb.update(encode_fdb_key(vlan, mac), encode_fdb_entry(FdbEntry(ifindex, True)))

    def remove_mac(self, mac: bytes, vlan: int) -> None:
        """Forget `mac` in `vlan`, static or learned; KeyError if the table has no such entry."""
        self._fdb.delete(encode_fdb_key(vlan, mac))

    def fdb(self) -> dict[tuple[int, bytes], FdbEntry]:
        """The MAC table: (vlan, mac) → entry."""
        table = {}
        for key in list(self._fdb.keys()):
            raw = self._fdb.lookup(key)
            if isinstance(raw, bytes):  # None: deleted meanwhile (expiry, another writer)
                table[decode_fdb_key(key)] = decode_fdb_entry(raw)
        return table

    def flush_dynamic(self, ifindex: int | None = None) -> int:
        """Delete learned entries (of one port, or all); returns how many were deleted."""
        doomed = [k for k, e in self.fdb().items()
                  if not e.static and (ifindex is None or e.ifindex == ifindex)]
        for vlan, mac in doomed:
            self._delete(self._fdb, encode_fdb_key(vlan, mac))
        return len(doomed)

    def expire(self, max_age_ns: int, now_ns: int | None = None) -> int:
        """Age out learned entries not refreshed for `max_age_ns`; returns how many went.

        The data plane stamps entries with bpf_ktime_get_ns(), i.e. CLOCK_MONOTONIC, which is
        what time.monotonic_ns() reads. Timestamps are refreshed at most once a second.
        """
        now = time.monotonic_ns() if now_ns is None else now_ns
        doomed = [k for k, e in self.fdb().items()
                  if not e.static and now - e.last_seen > max_age_ns]
        for vlan, mac in doomed:
            self._delete(self._fdb, encode_fdb_key(vlan, mac))
        return len(doomed)

    def stats(self) -> dict[str, tuple[int, int]]:
        """Counters summed over CPUs: reason → (packets, bytes)."""
        return {name: sum_counter(self._stats.lookup(encode_u32(index)))
                for index, name in enumerate(STATS)}

    def _vlan_keys(self) -> list[tuple[int, int]]:
        return [decode_vlan_key(k) for k in list(self._vlans.keys())]

    @staticmethod
    def _delete(table: MapLike, key: bytes) -> None:
        with contextlib.suppress(KeyError):  # already gone: the state we want
            table.delete(key)


# --- reference model -------------------------------------------------------------------------


class Reference(CountingModel):
    """What xdp_switch does to each frame, including the MAC table it learns into.

    Start it from the same configuration the control plane applied to an empty MAC table,
    then feed it the frames in the order the program sees them. `fdb` and `stats` mirror the
    sw_fdb and sw_stats maps (timestamps aside: the model does not track time).
    """

    def __init__(self, config: Config, *, fdb_capacity: int = FDB_SIZE) -> None:
        self.config = config
        self.fdb_capacity = fdb_capacity
        self.fdb: dict[tuple[int, bytes], FdbEntry] = {
            (m.vlan, m.mac): FdbEntry(m.ifindex, True) for m in config.static_macs}
        self.tx_ports = {p.ifindex for p in config.ports}
        self.stats: dict[str, tuple[int, int]] = dict.fromkeys(STATS, (0, 0))

    def set_config(self, config: Config) -> None:
        """Follow `ControlPlane.apply(config)` on maps that already hold this model's state.

        As `apply` does: every static entry of `config` is written (replacing a learned entry
        with the same key), static entries `config` no longer names are deleted, ports that
        disappear take every MAC behind them and their devmap entry along; learned MACs on the
        remaining ports survive, also on a port that changed its VLANs (they age out in the
        kernel; the model does not track time). The counters survive: `apply` never writes
        sw_stats.
        """
        removed = {p.ifindex for p in self.config.ports} - {p.ifindex for p in config.ports}
        static = {(m.vlan, m.mac): FdbEntry(m.ifindex, True) for m in config.static_macs}
        self.fdb = {key: entry for key, entry in self.fdb.items()
                    if entry.ifindex not in removed and not (entry.static and key not in static)}
        self.fdb.update(static)
        self.tx_ports = (self.tx_ports - removed) | {p.ifindex for p in config.ports}
        self.config = config

    def process(self, frame: bytes, ingress_ifindex: int) -> Outcome:
        """The verdict, output bytes and redirect target for `frame` arriving on a port."""
        frame = bytes(frame)
        cfg = self.config
        size = len(frame)
        if size < pkt.ETH_HLEN:
            return self._done("invalid", size, XDP_DROP, frame)
        port = cfg.port(ingress_ifindex)
        if port is None:
            return self._done("not_port", size, XDP_PASS, frame)
        if not port.enabled:
            return self._done("port_down", size, XDP_DROP, frame)

        vid = 0
        tagged = False
        if cfg.vlan_filtering:
            if int.from_bytes(frame[12:14], "big") == pkt.ETH_P_8021Q:
                if size < pkt.ETH_HLEN + pkt.VLAN_HLEN:
                    return self._done("invalid", size, XDP_DROP, frame)
                vid = int.from_bytes(frame[14:16], "big") & VID_MASK
                if vid in (0, VID_MASK):
                    return self._done("invalid", size, XDP_DROP, frame)
                if not port.carries(vid):
                    return self._done("vlan", size, XDP_DROP, frame)
                tagged = True
            else:
                vid = port.pvid
                if vid == 0:
                    return self._done("vlan", size, XDP_DROP, frame)

        src, dst = frame[6:12], frame[0:6]
        if _is_group(src) or src == ZERO_MAC:
            return self._done("invalid", size, XDP_DROP, frame)
        if cfg.learning and port.learning:
            self._learn(vid, src, ingress_ifindex, size)
        if _is_group(dst):
            return self._done("flood", size, XDP_PASS, frame)
        entry = self.fdb.get((vid, dst))
        if entry is None:
            return self._done("unknown", size, XDP_PASS, frame)
        egress = entry.ifindex
        if egress == ingress_ifindex:
            return self._done("hairpin", size, XDP_DROP, frame)
        out = cfg.port(egress)
        if out is None or not out.enabled:
            return self._done("port_down", size, XDP_DROP, frame)

        if cfg.vlan_filtering:
            if not out.carries(vid):
                return self._done("vlan", size, XDP_DROP, frame)
            want_tag = vid != out.pvid
            if tagged and not want_tag:
                frame = frame[:12] + frame[16:]
            elif not tagged and want_tag:
                frame = frame[:12] + struct.pack("!HH", pkt.ETH_P_8021Q, vid) + frame[12:]
        self._count("forward", size)
        if egress not in self.tx_ports:
            return Outcome(XDP_DROP, frame)  # bpf_redirect_map's fallback action
        return Outcome(XDP_REDIRECT, frame, egress)

    def _learn(self, vid: int, mac: bytes, ifindex: int, size: int) -> None:
        key = (vid, mac)
        entry = self.fdb.get(key)
        if entry is not None and (entry.static or entry.ifindex == ifindex):
            return
        if entry is not None:
            self.fdb[key] = FdbEntry(ifindex)
            self._count("moved", size)
        elif len(self.fdb) < self.fdb_capacity:
            self.fdb[key] = FdbEntry(ifindex)
            self._count("learned", size)



# --- traffic ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Station:
    """A host behind a port: its frames carry an 802.1Q tag unless `vlan` is the port's PVID."""

    mac: bytes
    vlan: int
    ifindex: int
    tagged: bool


@dataclass(frozen=True, slots=True)
class Flow:
    """Frames from `src` to `dst` in `vlan`, entering on `ingress`.

    `egress` is the port of the destination station when it is a station the generator placed
    (the switch forwards there once it has learned it); None for group and unknown addresses.
    """

    src: bytes
    dst: bytes
    vlan: int
    ingress: int
    tagged: bool
    egress: int | None = None


# Group destinations of generated traffic: broadcast, IPv4 and IPv6 multicast, LLDP.
GROUP_MACS = (BROADCAST, pkt.mac("01:00:5e:00:00:01"), pkt.mac("01:00:5e:00:00:fb"),
              pkt.mac("33:33:00:00:00:01"), pkt.mac("33:33:ff:00:00:01"),
              pkt.mac("01:80:c2:00:00:0e"))


def _segments(config: Config) -> list[tuple[int, int, bool]]:
    """(ifindex, fdb vlan, tagged) of every place a learnable station can sit: enabled ports
    that learn (behind a port that does not learn only static MACs are reachable)."""
    result = []
    for p in config.ports:
        if not p.enabled or not (p.learning and config.learning):
            continue
        if not config.vlan_filtering:
            result.append((p.ifindex, 0, False))
            continue
        if p.pvid:
            result.append((p.ifindex, p.pvid, False))
        result.extend((p.ifindex, vid, True) for vid in sorted(p.vlans) if vid != p.pvid)
    return result


def _station_at(config: Config, mac: bytes, vlan: int, ifindex: int) -> Station | None:
    port = config.port(ifindex)
    if port is None or not port.enabled:
        return None
    if not config.vlan_filtering:
        return Station(mac, 0, ifindex, False)
    if not port.carries(vlan):
        return None
    return Station(mac, vlan, ifindex, vlan != port.pvid)


def stations(config: Config, count: int, rng: random.Random) -> list[Station]:
    """The static MACs that sit on enabled ports, plus `count` new stations spread over every
    (port, VLAN) segment of the enabled ports that learn. New MACs are locally administered
    unicast (first octet 0x06)."""
    result = []
    taken = {m.mac for m in config.static_macs}
    for m in config.static_macs:
        station = _station_at(config, m.mac, m.vlan, m.ifindex)
        if station is not None:
            result.append(station)
    segments = _segments(config)
    if not segments:
        return result
    for i in range(count):
        ifindex, vlan, tagged = segments[i % len(segments)] if i < len(segments) \
            else rng.choice(segments)
        while True:
            mac = b"\x06" + rng.randbytes(5)
            if mac not in taken:
                taken.add(mac)
                break
        result.append(Station(mac, vlan, ifindex, tagged))
    return result


def _unknown_mac(rng: random.Random) -> bytes:
    # First octet 0x0a: unicast, locally administered, never used for stations or statics.
    return b"\x0a" + rng.randbytes(5)


def flows(config: Config, count: int, rng: random.Random) -> list[Flow]:
    """`count` distinct flows: ~88% between two stations of one VLAN on different ports,
    ~5% to group addresses, ~5% to unknown unicast, ~2% between stations of one port.

    Destinations are stations that also send (see `warmup`), so once learned most flows are
    known unicast. The station population grows with `count` (about 2·sqrt(count·VLANs)).
    """
    vlans = max(1, len(config.vlans()))
    population = min(FDB_SIZE // 2, max(16, int(2 * math.sqrt(count * vlans))))
    hosts = [s for s in stations(config, population, rng)]
    if not hosts:
        raise ValueError("the configuration has no enabled port to generate traffic on")
    by_vlan: dict[int, list[Station]] = {}
    for s in hosts:
        by_vlan.setdefault(s.vlan, []).append(s)
    found: dict[Flow, None] = {}
    attempts = 0
    while len(found) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise ValueError(f"cannot find {count} distinct flows in this configuration")
        src = rng.choice(hosts)
        roll = rng.random()
        peers = by_vlan[src.vlan]
        if roll < 0.88 or roll >= 0.98:
            same_port = roll >= 0.98
            dst = None
            for _ in range(8):
                cand = rng.choice(peers)
                if cand.mac != src.mac and (cand.ifindex == src.ifindex) == same_port:
                    dst = cand
                    break
            if dst is None:
                continue
            flow = Flow(src.mac, dst.mac, src.vlan, src.ifindex, src.tagged, dst.ifindex)
        elif roll < 0.93:
            flow = Flow(src.mac, rng.choice(GROUP_MACS), src.vlan, src.ifindex, src.tagged)
        else:
            flow = Flow(src.mac, _unknown_mac(rng), src.vlan, src.ifindex, src.tagged)
        found[flow] = None
    return list(found)


def _ip_of(mac: bytes) -> str:
    return f"10.{mac[3]}.{mac[4]}.{mac[5] or 1}"


def packet(flow: Flow, rng: random.Random) -> tuple[bytes, int]:
    """One frame of `flow` and its ingress ifindex.

    Broadcast frames are ARP requests; everything else is IPv4 TCP or UDP between addresses
    derived from the MACs, with a random payload length.
    """
    vlan = flow.vlan if flow.tagged else None
    if flow.dst == BROADCAST:
        body = pkt.arp(pkt.ARPOP_REQUEST, flow.src, _ip_of(flow.src), ZERO_MAC,
                       _ip_of(flow.dst))
        return pkt.ethernet(flow.dst, flow.src, pkt.ETH_P_ARP, body, vlan=vlan), flow.ingress
    src_ip, dst_ip = _ip_of(flow.src), _ip_of(flow.dst)
    proto = pkt.IPPROTO_TCP if rng.random() < 0.7 else pkt.IPPROTO_UDP
    payload = rng.randbytes(rng.choice((0, 6, 18, 64, 200, 512, 1000, 1400)))
    segment = pkt.l4(proto, src_ip, dst_ip, rng.randint(1024, 65535),
                     rng.choice((22, 53, 80, 443, 8080)), payload)
    ip = pkt.ipv4(src_ip, dst_ip, proto, segment, ident=rng.getrandbits(16),
                  flags_frag=pkt.IP_DF)
    return pkt.ethernet(flow.dst, flow.src, pkt.ETH_P_IP, ip, vlan=vlan), flow.ingress


def _announce(station: Station) -> tuple[bytes, int]:
    """A gratuitous ARP from `station`: teaches the switch where it is, is itself flooded."""
    ip = _ip_of(station.mac)
    body = pkt.arp(pkt.ARPOP_REQUEST, station.mac, ip, ZERO_MAC, ip)
    vlan = station.vlan if station.tagged else None
    return pkt.ethernet(BROADCAST, station.mac, pkt.ETH_P_ARP, body, vlan=vlan), station.ifindex


def warmup(config: Config, flow_list: Sequence[Flow]) -> list[tuple[bytes, int]]:
    """One gratuitous ARP from every station the flows name (sources and destinations), so
    that after these frames the switch knows every destination station."""
    seen: dict[tuple[bytes, int], Station] = {}
    for f in flow_list:
        seen.setdefault((f.src, f.vlan), Station(f.src, f.vlan, f.ingress, f.tagged))
        if f.egress is not None:
            station = _station_at(config, f.dst, f.vlan, f.egress)
            if station is not None:
                seen.setdefault((f.dst, f.vlan), station)
    return [_announce(s) for s in seen.values()]


def edge_cases(config: Config, rng: random.Random) -> list[tuple[bytes, int]]:
    """A scripted sequence of frames (process them in order: learning carries state) covering
    every decision of the program: learning, moves, static entries, hairpin, tag push/pop,
    bad and missing tags, group and unknown destinations, bad sources, foreign and disabled
    ports, minimal frames, ARP / IPv6 / LLDP / QinQ payloads."""
    out: list[tuple[bytes, int]] = []
    hosts = stations(config, 0, rng)  # the static MACs
    segs = _segments(config)
    fresh = [Station(b"\x06" + rng.randbytes(5), vlan, ifx, tagged) for ifx, vlan, tagged in segs]
    # A second station on each port's first segment, for hairpin traffic.
    first: dict[int, Station] = {}
    for s in fresh:
        first.setdefault(s.ifindex, s)
    twins = [Station(b"\x06" + rng.randbytes(5), s.vlan, s.ifindex, s.tagged)
             for s in first.values()]

    def frame(src: Station, dst: bytes, *, ethertype: int = pkt.ETH_P_IP,
              body: bytes | None = None, tag: int | None = -1) -> tuple[bytes, int]:
        vlan = (src.vlan if src.tagged else None) if tag == -1 else tag
        if body is None:
            body = pkt.ipv4(_ip_of(src.mac), _ip_of(dst), pkt.IPPROTO_UDP,
                            pkt.udp(_ip_of(src.mac), _ip_of(dst), 5000, 53, b"q"))
        return pkt.ethernet(dst, src.mac, ethertype, body, vlan=vlan), src.ifindex

    # Learning: every fresh station, twin and static announces itself (flooded).
    out += [_announce(s) for s in fresh + twins + hosts]
    # Known unicast between every pair of segments of one VLAN (tag kept, pushed or popped).
    for a in fresh:
        for b in fresh:
            if a is not b and a.vlan == b.vlan:
                out.append(frame(a, b.mac))
    # Unicast to statics, including the ones behind a shut port (dropped).
    for s in hosts[:6]:
        peers = [a for a in fresh if a.vlan == s.vlan]
        if peers:
            out.append(frame(peers[0], s.mac))
    statics_down = [m for m in config.static_macs if not config.port(m.ifindex).enabled]
    for m in statics_down[:2]:
        peers = [a for a in fresh if a.vlan == (m.vlan if config.vlan_filtering else 0)]
        if peers:
            out.append(frame(peers[0], m.mac))
    # Hairpin: two stations behind one port.
    for t in twins:
        out.append(frame(t, first[t.ifindex].mac))
    # Self-addressed: learned, then the destination is the ingress port.
    for a in fresh[:2]:
        out.append(frame(a, a.mac))
    # A station moves to another segment of its VLAN, is reached there, then moves back.
    for a in fresh:
        others = [b for b in fresh if b.vlan == a.vlan and b.ifindex != a.ifindex]
        if len(others) >= 2:
            moved = Station(a.mac, a.vlan, others[0].ifindex, others[0].tagged)
            out.append(frame(moved, others[1].mac))
            out.append(frame(others[1], a.mac))
            out.append(frame(a, others[1].mac))
            out.append(frame(others[1], a.mac))
            break
    # A static MAC used as a source on another port: the entry stays where it is.
    for m in config.static_macs:
        spoof_seg = next((s for s in fresh if s.ifindex != m.ifindex
                          and (s.vlan == m.vlan or not config.vlan_filtering)), None)
        if spoof_seg is not None:
            spoof = Station(m.mac, spoof_seg.vlan, spoof_seg.ifindex, spoof_seg.tagged)
            out.append(frame(spoof, fresh[0].mac))
            out.append(frame(spoof_seg, m.mac))
            break
    if fresh:
        a, b = fresh[0], fresh[-1]
        # Group and unknown destinations.
        for dst in GROUP_MACS:
            out.append(frame(a, dst))
        out.append(frame(a, _unknown_mac(rng)))
        out.append(frame(b, _unknown_mac(rng)))
        # Invalid sources.
        for bad in (BROADCAST, pkt.mac("01:00:5e:00:00:01"), ZERO_MAC):
            out.append(frame(Station(bad, a.vlan, a.ifindex, a.tagged), b.mac))
        # Other payloads to a known station: ARP reply, IPv6, LLDP-typed, QinQ ethertype.
        peer = next((s for s in fresh if s.vlan == a.vlan and s.ifindex != a.ifindex), b)
        out.append(frame(a, peer.mac, ethertype=pkt.ETH_P_ARP,
                         body=pkt.arp(pkt.ARPOP_REPLY, a.mac, _ip_of(a.mac), peer.mac,
                                      _ip_of(peer.mac))))
        out.append(frame(a, peer.mac, ethertype=pkt.ETH_P_IPV6,
                         body=pkt.ipv6(bytes(15) + b"\x01", bytes(15) + b"\x02", 59, b"")))
        out.append(frame(a, peer.mac, ethertype=0x88CC, body=b"\x02\x07\x04" + a.mac))
        out.append(frame(a, peer.mac, ethertype=0x88A8, body=b"\x00\x64\x08\x00" + bytes(20)))
        # Minimal frames: a bare Ethernet header, and (tagged ports) a bare tagged header.
        out.append((peer.mac + a.mac + b"\x08\x00", a.ifindex))
        out.append((b.mac + a.mac + b"\x08\x00", a.ifindex))
        for s in fresh:
            if s.tagged:
                out.append((peer.mac + s.mac + struct.pack("!HHH", pkt.ETH_P_8021Q, s.vlan,
                                                          pkt.ETH_P_IP), s.ifindex))
                # Truncated tag (16 bytes), priority tag, reserved VID, VLAN not on the trunk.
                out.append((peer.mac + s.mac + struct.pack("!HH", pkt.ETH_P_8021Q, s.vlan),
                            s.ifindex))
                out.append(frame(s, peer.mac, tag=0))
                out.append(frame(s, peer.mac, tag=4095))
                missing = next(v for v in range(2, 4094) if not config.port(s.ifindex).carries(v))
                out.append(frame(s, peer.mac, tag=missing))
                break
        if not config.vlan_filtering:  # tags are payload: forwarded untouched
            out.append(frame(a, peer.mac, tag=100))
        # Tagged frames on an access port: its own PVID (accepted) and another VLAN (dropped).
        for s in fresh:
            port = config.port(s.ifindex)
            if config.vlan_filtering and not port.trunk and port.pvid:
                out.append(frame(s, peer.mac, tag=port.pvid))
                out.append(frame(s, peer.mac, tag=port.pvid % 4094 + 1))
                break
    # A new station behind a port that does not learn: never learned, so unknown to others.
    for p in config.ports:
        if p.enabled and not p.learning and fresh:
            vlan = (p.pvid or min(p.vlans, default=0)) if config.vlan_filtering else 0
            mute = Station(b"\x06" + rng.randbytes(5), vlan, p.ifindex,
                           config.vlan_filtering and vlan != p.pvid)
            peer = next((s for s in fresh if s.vlan == vlan), None)
            if peer is not None and vlan:
                out.append(frame(mute, peer.mac))
                out.append(frame(peer, mute.mac))
            break
    # Frames from interfaces that are not ports (loopback: always exists) or are shut.
    if config.port(1) is None and fresh:
        out.append(frame(Station(fresh[0].mac, 0, 1, False), fresh[-1].mac))
    for p in config.ports:
        if not p.enabled and fresh:
            out.append(frame(Station(fresh[0].mac, p.pvid, p.ifindex, False), fresh[-1].mac))
    return out
