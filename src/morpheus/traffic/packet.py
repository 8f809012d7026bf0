"""Building and parsing the frames our network functions handle.

Ethernet (with optional 802.1Q tag), IPv4 (with options and fragments), TCP, UDP, ICMP and
IP-in-IP. Builders produce bytes with correct checksums; `parse` returns the fields the
reference models need. Pure Python, no dependencies.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_IPV6 = 0x86DD

IPPROTO_ICMP = 1
IPPROTO_IPIP = 4
IPPROTO_TCP = 6
IPPROTO_UDP = 17

IP_MF = 0x2000
IP_DF = 0x4000
IP_OFFMASK = 0x1FFF

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

ETH_HLEN = 14
VLAN_HLEN = 4
IPV4_HLEN = 20


def mac(text: str) -> bytes:
    """'02:00:00:00:00:01' → 6 bytes."""
    parts = text.split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def ip4(text: str | int) -> int:
    """Dotted quad (or int) → host-order int."""
    return int(ipaddress.IPv4Address(text))


def ip4_bytes(addr: str | int) -> bytes:
    return ip4(addr).to_bytes(4, "big")


def ip4_str(addr: int) -> str:
    return str(ipaddress.IPv4Address(addr))


def checksum(data: bytes, initial: int = 0) -> int:
    """Internet checksum (RFC 1071) of `data`, folded and complemented."""
    if len(data) % 2:
        data += b"\0"
    total = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes,
             vlan: int | None = None, pcp: int = 0) -> bytes:
    if vlan is None:
        return dst + src + struct.pack("!H", ethertype) + payload
    tci = (pcp << 13) | (vlan & 0x0FFF)
    return dst + src + struct.pack("!HHH", ETH_P_8021Q, tci, ethertype) + payload


def ipv4(src: str | int, dst: str | int, proto: int, payload: bytes, *, ttl: int = 64,
         tos: int = 0, ident: int = 0, flags_frag: int = 0, options: bytes = b"") -> bytes:
    """An IPv4 header (with `options`, padded to 4 bytes) followed by `payload`."""
    if len(options) % 4:
        options += b"\0" * (4 - len(options) % 4)
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, total, ident, flags_frag, ttl, proto,
                         0, ip4_bytes(src), ip4_bytes(dst)) + options
    csum = checksum(header)
    return header[:10] + struct.pack("!H", csum) + header[12:] + payload


def _pseudo_header(src: str | int, dst: str | int, proto: int, length: int) -> bytes:
    return ip4_bytes(src) + ip4_bytes(dst) + struct.pack("!BBH", 0, proto, length)


def tcp(src: str | int, dst: str | int, sport: int, dport: int, payload: bytes = b"", *,
        flags: int = TCP_ACK, seq: int = 1, ack: int = 0, window: int = 65535) -> bytes:
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, window, 0, 0)
    segment = header + payload
    csum = checksum(_pseudo_header(src, dst, IPPROTO_TCP, len(segment)) + segment)
    return segment[:16] + struct.pack("!H", csum) + segment[18:]


def udp(src: str | int, dst: str | int, sport: int, dport: int, payload: bytes = b"") -> bytes:
    length = 8 + len(payload)
    datagram = struct.pack("!HHHH", sport, dport, length, 0) + payload
    csum = checksum(_pseudo_header(src, dst, IPPROTO_UDP, length) + datagram) or 0xFFFF
    return datagram[:6] + struct.pack("!H", csum) + datagram[8:]


def icmp_echo(ident: int = 1, seq: int = 1, payload: bytes = b"") -> bytes:
    msg = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def l4(proto: int, src: str | int, dst: str | int, sport: int, dport: int,
       payload: bytes = b"", *, tcp_flags: int = TCP_ACK) -> bytes:
    """Transport header + payload for `proto` (TCP, UDP or ICMP echo)."""
    if proto == IPPROTO_TCP:
        return tcp(src, dst, sport, dport, payload, flags=tcp_flags)
    if proto == IPPROTO_UDP:
        return udp(src, dst, sport, dport, payload)
    if proto == IPPROTO_ICMP:
        return icmp_echo(sport, dport, payload)
    return payload


@dataclass(frozen=True, slots=True)
class Parsed:
    """Fields of a frame as far as they could be parsed; absent layers are None."""

    eth_dst: bytes
    eth_src: bytes
    ethertype: int  # after the VLAN tag, if any
    vlan: int | None = None
    l3_offset: int = ETH_HLEN
    ip_ihl: int | None = None
    ip_tos: int | None = None
    ip_total_length: int | None = None
    ip_flags_frag: int | None = None
    ip_ttl: int | None = None
    ip_proto: int | None = None
    ip_src: int | None = None
    ip_dst: int | None = None
    l4_offset: int | None = None
    sport: int | None = None
    dport: int | None = None
    tcp_flags: int | None = None

    @property
    def is_ipv4(self) -> bool:
        return self.ip_proto is not None

    @property
    def is_fragment(self) -> bool:
        return bool(self.ip_flags_frag is not None and self.ip_flags_frag & (IP_MF | IP_OFFMASK))

    @property
    def is_later_fragment(self) -> bool:
        return bool(self.ip_flags_frag is not None and self.ip_flags_frag & IP_OFFMASK)


def parse(frame: bytes) -> Parsed | None:
    """Parse Ethernet / VLAN / IPv4 / TCP-UDP headers; None if shorter than an Ethernet header.

    IPv4 is parsed only when the header is complete and well-formed (version 4, IHL ≥ 5);
    ports only when the packet is not a later fragment and the transport header is complete.
    """
    if len(frame) < ETH_HLEN:
        return None
    dst, src = frame[0:6], frame[6:12]
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    offset = ETH_HLEN
    vlan = None
    if ethertype == ETH_P_8021Q:
        if len(frame) < ETH_HLEN + VLAN_HLEN:
            return Parsed(dst, src, ethertype)
        tci, ethertype = struct.unpack_from("!HH", frame, 14)
        vlan = tci & 0x0FFF
        offset += VLAN_HLEN
    base = Parsed(dst, src, ethertype, vlan, offset)
    if ethertype != ETH_P_IP or len(frame) < offset + IPV4_HLEN:
        return base
    vihl, tos, total, _ident, flags_frag, ttl, proto, _csum, saddr, daddr = struct.unpack_from(
        "!BBHHHBBH4s4s", frame, offset)
    ihl = vihl & 0x0F
    if vihl >> 4 != 4 or ihl < 5 or len(frame) < offset + ihl * 4:
        return base
    l4_off = offset + ihl * 4
    sport = dport = flags = None
    l4_len = 20 if proto == IPPROTO_TCP else 8
    if (not flags_frag & IP_OFFMASK and proto in (IPPROTO_TCP, IPPROTO_UDP)
            and len(frame) >= l4_off + l4_len):
        sport, dport = struct.unpack_from("!HH", frame, l4_off)
        if proto == IPPROTO_TCP:
            flags = frame[l4_off + 13]
    return Parsed(dst, src, ethertype, vlan, offset, ihl, tos, total, flags_frag, ttl, proto,
                  int.from_bytes(saddr, "big"), int.from_bytes(daddr, "big"), l4_off, sport,
                  dport, flags)


ARPOP_REQUEST = 1
ARPOP_REPLY = 2


def arp(op: int, sender_mac: bytes, sender_ip: str | int, target_mac: bytes,
        target_ip: str | int) -> bytes:
    """An Ethernet/IPv4 ARP message: the payload of an ETH_P_ARP frame."""
    return (struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, op) + sender_mac + ip4_bytes(sender_ip)
            + target_mac + ip4_bytes(target_ip))


def ipv6(src: bytes, dst: bytes, next_header: int, payload: bytes, *,
         hop_limit: int = 64) -> bytes:
    """A fixed IPv6 header (16-byte addresses, no extension headers) followed by `payload`."""
    return struct.pack("!IHBB", 6 << 28, len(payload), next_header, hop_limit) + src + dst \
        + payload
