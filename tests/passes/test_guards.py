"""Specialized sites on a map the data plane writes stay correct: the write bumps the
version first, and the guard sends later packets down the generic path."""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import pytest

from morpheus.loader import create_map, load_collection, load_program_spec
from morpheus.obj import read_object
from morpheus.optimizer import Guards, MapSnapshot, SiteHeat, SpecializeRequest, Target, specialize
from morpheus.passes.inline import GUARD_MAP

pytestmark = pytest.mark.kernel


def frame(op: int, key: int, value: int = 0) -> bytes:
    return bytes([op, 0]) + struct.pack("<I", key) + bytes([value]) + bytes(57)


@pytest.mark.parametrize(("program_name", "map_name"), [("xdp_learn", "table"),
                                                        ("xdp_learn_lru", "lru_table")])
def test_data_plane_write_invalidates_inlined_entries(test_objects: dict[str, Path],
                                                      program_name: str, map_name: str) -> None:
    spec = read_object(test_objects["learn.v3"])
    prog = spec.program(program_name)
    target = Target.analyze(spec, prog)
    facts = target.facts
    (site,) = [s for s in facts.lookups() if s.map == map_name]
    assert site.specializable and site.guarded
    with load_collection(spec, programs=[]) as coll:
        table = coll.maps[map_name]
        for key in range(10):
            table.update(key, 1)
        heat = {site.index: SiteHeat(Counter({struct.pack("<I", k): 10 - k for k in range(10)}))}
        snap = MapSnapshot(spec.maps[map_name], {struct.pack("<I", k): table.lookup(k)
                                                 for k in range(10)})
        result = specialize(SpecializeRequest(target, {map_name: snap}, heat,
                                              guards=Guards(versions={map_name: 0})))
        assert result.stats.get("guard_bumps") == 1
        maps = dict(coll.maps)
        extras = {name: create_map(mspec) for name, mspec in result.extra_maps.items()}
        try:
            maps.update(extras)
            assert GUARD_MAP in extras
            with load_program_spec(prog, maps, program=result.program,
                                   btf_fd=coll.btf_fd) as special:
                assert special.test_run(frame(0, 3)).retval == 3  # inlined: value 1 → TX
                assert special.test_run(frame(0, 99)).retval == 2  # not inlined, absent
                # The data plane changes key 3; the specialized code must not answer from
                # its inlined copy any more.
                assert special.test_run(frame(1, 3, value=2)).retval == 2
                assert table.lookup(3) == struct.pack("<I", 2)
                assert special.test_run(frame(0, 3)).retval == 1  # DROP: the new value
                version = struct.unpack("<Q", extras[GUARD_MAP].lookup(0)[:8])[0]
                assert version == 2  # bumped before and after the write
        finally:
            for m in extras.values():
                m.close()


def test_a_write_from_outside_is_caught_by_bumping_the_version(
        test_objects: dict[str, Path]) -> None:
    """The agent bumps the version for writes that bypass the program (control plane)."""
    spec = read_object(test_objects["learn.v3"])
    prog = spec.program("xdp_learn")
    target = Target.analyze(spec, prog)
    facts = target.facts
    (site,) = [s for s in facts.lookups() if s.map == "table"]
    with load_collection(spec, programs=[]) as coll:
        table = coll.maps["table"]
        table.update(7, 1)
        heat = {site.index: SiteHeat(Counter({struct.pack("<I", 7): 5}))}
        snap = MapSnapshot(spec.maps["table"], {struct.pack("<I", 7): table.lookup(7)})
        result = specialize(SpecializeRequest(target, {"table": snap}, heat,
                                              guards=Guards(versions={"table": 0})))
        extras = {name: create_map(mspec) for name, mspec in result.extra_maps.items()}
        try:
            maps = {**coll.maps, **extras}
            with load_program_spec(prog, maps, program=result.program,
                                   btf_fd=coll.btf_fd) as special:
                assert special.test_run(frame(0, 7)).retval == 3
                table.update(7, 2)  # user space changes the entry ...
                assert special.test_run(frame(0, 7)).retval == 3  # ... stale until bumped
                extras[GUARD_MAP].update(0, struct.pack("<Q", 1))
                assert special.test_run(frame(0, 7)).retval == 1
        finally:
            for m in extras.values():
                m.close()
