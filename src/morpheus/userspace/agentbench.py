"""`python -m morpheus.userspace.agentbench`: the user-space agent on live traffic.

The router under `runtime.useragent.UserspaceAgent` on a veth pair in a namespace of its
own, fed by the live-frames generator at a fixed rate (`bench.send`), reached through its
control plane like any user's. Measured, in one run:

- the cycle that specializes it (phases, JIT time, the pre-swap check);
- ns per frame as the AF_XDP poller times its batches (ring handling, the program and the
  copy-mode transmit of XDP_TX frames included), the generic (instrumented base) and the
  specialized version taking turns on the same traffic, `windows` pairs, ratio per pair;
- the swap call and the pause a control-plane write waits for (the batch in flight);
- `Agent.update` latency, through the gate (bump, write, bump).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any

from ..bench.compare import spread
from ..bench.send import Sender, SendRequest
from ..kernel.netns import NetNamespace
from ..nf import get
from ..nf.router import Config, Interface, NextHop, Route
from ..traffic import packet as pkt

ROUTER_MAC = bytes.fromhex("02000000aa01")


def _frames(count: int) -> list[bytes]:
    out = []
    for n in range(count):
        dst = f"20.0.{n % 8 if n % 4 == 0 else n % 3}.{1 + n % 200}"
        l4 = pkt.udp("30.0.0.1", dst, 1000 + n % 50000, 53, bytes(18))
        out.append(pkt.ethernet(ROUTER_MAC, bytes.fromhex("02000000bb01"), pkt.ETH_P_IP,
                                pkt.ipv4("30.0.0.1", dst, pkt.IPPROTO_UDP, l4)))
    return out


def run(*, rate: float = 50_000, windows: int = 5, window_s: float = 0.5,
        writes: int = 200) -> dict[str, Any]:
    from ..runtime.agent import AgentOptions
    from ..runtime.useragent import UserspaceAgent

    nf = get("router")
    ns = NetNamespace.create("morpheus-uab")
    try:
        ns.add_veth("ua", "ub")
        with ns.entered():
            for iface in ("ua", "ub"):
                with open(f"/proc/sys/net/ipv6/conf/{iface}/disable_ipv6", "w") as f:
                    f.write("1")
        ifindex = ns.ifindex("ua")
        config = Config((Interface(ifindex, ROUTER_MAC),),
                        (NextHop(0, ifindex, bytes.fromhex("02000000cc01")),
                         NextHop(1, ifindex, bytes.fromhex("02000000cc02"))),
                        tuple(Route(pkt.ip4(f"20.0.{s}.0"), 24, s % 2) for s in range(8)))
        agent = UserspaceAgent(nf.object_path, iface="ua", netns=ns.name,
                               name=f"uab{int(time.time()) % 100000}",
                               options=AgentOptions(measure_instrumentation=False))
        agent.start()
        stop = threading.Event()
        try:
            nf.control_plane(agent.control_maps()).apply(config)
            frames = _frames(2000)

            def traffic() -> None:
                while not stop.is_set():
                    Sender(SendRequest(frames, "ub", ns, rate, 5)).send()

            sender = threading.Thread(target=traffic, daemon=True)
            sender.start()
            time.sleep(1.0)
            report = agent.cycle()
            if agent.current is None or agent.current.kind != "specialized":
                raise RuntimeError(f"no specialized version: {report.reason}")
            specialized = agent.current.program
            generic = agent.plane.load(agent.prog, agent.kernel_maps, btf_fd=agent.btf_fd,
                                       program=agent._base_program(instrumented=True))
            ns_frame: dict[str, list[float]] = {"generic": [], "specialized": []}
            ratios = []
            try:
                for n in range(windows):
                    pair = {}
                    order = ("generic", "specialized") if n % 2 == 0 else \
                        ("specialized", "generic")
                    for kind in order:
                        with agent.lock:
                            agent.poller.swap(generic if kind == "generic" else specialized)
                        p0, t0 = agent.poller.totals()
                        time.sleep(window_s)
                        p1, t1 = agent.poller.totals()
                        pair[kind] = (t1 - t0) / max(1, p1 - p0)
                        ns_frame[kind].append(pair[kind])
                    ratios.append(pair["generic"] / pair["specialized"])
            finally:
                with agent.lock:
                    agent.poller.swap(specialized)
                generic.close()
            swaps = []
            for _ in range(20):
                swaps.append(agent.poller.swap(specialized))
            pauses_before = (agent.gate.pauses, agent.gate.pause_wait_ns)
            latencies = []
            for _ in range(writes):
                t = time.perf_counter()
                agent.update("rt_nexthops", (1).to_bytes(4, "little"),
                             ifindex.to_bytes(4, "little") + (1).to_bytes(4, "little")
                             + bytes.fromhex("02000000cc02") + ROUTER_MAC)
                latencies.append((time.perf_counter() - t) * 1000)
            pauses = agent.gate.pauses - pauses_before[0]
            wait_us = (agent.gate.pause_wait_ns - pauses_before[1]) / max(1, pauses) / 1000
            status = agent.status()
        finally:
            stop.set()
            agent.stop()
    finally:
        ns.delete()
    return {
        "nf": "router", "rate_pps": rate, "windows": windows, "window_s": window_s,
        "specialize_cycle_ms": report.timings_ms,
        "jit_ms": status["version"]["passes_ms"].get("jit"),
        "check": status.get("check"),
        "ns_per_frame_generic": spread(ns_frame["generic"], 1),
        "ns_per_frame_specialized": spread(ns_frame["specialized"], 1),
        "generic_over_specialized": spread(ratios),
        "swap_call_us": spread(swaps, 2),
        "update_ms": {"median": round(statistics.median(latencies), 3),
                      "max": round(max(latencies), 3), "writes": writes},
        "pause_wait_us_per_pause": round(wait_us, 1),
        "afxdp": status.get("afxdp"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=50_000, help="packets per second sent")
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--window", type=float, default=0.5, help="seconds per A or B window")
    args = p.parse_args()
    print(json.dumps(run(rate=args.rate, windows=args.windows, window_s=args.window),
                     indent=2))


if __name__ == "__main__":
    main()
