"""The control socket: owner-only, one JSON request per line, clear errors, nothing changed
by a malformed request."""

from __future__ import annotations

import contextlib
import json
import stat
import time
from pathlib import Path
from typing import Any

from morpheus.runtime.server import ControlServer, request


class FakeAgent:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def update(self, name: str, key: bytes, value: bytes, flags: int = 0) -> None:
        if name != "routes":
            raise KeyError(f"program has no map {name!r}")
        self.calls.append(("update", name, key, value, flags))

    def delete(self, name: str, key: bytes) -> None:
        self.calls.append(("delete", name, key))

    def update_batch(self, name: str, entries: list[tuple[bytes, bytes]]) -> int:
        self.calls.append(("batch", name, entries))
        return len(entries)

    def lookup(self, name: str, key: bytes) -> bytes | None:
        return b"\x01\x02" if key == b"\x00" else None

    def status(self) -> dict[str, Any]:
        return {"program": "p", "version": {"number": 3, "sites": []}, "cycles": [],
                "errors": []}


def test_requests_and_errors(tmp_path: Path) -> None:
    agent = FakeAgent()
    server = ControlServer(agent, tmp_path / "a.sock")
    server.start()
    try:
        path = tmp_path / "a.sock"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        ok = request(path, {"op": "update", "map": "routes", "key": "0a00", "value": "ff"})
        assert ok["ok"] and agent.calls == [("update", "routes", b"\x0a\x00", b"\xff", 0)]
        assert request(path, {"op": "lookup", "map": "routes", "key": "00"})["value"] == "0102"
        assert request(path, {"op": "status"})["status"]["version"]["number"] == 3
        for bad, message in (
            ({"op": "update", "map": "routes", "key": "zz", "value": "00"}, "not hex"),
            ({"op": "update", "map": "nope", "key": "00", "value": "00"}, "no map 'nope'"),
            ({"op": "fly", "map": "routes"}, "unknown op"),
            ({"op": "update", "key": "00"}, "field 'map'"),
            ({"op": "batch", "map": "routes", "entries": [1, 2]}, "entries must be"),
        ):
            reply = request(path, bad)
            assert not reply["ok"] and message in reply["error"], reply
        assert len(agent.calls) == 1  # nothing else changed
        assert server.stats()["writes"] == 1
    finally:
        server.close()
    assert not (tmp_path / "a.sock").exists()


def _raw(path: Path, data: bytes, timeout: float = 5.0) -> bytes:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(data)
        out = b""
        while not out.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def test_every_field_is_validated_strictly(tmp_path: Path) -> None:
    agent = FakeAgent()
    path = tmp_path / "v.sock"
    server = ControlServer(agent, path)
    server.start()
    try:
        base = {"op": "update", "map": "routes", "key": "0a00", "value": "ff"}
        for bad, message in (
            ({**base, "flags": 2**64}, "'flags' must be one of"),
            ({**base, "flags": 2**64 + 1}, "'flags' must be one of"),
            ({**base, "flags": 3}, "'flags' must be one of"),
            ({**base, "flags": -1}, "'flags' must be one of"),
            ({**base, "flags": 1.0}, "must be an integer"),
            ({**base, "flags": True}, "must be an integer"),
            ({**base, "flags": "0"}, "must be an integer"),
            ({**base, "key": "0a 00"}, "no spaces"),
            ({**base, "key": "0a0"}, "not hex"),
            ({**base, "key": 10}, "not a hex string"),
            ({**base, "value": "ff" * (1 << 16 + 1)}, "longer than"),
            ({**base, "extra": 1}, "unknown field 'extra'"),
            ({**base, "map": ""}, "'map' must be"),
            ({**base, "map": "m" * 65}, "'map' must be"),
            ({"op": "batch", "map": "routes", "entries": []}, "1 to"),
            ({"op": "batch", "map": "routes", "entries": [["00", "0 1"]]}, "value of entry 0"),
            ({"op": ["update"]}, "unknown op"),
        ):
            reply = request(path, bad)
            assert not reply["ok"] and message in reply["error"], (bad, reply)
        # Infinity and NaN are not JSON numbers a request may carry; the connection stays.
        for constant in (b"Infinity", b"-Infinity", b"NaN"):
            line = b'{"op": "update", "map": "routes", "key": "00", "value": "00", ' \
                b'"flags": ' + constant + b"}\n"
            reply = json.loads(_raw(path, line))
            assert not reply["ok"] and "non-finite" in reply["error"], reply
        assert json.loads(_raw(path, b"[1, 2]\n"))["error"] == "a request is a JSON object"
        assert not json.loads(_raw(path, b"\xff\xfe\n"))["ok"]
        assert agent.calls == []  # nothing was applied
        assert server.stats()["refused"] >= 20
    finally:
        server.close()


def test_oversized_and_idle_clients_are_bounded(tmp_path: Path) -> None:
    import socket
    import threading

    agent = FakeAgent()
    path = tmp_path / "b.sock"
    server = ControlServer(agent, path, max_clients=4, idle_timeout=0.5, max_line=4096)
    server.start()
    try:
        # A line past the bound gets an error and the connection is closed, whatever follows.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            with contextlib.suppress(OSError):  # the server may close while we send
                sock.sendall(b"{" + b" " * 100_000)
            reply = sock.recv(65536)
            assert b"longer than 4096 bytes" in reply
            sock.settimeout(2)
            rest = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    rest += chunk
            assert rest == b""  # closed by the server
        # Idle clients holding every slot are closed after the idle timeout; a client that
        # arrives meanwhile waits in the backlog and is served.
        idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(6)]
        try:
            for sock in idle:
                sock.connect(str(path))
            started = time.monotonic()
            reply = request(path, {"op": "update", "map": "routes", "key": "00",
                                   "value": "01"})
            assert reply["ok"] and time.monotonic() - started >= 0.3
            for sock in idle:
                sock.settimeout(3)
                assert sock.recv(10) == b""  # closed for idleness
        finally:
            for sock in idle:
                sock.close()
        assert threading.active_count() < 20
        # A client that leaves before its reply costs a log line, not a traceback; the
        # write it asked for is applied and counted.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            sock.sendall(b'{"op": "update", "map": "routes", "key": "01", "value": "02"}\n')
        deadline = time.monotonic() + 3
        while len(agent.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert agent.calls[-1] == ("update", "routes", b"\x01", b"\x02", 0)
    finally:
        server.close()


def test_a_full_backlog_is_retried_not_failed(tmp_path: Path) -> None:
    import socket
    import threading

    path = tmp_path / "q.sock"
    # A listener that accepts nothing for a while: its backlog of 1 fills at once.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    fillers = []
    try:
        for _ in range(3):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(str(path))
            fillers.append(s)

        done = threading.Event()

        def serve_later() -> None:
            time.sleep(0.3)
            listener.settimeout(0.1)
            while not done.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                conn.settimeout(0.5)
                data = b""
                with contextlib.suppress(OSError):
                    while not data.endswith(b"\n"):
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                if data:
                    conn.sendall(b'{"ok": true}\n')
                conn.close()

        thread = threading.Thread(target=serve_later)
        thread.start()
        try:
            started = time.monotonic()
            assert request(path, {"op": "status"}, timeout=5) == {"ok": True}
            assert time.monotonic() - started >= 0.25  # it waited for the backlog
        finally:
            done.set()
            for s in fillers:
                s.close()
            thread.join(timeout=5)
    finally:
        listener.close()
