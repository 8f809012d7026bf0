"""Pieces shared by the L4 network functions (firewall, lb).

A shadowing table writer that turns a recompilation into the few map writes that really change
something, and the `Flow` 5-tuple with its frame builders. The types every NF shares (XDP
verdicts, `Outcome`, `MapLike`) live in `common`; they are re-exported here for older imports.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Mapping
from dataclasses import dataclass

from morpheus.traffic import packet as pkt

from .common import (
    XDP_ABORTED,
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    XDP_TX,
    MapLike,
    Outcome,
)

# Frames of the generated traffic come from this host and are addressed to the NF's interface.
CLIENT_MAC = pkt.mac("02:00:00:00:10:01")
NF_MAC = pkt.mac("02:00:00:00:00:01")


_UNKNOWN = b""  # shadow value of an entry whose content is not known: never equal to a value


class TableWriter:
    """Writes one map, remembering what it wrote so that re-syncing writes only differences.

    For hash-like maps (hash, LPM trie) entries missing from new contents are deleted; array
    entries cannot be deleted, so they are overwritten with `zero`. Array slots this writer
    never wrote are left alone until some contents name them.
    """

    def __init__(self, table: MapLike, *, array: bool, zero: bytes = b"") -> None:
        self.table = table
        self.array = array
        self.zero = zero
        self._shadow: dict[bytes, bytes] = {}

    def forget(self) -> None:
        """Stop trusting the shadow: the next `sync` rewrites everything it names.

        For a hash-like map every key currently in the map becomes a candidate for deletion,
        so a sync after `forget` leaves exactly the new contents in the map.
        """
        self._shadow = {}
        if not self.array:
            self._shadow = dict.fromkeys(list(self.table.keys()), _UNKNOWN)

    def sync(self, contents: Mapping[bytes, bytes]) -> int:
        """Make the map hold `contents`; returns the number of writes (updates + deletes)."""
        writes = 0
        for key, value in contents.items():
            if self._shadow.get(key) != value:
                self.table.update(key, value)
                self._shadow[key] = value
                writes += 1
        for key in [k for k in self._shadow if k not in contents]:
            if self.array:
                if self._shadow[key] != self.zero:
                    self.table.update(key, self.zero)
                    writes += 1
                self._shadow[key] = self.zero
            else:
                with contextlib.suppress(KeyError):  # already gone: the state we want
                    self.table.delete(key)
                del self._shadow[key]
                writes += 1
        return writes

    def set(self, key: bytes, value: bytes) -> bool:
        """Write one entry unless the shadow says it already holds `value`."""
        if self._shadow.get(key) == value:
            return False
        self.table.update(key, value)
        self._shadow[key] = value
        return True


@dataclass(frozen=True, slots=True)
class Flow:
    """A 5-tuple (host-order addresses and ports; ports 0 for protocols without them)."""

    src: int
    dst: int
    proto: int
    sport: int = 0
    dport: int = 0
    ifindex: int = 1

    def reply(self) -> Flow:
        return Flow(self.dst, self.src, self.proto, self.dport, self.sport, self.ifindex)


# TCP flag mixes of generated packets: mostly mid-connection segments, some opens and closes.
TCP_FLAG_CHOICES = (pkt.TCP_SYN, pkt.TCP_ACK, pkt.TCP_PSH | pkt.TCP_ACK,
                    pkt.TCP_FIN | pkt.TCP_ACK, pkt.TCP_RST, pkt.TCP_SYN | pkt.TCP_ACK)
TCP_FLAG_WEIGHTS = (25, 30, 30, 7, 3, 5)


def flow_frame(flow: Flow, *, tcp_flags: int = pkt.TCP_ACK, payload: bytes = b"",
               vlan: int | None = None, options: bytes = b"", flags_frag: int = 0,
               ttl: int = 64, tos: int = 0, ident: int = 0, eth_dst: bytes = NF_MAC,
               eth_src: bytes = CLIENT_MAC) -> bytes:
    """One Ethernet frame of `flow` with valid checksums."""
    segment = pkt.l4(flow.proto, flow.src, flow.dst, flow.sport, flow.dport, payload,
                     tcp_flags=tcp_flags)
    ip = pkt.ipv4(flow.src, flow.dst, flow.proto, segment, ttl=ttl, tos=tos, ident=ident,
                  flags_frag=flags_frag, options=options)
    return pkt.ethernet(eth_dst, eth_src, pkt.ETH_P_IP, ip, vlan=vlan)


def random_frame(flow: Flow, rng: random.Random) -> bytes:
    """A frame of `flow` with random TCP flags, payload length, TTL and IP id."""
    flags = rng.choices(TCP_FLAG_CHOICES, TCP_FLAG_WEIGHTS)[0]
    payload = rng.randbytes(rng.choice((0, 0, 6, 18, 64, 200)))
    return flow_frame(flow, tcp_flags=flags, payload=payload, ttl=rng.randint(2, 255),
                      ident=rng.getrandbits(16), tos=rng.choice((0, 0, 0, 0x10, 0xb8)))


def arp_frame() -> bytes:
    """A broadcast ARP request (who-has 10.0.0.1 tell 10.0.0.2)."""
    body = (bytes.fromhex("0001080006040001") + CLIENT_MAC + pkt.ip4_bytes("10.0.0.2")
            + b"\0" * 6 + pkt.ip4_bytes("10.0.0.1"))
    return pkt.ethernet(b"\xff" * 6, CLIENT_MAC, pkt.ETH_P_ARP, body)


def ipv6_frame() -> bytes:
    """An IPv6 UDP datagram header with a short payload (never parsed as IPv4)."""
    header = bytes.fromhex("60000000000c1140") + b"\x20\x01\x0d\xb8" + b"\0" * 11 + b"\x01" \
        + b"\x20\x01\x0d\xb8" + b"\0" * 11 + b"\x02"
    return pkt.ethernet(NF_MAC, CLIENT_MAC, pkt.ETH_P_IPV6, header + bytes(12))


__all__ = [
    "CLIENT_MAC", "NF_MAC", "TCP_FLAG_CHOICES", "TCP_FLAG_WEIGHTS", "XDP_ABORTED", "XDP_DROP",
    "XDP_PASS", "XDP_REDIRECT", "XDP_TX", "Flow", "MapLike", "Outcome", "TableWriter",
    "arp_frame", "flow_frame", "ipv6_frame", "random_frame",
]
