"""The user-space data plane while it serves an interface: batches, pauses, map access.

One poller thread drains the AF_XDP receive ring in native batches (`XskPort.poll`). The
runtime's maps are plain memory with no locking of their own, so everything else that
touches them from Python (control-plane writes, the agent's heat reads and snapshots, the
swap of the program) runs *between* two batches: `BatchGate.paused()` waits for the batch in
flight to end and holds the next one back until the caller is done. A batch reads the
program's entry address once, when it starts, so replacing `XskPort.program` inside a pause
is the atomic pointer swap: every frame of a batch runs one version, the next batch the
other, and no frame is lost or run twice.

`MapView` gives the agent a `kernel.Map`-like face on a `UserMap` (lookup, items, batch
lookups, count, writes) whose every operation is made inside a pause. `UserGuard` is the
guard-version array the specialized code checks, bumped between batches (no native code
runs then, so a read-modify-write cannot undo a data-plane bump). `XskPoller` is the poller
thread: it times every batch (ns/packet per version, for `status`) and copies a few of the
frames it is about to run (before the program sees them) for the agent's pre-swap check.
"""

from __future__ import annotations

import contextlib
import ctypes
import select
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from ..uapi import MapType
from .afxdp import XskPort
from .dataplane import UserProgram
from .maps import ARRAYS, UserMap, UserMapError

_ENOENT = 2
_DESC = struct.Struct("<QII")  # struct xdp_desc: addr, len, options


class BatchGate:
    """Lets other threads run between the poller's batches (never during one)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._exclusive = threading.RLock()  # one pausing thread at a time (re-entrant)
        self._depth = 0
        self._holding = False  # a pause is in force: no batch may start
        self._running = False  # a batch is in flight
        self.pauses = 0
        self.pause_wait_ns = 0  # time pausers spent waiting for a batch to end

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """The poller's side: one batch, started only when nobody holds a pause."""
        with self._cond:
            while self._holding:
                self._cond.wait()
            self._running = True
        try:
            yield
        finally:
            with self._cond:
                self._running = False
                self._cond.notify_all()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Everyone else's side: no batch runs until the block ends."""
        with self._exclusive:
            self._depth += 1
            try:
                if self._depth == 1:
                    started = time.perf_counter_ns()
                    with self._cond:
                        self._holding = True
                        while self._running:
                            self._cond.wait()
                    self.pauses += 1
                    self.pause_wait_ns += time.perf_counter_ns() - started
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    with self._cond:
                        self._holding = False
                        self._cond.notify_all()


class MapView:
    """A UserMap seen through the gate, with the slice of `kernel.Map`'s API the agent, the
    heat reader, the snapshot and the NF control planes use."""

    def __init__(self, name: str, umap: UserMap, gate: BatchGate) -> None:
        self.name = name
        self.umap = umap
        self.gate = gate
        self.key_size = umap.key_size
        self.value_size = umap.value_size
        self.max_entries = umap.max_entries
        self.type = umap.type
        self.writes = 0  # through this view: a copy of the map is stale when it moved

    def lookup(self, key: bytes | int) -> bytes | list[bytes] | None:
        with self.gate.paused():
            return self.umap.lookup(key)

    def update(self, key: bytes | int, value: Any, flags: int = 0) -> None:
        if isinstance(value, int):
            value = value.to_bytes(self.value_size, "little")
        with self.gate.paused():
            self.writes += 1
            self.umap.update(key, value, flags)

    def delete(self, key: bytes | int) -> None:
        with self.gate.paused():
            self.writes += 1
            try:
                self.umap.delete(key)
            except UserMapError as exc:
                if exc.errno == _ENOENT:
                    raise KeyError(key) from None
                raise

    def update_batch(self, entries: list[tuple[bytes | int, Any]]) -> int:
        with self.gate.paused():
            for key, value in entries:
                self.update(key, value)
        return len(entries)

    def items(self) -> Iterator[tuple[bytes, bytes | list[bytes]]]:
        with self.gate.paused():
            if self.umap.type in ARRAYS:
                entries = [(n.to_bytes(4, "little"), v)
                           for n, v in enumerate(self.umap.array_values())]
            else:
                entries = list(self.umap.items())
        return iter(entries)

    def keys(self) -> Iterator[bytes]:
        return (k for k, _ in self.items())

    def lookup_batch(self, batch_size: int = 4096) -> list[tuple[bytes, Any]]:
        return list(self.items())

    def count(self, limit: int | None = None, batch_size: int = 4096) -> int:
        n = sum(1 for _ in self.items())
        return min(n, limit) if limit is not None else n

    def close(self) -> None:
        self.umap.close()


class UserGuard:
    """The guard versions (one u64 per guarded map) in the user-space array named GUARD_MAP."""

    def __init__(self, view: MapView, slots: int) -> None:
        self.map = view
        self.slots = max(1, slots)

    def versions(self) -> list[int]:
        raw = self.map.lookup(0)
        assert isinstance(raw, bytes)
        return list(struct.unpack(f"<{self.slots}Q", raw))

    def bump(self, slot: int) -> None:
        """Add one to `slot`, between batches (the data plane's own atomic bumps run inside
        batches only, so this read-modify-write loses none)."""
        if not 0 <= slot < self.slots:
            raise IndexError(f"guard slot {slot} out of range (0..{self.slots - 1})")
        with self.map.gate.paused():
            raw = bytearray(self.map.umap.lookup(0))  # type: ignore[arg-type]
            value = int.from_bytes(raw[8 * slot:8 * slot + 8], "little") + 1
            raw[8 * slot:8 * slot + 8] = value.to_bytes(8, "little")
            self.map.umap.update(0, bytes(raw))

    def close(self) -> None:
        pass  # the view's map belongs to the data plane


class XskPoller:
    """The thread that serves an XskPort: batches under the gate, timed; frames sampled."""

    def __init__(self, port: XskPort, gate: BatchGate, *, budget: int = 256,
                 keep_frames: int = 512, sample_every: int = 8, cpu: int | None = None
                 ) -> None:
        self.port = port
        self.gate = gate
        self.budget = budget
        self.sample_every = sample_every
        self.cpu = cpu
        self.frames: deque[bytes] = deque(maxlen=keep_frames)  # recent input frames
        self.packets = 0  # frames run, all versions
        self.busy_ns = 0  # time spent in batches that ran frames
        self.batches = 0  # batches that ran frames
        self.error: str | None = None
        self._since_sample = sample_every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> XskPoller:
        self._thread = threading.Thread(target=self._run, name="morpheus-xsk-poller",
                                        daemon=True)
        self._thread.start()
        return self

    def swap(self, program: UserProgram) -> float:
        """Make `program` the one the next batch runs; returns the µs the swap itself took
        (the pointer store, once the batch in flight ended)."""
        with self.gate.paused():
            started = time.perf_counter()
            self.port.program = program
            return (time.perf_counter() - started) * 1e6

    def totals(self) -> tuple[int, int]:
        """(frames run, ns spent running them): read between batches, so consistent."""
        with self.gate.paused():
            return self.packets, self.busy_ns

    def _run(self) -> None:
        import os

        if self.cpu is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {self.cpu})
        poller = select.poll()
        poller.register(self.port.fd, select.POLLIN)
        try:
            while not self._stop.is_set():
                with self.gate.batch():
                    # One batch with frames in `sample_every` gives a few of them to the
                    # pre-swap check (empty polls do not count).
                    sampled = self._since_sample >= self.sample_every and self._sample()
                    started = time.perf_counter_ns()
                    n = self.port.poll(self.budget)
                    if n:
                        self.busy_ns += time.perf_counter_ns() - started
                        self.packets += n
                        self.batches += 1
                        self._since_sample = 0 if sampled else self._since_sample + 1
                if not n:
                    poller.poll(5)  # wait for frames outside the gate (ms)
        except Exception as exc:  # the agent reports it; the interface falls back to nothing
            self.error = f"{type(exc).__name__}: {exc}"

    def _sample(self) -> bool:
        """Copy up to 4 of the frames waiting in the receive ring (before they run); whether
        there were any."""
        x = self.port.xsk
        cons = ctypes.c_uint32.from_address(x.rx_cons).value
        prod = ctypes.c_uint32.from_address(x.rx_prod).value
        umem = self.port.umem.address
        waiting = (prod - cons) & 0xFFFFFFFF
        for i in range(min(waiting, 4)):
            desc = ctypes.string_at(x.rx + ((cons + i) & x.rx_mask) * _DESC.size, _DESC.size)
            addr, length, _ = _DESC.unpack(desc)
            if 14 <= length <= 2048:
                self.frames.append(ctypes.string_at(umem + addr, length))
        return waiting > 0

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def copy_map(src: UserMap, dst: UserMap) -> None:
    """Make `dst` hold what `src` holds (same layout; call between batches)."""
    if src.type in ARRAYS:
        dst.load_array_raw(src.array_raw())
        return
    if src.type in (MapType.PROG_ARRAY, MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS):
        raise UserMapError(f"map {src.name}: copying maps of references is not supported")
    dst.clear()
    for key, value in src.items():
        dst.update(key, value)
