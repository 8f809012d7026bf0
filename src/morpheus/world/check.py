"""The equivalence checker: two programs, the same packets, the same starting world.

Each program gets its own world over one source state (written maps cloned, read-only maps
shared, maps of maps and prog arrays reproduced), both harnessed (`world.harness`), both
pinned to the same CPU. Packet by packet, alternating between the two programs, compared:

- the verdict, the output length and bytes;
- for redirect verdicts, the redirect target: helper, ifindex or map and key, flags;
- every key and value of every map either program may write (per-CPU maps per CPU), at
  doubling checkpoints (after packets 1, 2, 4, ... and at the end) while the written maps
  are small enough to read often, otherwise at the end only.

Nothing is ignored: the nondeterministic helpers return the same values in both programs,
so a timestamp or random number stored in a map compares like any other value.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from ..ir import Program
from ..kernel import FD, LoadedProgram, Map
from ..kernel.cpu import pinned_cpu
from ..loader import load_program_spec
from ..obj import MapSpec, ObjectSpec, ProgramSpec
from ..passes.inline import GUARD_MAP
from .harness import Clocks, harness
from .run import Outcome, Runner, add_harness_maps
from .state import World, table_contents, written_maps

# Read the written maps after every doubling of the packet count only while they hold at
# most this many entries in total (reading them costs ~1 us per entry).
CHECKPOINT_ENTRIES = 1 << 16
EVERY_PACKET = 64
EVERY_PACKET_ENTRIES = 4096
ISOLATED_ENTRIES = 4096  # most entries the written maps may hold for `isolated` packets


@dataclass
class Side:
    """One of the two programs: its spec, replacement instructions, maps of its own."""

    label: str
    prog: ProgramSpec
    program: Program | None = None  # default: the spec's instructions
    fresh_maps: Mapping[str, MapSpec] = field(default_factory=dict)  # created empty
    btf_fd: FD | None = None
    spec: ObjectSpec | None = None  # where tail-called programs are found by name
    # Instructions to run, by program name, where a prog array slot holds the object's
    # program of that name (the specialized callees of a chain; default: the object's).
    tail_programs: Mapping[str, Program] = field(default_factory=dict)

    @property
    def instructions(self) -> Program:
        return self.program or self.prog.program


@dataclass(frozen=True)
class Write:
    """A control-plane write made between two packets of the check (after packet `after`),
    in both programs' worlds, as the project's API makes it: the entry changes (or goes,
    with `value` None) and, where a world has the guard map, the map's version slot at byte
    `guard[1]` of map `guard[0]` moves, as it does before any write through the agent.
    With `inner`, the entry is one of the inner map that map of maps `map` holds at key
    `inner` (each world writes its own clone of it)."""

    after: int
    map: str
    key: bytes
    value: bytes | None
    guard: tuple[str, int] | None = None
    inner: bytes | None = None


@dataclass
class CheckRequest:
    """Run `base` and `candidate` on `packets` ((frame, ingress ifindex) pairs) from the
    state of `source`; compare the maps named in `compare` (default: every map of the base's
    object that either program may write)."""

    source: Mapping[str, Map]
    base: Side
    candidate: Side
    packets: Sequence[tuple[bytes, int]]
    written: Iterable[str] = ()  # maps known to be written, on top of the analysis
    compare: Collection[str] | None = None
    cpu: int | None = None
    # The source changes while we look (live maps under traffic): copy the written maps
    # once, and start both programs from that copy, or a counter bumped by live traffic
    # between the two copies would read as a difference.
    snapshot: bool = False
    writes: Sequence[Write] = ()  # control-plane writes between packets
    # Packets [start, stop) each run from the state before packet `start` (after each, the
    # written maps are compared and both worlds put back): a data plane that learns a key
    # (and moves a guard) on one of them keeps its inlined code reachable for the others.
    isolated: tuple[int, int] | None = None


@dataclass
class CheckResult:
    """The outcome of a check. `first` is (packet index, what differed)."""

    packets: int
    mismatches: list[int] = field(default_factory=list)  # packets whose outcome differed
    first: tuple[int, str] | None = None
    tables_differing: list[str] = field(default_factory=list)
    redirects_differing: int = 0
    first_table: tuple[int, str] | None = None  # first checkpoint where tables differed
    notes: list[str] = field(default_factory=list)
    base_verdicts: list[int] = field(default_factory=list)  # the base program's, per packet

    def verdict_counts(self) -> dict[int, int]:
        """How many packets got each verdict from the base program."""
        out: dict[int, int] = {}
        for v in self.base_verdicts:
            out[v] = out.get(v, 0) + 1
        return dict(sorted(out.items()))

    @property
    def equivalent(self) -> bool:
        return not self.mismatches and not self.tables_differing

    @property
    def packets_to_catch(self) -> int | None:
        """How many packets it took to see a difference (None: equivalent)."""
        if self.equivalent:
            return None
        found = [part[0] + 1 for part in (self.first, self.first_table) if part is not None]
        return min(found) if found else None

    def first_mismatch(self) -> dict[str, Any] | None:
        what = self.first or self.first_table
        return {"index": what[0], "what": what[1]} if what is not None else None

    def to_json(self) -> dict[str, Any]:
        return {"equivalent": self.equivalent, "packets_checked": self.packets,
                "mismatches": len(self.mismatches), "first_mismatch": self.first_mismatch(),
                "tables_differing": list(self.tables_differing),
                "redirects_differing": self.redirects_differing}

    def describe(self) -> str:
        if self.equivalent:
            return f"equivalent on {self.packets} packets"
        parts = []
        if self.mismatches and self.first is not None:
            parts.append(f"{len(self.mismatches)} of {self.packets} packets differ, first "
                         f"#{self.first[0]}: {self.first[1]}")
        if self.tables_differing:
            detail = f" ({self.first_table[1]})" if self.first_table else ""
            parts.append("map contents differ afterwards: " + ", ".join(self.tables_differing)
                         + detail)
        return "; ".join(parts)


def check(request: CheckRequest) -> CheckResult:
    """Run both programs on the request's packets and compare everything they did.

    Call it in the network namespace where the packets' ingress interfaces exist."""
    base, cand = request.base, request.candidate
    all_specs = {**(base.spec.maps if base.spec else {}), **base.fresh_maps}
    cand_specs = {**all_specs, **(cand.spec.maps if cand.spec else {}), **cand.fresh_maps}
    written = set(request.written)
    written |= written_maps([base.instructions], all_specs, base.prog.type)
    written |= written_maps([cand.instructions], cand_specs, cand.prog.type)
    written |= _tail_call_writes(request, written)
    # Written in both worlds: never shared (inner maps: cloned inside a new outer map).
    written |= {w.map if w.inner is None else f"{w.map}[inner]" for w in request.writes}
    written |= {w.guard[0] for w in request.writes if w.guard is not None}
    writes_after: dict[int, list[Write]] = {}
    for w in request.writes:
        writes_after.setdefault(w.after, []).append(w)
    object_maps = set(base.spec.maps) if base.spec else set(request.source)
    compare = sorted(request.compare if request.compare is not None else {
        _outer(n) for n in written if _outer(n) in object_maps})
    clocks = Clocks.now()
    result = CheckResult(len(request.packets))
    with ExitStack() as stack, pinned_cpu(request.cpu) as cpu:
        source = request.source
        if request.snapshot:
            source = stack.enter_context(World.build(source, written, prog_arrays=False)).maps
        worlds: list[World] = []
        runners: list[Runner] = []
        for side in (base, cand):
            world = stack.enter_context(World.build(
                source, written, fresh=side.fresh_maps,
                tail_calls=_tail_call_loader(side), object_name=_object_name(side)))
            worlds.append(world)
            runners.append(stack.enter_context(Runner(world, side.prog, side.program,
                                                      btf_fd=side.btf_fd, clocks=clocks,
                                                      cpu=cpu)))
            result.notes.extend(world.notes)
        checkpoints = _checkpoints(len(request.packets), [worlds[0].maps[n] for n in compare
                                                           if n in worlds[0].maps])
        isolated = _Isolation(request.isolated, compare, result, clocks)
        for index, (frame, ingress) in enumerate(request.packets):
            isolated.before(index, worlds)
            a = runners[0].run(index, frame, ingress)
            b = runners[1].run(index, frame, ingress)
            result.base_verdicts.append(a.verdict)
            what = _difference(a, b)
            if what is not None:
                result.mismatches.append(index)
                if a.redirect != b.redirect and a.verdict == b.verdict:
                    result.redirects_differing += 1
                if result.first is None:
                    result.first = (index, what)
            isolated.after(index, worlds)
            for w in writes_after.get(index, ()):
                for world in worlds:
                    apply_write(world.maps, w, world.inner)
            if index in checkpoints and result.first_table is None:
                differing = _tables_differing(worlds, compare, clocks, index + 1)
                if differing:
                    result.first_table = (index, differing[0][1])
        final = _tables_differing(worlds, compare, clocks, len(request.packets))
        result.tables_differing = sorted({name for name, _ in final} | isolated.differing)
        if final and result.first_table is None:
            result.first_table = (len(request.packets) - 1, final[0][1])
    return result


@dataclass
class _Isolation:
    """`CheckRequest.isolated` at work: both worlds' private maps saved before the first
    packet of the range and put back after each packet that moved a guard (in a world with
    a guard map; after every packet where neither has one). What the packet left is
    compared first, so no effect of an isolated packet goes unchecked. Skipped, with a
    note, where the maps hold more than ISOLATED_ENTRIES entries (reading them after every
    packet would cost more than the check)."""

    span: tuple[int, int] | None
    compare: Sequence[str]
    result: CheckResult
    clocks: Clocks
    saved: list[dict[str, Any]] = field(default_factory=list)
    differing: set[str] = field(default_factory=set)  # maps that differed after a packet

    def before(self, index: int, worlds: list[World]) -> None:
        if self.span is None or index != self.span[0] or self.span[1] <= self.span[0]:
            return
        self.saved = [world.saved() for world in worlds]
        entries = sum(_size(t) for t in self.saved[0].values())
        if entries > ISOLATED_ENTRIES:
            self.result.notes.append(
                f"packets {self.span[0]}-{self.span[1] - 1} not isolated: the written maps "
                f"hold {entries} entries (more than {ISOLATED_ENTRIES})")
            self.saved = []

    def after(self, index: int, worlds: list[World]) -> None:
        if not self.saved or self.span is None or not self.span[0] <= index < self.span[1]:
            return
        guards = [(w.maps[GUARD_MAP], s[GUARD_MAP]) for w, s in zip(worlds, self.saved,
                                                                    strict=True)
                  if GUARD_MAP in w.maps and GUARD_MAP in s]
        if guards and all(table_contents(m) == saved for m, saved in guards):
            return  # the inlined code is still reachable: nothing to undo
        left = [world.restore(saved) for world, saved in zip(worlds, self.saved, strict=True)]
        for name in self.compare:
            if name in left[0] and name in left[1] and left[0][name] != left[1][name]:
                self.differing.add(name)
                if self.result.first_table is None:
                    what = _describe_table_difference(name, left[0][name], left[1][name],
                                                      self.clocks, index + 1)
                    self.result.first_table = (index, what)


def _size(table: Any) -> int:
    return sum(_size(v) if isinstance(v, dict) else 1 for v in table.values())


def apply_write(maps: Mapping[str, Any], write: Write,
                inner: Mapping[str, Mapping[bytes, Any]] | None = None) -> None:
    """Make `write` in a world of `maps` (kernel maps, or the user-space backend's: anything
    with `lookup`, `update` and `delete` by key): the guard's version first, as the agent's
    API moves it, then the entry. A write to an inner map of a map of maps (`write.inner`,
    its outer key) goes to `inner[outer name][outer key]`."""
    if write.guard is not None and write.guard[0] in maps:
        guard = maps[write.guard[0]]
        raw = guard.lookup(0)
        assert isinstance(raw, bytes)
        off = write.guard[1]
        version = int.from_bytes(raw[off:off + 8], "little") + 2  # even: no write in flight
        guard.update(0, raw[:off] + version.to_bytes(8, "little") + raw[off + 8:])
    if write.inner is None:
        m = maps[write.map]
    elif inner is None:
        raise ValueError(f"a write to an inner map of {write.map!r} needs the world's inner maps")
    else:
        m = inner[write.map][write.inner]
    if write.value is None:
        m.delete(write.key)
    else:
        m.update(write.key, write.value)


def _outer(name: str) -> str:
    return name.removesuffix("[inner]")


def _object_name(side: Side) -> str:
    return side.spec.name if side.spec is not None else ""


def _tail_call_writes(request: CheckRequest, written: set[str]) -> set[str]:
    """Maps the programs held in prog arrays may write (they run in the world too)."""
    from ..uapi import MapType

    out: set[str] = set()
    for side in (request.base, request.candidate):
        if side.spec is None:
            continue
        holders = [n for n, m in request.source.items() if m.type == MapType.PROG_ARRAY]
        if not holders:
            continue
        others = [p.program for name, p in side.spec.programs.items()
                  if name != side.prog.name]
        out |= written_maps(others, side.spec.maps, side.prog.type)
    return out - written


def _tail_call_loader(side: Side):  # type: ignore[no-untyped-def]
    """Load the program a prog array slot held, harnessed, against the world: the object's
    program of that name, if it is the very program the slot holds (same kernel tag, loaded
    against the world's maps: the tag does not depend on map fds). A slot holding another
    build under the same name runs as loaded instead (World notes it)."""
    if side.spec is None:
        return None
    spec = side.spec

    def load(held: LoadedProgram, world: World) -> LoadedProgram | None:
        for name, prog in spec.programs.items():
            if name[:15] != held.name[:15] or prog.type != side.prog.type:
                continue
            with load_program_spec(prog, world.maps, program=prog.program,
                                   btf_fd=side.btf_fd) as plain:
                if plain.tag != held.tag:
                    return None
            add_harness_maps(world)
            program = side.instructions if name == side.prog.name else \
                side.tail_programs.get(name, prog.program)
            return load_program_spec(prog, world.maps,
                                     program=harness(program, prog.type).program,
                                     btf_fd=side.btf_fd)
        return None
    return load


def _checkpoints(packets: int, maps: list[Map]) -> frozenset[int]:
    """Packet indexes after which the written maps are compared: after every one of the
    first EVERY_PACKET packets while the maps are small (the first differing packet is then
    known exactly), after every doubling of the count up to CHECKPOINT_ENTRIES entries."""
    entries = sum(m.max_entries for m in maps)
    if entries > CHECKPOINT_ENTRIES:
        return frozenset()
    out = set(range(min(packets, EVERY_PACKET))) if entries <= EVERY_PACKET_ENTRIES else set()
    n = 1
    while n <= packets:
        out.add(n - 1)
        n *= 2
    return frozenset(out)


def _difference(a: Outcome, b: Outcome) -> str | None:
    if a.verdict != b.verdict:
        return f"verdict {a.verdict} vs {b.verdict}"
    if len(a.data) != len(b.data):
        return f"output length {len(a.data)} vs {len(b.data)}"
    if a.data != b.data:
        at = next(i for i, (x, y) in enumerate(zip(a.data, b.data, strict=True)) if x != y)
        return f"output bytes differ from offset {at} ({a.data[at]:#04x} vs {b.data[at]:#04x})"
    if a.redirect != b.redirect and not (a.redirect and b.redirect
                                         and a.redirect.same_target(b.redirect)):
        left = a.redirect.describe() if a.redirect else "no redirect helper"
        right = b.redirect.describe() if b.redirect else "no redirect helper"
        return f"redirect {left} vs {right}"
    return None


def _tables_differing(worlds: list[World], names: Sequence[str], clocks: Clocks,
                      packets: int) -> list[tuple[str, str]]:
    out = []
    for name in names:
        if name not in worlds[0].maps or name not in worlds[1].maps:
            continue
        a, b = worlds[0].table(name), worlds[1].table(name)
        if a != b:
            out.append((name, _describe_table_difference(name, a, b, clocks, packets)))
    return out


def _describe_table_difference(name: str, a: dict[bytes, Any], b: dict[bytes, Any],
                               clocks: Clocks, packets: int) -> str:
    for key in sorted(set(a) | set(b)):
        if key not in b:
            return f"map {name}: key {key.hex()} only in the base"
        if key not in a:
            return f"map {name}: key {key.hex()} only in the candidate"
        if a[key] != b[key]:
            if isinstance(a[key], dict) and isinstance(b[key], dict):
                inner = _describe_table_difference(f"{name}[{key.hex()}]", a[key], b[key],
                                                   clocks, packets)
                return inner
            return (f"map {name}: key {key.hex()}: {_show(a[key], clocks, packets)} vs "
                    f"{_show(b[key], clocks, packets)}")
    return f"map {name} differs"


def _show(value: Any, clocks: Clocks, packets: int) -> str:
    if isinstance(value, dict):
        return f"inner map of {len(value)} entries"
    if isinstance(value, tuple):
        return "per CPU [" + ", ".join(v.hex() for v in value) + "]"
    text = value.hex()
    origins = []
    for off in range(0, len(value) - 7, 8):
        found = clocks.describe_value(int.from_bytes(value[off:off + 8], "little"), packets)
        if found:
            origins.append(f"+{off}: {found}")
    return text + (f" ({'; '.join(origins)})" if origins else "")
