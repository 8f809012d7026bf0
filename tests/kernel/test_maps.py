"""Maps of every type the project uses: create, element operations, batches, freeze, pin."""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest

from morpheus.kernel import KernelError, Map, MapFlags, MapType, UpdateFlags, possible_cpus
from morpheus.kernel.pin import is_bpffs

u32 = struct.Struct("<I").pack
u64 = struct.Struct("<Q").pack


@pytest.mark.parametrize("mtype", [MapType.HASH, MapType.LRU_HASH, MapType.ARRAY])
def test_lookup_update_delete_iterate(mtype: MapType) -> None:
    with Map.create(mtype, 4, 8, 64, name="t") as m:
        for k in range(10):
            m.update(k, u64(k * 100))
        assert m.lookup(3) == u64(300)
        assert m[7] == u64(700)
        keys = sorted(struct.unpack("<I", k)[0] for k in m)
        if mtype == MapType.ARRAY:
            assert keys == list(range(64))  # array elements always exist
            return
        assert keys == list(range(10))
        m.delete(3)
        assert m.lookup(3) is None
        with pytest.raises(KeyError):
            m.delete(3)
        assert dict(m.items())[u32(4)] == u64(400)


def test_update_flags_and_sizes_are_checked() -> None:
    with Map.create(MapType.HASH, 4, 4, 4, name="t") as m:
        m.update(1, u32(1), UpdateFlags.NOEXIST)
        with pytest.raises(KernelError) as info:
            m.update(1, u32(2), UpdateFlags.NOEXIST)
        assert info.value.errno == errno.EEXIST
        assert "update element of map 't'" in str(info.value)
        with pytest.raises(ValueError, match="key is 2 bytes"):
            m.update(b"ab", u32(0))
        with pytest.raises(ValueError, match="value is 8 bytes"):
            m.update(2, u64(0))
        for k in range(2, 5):
            m.update(k, u32(k))
        with pytest.raises(KernelError) as info:
            m.update(9, u32(9))  # full
        assert info.value.errno == errno.E2BIG


def test_per_cpu_values() -> None:
    ncpu = possible_cpus()
    with Map.create(MapType.PERCPU_ARRAY, 4, 4, 2, name="pc") as m:
        m.update(0, [u32(i + 1) for i in range(ncpu)])
        assert m.lookup(0) == [u32(i + 1) for i in range(ncpu)]
        m.update(1, u32(7))  # the same value on every CPU
        assert m.lookup(1) == [u32(7)] * ncpu
    with Map.create(MapType.PERCPU_HASH, 8, 12, 4, name="ph") as m:
        m.update(u64(5), b"x" * 12)
        assert m.lookup(u64(5)) == [b"x" * 12] * ncpu


def test_lpm_trie_longest_match() -> None:
    def key(plen: int, addr: str) -> bytes:
        return u32(plen) + bytes(int(x) for x in addr.split("."))

    with Map.create(MapType.LPM_TRIE, 8, 4, 16, flags=MapFlags.NO_PREALLOC, name="lpm") as m:
        m.update(key(8, "10.0.0.0"), u32(1))
        m.update(key(24, "10.1.2.0"), u32(2))
        assert m.lookup(key(32, "10.1.2.3")) == u32(2)
        assert m.lookup(key(32, "10.9.9.9")) == u32(1)
        assert m.lookup(key(32, "11.0.0.1")) is None


def test_lpm_trie_needs_no_prealloc_and_says_so() -> None:
    with pytest.raises(KernelError, match="BPF_F_NO_PREALLOC"):
        Map.create(MapType.LPM_TRIE, 8, 4, 16, name="lpm")


def test_batch_operations() -> None:
    with Map.create(MapType.HASH, 4, 4, 1024, name="b") as m:
        assert m.update_batch((k, u32(k * 2)) for k in range(600)) == 600
        got = dict(m.lookup_batch(batch_size=64))
        assert len(got) == 600 and got[u32(10)] == u32(20)
        assert m.delete_batch(range(100)) == 100
        assert len(list(m.keys())) == 500
        popped = dict(m.lookup_batch(batch_size=128, delete=True))
        assert len(popped) == 500 and not list(m.keys())


def test_freeze_makes_the_map_read_only_for_user_space() -> None:
    with Map.create(MapType.ARRAY, 4, 8, 1, flags=MapFlags.RDONLY_PROG, name="ro") as m:
        m.update(0, u64(42))
        m.freeze()
        assert m.lookup(0) == u64(42)
        with pytest.raises(KernelError) as info:
            m.update(0, u64(1))
        assert info.value.errno == errno.EPERM


def test_maps_holding_file_descriptors() -> None:
    with (
        Map.create(MapType.HASH, 4, 4, 4, name="inner") as inner,
        Map.create(MapType.ARRAY_OF_MAPS, 4, 4, 2, inner_map=inner, name="outer") as outer,
    ):
        outer.update(0, inner)  # the value is the inner map's fd
        inner_id = struct.unpack("<I", outer.lookup(0))[0]  # type: ignore[arg-type]
        assert inner_id == inner.id  # the kernel reports ids, not fds
    with Map.create(MapType.PROG_ARRAY, 4, 4, 4, name="jmp") as pa:
        assert pa.lookup(0) is None


def test_ringbuf_and_devmap_can_be_created() -> None:
    with Map.create(MapType.RINGBUF, 0, 0, 4096, name="rb") as rb:
        assert rb.type == MapType.RINGBUF
    with Map.create(MapType.DEVMAP, 4, 4, 8, name="ports") as dm:
        assert dm.max_entries == 8
    with Map.create(
        MapType.HASH_OF_MAPS,
        4,
        4,
        2,
        name="hom",
        inner_map=Map.create(MapType.ARRAY, 4, 4, 1, name="i"),
    ) as hom:
        assert hom.type == MapType.HASH_OF_MAPS


def test_info_ids_and_reopen_by_id() -> None:
    with Map.create(MapType.HASH, 4, 4, 4, name="info_me") as m:
        m.update(1, u32(1))
        with Map.from_id(m.id) as again:
            assert again.info.name == "info_me"
            assert again.lookup(1) == u32(1)


def test_pin_and_open(tmp_path: Path) -> None:
    root = Path("/sys/fs/bpf")
    if not is_bpffs(root):
        pytest.skip("no bpffs mounted at /sys/fs/bpf")
    path = root / f"morpheus-test-{tmp_path.name}"
    with Map.create(MapType.HASH, 4, 4, 4, name="pinned") as m:
        m.update(1, u32(9))
        m.pin(path)
    try:
        with Map.from_pin(path) as again:
            assert again.lookup(1) == u32(9)
    finally:
        path.unlink()


def test_clear_and_contains() -> None:
    with Map.create(MapType.HASH, 4, 4, 8, name="c") as m:
        m[1] = u32(1)
        assert 1 in m and 2 not in m
        m.clear()
        assert not list(m.keys())


def test_clone_copies_contents_into_a_private_map() -> None:
    from morpheus.kernel.netns import NetNamespace

    lpm_key = struct.Struct("<I4s").pack
    with Map.create(MapType.HASH, 4, 8, 16, name="h") as h, \
            Map.create(MapType.LPM_TRIE, 8, 4, 16, flags=MapFlags.NO_PREALLOC, name="lpm") as lpm, \
            Map.create(MapType.PERCPU_ARRAY, 4, 8, 2, name="pc") as pc:
        h.update(1, u64(10))
        lpm.update(lpm_key(16, bytes([10, 1, 0, 0])), u32(7))
        pc.update(1, [u64(n) for n in range(possible_cpus())])
        for original in (h, lpm, pc):
            with original.clone() as copy:
                assert copy.fd.number != original.fd.number and copy.name == original.name
                assert dict(copy.items()) == dict(original.items())
        with h.clone() as copy:
            copy.update(2, u64(20))
            assert h.lookup(2) is None  # the original is untouched
    # Devmaps: the kernel sets RDONLY_PROG on them itself and refuses it at creation.
    ns = NetNamespace.create("mph-clone")
    try:
        with ns.entered(), Map.create(MapType.DEVMAP_HASH, 4, 4, 8, name="dev") as dev:
            dev.update(5, u32(1))  # loopback of the test namespace
            with dev.clone() as copy:
                assert copy.lookup(5) == u32(1)
    finally:
        ns.delete()
    with Map.create(MapType.ARRAY, 4, 4, 1, name="inner") as inner, \
            Map.create(MapType.ARRAY_OF_MAPS, 4, 4, 1, inner_map=inner, name="outer") as outer, \
            pytest.raises(ValueError, match="map of maps"):
        outer.clone()


@pytest.mark.parametrize("mtype", [MapType.ARRAY, MapType.HASH, MapType.LRU_HASH,
                                   MapType.PERCPU_HASH])
def test_clone_of_many_entries_spans_several_batches(mtype: MapType) -> None:
    n = 10_000
    with Map.create(mtype, 4, 8, n + 10, name="big") as m:
        value = (lambda k: [u64(k + c) for c in range(possible_cpus())]) \
            if mtype.is_per_cpu else (lambda k: u64(k * 3))
        m.update_batch((k, value(k)) for k in range(n))
        with m.clone() as copy:
            got = dict(copy.items())
            assert got == dict(m.items())
            if mtype != MapType.LRU_HASH:  # an LRU map evicts before it is full
                assert len(got) == (n + 10 if mtype == MapType.ARRAY else n)


@pytest.mark.parametrize("mtype", [MapType.HASH, MapType.LRU_HASH, MapType.LPM_TRIE])
def test_count_is_batched_and_stops_at_its_limit(mtype: MapType) -> None:
    """LPM tries have no batch operations: their count walks the keys."""
    n = 5_000
    flags = MapFlags.NO_PREALLOC if mtype == MapType.LPM_TRIE else 0
    key_size = 8 if mtype == MapType.LPM_TRIE else 4
    with Map.create(mtype, key_size, 8, 2 * n, flags=flags, name="counted") as m:
        assert m.count() == 0
        keys = ([u32(32) + u32(k) for k in range(n)] if mtype == MapType.LPM_TRIE
                else [u32(k) for k in range(n)])
        for key in keys:
            m.update(key, u64(1))
        assert m.count() == n
        assert m.count(batch_size=64) == n
        assert 1000 <= m.count(limit=1000, batch_size=256) < 1000 + 256
