"""`morpheus check A.o B.o`: two builds of a program, one map state, one trace.

The map state is an NF's default configuration (loaded from A, in a namespace with the
NF's interfaces) or a user's maps pinned by `morpheus load --pin` (live: snapshotted once,
never written). B runs against the same maps by name; maps only B has are created empty
from B's spec, and B's global data is B's own where its initial contents differ from A's
(constants compiled into the build, not control-plane state).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from ..kernel import FD, Map, load_btf
from ..loader import read_for_kernel
from ..obj import MapSpec, ObjectSpec
from .check import CheckRequest, CheckResult, Side, check


class CheckError(ValueError):
    """The two objects cannot be checked against each other (the message says why)."""


@dataclass(frozen=True)
class ObjectCheck:
    """What to compare: two objects, which program, the packets (frame, ingress)."""

    a: Path
    b: Path
    packets: Sequence[tuple[bytes, int]]
    program: str | None = None


def pick_program(spec: ObjectSpec, wanted: str | None, fallback: str | None = None) -> str:
    if wanted is not None:
        if wanted not in spec.programs:
            raise CheckError(f"{spec.name}: no program {wanted!r} (it has "
                             f"{', '.join(spec.programs)})")
        return wanted
    if fallback is not None and fallback in spec.programs:
        return fallback
    if len(spec.programs) == 1:
        return next(iter(spec.programs))
    raise CheckError(f"{spec.name} holds programs {', '.join(spec.programs)}: name one with "
                     "--program")


def _compatible(name: str, mine: MapSpec, theirs: Map) -> str | None:
    got = (theirs.type, theirs.key_size, theirs.value_size, theirs.max_entries)
    want = (mine.type, mine.key_size, mine.value_size, mine.max_entries)
    if got != want:
        return (f"map {name!r}: B wants {mine.type.name} key {mine.key_size} value "
                f"{mine.value_size} x{mine.max_entries}, the state has {theirs.type.name} "
                f"key {theirs.key_size} value {theirs.value_size} x{theirs.max_entries}")
    return None


def check_objects(request: ObjectCheck, source: Mapping[str, Map], *,
                  snapshot: bool, fallback_program: str | None = None) -> CheckResult:
    """Check B against A from the state of `source` (A's maps by name). Call it in the
    namespace where the packets' ingress interfaces exist."""
    a_spec, b_spec = read_for_kernel(request.a), read_for_kernel(request.b)
    name = pick_program(a_spec, request.program, fallback_program)
    if name not in b_spec.programs:
        raise CheckError(f"{request.b}: no program {name!r} to compare with A's")
    a_prog, b_prog = a_spec.programs[name], b_spec.programs[name]
    if a_prog.type != b_prog.type:
        raise CheckError(f"program {name!r} is of type {a_prog.type} in A, {b_prog.type} in B")
    fresh: dict[str, MapSpec] = {}
    for map_name in sorted(b_prog.map_names):
        mine = b_spec.maps[map_name]
        theirs = source.get(map_name)
        if theirs is None:
            fresh[map_name] = mine
            continue
        problem = _compatible(map_name, mine, theirs)
        if problem:
            raise CheckError(problem)
        a_map = a_spec.maps.get(map_name)
        if mine.is_global_data and a_map is not None and a_map.data != mine.data:
            fresh[map_name] = mine
    with ExitStack() as stack:
        a_btf = _btf(a_spec, stack)
        b_btf = _btf(b_spec, stack)
        own_data = {n for n in fresh if n in source}
        # Global data whose initial contents differ: each build gets its own, made from its
        # spec, instead of the source's.
        base = Side("A", a_prog, spec=a_spec, btf_fd=a_btf,
                    fresh_maps={n: a_spec.maps[n] for n in own_data})
        source = {k: v for k, v in source.items() if k not in own_data}
        candidate = Side("B", b_prog, fresh_maps=fresh, spec=b_spec, btf_fd=b_btf)
        return check(CheckRequest(source, base, candidate, request.packets, snapshot=snapshot))


def _btf(spec: ObjectSpec, stack: ExitStack) -> FD | None:
    if spec.btf is None:
        return None
    fd = load_btf(spec.btf.blob(), what=f"BTF of {spec.name}")
    stack.callback(fd.close)
    return fd
