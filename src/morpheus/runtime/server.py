"""The agent's control socket (its Prometheus metrics are in `runtime.metrics`).

Control socket: a Unix stream socket readable and writable by its owner only (0600). One
JSON object per line in, one per line out:

    {"op": "update", "map": "rt_routes", "key": "<hex>", "value": "<hex>", "flags": 0}
    {"op": "delete", "map": "...", "key": "<hex>"}
    {"op": "batch", "map": "...", "entries": [["<hex key>", "<hex value>"], ...]}
    {"op": "lookup", "map": "...", "key": "<hex>"}
    {"op": "status"}

Replies are {"ok": true, ...} or {"ok": false, "error": "..."}; a malformed request gets an
error reply and changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Any

SOCKET_DIR = Path("/run/morpheus")


def socket_path(name: str) -> Path:
    return SOCKET_DIR / f"{name}.sock"


class ControlServer:
    """Serves control-plane requests for an agent on a Unix socket."""

    def __init__(self, agent: Any, path: Path) -> None:
        self.agent = agent
        self.path = path
        self.writes = 0
        self.write_ms: list[float] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    if not line.strip():
                        continue
                    reply = server.handle(line)
                    self.wfile.write(json.dumps(reply).encode() + b"\n")
                    self.wfile.flush()

        old_umask = os.umask(0o177)  # the socket is created 0600: owner only
        try:
            self._server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="morpheus-control")

    def start(self) -> None:
        self._thread.start()

    def handle(self, raw: bytes) -> dict[str, Any]:
        try:
            request = json.loads(raw)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            op = request.get("op")
            if op == "status":
                return {"ok": True, "status": self.agent.status(),
                        "control_plane": self.stats()}
            name = _field(request, "map", str)
            if op == "lookup":
                value = self.agent.lookup(name, _hex(request, "key"))
                if isinstance(value, list):
                    return {"ok": True, "value": [v.hex() for v in value]}
                return {"ok": True, "value": value.hex() if value is not None else None}
            start = time.perf_counter()
            if op == "update":
                self.agent.update(name, _hex(request, "key"), _hex(request, "value"),
                                  int(request.get("flags", 0)))
            elif op == "delete":
                self.agent.delete(name, _hex(request, "key"))
            elif op == "batch":
                entries = request.get("entries")
                if not isinstance(entries, list) or not all(
                        isinstance(e, list) and len(e) == 2 for e in entries):
                    raise ValueError("entries must be a list of [key, value] hex pairs")
                self.agent.update_batch(name, [(bytes.fromhex(k), bytes.fromhex(v))
                                               for k, v in entries])
            else:
                raise ValueError(f"unknown op {op!r}; known: update, delete, batch, lookup, "
                                 "status")
            elapsed = (time.perf_counter() - start) * 1000
            self.writes += 1
            self.write_ms = ([*self.write_ms, elapsed])[-1000:]
            return {"ok": True, "ms": round(elapsed, 3)}
        except KeyError as exc:
            return {"ok": False, "error": str(exc.args[0] if exc.args else exc)}
        except (ValueError, TypeError, OSError, RuntimeError) as exc:
            return {"ok": False, "error": str(exc)}

    def stats(self) -> dict[str, Any]:
        ordered = sorted(self.write_ms)
        return {"writes": self.writes,
                "median_ms": round(ordered[len(ordered) // 2], 3) if ordered else None,
                "max_ms": round(ordered[-1], 3) if ordered else None}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _field(request: dict[str, Any], name: str, kind: type) -> Any:
    if not isinstance(request.get(name), kind):
        raise ValueError(f"field {name!r} is missing or not a {kind.__name__}")
    return request[name]


def _hex(request: dict[str, Any], name: str) -> bytes:
    value = _field(request, name, str)
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"field {name!r} is not hex: {value!r}") from None


def request(path: Path, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to an agent's control socket and return its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise RuntimeError(f"no agent listening on {path} (is `morpheus run` running?)"
                               ) from None
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)  # type: ignore[no-any-return]
