"""The control socket of a real agent under load: 64 concurrent clients make 10,000 route
writes, every one acknowledged and found in the map afterwards; an oversized client is cut
off and an idle one timed out meanwhile; the agent's memory stays bounded."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from morpheus.nf import get
from morpheus.nf.env import NFEnv
from morpheus.nf.router import Route, encode_lpm_key, encode_route
from morpheus.runtime.agent import Agent, AgentOptions
from morpheus.runtime.server import ControlServer

pytestmark = pytest.mark.kernel
CLIENTS = 64
WRITES = 10_000


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class _Connection:
    """A client that keeps its connection for several requests (connects as `request`
    does, retrying a full backlog)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _Connection:
        deadline = time.monotonic() + 30
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(30)
            try:
                self.sock.connect(str(self.path))
                break
            except BlockingIOError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        self.file = self.sock.makefile("rwb")
        return self

    def call(self, payload: dict) -> dict:  # type: ignore[type-arg]
        self.file.write(json.dumps(payload).encode() + b"\n")
        self.file.flush()
        line = self.file.readline()
        if not line:
            raise RuntimeError("connection closed without a reply")
        return json.loads(line)  # type: ignore[no-any-return]

    def __exit__(self, *exc: object) -> None:
        self.file.close()
        self.sock.close()


def test_64_clients_and_10000_writes_are_all_acknowledged_and_applied(tmp_path) -> None:  # type: ignore[no-untyped-def]
    nf = get("router")
    name = f"load{os.getpid()}"
    with NFEnv.start(nf, configure=False) as env:
        agent = Agent(nf.object_path, iface="port2", netns=env.namespace.name, name=name,
                      options=AgentOptions(measure_instrumentation=False))
        agent.start()
        path = tmp_path / "load.sock"
        server = ControlServer(agent, path, idle_timeout=1.0)
        server.start()
        try:
            base = 0x64400000  # 100.64.0.0/10: one /32 route per write
            keys = [base + n for n in range(WRITES)]
            replies: list[dict] = []
            failures: list[str] = []
            lock = threading.Lock()
            gate = threading.Barrier(CLIENTS + 2)

            def client(worker: int) -> None:
                # Every client connects at once; each then sends its writes over a few
                # connections (a new one every 25 writes), one request line at a time.
                gate.wait()
                mine = list(range(worker, WRITES, CLIENTS))
                for first in range(0, len(mine), 25):
                    try:
                        with _Connection(path) as conn:
                            for n in mine[first:first + 25]:
                                addr = keys[n]
                                reply = conn.call({
                                    "op": "update", "map": "rt_routes",
                                    "key": encode_lpm_key(addr, 32).hex(),
                                    "value": encode_route(Route(addr, 32, n % 1000)).hex()})
                                with lock:
                                    replies.append(reply)
                    except (RuntimeError, OSError, ValueError) as exc:
                        with lock:
                            failures.append(f"{type(exc).__name__}: {exc}")

            def oversized() -> None:
                gate.wait()
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(30)
                    sock.connect(str(path))
                    chunk = b"7" * (1 << 20)
                    with contextlib.suppress(OSError):
                        for _ in range(64):  # 64 MB, no newline
                            sock.sendall(chunk)
                    with contextlib.suppress(OSError):
                        reply = sock.recv(4096)
                        with lock:
                            replies.append({"oversized": reply})

            rss_before = _rss_mb()
            idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            idle.connect(str(path))
            threads = [threading.Thread(target=client, args=(w,)) for w in range(CLIENTS)]
            threads.append(threading.Thread(target=oversized))
            for t in threads:
                t.start()
            started = time.monotonic()
            gate.wait()
            for t in threads:
                t.join(timeout=120)
            elapsed = time.monotonic() - started
            idle.settimeout(5)
            assert idle.recv(10) == b"", "the idle client was not timed out"
            idle.close()
            assert not failures, failures[:5]
            writes = [r for r in replies if "oversized" not in r]
            assert len(writes) == WRITES and all(r["ok"] for r in writes), \
                [r for r in writes if not r["ok"]][:3]
            cut = [r["oversized"] for r in replies if "oversized" in r]
            assert cut and b"longer than" in cut[0]
            routes = agent.maps["rt_routes"]
            for n, addr in enumerate(keys):
                assert routes.lookup(encode_lpm_key(addr, 32)) == \
                    encode_route(Route(addr, 32, n % 1000)), hex(addr)
            assert server.stats()["writes"] == WRITES
            assert _rss_mb() - rss_before < 150, (rss_before, _rss_mb())
            print(f"{WRITES} writes from {CLIENTS} clients in {elapsed:.1f} s")
        finally:
            server.close()
            agent.stop(detach=True)
