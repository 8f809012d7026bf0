"""The agent beside bpfman: the generic program and its maps loaded and pinned by another
owner (simulated with `bpftool prog loadall OBJ PROGS pinmaps MAPS`, the layout bpfman
gives /run/bpfman/fs/maps/<prog id>), the agent adopting those maps (`maps_dir`) and
swapping specialized versions that read them, either behind its own trampoline on a hook
bpfman does not manage or behind a pinned entry program another loader attached
(`attach=False`, here `bpftool net attach`). Writes to the owner's pins by bpftool must be
honoured at once, and whatever the agent does at exit, the owner's pins and maps stay."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from morpheus.bench.replay import Replay
from morpheus.kernel import Link, Map, MapType
from morpheus.loader import (
    PinnedMapMismatch,
    PinnedMapMissing,
    adopt_pinned_maps,
    find_pinned_maps,
)
from morpheus.nf import get
from morpheus.nf.env import NFEnv
from morpheus.nf.router import NextHop, Route, encode_lpm_key, encode_route
from morpheus.runtime.agent import Agent, AgentOptions
from morpheus.runtime.lifecycle import AgentError
from morpheus.traffic.generate import Trace, generate
from morpheus.uapi import XDP_FLAGS_DRV_MODE
from tests.runtime.test_agent import _bpftool_update, _counting_sink, _hottest, _per_packet_counts

pytestmark = pytest.mark.kernel

PORTS = (2, 4, 6, 8, 10)


@dataclass
class Owner:
    """What `bpftool prog loadall ... pinmaps` (bpfman's stand-in) pinned."""

    root: Path
    maps_dir: Path
    prog_pin: Path
    map_ids: dict[str, int]


@dataclass
class Bed:
    env: NFEnv
    owner: Owner
    trace: Trace
    counters: Map
    iface: str

    def send(self, frames: list[bytes], passes: int = 1) -> int:
        with self.env.entered():
            tx = socket.if_nametoindex(f"port{self.trace.main_ingress + 1}")
        with Replay(None, None, {}, frames, namespace=self.env.namespace,
                    redirect_ifindex=tx) as gen:
            gen.run(passes)
        return len(frames) * passes

    def egress_of(self, frame: bytes) -> set[int]:
        before = _per_packet_counts(self.counters)
        self.send([frame] * 10)
        after = _per_packet_counts(self.counters)
        return {port - 1 for port in after if after[port] != before.get(port, 0)}


def _pinned_ids(maps_dir: Path) -> dict[str, int]:
    out = {}
    for pin in sorted(maps_dir.iterdir()):
        m = Map.from_pin(pin)
        out[pin.name] = m.id
        m.close()
    return out


@pytest.fixture
def bed() -> Iterator[Bed]:
    nf = get("router")
    config = nf.module.default_config(1, PORTS)
    trace = generate(nf, "high", 4000, seed=7, config=config)
    root = Path(f"/sys/fs/bpf/mph_bpfman_{os.getpid()}_{os.urandom(3).hex()}")
    root.mkdir()
    try:
        subprocess.run(["bpftool", "prog", "loadall", str(nf.object_path), str(root / "progs"),
                        "pinmaps", str(root / "maps"), "type", "xdp"],
                       check=True, capture_output=True)
        owner = Owner(root, root / "maps", root / "progs" / nf.program,
                      _pinned_ids(root / "maps"))
        with NFEnv.start(nf, config=config, configure=False) as env:
            # bpfman's side configures its maps (an operator's control plane).
            maps = adopt_pinned_maps(env.spec, owner.maps_dir)
            try:
                with env.entered():
                    nf.control_plane(maps).apply(config)
            finally:
                for m in maps.values():
                    m.close()
            counters = Map.create(MapType.ARRAY, 4, 8 * 16, 1, name="counters")
            sinks = []
            try:
                with env.entered():
                    for port in (p + 1 for p in PORTS if p != trace.main_ingress):
                        prog = _counting_sink(counters, port)
                        sinks.append((Link.xdp(prog, socket.if_nametoindex(f"port{port}"),
                                               XDP_FLAGS_DRV_MODE), prog))
                yield Bed(env, owner, trace, counters, f"port{trace.main_ingress}")
            finally:
                for link, prog in sinks:
                    link.close()
                    prog.close()
                counters.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _agent(bed: Bed, name: str, **options: object) -> Agent:
    return Agent(get("router").object_path, iface=bed.iface, netns=bed.env.namespace.name,
                 name=name, options=AgentOptions(maps_dir=bed.owner.maps_dir,
                                                 measure_instrumentation=False,
                                                 **options))  # type: ignore[arg-type]


def _specialize_on_owner_maps(bed: Bed, agent: Agent) -> None:
    bed.send(bed.trace.frames)
    report = agent.cycle()
    assert report.outcome == "swapped", report.reason
    assert agent.current is not None and agent.current.kind == "specialized"
    sites = {d["map"]: d for d in agent.current.decisions}
    assert sites["rt_routes"]["mode"] == "table", sites["rt_routes"]  # the whole trie
    # The specialized version reads the owner's maps, not copies.
    used = set(agent.current.program.info().map_ids)
    assert bed.owner.map_ids["rt_routes"] in used and bed.owner.map_ids["rt_nexthops"] in used


def _outside_write_is_never_stale(bed: Bed, agent: Agent) -> None:
    """bpftool writes the owner's pins (a route to a new next hop for the hottest, inlined,
    destination): from the next packet on, every one leaves by the new port."""
    frame, dst = _hottest(bed.trace)
    current = bed.egress_of(frame)
    egress = next(p for p in PORTS if p != bed.trace.main_ingress and p not in current)
    nexthop = NextHop(950, egress, bytes.fromhex("02aa00000009"))
    maps = adopt_pinned_maps(agent.spec, bed.owner.maps_dir)  # bpfman's operator, say
    try:
        with bed.env.entered():
            get("router").control_plane(maps).set_nexthop(nexthop)
    finally:
        for m in maps.values():
            m.close()
    agent.cycle()  # a new next hop no route uses yet: re-planned or not, nothing is stale
    assert agent.current is not None and agent.current.kind == "specialized"
    before = _per_packet_counts(bed.counters)
    _bpftool_update(bed.owner.maps_dir / "rt_routes", encode_lpm_key(dst, 32),
                    encode_route(Route(dst, 32, 950)))
    sent = bed.send([frame] * 2000)
    after = _per_packet_counts(bed.counters)
    assert after.get(egress + 1, 0) - before.get(egress + 1, 0) == sent  # zero stale
    report = agent.cycle()
    assert report.outcome == "swapped", report.reason
    sent = bed.send([frame] * 1000)
    assert _per_packet_counts(bed.counters).get(egress + 1, 0) - after.get(egress + 1, 0) == sent


def _owner_intact(bed: Bed, dst: int) -> None:
    assert bed.owner.prog_pin.exists()
    assert _pinned_ids(bed.owner.maps_dir) == bed.owner.map_ids
    routes = Map.from_pin(bed.owner.maps_dir / "rt_routes")
    try:
        assert routes.lookup(encode_lpm_key(dst, 32)) == encode_route(Route(dst, 32, 950))
    finally:
        routes.close()


def test_agent_specializes_on_the_owners_maps_behind_its_own_trampoline(bed: Bed) -> None:
    name = f"bp{os.getpid()}a{os.urandom(2).hex()}"
    agent = _agent(bed, name, swap="prog-array")
    agent.start()
    try:
        assert agent._watcher is not None, list(agent.errors)
        assert not (agent.pin_dir / "maps").exists()  # the owner's maps are not pinned again
        _specialize_on_owner_maps(bed, agent)
        _outside_write_is_never_stale(bed, agent)
        agent.stop()  # kept running; a restart adopts it on the same owner maps
        agent = _agent(bed, name, swap="prog-array")
        agent.start()
        assert agent.maps["rt_routes"].id == bed.owner.map_ids["rt_routes"]
    finally:
        agent.stop(detach=True)
    assert not agent.pin_dir.exists()
    _owner_intact(bed, _hottest(bed.trace)[1])


def test_no_attach_pins_an_entry_another_loader_attaches(bed: Bed) -> None:
    name = f"bp{os.getpid()}b{os.urandom(2).hex()}"
    agent = _agent(bed, name, attach=False)
    agent.start()
    entry = agent.pin_dir / "entry"
    attached = False
    try:
        assert entry.exists() and not (agent.pin_dir / "link").exists()
        assert agent.status()["attach"].startswith("none: entry pinned at")
        # Another loader attaches the pinned entry (netlink, not a link of ours).
        subprocess.run(["nsenter", f"--net=/run/netns/{bed.env.namespace.name}", "bpftool",
                        "net", "attach", "xdp", "pinned", str(entry), "dev", bed.iface],
                       check=True, capture_output=True)
        attached = True
        _specialize_on_owner_maps(bed, agent)
        _outside_write_is_never_stale(bed, agent)
        # Stop and restart: the new agent adopts the pinned entry and its slot; one asking
        # for its own hook, or other maps, is refused rather than adopting what it did not ask.
        running = agent.current.program.id  # type: ignore[union-attr]
        agent.stop()
        with pytest.raises(AgentError, match="attach False"):
            _agent(bed, name, swap="prog-array").start()
        agent = _agent(bed, name, attach=False)
        agent.start()
        assert agent.current is not None and agent.current.program.id == running
        assert agent.trampoline is not None and agent.trampoline.running_id() == running
    finally:
        if attached:
            subprocess.run(["nsenter", f"--net=/run/netns/{bed.env.namespace.name}",
                            "bpftool", "net", "detach", "xdp", "dev", bed.iface],
                           check=False, capture_output=True)
        agent.stop(detach=True)
    assert not agent.pin_dir.exists()
    _owner_intact(bed, _hottest(bed.trace)[1])


def test_missing_or_mismatched_owner_maps_fail_before_anything_is_made(bed: Bed) -> None:
    name = f"bp{os.getpid()}c{os.urandom(2).hex()}"
    other = bed.owner.root / "other"
    other.mkdir()
    # rt_routes pinned with other parameters (another build of the object).
    wrong = Map.create(MapType.HASH, 8, 8, 7, name="rt_routes")
    wrong.pin(other / "rt_routes")
    wrong.close()
    for pin in bed.owner.maps_dir.iterdir():
        if pin.name != "rt_routes":
            m = Map.from_pin(pin)
            m.pin(other / pin.name)
            m.close()
    agent = Agent(get("router").object_path, iface=bed.iface, netns=bed.env.namespace.name,
                  name=name, options=AgentOptions(maps_dir=other))
    with pytest.raises(PinnedMapMismatch, match=r"rt_routes.*type 1 \(declared 11\)"):
        agent.start()
    (other / "rt_routes").unlink()
    with pytest.raises(PinnedMapMissing, match=r"rt_routes.*not pinned under"):
        Agent(get("router").object_path, iface=bed.iface, netns=bed.env.namespace.name,
              name=name, options=AgentOptions(maps_dir=other)).start()
    assert not (agent.pin_dir).exists() and not agent.state_file.exists()
    # Given the parent (bpfman's /run/bpfman/fs/maps), the one directory that holds the
    # object's maps is found: `other` now lacks rt_routes, the owner's has them all.
    assert find_pinned_maps(agent.spec, bed.owner.root) == bed.owner.maps_dir
    assert sorted(p.name for p in other.iterdir()) == sorted(
        n for n in bed.owner.map_ids if n != "rt_routes")
    assert _pinned_ids(bed.owner.maps_dir) == bed.owner.map_ids


def test_maps_the_data_plane_writes_are_not_inlined_on_an_owners_maps() -> None:
    """The switch learns into sw_fdb from the data plane. On bpfman's maps its generic
    program may be learning too, unseen by the guard: those sites stay generic."""
    nf = get("switch")
    root = Path(f"/sys/fs/bpf/mph_bpfman_{os.getpid()}_{os.urandom(3).hex()}")
    root.mkdir()
    name = f"bp{os.getpid()}d{os.urandom(2).hex()}"
    try:
        subprocess.run(["bpftool", "prog", "loadall", str(nf.object_path), str(root / "progs"),
                        "pinmaps", str(root / "maps"), "type", "xdp"],
                       check=True, capture_output=True)
        with NFEnv.start(nf, configure=False) as env:
            agent = Agent(nf.object_path, iface="port2", netns=env.namespace.name, name=name,
                          options=AgentOptions(maps_dir=root, attach=False,
                                               measure_instrumentation=False))
            agent.start()
            try:
                assert "sw_fdb" in agent.bump_slots
                assert "owner" in agent._skip_maps()["sw_fdb"]
                agent.cycle()
                assert agent.current is not None
                fdb = [d for d in agent.current.decisions if d["map"] == "sw_fdb"]
                assert fdb and not any(d["specialized"] for d in fdb)
            finally:
                agent.stop(detach=True)
        assert sorted(p.name for p in (root / "maps").iterdir()) == sorted(nf_maps(nf))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def nf_maps(nf: object) -> list[str]:
    from morpheus.loader import read_for_kernel

    return list(read_for_kernel(nf.object_path).maps)  # type: ignore[attr-defined]
