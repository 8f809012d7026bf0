"""The control plane of tests/progs/katran_shape.c, as Katran's configures its balancer: one
LRU map per CPU in `lru_mapping`, VIPs, reals and a Maglev-style ring per VIP; and a
high-locality trace over the VIPs."""

from __future__ import annotations

import random
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from morpheus.kernel import Map
from morpheus.kernel.maps import possible_cpus
from morpheus.traffic.packet import ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, ethernet, ipv4, l4, mac
from morpheus.uapi import MapType

RING_SIZE = 65537
LRU_SIZE = 4096
VIP_NET = "10.100.0.{}"
PORTS = (80, 443)
FLOW_KEY = 16
LRU_VALUE = 16


@dataclass
class KatranShape:
    """The configuration written, and the inner maps made for it (close them)."""

    vips: list[tuple[str, int, int]]  # (address, port, protocol)
    reals: int
    inner: list[Map] = field(default_factory=list)

    def close(self) -> None:
        for m in self.inner:
            m.close()
        self.inner.clear()


def configure(maps: Mapping[str, Map], *, vips: int = 4, reals: int = 32,
              per_cpu_lru: bool = True) -> KatranShape:
    """Write the configuration into the object's maps (by name)."""
    shape = KatranShape([], reals)
    if per_cpu_lru:
        for cpu in range(possible_cpus()):
            inner = Map.create(MapType.LRU_HASH, FLOW_KEY, LRU_VALUE, LRU_SIZE,
                               name=f"conn_lru_{cpu}")
            shape.inner.append(inner)
            maps["lru_mapping"].update(cpu, struct.pack("<I", inner.fd.number))
    for n in range(reals):
        dst = bytes([10, 200, n // 256, n % 256])
        maps["reals"].update(n, dst + mac(f"02:00:00:00:01:{n:02x}") + bytes(2))
    ring = maps["ch_rings"]
    for vip_num in range(vips):
        addr = VIP_NET.format(vip_num + 1)
        for port, proto in ((PORTS[vip_num % 2], IPPROTO_TCP if vip_num % 2 else IPPROTO_UDP),):
            key = bytes(int(x) for x in addr.split(".")) + struct.pack("!H", port) + \
                bytes([proto, 0])
            maps["vip_map"].update(key, struct.pack("<II", 0, vip_num))
            shape.vips.append((addr, port, proto))
        # Maglev-like: each real owns a permuted share of the ring's slots.
        rng = random.Random(vip_num)
        slots = [rng.randrange(1, reals) for _ in range(RING_SIZE)]
        base = vip_num * RING_SIZE
        entries = [(struct.pack("<I", base + i), struct.pack("<I", s))
                   for i, s in enumerate(slots)]
        for start in range(0, len(entries), 8192):
            ring.update_batch(entries[start:start + 8192])
    return shape


def trace(shape: KatranShape, packets: int = 2000, *, flows: int = 200, seed: int = 1
          ) -> list[bytes]:
    """High locality: a Zipf-like choice among `flows` client flows to the VIPs."""
    rng = random.Random(seed)
    weights = [1 / (k + 1) ** 1.1 for k in range(flows)]
    specs = []
    for k in range(flows):
        addr, port, proto = shape.vips[k % len(shape.vips)]
        specs.append((f"192.168.{k // 250}.{k % 250 + 1}", addr, 1024 + k, port, proto))
    out = []
    for k in rng.choices(range(flows), weights, k=packets):
        src, dst, sport, dport, proto = specs[k]
        segment = l4(proto, src, dst, sport, dport, b"x" * 18)
        out.append(ethernet(mac("02:00:00:00:00:01"), mac("02:00:00:00:00:02"), ETH_P_IP,
                            ipv4(src, dst, proto, segment)))
    return out


__all__ = ["KatranShape", "configure", "trace"]
