"""Every XDP program of the test objects, in the kernel and in user space, from the same map
state: the same verdicts, output bytes and map contents (bounded loops, bpf_loop callbacks,
subprograms, tail calls from the entry and from a subprogram, maps of maps, LPM tries, LRU
and per-CPU maps, atomics, global data, encapsulation with xdp_adjust_head)."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Iterator

import pytest

from morpheus.kernel import Map
from morpheus.kernel.cpu import pinned_cpu
from morpheus.loader import Collection, load_collection
from morpheus.obj import read_object
from morpheus.traffic import packet as pk
from morpheus.uapi import ProgType
from morpheus.userspace.dataplane import UserDataPlane, UserProgram
from morpheus.userspace.differential import compare_runs, kernel_runner, user_side

pytestmark = pytest.mark.kernel

MAC_A, MAC_B = pk.mac("02:00:00:00:00:01"), pk.mac("02:00:00:00:00:02")


def packet_mix(seed: int, count: int = 120) -> list[tuple[bytes, int]]:
    """IPv4 TCP/UDP/ICMP (some with TTL 1, options or fragments), IPv6, ARP, VLAN-tagged,
    truncated frames; ports from a small set so that flows repeat."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        kind = rng.choice(["udp", "tcp", "tcp", "icmp", "v6", "arp", "short", "vlan", "frag"])
        src = f"10.0.{rng.randrange(4)}.{rng.randrange(1, 9)}"
        dst = f"10.{rng.choice([0, 1, 2])}.{rng.randrange(4)}.{rng.randrange(1, 9)}"
        sport, dport = rng.choice([53, 80, 123, 443, 1900, 8080]), rng.choice([22, 53, 80, 443])
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        ttl = rng.choice([64, 64, 64, 1])
        if kind in ("udp", "tcp", "icmp", "vlan", "frag"):
            proto = {"udp": 17, "tcp": 6, "icmp": 1}.get(kind, rng.choice([6, 17]))
            l4 = pk.l4(proto, src, dst, sport, dport, payload,
                       tcp_flags=rng.choice([0x02, 0x10, 0x11, 0x04]))
            ip = pk.ipv4(src, dst, proto, l4, ttl=ttl,
                         flags_frag=0x2001 if kind == "frag" else 0,
                         options=b"\x01\x01\x01\x00" if rng.random() < 0.1 else b"")
            frame = pk.ethernet(MAC_B, MAC_A, 0x0800, ip,
                                vlan=rng.randrange(1, 5) if kind == "vlan" else None)
        elif kind == "v6":
            a6 = bytes([0xFD] + [0] * 14 + [rng.randrange(1, 5)])
            b6 = bytes([0xFD] + [0] * 14 + [rng.randrange(5, 9)])
            frame = pk.ethernet(MAC_B, MAC_A, 0x86DD,
                                pk.ipv6(a6, b6, 17, pk.udp(src, dst, sport, dport, payload),
                                        hop_limit=ttl))
        elif kind == "arp":
            frame = pk.ethernet(b"\xff" * 6, MAC_A, 0x0806,
                                pk.arp(1, MAC_A, src, bytes(6), dst))
        else:
            frame = pk.ethernet(MAC_B, MAC_A, 0x0800, bytes(rng.randrange(0, 12)))
        out.append((frame.ljust(14, b"\0"), 1))
    return out


def _prefix(addr: str, plen: int) -> bytes:
    return struct.pack("<I", plen) + pk.ip4_bytes(addr)


def populate(coll: Collection, seed: int) -> None:
    """Control-plane state the objects' programs look at (everything else starts empty)."""
    rng = random.Random(seed)
    maps = coll.maps
    if "routes_v4" in maps:
        maps["routes_v4"].update(_prefix("10.0.0.0", 8), struct.pack("<I", 1))
        maps["routes_v4"].update(_prefix("10.1.0.0", 16), struct.pack("<I", 2))
        maps["routes_v4"].update(_prefix("10.1.2.0", 24), struct.pack("<I", 3))
        for n in (1, 2, 3):
            value = struct.pack("<I", n + 1) + bytes(rng.randrange(256) for _ in range(12))
            maps["nexthops"].update(n, value)
    if "if_tenant" in maps:
        spec = coll.spec.maps["tenant_acls"].inner
        assert spec is not None
        maps["if_tenant"].update(1, struct.pack("<I", 3))
        with Map.create(spec.type, spec.key_size, spec.value_size, spec.max_entries,
                        name="acl") as acl:
            for port in (53, 80):
                acl.update(struct.pack("!H", port), struct.pack("<I", rng.choice([1, 2])))
            maps["tenant_acls"].update(3, struct.pack("<I", acl.fd.number))
        pool_spec = coll.spec.maps["vip_pools"].inner
        assert pool_spec is not None
        for vip in ("10.1.1.1", "10.2.0.3", "10.0.2.5"):
            with Map.create(pool_spec.type, pool_spec.key_size, pool_spec.value_size,
                            pool_spec.max_entries, name="pool") as pool:
                for slot in range(0, 16, 3):
                    pool.update(slot, pk.ip4_bytes(f"192.168.0.{slot + 1}"))
                maps["vip_pools"].update(pk.ip4_bytes(vip), struct.pack("<I", pool.fd.number))


TAIL_STAGES = {0: "xdp_ipv4", 1: "xdp_ipv6", 2: "xdp_udp"}


def cases() -> Iterator[tuple[str, str]]:
    from tests.conftest import BUILD
    from tests.progs.build import build_test_objects

    objects = build_test_objects(BUILD)
    for stem in ("atomics", "counter", "encap", "globals", "learn", "loops", "lpm",
                 "mapinmap", "multi", "subprogs", "tailcall", "bigone"):
        spec = read_object(objects[f"{stem}.v3"])
        for name, pspec in spec.programs.items():
            if pspec.type != ProgType.XDP or (stem == "tailcall" and name != "xdp_dispatch"):
                continue
            yield stem, name


@pytest.fixture(autouse=True)
def _pinned_cpu() -> Iterator[None]:
    # Per-CPU maps: the kernel's test run and the user plane must use the same CPU.
    with pinned_cpu(0):
        yield


@pytest.mark.parametrize(("stem", "program"), list(cases()))
def test_object_program_matches_the_kernel(test_objects, stem: str, program: str) -> None:
    spec = read_object(test_objects[f"{stem}.v3"])
    wanted = [program, *TAIL_STAGES.values()] if stem == "tailcall" else [program]
    with load_collection(spec, programs=wanted) as coll:
        populate(coll, seed=len(program))
        if stem == "tailcall":
            for slot, stage in TAIL_STAGES.items():
                coll.maps["stages"].update(slot, struct.pack("<I", coll.programs[stage].fd.number))

        def setup(plane: UserDataPlane) -> UserProgram:
            if stem == "tailcall":
                for slot, stage in TAIL_STAGES.items():
                    plane.set_program("stages", slot,
                                      plane.load(spec.program(stage), coll.maps,
                                                 btf_fd=coll.btf_fd))
            return plane.load(spec.program(program), coll.maps, btf_fd=coll.btf_fd)

        user = user_side(spec, coll.maps, setup)
        try:
            frames = packet_mix(seed=zlib.crc32(program.encode()))
            report = compare_runs(frames, kernel_runner(coll.programs[program]), user,
                                  coll.maps)
        finally:
            user.close()
    assert report.equal, report.summary()
    assert report.nondeterministic_packets < report.packets // 2

