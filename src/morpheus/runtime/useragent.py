"""The agent on the user-space data plane: the same cycle, run over AF_XDP.

`UserspaceAgent` is `Agent` with its data-plane hooks replaced; profiling, planning,
`optimizer.specialize`, relief from verifier complexity, churn pauses, stability back-off,
the control-plane API and `status` are the kernel agent's own code.

- Data plane. Our redirect program (`bpf/xsk_redirect.bpf.c`) hands the interface's frames
  to an AF_XDP socket; a poller thread runs them in native batches through the running
  version, JIT-compiled against the user-space maps (`userspace.live.XskPoller`). XDP_TX
  frames leave through the socket's TX ring; the other verdicts end the frame's life (user
  space cannot hand a frame back to the kernel's stack, nor redirect it: see
  docs/userspace.md).
- Versions. Every version is first loaded into the kernel against kernel maps of the same
  layout, so that the verifier judges it (it is never attached), then lifted and compiled.
  Before a swap the candidate and the unspecialized program both run, JIT-compiled, from
  the same state (`userspace.equivalence`), on the kernel agent's check plan
  (`runtime.check.candidate_plan`) over the frames the poller copied from the live traffic
  and the `--check-trace` packets: near misses of the inlined keys, a packet per inlined
  key, unseen flows and edge cases, then the control-plane writes to guarded inlined
  entries. Any difference keeps the running version.
- Swap. The poller reads the program's entry once per batch; the swap stores the new one
  between two batches (`BatchGate`): an atomic pointer swap, no frame lost or run twice.
- Consistency. The same guard versions as in the kernel: every inlined site checks its
  map's version, and a write through the agent moves it before and after the write, every
  step between batches. Once `update()` returns, no packet is served from an inlined value
  the write changed. The maps are this process's memory: no other process can write them,
  so there is no write watcher and no window outside the API.
- Lifetime. The data plane is this process: when the agent stops (or dies), its socket and
  the redirect program go with it and the interface's frames go to the kernel's stack
  again. Nothing is pinned.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..ir import Program
from ..kernel import KernelError, Map, MapType, VerifierError
from ..loader import create_map, load_collection, load_program_spec
from ..obj import MapSpec
from ..optimizer import HeatReader
from ..passes.inline import GUARD_MAP
from ..passes.instrument import CTL_MAP, SAMPLES_MAP
from ..uapi import ProgType
from .agent import Agent, AgentOptions, Version
from .check import candidate_plan
from .lifecycle import AgentError, remove_stale_tmp, write_state

log = logging.getLogger("morpheus.agent")
CHECK_PACKETS = 1000  # frames the check plan starts from (sampled live, then --check-trace)
_REFERENCES = (MapType.PROG_ARRAY, MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS)


class UserspaceAgent(Agent):
    """Runs one XDP program in user space on frames from `iface` and keeps it specialized."""

    backend = "userspace"

    def __init__(self, object_path: str | Path, *, iface: str, program: str | None = None,
                 netns: str | None = None, name: str | None = None,
                 options: AgentOptions | None = None, poller_cpu: int | None = None) -> None:
        super().__init__(object_path, iface=iface, program=program, netns=netns, name=name,
                         options=options)
        self.poller_cpu = poller_cpu
        self.plane: Any = None
        self.gate: Any = None
        self.port: Any = None
        self.poller: Any = None
        self.equivalence: Any = None
        self.kernel_maps: dict[str, Map] = {}
        self.btf_fd: Any = None
        self.ifindex = 0
        self.last_check: dict[str, Any] | None = None
        self._poller_reported = False
        self._extras: dict[int, dict[str, Any]] = {}  # version number → extra maps it binds
        self.instrumentation = {"state": "not measured yet"}

    # --- set-up -------------------------------------------------------------------------

    def _start(self) -> None:
        from ..userspace.afxdp import XskOptions, XskPort
        from ..userspace.dataplane import UserDataPlane
        from ..userspace.equivalence import CheckSetup, Equivalence
        from ..userspace.live import BatchGate, MapView, UserGuard, XskPoller

        if self.prog.type != ProgType.XDP:
            raise AgentError(f"program {self.prog.name}: the user-space backend runs XDP "
                             f"programs, not {ProgType(self.prog.type).name.lower()}")
        self._analyze()
        used = {i.reference for i in self.prog.program.insns if i.is_map_load}
        for name in sorted(used):
            mspec = self.spec.maps.get(name)
            if mspec is not None and mspec.type in _REFERENCES:
                raise AgentError(
                    f"program {self.prog.name} uses {mspec.type.name.lower()} {name!r}: "
                    "tail calls and maps of maps are not supported by `run --backend "
                    "userspace` yet (their slots hold kernel fds); use the kernel backend")
        remove_stale_tmp(self.state_file)
        self._write_state(phase="starting")
        sampling = self._sampling_specs()
        slots = max(self.guard_slots.values(), default=0) + 1  # resolved inner maps share
        guard_spec = MapSpec(GUARD_MAP, MapType.ARRAY, 4, 8 * slots, 1)
        private = {GUARD_MAP: guard_spec, **sampling}
        # Kernel maps of the same layout: what the verifier judges every version against.
        coll = load_collection(self.spec, programs=[])
        self._owned.append(coll)
        self.btf_fd = coll.btf_fd
        self.kernel_maps = dict(coll.maps)
        for name, mspec in private.items():
            m = create_map(mspec)
            self.kernel_maps[name] = m
            self._owned.append(m)
        self.plane = UserDataPlane.create(self.spec, extra_maps=private)
        self.gate = BatchGate()
        self.maps = {name: MapView(name, m, self.gate) for name, m in self.plane.maps.items()}
        self.guard = UserGuard(self.maps[GUARD_MAP], slots)  # type: ignore[assignment]
        base = self._load_version(self._base_program(instrumented=True), "base",
                                  self.layout.sites, sampling=self.layout)
        self.ifindex = self._ifindex()
        with self._in_netns():
            self.port = XskPort(self.plane, base.program, self.ifindex,
                                XskOptions(native=self.options.xdp_mode == "native"))
        self.poller = XskPoller(self.port, self.gate, cpu=self.poller_cpu)
        self._set_current(base)
        plain = self._base_program(instrumented=False)
        self._verify(plain)  # it runs check packets in this process: the kernel judges it
        # The check plan's control-plane writes go to guarded maps: each check plane's own.
        guarded = [n for n in self.guard_slots if n in self.plane.maps]
        written = dict.fromkeys((*self.target.written_maps(), GUARD_MAP, *guarded))
        self.equivalence = Equivalence(CheckSetup(
            self.spec, self.plane, tuple(written), private, self.gate.paused, self.lock),
            plain)
        self.poller.start()
        self.reader = HeatReader(self.layout, self.maps, decay=self.options.decay)
        self._start_throughput()
        self._write_state()
        log.info(json.dumps({"event": "started", "backend": self.backend,
                             "program": self.prog.name, "iface": self.iface,
                             "version": self.current.number if self.current else None,
                             "analysis_ms": round(self.analysis_ms, 2)}))

    def _planned_pins(self) -> list[str]:
        return []  # nothing outlives the process

    def _write_state(self, phase: str = "running") -> None:
        current = self.current
        write_state(self.state_file, {
            "backend": self.backend, "object": str(self.object_path.resolve()),
            "program": self.prog.name, "iface": self.iface,
            "netns": self.netns.name if self.netns else None, "pid": os.getpid(),
            "phase": phase, "version": self._version_counter,
            "kind": current.kind if current is not None else None, "pins": []})

    # --- versions -----------------------------------------------------------------------

    def _verify(self, program: Program) -> int:
        """Load `program` into the kernel (never attached); the verifier's instruction
        count. Raises VerifierError when it is refused."""
        with load_program_spec(self.prog, self.kernel_maps, program=program,
                               btf_fd=self.btf_fd) as loaded:
            return loaded.info().verified_insns

    def _load_version(self, program: Program, kind: str, sampled: tuple[Any, ...],
                      **extra: Any) -> Version:
        loaded = self.plane.load(self.prog, self.kernel_maps, program=program,
                                 btf_fd=self.btf_fd)
        self._version_counter += 1
        # The cycle's "verify" phase is the kernel's verifier and the JIT: say how much of
        # it was the JIT (status: version.passes_ms).
        timings = {**extra.pop("timings_ms", {}), "jit": round(loaded.jit_ms, 3),
                   "jit_cpu": round(loaded.jit_cpu_ms, 3)}
        version = Version(self._version_counter, loaded, kind, time.time(),
                          insns=sum(i.width for i in program.insns), source=program,
                          timings_ms=timings, **extra)
        self._extras[version.number] = {ref: self.plane.maps[ref] for ref in loaded.maps_used
                                        if ref not in self.spec.maps and ref not in
                                        (GUARD_MAP, CTL_MAP, SAMPLES_MAP)}
        return version

    def _verifier_base(self) -> int | None:
        if getattr(self, "_base_cost", None) is None:
            with contextlib.suppress(KernelError, VerifierError):
                self._base_cost = self._verify(self._base_program(instrumented=False))
        return getattr(self, "_base_cost", None)

    def _ensure_extra_maps(self, specs: Mapping[str, MapSpec]) -> None:
        from ..userspace.live import MapView

        for name, mspec in specs.items():
            if name in (GUARD_MAP, CTL_MAP, SAMPLES_MAP):
                continue
            # Inlined values are frozen: every version gets fresh ones, in both worlds.
            kernel = create_map(mspec)
            old_kernel = self.kernel_maps.get(name)
            self.kernel_maps[name] = kernel
            self._owned.append(kernel)
            if old_kernel is not None and old_kernel in self._owned:
                self._owned.remove(old_kernel)
                old_kernel.close()
            old = self.plane.maps.get(name)
            self.plane.maps[name] = self.plane.create_map(name, mspec)
            self.maps[name] = MapView(name, self.plane.maps[name], self.gate)
            if old is not None and not self._bound(old):
                old.close()

    def _bound(self, umap: Any) -> bool:
        """Whether the running version's code reads `umap`."""
        running = self._extras.get(self.current.number, {}) if self.current else {}
        return any(m is umap for m in running.values())

    def _set_current(self, version: Version) -> None:
        version.stats_at_swap = self.poller.totals() if self.poller is not None else (0, 0)
        old, self.current = self.current, version
        if version.sampling is not None and hasattr(self, "reader"):
            self.reader.layout = version.sampling
        if old is not None and old.program is not version.program:
            self._retire(old)
        # Candidates refused after compiling (a failed check) were closed by the cycle.
        self.plane.programs = [p for p in self.plane.programs if p.compiled.module is not None]

    def _retire(self, version: Version) -> None:
        version.program.close()
        extras = self._extras.pop(version.number, {})
        live = {id(m) for m in self.plane.maps.values()}
        for m in extras.values():
            if id(m) not in live and not self._bound(m):
                m.close()

    def _swap(self, version: Version) -> None:
        with self.lock:
            self.last_swap_us = self.poller.swap(version.program)
            self._set_current(version)
            self._write_state()

    def _check_wanted(self) -> bool:
        return bool(self.options.check_frames or (self.poller and self.poller.frames))

    def _check_frames(self) -> list[bytes]:
        return [*list(self.poller.frames), *self.options.check_frames][:CHECK_PACKETS]

    def _check_equivalence(self, version: Version, result: Any = None) -> Any:
        """The kernel agent's check plan for the candidate `result`, run by the JIT."""
        assert version.source is not None
        with self._in_netns():
            plan = candidate_plan(self.check_inputs(result))
        outcome = self.equivalence.check(version.source, plan.packets, plan.writes)
        self.last_check = {"at": round(time.time(), 3), "version": version.number,
                           "packets": outcome.packets, "writes": len(plan.writes),
                           "equivalent": outcome.equivalent}
        self.last_check_writes = len(plan.writes)
        return outcome

    def _measure_instrumentation(self) -> None:
        """What sampling costs per packet on the live traffic: the plain and the instrumented
        base program take turns (three windows each), timed by the poller. Both are
        unspecialized, so consistency holds throughout; the running version is back when
        this returns."""
        self._next_measurement = time.monotonic() + 60.0
        assert self.current is not None
        totals = {"plain": [0, 0], "instrumented": [0, 0]}
        progs: dict[str, Any] = {}
        try:
            for kind in totals:
                progs[kind] = self.plane.load(
                    self.prog, self.kernel_maps, btf_fd=self.btf_fd,
                    program=self._base_program(instrumented=kind == "instrumented"))
            try:
                for window in range(6):
                    kind = ("plain", "instrumented")[window % 2]
                    with self.lock:
                        self.poller.swap(progs[kind])
                    before = self.poller.totals()
                    time.sleep(self.options.measure_window)
                    after = self.poller.totals()
                    totals[kind][0] += after[0] - before[0]
                    totals[kind][1] += after[1] - before[1]
                    if window == 0 and totals[kind][0] == 0:
                        self.instrumentation = {"state": "no traffic to measure on yet"}
                        return
            finally:
                with self.lock:
                    self.poller.swap(self.current.program)
        except (KernelError, VerifierError, OSError, RuntimeError) as exc:
            self.instrumentation = {"state": f"could not measure: {exc}"}
            return
        finally:
            for p in progs.values():
                p.close()
        self._record_instrumentation_cost(totals)

    def cycle(self) -> Any:
        """One cycle of the kernel agent's; first, a poller that stopped is an error (the
        interface's frames then wait in the ring, unprocessed)."""
        if self.poller is not None and self.poller.error and not self._poller_reported:
            self._poller_reported = True
            self.errors.append(f"AF_XDP poller stopped: {self.poller.error}")
            log.error(json.dumps({"event": "poller-stopped", "error": self.poller.error}))
        return super().cycle()

    # --- observability ------------------------------------------------------------------

    def _swap_mode(self) -> str:
        return "pointer"

    def _version_stats(self, current: Version) -> dict[str, Any]:
        """Frames the running version ran and ns per frame, timed by the poller per batch
        (batch overhead included; no per-packet clock reads)."""
        if self.poller is None:
            return {"run_stats": True}
        packets, ns = self.poller.totals()
        packets -= current.stats_at_swap[0]
        ns -= current.stats_at_swap[1]
        return {"run_stats": True, "packets": packets,
                "ns_per_packet": round(ns / packets, 1) if packets > 0 else None}

    def status(self) -> dict[str, Any]:
        out = super().status()
        out["pin_dir"] = None
        out["attach"] = "afxdp: the redirect program into an XSKMAP, this process's socket"
        out["run_stats"] = True
        if self.port is not None and self.poller is not None:
            gate = self.gate
            out["afxdp"] = {
                "ifindex": self.ifindex, "queue": 0, "mode": "copy",
                "redirect_program": "native" if self.options.xdp_mode == "native"
                else "generic",
                "verdicts": self.port.verdicts, "batches": self.poller.batches,
                "frames": self.poller.packets, "poller_error": self.poller.error,
                "pauses": gate.pauses,
                "pause_wait_us": round(gate.pause_wait_ns / max(1, gate.pauses) / 1000, 1),
                "sampled_frames": len(self.poller.frames)}
        out["check"] = self.last_check
        return out

    # --- teardown -----------------------------------------------------------------------

    def stop(self, *, detach: bool = False) -> None:
        """Stop the loop and the data plane: the interface's frames go to the kernel's
        stack again (nothing of a user-space data plane can outlive its process)."""
        self._stop_loop()
        if self.poller is not None:
            self.poller.stop()
        if self.port is not None:
            self.port.close()  # detaches the redirect program
            self.port = None
        if self.equivalence is not None:
            self.equivalence.close()
            self.equivalence = None
        if self.current is not None:
            self._retire(self.current)
            self.current = None
        if self.plane is not None:
            self.plane.close()
            self.plane = None
        self._close_owned()
        if self._agent_lock.held:
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()
        self._agent_lock.release()
