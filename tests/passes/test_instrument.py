"""Sampling instrumentation records the keys looked up; the reader counts them, with decay."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from morpheus.analysis.sites import analyze
from morpheus.ir.program import with_origins
from morpheus.loader import create_map, load_collection, load_program_spec
from morpheus.obj import read_object
from morpheus.optimizer import HeatReader, instrument
from morpheus.passes.instrument import SampledSite

pytestmark = pytest.mark.kernel


def frame(key: int) -> bytes:
    return bytes([0, 0]) + struct.pack("<I", key) + bytes(58)


@pytest.mark.parametrize("rate", [1, 4])
def test_sampled_keys_are_counted(test_objects: dict[str, Path], rate: int) -> None:
    spec = read_object(test_objects["learn.v3"])
    prog = spec.program("xdp_learn")
    program = with_origins(prog.program)
    facts = analyze(program, spec.maps)
    (site,) = [s for s in facts.lookups() if s.map == "table"]
    sampled, extra_specs, layout = instrument(program, spec, prog,
                                              [SampledSite(site.index, "table", 4)],
                                              rate=rate, slots=64)
    with load_collection(spec, programs=[]) as coll:
        extras = {n: create_map(m) for n, m in extra_specs.items()}
        try:
            maps = {**coll.maps, **extras}
            reader = HeatReader(layout, maps, decay=0.5)
            with load_program_spec(prog, maps, program=sampled, btf_fd=coll.btf_fd) as p:
                sent = [7] * 40 + [9] * 20 + [11] * 4  # 64 lookups
                for k in sent:
                    assert p.test_run(frame(k)).retval == 2  # behaviour unchanged (absent)
                heat = reader.read()[site.index]
                assert heat.lookups == len(sent)
                assert heat.samples == len(sent) // rate
                if rate == 1:
                    assert heat.keys == {struct.pack("<I", 7): 40, struct.pack("<I", 9): 20,
                                         struct.pack("<I", 11): 4}
                else:
                    # Each sample stands for `rate` lookups; the raw samples are kept apart.
                    assert sum(heat.recent.values()) == len(sent) // rate
                    assert sum(heat.keys.values()) == len(sent)
                    assert heat.keys.most_common(1)[0][0] == struct.pack("<I", 7)
                for _ in range(8):
                    p.test_run(frame(9))
                heat = reader.read()[site.index]  # old counts halve, new ones add
                assert heat.lookups == 8
                if rate == 1:
                    assert heat.keys[struct.pack("<I", 7)] == 20
                    assert heat.keys[struct.pack("<I", 9)] == 18
        finally:
            for m in extras.values():
                m.close()
