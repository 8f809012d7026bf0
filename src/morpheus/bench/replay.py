"""Per-packet cost by in-kernel trace replay.

The harness (morpheus/bpf/harness.bpf.c) is run by BPF_PROG_TEST_RUN in live-frames mode.
For every frame it copies the next trace packet into the frame (all bytes and the length),
calls the program under test, which is linked in as a BPF-to-BPF subprogram, records the
verdict and drops the frame. The harness is attached (generic XDP) to a veth that is down,
which takes the RCU grace period out of each BPF_PROG_TEST_RUN call; the calling thread is
pinned to one CPU, so per-CPU maps and LRU state behave as in one queue of a real NIC.

The kernel reports the average time per frame, harness included; `harness_overhead_ns`
measures the harness with an empty program under test, so it can be subtracted.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Self

from ..bpf import object_path
from ..ir import Program
from ..kernel import FD, Link, LoadedProgram, Map, load_btf, xdp_ctx
from ..kernel.cpu import pinned_cpu
from ..kernel.netns import NetNamespace
from ..kernel.prog import test_run
from ..loader import Collection, load_collection, load_program_spec
from ..obj import ObjectSpec, ProgramSpec, read_object
from ..obj.embed import embed
from ..obj.globals import with_globals
from ..uapi import F_TEST_XDP_LIVE_FRAMES, XDP_FLAGS_SKB_MODE

MAX_PKT_LEN = 1536
NUM_VERDICTS = 8
BATCH_SIZE = 256  # the kernel's maximum for live frames
_TRACE_VALUE = struct.Struct(f"<I{MAX_PKT_LEN}s")
_STATE = struct.Struct(f"<IIQQQ{NUM_VERDICTS}Q")
_RECORD = struct.Struct("<II")


class ReplayError(RuntimeError):
    """The replay could not run (a packet too large for the harness, a failed copy...)."""


@dataclass(frozen=True)
class ReplayResult:
    """One pass over the trace."""

    packets: int
    ns_per_packet: float  # kernel-measured, harness included
    verdicts: dict[int, int]  # XDP action → packets
    errors: int


def _harness_spec(count: int, **variables: int) -> ObjectSpec:
    spec = read_object(object_path("harness"))
    maps = dict(spec.maps)
    maps["trace"] = maps["trace"].with_changes(max_entries=count)
    maps["records"] = maps["records"].with_changes(max_entries=count)
    return with_globals(replace(spec, maps=maps), variables)


class Replay:
    """A program under test linked into the harness, with a trace loaded, ready to run.

    `guest` is the program's spec and `guest_maps` the live maps it uses (by the names its
    instructions refer to); `program` optionally replaces the spec's instructions (a
    specialized version). Close it (or use `with`) to release the kernel objects.

    Modes: the default replays the trace through the program; `redirect_ifindex` makes a
    traffic generator that transmits each packet on that device (no program under test);
    `sink` counts and times frames arriving from the wire (no trace).

    `share_trace_with` reuses another replay's trace, record and state maps (same frames):
    programs compared side by side then read the very same memory.
    """

    def __init__(self, guest: ProgramSpec | None, guest_btf: object,
                 guest_maps: Mapping[str, Map], frames: Sequence[bytes], *,
                 program: Program | None = None, record_latency: bool = False,
                 ingress_ifindex: int = 0, cpu: int = 0,
                 namespace: NetNamespace | None = None, redirect_ifindex: int = 0,
                 sink: bool = False, attach: bool = True,
                 share_trace_with: Replay | None = None, batch_size: int | None = None
                 ) -> None:
        if not sink:
            if not frames:
                raise ReplayError("the trace is empty")
            longest = max(len(f) for f in frames)
            if longest > MAX_PKT_LEN:
                raise ReplayError(
                    f"a packet of {longest} bytes exceeds the harness's {MAX_PKT_LEN}")
            if min(len(f) for f in frames) < 14:
                raise ReplayError("packets shorter than an Ethernet header cannot be replayed")
        self.frames = list(frames) if not sink else []
        # A generator feeding a veth must not outrun the peer's 256-frame ring: smaller
        # batches let the receiving side drain between flushes.
        self.batch_size = batch_size or (64 if redirect_ifindex else BATCH_SIZE)
        self.frame_len = max((len(f) for f in self.frames), default=0)
        self.cpu = cpu
        self.ingress_ifindex = ingress_ifindex
        self._own_ns = namespace is None
        self.namespace = namespace or NetNamespace.create("morpheus-replay")
        self._closers: list[object] = []
        self.link: Link | None = None
        self._shared = share_trace_with
        if share_trace_with is not None and share_trace_with.frames != self.frames:
            raise ReplayError("a shared trace must have the same frames")
        try:
            self._setup(guest, guest_btf, guest_maps, program,
                        {"record_latency": int(record_latency),
                         "redirect_ifindex": redirect_ifindex, "sink": int(sink)}, attach)
        except BaseException:
            self.close()
            raise

    def _setup(self, guest: ProgramSpec | None, guest_btf: object,
               guest_maps: Mapping[str, Map], program: Program | None,
               variables: dict[str, int], attach: bool) -> None:
        hspec = _harness_spec(max(1, len(self.frames)), **variables)
        shared = self._shared.harness.maps if self._shared is not None else None
        reuse = {n: m for n, m in (shared or {}).items() if n != ".rodata"}
        self.harness: Collection = load_collection(hspec, programs=[], maps=reuse)
        self._closers.append(self.harness)
        maps: dict[str, Map] = dict(self.harness.maps)
        host = hspec.programs["replay"]
        btf_fd: FD | None = None
        if guest is None:
            combined = host
            btf_fd = self.harness.btf_fd
        else:
            guest_spec = guest.with_program(program) if program is not None else guest
            embedded = embed(host, hspec.btf, "prog_under_test", guest_spec,
                             guest_btf)  # type: ignore[arg-type]
            if embedded.btf is not None:
                btf_fd = load_btf(embedded.btf.blob(), what="merged BTF of harness and program")
                self._closers.append(btf_fd)
            for name, renamed in embedded.guest_maps.items():
                if name not in guest_maps:
                    raise ReplayError(
                        f"program {guest.name} uses map {name!r}, which was not given")
                maps[renamed] = guest_maps[name]
            combined = embedded.spec
        self.program: LoadedProgram = load_program_spec(combined, maps, btf_fd=btf_fd,
                                                        name="replay")
        self._closers.append(self.program)
        self.instructions = combined.insn_count
        if attach:
            # Attached (generic XDP) to a veth that is down, the program counts as attached,
            # which skips the RCU wait of BPF_PROG_TEST_RUN on a detached XDP program.
            dev = self._new_device()
            with self.namespace.entered():
                self.link = Link.xdp(self.program, self.namespace.ifindex(dev),
                                     XDP_FLAGS_SKB_MODE)
            self._closers.append(self.link)
        if self.frames and self._shared is None:
            self._load_trace()
        else:
            self.reset()

    def _new_device(self) -> str:
        # Devices are reused once their replay is closed: creating interfaces sets off
        # kernel work (netlink, address configuration) that would disturb measurements.
        pool = _FREE_DEVICES.setdefault(self.namespace.name, [])
        if pool:
            name = pool.pop()
        else:
            name = f"rp{next(_DEVICES)}"
            self.namespace.add_veth(name, name + "p", up=False)
        self._device = name
        return name

    def _load_trace(self) -> None:
        trace = self.harness.maps["trace"]
        entries = [(i, _TRACE_VALUE.pack(len(f), f)) for i, f in enumerate(self.frames)]
        for start in range(0, len(entries), 4096):
            trace.update_batch(entries[start:start + 4096])
        self.reset()

    def reset(self) -> None:
        """Restart at packet 0 with zeroed counters."""
        count = max(1, len(self.frames))
        state = _STATE.pack(0, count, 0, 0, 0, *([0] * NUM_VERDICTS))
        self.harness.maps["hstate"].update(0, state)

    def state(self) -> dict[str, object]:
        raw = self.harness.maps["hstate"].lookup(0)
        assert isinstance(raw, bytes)
        nxt, count, frames, errors, total_ns, *verdicts = _STATE.unpack(raw)
        return {"next": nxt, "count": count, "frames": frames, "errors": errors,
                "total_ns": total_ns, "verdicts": {v: n for v, n in enumerate(verdicts) if n}}

    def run(self, passes: int = 1, *, reset: bool = True) -> ReplayResult:
        """Replay the whole trace `passes` times, one BPF_PROG_TEST_RUN call per pass."""
        if reset:
            self.reset()
        count = len(self.frames)
        ctx = None
        if self.ingress_ifindex:
            ctx = xdp_ctx(self.ingress_ifindex, self.frame_len)
        total_ns = 0.0
        with pinned_cpu(self.cpu), self.namespace.entered():
            for _ in range(passes):
                result = test_run(self.program.fd, bytes(self.frame_len), repeat=count,
                                  ctx=ctx, ctx_out_size=0, data_out_size=0,
                                  flags=F_TEST_XDP_LIVE_FRAMES, batch_size=self.batch_size)
                total_ns += result.duration_ns
        st = self.state()
        if st["errors"]:
            raise ReplayError(f"{st['errors']} of {st['frames']} frames could not be filled "
                              "with their packet")
        return ReplayResult(int(st["frames"]), total_ns / passes,  # type: ignore[arg-type]
                            st["verdicts"], 0)  # type: ignore[arg-type]

    def records(self) -> list[tuple[int, int]]:
        """(verdict, ns) of each packet in the last pass (ns is 0 without record_latency)."""
        out: list[tuple[int, int]] = [(0, 0)] * len(self.frames)
        for key, value in self.harness.maps["records"].lookup_batch(batch_size=4096):
            assert isinstance(value, bytes)
            index = struct.unpack("<I", key)[0]
            if index < len(out):
                out[index] = _RECORD.unpack(value)
        return out

    def verdicts(self) -> list[int]:
        return [v for v, _ in self.records()]

    def close(self) -> None:
        for obj in reversed(self._closers):
            obj.close()  # type: ignore[attr-defined]
        self._closers.clear()
        device = getattr(self, "_device", None)
        if device is not None and not self._own_ns:
            _FREE_DEVICES.setdefault(self.namespace.name, []).append(device)
            self._device = None
        if self._own_ns:
            self.namespace.delete()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_DEVICES = itertools.count()
_FREE_DEVICES: dict[str, list[str]] = {}  # namespace → veths no replay is attached to


def latency_percentiles(ns: Sequence[int]) -> dict[str, float]:
    """p50/p99/p99.9 of per-packet times (nearest rank)."""
    if not ns:
        return {"p50": 0.0, "p99": 0.0, "p999": 0.0}
    ordered = sorted(ns)

    def pct(p: float) -> float:
        rank = min(len(ordered) - 1, max(0, math.ceil(p * len(ordered) / 100 - 1e-9) - 1))
        return float(ordered[rank])

    return {"p50": pct(50), "p99": pct(99), "p999": pct(99.9)}


def verdict_counts(verdicts: Sequence[int]) -> dict[int, int]:
    return dict(sorted(Counter(verdicts).items()))
