"""A configured instance of tests/progs/checked.c, its packets, and mutants of it."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from morpheus.kernel import Map, MapType
from morpheus.loader import Collection, load_collection
from morpheus.obj import ObjectSpec, read_object
from morpheus.traffic.packet import ETH_P_IP, IPPROTO_UDP, ethernet, ip4, ipv4, mac, udp

ROUTES = {"10.0.0.1": 2, "10.0.0.2": 3, "10.0.0.3": 0x100 | 1, "10.0.0.4": 0x100 | 2}
SOURCES = [f"192.168.0.{i}" for i in range(1, 9)]


@dataclass
class CheckedEnv:
    spec: ObjectSpec
    collection: Collection

    @property
    def maps(self) -> dict[str, Map]:
        return self.collection.maps

    @property
    def prog(self):  # type: ignore[no-untyped-def]
        return self.spec.program("xdp_checked")


def configure(coll: Collection) -> None:
    configure_maps(coll.maps, coll.spec)


def configure_maps(maps: dict[str, Map], spec: ObjectSpec) -> None:
    """Routes, the sampling mask, two devmap ports, one inner LRU map per possible CPU."""
    for addr, port in ROUTES.items():
        maps["routes"].update(struct.pack("<I", 32) + struct.pack(">I", ip4(addr)),
                              struct.pack("<I", port))
    maps["config"].update(0, struct.pack("<I", 3))
    for slot in (1, 2):
        maps["ports"].update(slot, struct.pack("<I", 1))  # lo: only test runs redirect
    inner_spec = spec.maps["conns"].inner
    assert inner_spec is not None
    for cpu in range(8):
        with Map.create(MapType.LRU_HASH, 4, 8, inner_spec.max_entries,
                        name=f"conns_{cpu}") as inner:
            maps["conns"].update(cpu, inner)


@contextmanager
def checked_env(path: Path, programs: tuple[str, ...] = ("xdp_checked",)
                ) -> Iterator[CheckedEnv]:
    spec = read_object(path)
    with load_collection(spec, programs=list(programs)) as coll:
        configure(coll)
        if "xdp_checked" in coll.programs:
            coll.maps["jump"].update(0, coll.programs["xdp_checked"])
        yield CheckedEnv(spec, coll)


def packets(n: int, seed: int = 1) -> list[tuple[bytes, int]]:
    """Routed and unrouted UDP packets, TTL 1 now and then, a few non-IP frames."""
    rng = random.Random(seed)
    out = []
    dsts = [*ROUTES, "10.0.0.9"]
    for _ in range(n):
        kind = rng.random()
        if kind < 0.05:
            frame = ethernet(mac("02:00:00:00:00:02"), mac("02:00:00:00:00:01"), 0x86DD,
                             bytes(40))
        else:
            src, dst = rng.choice(SOURCES), rng.choice(dsts)
            payload = udp(src, dst, rng.choice((53, 1000, 4242)), rng.choice((80, 443)),
                          bytes(rng.randrange(0, 32)))
            ttl = 1 if rng.random() < 0.05 else 64
            frame = ethernet(mac("02:00:00:00:00:02"), mac("02:00:00:00:00:01"), ETH_P_IP,
                             ipv4(src, dst, IPPROTO_UDP, payload, ttl=ttl))
        out.append((frame, 0))
    return out
