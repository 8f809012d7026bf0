"""The JIT's pipelines: big modules get `lean` by default (one instcombine, less compile
time), and `lean` code behaves exactly as `fast` code on the same packets."""

from __future__ import annotations

import pytest

from morpheus.nf import get
from morpheus.obj import read_object
from morpheus.traffic.generate import generate
from morpheus.userspace.dataplane import UserDataPlane
from morpheus.userspace.jit import LEAN_ABOVE, default_pipeline


def test_big_modules_default_to_lean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MORPHEUS_JIT_PIPELINE", raising=False)
    small = "define i64 @f(i64 %x) {\n" + "  %a = add i64 %x, 1\n" * 10 + "}\n"
    big = "define i64 @f(i64 %x) {\n" + "  %a = add i64 %x, 1\n" * (LEAN_ABOVE + 1) + "}\n"
    assert default_pipeline(small) == "fast"
    assert default_pipeline(big) == "lean"
    monkeypatch.setenv("MORPHEUS_JIT_PIPELINE", "o2")
    assert default_pipeline(big) == "o2"


def test_lean_code_matches_fast_code(monkeypatch: pytest.MonkeyPatch) -> None:
    nf = get("firewall")
    spec = read_object(nf.object_path)
    program = spec.program(nf.program).program
    frames = generate(nf, "high", 300, 11).frames
    with UserDataPlane.create(spec) as fast_plane, UserDataPlane.create(spec) as lean_plane:
        monkeypatch.setenv("MORPHEUS_JIT_PIPELINE", "fast")
        fast = fast_plane.compile(program)
        monkeypatch.setenv("MORPHEUS_JIT_PIPELINE", "lean")
        lean = lean_plane.compile(program)  # other maps, other addresses: no cache hit
        assert not lean.compiled.cached
        results = [fast_plane.run(fast, f) for f in frames]
        assert results == [lean_plane.run(lean, f) for f in frames]
        assert {r.retval for r in results} <= {1, 2, 3, 4}  # the program ran to a verdict
        fast.close()
        lean.close()
