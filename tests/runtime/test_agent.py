"""The agent end to end, on live frames over veth: the router specialized under traffic,
control-plane writes through the agent and from outside, lossless swaps, failures that
leave the running version alone, and re-adoption after a restart."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from morpheus.bench.replay import Replay
from morpheus.ir import Program, asm, encode
from morpheus.ir.asm import R0, R1, R2, R3
from morpheus.ir.opcodes import AtomicOp
from morpheus.kernel import Link, LoadedProgram, Map, MapType, ProgType, load_program
from morpheus.nf import get
from morpheus.nf.env import NFEnv
from morpheus.nf.router import STATS, NextHop, Route, encode_lpm_key, encode_route
from morpheus.optimizer import PlanOptions
from morpheus.passes.pipeline import PassContext
from morpheus.runtime.agent import Agent, AgentOptions
from morpheus.traffic import packet as pkt
from morpheus.traffic.generate import Trace, generate
from morpheus.uapi import XDP_FLAGS_DRV_MODE

pytestmark = pytest.mark.kernel

PORTS = (2, 4, 6, 8, 10)  # router interfaces; their odd peers count what is forwarded


@dataclass
class Bed:
    env: NFEnv
    agent: Agent
    generator: Replay
    trace: Trace
    counters: Map  # packets arriving at each odd port (index = ifindex)

    def forwarded(self) -> Counter[int]:
        out: Counter[int] = Counter()
        for key, value in self.counters.items():
            out[struct.unpack("<I", key)[0]] = struct.unpack("<Q", value)[0]  # type: ignore[arg-type]
        return out

    def processed(self) -> int:
        """IPv4 packets the router handled (the veths' own IPv6 chatter is not counted)."""
        not_ip = struct.pack("<I", STATS.index("not_ip"))
        total = 0
        for key, values in self.agent.maps["rt_stats"].items():
            if key != not_ip:
                total += sum(int.from_bytes(v[:8], "little") for v in values)  # type: ignore[union-attr]
        return total

    def send(self, frames: list[bytes], passes: int = 1) -> int:
        with Replay(None, None, {}, frames, namespace=self.env.namespace,
                    redirect_ifindex=self.tx) as gen:
            gen.run(passes)
        return len(frames) * passes

    @property
    def tx(self) -> int:
        with self.env.entered():
            return socket.if_nametoindex(f"port{self.trace.main_ingress + 1}")


def _counting_sink(counters: Map, port: int) -> LoadedProgram:
    """XDP program for the peer of a router port: count IPv4 packets under `port` (not the
    kernel's own IPv6 chatter on the veths), drop everything."""
    program = Program("count", (
        asm.ldx(4, R2, R1, 0),
        asm.ldx(4, R3, R1, 4),
        asm.mov64(R1, R2),
        asm.add64(R1, 14),
        asm.jgt(R1, R3, "out"),
        asm.ldx(2, R1, R2, 12),
        asm.jne(R1, 0x0008, "out"),  # ethertype 0x0800, as a little-endian load
        asm.ld_map_value(R1, "counters", 8 * port),
        asm.mov64(R2, 1),
        asm.atomic(8, AtomicOp.ADD, R1, 0, R2),
        asm.mov64(R0, 1, label="out"),
        asm.exit_(),
    ))
    return load_program(encode(program, {"counters": counters.fd.number}).bytecode,
                        ProgType.XDP, name="mph_count")


@pytest.fixture
def testbed() -> Iterator[Bed]:
    nf = get("router")
    config = nf.module.default_config(1, PORTS)
    trace = generate(nf, "high", 4000, seed=5, config=config)
    ingress = trace.main_ingress
    assert ingress in PORTS
    with NFEnv.start(nf, config=config, configure=False) as env:
        counters = Map.create(MapType.ARRAY, 4, 8 * 16, 1, name="counters")
        sinks = []
        try:
            with env.entered():
                for port in (p + 1 for p in PORTS if p != ingress):
                    prog = _counting_sink(counters, port)
                    sinks.append((Link.xdp(prog, socket.if_nametoindex(f"port{port}"),
                                           XDP_FLAGS_DRV_MODE), prog))
            agent = Agent(nf.object_path, iface=f"port{ingress}", netns=env.namespace.name,
                          name=f"t{env.namespace.name[-8:]}", options=AgentOptions())
            agent.start()
            bed = Bed(env, agent, None, trace, counters)  # type: ignore[arg-type]
            try:
                with env.entered():
                    nf.control_plane(agent.control_maps()).apply(config)
                yield bed
            finally:
                bed.agent.stop(detach=True)  # a test may have replaced the agent
        finally:
            for link, prog in sinks:
                link.close()
                prog.close()
            counters.close()


def _per_packet_counts(counters: Map) -> dict[int, int]:
    raw = counters.lookup(0)
    assert isinstance(raw, bytes)
    values = struct.unpack("<16Q", raw)
    return {i: v for i, v in enumerate(values) if v}


def _hottest(trace: Trace) -> tuple[bytes, int]:
    flow = Counter(trace.flow_ids).most_common(1)[0][0]
    frame = trace.frames[trace.flow_ids.index(flow)]
    parsed = pkt.parse(frame)
    assert parsed is not None and parsed.ip_dst is not None
    return frame, parsed.ip_dst


def _bpftool_update(pin: Path, key: bytes, value: bytes) -> None:
    """A write that bypasses the agent, as an operator's would."""
    subprocess.run(["bpftool", "map", "update", "pinned", str(pin), "key", "hex",
                    *key.hex(" ").split(), "value", "hex", *value.hex(" ").split()],
                   check=True, capture_output=True)


def _specialize(bed: Bed, mode: str = "table") -> None:
    """Traffic, one cycle, a swap; the routes inlined as `mode`: by default the whole trie
    as direct tables (optimizer.lpm), every route behind a guard."""
    bed.send(bed.trace.frames)
    report = bed.agent.cycle()
    assert report.outcome == "swapped", report.reason
    sites = {d["map"]: d for d in bed.agent.current.decisions}  # type: ignore[union-attr]
    assert sites["rt_routes"]["mode"] == mode, sites["rt_routes"]


def _reroute_hottest(bed: Bed, nexthop: int, lengths: tuple[int, ...]
                     ) -> tuple[bytes, int, int, dict[int, int]]:
    """Through the agent, send the hottest destination (its prefixes of `lengths`) to a new
    next hop on another port: (its frame, its address, that port, the counts before)."""
    frame, dst = _hottest(bed.trace)
    egress = _other_port(bed, frame)
    before = _per_packet_counts(bed.counters)
    cp = get("router").control_plane(bed.agent.control_maps())
    with bed.env.entered():
        cp.set_nexthop(NextHop(nexthop, egress, bytes.fromhex(f"02aa0000{nexthop:04x}")))
        for length in lengths:
            cp.add_route(Route(dst & (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF, length,
                               nexthop))
    return frame, dst, egress, before


def test_route_update_through_the_agent_is_never_stale(testbed: Bed) -> None:
    bed = testbed
    _specialize(bed)
    frame, _, egress, before = _reroute_hottest(bed, 900, (32,))
    # Every packet for that destination from now on must leave through `egress`.
    sent = bed.send([frame] * 2000, passes=3)
    after = _per_packet_counts(bed.counters)
    assert after.get(egress + 1, 0) - before.get(egress + 1, 0) == sent  # zero stale
    # and the next cycle re-specializes with the new route inlined
    assert bed.agent.cycle().outcome == "swapped"
    sent = bed.send([frame] * 1000)
    assert _per_packet_counts(bed.counters).get(egress + 1, 0) - after.get(egress + 1, 0) == sent


def test_a_trie_read_whole_follows_writes_through_the_agent(testbed: Bed) -> None:
    """The trie the running version inlines whole is kept between cycles (its guard version
    says nothing changed); a route written through the agent is applied to the kept read,
    which stays what a fresh read gives, and the next cycle serves the route without
    reading the trie again. A write from outside drops the kept read."""
    bed = testbed
    if bed.agent._watcher is None:
        pytest.fail(f"the write watcher did not start: {list(bed.agent.errors)}")
    _specialize(bed)
    slot = bed.agent.guard_slots["rt_routes"]
    assert bed.agent._whole_reads["rt_routes"][0] == bed.agent.guard.version(slot)
    frame, dst, egress, before = _reroute_hottest(bed, 902, (24, 32))
    version, kept, _ = bed.agent._whole_reads["rt_routes"]
    assert version == bed.agent.guard.version(slot)
    with bed.env.entered():
        fresh = dict(bed.agent.maps["rt_routes"].items())
    assert kept == fresh
    report = bed.agent.cycle()
    assert report.outcome == "swapped", report.reason
    assert report.timings_ms["snapshot"] < 20  # not 5,000 prefixes read again
    sent = bed.send([frame] * 1000)
    assert _per_packet_counts(bed.counters).get(egress + 1, 0) - before.get(egress + 1, 0) \
        == sent
    pin = bed.agent.pin_dir / "maps" / "rt_routes"
    _bpftool_update(pin, encode_lpm_key(dst, 32), encode_route(Route(dst, 32, 1)))
    cp = get("router").control_plane(bed.agent.control_maps())
    with bed.env.entered():
        cp.add_route(Route(dst & ~1, 31, 902))  # the version moved by more than its bumps
    assert "rt_routes" not in bed.agent._whole_reads


def test_a_cycle_with_no_new_samples_and_no_map_change_does_no_work(testbed: Bed) -> None:
    bed = testbed
    _specialize(bed)
    report = bed.agent.cycle()  # the samples taken before the swap are read here
    for _ in range(3):
        report = bed.agent.cycle()
        assert report.outcome == "idle", report.reason
        assert "specialize" not in report.timings_ms and "snapshot" not in report.timings_ms
    _, dst = _hottest(bed.trace)
    port = next(p for p in PORTS if p != bed.trace.main_ingress)  # no traffic: only the map moves
    cp = get("router").control_plane(bed.agent.control_maps())
    with bed.env.entered():
        cp.set_nexthop(NextHop(901, port, bytes.fromhex("02aa00000002")))
        cp.add_route(Route(dst, 32, 901))
    assert bed.agent.cycle().outcome == "swapped"  # a map changed: planned again


def _other_port(bed: Bed, frame: bytes) -> int:
    """A router port that is neither the ingress nor where `frame` goes now."""
    before = _per_packet_counts(bed.counters)
    bed.send([frame] * 10)
    after = _per_packet_counts(bed.counters)
    current = {port - 1 for port in after if after[port] != before.get(port, 0)}
    return next(p for p in PORTS if p != bed.trace.main_ingress and p not in current)


def test_an_outside_write_is_detected_and_honoured(testbed: Bed) -> None:
    bed = testbed
    if bed.agent._watcher is None:
        pytest.fail(f"the write watcher did not start: {list(bed.agent.errors)}")
    _specialize(bed)
    frame, dst = _hottest(bed.trace)
    egress = _other_port(bed, frame)
    cp = get("router").control_plane(bed.agent.control_maps())
    with bed.env.entered():
        cp.set_nexthop(NextHop(901, egress, bytes.fromhex("02aa00000002")))
    # Re-planned (no next hop is inlined, so the plan and the program stay the same):
    # nothing dirty any more.
    report = bed.agent.cycle()
    assert report.outcome in ("swapped", "unchanged") and not bed.agent._dirty, report.reason
    before = _per_packet_counts(bed.counters)
    pin = bed.agent.pin_dir / "maps" / "rt_routes"
    _bpftool_update(pin, encode_lpm_key(dst, 32), encode_route(Route(dst, 32, 901)))
    sent = bed.send([frame] * 2000)
    assert _per_packet_counts(bed.counters).get(egress + 1, 0) - before.get(egress + 1, 0) == sent
    # The guard moved under the running version: the next cycle re-plans on the new
    # contents instead of leaving the site on its generic path.
    report = bed.agent.cycle()
    assert report.outcome == "swapped", report.reason
    sites = {d["map"]: d for d in bed.agent.current.decisions}  # type: ignore[union-attr]
    assert sites["rt_routes"]["mode"] == "table"
    before = _per_packet_counts(bed.counters)
    sent = bed.send([frame] * 2000)
    assert _per_packet_counts(bed.counters).get(egress + 1, 0) - before.get(egress + 1, 0) == sent


def test_a_map_written_every_cycle_is_left_out_for_a_while(testbed: Bed) -> None:
    bed = testbed
    if bed.agent._watcher is None:
        pytest.fail(f"the write watcher did not start: {list(bed.agent.errors)}")
    _specialize(bed)
    pin = bed.agent.pin_dir / "maps" / "rt_routes"
    _, dst = _hottest(bed.trace)
    churn = bed.agent.options.churn_cycles
    for n in range(churn):
        _bpftool_update(pin, encode_lpm_key(dst, 32), encode_route(Route(dst, 32, 1 + n % 2)))
        bed.send(bed.trace.frames[:500])
        report = bed.agent.cycle()
        assert report.outcome == "swapped", report.reason
    status = bed.agent.status()
    assert status["paused_maps"] == {"rt_routes": bed.agent.options.churn_pause}
    sites = {d["map"]: d for d in bed.agent.current.decisions}  # type: ignore[union-attr]
    assert sites["rt_routes"]["mode"] == "none"
    assert "moved in 3 cycles in a row" in sites["rt_routes"]["reason"]
    assert sites["rt_config"]["mode"] == "constant"  # the other maps stay inlined


def test_status_says_the_write_watcher_is_pinned_and_what_it_watches(testbed: Bed) -> None:
    watcher = testbed.agent.status()["watcher"]
    assert watcher["running"] and watcher["pinned"], watcher
    assert Path(watcher["path"]).is_dir() and (Path(watcher["path"]) / "enter").exists()
    assert watcher["maps"] == len(testbed.agent.guard_slots) > 0


def test_swaps_lose_no_packets(testbed: Bed) -> None:
    bed = testbed
    start = bed.processed()
    sent = 0
    swaps = 0
    other = generate(get("router"), "shift", 4000, seed=9,
                     config=get("router").module.default_config(1, PORTS))
    for n in range(6):
        trace = bed.trace if n % 2 == 0 else other
        sent += bed.send(trace.frames)
        bed.agent.force_respecialize()  # force a new version every cycle
        swaps += bed.agent.cycle().outcome == "swapped"
        sent += bed.send(trace.frames)
    assert swaps >= 5
    assert bed.processed() - start == sent


@dataclass(frozen=True)
class BreakTheProgram:
    name: ClassVar[str] = "break"

    def run(self, program: Program, ctx: PassContext) -> Program:
        return program.with_insns((asm.ldx(8, R0, R2, 0), *program.insns))


def test_a_verifier_failure_keeps_the_running_version(testbed: Bed) -> None:
    bed = testbed
    _specialize(bed)
    running = bed.agent.current
    assert running is not None
    prog_id = running.program.id
    bed.agent.options = AgentOptions(extra_passes=(BreakTheProgram(),))
    bed.agent.force_respecialize()
    report = bed.agent.cycle()
    assert report.outcome == "failed"
    assert "R2 !read_ok" in report.reason
    assert bed.agent.current is running
    with Link.from_pin(bed.agent.pin_dir / "link") as link:
        assert link.info().prog_id == prog_id
    start = bed.processed()
    sent = bed.send(bed.trace.frames)
    assert bed.processed() - start == sent  # still forwarding


@dataclass(frozen=True)
class PassEverything:
    """A miscompile the verifier accepts: every exit returns XDP_PASS."""

    name: ClassVar[str] = "pass-everything"

    def run(self, program: Program, ctx: PassContext) -> Program:
        out = []
        for insn in program.insns:
            if insn.is_exit:
                out += [asm.mov64(R0, 2, label=insn.label), insn.with_label(None)]
            else:
                out.append(insn)
        return program.with_insns(tuple(out))


def test_a_candidate_that_differs_on_the_check_packets_is_not_swapped_in(testbed: Bed) -> None:
    bed = testbed
    _specialize(bed)
    running = bed.agent.current
    assert running is not None
    frames = tuple(bed.trace.frames[:300])
    bed.agent.options = AgentOptions(check_frames=frames, extra_passes=(PassEverything(),))
    bed.agent.force_respecialize()
    report = bed.agent.cycle()
    assert report.outcome == "failed"
    assert "equivalence check failed" in report.reason and " vs 2" in report.reason
    assert bed.agent.current is running
    start = bed.processed()
    sent = bed.send(bed.trace.frames)
    assert bed.processed() - start == sent and sum(_per_packet_counts(bed.counters).values())

    # The same check lets a correct candidate through, and leaves the live maps alone.
    stats_before = bed.processed()
    bed.agent.options = AgentOptions(check_frames=frames)
    bed.agent.force_respecialize()
    report = bed.agent.cycle()
    assert report.outcome == "swapped", report.reason
    assert report.timings_ms["check"] > 0
    assert bed.processed() == stats_before


def test_stop_and_restart_adopts_the_running_program(testbed: Bed) -> None:
    bed = testbed
    _specialize(bed)
    prog_id = bed.agent.current.program.id  # type: ignore[union-attr]
    name, netns = bed.agent.name, bed.env.namespace.name
    bed.agent.stop()  # keeps the pinned link: the data plane keeps running
    start_counts = _per_packet_counts(bed.counters)
    sent = bed.send(bed.trace.frames)
    forwarded = sum(_per_packet_counts(bed.counters).values()) - sum(start_counts.values())
    assert 0 < forwarded <= sent
    again = Agent(get("router").object_path, iface=f"port{bed.trace.main_ingress}", netns=netns,
                  name=name)
    again.start()
    try:
        assert again.current is not None and again.current.program.id == prog_id
        bed.send(bed.trace.frames)
        assert again.cycle().outcome == "swapped"
    finally:
        bed.agent = again  # the fixture detaches it


def test_prog_array_swaps_lose_no_packets_and_survive_a_restart(testbed: Bed) -> None:
    bed = testbed
    name, netns = bed.agent.name, bed.env.namespace.name
    iface = f"port{bed.trace.main_ingress}"
    bed.agent.stop(detach=True)
    options = AgentOptions(swap="prog-array")
    bed.agent = Agent(get("router").object_path, iface=iface, netns=netns, name=name,
                      options=options)
    bed.agent.start()
    with bed.env.entered():
        get("router").control_plane(bed.agent.control_maps()).apply(
            get("router").module.default_config(1, PORTS))
    _specialize(bed)
    status = bed.agent.status()
    assert status["swap"]["mode"] == "prog-array" and status["swap"]["last_us"] > 0
    start, sent, swaps = bed.processed(), 0, 0
    for _ in range(4):
        sent += bed.send(bed.trace.frames)
        bed.agent.force_respecialize()
        swaps += bed.agent.cycle().outcome == "swapped"
    assert swaps == 4 and bed.processed() - start == sent

    def forwarded_by_one_pass() -> int:
        before = sum(_per_packet_counts(bed.counters).values())
        bed.send(bed.trace.frames)
        return sum(_per_packet_counts(bed.counters).values()) - before

    running = forwarded_by_one_pass()
    prog_id = bed.agent.current.program.id  # type: ignore[union-attr]
    bed.agent.stop()  # the pinned link and slot keep the specialized version running
    assert forwarded_by_one_pass() == running > 0
    bed.agent = Agent(get("router").object_path, iface=iface, netns=netns, name=name,
                      options=options)
    bed.agent.start()
    assert bed.agent.current is not None and bed.agent.current.program.id == prog_id
    assert bed.agent.trampoline is not None
    bed.send(bed.trace.frames)
    assert bed.agent.cycle().outcome == "swapped"
    assert bed.agent.trampoline.running_id() == bed.agent.current.program.id


def test_sampling_cost_is_measured_on_live_traffic(testbed: Bed) -> None:
    bed = testbed
    assert bed.agent.status()["instrumentation"]["state"] == "not measured yet"
    stop = threading.Event()

    started = threading.Event()

    def pump() -> None:
        with Replay(None, None, {}, bed.trace.frames, namespace=bed.env.namespace,
                    redirect_ifindex=bed.tx) as gen:
            while not stop.is_set():
                gen.run(1)
                started.set()

    sender = threading.Thread(target=pump)
    sender.start()
    try:
        assert started.wait(30)
        report = bed.agent.cycle()
    finally:
        stop.set()
        sender.join()
    cost = bed.agent.status()["instrumentation"]
    assert cost["state"] == "measured", cost
    assert cost["packets"] > 10_000 and cost["plain_ns"] > 0
    assert -100 < cost["ns_per_packet"] < 200  # a handful of instructions, run-stats noise
    assert report.timings_ms["measure_instrumentation"] >= 1000 * 6 * 0.2
    with Link.from_pin(bed.agent.pin_dir / "link") as link:  # the running version is back
        assert link.info().prog_id == bed.agent.current.program.id  # type: ignore[union-attr]
    start = bed.processed()
    sent = bed.send(bed.trace.frames)
    assert bed.processed() - start == sent


def _unused(*_: Any) -> None:
    pass


def test_sampling_backs_off_on_stable_sites_and_returns_on_a_shift(testbed: Bed) -> None:
    bed = testbed
    # Routes as hot keys (no trie read whole), so that a shift of the traffic matters.
    name, netns = bed.agent.name, bed.env.namespace.name
    bed.agent.stop(detach=True)
    bed.agent = Agent(get("router").object_path, iface=f"port{bed.trace.main_ingress}",
                      netns=netns, name=name,
                      options=AgentOptions(plan=PlanOptions(lpm_max=0)))
    bed.agent.start()
    with bed.env.entered():
        get("router").control_plane(bed.agent.control_maps()).apply(
            get("router").module.default_config(1, PORTS))
    _specialize(bed, "hot")
    routes = next(s for s in bed.agent.layout.sites if s.map == "rt_routes")

    def rate() -> int:
        status = bed.agent.status()["sampling"]["sites"]
        return next(s["rate"] for s in status if s["instruction"] == routes.site)

    for _ in range(bed.agent.options.stable_cycles + 1):
        bed.send(bed.trace.frames)
        bed.agent.cycle()
    assert rate() == bed.agent.options.stable_rate
    assert bed.agent._sampling().rate_of(bed.agent.layout.sites.index(routes)) == 1024
    shifted = generate(get("router"), "shift", 8000, seed=5,
                       config=get("router").module.default_config(1, PORTS)).segment(4000, 8000)
    bed.send(shifted.frames, passes=4)
    report = bed.agent.cycle()
    assert rate() == bed.agent.options.sample_rate
    assert report.outcome == "swapped"
