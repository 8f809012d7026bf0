"""The agent on the user-space backend, end to end: the router in user space on a veth in a
namespace of the test's own, fed over AF_XDP. Frames sent from the peer come back (XDP_TX)
with the bytes the router's reference model says; a specialized version is swapped in; a
control-plane write to an inlined entry is never served stale; status and metrics say
"userspace"; the agent stops cleanly (and `morpheus run --backend userspace` does all of it
as a process)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from morpheus.kernel.netns import NetNamespace
from morpheus.nf import get
from morpheus.nf.router import (
    Config,
    Interface,
    NextHop,
    Reference,
    Route,
    encode_iface,
    encode_lpm_key,
    encode_nexthop,
    encode_route,
    encode_u32,
)
from morpheus.optimizer import PlanOptions
from morpheus.runtime.agent import STATE_DIR, AgentOptions
from morpheus.runtime.server import socket_path
from morpheus.runtime.useragent import UserspaceAgent
from morpheus.traffic import packet as pkt

pytestmark = pytest.mark.kernel

ROUTER_MAC = bytes.fromhex("02000000aa01")
PEER_MAC = bytes.fromhex("02000000bb01")
NH_MACS = (bytes.fromhex("02000000cc01"), bytes.fromhex("02000000cc02"),
           bytes.fromhex("02000000cc03"))
PACKET_OUTGOING = 4
MORPHEUS = [sys.executable, "-m", "morpheus.cli.main"]


@dataclass
class Bed:
    ns: NetNamespace
    ifindex: int  # the router's interface, "ua"; its peer "ub" is where the test stands
    config: Config

    def frame(self, subnet: int, host: int = 1, ttl: int = 64) -> bytes:
        dst = f"20.0.{subnet}.{host}"
        l4 = pkt.udp("30.0.0.1", dst, 1000 + host, 53, bytes(18))
        return pkt.ethernet(ROUTER_MAC, PEER_MAC, pkt.ETH_P_IP,
                            pkt.ipv4("30.0.0.1", dst, pkt.IPPROTO_UDP, l4, ttl=ttl))

    def exchange(self, frames: list[bytes], timeout: float = 5.0, pause: float = 0.001
                 ) -> list[bytes]:
        """Send `frames` into the router from the peer (a `pause` every 64); the IPv4
        frames that come back."""
        back: list[bytes] = []
        with self.ns.entered(), socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                              socket.htons(0x0800)) as s:
            s.bind(("ub", 0))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            s.settimeout(0.2)
            for n, f in enumerate(frames):
                s.send(f)
                if n % 64 == 63:
                    time.sleep(pause)  # the veth's queue holds a few hundred frames
            deadline = time.monotonic() + timeout
            while len(back) < len(frames) and time.monotonic() < deadline:
                try:
                    data, address = s.recvfrom(4096)
                except TimeoutError:
                    continue
                if address[2] != PACKET_OUTGOING:
                    back.append(data)
        return back


def _config(ifindex: int, nexthop_for: dict[int, int]) -> Config:
    return Config(interfaces=(Interface(ifindex, ROUTER_MAC),),
                  nexthops=tuple(NextHop(n, ifindex, mac) for n, mac in enumerate(NH_MACS)),
                  routes=tuple(Route(pkt.ip4(f"20.0.{s}.0"), 24, nh)
                               for s, nh in nexthop_for.items()))


@pytest.fixture
def bed() -> Iterator[Bed]:
    ns = NetNamespace.create("morpheus-ua")
    try:
        ns.add_veth("ua", "ub")
        with ns.entered():
            for iface in ("ua", "ub"):  # no IPv6 chatter of the veths' own
                with open(f"/proc/sys/net/ipv6/conf/{iface}/disable_ipv6", "w") as f:
                    f.write("1")
        ifindex = ns.ifindex("ua")
        yield Bed(ns, ifindex, _config(ifindex, {s: s % 2 for s in range(8)}))
    finally:
        ns.delete()


def _expected(config: Config, frames: list[bytes], ifindex: int) -> list[bytes]:
    model = Reference(config)
    out = []
    for f in frames:
        outcome = model.process(f, ifindex)
        assert outcome.verdict == 3  # XDP_TX: every test frame is routed back out
        out.append(outcome.frame)
    return out


def _agent(bed: Bed, name: str) -> UserspaceAgent:
    """Routes as hot keys (no trie read whole): these tests follow the hot set."""
    nf = get("router")
    return UserspaceAgent(nf.object_path, iface="ua", netns=bed.ns.name, name=name,
                          options=AgentOptions(measure_instrumentation=False,
                                               plan=PlanOptions(lpm_max=0)))


def test_the_router_specialized_in_user_space_and_a_write_never_served_stale(bed: Bed) -> None:
    nf = get("router")
    agent = _agent(bed, f"ua{os.getpid()}")
    agent.start()
    try:
        nf.control_plane(agent.control_maps()).apply(bed.config)
        hot = [bed.frame(s % 3, h) for h in range(1, 9) for s in range(6)] * 4
        back = bed.exchange(hot)
        assert sorted(back) == sorted(_expected(bed.config, hot, bed.ifindex))

        live_stats, live_guards = list(agent.maps["rt_stats"].items()), agent.guard.versions()
        report = agent.cycle()
        assert report.outcome == "swapped", report.reason
        assert "check" in report.timings_ms  # checked on frames sampled from the traffic
        # on copies: the check's frames counted nothing in the live maps
        assert list(agent.maps["rt_stats"].items()) == live_stats
        assert agent.guard.versions() == live_guards
        status = agent.status()
        assert status["backend"] == "userspace" and status["swap"]["mode"] == "pointer"
        assert status["version"]["kind"] == "specialized"
        sites = {d["map"]: d for d in status["version"]["sites"]}
        assert sites["rt_routes"]["mode"] == "hot" and sites["rt_ifaces"]["mode"] == "table"
        inlined = set(sites["rt_routes"]["keys_inlined"])
        assert inlined & {encode_lpm_key(pkt.ip4(f"20.0.1.{h}"), 32).hex() for h in range(9)}
        assert status["check"]["equivalent"] and status["check"]["packets"] > 0

        back = bed.exchange(hot)  # the specialized version forwards the same bytes
        assert sorted(back) == sorted(_expected(bed.config, hot, bed.ifindex))
        assert agent.status()["version"]["packets"] >= len(hot)

        # Re-point next hop 0 and the route of the inlined 20.0.1.x keys while the version
        # that inlined them runs: every frame after the writes must see them.
        cp = nf.control_plane(agent.control_maps())
        cp.set_nexthop(NextHop(0, bed.ifindex, NH_MACS[2]))
        cp.add_route(Route(pkt.ip4("20.0.1.0"), 24, 0))
        new = _config(bed.ifindex, {s: 0 if s == 1 else s % 2 for s in range(8)})
        new = Config(new.interfaces, (NextHop(0, bed.ifindex, NH_MACS[2]), *new.nexthops[1:]),
                     new.routes)
        back = bed.exchange(hot)
        assert sorted(back) == sorted(_expected(new, hot, bed.ifindex))  # nothing stale
        assert agent.cycle().outcome == "swapped"  # and specialized again on the new state
        back = bed.exchange(hot)
        assert sorted(back) == sorted(_expected(new, hot, bed.ifindex))
        verdicts = agent.status()["afxdp"]["verdicts"]
        assert verdicts["tx"] == 4 * len(hot) and verdicts["aborted"] == 0
    finally:
        agent.stop()
    assert not (STATE_DIR / f"ua{os.getpid()}.json").exists()
    with bed.ns.entered():  # the redirect program is gone with the agent
        assert bed.ns.xdp_program_id("ua") == 0


def test_a_candidate_that_differs_on_the_sampled_frames_is_not_swapped_in(bed: Bed) -> None:
    from tests.runtime.test_agent import PassEverything

    nf = get("router")
    agent = _agent(bed, f"ub{os.getpid()}")
    agent.options = AgentOptions(measure_instrumentation=False, plan=PlanOptions(lpm_max=0),
                                 extra_passes=(PassEverything(),))
    agent.start()
    try:
        nf.control_plane(agent.control_maps()).apply(bed.config)
        hot = [bed.frame(s % 3, h) for h in range(1, 5) for s in range(6)]
        bed.exchange(hot)
        running = agent.current
        report = agent.cycle()
        assert report.outcome == "failed"
        assert "equivalence check failed" in report.reason, report.reason
        assert agent.current is running
        back = bed.exchange(hot)  # still the unspecialized program, forwarding
        assert sorted(back) == sorted(_expected(bed.config, hot, bed.ifindex))
    finally:
        agent.stop()


def test_the_check_plan_refuses_a_mutant_the_sampled_frames_miss(bed: Bed) -> None:
    """The pre-swap check runs the kernel agent's check plan: a candidate that serves a key
    absent from its inlined rt_ifaces table (a frame on another port) the table's first
    entry is refused, although every sampled frame arrives on the one configured port, so
    the sampled frames alone (the plan without enrichment) let it through."""
    from tests.world import mutants as M
    from tests.world.test_agent_check import Miscompile

    nf = get("router")
    mutation = next(m for m in M.SPECIALIZED if m.name == "absent key served the first entry")
    agent = _agent(bed, f"ue{os.getpid()}")
    agent.start()
    try:
        nf.control_plane(agent.control_maps()).apply(bed.config)
        hot = [bed.frame(s % 3, h) for h in range(1, 9) for s in range(6)] * 2
        bed.exchange(hot)
        base = agent.current
        inject = Miscompile(mutation.operator)
        options = AgentOptions(measure_instrumentation=False, final_passes=(inject,))
        agent.options = options
        report = agent.cycle()
        assert inject.applied
        assert report.outcome == "failed", report.reason
        assert "equivalence check failed" in report.reason, report.reason
        assert agent.current is base
        assert agent.last_check is not None and not agent.last_check["equivalent"]
        assert agent.last_check["packets"] > len(hot) and agent.last_check["writes"] > 0

        agent.options = AgentOptions(measure_instrumentation=False, final_passes=(inject,),
                                     check_enrich=False)
        agent.force_respecialize()
        assert agent.cycle().outcome == "swapped"  # what the sampled frames alone allow

        agent.options = AgentOptions(measure_instrumentation=False)
        agent.force_respecialize()
        report = agent.cycle()  # the real candidate: no false alarm on the enriched plan
        assert report.outcome == "swapped", report.reason
        assert agent.last_check["equivalent"] and agent.last_check["writes"] > 0
        back = bed.exchange(hot)
        assert sorted(back) == sorted(_expected(bed.config, hot, bed.ifindex))
    finally:
        agent.stop()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MORPHEUS, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_morpheus_run_backend_userspace(bed: Bed) -> None:
    nf = get("router")
    name = f"uc{os.getpid()}"
    proc = subprocess.Popen(
        [*MORPHEUS, "run", str(nf.object_path), "--backend", "userspace", "--iface", "ua",
         "--netns", bed.ns.name, "--name", name, "--interval", "0.3", "--metrics-port", "0",
         "--no-measure-sampling-cost", "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        assert started["event"] == "running" and started["backend"] == "userspace"

        def write(map_name: str, key: bytes, value: bytes) -> None:
            out = _cli("map", "update", map_name, key.hex(), value.hex(), "--name", name)
            assert json.loads(out.stdout)["ok"], out.stdout + out.stderr

        write("rt_config", encode_u32(0), encode_u32(3))  # forwarding and stats
        write("rt_ifaces", encode_u32(bed.ifindex), encode_iface(bed.config.interfaces[0]))
        for nh in bed.config.nexthops:
            write("rt_nexthops", encode_u32(nh.index), encode_nexthop(nh, ROUTER_MAC))
        for r in bed.config.routes:
            write("rt_routes", encode_lpm_key(r.prefix, r.length), encode_route(r))
        hot = [bed.frame(s % 3, h) for h in range(1, 9) for s in range(6)] * 2
        deadline = time.monotonic() + 30
        status: dict = {}
        while time.monotonic() < deadline:
            back = bed.exchange(hot)
            assert sorted(back) == sorted(_expected(bed.config, hot, bed.ifindex))
            status = json.loads(_cli("status", "--name", name, "--json").stdout)
            if (status.get("version") or {}).get("kind") == "specialized":
                break
        assert status["backend"] == "userspace"
        assert status["version"]["kind"] == "specialized", status["cycles"]
        text = _cli("status", "--name", name).stdout
        assert "userspace" in text and "swaps by pointer" in text
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{started['metrics_port']}/metrics", timeout=10).read().decode()
        assert 'morpheus_backend_info{backend="userspace"} 1.0' in metrics
        assert "morpheus_afxdp_frames_total" in metrics and "morpheus_swaps_total" in metrics
        # A write to the inlined next hop through the CLI: the next frame sees it.
        moved = NextHop(0, bed.ifindex, NH_MACS[2])
        write("rt_nexthops", encode_u32(0), encode_nexthop(moved, ROUTER_MAC))
        new = Config(bed.config.interfaces, (moved, *bed.config.nexthops[1:]),
                     bed.config.routes)
        back = bed.exchange(hot)
        assert sorted(back) == sorted(_expected(new, hot, bed.ifindex))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read()  # type: ignore[union-attr]
    assert not socket_path(name).exists() and not (STATE_DIR / f"{name}.json").exists()
    with bed.ns.entered():
        assert bed.ns.xdp_program_id("ua") == 0


def test_swaps_under_traffic_lose_and_repeat_no_frame(bed: Bed) -> None:
    import threading

    nf = get("router")
    agent = _agent(bed, f"ud{os.getpid()}")
    agent.start()
    try:
        nf.control_plane(agent.control_maps()).apply(bed.config)
        frames = [bed.frame(s % 8, h) for h in range(1, 41) for s in range(8)] * 6  # 1920
        bed.exchange(frames[:100])
        results: list[list[bytes]] = []
        sender = threading.Thread(target=lambda: results.append(bed.exchange(frames, 15.0, 0.08)))
        sender.start()
        swaps = 0
        while sender.is_alive() and swaps < 20:
            agent._dirty = True  # a new version every cycle
            swaps += agent.cycle().outcome == "swapped"
        sender.join()
        assert swaps >= 3
        assert sorted(results[0]) == sorted(_expected(bed.config, frames, bed.ifindex))
        assert agent.status()["afxdp"]["poller_error"] is None
    finally:
        agent.stop()
