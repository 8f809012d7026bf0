"""`userspace.jittime`: every compile is a fresh one (no native code reused), timed per
pipeline."""

from __future__ import annotations

from morpheus.nf import get
from morpheus.userspace.jittime import time_compiles
from morpheus.world.environment import Subject


def test_compiles_are_timed_per_pipeline_and_never_reused() -> None:
    nf = get("router")
    out = time_compiles(Subject("original", nf.object_path, nf.program), 3, ["fast", "lean"])
    program = Subject("original", nf.object_path, nf.program).program_spec().program
    assert out["insns"] == len(program.insns) and out["lifted_lines"] > out["insns"]
    for clock in ("cpu_ms", "wall_ms"):
        assert set(out[clock]) == {"fast", "lean"}
        for spread in out[clock].values():
            assert 0 < spread["min"] <= spread["median"] <= spread["max"]
