"""The user-space agent's pre-swap check: the candidate against the unspecialized program,
both JIT-compiled, on the same frames from the same state.

What runs after the swap is the JIT's code, so that is what is checked (the kernel's checker
would judge the bytecode but not the lifter and LLVM). Two check planes live next to the
live one. Maps the data plane only reads are shared with the live plane (their contents are
what the candidate inlined; the caller keeps control-plane writes out while the check runs);
maps the programs write (and the guard versions) are copied from the live plane, between
batches, into each check plane before every check. The sampling maps are each plane's own
and not compared: sampling is bookkeeping, not behaviour. Both planes get the same clock
and random seed, so nondeterministic helpers return the same values on both sides and
nothing needs masking. Compared: verdict, output bytes, redirect target of every frame,
then every entry of every map either program writes.

The packets and control-plane writes are the kernel agent's check plan
(`runtime.check.candidate_plan`: sampled and --check-trace frames, near misses, inlined
keys, edge cases, then the writes that change guarded inlined entries, made in both check
planes as the agent's API makes them). The maps those writes may touch (every guarded map)
are among `CheckSetup.written`: copied per check, never the live plane's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..ir import Program
from ..obj import MapSpec, ObjectSpec
from ..world.check import Write, apply_write
from .dataplane import MAX_FRAME, FrameResult, UserDataPlane, UserProgram
from .live import copy_map
from .maps import UserMap

FIXED_TIME = 1_000_000_000_000
FIXED_SEED = 0x9E3779B97F4A7C15


@dataclass
class Mismatch:
    what: str
    base: object
    candidate: object

    def __str__(self) -> str:
        return f"{self.what}: {self.base!r} vs {self.candidate!r}"


@dataclass
class EquivalenceResult:
    packets: int
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def equivalent(self) -> bool:
        return not self.mismatches

    def describe(self, limit: int = 3) -> str:
        head = f"{len(self.mismatches)} differences on {self.packets} packets"
        return "; ".join([head, *(str(m) for m in self.mismatches[:limit])])


class _CheckPlane:
    """A plane whose read-only maps are the live plane's and whose written maps are its own."""

    def __init__(self, spec: ObjectSpec, live: UserDataPlane, own: Sequence[str],
                 extra: Mapping[str, MapSpec]) -> None:
        self.plane = UserDataPlane.create(spec, cpu=live.env.cpu, extra_maps=extra)
        self.shared: set[str] = set()
        for name, m in live.maps.items():
            if name in own:
                continue
            mine = self.plane.maps.get(name)
            if mine is not None:
                mine.close()
            self.plane.maps[name] = m
            self.shared.add(name)

    def share(self, name: str, m: UserMap) -> None:
        self.plane.maps[name] = m
        self.shared.add(name)

    def refresh(self, live: UserDataPlane, own: Sequence[str]) -> None:
        for name in own:
            if name in live.maps and name in self.plane.maps:
                copy_map(live.maps[name], self.plane.maps[name])
        self.plane.env.fake_time = FIXED_TIME
        self.plane.env.prandom = FIXED_SEED

    def close(self) -> None:
        for name in self.shared:
            self.plane.maps.pop(name, None)
        self.plane.close()


@dataclass
class CheckSetup:
    """What the checker needs from the agent: the object, the live plane, the maps the
    programs write (compared, and copied for every check), the sampling maps (each plane's
    own, not compared), how to pause the data plane while copying, and what to hold while
    the check reads the shared maps (the agent's lock, which control-plane writes take)."""

    spec: ObjectSpec
    live: UserDataPlane
    written: tuple[str, ...]
    private: Mapping[str, MapSpec]
    paused: Callable[[], Any]
    hold: Any


class Equivalence:
    """Compiles the base program once, a candidate per check, and compares them."""

    def __init__(self, setup: CheckSetup, base: Program) -> None:
        self.setup = setup
        own = (*setup.written, *setup.private)
        self.own = tuple(n for n in own if n in setup.live.maps or n in setup.private)
        self.base_plane = _CheckPlane(setup.spec, setup.live, self.own, setup.private)
        self.cand_plane: _CheckPlane | None = None
        try:
            self.base = self.base_plane.plane.compile(base, name=f"{base.name}_base")
            self.cand_plane = _CheckPlane(setup.spec, setup.live, self.own, setup.private)
        except BaseException:
            self.close()
            raise

    def check(self, candidate: Program, packets: Sequence[tuple[bytes, int]],
              writes: Sequence[Write] = ()) -> EquivalenceResult:
        """Run `packets` ((frame, ingress ifindex) pairs) through base and candidate from the
        live state of this moment, making each of `writes` in both after its packet."""
        assert self.cand_plane is not None
        cand = self.cand_plane
        for w in writes:
            if w.map not in self.setup.written:
                raise ValueError(f"the check plan writes map {w.map!r}, which the check "
                                 "planes share with the live one: list it in "
                                 "CheckSetup.written")
        # Maps the candidate references that are not the object's (its inlined values):
        # read-only, shared like the other read-only maps.
        for ref in {i.reference for i in candidate.insns if i.is_map_load}:
            if ref is None or ref not in self.setup.live.maps:
                continue
            if ref not in cand.plane.maps or ref in cand.shared:
                cand.share(ref, self.setup.live.maps[ref])  # the newest version of it
        program: UserProgram = cand.plane.compile(candidate, name=f"{candidate.name}_check")
        try:
            with self.setup.hold:
                return self._compare(program, packets, writes)
        finally:
            program.close()
            cand.plane.programs.remove(program)

    def _compare(self, program: UserProgram, packets: Sequence[tuple[bytes, int]],
                 writes: Sequence[Write]) -> EquivalenceResult:
        cand = self.cand_plane
        assert cand is not None
        with self.setup.paused():
            self.base_plane.refresh(self.setup.live, self.own)
            cand.refresh(self.setup.live, self.own)
        after: dict[int, list[Write]] = {}
        for w in writes:
            after.setdefault(w.after, []).append(w)
        result = EquivalenceResult(0)
        for n, (frame, ingress) in enumerate(packets):
            if len(frame) <= MAX_FRAME:  # longer ones never reach a program in user space
                result.packets += 1
                a = self.base_plane.plane.run(self.base, frame, ingress)
                b = cand.plane.run(program, frame, ingress)
                if _outcome(a) != _outcome(b):
                    result.mismatches.append(Mismatch(f"packet {n}", _outcome(a),
                                                      _outcome(b)))
            for w in after.get(n, ()):
                apply_write(self.base_plane.plane.maps, w)
                apply_write(cand.plane.maps, w)
        for name in self.setup.written:
            ma, mb = self.base_plane.plane.maps.get(name), cand.plane.maps.get(name)
            if ma is None or mb is None:
                continue
            ca, cb = ma.contents(), mb.contents()
            for key in sorted(set(ca) | set(cb)):
                if ca.get(key) != cb.get(key):
                    result.mismatches.append(Mismatch(f"map {name} key {key.hex()}",
                                                      ca.get(key), cb.get(key)))
        return result

    def close(self) -> None:
        for p in (self.base_plane, self.cand_plane):
            if p is not None:
                p.close()


def _outcome(r: FrameResult) -> tuple[object, ...]:
    return (r.retval, r.data.hex(), r.redirect_ifindex, r.redirect_map, r.redirect_key)
