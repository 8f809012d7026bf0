"""The runtime agent: adapt a running XDP program to its maps and traffic, continuously.

Loop: profile (sampled keys, decayed) → plan → specialize → load and verify → swap
atomically (BPF link update) → observe. The program the agent runs is never the object's
original bytecode: every version carries version bumps at the data plane's own writes to
maps that specialized code may read, so that a snapshot can always be checked against the
map's version.

Consistency. Every inlined site is guarded by its map's version. A write through the agent
(Python API, CLI, socket) bumps the version before the write, so once the call returns no
packet is served from the old inlined value; the next cycle re-specializes. Writes that
bypass the agent are seen by a tracing program on the bpf() syscall that bumps the version
at entry and exit (`runtime.watch`). Snapshots are taken between two reads of the versions
and retried if they moved.

Failure. A pass that raises, a verifier rejection or a failed check leaves the running
version in place; the cause is logged and reported by `status()`. Maps, the guard, the link
and the write watcher are pinned, so the agent can stop and a new one adopt the running
program.

Without the agent. Correctness does not depend on the agent being alive: every inlined site
checks its map's guard version (one load and one compare) and takes the generic lookup when
it moved, and the write watcher's programs and links are pinned under the agent's pin
directory, so they keep moving versions after the agent exits, by a kill -9 included. A
write made while no agent runs sends the sites of that map to their generic code from the
moment the writer's syscall starts; a restarted agent adopts the pinned watcher and
re-plans. (The window that remains is the watcher's: see `runtime.watch` for its blind
spots.)

One agent per name: the agent holds a lock (`lifecycle.AgentLock`) for its whole life.
The state file records, before they are made, the pins the agent creates, so a restart
after a kill part-way through a start removes exactly those, and a stop with detach
removes nothing else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ir import Program
from ..kernel import FD, ClosedError, KernelError, Link, LoadedProgram, Map, VerifierError
from ..kernel.netns import NetNamespace
from ..kernel.prog import enable_run_stats
from ..loader import create_map, load_collection, load_program_spec, read_for_kernel
from ..obj import MapSpec, ObjectSpec, ProgramSpec
from ..optimizer import (
    Guards,
    HeatReader,
    PlanOptions,
    SpecializeRequest,
    Target,
    WholeReads,
    all_read_ranges,
    cleanup_passes,
    is_complexity_error,
    next_relief,
    plan_request,
    sampled_sites,
    snapshot_maps,
    specialize,
)
from ..passes.guards import GuardBumps
from ..passes.inline import GUARD_MAP
from ..passes.instrument import CTL_MAP, SAMPLES_MAP, Instrument, layout_for
from ..passes.pipeline import PassContext
from ..passes.tailcalls import Redirect, RedirectTailCalls
from ..uapi import XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE, AttachType, MapType, ProgType
from ..world import WorldError, Write
from . import chain as chains
from . import faults
from .check import (
    CandidatePair,
    CheckInputs,
    CheckResult,
    candidate_plan,
    chain_plan,
    check_candidate,
)
from .guard import GuardMap
from .lifecycle import (
    AgentError,
    AgentLock,
    check_name,
    read_state,
    remove_pins,
    remove_stale_tmp,
    write_state,
)
from .trampoline import Trampoline

log = logging.getLogger("morpheus.agent")
STATE_DIR = Path("/run/morpheus/agents")
DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/morpheus")
# Fewer fresh samples than this say nothing about whether a site's traffic moved.
_MIN_STABILITY_SAMPLES = 8


# Pins the agent may create under its pin directory (the write watcher's are added from
# runtime.watch.PIN_NAMES); the state file records them before any is made.
_FIXED_PINS = ("guard", CTL_MAP, SAMPLES_MAP, "slots", "link")
_WATCHER_DIR = "watcher"
_ENTRY_PIN = "entry"  # the trampoline, pinned for another loader to attach (attach=False)
_UPDATE_FLAGS = (0, 1, 2, 4)  # BPF_ANY, BPF_NOEXIST, BPF_EXIST, BPF_F_LOCK


class SnapshotConflict(AgentError):
    """Writes kept landing while the maps were copied: the next cycle tries again."""


# A snapshot that a concurrent write invalidated is retaken this many times within a cycle
# (backing off 1, 2, 4, ... ms); a cycle that still finds no quiet moment is deferred to the
# next one, and only this many deferred cycles in a row count as an error.
SNAPSHOT_ATTEMPTS = 8
SNAPSHOT_DEFERRALS = 10


@dataclass(frozen=True)
class AgentOptions:
    interval: float = 0.5  # seconds between cycles
    sample_rate: int = 16  # one lookup in `sample_rate` is sampled
    sample_slots: int = 256
    decay: float = 0.5
    plan: PlanOptions = field(default_factory=PlanOptions)
    min_change: float = 0.05  # re-specialize when coverage of the inlined keys drops this much
    xdp_mode: str = "native"  # or "generic"
    # How versions are swapped: "link" (BPF_LINK_UPDATE of the XDP link) or "prog-array"
    # (a trampoline tail-calls slot 0 of a prog array; a swap is one map update, and every
    # packet pays a tail call).
    swap: str = "link"
    check: Callable[[LoadedProgram], str | None] | None = None  # extra check before a swap
    # Packets every candidate must handle exactly like the unspecialized program (verdict,
    # output bytes, data-plane map writes; run on private copies of the maps) before it is
    # swapped in. Empty: no check (each check costs two more loads and verifications).
    check_frames: tuple[bytes, ...] = ()
    # The check runs more than `check_frames` (the plan `optimize`'s check runs: near-miss
    # keys of every inlined site, moves, unseen flows, edge cases, control-plane writes to
    # guarded entries; see runtime.check); False: the check frames alone.
    check_enrich: bool = True
    # The built-in NF the program is (a morpheus.nf.NetworkFunction) and its configuration:
    # the check then adds the NF's held-back flows and edge cases, on the NF's ports.
    check_nf: Any = None
    check_config: Any = None
    # Further interfaces (names, in the agent's namespace) whose packets the program
    # handles: the check's unseen flows and edge cases arrive on them too.
    check_ifaces: tuple[str, ...] = ()
    watch_external: bool = True
    # BPF run-time statistics give ns/packet per version in `status`, but cost every packet
    # two clock reads (about 30-40 ns): off unless asked for.
    run_stats: bool = False
    # Passes appended after the cleanup passes (custom pipelines; tests inject failures).
    extra_passes: tuple[Any, ...] = ()
    # Passes run on the finished candidate, after the hot-key trees (tests inject
    # miscompiles here, where the optimizer's own last passes run).
    final_passes: tuple[Any, ...] = ()
    # A site whose inlined keys keep answering `stable_coverage` of its sampled lookups for
    # `stable_cycles` cycles samples one lookup in `stable_rate` only; when the coverage
    # drops, sampling returns to `sample_rate` and the site is re-planned.
    stable_coverage: float = 0.8
    stable_cycles: int = 3
    stable_rate: int = 1024
    # Measure what the sampling instrumentation costs on the live traffic (A/B windows of
    # the plain and the instrumented base program, BPF run stats on) once traffic flows.
    measure_instrumentation: bool = True
    measure_window: float = 0.2  # seconds per A or B window; three of each
    # A map whose guard moved in `churn_cycles` cycles in a row is written all the time
    # (a connection table taking new flows): its inlined entries would almost never be
    # served, so it is left out of the plan for `churn_pause` cycles.
    churn_cycles: int = 3
    churn_pause: int = 20
    # Maps pinned by another owner (bpfman's /run/bpfman/fs/maps/<prog id>/, or a directory
    # `bpftool prog loadall OBJ PROGS pinmaps DIR` made): the agent opens the object's maps
    # there instead of creating them, never pins them itself and never unpins them.
    maps_dir: Path | None = None
    # False: attach nothing; the entry program (a prog-array trampoline, so swaps need no
    # hook of ours) is pinned as PIN_DIR/entry for another loader to attach.
    attach: bool = True


@dataclass
class Version:
    number: int
    program: LoadedProgram
    kind: str  # "base" or "specialized"
    created: float
    signature: tuple[object, ...] = ()
    decisions: list[dict[str, Any]] = field(default_factory=list)
    insns: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    stats_at_swap: tuple[int, int] = (0, 0)  # run_cnt, run_time_ns when swapped in
    sampling: Any = None  # the SamplingLayout its instrumentation follows
    source: Program | None = None  # the instructions it was loaded from
    guard_versions: dict[str, int] = field(default_factory=dict)  # of the maps it inlines
    fingerprint: tuple[object, ...] | None = None  # of the plan it was made from
    # The specialized programs it tail-calls through the agent's own prog arrays, and
    # what the user's arrays held when they were made (array -> slot -> program id).
    callees: dict[str, chains.CalleeVersion] = field(default_factory=dict)
    chain_slots: chains.Slots = field(default_factory=dict)

    def close(self) -> None:
        self.program.close()
        for callee in self.callees.values():
            callee.close()


@dataclass
class CycleReport:
    started: float
    outcome: str  # "swapped", "unchanged", "failed", "no-traffic"
    reason: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)


class Agent:
    """Runs one XDP program on one interface and keeps it specialized.

    Use as a context manager or call `start()` / `stop()`. `run_forever()` loops until
    `stop()`; `cycle()` runs one optimization cycle (tests and demos drive it directly).

    The cycle (profile, plan, specialize, verify, check, swap) and the control-plane API are
    the backend's common part; the data plane is this class's kernel one (BPF link or
    prog-array trampoline). `runtime.useragent.UserspaceAgent` overrides the data-plane
    hooks (`_load_version`, `_swap`, `_set_current`, `_ensure_extra_maps`,
    `_check_equivalence`, `_version_stats`, ...) to run the same cycle over AF_XDP.
    """

    backend = "kernel"

    def __init__(self, object_path: str | Path, *, iface: str, program: str | None = None,
                 netns: str | None = None, name: str | None = None,
                 pin_root: str | Path = DEFAULT_PIN_ROOT,
                 options: AgentOptions | None = None) -> None:
        self.object_path = Path(object_path)
        self.iface = iface
        self.program_name = program
        self.netns = NetNamespace(netns) if netns else None
        self.options = options or AgentOptions()
        if not self.options.attach and self.options.swap != "prog-array":
            # Without a hook of its own the agent swaps behind the pinned entry program.
            from dataclasses import replace

            self.options = replace(self.options, swap="prog-array")
        # Where the owner pinned the maps (resolved by start(): a parent such as
        # /run/bpfman/fs/maps is narrowed to the one program directory holding them).
        self.maps_dir: Path | None = (Path(self.options.maps_dir).resolve()
                                      if self.options.maps_dir is not None else None)
        self.spec: ObjectSpec = read_for_kernel(self.object_path)
        self.prog: ProgramSpec = self.spec.program(program)
        self.name = check_name(name if name is not None else self.prog.name)
        self.pin_dir = Path(pin_root) / self.name
        if self.maps_dir is not None and self.maps_dir.is_relative_to(
                self.pin_dir.resolve()):
            raise AgentError(f"--maps {self.maps_dir} is inside the agent's own pin directory "
                             f"{self.pin_dir}: give the directory the maps' owner pinned")
        self.state_file = STATE_DIR / f"{self.name}.json"
        self._agent_lock = AgentLock(STATE_DIR / f"{self.name}.lock", self.name)
        self.maps: dict[str, Map] = {}
        self.guard: GuardMap | None = None
        self.link: Link | None = None
        self.trampoline: Trampoline | None = None
        self.current: Version | None = None
        self.history: deque[CycleReport] = deque(maxlen=50)
        self.swaps: deque[tuple[float, int, str]] = deque(maxlen=500)  # time, version, why
        self.errors: deque[str] = deque(maxlen=20)
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._owned: list[Any] = []
        self._version_counter = 0
        self._stats_fd: FD | None = None
        self._watcher: Any = None
        self._dirty = True
        self._force = False  # the next cycle makes a new version even for the same plan
        self._stable_for: dict[int, int] = {}  # site → consecutive cycles the version fit it
        self._last_versions: dict[str, int] = {}  # guard versions seen by the last cycle
        self._moving_for: dict[str, int] = {}  # map → consecutive cycles its guard moved
        self._paused: dict[str, int] = {}  # map → cycles it stays out of the plan
        self.last_swap_us: float | None = None  # the link or prog-array update alone
        self.instrumentation: dict[str, Any] = {"state": "not measured yet"}
        self._next_measurement = 0.0
        # Called with every finished CycleReport (the metrics endpoint observes cycles).
        self.cycle_observers: list[Callable[[CycleReport], None]] = []
        self.throughput: Any = None  # a ThroughputMeter once started
        self.throughput_error: str | None = None
        self.snapshot_retries = 0  # snapshots retaken because a write landed meanwhile
        # Tries read whole, by the guard version they were read at (optimizer.WholeReads).
        self._whole_reads: dict[str, tuple[int, dict[bytes, bytes], dict[str, object]]] = {}
        self.snapshot_deferrals = 0  # cycles deferred because no snapshot was consistent
        self._deferred_in_a_row = 0
        self._adopted: dict[str, Any] = {}
        # The agent's own prog arrays (user array -> its copy), where specialized callees
        # live; empty when the program tail-calls through none of the object's arrays.
        self.own_arrays: dict[str, Map] = {}
        self._callee_heat: dict[tuple[str, int], Mapping[int, Any]] = {}
        self._callee_cost: dict[str, int | None] = {}
        # The last pre-swap check: its result and how many packets and writes it ran.
        self.last_check: CheckResult | None = None
        self.last_check_writes = 0

    # --- set-up -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _in_netns(self):  # type: ignore[no-untyped-def]
        if self.netns is None:
            yield
        else:
            with self.netns.entered():
                yield

    def start(self) -> Agent:
        """Load and attach (or adopt a pinned running instance), then analyse. Raises
        AgentError when another agent of this name runs, or when the pins left by an
        earlier one do not match this start (another object, interface or namespace)."""
        holder = ""
        with contextlib.suppress(AgentError):
            holder = str((read_state(self.state_file) or {}).get("pid", ""))
        self._agent_lock.acquire(holder)
        faults.reach("start.locked")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        if self.maps_dir is not None:
            from ..loader import find_pinned_maps

            self.maps_dir = find_pinned_maps(self.spec, self.maps_dir).resolve()
        self._analyze()
        if self.options.run_stats:
            with contextlib.suppress(KernelError, OSError):
                self._stats_fd = enable_run_stats()
        remove_stale_tmp(self.state_file)
        state = read_state(self.state_file)
        if (self.pin_dir / "link").exists() or (self.pin_dir / _ENTRY_PIN).exists():
            self._adopt(state)
        else:
            self._recover(state)
            self._load_fresh()
        self.reader = HeatReader(self.layout, self.maps, decay=self.options.decay)
        if self.options.watch_external or (self.pin_dir / _WATCHER_DIR).exists():
            self._start_watcher()
        self._start_throughput()
        self._write_state()
        log.info(json.dumps({"event": "started", "program": self.prog.name,
                             "iface": self.iface, "version": self.current.number
                             if self.current else None,
                             "analysis_ms": round(self.analysis_ms, 2)}))

    def _analyze(self) -> None:
        """The program's facts, its candidate maps' guard slots and its sampled sites."""
        t0 = time.perf_counter()
        self.target = Target.analyze(self.spec, self.prog)
        self.program, self.facts = self.target.program, self.target.facts
        # The object's prog arrays the program tail-calls through, and the object's
        # programs their slots may hold (specialized with it: runtime.chain).
        self.chain = chains.chain_arrays(self.target)
        self.callees = chains.callee_targets(self.spec, self.prog) if self.chain else {}
        self.identify = chains.Identifier(self.spec, self.callees)
        self.analysis_ms = (time.perf_counter() - t0) * 1000
        lookups = [s for t in (self.target, *self.callees.values()) for s in t.facts.lookups()]
        candidates = sorted({s.map for s in lookups if s.specializable})
        # Inner maps resolved through an outer map (`outer[key]`): one slot per outer map,
        # shared by its resolved slots, which the watcher moves on writes to the outer map
        # and to each inner map read (it maps a map id to one slot).
        self.resolved_outer = {s.map: s.inner_of[0] for s in lookups
                               if s.specializable and s.inner_of is not None}
        self.guard_slots = {}
        outer_slot: dict[str, int] = {}
        for name in candidates:
            outer = self.resolved_outer.get(name)
            if outer is not None and outer in outer_slot:
                self.guard_slots[name] = outer_slot[outer]
                continue
            self.guard_slots[name] = len(set(self.guard_slots.values()))
            if outer is not None:
                outer_slot[outer] = self.guard_slots[name]
        for array in self.chain:
            # A write to the user's prog array moves it: a specialized root then tail-calls
            # through the user's array again.
            self.guard_slots[array] = len(set(self.guard_slots.values()))
        # Maps the callees write: the user's own copies of them (running whenever the
        # user's array is the one tail-called) write them without bumps.
        self.chain_written = sorted({m for t in self.callees.values() for m in t.written_maps()})
        data_plane = sorted({s.map for s in self.facts.lookups()
                             if s.specializable and s.guarded})
        self.bump_slots = {m: self.guard_slots[m] for m in data_plane}
        self.sites = sampled_sites(self.facts, self.spec.maps, self.options.plan)
        self.layout = layout_for(self.sites, slots=self.options.sample_slots,
                                 rate=self.options.sample_rate)

    def _planned_pins(self) -> list[str]:
        from .watch import PIN_NAMES

        # Maps adopted from another owner's directory are not ours: never named here, so no
        # clean-up (detach, a failed start, crash recovery) can remove them.
        own_maps = () if self.maps_dir is not None else self.spec.maps
        return [*(f"maps/{_pin_name(n)}" for n in own_maps), *_FIXED_PINS, _ENTRY_PIN,
                *(f"{_WATCHER_DIR}/{n}" for n in PIN_NAMES),
                *(f"{chains.PIN_DIR}/{_pin_name(a)}" for a in self.chain)]

    def _recover(self, state: dict[str, Any] | None) -> None:
        """Before a fresh start: remove what an earlier agent of this name recorded and left
        without a running link (killed part-way through its start, or a failed attach).
        Pins no state records are not ours: refuse rather than remove them."""
        if not self.pin_dir.exists():
            return
        if state is not None:
            from .watch import WriteWatcher

            WriteWatcher.remove_pins(self.pin_dir / _WATCHER_DIR)
            removed = remove_pins(self.pin_dir, list(state.get("pins", [])))
            if removed:
                log.warning(json.dumps({"event": "recovered", "pin_dir": str(self.pin_dir),
                                        "removed": removed}))
        clash = [rel for rel in self._planned_pins() if (self.pin_dir / rel).exists()]
        if clash:
            raise AgentError(
                f"{self.pin_dir / clash[0]} exists but no state in {self.state_file} says "
                f"agent {self.name!r} made it: remove it yourself if it is not in use "
                f"(rm {self.pin_dir / clash[0]}), or choose another --name")

    def _start_watcher(self) -> None:
        try:
            from .watch import WriteWatcher
        except ImportError:
            self.errors.append("external write watcher unavailable: module missing")
            return
        directory = self.pin_dir / _WATCHER_DIR
        try:
            assert self.guard is not None
            if (directory / "enter").exists():
                # A pinned watcher outlived its agent (or ours): take it over, do not add a
                # second one.
                watcher = WriteWatcher.from_pins(self.guard.map, directory)
            else:
                # Half-pinned by an agent killed while pinning it: start afresh.
                WriteWatcher.remove_pins(directory)
                # No process is exempt (the agent's own writes are bracketed twice): a pid
                # baked into a pinned program could be reused after the agent dies.
                watcher = WriteWatcher(self.guard.map)
                watcher.start()
                faults.reach("watcher.started")
            for name, slot in self.guard_slots.items():
                watched = self.maps[self.resolved_outer.get(name, name)]
                if watcher.watched.get(watched.id) != slot:
                    watcher.watch(watched, slot)
            if not watcher.pinned:
                watcher.pin(directory, after=lambda step: faults.reach(f"watcher.{step}"))
            self._watcher = watcher
        except Exception as exc:  # the agent still works; writes must go through it
            self.errors.append(f"external write watcher unavailable: {exc}")
            log.warning(json.dumps({"event": "watcher-unavailable", "error": str(exc)}))

    def _watcher_status(self) -> dict[str, Any]:
        """Whether writes that bypass the agent are seen, and whether that outlives it (a
        pinned watcher keeps guarding inlined values after the agent dies)."""
        watcher = self._watcher
        if watcher is None:
            return {"running": False, "pinned": False, "path": None, "maps": 0}
        maps = None
        with contextlib.suppress(KernelError, ClosedError):
            maps = len(watcher.watched)
        return {"running": True, "pinned": bool(watcher.pinned),
                "path": str(self.pin_dir / _WATCHER_DIR) if watcher.pinned else None,
                "maps": maps}

    def _start_throughput(self) -> None:
        from .throughput import LinkCounters, ThroughputError, ThroughputMeter

        try:
            counters = LinkCounters(self.iface, self.netns.name if self.netns else None)
            self.throughput = ThroughputMeter(counters).start()
        except (ThroughputError, ImportError) as exc:  # the agent works; status says why
            self.throughput_error = str(exc)
            log.warning(json.dumps({"event": "throughput-unavailable", "error": str(exc)}))

    def _load_fresh(self) -> None:
        self._write_state(phase="starting")
        faults.reach("start.state")
        try:
            self._create_and_attach()
        except BaseException:
            # Nothing runs on the interface: what was pinned serves no one.
            self._close_objects()
            with contextlib.suppress(OSError, AgentError):
                remove_pins(self.pin_dir, self._planned_pins())
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()
            raise

    def _create_and_attach(self) -> None:
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        if self.maps_dir is not None:
            self._open_foreign_maps()
        else:
            (self.pin_dir / "maps").mkdir(exist_ok=True)
            with self._in_netns():
                coll = load_collection(self.spec, programs=[])
            self._owned.append(coll)
            self.btf_fd = coll.btf_fd
            self.maps = dict(coll.maps)
            for name, m in self.maps.items():
                m.pin(self.pin_dir / "maps" / _pin_name(name))
        faults.reach("fresh.maps")
        self.guard = GuardMap(len(set(self.guard_slots.values())))
        self.guard.map.pin(self.pin_dir / "guard")
        self.maps[GUARD_MAP] = self.guard.map
        faults.reach("fresh.guard")
        for name, mspec in self._sampling_specs().items():
            m = create_map(mspec)
            self.maps[name] = m
            self._owned.append(m)
            m.pin(self.pin_dir / name)
        faults.reach("fresh.sampling")
        self._open_own_arrays()
        base = self._base_program(instrumented=True)
        version = self._load_version(base, "base", self.layout.sites, sampling=self.layout)
        self.current = version  # closed by stop() if what follows fails
        faults.reach("fresh.loaded")
        ifindex = self._ifindex()
        if not self.options.attach:
            self.trampoline = Trampoline.create(self.prog)
            self.trampoline.swap(version.program)
            self.trampoline.slots.pin(self.pin_dir / "slots")
            faults.reach("fresh.attached")
            self.trampoline.program.pin(self.pin_dir / _ENTRY_PIN)
            log.info(json.dumps({"event": "entry-pinned",
                                 "entry": str(self.pin_dir / _ENTRY_PIN)}))
            self.current = None
            self._set_current(version)
            return
        flags = XDP_FLAGS_DRV_MODE if self.options.xdp_mode == "native" else XDP_FLAGS_SKB_MODE
        attached = version.program
        if self.options.swap == "prog-array":
            self.trampoline = Trampoline.create(self.prog)
            self.trampoline.swap(version.program)
            # The pin keeps the slot filled when the agent exits (a prog array is emptied
            # when its last user reference goes).
            self.trampoline.slots.pin(self.pin_dir / "slots")
            attached = self.trampoline.program
        with self._in_netns():
            if ProgType(self.prog.type).is_tc:  # TC programs attach through a tcx link
                self.link = Link.tcx(attached, ifindex, egress=self.prog.attach_type
                                     == AttachType.TCX_EGRESS)
            else:
                self.link = Link.xdp(attached, ifindex, flags)
        faults.reach("fresh.attached")
        self.link.pin(self.pin_dir / "link")
        faults.reach("fresh.link")
        self.current = None
        self._set_current(version)

    def _open_foreign_maps(self) -> None:
        """The object's maps from the owner's directory (checked against the object's
        definitions), and the object's BTF for the programs the agent loads."""
        from ..loader import adopt_pinned_maps

        assert self.maps_dir is not None
        self.maps = adopt_pinned_maps(self.spec, self.maps_dir)
        self._owned.extend(self.maps.values())
        self.btf_fd = None
        if self.spec.btf is not None:
            from ..kernel import load_btf

            self.btf_fd = load_btf(self.spec.btf.blob())
            self._owned.append(self.btf_fd)

    def _check_adoptable(self, state: dict[str, Any] | None) -> None:
        hook = "link" if (self.pin_dir / "link").exists() else _ENTRY_PIN
        if state is None:
            raise AgentError(
                f"{self.pin_dir / hook} is pinned but there is no agent state "
                f"{self.state_file}: it was not made by an agent named {self.name!r} (or "
                f"its state was removed). Detach it yourself (rm -r {self.pin_dir}) or "
                "choose another --name")
        mismatches = []
        here = {"object": str(self.object_path.resolve()), "program": self.prog.name,
                "iface": self.iface, "netns": self.netns.name if self.netns else None,
                "maps_dir": str(self.maps_dir) if self.maps_dir is not None else None}
        if (self.pin_dir / "link").exists() != self.options.attach:
            mismatches.append(f"attach {not self.options.attach!r} (asked: "
                              f"{self.options.attach!r})")
        for key, wanted in here.items():
            if state.get(key, None if key == "maps_dir" else wanted) != wanted:
                mismatches.append(f"{key} {state.get(key)!r} (asked: {wanted!r})")
        if mismatches:
            raise AgentError(
                f"agent {self.name!r} already runs with {', '.join(mismatches)} "
                f"(pins in {self.pin_dir}, state in {self.state_file}): restart it with "
                "the same arguments, stop it with --detach-on-exit first, or choose another "
                "--name")

    def _adopt(self, state: dict[str, Any] | None) -> None:
        self._check_adoptable(state)
        assert state is not None
        if self.maps_dir is not None:
            self._open_foreign_maps()
        for name in self.spec.maps if self.maps_dir is None else ():
            m = Map.from_pin(self.pin_dir / "maps" / _pin_name(name))
            m.name = name
            self.maps[name] = m
            self._owned.append(m)
        guard_map = Map.from_pin(self.pin_dir / "guard")
        self.guard = GuardMap(len(set(self.guard_slots.values())), existing=guard_map)
        self.maps[GUARD_MAP] = self.guard.map
        for name in (CTL_MAP, SAMPLES_MAP):
            if (self.pin_dir / name).exists():
                m = Map.from_pin(self.pin_dir / name)
                m.name = name
                self.maps[name] = m
                self._owned.append(m)
        self._open_own_arrays()
        if self.options.attach:
            self.link = Link.from_pin(self.pin_dir / "link")
            link_info = self.link.info()
            ifindex = self._ifindex()
            if link_info.ifindex not in (0, ifindex):
                raise AgentError(f"{self.pin_dir / 'link'} is attached to ifindex "
                                 f"{link_info.ifindex}, not to {self.iface} (ifindex "
                                 f"{ifindex})")
            attached = LoadedProgram.from_id(link_info.prog_id)
        else:
            attached = LoadedProgram.from_pin(self.pin_dir / _ENTRY_PIN)
        if (self.pin_dir / "slots").exists():
            self.trampoline = Trampoline.from_pins(self.pin_dir / "slots", attached)
            running_id = self.trampoline.running_id()
            if running_id is None:
                raise AgentError(f"{self.pin_dir / 'slots'}: the trampoline's slot is empty")
            running = LoadedProgram.from_id(running_id)
        else:
            running = attached
        if self.maps_dir is None:
            self.btf_fd = None
            if self.spec.btf is not None:
                from ..kernel import load_btf

                self.btf_fd = load_btf(self.spec.btf.blob())
                self._owned.append(self.btf_fd)
        self._version_counter = int(state.get("version", 0))
        # What the adopted program is, as its maker recorded (kept in the state until this
        # agent swaps in its own version).
        self._adopted = {"kind": state.get("kind"), "inlined": state.get("inlined", [])}
        self._set_current(Version(self._version_counter, running, "adopted", time.time()))
        self._dirty = True
        faults.reach("adopt.opened")

    def _open_own_arrays(self) -> None:
        """The agent's own copies of the user's prog arrays (pinned: a prog array empties
        when its last user reference goes, and a running root must keep its callees when
        the agent exits), adopted from their pins where an earlier agent left them."""
        for array in self.chain:
            pin = self.pin_dir / chains.PIN_DIR / _pin_name(array)
            if pin.exists():
                own = Map.from_pin(pin)
                own.name = chains.own_array_name(array)
            else:
                own = chains.create_own_array(self.spec, array)
                self._owned.append(own)
                pin.parent.mkdir(parents=True, exist_ok=True)
                own.pin(pin)
            if own not in self._owned:
                self._owned.append(own)
            self.own_arrays[array] = own
            self.maps[own.name] = own

    def _sampling_specs(self) -> dict[str, MapSpec]:
        ctx = PassContext(dict(self.spec.maps), self.prog.type)
        Instrument(self.layout).run(self.program, ctx)
        return {k: v for k, v in ctx.maps.items() if k in (CTL_MAP, SAMPLES_MAP)}

    def _ifindex(self) -> int:
        import socket

        with self._in_netns():
            try:
                return socket.if_nametoindex(self.iface)
            except OSError:
                where = f" in netns {self.netns.name}" if self.netns else ""
                raise AgentError(f"no interface {self.iface!r}{where}") from None

    def _base_program(self, *, instrumented: bool) -> Program:
        ctx = PassContext(dict(self.spec.maps), self.prog.type)
        program = self.program
        if self.bump_slots:
            ranges = all_read_ranges(self.facts, list(self.bump_slots))
            program = GuardBumps(self.bump_slots, ranges).run(program, ctx)
        if instrumented and self.layout.sites:
            program = Instrument(self.layout).run(program, ctx)
        return program

    def _load_version(self, program: Program, kind: str, sampled: tuple[Any, ...],
                      **extra: Any) -> Version:
        with self._in_netns():
            loaded = load_program_spec(self.prog, self.maps, program=program,
                                       btf_fd=self.btf_fd)
        self._version_counter += 1
        return Version(self._version_counter, loaded, kind, time.time(),
                       insns=sum(i.width for i in program.insns), source=program, **extra)

    def _set_current(self, version: Version) -> None:
        with contextlib.suppress(KernelError):
            info = version.program.info()
            version.stats_at_swap = (info.run_cnt, info.run_time_ns)
        old, self.current = self.current, version
        if version.sampling is not None and hasattr(self, "reader"):
            # Samples read from now on were taken at this version's rates.
            self.reader.layout = version.sampling
        if old is not None and old.program is not version.program:
            old.close()  # its callees stay alive in the own arrays while they hold them

    def _write_state(self, phase: str = "running") -> None:
        current = self.current
        state = {"object": str(self.object_path.resolve()), "program": self.prog.name,
                 "iface": self.iface, "netns": self.netns.name if self.netns else None,
                 "pin_dir": str(self.pin_dir), "pid": os.getpid(), "phase": phase,
                 "maps_dir": str(self.maps_dir) if self.maps_dir is not None else None,
                 "attach": self.options.attach,
                 "version": self._version_counter,
                 "kind": current.kind if current is not None else None,
                 "inlined": sorted({d["map"] for d in current.decisions if d["specialized"]}
                                   | {d["map"] for c in current.callees.values()
                                      for d in c.decisions if d["specialized"]})
                 if current is not None else [],
                 "chain": {a: {k.hex(): self.identify.known.get(pid) or pid
                               for k, pid in held.items()}
                           for a, held in current.chain_slots.items()}
                 if current is not None else {},
                 **(self._adopted if current is not None and current.kind == "adopted"
                    else {}),
                 "pins": self._planned_pins()}
        write_state(self.state_file, state)

    # --- the loop -----------------------------------------------------------------------

    def cycle(self) -> CycleReport:
        """One optimization cycle. Never raises for a failed specialization: the running
        version stays and the report says why."""
        report = CycleReport(time.time(), "unchanged")
        t0 = time.perf_counter()
        try:
            heat = self.reader.read()
            report.timings_ms["profile"] = _ms(t0)
            faults.reach("cycle.profile")
            if self._should_measure_instrumentation(heat):
                t_measure = time.perf_counter()
                self._measure_instrumentation()
                report.timings_ms["measure_instrumentation"] = _ms(t_measure)
            if not any(h.keys for h in heat.values()) and self.current is not None \
                    and self.current.kind == "specialized" and not self._dirty:
                report.outcome, report.reason = "no-traffic", "no samples since last cycle"
                return self._finish(report)
            if self._idle(heat):
                report.outcome = "idle"
                report.reason = "no new samples and no map changed since the last cycle"
                return self._finish(report)
            t1 = time.perf_counter()
            snapshots, versions, chain = self._consistent_snapshot(heat)
            report.timings_ms["snapshot"] = _ms(t1)
            faults.reach("cycle.snapshot")
            self._update_stability(heat)
            self._follow_guards(versions)
            t2 = time.perf_counter()
            callee_requests = self._callee_requests(chain, versions)
            redirects = {a: Redirect(chains.own_array_name(a), self.guard_slots[a], versions[a])
                         for a in self.own_arrays if chain.holds(a, callee_requests)}
            request = self._request(snapshots, heat, versions, redirects)
            planned = plan_request(request)
            fingerprint = (planned.fingerprint(request), chain.fingerprint(),
                           tuple(versions[a] for a in redirects),
                           tuple((n, plan_request(r).fingerprint(r))
                                 for n, r in callee_requests.items()))
            report.timings_ms["plan"] = _ms(t2)
            running = self.current
            if running is not None and running.kind == "specialized":
                # The plan alone says whether anything would change: the same sites, keys,
                # inlined values and guard versions make the same program, which needs no
                # specialization, verification or check.
                if running.fingerprint == fingerprint and not self._force:
                    report.reason = ("plan unchanged (same sites, keys, values and guard "
                                     "versions): nothing specialized")
                    self._dirty = False
                    return self._finish(report)
                gain = _coverage_gain(running.decisions, planned.decisions, heat)
                same_rates = running.signature[-1:] == (self._sampling().rates,)
                if not self._dirty and same_rates and gain < self.options.min_change:
                    report.reason = (f"running version still fits the traffic "
                                     f"(coverage gain {gain:.1%}): nothing specialized")
                    return self._finish(report)
            self._force = False
            t2 = time.perf_counter()
            result = specialize(request)
            report.timings_ms["specialize"] = _ms(t2)
            faults.reach("cycle.specialize")
            signature = (*_signature(result), self._sampling().rates)
            if not self._dirty and self.current is not None and \
                    self.current.kind == "specialized":
                gain = _coverage_gain(self.current.decisions, result.decisions, heat)
                rates_changed = self.current.signature[-1:] != signature[-1:]
                if not rates_changed and (self.current.signature == signature
                                          or gain < self.options.min_change):
                    report.reason = (f"running version still fits the traffic "
                                     f"(coverage gain {gain:.1%})")
                    return self._finish(report)
            program = result.program
            self._ensure_extra_maps(result.extra_maps)
            t3 = time.perf_counter()
            # The callees first: the root is made only once they are verified.
            callees = self._load_callees(callee_requests)
            try:
                version, result = self._load_with_relief(program, result, request, signature)
            except BaseException:
                for callee in callees.values():
                    callee.close()
                raise
            version.fingerprint = fingerprint
            version.callees = callees
            version.chain_slots = {a: chain.slots[a] for a in redirects}
            for a in redirects:
                version.guard_versions[a] = versions[a]
            for callee in callees.values():
                version.guard_versions.update(
                    {p.map: p.guard_version for p in callee.result.plan.sites
                     if p.guard_slot is not None})
            report.timings_ms["verify"] = _ms(t3)
            faults.reach("cycle.load")
            if self._check_wanted():
                t_check = time.perf_counter()
                outcome = self._check_equivalence(version, result)
                report.timings_ms["check"] = _ms(t_check)
                if not outcome.equivalent:
                    version.close()
                    raise AgentError(f"equivalence check failed: {outcome.describe()}")
            if self.options.check is not None:
                problem = self.options.check(version.program)
                if problem:
                    version.close()
                    raise AgentError(f"check failed: {problem}")
            t4 = time.perf_counter()
            self._swap(version)
            report.timings_ms["swap"] = _ms(t4)
            report.timings_ms["swap_call"] = round((self.last_swap_us or 0.0) / 1000, 4)
            report.outcome = "swapped"
            report.reason = f"version {version.number}: " + ", ".join(
                [f"{d['map']}:{d['mode']}" for d in version.decisions if d["specialized"]]
                + [f"{name}/{d['map']}:{d['mode']}" for name, c in version.callees.items()
                   for d in c.decisions if d["specialized"]])
            self.swaps.append((time.time(), version.number, report.reason))
            self._dirty = False
        except SnapshotConflict as exc:
            self.snapshot_deferrals += 1
            self._deferred_in_a_row += 1
            report.outcome = "deferred"
            report.reason = f"{exc}; trying again next cycle"
            if self._deferred_in_a_row >= SNAPSHOT_DEFERRALS:
                report.outcome = "failed"
                report.reason = (f"{type(exc).__name__}: {exc} in {self._deferred_in_a_row} "
                                 "cycles in a row")
                self.errors.append(report.reason)
                log.error(json.dumps({"event": "cycle-failed", "error": report.reason}))
        except Exception as exc:
            report.outcome = "failed"
            report.reason = f"{type(exc).__name__}: {exc}"
            self.errors.append(report.reason)
            log.error(json.dumps({"event": "cycle-failed", "error": report.reason,
                                  "trace": traceback.format_exc(limit=3)}))
        return self._finish(report)

    def _finish(self, report: CycleReport) -> CycleReport:
        report.timings_ms["total"] = round((time.time() - report.started) * 1000, 3)
        if report.outcome != "deferred":
            self._deferred_in_a_row = 0
        self.history.append(report)
        for observe in self.cycle_observers:
            try:
                observe(report)
            except Exception as exc:  # an observer never breaks the loop
                log.warning(json.dumps({"event": "observer-failed", "error": str(exc)}))
        log.info(json.dumps({"event": "cycle", "outcome": report.outcome,
                             "reason": report.reason, "ms": report.timings_ms}))
        return report

    def _consistent_snapshot(self, heat: Mapping[int, Any]):  # type: ignore[no-untyped-def]
        """Map contents and the versions they belong to: versions read before and after the
        snapshot must agree, else a write happened in between and the snapshot is retaken."""
        assert self.guard is not None
        for attempt in range(SNAPSHOT_ATTEMPTS):
            if attempt:
                self.snapshot_retries += 1
                time.sleep(0.001 * 2 ** (attempt - 1))
            # Every writer moves the version before and after its write, so a snapshot is
            # good when the versions did not move while it was taken: a write in flight
            # will move them again when it ends, past what this snapshot records.
            before = self.guard.versions()
            # Kept whole reads need every writer to move a version: without the watcher,
            # writes that bypass the agent would not, so every cycle reads again.
            whole = WholeReads({m: before[s] for m, s in self.guard_slots.items()},
                               self._whole_reads) if self._watcher is not None else None
            snapshots = snapshot_maps(self.maps, self.facts, self.spec.maps, heat,
                                      self.options.plan, whole)
            chain = self._read_chain()
            after = self.guard.versions()
            watched = [self._watch_inner_maps(s) for s in (snapshots, *chain.snapshots.values())]
            if not all(watched):
                continue  # an inner map read was not watched yet: read it again, watched
            if before == after:
                return snapshots, {m: before[s] for m, s in self.guard_slots.items()}, chain
        raise SnapshotConflict(f"maps kept changing while taking a snapshot "
                               f"({SNAPSHOT_ATTEMPTS} attempts)")

    def _read_chain(self) -> chains.ChainRead:
        """What the user's prog arrays hold, and the heat and map snapshots of the object's
        programs among them (taken between the snapshot's two reads of the versions)."""
        if not self.own_arrays or self._watcher is None:
            # Without the watcher a user's write to the prog array (its control plane
            # writes it directly, as Katran's does) would not move the array's guard: the
            # root would keep running the agent's copy of what the slot used to hold.
            return chains.ChainRead()
        read = chains.ChainRead(chains.read_slots(self.maps, self.own_arrays))
        for held in read.slots.values():
            for prog_id in held.values():
                read.names[prog_id] = self.identify(prog_id, self.maps, self.btf_fd)
        for name in read.active:
            read.heat[name] = self._heat_of_callee(name)
            read.snapshots[name] = snapshot_maps(self.maps, self.callees[name].facts,
                                                 self.spec.maps, read.heat[name],
                                                 self.options.plan)
        return read

    def _heat_of_callee(self, name: str) -> Mapping[int, Any]:
        """A callee's hot keys: an offline-style profile on the check frames (the root
        hands its callees the packets it receives), taken once per set of frames; none
        without check frames (small tables are still inlined whole)."""
        key = (name, hash(self.options.check_frames))
        if key not in self._callee_heat:
            # The replay runs in a namespace of its own, where the agent's interface
            # does not exist: no ingress port.
            request = chains.ProfileRequest(self.callees[name], self.options.check_frames,
                                            0, self.options.plan, self.spec.btf)
            try:
                self._callee_heat[key] = chains.profile_callee(self.maps, request)
            except (KernelError, VerifierError, OSError, WorldError) as exc:
                # Without hot keys the callee still gets its small tables inlined whole.
                self.errors.append(f"profile of {name} failed: {exc}")
                self._callee_heat[key] = {}
        return self._callee_heat[key]

    def _callee_requests(self, chain: chains.ChainRead, versions: Mapping[str, int]
                         ) -> dict[str, SpecializeRequest]:
        """A specialization request for each callee the user's arrays hold that has
        something to inline, behind guards of its own (the agent's guard map)."""
        out: dict[str, SpecializeRequest] = {}
        for name in chain.active:
            target = self.callees[name]
            bumps = {s.map: self.guard_slots[s.map] for s in target.facts.lookups()
                     if s.specializable and s.guarded and s.map in self.guard_slots}
            request = SpecializeRequest(
                target, chain.snapshots[name], chain.heat[name], self.options.plan,
                guards=Guards(self.guard_slots, bumps, versions), passes=self._passes(),
                skip_maps=self._skip_maps(), verifier_base=self._callee_cost_of(name),
                final_passes=self.options.final_passes)
            if plan_request(request).plan.sites:
                out[name] = request
        return out

    def _callee_cost_of(self, name: str) -> int | None:
        """Instructions the verifier processed for the callee as the object has it."""
        if name not in self._callee_cost:
            self._callee_cost[name] = None
            with contextlib.suppress(KernelError, VerifierError), \
                    load_program_spec(self.callees[name].prog, self.maps,
                                      btf_fd=self.btf_fd) as prog:
                self._callee_cost[name] = prog.info().verified_insns
        return self._callee_cost[name]

    def _load_callees(self, requests: Mapping[str, SpecializeRequest]
                      ) -> dict[str, chains.CalleeVersion]:
        out: dict[str, chains.CalleeVersion] = {}
        try:
            for name, request in requests.items():
                out[name] = self._load_callee(name, request)
        except BaseException:
            for callee in out.values():
                callee.close()
            raise
        return out

    def _load_callee(self, name: str, request: SpecializeRequest) -> chains.CalleeVersion:
        """Specialize and load one callee (relieved like the root when the verifier
        refuses it); its inlined-value maps get names of their own."""
        result = specialize(request)
        converged: frozenset[int] = frozenset()
        dropped: frozenset[int] = frozenset()
        prog = self.callees[name].prog
        for _attempt in range(8):
            renames = {m: f"{m}@{name}" for m in result.extra_maps if m != GUARD_MAP}
            own = {renames[m]: create_map(spec) for m, spec in result.extra_maps.items()
                   if m in renames}
            for new_name, m in own.items():
                m.name = new_name
            source = chains.with_map_names(result.program, renames)
            try:
                with self._in_netns():
                    loaded = load_program_spec(prog, {**self.maps, **own}, program=source,
                                               btf_fd=self.btf_fd)
            except VerifierError as exc:
                for m in own.values():
                    m.close()
                relief = next_relief(result, converged, dropped) \
                    if is_complexity_error(str(exc)) else None
                if relief is None:
                    raise
                converged, dropped = relief
                result = specialize(request.relieved(converged, dropped))
                continue
            return chains.CalleeVersion(name, loaded, source, result, own,
                                        insns=sum(i.width for i in source.insns),
                                        decisions=[_decision(d) for d in result.decisions])
        raise AgentError(f"the verifier refused every relieved version of {name}")

    def _watch_inner_maps(self, snapshots: dict[str, Any]) -> bool:
        """Have the watcher move the slot of each resolved inner map on writes to the maps
        its snapshot was read from. False when one was not watched while it was read (the
        snapshot must be taken again). Without the watcher an inner map, which has no name
        in the agent's API, could be written unseen: such slots are not inlined."""
        complete = True
        for name, snap in snapshots.items():
            if name not in self.resolved_outer or snap.unavailable:
                continue
            slot = self.guard_slots[name]
            if self._watcher is None:
                snap.unavailable = ("inner map of a map of maps: written outside the agent's "
                                    "API, so inlined only under the write watcher")
                continue
            for map_id in snap.source_ids:
                current = self._watcher.watched.get(map_id)
                if current == slot:
                    continue
                if current is not None:
                    snap.unavailable = (f"the inner map in {self.resolved_outer[name]} is "
                                        "also one of the object's maps: not inlined")
                    continue
                # Inner maps that were replaced stay watched (a write to them moves a slot
                # no running version trusts any more): harmless, and few.
                self._watcher.watch(map_id, slot)
                complete = False
        return complete

    def _ensure_extra_maps(self, specs: Mapping[str, MapSpec]) -> None:
        for name, mspec in specs.items():
            if name in (GUARD_MAP, CTL_MAP, SAMPLES_MAP):
                continue
            old = self.maps.get(name)
            # Inlined values are frozen: every version gets fresh ones.
            m = create_map(mspec)
            self.maps[name] = m
            self._owned.append(m)
            if old is not None:
                self._owned.remove(old)
                old.close()

    def _request(self, snapshots: Mapping[str, Any], heat: Mapping[int, Any],
                 versions: Mapping[str, int],
                 redirects: Mapping[str, Redirect] | None = None) -> SpecializeRequest:
        """What this cycle asks the optimizer for: every candidate map guarded (the control
        plane and outside writers change them too), sampling kept in the new version, and
        tail calls through `redirects`' arrays sent to the agent's own copies."""
        # The redirect first: the options' final passes see the finished candidate.
        final = (RedirectTailCalls(dict(redirects)),) if redirects else ()
        final += tuple(self.options.final_passes)
        return SpecializeRequest(
            self.target, snapshots, heat, self.options.plan,
            guards=Guards(self.guard_slots, self.bump_slots, versions),
            passes=self._passes(), sampling=self._sampling(), skip_maps=self._skip_maps(),
            verifier_base=self._verifier_base(), final_passes=final)

    def _load_with_relief(self, program: Program, result: Any, request: SpecializeRequest,
                          signature: tuple[object, ...]) -> tuple[Version, Any]:
        """The loaded candidate and the specialization it was loaded from (a relieved one
        when the verifier refused the first)."""
        converged: frozenset[int] = frozenset()
        dropped: frozenset[int] = frozenset()
        for _attempt in range(8):
            try:
                return self._load_version(
                    program, "specialized", self.layout.sites, signature=signature,
                    sampling=self._sampling(),
                    decisions=[_decision(d) for d in result.decisions],
                    timings_ms=dict(result.timings_ms),
                    guard_versions={p.map: p.guard_version for p in result.plan.sites
                                    if p.guard_slot is not None}), result
            except VerifierError as exc:
                if not is_complexity_error(str(exc)):
                    raise
                relief = next_relief(result, converged, dropped)
                if relief is None:
                    raise
                converged, dropped = relief
                result = specialize(request.relieved(converged, dropped))
                program = result.program
                self._ensure_extra_maps(result.extra_maps)
        raise AgentError("the verifier refused every relieved version")

    def _check_wanted(self) -> bool:
        """Whether candidates are checked before the swap (kernel: with --check-trace)."""
        return bool(self.options.check_frames)

    def _check_equivalence(self, version: Version, result: Any = None) -> CheckResult:
        """Run the candidate and the unspecialized program on the check plan: the check
        packets and what `optimize`'s check adds to its trace (runtime.check)."""
        assert version.source is not None
        pair = CandidatePair(self.prog, self.spec, self._base_program(instrumented=False),
                             version.source, self.btf_fd,
                             {n: c.source for n, c in version.callees.items()})
        # The own arrays are seen as the user's: the check's worlds reproduce them with
        # the candidate's callees where the user's slots hold the object's programs.
        source = {**self.maps, **{c: m for callee in version.callees.values()
                                  for c, m in callee.maps.items()},
                  **{chains.own_array_name(a): self.maps[a] for a in self.own_arrays}}
        with self._in_netns():
            inputs = self.check_inputs(result)
            # Last, the user empties the slots the agent's copies stand in for.
            emptied = [Write(0, array, key, None, guard=(GUARD_MAP, 8 * self.guard_slots[array]))
                       for array, held in version.chain_slots.items() for key in held]
            plan = chain_plan(inputs, [(self.callees[n].facts, c.result)
                                       for n, c in version.callees.items()], emptied) \
                if version.callees else candidate_plan(inputs)
            outcome = check_candidate(source, inputs, pair, plan)
        self.last_check, self.last_check_writes = outcome, len(plan.writes)
        return outcome

    def _check_frames(self) -> Sequence[bytes]:
        """The check packets the plan starts from (kernel: the --check-trace frames)."""
        return self.options.check_frames

    def check_inputs(self, result: Any = None) -> CheckInputs:
        """What the pre-swap check of the candidate `result` (a Specialization) runs on:
        the check frames on this interface, the candidate's inlined sites and guarded
        entries, the NF and the further interfaces the options name. Call it in the
        agent's namespace."""
        import socket

        ports = []
        for name in self.options.check_ifaces:
            try:
                ports.append(socket.if_nametoindex(name))
            except OSError:
                raise AgentError(f"check interface {name!r} does not exist") from None
        return CheckInputs(self._check_frames(), self._ifindex(), facts=self.facts,
                           specialization=result, nf=self.options.check_nf,
                           config=self.options.check_config, ports=tuple(ports),
                           enrich=self.options.check_enrich)

    def _should_measure_instrumentation(self, heat: Mapping[int, Any]) -> bool:
        return (self.options.measure_instrumentation and bool(self.layout.sites)
                and "ns_per_packet" not in self.instrumentation
                and time.monotonic() >= self._next_measurement
                and any(h.lookups for h in heat.values()))

    def _measure_instrumentation(self) -> None:
        """What sampling costs per packet on the live traffic: the plain and the instrumented
        base program take turns on the interface (three windows each, interleaved), with BPF
        run stats on. Both are unspecialized, so consistency holds throughout; the running
        version is back when this returns. Without traffic it gives up after one window and
        tries again a minute later."""
        self._next_measurement = time.monotonic() + 60.0
        assert self.current is not None and (self.link or self.trampoline) is not None
        entry = self.trampoline.program if self.trampoline is not None else None
        totals = {"plain": [0, 0], "instrumented": [0, 0]}  # packets, ns
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(enable_run_stats())
                progs = {}
                for kind in totals:
                    with self._in_netns():
                        progs[kind] = stack.enter_context(load_program_spec(
                            self.prog, self.maps, btf_fd=self.btf_fd,
                            program=self._base_program(instrumented=kind == "instrumented")))
                stack.callback(self._attach, self.current.program)
                for window in range(6):
                    kind = ("plain", "instrumented")[window % 2]
                    self._attach(progs[kind])
                    watched = entry if entry is not None else progs[kind]
                    before = watched.info()
                    time.sleep(self.options.measure_window)
                    after = watched.info()
                    totals[kind][0] += after.run_cnt - before.run_cnt
                    totals[kind][1] += after.run_time_ns - before.run_time_ns
                    if window == 0 and totals[kind][0] == 0:
                        self.instrumentation = {"state": "no traffic to measure on yet"}
                        return
        except (KernelError, VerifierError, OSError) as exc:
            self.instrumentation = {"state": f"could not measure: {exc}"}
            return
        self._record_instrumentation_cost(totals)

    def _record_instrumentation_cost(self, totals: Mapping[str, list[int]]) -> None:
        """Turn (packets, ns) per version kind ("plain", "instrumented"), measured on the
        same traffic, into the sampling cost `status` shows."""
        ns = {k: t[1] / t[0] if t[0] else None for k, t in totals.items()}
        if ns["plain"] is None or ns["instrumented"] is None:
            self.instrumentation = {"state": "traffic stopped while measuring"}
            return
        self.instrumentation = {
            "state": "measured", "at": round(time.time(), 3),
            "packets": totals["plain"][0] + totals["instrumented"][0],
            "plain_ns": round(ns["plain"], 1), "instrumented_ns": round(ns["instrumented"], 1),
            "ns_per_packet": round(ns["instrumented"] - ns["plain"], 1)}
        log.info(json.dumps({"event": "instrumentation-cost", **self.instrumentation}))

    def _attach(self, program: LoadedProgram) -> None:
        """Make `program` the one packets run (no expected-old check: callers hold the
        lock's guarantees themselves)."""
        with self.lock:
            if self.trampoline is not None:
                self.trampoline.swap(program)
            else:
                assert self.link is not None
                self.link.update(program)

    def _update_stability(self, heat: Mapping[int, Any]) -> None:
        """Count, per sampled site, the cycles in a row the running version's inlined keys
        answered most of the lookups sampled since the last cycle; a drop resets the count
        (and re-plans the site). Only fresh samples count: decayed history would hide a shift
        for cycles, the more so as a backed-off site takes few samples."""
        decisions = self.current.decisions if self.current else []
        running = {d["instruction"]: {bytes.fromhex(k) for k in d.get("keys_inlined", ())}
                   for d in decisions}
        # A site inlined whole (an LPM trie as ranges) answers every lookup whatever the
        # traffic: stable from the start, its sampling backs off.
        whole = {d["instruction"] for d in decisions if d.get("mode") == "table"}
        for site in self.layout.sites:
            if site.site in whole:
                self._stable_for[site.site] = self._stable_for.get(site.site, 0) + 1
                continue
            h = heat.get(site.site)
            keys = running.get(site.site)
            if h is None or not keys or sum(h.recent.values()) < _MIN_STABILITY_SAMPLES:
                continue
            if h.recent_share(keys) >= self.options.stable_coverage:
                self._stable_for[site.site] = self._stable_for.get(site.site, 0) + 1
            else:
                if self._stable_for.get(site.site, 0) >= self.options.stable_cycles:
                    self._dirty = True  # traffic moved: sample densely again and re-plan
                self._stable_for[site.site] = 0

    def _idle(self, heat: Mapping[int, Any]) -> bool:
        """Nothing this cycle could plan differently from the last one: no sample and no
        lookup since then, and no guard moved (every write to a map the agent may inline
        moves one: through the agent, from outside via the watcher, by the data plane via
        its bumps). Decay alone scales every key alike and changes no ranking."""
        if self._dirty or self.current is None or self._paused or not self._last_versions \
                or self.guard is None:
            return False
        if any(h.samples or h.lookups for h in heat.values()):
            return False
        now = self.guard.versions()
        return {m: now[s] for m, s in self.guard_slots.items()} == self._last_versions

    def _follow_guards(self, versions: Mapping[str, int]) -> None:
        """Re-plan when a map the running version inlines changed behind it (the data
        plane, or a writer the watcher caught, moved its guard: the site now always takes
        the generic path), and pause maps whose guard moves every cycle."""
        for name, version in versions.items():
            if name in self._last_versions and self._last_versions[name] != version:
                self._moving_for[name] = self._moving_for.get(name, 0) + 1
            else:
                self._moving_for[name] = 0
            if self._moving_for[name] >= self.options.churn_cycles and name not in self._paused:
                self._paused[name] = self.options.churn_pause
                self._dirty = True
                log.info(json.dumps({"event": "map-paused", "map": name,
                                     "cycles": self.options.churn_pause}))
        self._last_versions = dict(versions)
        for name in list(self._paused):
            self._paused[name] -= 1
            if self._paused[name] < 0:
                del self._paused[name]
                self._moving_for[name] = 0
                self._dirty = True
        inlined = self.current.guard_versions if self.current is not None else {}
        if any(versions.get(m, v) != v for m, v in inlined.items() if m not in self._paused):
            self._dirty = True

    def _skip_maps(self) -> dict[str, str]:
        skip = {name: (f"its guard moved in {self.options.churn_cycles} cycles in a row "
                       f"(written all the time): not inlined for {left + 1} more cycles")
                for name, left in self._paused.items()}
        for name in self.chain_written if self.own_arrays else ():
            skip.setdefault(name, "written by a program the root tail-calls, whose copy in "
                                  "the user's prog array writes it without moving its guard")
        if self.maps_dir is not None:
            # The owner's generic program (bpfman's, on any hook) writes these maps too, and
            # writes by BPF programs are the watcher's blind spot: only the agent's own
            # versions bump the guard, so an inlined value could go stale unseen.
            for name in self.bump_slots:
                skip.setdefault(name, f"written by the data plane, and the maps are "
                                      f"{self.maps_dir}'s owner's: its programs' writes "
                                      "would not move the guard")
        return skip

    def _sampling(self) -> Any:
        rates = [self.options.stable_rate
                 if self._stable_for.get(s.site, 0) >= self.options.stable_cycles
                 else self.options.sample_rate for s in self.layout.sites]
        return self.layout.with_rates(rates) if self.layout.sites else self.layout

    def _verifier_base(self) -> int | None:
        """Instructions the verifier processed for the unspecialized program (measured once
        on the base version): the yardstick for keeping specialized versions verifiable."""
        if getattr(self, "_base_cost", None) is None:
            with contextlib.suppress(KernelError, VerifierError):
                base = self._base_program(instrumented=False)
                with self._in_netns():
                    prog = load_program_spec(self.prog, self.maps, program=base,
                                             btf_fd=self.btf_fd)
                with prog:
                    self._base_cost = prog.info().verified_insns
        return getattr(self, "_base_cost", None)

    def _passes(self) -> list[Any] | None:
        if not self.options.extra_passes:
            return None
        return [*cleanup_passes(), *self.options.extra_passes]

    def _swap(self, version: Version) -> None:
        assert self.current is not None
        with self.lock:
            faults.reach("swap.before")
            # The callees first: an older root still running may tail-call them already
            # (each callee version is equivalent to the original), the new root needs them.
            for array, held in version.chain_slots.items():
                chains.fill_own_array(self.own_arrays[array], held, self.identify.known,
                                      version.callees)
            t0 = time.perf_counter()
            if self.trampoline is not None:
                self.trampoline.swap(version.program)
            else:
                assert self.link is not None
                self.link.update(version.program, expected_old=self.current.program)
            self.last_swap_us = (time.perf_counter() - t0) * 1e6
            faults.reach("swap.after")
            self._set_current(version)
            self._write_state()

    def force_respecialize(self) -> None:
        """Make the next cycle build, check and swap in a new version even if its plan is
        the running version's (benchmarks of the swap path, tests)."""
        self._dirty = True
        self._force = True

    def run_forever(self) -> None:
        while not self._stop.is_set():
            self.cycle()
            self._stop.wait(self.options.interval)

    def start_background(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="morpheus-agent",
                                        daemon=True)
        self._thread.start()

    # --- control plane ------------------------------------------------------------------

    def _bump(self, map_name: str) -> None:
        slots = {self.guard_slots[m] for m, outer in self.resolved_outer.items()
                 if outer == map_name}
        if map_name in self.guard_slots:
            slots.add(self.guard_slots[map_name])
        if self.guard is not None:
            for slot in sorted(slots):
                self.guard.bump(slot)

    def update(self, map_name: str, key: bytes | int, value: Any, flags: int = 0) -> None:
        """Write an entry. Once this returns, every packet sees the new value. A key or
        value of the wrong size, or flags other than BPF_ANY, BPF_NOEXIST, BPF_EXIST or
        BPF_F_LOCK, are refused (ValueError) before anything moves."""
        m = self._map(map_name)
        if isinstance(flags, bool) or not isinstance(flags, int) or flags not in _UPDATE_FLAGS:
            raise ValueError(f"flags must be one of {', '.join(map(str, _UPDATE_FLAGS))} "
                             f"(BPF_ANY, BPF_NOEXIST, BPF_EXIST, BPF_F_LOCK), not {flags!r}")
        _check_size(m, "key", key, m.key_size)
        if isinstance(value, (bytes, bytearray)):
            _check_size(m, "value", value, m.value_size)
        with self.lock:
            kept = self._kept_read(map_name)
            self._bump(map_name)
            done = False
            try:
                faults.reach("write.bumped")
                with self._in_netns():
                    m.update(key, value, flags)
                done = True
                faults.reach("write.done")
            finally:
                self._bump(map_name)
                self._dirty = True
                self._follow_write(map_name, kept, key, value if done else _FAILED)

    def _kept_read(self, map_name: str) -> int | None:
        """Before a write through the agent: the version of the map's kept whole read,
        if it is the current one (else the read is dropped)."""
        kept = self._whole_reads.get(map_name)
        slot = self.guard_slots.get(map_name)
        if kept is None or slot is None or self.guard is None:
            return None
        if self.guard.version(slot) != kept[0]:
            del self._whole_reads[map_name]
            return None
        return kept[0]

    def _follow_write(self, map_name: str, kept: int | None, key: bytes | int,
                      value: Any) -> None:
        """After a write through the agent (its two bumps done): apply it to the map's kept
        whole read, which then belongs to the new version, so that the next cycle does not
        read the trie again. Only when the version moved by exactly this write's bumps (no
        other writer came in between) and the write was an update with plain bytes;
        otherwise the kept read is dropped."""
        if kept is None or map_name not in self._whole_reads:
            return
        version, entries, _ = self._whole_reads.pop(map_name)
        slot = self.guard_slots[map_name]
        # Two bumps of ours, and two of the watcher around the update syscall if it
        # watches the map (it exempts no process).
        watcher = self._watcher
        own = 2 + (2 if watcher is not None and
                   watcher.watched.get(self.maps[map_name].id) == slot else 0)
        if version != kept or self.guard is None or self.guard.version(slot) != kept + own or \
                not isinstance(key, (bytes, bytearray)) or \
                not isinstance(value, (bytes, bytearray)):
            return
        written = bytes(key)
        if self.spec.maps[map_name].type == MapType.LPM_TRIE:
            # One node per prefix: a key with other host bits is the same entry.
            prefix = _lpm_prefix(written)
            entries = {k: v for k, v in entries.items() if _lpm_prefix(k) != prefix}
        else:
            entries = dict(entries)
        entries[written] = bytes(value)
        self._whole_reads[map_name] = (kept + own, entries, {})

    def delete(self, map_name: str, key: bytes | int) -> None:
        """Remove an entry; KeyError (naming the key in hex) if it is absent."""
        m = self._map(map_name)
        _check_size(m, "key", key, m.key_size)
        with self.lock:
            self._whole_reads.pop(map_name, None)  # read whole again: deletes are rare
            self._bump(map_name)
            try:
                m.delete(key)
            except KeyError:
                shown = key.hex() if isinstance(key, (bytes, bytearray)) else str(key)
                raise KeyError(f"map {map_name!r} has no key {shown}") from None
            finally:
                self._bump(map_name)
                self._dirty = True

    def update_batch(self, map_name: str, entries: list[tuple[bytes | int, Any]]) -> int:
        m = self._map(map_name)
        with self.lock:
            self._whole_reads.pop(map_name, None)
            self._bump(map_name)
            try:
                with self._in_netns():
                    return m.update_batch(entries)
            finally:
                self._bump(map_name)
                self._dirty = True

    def lookup(self, map_name: str, key: bytes | int) -> Any:
        return self._map(map_name).lookup(key)

    def control_maps(self) -> dict[str, AgentMap]:
        """Map-like proxies whose writes go through the agent (for NF control planes)."""
        return {name: AgentMap(self, name) for name in self.spec.maps}

    def _map(self, name: str) -> Map:
        if name not in self.spec.maps:
            raise KeyError(f"program {self.prog.name} has no map {name!r}; maps: "
                           f"{', '.join(self.spec.maps)}")
        return self.maps[name]

    # --- observability ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        current = self.current
        out: dict[str, Any] = {
            "backend": self.backend,
            "program": self.prog.name, "iface": self.iface, "pin_dir": str(self.pin_dir),
            "version": None, "errors": list(self.errors),
            "cycles": [{"at": round(c.started, 3), "outcome": c.outcome, "reason": c.reason,
                        "ms": c.timings_ms} for c in list(self.history)[-10:]],
            "swaps": [{"at": round(t, 3), "version": v, "reason": r} for t, v, r in self.swaps],
            "cycle_ms": _cycle_stats(self.history),
            "instrumentation": dict(self.instrumentation),
            "paused_maps": {name: left + 1 for name, left in self._paused.items()},
            "maps_dir": str(self.maps_dir) if self.maps_dir is not None else None,
            "attach": ("link" if self.options.attach else
                       f"none: entry pinned at {self.pin_dir / _ENTRY_PIN}"),
            "swap": {"mode": self._swap_mode(),
                     "last_us": round(self.last_swap_us, 1) if self.last_swap_us else None},
            "run_stats": self._stats_fd is not None,
            "watcher": self._watcher_status(),
            "snapshot": {"retries": self.snapshot_retries,
                         "deferred_cycles": self.snapshot_deferrals,
                         "deferred_in_a_row": self._deferred_in_a_row},
        }
        out.update(self._throughput_status())
        if self.guard is not None:
            with contextlib.suppress(KernelError, ClosedError):
                versions = self.guard.versions()
                out["guards"] = {m: versions[s] for m, s in self.guard_slots.items()}
        if current is not None:
            out["version"] = {"number": current.number, "kind": current.kind,
                              "insns": current.insns, "since": round(current.created, 3),
                              "sites": current.decisions, "passes_ms": current.timings_ms,
                              "callees": {n: {"insns": c.insns, "sites": c.decisions}
                                          for n, c in current.callees.items()}}
            out["version"].update(self._version_stats(current))
        heat = getattr(self.reader, "heat", {}) if hasattr(self, "reader") else {}
        if hasattr(self, "layout"):
            sampling = self.reader.layout if hasattr(self, "reader") else self.layout
            out["sampling"] = {"sites": [
                {"instruction": s.site, "map": s.map, "rate": sampling.rate_of(n),
                 "stable_cycles": self._stable_for.get(s.site, 0),
                 "lookups": heat[s.site].lookups if s.site in heat else 0,
                 "samples": heat[s.site].samples if s.site in heat else 0}
                for n, s in enumerate(self.layout.sites)]}
        if current is not None and current.decisions and heat:
            for d in current.decisions:
                h = heat.get(d["instruction"])
                if h is not None and d.get("keys_inlined"):
                    d["hit_rate"] = round(h.share(set(bytes.fromhex(k)
                                                      for k in d["keys_inlined"])), 4)
        return out

    def _swap_mode(self) -> str:
        return "prog-array" if self.trampoline is not None else "link"

    def _version_stats(self, current: Version) -> dict[str, Any]:
        """`run_stats`, and `packets` and `ns_per_packet` of the running version when the
        kernel counts them (BPF run statistics on)."""
        info = None
        # The cycle thread closes a version's fd once it is swapped out: read under the
        # lock it swaps under, and take a fd closed anyway (ClosedError) as "no stats".
        with self.lock, contextlib.suppress(KernelError, ValueError):
            info = current.program.info()
        # Without run statistics the kernel counts nothing: say so rather than 0.
        out: dict[str, Any] = {"run_stats": self._stats_fd is not None}
        if self._stats_fd is not None and info is not None \
                and info.run_cnt >= current.stats_at_swap[0]:
            packets = info.run_cnt - current.stats_at_swap[0]
            ns = info.run_time_ns - current.stats_at_swap[1]
            out["packets"] = packets
            out["ns_per_packet"] = round(ns / packets, 1) if packets else None
        return out

    def _throughput_status(self) -> dict[str, Any]:
        """`throughput` ({"pps", "source"}, pps None when unknown) and `traffic` (bytes per
        second, the window, the per-period history) from the interface's counters."""
        meter = self.throughput
        if meter is None:
            source = f"unavailable: {self.throughput_error or 'not started'}"
            return {"throughput": {"pps": None, "source": source},
                    "traffic": {"bps": None, "window_s": None, "history": []}}
        rate = meter.rate()
        source = rate.source if rate.error is None else f"{rate.source} (unknown: {rate.error})"
        latest = meter.latest()
        return {"throughput": {"pps": round(rate.pps, 1) if rate.pps is not None else None,
                               "source": source},
                "traffic": {"bps": round(rate.bps, 1) if rate.bps is not None else None,
                            "window_s": round(rate.window_s, 3) if rate.window_s else None,
                            "window_end": round(rate.at, 3) if rate.at else None,
                            "rx_packets": latest.packets if latest else None,
                            "rx_bytes": latest.bytes if latest else None,
                            "history": [[round(t, 3), round(p, 1)]
                                        for t, p in meter.history()[-120:]]}}

    # --- teardown -----------------------------------------------------------------------

    def stop(self, *, detach: bool = False) -> None:
        """Stop adapting. The program keeps running (pinned) unless `detach`."""
        self._stop_loop()
        if detach and self._agent_lock.held:
            # Only a running agent (holding the lock) removes pins, and only those its
            # state names: the data plane first, then the watcher, then the rest.
            if self.link is not None:
                with contextlib.suppress(KernelError):
                    self.link.detach()
            from .watch import WriteWatcher

            if self._watcher is not None:
                self._watcher.close()  # our fds only, while pinned
                self._watcher = None
            with contextlib.suppress(OSError, KernelError):
                WriteWatcher.remove_pins(self.pin_dir / _WATCHER_DIR)
            with contextlib.suppress(OSError, AgentError):
                remove_pins(self.pin_dir, self._planned_pins())
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()
        self._close_objects()
        self._agent_lock.release()

    def _stop_loop(self) -> None:
        """End the cycle thread and the throughput meter (first step of every stop)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.throughput is not None:
            self.throughput.close()
            self.throughput = None

    def _close_owned(self) -> None:
        """Close what the agent opened for its versions, newest first; a close that fails
        must not keep the others open."""
        for obj in reversed(self._owned):
            with contextlib.suppress(Exception):
                obj.close()
        self._owned.clear()

    def _close_objects(self) -> None:
        if self._watcher is not None:
            self._watcher.close()  # a pinned watcher stays attached
            self._watcher = None
        if self.link is not None:
            self.link.close()
            self.link = None
        if self.trampoline is not None:
            self.trampoline.close()
            self.trampoline = None
        if self.current is not None:
            self.current.close()
            self.current = None
        if self.guard is not None:
            self.guard.close()
            self.guard = None
        self._close_owned()
        if self._stats_fd is not None:
            self._stats_fd.close()
            self._stats_fd = None

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_FAILED = object()  # an update that did not happen


def _lpm_prefix(key: bytes) -> tuple[int, int]:
    """(prefix length, the prefix's bits) of an LPM trie key: its host bits do not count."""
    length = int.from_bytes(key[:4], "little")
    data = key[4:]
    bits = 8 * len(data)
    return length, int.from_bytes(data, "big") >> (bits - min(length, bits))


def _cycle_stats(history: deque[CycleReport]) -> dict[str, float | None]:
    """Median durations of recent cycles that produced a new version, by phase."""
    swapped = [c.timings_ms for c in history if c.outcome == "swapped"]
    out: dict[str, float | None] = {}
    for key in ("profile", "snapshot", "specialize", "verify", "swap", "total"):
        values = sorted(t[key] for t in swapped if key in t)
        out[key] = values[len(values) // 2] if values else None
    return out


class AgentMap:
    """A map seen through the agent: reads go to the map, writes through the agent."""

    def __init__(self, agent: Agent, name: str) -> None:
        self.agent = agent
        self.name = name

    def update(self, key: bytes | int, value: Any, flags: int = 0) -> None:
        self.agent.update(self.name, key, value, flags)

    def delete(self, key: bytes | int) -> None:
        self.agent.delete(self.name, key)

    def update_batch(self, entries: list[tuple[bytes | int, Any]]) -> int:
        return self.agent.update_batch(self.name, entries)

    def lookup(self, key: bytes | int) -> Any:
        return self.agent.lookup(self.name, key)

    def keys(self) -> Any:
        return self.agent.maps[self.name].keys()

    def items(self) -> Any:
        return self.agent.maps[self.name].items()


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


def _check_size(m: Map, what: str, data: Any, size: int) -> None:
    if isinstance(data, (bytes, bytearray)) and len(data) != size:
        raise ValueError(f"map {m.name!r}: {what} is {len(data)} bytes, the map's {what} "
                         f"size is {size}")


def _pin_name(name: str) -> str:
    return name.lstrip(".") if name.startswith(".") else name


def _decision(d: Any) -> dict[str, Any]:
    out = {"instruction": d.site.index, "map": d.site.map, "mode": d.mode,
           "specialized": d.plan is not None, "reason": d.reason, "keys": d.keys,
           "coverage": d.coverage}
    if d.plan is not None and not d.plan.constant_key:
        out["keys_inlined"] = [e.key.hex() for e in d.plan.entries]
    return out


def _coverage_gain(running: list[dict[str, Any]], planned: Any, heat: Mapping[int, Any]
                   ) -> float:
    """How much more of the sampled lookups the new plan would answer inline than the
    running version, at the site where it gains most (0 when nothing changes)."""
    running_keys = {d["instruction"]: {bytes.fromhex(k) for k in d.get("keys_inlined", ())}
                    for d in running}
    best = 0.0
    for d in planned:
        if d.plan is None or d.plan.constant_key:
            continue
        h = heat.get(d.site.index)
        if h is None:
            continue
        new = h.share({e.key for e in d.plan.entries})
        old = h.share(running_keys.get(d.site.index, set()))
        if d.site.index not in running_keys:
            return 1.0  # a site that was not specialized before
        best = max(best, new - old)
    return best


def _signature(result: Any) -> tuple[object, ...]:
    """What a version inlines: sites and their keys (not the values: a value change moves
    the map's version, which marks the agent dirty anyway)."""
    return tuple((p.site, p.converge, tuple(sorted(e.key for e in p.entries)))
                 for p in result.plan.sites)


