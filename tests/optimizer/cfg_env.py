"""The control plane of tests/progs/cfg_of_maps.c: a policy hash map in slot 0 of
`policy_outer`, a TTL floor array for every CPU in `tuning_outer` (one shared by all CPUs,
or one per CPU), and UDP traffic over the policy's ports."""

from __future__ import annotations

import random
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from morpheus.kernel import Map
from morpheus.kernel.maps import possible_cpus
from morpheus.traffic.packet import ETH_P_IP, IPPROTO_UDP, ethernet, ipv4, l4, mac
from morpheus.uapi import MapType

XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
POLICY = {53: XDP_DROP, 80: XDP_PASS, 443: XDP_TX, 8080: XDP_TX}
TTL_FLOOR = 8


def port_key(port: int) -> bytes:
    return struct.pack("!H", port)  # the program's key is the port in network order


def policy_map(entries: Mapping[int, int], name: str = "policy") -> Map:
    m = Map.create(MapType.HASH, 2, 4, 32, name=name)
    for port, action in entries.items():
        m.update(port_key(port), struct.pack("<I", action))
    return m


def tuning_map(floor: int, name: str = "tuning") -> Map:
    m = Map.create(MapType.ARRAY, 4, 4, 1, name=name)
    m.update(0, struct.pack("<I", floor))
    return m


@dataclass
class CfgShape:
    """The inner maps made for the configuration (close them)."""

    policy: Map
    tunings: list[Map] = field(default_factory=list)

    def close(self) -> None:
        for m in (self.policy, *self.tunings):
            m.close()


def configure(maps: Mapping[str, Map], *, per_cpu_floors: list[int] | None = None) -> CfgShape:
    """Slot 0 of `policy_outer` gets `POLICY`; every CPU's slot of `tuning_outer` gets the
    same floor map, or (with `per_cpu_floors`) a map of its own."""
    shape = CfgShape(policy_map(POLICY))
    maps["policy_outer"].update(0, struct.pack("<I", shape.policy.fd.number))
    if per_cpu_floors is None:
        shape.tunings.append(tuning_map(TTL_FLOOR))
    for cpu in range(possible_cpus()):
        if per_cpu_floors is not None:
            shape.tunings.append(tuning_map(per_cpu_floors[cpu % len(per_cpu_floors)],
                                            f"tuning{cpu}"))
        maps["tuning_outer"].update(cpu, struct.pack("<I", shape.tunings[-1].fd.number))
    return shape


def frame(port: int, ttl: int = 64, sport: int = 4000) -> bytes:
    src, dst = "192.168.1.1", "10.0.0.1"
    ip = ipv4(src, dst, IPPROTO_UDP, l4(IPPROTO_UDP, src, dst, sport, port, bytes(18)),
              ttl=ttl)
    return ethernet(mac("02:00:00:00:00:01"), mac("02:00:00:00:00:02"), ETH_P_IP, ip)


def trace(packets: int = 400, seed: int = 1) -> list[bytes]:
    """Mostly the policy's ports, some others, a few packets under the TTL floor."""
    rng = random.Random(seed)
    ports = [*POLICY, 9999, 22]
    return [frame(rng.choice(ports), ttl=rng.choice((64, 64, 64, 3)), sport=1024 + n % 500)
            for n in range(packets)]
