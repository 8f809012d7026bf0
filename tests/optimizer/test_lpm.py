"""LPM tries read whole and searched by address range (optimizer.lpm, passes.inline)."""

from __future__ import annotations

import struct
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from morpheus.loader import create_map, load_collection, load_program_spec
from morpheus.obj import read_object
from morpheus.optimizer import (
    Guards,
    PlanOptions,
    SiteHeat,
    SpecializeRequest,
    Target,
    snapshot_maps,
    specialize,
)
from morpheus.optimizer.lpm import full_prefixlen_key, lpm_ranges, range_of


def longest_match(prefixes: dict[tuple[int, int], bytes], address: int, bits: int
                  ) -> bytes | None:
    for length in range(bits, -1, -1):
        found = prefixes.get((length, address >> (bits - length)))
        if found is not None:
            return found
    return None


def trie_key(length: int, net: int, bits: int, host: int = 0) -> bytes:
    data = (net << (bits - length)) | (host & ((1 << (bits - length)) - 1))
    return struct.pack("<I", length) + data.to_bytes(bits // 8, "big")


prefix_sets = st.sampled_from([8, 16, 32]).flatmap(lambda bits: st.tuples(
    st.just(bits),
    st.lists(st.tuples(st.integers(0, bits), st.integers(0, 2**bits - 1),
                       st.integers(0, 2**bits - 1), st.sampled_from([b"a", b"b", b"c"])),
             max_size=40),
    st.lists(st.integers(0, 2**bits - 1), max_size=30)))


@settings(max_examples=300, deadline=None)
@given(case=prefix_sets)
def test_ranges_answer_the_longest_match(case: tuple[int, list, list[int]]) -> None:
    bits, raw, probes = case
    prefixes: dict[tuple[int, int], bytes] = {}
    entries: dict[bytes, bytes | None] = {}
    for length, addr, host, value in raw:
        net = addr >> (bits - length)
        if (length, net) in prefixes:
            continue
        prefixes[length, net] = value
        entries[trie_key(length, net, bits, host)] = value  # host bits are ignored
    # A key looked up and found absent (snapshot_maps adds only keys it has not read).
    entries.setdefault(trie_key(bits, 0, bits)[:4] + b"\xff" * (bits // 8), None)
    ranges = lpm_ranges(entries, 4 + bits // 8)
    assert ranges[0][0] == 0
    assert all(a[0] < b[0] and a[1] != b[1] for a, b in pairwise(ranges))
    assert len(ranges) <= 2 * len(prefixes) + 1
    edges = {s for s, _ in ranges} | {s - 1 for s, _ in ranges if s} | {2**bits - 1}
    for address in [*probes, *edges]:
        want = longest_match(prefixes, address, bits)
        assert ranges[range_of(ranges, address)][1] == want, hex(address)


def test_only_full_length_constant_prefixes_are_searched_by_range() -> None:
    assert full_prefixlen_key((32, 0, 0, 0, None, None, None, None), 8)
    assert not full_prefixlen_key((24, 0, 0, 0, None, None, None, None), 8)
    assert not full_prefixlen_key((None, 0, 0, 0, None, None, None, None), 8)
    assert not full_prefixlen_key((128, 0, 0, 0, *([None] * 16)), 20)  # IPv6: not yet


def ip_frame(daddr: int) -> bytes:
    header = struct.pack("!BBHHHBBHII", 0x45, 0, 28, 0, 0, 64, 17, 0, 0x0A000001, daddr)
    return bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + b"\x08\x00" + header + bytes(8)


@pytest.mark.kernel
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(routes=st.lists(st.tuples(st.integers(0, 32), st.integers(0, 2**32 - 1),
                                 st.integers(0, 3)), min_size=1, max_size=60),
       probes=st.lists(st.integers(0, 2**32 - 1), max_size=40),
       hot=st.integers(0, 2**32 - 1))
def test_range_search_forwards_like_the_trie(routes: list[tuple[int, int, int]],
                                             probes: list[int], hot: int,
                                             test_objects: dict[str, Path]) -> None:
    """Original and specialized router on the same trie: same verdicts, same bytes."""
    spec = read_object(test_objects["lpm.v3"])
    prog = spec.program("xdp_router")
    target = Target.analyze(spec, prog)
    (site,) = [s for s in target.facts.lookups() if s.map == "routes_v4"]
    heat = {site.index: SiteHeat(Counter({trie_key(32, hot, 32): 5.0}))}
    with load_collection(spec, programs=[]) as coll:
        for n in range(4):
            coll.maps["nexthops"].update(n, struct.pack("<I6s6s", n and 10 + n, bytes([n] * 6),
                                                        bytes([9] * 6)))
        prefixes = {}
        for length, addr, nexthop in routes:
            prefixes[length, addr >> (32 - length)] = nexthop
            coll.maps["routes_v4"].update(trie_key(length, addr >> (32 - length), 32),
                                          struct.pack("<I", nexthop))
        snaps = snapshot_maps(coll.maps, target.facts, spec.maps, heat, PlanOptions())
        result = specialize(SpecializeRequest(target, snaps, heat,
                                              guards=Guards(slots={}, bumps={})))
        (decision,) = [d for d in result.decisions if d.site.map == "routes_v4"]
        assert decision.mode == "table" and "address ranges" in decision.reason
        extras = {n: create_map(m) for n, m in result.extra_maps.items()}
        try:
            maps = {**coll.maps, **extras}
            with load_program_spec(prog, maps, btf_fd=coll.btf_fd) as original, \
                    load_program_spec(prog, maps, program=result.program,
                                      btf_fd=coll.btf_fd) as special:
                # The trie is never asked: one lookup call fewer (nexthops stays).
                def lookups(insns: object) -> int:
                    return sum(i.is_helper_call and i.imm == 1 for i in insns)  # type: ignore[attr-defined]
                assert lookups(result.program.insns) == lookups(prog.program.insns) - 1
                edges = [((addr >> (32 - length)) << (32 - length)) + d
                         for length, addr, _ in routes for d in (-1, 0, 1)]
                for address in [*probes, *edges, hot, 0, 2**32 - 1]:
                    f = ip_frame(address % 2**32)
                    a, b = original.test_run(f), special.test_run(f)
                    assert (b.retval, b.data) == (a.retval, a.data), hex(address)
        finally:
            for m in extras.values():
                m.close()


@pytest.mark.kernel
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(routes=st.lists(st.tuples(st.integers(0, 32), st.integers(0, 2**32 - 1),
                                 st.integers(0, 3)), min_size=1, max_size=80),
       probes=st.lists(st.integers(0, 2**32 - 1), max_size=40))
def test_direct_tables_forward_like_the_trie(routes: list[tuple[int, int, int]],
                                             probes: list[int],
                                             test_objects: dict[str, Path]) -> None:
    """Above `lpm_tree_max` ranges the trie becomes direct-indexed tables
    (passes.lpmtable): original and specialized on the same trie, same verdicts and
    bytes; then, behind a guard, a route written after specialization is served too."""
    spec = read_object(test_objects["lpm.v3"])
    prog = spec.program("xdp_router")
    target = Target.analyze(spec, prog)
    options = PlanOptions(lpm_tree_max=0)
    with load_collection(spec, programs=[]) as coll:
        for n in range(4):
            coll.maps["nexthops"].update(n, struct.pack("<I6s6s", n and 10 + n, bytes([n] * 6),
                                                        bytes([9] * 6)))
        for length, addr, nexthop in routes:
            coll.maps["routes_v4"].update(trie_key(length, addr >> (32 - length), 32),
                                          struct.pack("<I", nexthop))
        snaps = snapshot_maps(coll.maps, target.facts, spec.maps, {}, options)
        result = specialize(SpecializeRequest(
            target, snaps, {}, options,
            guards=Guards(slots={"routes_v4": 0}, bumps={}, versions={"routes_v4": 0})))
        (decision,) = [d for d in result.decisions if d.site.map == "routes_v4"]
        assert decision.plan is not None and decision.plan.direct
        assert any(n.startswith("mph_lpt") for n in result.extra_maps)
        extras = {n: create_map(m) for n, m in result.extra_maps.items()}
        try:
            maps = {**coll.maps, **extras}
            edges = [((addr >> (32 - length)) << (32 - length)) + d
                     for length, addr, _ in routes for d in (-1, 0, 1, 255, 256)]
            addresses = [a % 2**32 for a in [*probes, *edges, 0, 2**32 - 1]]
            with load_program_spec(prog, maps, btf_fd=coll.btf_fd) as original, \
                    load_program_spec(prog, maps, program=result.program,
                                      btf_fd=coll.btf_fd) as special:
                def same(what: str) -> None:
                    for address in addresses:
                        f = ip_frame(address)
                        a, b = original.test_run(f), special.test_run(f)
                        assert (b.retval, b.data) == (a.retval, a.data), (what, hex(address))

                same("as specialized")
                # A write the inlined tables do not hold; the guard moves as the API moves it.
                length, addr, nexthop = routes[0]
                coll.maps["routes_v4"].update(trie_key(length, addr >> (32 - length), 32),
                                              struct.pack("<I", (nexthop + 1) % 4))
                extras["mph_guard"].update(0, (1).to_bytes(8, "little")
                                           + bytes(len(extras["mph_guard"].lookup(0)) - 8))
                same("after a guarded write")
        finally:
            for m in extras.values():
                m.close()


@pytest.mark.kernel
def test_a_trie_read_whole_is_kept_while_its_version_stays(test_objects: dict[str, Path]
                                                          ) -> None:
    """`WholeReads`: the agent reads a trie whole once per guard version; the ranges the
    plan derives are computed once per version too."""
    from morpheus.optimizer import WholeReads

    spec = read_object(test_objects["lpm.v3"])
    target = Target.analyze(spec, spec.program("xdp_router"))
    with load_collection(spec, programs=[]) as coll:
        routes = coll.maps["routes_v4"]
        routes.update(trie_key(8, 10, 32), struct.pack("<I", 1))
        cache: dict = {}

        def read(version: int) -> dict[bytes, bytes | None]:
            snaps = snapshot_maps(coll.maps, target.facts, spec.maps, {}, PlanOptions(),
                                  WholeReads({"routes_v4": version}, cache))
            assert snaps["routes_v4"].complete
            return snaps["routes_v4"].entries

        first = read(4)
        routes.update(trie_key(16, 0x0A01, 32), struct.pack("<I", 2))  # no version moved
        assert read(4) == first  # kept: the version says nothing changed
        assert trie_key(16, 0x0A01, 32) in read(6)  # the version moved: read again
        assert cache["routes_v4"][0] == 6
