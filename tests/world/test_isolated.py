"""Isolated packets (`CheckRequest.isolated`): each runs from the state before the first of
them, and what each leaves is still compared before it is undone."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from morpheus.loader import load_collection
from morpheus.obj import read_object
from morpheus.world import CheckRequest, Side, check
from tests.world import mutants as M

pytestmark = pytest.mark.kernel

STATION = struct.Struct("=IIQ")  # port, flags (1 static, 2 marked), last_seen
XDP_DROP, XDP_PASS = 1, 2


def frame(key: int, port: int, flip: bool = False) -> bytes:
    return struct.pack("<I", key) + bytes([port, int(flip)]) + bytes(58)


@pytest.mark.parametrize("isolated", [None, (0, 3)])
def test_each_isolated_packet_runs_from_the_state_before_the_first(
        isolated: tuple[int, int] | None, test_objects: dict[str, Path]) -> None:
    """A new station is learned (inserted); a frame flipping its mark then drops, unless
    it runs from the state before the station was learned."""
    spec = read_object(test_objects["refresh.v3"])
    prog = spec.program("xdp_refresh")
    with load_collection(spec, programs=[]) as coll:
        side = Side("refresh", prog, btf_fd=coll.btf_fd, spec=spec)
        packets = [(frame(5, 1), 0), (frame(5, 1, flip=True), 0), (frame(5, 1, flip=True), 0)]
        outcome = check(CheckRequest(coll.maps, side, side, packets, isolated=isolated))
        assert outcome.equivalent, outcome.to_json()
        expected = [XDP_PASS] * 3 if isolated else [XDP_PASS, XDP_DROP, XDP_PASS]
        assert outcome.base_verdicts == expected


def test_what_an_isolated_packet_writes_is_compared_before_it_is_undone(
        test_objects: dict[str, Path]) -> None:
    """A candidate that drops the timestamp refresh (nothing but the table shows it) is
    caught although every packet's effects are undone."""
    spec = read_object(test_objects["refresh.v3"])
    prog = spec.program("xdp_refresh")
    mutant = M.map_store_dropped(0)(prog.program, {})
    assert mutant is not None and not isinstance(mutant, tuple)
    with load_collection(spec, programs=[]) as coll:
        coll.maps["stations"].update(5, STATION.pack(1, 0, 0))  # due for a refresh
        packets = [(frame(5, 1), 0), (frame(5, 1), 0)]
        outcome = check(CheckRequest(
            coll.maps, Side("original", prog, btf_fd=coll.btf_fd, spec=spec),
            Side("no refresh", prog, mutant, btf_fd=coll.btf_fd, spec=spec), packets,
            isolated=(0, 2)))
        assert not outcome.mismatches
        assert outcome.tables_differing == ["stations"], outcome.to_json()
        assert outcome.first_table is not None and outcome.first_table[0] == 0
        # The source is never written (each world runs on copies).
        assert coll.maps["stations"].lookup(5) == STATION.pack(1, 0, 0)
