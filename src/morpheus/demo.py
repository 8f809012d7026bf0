"""`morpheus demo`: the router under changing traffic, without and with Morpheus.

Two identical namespaces with veth pairs; in each, the router (default configuration: 5,000
routes) runs in native XDP on one veth, and a traffic generator (the replay harness in
generator mode, live frames) transmits trace packets into its peer from core 0. In one
namespace the router is the unoptimized object; in the other it runs under the agent
(`morpheus run`, a separate process on the other core). Three phases: no locality, high
locality, and high locality with a new hot set, like the dynamic-traffic experiment of the
Morpheus paper. Within each phase the generator alternates between the two routers in
0.25 s slices, so that both see the same phase at the same time and the drift of a shared
VM falls on both alike. Each slice's throughput is read from the router interface's own
counters over netlink: the source `morpheus status`, the live view and the metrics use.
Along the way the demo checks the consistency guarantees on the live program: a route
changed through the agent is honoured by every packet after the call returns (probed packet
by packet), and every packet sent is processed (swaps lose nothing).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bench.replay import Replay
from .ir import Program, asm, encode
from .ir.asm import R0
from .kernel import KernelError, Link, LoadedProgram, Map, ProgType, load_program, xdp_ctx
from .kernel.cpu import pinned_cpu
from .kernel.ethtool import ethtool_stats
from .nf import get
from .nf.env import NFEnv
from .runtime.agent import DEFAULT_PIN_ROOT
from .runtime.server import request, socket_path
from .runtime.throughput import LinkCounters
from .traffic import packet as pkt
from .traffic.generate import generate
from .uapi import XDP_FLAGS_DRV_MODE

PHASES = (("no locality", "none"), ("high locality", "high"), ("new hot set", "shift"))


@dataclass
class Sample:
    t: float
    mpps: float
    phase: str


@dataclass
class RunResult:
    samples: list[Sample] = field(default_factory=list)
    sent: int = 0
    processed: int = 0
    phase_start: dict[str, float] = field(default_factory=dict)
    swaps: list[tuple[float, str]] = field(default_factory=list)
    ring_dropped: int = 0  # frames the veth could not queue: the receiver fell behind


def _ring_drops(env: NFEnv, dev: str) -> int:
    """XDP frames redirected into `dev` that its peer's ring had no room for."""
    with env.entered():
        stats = ethtool_stats(dev)
    return sum(v for k, v in stats.items() if k.endswith("xdp_xmit_errors"))


def _drop_program() -> LoadedProgram:
    code = encode(Program("sink", (asm.mov64(R0, 1), asm.exit_()))).bytecode
    return load_program(code, ProgType.XDP, name="mph_sink")


def _router_packets_processed(maps: Any) -> int:
    """IPv4 packets the router handled (the veths' own IPv6 chatter is not counted)."""
    from .nf.router import STATS

    not_ip = STATS.index("not_ip").to_bytes(4, "little")
    total = 0
    for key, values in maps["rt_stats"].items():
        if key != not_ip:
            total += sum(int.from_bytes(v[:8], "little") for v in values)
    return total


# Router interfaces on the even ports: their veth peers (odd) take redirected packets off
# the wire, and no route can send a packet back into the router's own ingress.
ROUTER_PORTS = (2, 4, 6, 8, 10)


def run_demo(*, seconds_per_phase: float = 4.0, packets: int = 20_000,
             progress: Any = None, plot: str | None = None) -> dict[str, Any]:
    """Run the phases on both routers, interleaved; `seconds_per_phase` is each router's
    share of a phase (a phase lasts twice that)."""
    nf = get("router")
    config = nf.module.default_config(1, ROUTER_PORTS)
    traces = {}
    for name, profile in PHASES:
        trace = generate(nf, profile, packets, seed=7, config=config)
        if profile == "shift":
            trace = trace.segment(len(trace) // 2, len(trace))  # only the new hot set
        traces[name] = trace
    ingress = traces["no locality"].main_ingress
    rx = f"port{ingress}"
    tx = f"port{ingress + 1 if ingress % 2 == 0 else ingress - 1}"
    baseline, morpheus = RunResult(), RunResult()
    with ExitStack() as stack:
        envs = {}
        counters = {}
        for label in ("baseline", "morpheus"):
            env = stack.enter_context(NFEnv.start(nf, config=config, configure=False))
            with env.entered():
                tx_ifindex = socket.if_nametoindex(tx)
            for link, prog in _attach_sinks(env, exclude={rx, tx}):
                stack.callback(prog.close)
                stack.callback(link.close)
            generators = {name: stack.enter_context(Replay(
                None, None, {}, t.frames, namespace=env.namespace, redirect_ifindex=tx_ifindex))
                for name, t in traces.items()}
            envs[label] = (env, generators)
            counters[label] = LinkCounters(rx, env.namespace.name)
            stack.callback(counters[label].close)
        env_a, generators_a = envs["baseline"]
        env_b, generators_b = envs["morpheus"]
        drops = {label: _ring_drops(env, tx) for label, (env, _) in envs.items()}
        maps_a = stack.enter_context(_baseline_router(env_a, nf, rx))
        agent = stack.enter_context(_agent_router(env_b, nf, rx))
        before = {"baseline": _router_packets_processed(maps_a),
                  "morpheus": _router_packets_processed(agent.maps)}
        state = {"route_changed": False}

        def on_tick(phase: str, t: float) -> None:
            # Half way through the high-locality phase, move the hottest destination to
            # another next hop through the agent, then probe the live program.
            if phase == "high locality" and not state["route_changed"] and \
                    t - morpheus.phase_start[phase] > seconds_per_phase:
                state["route_changed"] = True
                stale, probes = _route_change_check(env_b, agent.control, traces[phase], rx,
                                                    agent.pins)
                agent.stale += stale
                agent.probes += probes

        wall_origin = time.time()
        _drive({"baseline": (generators_a, baseline, counters["baseline"]),
                "morpheus": (generators_b, morpheus, counters["morpheus"])},
               seconds_per_phase, progress, on_tick)
        time.sleep(0.3)  # frames still in a veth ring reach the router
        baseline.processed = _router_packets_processed(maps_a) - before["baseline"]
        morpheus.processed = (_router_packets_processed(agent.maps) - before["morpheus"]
                              - agent.probes)
        baseline.ring_dropped = _ring_drops(env_a, tx) - drops["baseline"]
        morpheus.ring_dropped = _ring_drops(env_b, tx) - drops["morpheus"]
        status = request(agent.socket, {"op": "status"})["status"]
        for swap in status.get("swaps", []):
            if swap["at"] >= wall_origin:
                morpheus.swaps.append((swap["at"] - wall_origin, swap["reason"]))
        cycle_ms = status.get("cycle_ms", {}).get("total")
        # Sites of the last version inlined by heat: with none (the whole routing table is
        # inlined), a new hot set needs no new version, and there is no adaptation to time.
        hot_sites = sum(1 for d in (status.get("version") or {}).get("sites", [])
                        if d.get("mode") == "hot")
        source = counters["morpheus"].source
    report: dict[str, Any] = {"phases": [
        {"name": name, "baseline_mpps": round(_phase_mpps(baseline, name), 3),
         "morpheus_mpps": round(_phase_mpps(morpheus, name), 3)} for name, _ in PHASES]}
    report["adaptation_s"] = _adaptation(morpheus)
    report["hot_key_sites"] = hot_sites
    report["stale_verdicts"] = agent.stale
    report["probes"] = agent.probes
    # Frames the veth could not queue because the router's ring was full never reached the
    # program: load drops, counted by the driver, in both runs alike. What else is missing
    # was lost by the program's side (swaps).
    report["lost_packets"] = morpheus.sent - morpheus.ring_dropped - morpheus.processed
    report["sent_packets"] = morpheus.sent
    report["ring_dropped"] = morpheus.ring_dropped
    report["baseline_lost_packets"] = baseline.sent - baseline.ring_dropped - baseline.processed
    report["baseline_ring_dropped"] = baseline.ring_dropped
    report["swaps"] = len(morpheus.swaps)
    report["cycle_ms"] = cycle_ms
    # Where the per-slice Mpps come from: the counters `morpheus status` reads too.
    report["throughput_source"] = source
    report["plot"] = None
    if plot and importlib.util.find_spec("matplotlib") is None:
        # A plain `pip install morpheus-xdp` has no matplotlib (the `plot` extra): the
        # measurements stand without the figure.
        report["plot_skipped"] = "matplotlib is not installed (pip install 'morpheus-xdp[plot]')"
    elif plot:
        report["plot"] = _plot(baseline, morpheus, Path(plot))
    return report


def _attach_sinks(env: NFEnv, exclude: set[str]) -> list[tuple[Link, LoadedProgram]]:
    """A dropping XDP program on every other port's peer, so that redirected packets are
    taken off the wire (veth needs an XDP program on the receiving side)."""
    out = []
    with env.entered():
        for index in range(2, 12):
            dev = f"port{index}"
            if dev in exclude:
                continue
            prog = _drop_program()
            try:
                out.append((Link.xdp(prog, socket.if_nametoindex(dev), XDP_FLAGS_DRV_MODE),
                            prog))
            except Exception:
                prog.close()
                raise
    return out


def _drive(runs: dict[str, tuple[dict[str, Replay], RunResult, LinkCounters]],
           seconds: float, progress: Any, on_tick: Any = None) -> None:
    """Each phase for 2 x `seconds`: the generator alternates between the routers in
    0.25 s slices, sampling each slice's throughput from the router interface's counters
    (what the router received and ran on; the veth's refusals when its ring is full are not
    in them)."""
    t_start = time.perf_counter()
    for phase, _ in PHASES:
        for _, result, _ in runs.values():
            result.phase_start[phase] = time.perf_counter() - t_start
        phase_end = time.perf_counter() + 2 * seconds
        while time.perf_counter() < phase_end:
            for label, (generators, result, counters) in runs.items():
                gen = generators[phase]
                sent = 0
                before = counters.read()
                with pinned_cpu(0):
                    while time.monotonic() - before.monotonic < 0.25:
                        gen.run()
                        sent += len(gen.frames)
                time.sleep(0.002)  # the last batch leaves the veth ring
                after = counters.read()
                result.sent += sent
                rate = (after.packets - before.packets) / (after.monotonic - before.monotonic)
                sample = Sample(time.perf_counter() - t_start, rate / 1e6, phase)
                result.samples.append(sample)
                if progress is not None:
                    progress(f"{label:<9} {phase:<14} t={sample.t:5.1f}s  "
                             f"{sample.mpps:6.2f} Mpps")
            if on_tick is not None:
                on_tick(phase, time.perf_counter() - t_start)


@contextlib.contextmanager
def _baseline_router(env: NFEnv, nf: Any, rx: str) -> Iterator[dict[str, Map]]:
    """The unoptimized router on `rx`, configured; yields its maps."""
    from .loader import load_collection
    from .obj import read_object

    spec = read_object(nf.object_path)
    with env.entered(), load_collection(spec) as coll:
        nf.control_plane(coll.maps).apply(env.config)
        with Link.xdp(coll.programs[nf.program], socket.if_nametoindex(rx),
                      XDP_FLAGS_DRV_MODE):
            yield dict(coll.maps)


class SocketMap:
    """A map of the agent process, reached through its control socket."""

    def __init__(self, path: Path, name: str, pinned: Map) -> None:
        self.path, self.name, self.pinned = path, name, pinned

    def _call(self, payload: dict[str, Any]) -> dict[str, Any]:
        reply = request(self.path, {**payload, "map": self.name})
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error"))
        return reply

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        self._call({"op": "update", "key": bytes(key).hex(), "value": bytes(value).hex(),
                    "flags": flags})

    def delete(self, key: bytes) -> None:
        self._call({"op": "delete", "key": bytes(key).hex()})

    def lookup(self, key: bytes) -> Any:
        return self.pinned.lookup(key)

    def keys(self) -> Any:
        return self.pinned.keys()


@dataclass
class AgentRouter:
    """The router under `morpheus run`: its pins, pinned maps, socket and control plane."""

    pins: Path
    socket: Path
    maps: dict[str, Map]
    control: Any
    stale: int = 0
    probes: int = 0


@contextlib.contextmanager
def _agent_router(env: NFEnv, nf: Any, rx: str) -> Iterator[AgentRouter]:
    """The router under the agent, which runs as its own process (`morpheus run`) on the
    other core, as in production: its Python work must not steal the data path's core."""
    name = f"demo{os.getpid()}"
    pins = DEFAULT_PIN_ROOT / name
    cmd = [sys.executable, "-m", "morpheus.cli.main", "run", str(nf.object_path),
           "--iface", rx, "--netns", env.namespace.name, "--name", name,
           "--interval", "0.2", "--detach-on-exit", "--log-level", "WARNING",
           # Measuring the sampling cost turns on BPF run stats for ~1.2 s, which slows the
           # generator's own harness program too: a dip in the plot that is not the router's.
           "--no-measure-sampling-cost"]
    cpus = sorted(os.sched_getaffinity(0))
    agent_cpu = {cpus[-1]} if len(cpus) > 1 else set(cpus)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, agent_cpu))
    maps: dict[str, Map] = {}
    try:
        line = proc.stdout.readline() if proc.stdout else ""  # {"event": "running", ...}
        if not line:
            error = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"the agent did not start: {error}")
        path = socket_path(name)
        for map_name in ("rt_config", "rt_ifaces", "rt_routes", "rt_nexthops", "rt_stats"):
            maps[map_name] = Map.from_pin(pins / "maps" / map_name)
        cp = nf.control_plane({n: SocketMap(path, n, m) for n, m in maps.items()})
        cp.apply(env.config)
        time.sleep(0.5)  # a cycle or two: specialized to the configuration
        yield AgentRouter(pins, path, maps, cp)
    finally:
        for m in maps.values():
            m.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _route_change_check(env: NFEnv, cp: Any, trace: Any, rx: str, pins: Path
                        ) -> tuple[int, int]:
    """Re-route the hottest destination to a new next hop through the agent; every probe
    of the live program made after the call returned must carry the new next hop's MAC."""
    from collections import Counter

    from .nf.router import NextHop, Route

    hottest = Counter(trace.flow_ids).most_common(1)[0][0]
    frame = trace.frames[trace.flow_ids.index(hottest)]
    parsed = pkt.parse(frame)
    assert parsed is not None and parsed.ip_dst is not None
    new_mac = bytes.fromhex("02aa00000001")
    egress = env.config.interfaces[0].ifindex
    cp.set_nexthop(NextHop(900, egress, new_mac))
    cp.add_route(Route(parsed.ip_dst, 32, 900))  # once this returns, no packet may be stale
    stale = probes = 0
    ingress = int(rx.removeprefix("port"))
    deadline = time.perf_counter() + 0.5
    with Link.from_pin(pins / "link") as link:
        while time.perf_counter() < deadline:
            try:
                prog = LoadedProgram.from_id(link.info().prog_id)
            except KernelError:
                continue  # swapped and freed between the two calls: ask again
            try:
                with env.entered():
                    out = prog.test_run(frame, ctx=xdp_ctx(ingress, len(frame)))
            finally:
                prog.close()
            probes += 1
            if out.data is None or out.data[:6] != new_mac:
                stale += 1
    return stale, probes


def _adaptation(result: RunResult) -> float | None:
    """Seconds from the start of the last phase (a new hot set) to the first swap after it."""
    start = result.phase_start.get("new hot set")
    if start is None:
        return None
    after = [t for t, _ in result.swaps if t >= start]
    return round(after[0] - start, 3) if after else None


def _phase_mpps(result: RunResult, phase: str) -> float:
    values = [s.mpps for s in result.samples if s.phase == phase]
    if not values:
        return 0.0
    tail = values[len(values) // 2:]  # the settled half of the phase
    return sorted(tail)[len(tail) // 2]


def _plot(baseline: RunResult, morpheus: RunResult, path: Path) -> str:
    from .bench.plots import figure, save

    fig, ax = figure(8, 4)
    ax.plot([s.t for s in baseline.samples], [s.mpps for s in baseline.samples],
            label="unoptimized router", color="tab:gray")
    ax.plot([s.t for s in morpheus.samples], [s.mpps for s in morpheus.samples],
            label="router under Morpheus", color="tab:blue")
    for name, start in morpheus.phase_start.items():
        ax.axvline(start, color="black", linestyle=":", linewidth=0.8)
        ax.text(start + 0.05, ax.get_ylim()[1] * 0.02 if ax.get_ylim()[1] else 0, name,
                fontsize=8)
    for t, _ in morpheus.swaps:
        ax.plot([t], [0], marker="|", color="tab:red", markersize=8)
    ax.set_xlabel("seconds")
    ax.set_ylabel("Mpps received (interface counters; veth, native XDP)")
    ax.set_title("Router throughput under changing traffic")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return save(fig, path)


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'phase':<16}{'unoptimized':>14}{'Morpheus':>12}{'ratio':>8}"]
    for p in report["phases"]:
        ratio = p["morpheus_mpps"] / p["baseline_mpps"] if p["baseline_mpps"] else 0
        lines.append(f"{p['name']:<16}{p['baseline_mpps']:>10.2f} Mpps{p['morpheus_mpps']:>8.2f}"
                     f" Mpps{ratio:>7.2f}x")
    lines.append("")
    lines.append(f"adaptation to the new hot set: {report['adaptation_s']} s; "
                 f"{report['swaps']} swaps, median cycle {report['cycle_ms'] or 0:.0f} ms")
    lines.append(f"route changed through the agent mid-run: {report['stale_verdicts']} stale "
                 f"answers in {report['probes']} probes of the live program")
    lines.append(f"packets sent {report['sent_packets']}, lost {report['lost_packets']} "
                 f"(the veth ring, full, refused {report['ring_dropped']}; unoptimized run: "
                 f"{report['baseline_ring_dropped']})")
    if report.get("plot"):
        lines.append(f"plot: {report['plot']}")
    elif report.get("plot_skipped"):
        lines.append(f"plot: skipped, {report['plot_skipped']}")
    return "\n".join(lines)
