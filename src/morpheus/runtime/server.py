"""The agent's local endpoints: a control socket and a Prometheus metrics page.

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
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


def prometheus_text(status: dict[str, Any], control: dict[str, Any]) -> str:
    """Metrics in the Prometheus text exposition format."""
    # The format wants every sample of a metric in one group under its HELP/TYPE lines.
    groups: dict[str, list[str]] = {}

    def metric(name: str, value: float | int | None, help_text: str, labels: str = "",
               kind: str = "gauge") -> None:
        if value is None:
            return
        group = groups.setdefault(name, [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])
        group.append(f"{name}{labels} {value}")

    version = status.get("version") or {}
    metric("morpheus_version", version.get("number"), "Number of the running version")
    metric("morpheus_version_packets", version.get("packets"),
           "Packets processed by the running version", kind="counter")
    metric("morpheus_ns_per_packet", version.get("ns_per_packet"),
           "Average run time per packet of the running version (BPF run stats)")
    outcomes: dict[str, int] = {}
    for c in status.get("cycles", []):
        outcomes[c["outcome"]] = outcomes.get(c["outcome"], 0) + 1
        metric("morpheus_cycle_ms", c["ms"].get("total"), "Duration of the last cycles")
    for outcome, count in outcomes.items():
        metric("morpheus_recent_cycles", count, "Recent cycles by outcome",
               f'{{outcome="{outcome}"}}')
    for site in version.get("sites", []):
        labels = f'{{map="{site["map"]}",instruction="{site["instruction"]}"}}'
        metric("morpheus_site_inlined_keys", site.get("keys", 0),
               "Keys inlined at a lookup site", labels)
        metric("morpheus_site_hit_rate", site.get("hit_rate"),
               "Share of sampled lookups answered by inlined keys", labels)
    for s in status.get("sampling", {}).get("sites", []):
        labels = f'{{map="{s["map"]}",instruction="{s["instruction"]}"}}'
        metric("morpheus_site_lookups", s.get("lookups"), "Lookups since the last cycle",
               labels)
        metric("morpheus_site_sample_rate", s.get("rate"),
               "One lookup in this many is sampled at the site", labels)
    metric("morpheus_instrumentation_ns_per_packet",
           (status.get("instrumentation") or {}).get("ns_per_packet"),
           "What key sampling adds per packet, measured on live traffic")
    metric("morpheus_control_plane_writes_total", control.get("writes"),
           "Writes made through the agent", kind="counter")
    metric("morpheus_control_plane_write_ms", control.get("median_ms"),
           "Median latency of a write through the agent")
    metric("morpheus_errors", len(status.get("errors", [])), "Recent errors")
    return "\n".join(line for group in groups.values() for line in group) + "\n"


class MetricsServer:
    """A tiny HTTP server for /metrics on 127.0.0.1."""

    def __init__(self, source: Callable[[], str], port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.rstrip("/") not in ("/metrics", ""):
                    self.send_error(404)
                    return
                body = source().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="morpheus-metrics")

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
