"""Transmitting a user's trace into an interface with the live-frames generator.

The replay harness in generator mode (see bench/replay.py) copies each trace packet into a
live frame and redirects it to the device; BPF_PROG_TEST_RUN runs it in bursts. Rate
limiting paces the bursts against the clock: packet n is not handed to the kernel before
`start + n / rate`, so the achieved rate is what the clock says, never more than asked
(apart from the last burst's rounding), and less when the machine cannot keep up — the
report shows the measured one.

A frame the device could not queue (a veth whose peer's ring is full, or whose peer runs
no XDP program) is not sent: where the driver counts such refusals (veth's
`*xdp_xmit_errors`), they are subtracted and reported.

The generator is attached (generic XDP) to a veth that is down in a private namespace: an
attached program skips the RCU wait that BPF_PROG_TEST_RUN otherwise pays on every call
(the XDP dispatcher is global, so the attachment need not be on the target device), and the
user's namespace gets no helper devices.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from ..kernel import KernelError, Link
from ..kernel.ethtool import ethtool_stats, gro_enabled
from ..kernel.netns import NetNamespace
from ..kernel.prog import test_run
from ..uapi import F_TEST_XDP_LIVE_FRAMES, XDP_FLAGS_SKB_MODE
from .replay import MAX_PKT_LEN, Replay, ReplayError

# Packets loaded into the generator's trace map at a time (each slot holds MAX_PKT_LEN
# bytes: 64 Ki packets take ~100 MB of kernel memory); longer traces go window by window.
WINDOW = 65_536
# The veth ring holds 256 frames; smaller flushes let the receiver drain in between.
FLUSH_BATCH = 64
# Unpaced bursts stay short enough for Ctrl-C and progress to be prompt.
MAX_BURST = 65_536


class SendError(RuntimeError):
    """The trace cannot be sent (bad packets, unknown device, the device refuses frames)."""


@dataclass(frozen=True)
class SendRequest:
    """What to send where: `loops` times over `frames` (0: until interrupted), paced to
    `rate_pps` packets per second if given."""

    frames: Sequence[bytes]
    iface: str
    namespace: NetNamespace = field(default_factory=NetNamespace.current)
    rate_pps: float | None = None
    loops: int = 1


@dataclass(frozen=True)
class SendResult:
    iface: str
    netns: str | None
    packets_in_trace: int
    loops: int  # completed passes over the trace
    generated: int  # frames the generator handed to the device
    refused: int | None  # of those, refused by the device (None: the driver does not say)
    bytes: int
    seconds: float
    target_pps: float | None
    interrupted: bool

    @property
    def sent(self) -> int:
        return self.generated - (self.refused or 0)

    @property
    def pps(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"iface": self.iface, "netns": self.netns,
                "packets_in_trace": self.packets_in_trace, "loops": self.loops,
                "sent": self.sent, "generated": self.generated, "refused": self.refused,
                "bytes": self.bytes, "seconds": round(self.seconds, 6),
                "pps": round(self.pps, 1), "target_pps": self.target_pps,
                "mbps": round(self.bytes * 8 / self.seconds / 1e6, 3) if self.seconds else 0.0,
                "interrupted": self.interrupted}


def _check_frames(frames: Sequence[bytes]) -> None:
    if not frames:
        raise SendError("the trace has no packets")
    for i, frame in enumerate(frames):
        if len(frame) < 14:
            raise SendError(f"packet {i} has {len(frame)} bytes: shorter than an Ethernet "
                            "header")
        if len(frame) > MAX_PKT_LEN:
            raise SendError(f"packet {i} has {len(frame)} bytes; the generator sends at most "
                            f"{MAX_PKT_LEN} (jumbo frames and TSO-sized captures are not "
                            "supported)")


def _refused_frames(namespace: NetNamespace, iface: str) -> int | None:
    with namespace.entered():
        try:
            stats = ethtool_stats(iface)
        except KernelError:
            return None
    counters = [v for k, v in stats.items() if k.endswith("xdp_xmit_errors")]
    return sum(counters) if counters else None


def _check_veth_peer(namespace: NetNamespace, iface: str) -> None:
    # A veth drops frames redirected into it, uncounted, unless its peer can take them
    # (NAPI on, which an XDP program or GRO turns on): say so rather than report them sent.
    peer = namespace.veth_peer(iface)
    if peer is None or namespace.xdp_program_id(peer):
        return
    with namespace.entered():
        if gro_enabled(peer):
            return
    raise SendError(f"{iface} is a veth whose peer {peer} runs no XDP program and has GRO "
                    f"off: the kernel would drop every frame without counting it (attach an "
                    f"XDP program to {peer}, or `ethtool -K {peer} gro on`)")


class Sender:
    """Paced transmission of a trace; `send()` does the work (see the module docstring)."""

    def __init__(self, request: SendRequest,
                 clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        _check_frames(request.frames)
        if request.loops < 0:
            raise SendError("--loop must be 0 (until interrupted) or a positive count")
        if request.rate_pps is not None and request.rate_pps <= 0:
            raise SendError("--rate must be a positive number of packets per second")
        self.request = request
        self.ifindex = request.namespace.ifindex(request.iface)
        _check_veth_peer(request.namespace, request.iface)
        self.clock = clock
        self.sleep = sleep
        self.generated = 0
        self.bytes = 0

    def send(self) -> SendResult:
        req = self.request
        frames = req.frames
        windows = [frames[i:i + WINDOW] for i in range(0, len(frames), WINDOW)]
        refused_before = _refused_frames(req.namespace, req.iface)
        interrupted = False
        with ExitStack() as stack:
            helper = NetNamespace.create("morpheus-send")
            stack.callback(helper.delete)
            helper.add_veth("gen0", "gen0p", up=False)
            # One generator for a trace that fits a window, kept for every loop.
            reusable = self._generator(windows[0], helper, stack) if len(windows) == 1 else None
            start = self.clock()
            try:
                for _ in itertools.count() if req.loops == 0 else range(req.loops):
                    for window in windows:
                        if reusable is not None:
                            self._transmit(reusable, window, start)
                        else:
                            with ExitStack() as inner:
                                self._transmit(self._generator(window, helper, inner),
                                               window, start)
            except KeyboardInterrupt:
                interrupted = True
            elapsed = self.clock() - start
        # The last frames leave the ring after the last call returns.
        refused = None
        if refused_before is not None:
            time.sleep(0.01)
            after = _refused_frames(req.namespace, req.iface)
            refused = after - refused_before if after is not None else None
        if self.generated and refused == self.generated:
            raise SendError(
                f"{req.iface} refused all {refused} frames: a veth takes XDP frames only "
                "while its peer runs an XDP program (or has GRO enabled)")
        return SendResult(req.iface, None if req.namespace.path else req.namespace.name,
                          len(frames), self.generated // len(frames), self.generated,
                          refused, self.bytes, elapsed, req.rate_pps, interrupted)

    def _generator(self, window: Sequence[bytes], helper: NetNamespace,
                   stack: ExitStack) -> Replay:
        try:
            gen = stack.enter_context(Replay(None, None, {}, window,
                                             namespace=self.request.namespace,
                                             redirect_ifindex=self.ifindex, attach=False,
                                             batch_size=FLUSH_BATCH))
        except ReplayError as exc:
            raise SendError(str(exc)) from None
        with helper.entered():
            stack.enter_context(Link.xdp(gen.program, helper.ifindex("gen0"),
                                         XDP_FLAGS_SKB_MODE))
        return gen

    def _transmit(self, gen: Replay, window: Sequence[bytes], start: float) -> None:
        """One pass over `window` (the generator restarts at its first packet).

        What was sent is read back from the harness's own frame counter when the pass ends,
        also when Ctrl-C interrupts it: an interrupt between a call and the bookkeeping
        after it cannot make the count wrong."""
        gen.reset()
        rate = self.request.rate_pps
        # Paced: bursts of about a millisecond's worth of packets.
        burst_max = max(1, min(MAX_BURST, int(rate / 1000))) if rate else MAX_BURST
        base = self.generated
        done = 0
        frame = bytes(gen.frame_len)
        try:
            with self.request.namespace.entered():
                while done < len(window):
                    burst = min(burst_max, len(window) - done)
                    if rate:
                        due = start + (base + done + burst - 1) / rate
                        wait = due - self.clock()
                        if wait > 0:
                            self.sleep(wait)
                    test_run(gen.program.fd, frame, repeat=burst, ctx_out_size=0,
                             data_out_size=0, flags=F_TEST_XDP_LIVE_FRAMES,
                             batch_size=min(FLUSH_BATCH, burst))
                    done += burst
        finally:
            # A second Ctrl-C must not cut the bookkeeping short: held until it is done.
            held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                state = gen.state()
                frames = int(state["frames"])  # type: ignore[call-overload]
                self.generated = base + frames
                self.bytes += sum(len(f) for f in window[:frames])
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
        if state["errors"]:
            raise SendError(f"{state['errors']} frames could not be filled with their packet")
