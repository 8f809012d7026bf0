"""The live user-space data plane's pieces: the gate between batches, map views, the guard,
and the maps' reads from Python answering as the kernel's syscalls do."""

from __future__ import annotations

import struct
import threading

import pytest

from morpheus.kernel import Map, MapType
from morpheus.userspace.dataplane import UserDataPlane
from morpheus.userspace.live import BatchGate, MapView, UserGuard, copy_map
from morpheus.userspace.maps import UserMap


def test_a_pause_never_overlaps_a_batch_and_nests() -> None:
    gate = BatchGate()
    inside = threading.Event()
    stop = threading.Event()
    batches = [0]

    def poller() -> None:
        while not stop.is_set():
            with gate.batch():
                inside.set()
                batches[0] += 1
                inside.clear()

    thread = threading.Thread(target=poller)
    thread.start()
    try:
        for _ in range(300):
            with gate.paused():
                assert not inside.is_set()
                with gate.paused():  # re-entrant in the same thread
                    assert not inside.is_set()
                seen = batches[0]
                assert batches[0] == seen  # no batch ran during the pause
    finally:
        stop.set()
        thread.join()
    assert batches[0] > 0 and gate.pauses == 300


def _lpm_key(prefixlen: int, addr: str) -> bytes:
    return struct.pack("<I", prefixlen) + bytes(int(x) for x in addr.split("."))


@pytest.mark.kernel
def test_an_lpm_read_from_python_is_a_longest_prefix_match_as_in_the_kernel() -> None:
    with UserDataPlane.create() as plane:
        user = UserMap("t", MapType.LPM_TRIE, 8, 4, 16, 1, plane.env, ncpus=1)
        kernel = Map.create(MapType.LPM_TRIE, 8, 4, 16, flags=1, name="t")
        try:
            for key, value in ((_lpm_key(8, "10.0.0.0"), 1), (_lpm_key(16, "10.1.0.0"), 2)):
                kernel.update(key, struct.pack("<I", value))
                user.update(key, struct.pack("<I", value))
            for probe in ("10.1.2.3", "10.2.3.4", "11.0.0.1"):
                key = _lpm_key(32, probe)
                assert user.lookup(key) == kernel.lookup(key), probe
        finally:
            kernel.close()
            user.close()


@pytest.mark.kernel
def test_views_write_between_batches_and_the_guard_counts_bumps() -> None:
    with UserDataPlane.create() as plane:
        gate = BatchGate()
        arr = UserMap("g", MapType.ARRAY, 4, 16, 1, 0, plane.env, ncpus=1)
        hsh = UserMap("h", MapType.HASH, 4, 4, 8, 0, plane.env, ncpus=1)
        other = UserMap("h2", MapType.HASH, 4, 4, 8, 0, plane.env, ncpus=1)
        try:
            guard = UserGuard(MapView("g", arr, gate), 2)
            guard.bump(1)
            guard.bump(1)
            assert guard.versions() == [0, 2]
            with pytest.raises(IndexError):
                guard.bump(2)
            view = MapView("h", hsh, gate)
            view.update(struct.pack("<I", 7), struct.pack("<I", 9))
            assert view.lookup(struct.pack("<I", 7)) == struct.pack("<I", 9)
            assert view.count() == 1 and view.writes == 1
            with pytest.raises(KeyError):
                view.delete(struct.pack("<I", 8))
            copy_map(hsh, other)
            assert dict(other.items()) == dict(hsh.items())
            assert gate.pauses >= 5
        finally:
            for m in (arr, hsh, other):
                m.close()
