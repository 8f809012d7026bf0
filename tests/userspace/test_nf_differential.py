"""The four NFs in user space against the kernel, original and specialized: every packet of
a generated trace gets the same verdict and output bytes, and the maps end up the same
(timestamps and other time-derived words excepted, see morpheus.userspace.differential)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from morpheus.ir import Program
from morpheus.kernel.cpu import pinned_cpu
from morpheus.loader import create_map, load_program_spec
from morpheus.nf import NAMES, get
from morpheus.nf.env import NFEnv
from morpheus.obj import MapSpec
from morpheus.offline import optimize_program
from morpheus.traffic.generate import generate
from morpheus.userspace.dataplane import UserDataPlane, UserProgram
from morpheus.userspace.differential import compare_runs, kernel_runner, user_side
from morpheus.world.environment import Subject

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def _pinned_cpu() -> Iterator[None]:
    with pinned_cpu(0):
        yield


def _specialized(nf_name: str, trace) -> tuple[Program, dict[str, MapSpec]]:  # type: ignore[no-untyped-def]
    nf = get(nf_name)
    report = optimize_program(Subject("original", nf.object_path, nf.program), trace, nf=nf,
                              bench=False)
    assert report["equivalent"], report.get("error") or report.get("mismatch")
    result = report["specialization"]
    assert any(s["specialized"] for s in report["sites"]), report["sites"]
    return result.program, dict(result.extra_maps)


def _check(env: NFEnv, program: Program | None, extra: dict[str, MapSpec], trace) -> None:  # type: ignore[no-untyped-def]
    """From the environment's current state, kernel and user space on every packet."""
    maps = dict(env.collection.maps)
    with env.entered():
        for name, mspec in extra.items():
            m = create_map(mspec, object_name=env.spec.name)
            env._stack.callback(m.close)
            maps[name] = m
        pspec = env.spec.program(env.nf.program)
        kernel_prog = load_program_spec(pspec, maps, program=program,
                                        btf_fd=env.collection.btf_fd)
    try:
        def setup(plane: UserDataPlane) -> UserProgram:
            with env.entered():
                return plane.load(pspec, maps, program=program, btf_fd=env.collection.btf_fd)

        user = user_side(env.spec, maps, setup, extra_maps=extra)
        try:
            frames = list(zip(trace.frames, trace.ingress, strict=True))
            report = compare_runs(frames, kernel_runner(kernel_prog, env.namespace), user,
                                  maps)
        finally:
            user.close()
    finally:
        kernel_prog.close()
    assert report.equal, report.summary()
    assert report.nondeterministic_packets == 0


@pytest.mark.parametrize("nf_name", NAMES)
def test_nf_original_and_specialized_match_the_kernel(nf_name: str) -> None:
    trace = generate(get(nf_name), "high", 200, 3)
    program, extra = _specialized(nf_name, trace)
    with NFEnv.start(get(nf_name)) as env:
        for frame, port in trace.warmup:
            env.run(frame, port)
        _check(env, None, {}, trace)  # original, from the warmed-up state
        _check(env, program, extra, trace)  # specialized, from the state the original left
