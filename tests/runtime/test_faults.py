"""Crash safety: `morpheus run` killed (SIGKILL, no cleanup) at seeded random points of its
life under live traffic. After every kill, with no agent alive, an outside write
(`bpftool map update`) to a key the running version inlines is honoured by the very next
packet; a restart adopts (or recovers) what the dead agent left; nothing leaks: no program,
link or pin beyond what the pins hold, no second watcher.

Points come from `runtime.faults` (the agent kills itself there when MORPHEUS_FAULT names
the point); a few runs are killed from outside after a seeded random delay instead."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from morpheus.bench.replay import Replay
from morpheus.kernel import Link, Map, MapType
from morpheus.nf import get
from morpheus.nf.env import NFEnv
from morpheus.nf.router import NextHop, Route, encode_lpm_key, encode_route
from morpheus.runtime.agent import DEFAULT_PIN_ROOT, STATE_DIR, Agent
from morpheus.runtime.faults import ENV, POINTS
from morpheus.runtime.server import request, socket_path
from morpheus.traffic.generate import generate
from morpheus.uapi import XDP_FLAGS_DRV_MODE

from .test_agent import PORTS, _bpftool_update, _counting_sink, _hottest, _per_packet_counts

pytestmark = pytest.mark.kernel
MORPHEUS = [sys.executable, "-m", "morpheus.cli.main"]
SEED = 20261201

START_POINTS = [p for p in POINTS if p.split(".")[0] in ("start", "fresh", "watcher")]
CYCLE_POINTS = [p for p in POINTS if p.split(".")[0] in ("adopt", "cycle", "swap", "state",
                                                         "write")]


def _programs_using(map_id: int) -> set[int]:
    """Ids of every program on the machine that references map `map_id`."""
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True,
                         check=True).stdout
    return {p["id"] for p in json.loads(out) if map_id in p.get("map_ids", ())}


def _no_program_uses(map_id: int) -> bool:
    return not _programs_using(map_id)


def _raw_tracepoint_links() -> dict[int, int]:
    """prog id → number of raw tracepoint links attaching it."""
    out = subprocess.run(["bpftool", "link", "show", "-j"], capture_output=True, text=True,
                         check=True).stdout
    links: dict[int, int] = {}
    for link in json.loads(out):
        if link.get("type") == "raw_tracepoint":
            links[link["prog_id"]] = links.get(link["prog_id"], 0) + 1
    return links


def _eventually(check, *args, timeout: float = 3.0):  # type: ignore[no-untyped-def]
    """Programs of a dead process go after an RCU grace period: poll for a while."""
    deadline = time.monotonic() + timeout
    while True:
        value = check(*args)
        if value is True or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


class Traffic:
    """Frames sent continuously into the router's ingress from a thread."""

    def __init__(self, env: NFEnv, frames: list[bytes], tx: int) -> None:
        self.env, self.frames, self.tx = env, frames, tx
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            with Replay(None, None, {}, self.frames, namespace=self.env.namespace,
                        redirect_ifindex=self.tx) as gen:
                while not self._stop.is_set():
                    gen.run(1)
                    time.sleep(0.05)  # leave the agent some CPU (two cores)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert self.error is None, self.error


def _send(env: NFEnv, frames: list[bytes], tx: int) -> None:
    with Replay(None, None, {}, frames, namespace=env.namespace, redirect_ifindex=tx) as gen:
        gen.run(1)


@contextlib.contextmanager
def _router(name: str) -> Iterator[tuple[NFEnv, object, object, list[int]]]:
    nf = get("router")
    config = nf.module.default_config(1, PORTS)
    trace = generate(nf, "high", 4000, seed=5, config=config)
    with NFEnv.start(nf, config=config, configure=False) as env:
        counters = Map.create(MapType.ARRAY, 4, 8 * 16, 1, name="counters")
        sinks = []
        try:
            with env.entered():
                for port in (p + 1 for p in PORTS if p != trace.main_ingress):
                    prog = _counting_sink(counters, port)
                    sinks.append((Link.xdp(prog, socket.if_nametoindex(f"port{port}"),
                                           XDP_FLAGS_DRV_MODE), prog))
            yield env, trace, counters, config  # type: ignore[misc]
        finally:
            for link, prog in sinks:
                link.close()
                prog.close()
            counters.close()
            _cleanup(name)


def _cleanup(name: str) -> None:
    """Whatever a failed test left under this (unique) name."""
    pin_dir = DEFAULT_PIN_ROOT / name
    if pin_dir.exists():
        subprocess.run(["rm", "-rf", str(pin_dir)], check=False)
    for path in (STATE_DIR / f"{name}.json", STATE_DIR / f"{name}.lock", socket_path(name)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _run_agent(name: str, netns: str, iface: str, fault: str | None,
               ) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env.pop(ENV, None)
    if fault:
        env[ENV] = fault
    return subprocess.Popen(
        [*MORPHEUS, "run", str(get("router").object_path), "--iface", iface, "--netns", netns,
         "--name", name, "--interval", "0.05", "--no-measure-sampling-cost",
         # Hot keys only: a trie inlined whole is stable and its agent stops swapping, and
         # the faults are placed on the 1st-3rd passage through each point of a cycle.
         "--lpm-max", "0",
         "--log-level", "WARNING"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env)


def _wait_killed(proc: subprocess.Popen[str], what: str, timeout: float = 40) -> None:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"{what}: the agent did not reach its fault point: {err[-3000:]}")
    assert proc.returncode == -signal.SIGKILL, f"{what}: exit {proc.returncode}: {err[-3000:]}"


def _watcher_check(guard_id: int, others: frozenset[int]) -> bool | str:
    """Exactly one watcher (an entry and an exit program, one link each) bumps our guard,
    and no program uses the guard besides it and `others` (the attached version, a live
    agent's bumper)."""
    users = _programs_using(guard_id)
    links = _raw_tracepoint_links()
    watchers = {p: n for p, n in links.items() if p in users}
    if len(watchers) != 2 or set(watchers.values()) != {1} or not users - set(watchers) <= others:
        return f"watcher links {watchers}, programs using the guard {users}, others {others}"
    return True


def test_kill_at_random_points_of_the_cycle_keeps_the_data_plane_correct() -> None:
    rng = random.Random(SEED)
    name = f"flt{os.getpid()}"
    with _router(name) as (env, trace, counters, config):
        iface = f"port{trace.main_ingress}"
        tx = 0
        with env.entered():
            tx = socket.if_nametoindex(f"port{trace.main_ingress + 1}")
        frame, dst = _hottest(trace)
        agent = Agent(get("router").object_path, iface=iface, netns=env.namespace.name,
                      name=name)
        agent.start()
        try:
            cp = get("router").control_plane(agent.control_maps())
            with env.entered():
                cp.apply(config)
            before = _per_packet_counts(counters)
            _send(env, [frame] * 10, tx)
            now = _per_packet_counts(counters)
            current = {p - 1 for p in now if now[p] != before.get(p, 0)}
            a, b = [p for p in PORTS if p != trace.main_ingress and p not in current][:2]
            with env.entered():
                cp.set_nexthop(NextHop(900, a, bytes.fromhex("02aa00000001")))
                cp.set_nexthop(NextHop(901, b, bytes.fromhex("02aa00000002")))
                cp.add_route(Route(dst, 32, 901))
            _send(env, trace.frames, tx)
            report = agent.cycle()
            assert report.outcome == "swapped", report.reason
            assert agent._watcher is not None and agent._watcher.pinned, agent.errors
        finally:
            agent.stop()  # pinned: the data plane and the watcher keep running
        pin_dir = DEFAULT_PIN_ROOT / name
        with Map.from_pin(pin_dir / "guard") as guard:
            guard_id = guard.id
        # Stopped without detaching (SIGTERM without --detach-on-exit): the pinned watcher
        # still sends the inlined route to its generic lookup once an operator changes it.
        _bpftool_update(pin_dir / "maps" / "rt_routes", encode_lpm_key(dst, 32),
                        encode_route(Route(dst, 32, 900)))
        before = _per_packet_counts(counters)
        _send(env, [frame], tx)
        after = _per_packet_counts(counters)
        assert {p - 1 for p in after if after[p] != before.get(p, 0)} == {a}

        def target(run: int) -> tuple[int, int]:  # port, next hop: alternating
            return (b, 901) if run % 2 == 0 else (a, 900)
        def nth(point: str) -> int:  # which passage through the point kills
            return 1 if point.startswith("adopt.") else 1 + int(rng.random() * 3)

        plan = [(p, nth(p)) for p in CYCLE_POINTS]
        plan += [("outside-kill", 0)] * 2
        rng.shuffle(plan)
        for run, (point, nth) in enumerate(plan):
            what = f"run {run}: {point}:{nth}"
            fault = None if point == "outside-kill" else f"{point}:{nth}"
            with Traffic(env, trace.frames, tx):
                proc = _run_agent(name, env.namespace.name, iface, fault)
                if point.startswith(("write.", "outside-kill")):
                    line = proc.stdout.readline()  # type: ignore[union-attr]
                    assert line, f"{what}: the agent died before serving"
                if point.startswith("write."):
                    for _ in range(nth):
                        with contextlib.suppress(RuntimeError, OSError, ValueError):
                            request(socket_path(name), {
                                "op": "update", "map": "rt_routes",
                                "key": encode_lpm_key(dst, 32).hex(),
                                "value": encode_route(Route(dst, 32,
                                                            target(run - 1)[1])).hex()})
                elif point == "outside-kill":
                    time.sleep(rng.uniform(0.0, 1.2))  # in its cycles
                    proc.send_signal(signal.SIGKILL)
                _wait_killed(proc, what)
            state = json.loads((STATE_DIR / f"{name}.json").read_text())
            assert state["kind"] == "specialized" and "rt_routes" in state["inlined"], \
                (what, state)
            # No agent runs now. An operator moves the hot route to the other next hop.
            port, nexthop = target(run)
            _bpftool_update(pin_dir / "maps" / "rt_routes", encode_lpm_key(dst, 32),
                            encode_route(Route(dst, 32, nexthop)))
            before = _per_packet_counts(counters)
            _send(env, [frame], tx)
            after = _per_packet_counts(counters)
            moved = {p - 1: after[p] - before.get(p, 0) for p in after
                     if after[p] != before.get(p, 0)}
            assert moved == {port: 1}, f"{what}: the next packet went to {moved}, " \
                f"not port {port}"
            with Link.from_pin(pin_dir / "link") as link:
                attached = link.info().prog_id
            assert _eventually(_watcher_check, guard_id, frozenset({attached})) is True, what
        # A last restart adopts, re-plans on what the operator wrote, and detaches cleanly.
        agent = Agent(get("router").object_path, iface=iface, netns=env.namespace.name,
                      name=name)
        agent.start()
        try:
            assert agent.current is not None and agent.current.kind == "adopted"
            _send(env, trace.frames, tx)
            assert agent.cycle().outcome == "swapped"
        finally:
            agent.stop(detach=True)
        assert not pin_dir.exists()
        assert not (STATE_DIR / f"{name}.json").exists()
        assert not (STATE_DIR / f"{name}.lock").exists()
        assert _eventually(_no_program_uses, guard_id) is True


def test_kill_during_start_then_a_restart_recovers() -> None:
    name = f"fls{os.getpid()}"
    with _router(name) as (env, trace, _counters, _config):
        iface = f"port{trace.main_ingress}"
        pin_dir = DEFAULT_PIN_ROOT / name
        for point in START_POINTS:
            proc = _run_agent(name, env.namespace.name, iface, f"{point}:1")
            _wait_killed(proc, point)
            left = sorted(str(p.relative_to(pin_dir)) for p in pin_dir.rglob("*")
                          if p.is_file()) if pin_dir.exists() else []
            agent = Agent(get("router").object_path, iface=iface, netns=env.namespace.name,
                          name=name)
            agent.start()  # recovers (a start killed before its link was pinned) or adopts
            try:
                assert agent.current is not None
                assert agent._watcher is not None and agent._watcher.pinned, \
                    (point, left, list(agent.errors))
                with Map.from_pin(pin_dir / "guard") as guard:
                    guard_id = guard.id
                assert agent.link is not None and agent.guard is not None
                others = frozenset({agent.link.info().prog_id, agent.guard._bumper.id})
                check = _eventually(_watcher_check, guard_id, others)
                assert check is True, (point, left, check)
            finally:
                agent.stop(detach=True)
            assert not pin_dir.exists(), (point, list(pin_dir.rglob("*")))
            assert _eventually(_no_program_uses, guard_id) is True, point
