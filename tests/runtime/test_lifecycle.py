"""Agents starting, stopping and restarting next to each other: safe names, one agent per
name, removal of its own pins only, refusal to adopt under other arguments, a state file
that is never torn, and status polled while versions are swapped."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from morpheus.bench.replay import Replay
from morpheus.kernel import Map, MapType
from morpheus.nf import get
from morpheus.nf.env import NFEnv
from morpheus.nf.router import encode_lpm_key
from morpheus.runtime.agent import DEFAULT_PIN_ROOT, STATE_DIR, Agent, AgentOptions
from morpheus.runtime.lifecycle import AgentError, check_name, write_state
from morpheus.runtime.server import ControlServer, request, socket_path
from morpheus.traffic.generate import generate

pytestmark = pytest.mark.kernel
OPTIONS = AgentOptions(measure_instrumentation=False)


@pytest.fixture
def env() -> Iterator[NFEnv]:
    with NFEnv.start(get("router"), configure=False) as env:
        yield env


@pytest.fixture
def name() -> Iterator[str]:
    name = f"lc{os.getpid()}{threading.get_ident() % 1000}"
    yield name
    pin_dir = DEFAULT_PIN_ROOT / name
    if pin_dir.exists():
        subprocess.run(["rm", "-rf", str(pin_dir)], check=False)
    for path in (STATE_DIR / f"{name}.json", STATE_DIR / f"{name}.lock", socket_path(name)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _agent(env: NFEnv, name: str, iface: str = "port2", netns: str | None = None) -> Agent:
    return Agent(get("router").object_path, iface=iface, name=name,
                 netns=netns or env.namespace.name, options=OPTIONS)


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "../x", ".hidden", "-x", "", "x" * 65,
                                 "a b", "a\nb"])
def test_a_name_is_one_safe_path_component(bad: str) -> None:
    with pytest.raises(AgentError, match="invalid agent name"):
        Agent(get("router").object_path, iface="port2", name=bad)
    assert check_name("router-1.a_b") == "router-1.a_b"


def test_detach_removes_only_what_the_agent_created(env: NFEnv, name: str) -> None:
    agent = _agent(env, name).start()
    pin_dir = agent.pin_dir
    foreign = Map.create(MapType.ARRAY, 4, 4, 1, name="foreign")
    try:
        foreign.pin(pin_dir / "foreign")  # another tool's pin next to ours
        (pin_dir / "maps").mkdir(exist_ok=True)
        foreign.pin(pin_dir / "maps" / "theirs")
    finally:
        foreign.close()
    agent.stop(detach=True)
    left = sorted(str(p.relative_to(pin_dir)) for p in pin_dir.rglob("*"))
    assert left == ["foreign", "maps", "maps/theirs"]
    assert not (STATE_DIR / f"{name}.json").exists()
    (pin_dir / "maps" / "theirs").unlink()
    (pin_dir / "foreign").unlink()


def test_a_second_agent_of_the_same_name_is_refused(env: NFEnv, name: str,
                                                    tmp_path: Path) -> None:
    first = _agent(env, name).start()
    control = ControlServer(first, socket_path(name))
    control.start()
    try:
        second = _agent(env, name)
        with pytest.raises(AgentError, match="already running"):
            second.start()
        # The first is untouched: its socket still answers and its cycles still work.
        assert request(socket_path(name), {"op": "status"})["ok"]
        assert first.cycle().outcome != "failed"
    finally:
        control.close()
        first.stop()
    again = _agent(env, name).start()  # the lock went with the first agent
    try:
        assert again.current is not None and again.current.kind == "adopted"
    finally:
        again.stop(detach=True)


def test_a_failed_attach_leaves_nothing_and_a_restart_works(env: NFEnv, name: str) -> None:
    with pytest.raises(AgentError, match="no interface 'nope'"):
        _agent(env, name, iface="nope").start()
    assert not (DEFAULT_PIN_ROOT / name).exists()
    agent = _agent(env, name).start()
    agent.stop(detach=True)


def test_adoption_refuses_another_interface_or_namespace(env: NFEnv, name: str) -> None:
    _agent(env, name).start().stop()  # pinned, left running
    try:
        with pytest.raises(AgentError, match="iface 'port2' \\(asked: 'port4'\\)"):
            _agent(env, name, iface="port4").start()
        with NFEnv.start(get("router"), configure=False) as other, \
                pytest.raises(AgentError, match="netns"):
            _agent(env, name, netns=other.namespace.name).start()
    finally:
        agent = _agent(env, name).start()
        assert agent.current is not None and agent.current.kind == "adopted"
        agent.stop(detach=True)


def test_a_torn_state_file_is_an_error_naming_it_and_writes_are_atomic(
        env: NFEnv, name: str) -> None:
    agent = _agent(env, name).start()
    state_file = STATE_DIR / f"{name}.json"
    try:
        assert json.loads(state_file.read_text())["phase"] == "running"
        assert not list(STATE_DIR.glob(f".{name}.json.*"))
    finally:
        agent.stop()
    saved = state_file.read_text()
    for torn in ("", saved[: len(saved) // 2], "[1]"):
        state_file.write_text(torn)
        with pytest.raises(AgentError, match=re.escape(str(state_file))):
            _agent(env, name).start()
    write_state(state_file, json.loads(saved))
    agent = _agent(env, name).start()
    agent.stop(detach=True)


def test_status_never_fails_while_versions_are_swapped(env: NFEnv, name: str) -> None:
    nf = get("router")
    config = nf.module.default_config(1)
    trace = generate(nf, "high", 2000, seed=3, config=config)
    agent = _agent(env, name, iface=f"port{trace.main_ingress}").start()
    errors: list[BaseException] = []
    polls = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal polls
        while not done.is_set():
            try:
                agent.status()
                polls += 1
            except BaseException as exc:  # any failure is the bug
                errors.append(exc)

    try:
        with env.entered():
            nf.control_plane(agent.control_maps()).apply(config)
        with env.entered():
            import socket

            tx = socket.if_nametoindex(f"port{trace.main_ingress + 1}")
        thread = threading.Thread(target=poll)
        thread.start()
        swaps = 0
        try:
            with Replay(None, None, {}, trace.frames, namespace=env.namespace,
                        redirect_ifindex=tx) as gen:
                for _ in range(6):
                    gen.run(1)
                    agent.force_respecialize()
                    swaps += agent.cycle().outcome == "swapped"
        finally:
            done.set()
            thread.join()
        assert swaps >= 5 and polls > 0
        assert not errors, errors[:3]
        # A missing key is named in hex, not as Python bytes.
        absent = encode_lpm_key(0xCB00714D, 32)  # 203.0.113.77/32: not routed
        with pytest.raises(KeyError) as missing:
            agent.delete("rt_routes", absent)
        assert missing.value.args[0] == f"map 'rt_routes' has no key {absent.hex()}"
        with pytest.raises(ValueError, match="key is 3 bytes"):
            agent.update("rt_routes", bytes(3), bytes(8))
    finally:
        agent.stop(detach=True)


def test_a_stale_socket_is_replaced_and_map_lookup_refuses_a_value(tmp_path: Path) -> None:
    from morpheus.cli import map_cmd

    stale = tmp_path / "dead.sock"
    stale.write_text("left by an agent killed with -9")
    server = ControlServer(object(), stale)
    server.start()
    server.close()
    assert not stale.exists()
    args = argparse.Namespace(op="lookup", map="m", key="00", value="01", name="x")
    with pytest.raises(ValueError, match="lookup takes a map and a key only"):
        map_cmd.run(args)
