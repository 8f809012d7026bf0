"""A subject (an object file, one program in it, optionally replacement code) and the
environment it runs in: its maps, configured by an NF's default configuration or created
empty, inside a network namespace whose interfaces the packets arrive on.

This is where every run on a copy of the world starts (benchmarks, `optimize`'s profile
and check, `morpheus check --nf`); `World` then shares or clones those maps per program.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ir import Program
from ..kernel import FD, Map, xdp_ctx
from ..kernel.netns import NetNamespace
from ..loader import (
    Collection,
    create_map,
    load_collection,
    load_program_spec,
    read_for_kernel,
)
from ..nf import NetworkFunction
from ..nf.env import NFEnv
from ..obj import MapSpec, ObjectSpec, ProgramSpec
from ..traffic.generate import Trace


@dataclass
class Subject:
    """A program to measure: an object file, the program in it, optionally other code."""

    label: str
    object_path: Path
    program_name: str | None = None
    program: Program | None = None  # replaces the object's instructions (a specialization)
    spec: ObjectSpec | None = None
    # Maps the replacement program needs besides the object's (e.g. inlined values).
    extra_maps: dict[str, MapSpec] = field(default_factory=dict)

    def load_spec(self) -> ObjectSpec:
        if self.spec is None:
            self.spec = read_for_kernel(self.object_path)
        return self.spec

    def program_spec(self) -> ProgramSpec:
        return self.load_spec().program(self.program_name)


@dataclass
class Environment:
    """Maps of one subject, configured, in a namespace: an NFEnv or a bare object."""

    namespace: NetNamespace
    maps: dict[str, Map]
    spec: ObjectSpec
    stack: ExitStack
    btf_fd: FD | None
    env: NFEnv | None = None

    def run_one(self, program: Any, frame: bytes, ingress: int) -> int:
        with self.namespace.entered():
            ctx = xdp_ctx(ingress, len(frame)) if ingress else None
            return program.test_run(frame, ctx=ctx).retval

    def close(self) -> None:
        self.stack.close()


def open_environment(subject: Subject, nf: NetworkFunction | None,
                     config: Any = None) -> Environment:
    """Fresh maps for `subject`, configured by `nf` with `config` (default: the NF's default
    configuration) if an NF is given."""
    spec = subject.load_spec()
    stack = ExitStack()
    try:
        if nf is not None:
            env = stack.enter_context(NFEnv.start(nf, config=config,
                                                  object_path=subject.object_path))
            environment = Environment(env.namespace, dict(env.collection.maps), spec, stack,
                                      env.collection.btf_fd, env)
        else:
            namespace = NetNamespace.create("morpheus-bench")
            stack.callback(namespace.delete)
            with namespace.entered():
                coll: Collection = stack.enter_context(load_collection(spec, programs=[]))
            environment = Environment(namespace, dict(coll.maps), spec, stack, coll.btf_fd)
        add_extra_maps(environment, subject)
        return environment
    except BaseException:
        stack.close()
        raise


def add_extra_maps(environment: Environment, subject: Subject) -> None:
    """Create the maps a subject's replacement program needs, owned by the environment."""
    for name, mspec in subject.extra_maps.items():
        if name in environment.maps:
            continue
        m = create_map(mspec, object_name=environment.spec.name)
        environment.stack.callback(m.close)
        environment.maps[name] = m


def maps_compatible(a: Subject, b: Subject) -> bool:
    """Whether B's program can run against A's maps: every map B uses exists in A with the
    same type, sizes and flags."""
    a_maps = a.load_spec().maps
    b_spec = b.load_spec()
    program = b.program or b.program_spec().program
    used = {i.reference for i in program.insns if i.is_map_load} - set(b.extra_maps)
    for name in used:
        if name not in b_spec.maps:
            return False
        mine, theirs = b_spec.maps[name], a_maps.get(str(name))
        if theirs is None:
            return False
        if (mine.type, mine.key_size, mine.value_size, mine.max_entries, mine.flags,
                mine.inner) != (theirs.type, theirs.key_size, theirs.value_size,
                                theirs.max_entries, theirs.flags, theirs.inner):
            return False
    return True


def warm_up(environment: Environment, subject: Subject, trace: Trace) -> None:
    """Process the trace's warm-up frames (e.g. a switch learning its stations) one by one."""
    if not trace.warmup:
        return
    with environment.namespace.entered():
        prog = load_program_spec(subject.program_spec(), environment.maps,
                                 program=subject.program, btf_fd=environment.btf_fd)
    try:
        for frame, ingress in trace.warmup:
            environment.run_one(prog, frame, ingress)
    finally:
        prog.close()
