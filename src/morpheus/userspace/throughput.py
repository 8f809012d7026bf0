"""End-to-end throughput over a veth pair: AF_XDP into the user-space program, against the
same program in native XDP, on the same pair, with the same generator.

The generator is the kernel benchmarks' (bench.throughput: live frames transmitted on one
end, pinned to one CPU). On the other end, either the kernel runs the program (counting sink,
bench.throughput.Throughput) or our redirect program hands every frame to an AF_XDP socket
whose receive ring a poller thread on the other CPU drains through the JIT-compiled program
(`XskPort.poll`). Frames the ring had no room for are lost, and counted as loss.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..bench.replay import Replay
from ..kernel.netns import NetNamespace
from .afxdp import XskOptions, XskPort
from .dataplane import UserDataPlane, UserProgram


@dataclass(frozen=True)
class XskResult:
    sent: int
    processed: int
    seconds: float

    @property
    def mpps(self) -> float:
        return self.processed / self.seconds / 1e6 if self.seconds else 0.0

    @property
    def loss(self) -> float:
        return 1 - self.processed / self.sent if self.sent else 0.0


def xsk_throughput(plane: UserDataPlane, program: UserProgram, frames: list[bytes],
                   namespace: NetNamespace, rx_dev: str, tx_dev: str, *,
                   generator_cpu: int = 0, poller_cpu: int = 1, min_packets: int = 100_000,
                   settle: float = 0.05) -> XskResult:
    passes = max(1, -(-min_packets // len(frames)))
    sent = passes * len(frames)
    with namespace.entered():
        options = XskOptions(ring_size=4096, frames=8192, native=True)
        port = XskPort(plane, program, namespace.ifindex(rx_dev), options)
        generator = Replay(None, None, {}, frames, namespace=namespace,
                           redirect_ifindex=namespace.ifindex(tx_dev), cpu=generator_cpu)
    stop = threading.Event()
    counts = {"processed": 0, "last": 0.0}

    def poller() -> None:
        os.sched_setaffinity(0, {poller_cpu})
        while not stop.is_set():
            n = port.poll(256)
            if n:
                counts["processed"] += n
                counts["last"] = time.perf_counter()

    thread = threading.Thread(target=poller, daemon=True)
    try:
        thread.start()
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {generator_cpu})
        try:
            start = time.perf_counter()
            generator.run(passes)
            generated = time.perf_counter()
        finally:
            os.sched_setaffinity(0, before)
        deadline = generated + settle
        while counts["processed"] < sent and time.perf_counter() < deadline:
            time.sleep(0.001)
        stop.set()
        thread.join(timeout=2)
        end = max(generated, counts["last"])
        return XskResult(sent, counts["processed"], end - start)
    finally:
        stop.set()
        generator.close()
        port.close()


def afxdp_vs_kernel(nf_name: str, *, profile: str = "high", packets: int = 2000,
                    rounds: int = 3, seed: int = 1) -> dict[str, Any]:
    """The NF's generic program over the veth pair its trace arrives on: AF_XDP into user
    space and native XDP in the kernel, alternating, `rounds` times each."""
    from ..bench.compare import _throughput_devices, spread
    from ..bench.throughput import Throughput
    from ..nf import get
    from ..traffic.generate import generate
    from ..world.environment import Subject, open_environment, warm_up

    nf = get(nf_name)
    trace = generate(nf, profile, packets, seed)
    subject = Subject("original", nf.object_path, nf.program)
    env = open_environment(subject, nf)
    user, kernel = [], []
    try:
        warm_up(env, subject, trace)
        rx, tx = _throughput_devices(trace.main_ingress)
        with UserDataPlane.create(env.spec) as plane:
            plane.copy_from_kernel(env.maps)
            with env.namespace.entered():
                prog = plane.load(subject.program_spec(), env.maps, btf_fd=env.btf_fd)
            with Throughput(subject.program_spec(), env.spec.btf, env.maps, trace.frames,
                            env.namespace, rx, tx) as measure:
                for _ in range(rounds):
                    user.append(xsk_throughput(plane, prog, trace.frames, env.namespace, rx,
                                               tx))
                    kernel.append(measure.run())
    finally:
        env.close()
    return {"nf": nf_name, "rounds": rounds,
            "afxdp_mpps": spread([r.mpps for r in user]),
            "afxdp_loss": spread([r.loss for r in user]),
            "kernel_mpps": spread([r.mpps for r in kernel]),
            "kernel_loss": spread([r.loss for r in kernel]),
            "afxdp_over_kernel": spread([u.mpps / k.mpps for u, k in zip(user, kernel,
                                                                         strict=True)])}
