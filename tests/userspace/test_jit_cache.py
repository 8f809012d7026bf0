"""The JIT's code cache: compiling a program equal to one still loaded on the same data
plane reuses its native code, which behaves exactly as a fresh compile of the same program,
and stays loaded until its last user closes it."""

from __future__ import annotations

from morpheus.nf import get
from morpheus.obj import read_object
from morpheus.traffic.generate import generate
from morpheus.userspace.dataplane import UserDataPlane
from morpheus.userspace.jit import engine


def test_equal_program_reuses_code_that_matches_a_fresh_compile() -> None:
    nf = get("router")
    spec = read_object(nf.object_path)
    program = spec.program(nf.program).program
    frames = generate(nf, "high", 150, 7).frames
    with UserDataPlane.create(spec) as plane, UserDataPlane.create(spec) as other:
        first = plane.compile(program)
        again = plane.compile(program)
        assert not first.compiled.cached and again.compiled.cached
        assert again.entry_address == first.entry_address
        assert again.jit_cpu_ms < first.jit_cpu_ms
        fresh = other.compile(program)  # other maps, other addresses: compiled anew
        assert not fresh.compiled.cached
        assert fresh.entry_address != first.entry_address
        results = [plane.run(again, f) for f in frames]
        assert results == [other.run(fresh, f) for f in frames]
        assert {r.retval for r in results} - {0}  # the program really ran

        key = first.compiled.key
        first.close()
        assert key in engine().cache  # `again` still uses the code
        plane.run(again, frames[0])  # and it still runs
        again.close()
        assert key not in engine().cache
        # After the last user closed it, the same program compiles afresh.
        third = plane.compile(program)
        assert not third.compiled.cached
