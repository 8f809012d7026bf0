"""Programs the agent's root reaches by tail calls through the object's own prog arrays.

Katran's root program tail-calls the balancer through a prog array its control plane
fills. The agent specializes those callees too, each behind its own guards (so every
version of a callee is equivalent to the original on every packet and map state, and any
mix of old and new root and callee versions is safe), and keeps them in prog arrays of its
own, one per user array ("own arrays"): the user's slots are never written (a user write
racing one of ours would be lost). A specialized root tail-calls the own array while the
user's array's guard is at the version its slots were read at (`passes.tailcalls`), the
user's array once anyone wrote it: the next packet after a user's write runs what the
user put there. Slots holding other programs (another build, another object, the root
itself) are mirrored as they are.

Order of a swap: the callees are loaded (verified) and checked with the root (the check's
world reproduces the prog arrays with the candidate's callees), then written into the own
arrays, then the root is swapped. The own arrays are pinned (a prog array is emptied when
its last user reference goes, and a running root must not lose its callees when the agent
exits) and listed in the agent's state like its other pins.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..ir import Program
from ..kernel import FD, KernelError, LoadedProgram, Map, VerifierError
from ..loader import create_map, load_program_spec
from ..obj import ObjectSpec, ProgramSpec
from ..optimizer import SiteHeat, Target, instrument, sampled_sites, tail_call_arrays
from ..optimizer.plan import PlanOptions
from ..uapi import MapType
from ..world import World, written_maps

PIN_DIR = "chain"  # under the agent's pin directory: one pin per own array


def own_array_name(array: str) -> str:
    """The name the agent's own copy of prog array `array` has in its programs' maps."""
    return f"{array}@mph"


def chain_arrays(target: Target) -> list[str]:
    """The object's prog arrays `target`'s program tail-calls through (none when a tail
    call goes through a map the analysis could not identify: nothing is redirected)."""
    arrays = tail_call_arrays(target.program, target.spec.maps, target.prog.type)
    return sorted(a for a in arrays or () if a in target.spec.maps
                  and target.spec.maps[a].type == MapType.PROG_ARRAY)


def callee_targets(spec: ObjectSpec, root: ProgramSpec) -> dict[str, Target]:
    """The object's programs a prog array slot may hold for `root` (the same type)."""
    return {name: Target.analyze(spec, prog) for name, prog in spec.programs.items()
            if name != root.name and prog.type == root.type}


# array -> slot key -> program id, as the user's prog arrays hold them
Slots = dict[str, dict[bytes, int]]


def read_slots(maps: Mapping[str, Map], arrays: Iterable[str]) -> Slots:
    out: Slots = {}
    for array in arrays:
        held: dict[bytes, int] = {}
        for key, value in maps[array].items():
            assert isinstance(value, bytes)
            held[key] = int.from_bytes(value[:4], "little")
        out[array] = held
    return out


@dataclass
class Identifier:
    """Which of the object's programs a slot holds: the one of the same kernel name whose
    code loads to the same tag (the tag does not depend on map fds). Cached by id."""

    spec: ObjectSpec
    callees: Mapping[str, Target]
    known: dict[int, str | None] = field(default_factory=dict)

    def __call__(self, prog_id: int, maps: Mapping[str, Map], btf_fd: FD | None) -> str | None:
        if prog_id not in self.known:
            self.known[prog_id] = self._identify(prog_id, maps, btf_fd)
        return self.known[prog_id]

    def _identify(self, prog_id: int, maps: Mapping[str, Map], btf_fd: FD | None
                  ) -> str | None:
        try:
            with LoadedProgram.from_id(prog_id) as held:
                name, tag = held.name, held.tag
        except (KernelError, OSError):
            return None
        for callee, target in self.callees.items():
            if callee[:15] != name[:15]:
                continue
            try:
                with load_program_spec(target.prog, maps, btf_fd=btf_fd) as plain:
                    if plain.tag == tag:
                        return callee
            except (KernelError, VerifierError):
                return None
        return None


@dataclass
class CalleeVersion:
    """A specialized callee: loaded, with what it was made from."""

    name: str
    program: LoadedProgram
    source: Program
    result: Any  # its optimizer.Specialization
    maps: dict[str, Map] = field(default_factory=dict)  # its inlined values, renamed
    insns: int = 0
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def close(self) -> None:
        self.program.close()
        for m in self.maps.values():
            m.close()


def fill_own_array(own: Map, held: Mapping[bytes, int], names: Mapping[int, str | None],
                   versions: Mapping[str, CalleeVersion]) -> None:
    """Make `own` mirror the user's slots `held`, with the specialized version in every
    slot holding a program that has one (the rest as the user's slot holds them)."""
    for key, prog_id in held.items():
        name = names.get(prog_id)
        if name is not None and name in versions:
            own.update(key, versions[name].program)
            continue
        with LoadedProgram.from_id(prog_id) as program:
            own.update(key, program)
    for key in [k for k, _ in own.items() if k not in held]:
        with contextlib.suppress(KeyError):
            own.delete(key)


def create_own_array(spec: ObjectSpec, array: str) -> Map:
    source = spec.maps[array]
    made = Map.create(MapType.PROG_ARRAY, source.key_size, source.value_size,
                      source.max_entries, name=f"mph_{array}"[:15])
    made.name = own_array_name(array)
    return made


@dataclass(frozen=True)
class ProfileRequest:
    """An offline-style profile of a callee: the frames replayed through its instrumented
    code in a private world over the live maps (written maps cloned)."""

    target: Target
    frames: Sequence[bytes]
    ingress: int
    options: PlanOptions
    btf: object = None
    namespace: Any = None


def profile_callee(maps: Mapping[str, Map], request: ProfileRequest) -> dict[int, SiteHeat]:
    """The callee's sampled keys on the request's frames (empty without sampled sites or
    frames). Call it in the agent's namespace."""
    from ..offline import profile

    target = request.target
    sites = sampled_sites(target.facts, target.spec.maps, request.options)
    if not sites or not request.frames:
        return {}
    program, extra_specs, layout = instrument(target.program, target.spec, target.prog, sites,
                                              rate=1)
    written = written_maps([target.program], target.spec.maps, target.prog.type)
    source = {n: m for n, m in maps.items() if n in target.spec.maps}
    with World.build(source, written, prog_arrays=False) as world, \
            contextlib.ExitStack() as stack:
        extra = {name: stack.enter_context(create_map(mspec))
                 for name, mspec in extra_specs.items()}
        for name, m in extra.items():
            m.name = name
        heat = profile(target.prog, request.btf, world.maps, list(request.frames), program,
                       extra, layout, ingress=request.ingress, namespace=request.namespace)
    return heat


@dataclass
class ChainRead:
    """What the user's prog arrays held when a snapshot was taken, and for each object
    program among them (the active callees) its heat and map snapshots."""

    slots: Slots = field(default_factory=dict)
    names: dict[int, str | None] = field(default_factory=dict)  # program id -> callee
    heat: dict[str, Mapping[int, SiteHeat]] = field(default_factory=dict)
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def active(self) -> list[str]:
        return sorted({n for n in self.names.values() if n is not None})

    def holds(self, array: str, callees: Iterable[str]) -> bool:
        """Whether a slot of `array` holds one of `callees`."""
        wanted = set(callees)
        return any(self.names.get(pid) in wanted for pid in self.slots.get(array, {}).values())

    def fingerprint(self) -> tuple[object, ...]:
        return tuple((a, tuple(sorted(held.items()))) for a, held in sorted(self.slots.items()))


def with_map_names(program: Program, renames: Mapping[str, str]) -> Program:
    """`program` with its map references renamed (a callee's inlined-value maps get names
    of their own, so a root and its callees can run against one set of maps)."""
    return Program(program.name, tuple(
        i.with_reference(renames[i.reference]) if i.is_map_load and i.reference in renames
        else i for i in program.insns))


__all__ = ["PIN_DIR", "CalleeVersion", "ChainRead", "Identifier", "ProfileRequest", "Slots",
           "callee_targets", "chain_arrays", "create_own_array", "fill_own_array",
           "own_array_name", "profile_callee", "read_slots", "with_map_names"]
