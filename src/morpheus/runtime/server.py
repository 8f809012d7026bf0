"""The agent's control socket (its Prometheus metrics are in `runtime.metrics`).

Control socket: a Unix stream socket readable and writable by its owner only (0600). One
JSON object per line in, one per line out:

    {"op": "update", "map": "rt_routes", "key": "<hex>", "value": "<hex>", "flags": 0}
    {"op": "delete", "map": "...", "key": "<hex>"}
    {"op": "batch", "map": "...", "entries": [["<hex key>", "<hex value>"], ...]}
    {"op": "lookup", "map": "...", "key": "<hex>"}
    {"op": "status"}

Replies are {"ok": true, ...} or {"ok": false, "error": "..."}; a malformed request gets an
error reply and changes nothing. Every field is checked: no unknown fields, hex without
separators, flags one of BPF_ANY (0), BPF_NOEXIST (1), BPF_EXIST (2), BPF_F_LOCK (4), no
non-finite numbers; the agent checks key and value sizes against the map.

Bounds: a request line is at most MAX_LINE bytes (a longer one gets an error reply and the
connection is closed: the stream cannot be resynchronised); at most `max_clients`
connections are served at once (the next ones wait in the listen backlog, which clients
retry on when it is full); a connection idle for `idle_timeout` seconds is closed. A write
is acknowledged once applied; if the client is gone by then, the write stays applied and the
lost reply is logged.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Any

SOCKET_DIR = Path("/run/morpheus")
MAX_LINE = 1 << 20  # bytes per request line (a batch of ~20,000 small entries)
MAX_BATCH = 100_000  # entries per batch request
MAX_HEX = 2 * (1 << 16)  # hex digits in one key or value (64 KiB)
MAX_MAP_NAME = 64
BACKLOG = 512
MAX_CLIENTS = 64
IDLE_TIMEOUT = 30.0
UPDATE_FLAGS = (0, 1, 2, 4)

_FIELDS = {
    "status": set(),
    "lookup": {"map", "key"},
    "update": {"map", "key", "value", "flags"},
    "delete": {"map", "key"},
    "batch": {"map", "entries"},
}
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
log = logging.getLogger("morpheus.control")


class RequestError(ValueError):
    """A request the server refuses; the message goes back to the client."""


def socket_path(name: str) -> Path:
    return SOCKET_DIR / f"{name}.sock"


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = BACKLOG

    def __init__(self, path: str, handler: type, max_clients: int) -> None:
        self.slots = threading.BoundedSemaphore(max_clients)
        self.closing = threading.Event()
        super().__init__(path, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # At capacity, stop accepting: further clients wait in the listen backlog instead
        # of being refused (a thread per connection, bounded).
        while not self.slots.acquire(timeout=0.2):
            if self.closing.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning(json.dumps({"event": "control-connection-error",
                                "error": repr(_current_exception())}))


def _current_exception() -> BaseException | None:
    import sys

    return sys.exc_info()[1]


class ControlServer:
    """Serves control-plane requests for an agent on a Unix socket."""

    def __init__(self, agent: Any, path: Path, *, max_clients: int = MAX_CLIENTS,
                 idle_timeout: float = IDLE_TIMEOUT, max_line: int = MAX_LINE) -> None:
        self.agent = agent
        self.path = path
        self.writes = 0
        self.refused = 0
        self.lost_replies = 0
        self.write_ms: list[float] = []
        self._stats_lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Only the agent holding this name's lock gets here: a socket left at `path` is a
        # dead agent's.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = idle_timeout

            def handle(self) -> None:
                server._serve(self.rfile, self.wfile, max_line)

        old_umask = os.umask(0o177)  # the socket is created 0600: owner only
        try:
            self._server = _Server(str(path), Handler, max_clients)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self._inode = os.stat(path).st_ino
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="morpheus-control")

    def start(self) -> None:
        self._thread.start()

    def _serve(self, rfile: Any, wfile: Any, max_line: int) -> None:
        while True:
            try:
                line = rfile.readline(max_line + 1)
            except TimeoutError:
                return  # idle: the connection is closed
            except (ConnectionError, OSError):
                return
            if not line:
                return
            if len(line) > max_line:
                self._refuse()
                self._reply(wfile, {"ok": False, "error": f"request longer than {max_line} "
                                    "bytes: refused, and the connection is closed"}, None)
                return
            if not line.strip():
                continue
            reply = self.handle(line)
            self._reply(wfile, reply, line)

    def _reply(self, wfile: Any, reply: dict[str, Any], line: bytes | None) -> None:
        try:
            wfile.write(json.dumps(reply).encode() + b"\n")
            wfile.flush()
        except (ConnectionError, OSError, ValueError):
            # The client left before its reply: what it asked for is done (or refused);
            # say so in the log rather than with a traceback.
            with self._stats_lock:
                self.lost_replies += 1
            op = None
            with contextlib.suppress(ValueError, AttributeError):
                op = json.loads(line or b"{}").get("op")
            log.info(json.dumps({"event": "reply-lost", "op": op, "ok": reply.get("ok")}))

    def _refuse(self) -> None:
        with self._stats_lock:
            self.refused += 1

    def handle(self, raw: bytes) -> dict[str, Any]:
        try:
            request = _parse(raw)
            op = request["op"]
            if op == "status":
                return {"ok": True, "status": self.agent.status(),
                        "control_plane": self.stats()}
            name = _map_name(request)
            if op == "lookup":
                value = self.agent.lookup(name, _hex(request, "key"))
                if isinstance(value, list):
                    return {"ok": True, "value": [v.hex() for v in value]}
                return {"ok": True, "value": value.hex() if value is not None else None}
            start = time.perf_counter()
            if op == "update":
                key, value = _hex(request, "key"), _hex(request, "value")
                self.agent.update(name, key, value, _flags(request))
            elif op == "delete":
                self.agent.delete(name, _hex(request, "key"))
            else:
                self.agent.update_batch(name, _entries(request))
            elapsed = (time.perf_counter() - start) * 1000
            with self._stats_lock:
                self.writes += 1
                self.write_ms.append(elapsed)
                if len(self.write_ms) > 2000:
                    del self.write_ms[:1000]
            return {"ok": True, "ms": round(elapsed, 3)}
        except KeyError as exc:
            self._refuse()
            return {"ok": False, "error": str(exc.args[0] if exc.args else exc)}
        except (ValueError, TypeError, OSError, RuntimeError) as exc:
            self._refuse()
            return {"ok": False, "error": str(exc)}

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            ordered = sorted(self.write_ms[-1000:])
            writes, refused, lost = self.writes, self.refused, self.lost_replies
        return {"writes": writes, "refused": refused, "lost_replies": lost,
                "median_ms": round(ordered[len(ordered) // 2], 3) if ordered else None,
                "max_ms": round(ordered[-1], 3) if ordered else None}

    def close(self) -> None:
        self._server.closing.set()
        self._server.shutdown()
        self._server.server_close()
        # Unlink the socket only if it is still ours (not a successor's).
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()


def _reject_constant(name: str) -> None:
    raise RequestError(f"non-finite number {name} in the request")


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        request = json.loads(raw, parse_constant=_reject_constant)
    except RequestError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"a request is one JSON object per line: {exc}") from None
    if not isinstance(request, dict):
        raise RequestError("a request is a JSON object")
    op = request.get("op")
    if not isinstance(op, str) or op not in _FIELDS:
        raise RequestError(f"unknown op {op!r}; known: update, delete, batch, lookup, status")
    unknown = sorted(set(request) - _FIELDS[op] - {"op"})
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r} for op {op!r}; fields: "
                           f"{', '.join(sorted(_FIELDS[op])) or 'none'}")
    return request


def _field(request: dict[str, Any], name: str, kind: type) -> Any:
    value = request.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RequestError(f"field {name!r} is missing or not a {kind.__name__}")
    return value


def _map_name(request: dict[str, Any]) -> str:
    name = _field(request, "map", str)
    if not name or len(name) > MAX_MAP_NAME:
        raise RequestError(f"field 'map' must be 1-{MAX_MAP_NAME} characters")
    return name  # type: ignore[no-any-return]


def _hex_bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise RequestError(f"{what} is not a hex string")
    if len(value) > MAX_HEX:
        raise RequestError(f"{what} is longer than {MAX_HEX // 2} bytes")
    if not _HEX.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise RequestError(f"{what} is not hex (pairs of 0-9a-f, no spaces): {shown!r}")
    return bytes.fromhex(value)


def _hex(request: dict[str, Any], name: str) -> bytes:
    if name not in request:
        raise RequestError(f"field {name!r} is missing")
    return _hex_bytes(request[name], f"field {name!r}")


def _flags(request: dict[str, Any]) -> int:
    flags = request.get("flags", 0)
    if isinstance(flags, bool) or not isinstance(flags, int):
        raise RequestError(f"field 'flags' must be an integer, not {flags!r}")
    if flags not in UPDATE_FLAGS:
        raise RequestError(f"field 'flags' must be one of 0 (BPF_ANY), 1 (BPF_NOEXIST), "
                           f"2 (BPF_EXIST), 4 (BPF_F_LOCK), not {flags}")
    return flags


def _entries(request: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    entries = request.get("entries")
    if not isinstance(entries, list) or not all(
            isinstance(e, list) and len(e) == 2 for e in entries):
        raise RequestError("entries must be a list of [key, value] hex pairs")
    if not entries or len(entries) > MAX_BATCH:
        raise RequestError(f"a batch holds 1 to {MAX_BATCH} entries, not {len(entries)}")
    return [(_hex_bytes(k, f"key of entry {n}"), _hex_bytes(v, f"value of entry {n}"))
            for n, (k, v) in enumerate(entries)]


def request(path: Path, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to an agent's control socket and return its reply. A full listen
    backlog (EAGAIN) is retried with backoff until `timeout`; RuntimeError when no agent
    listens, or the connection ends without a reply."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            sock.connect(str(path))
            break
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise RuntimeError(f"no agent listening on {path} (is `morpheus run` running?)"
                               ) from None
        except (BlockingIOError, TimeoutError, InterruptedError, OSError) as exc:
            sock.close()
            retry = isinstance(exc, BlockingIOError) or getattr(exc, "errno", None) in (
                errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR) or isinstance(exc, TimeoutError)
            if not retry:
                raise RuntimeError(f"cannot connect to {path}: {exc}") from None
            if time.monotonic() + delay > deadline:
                raise RuntimeError(f"the agent on {path} did not accept the connection "
                                   f"within {timeout} s (busy)") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    with sock:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise RuntimeError(f"no reply from the agent on {path} within {timeout} s; the "
                               "request may still be applied") from None
        except ConnectionError as exc:
            raise RuntimeError(f"the agent on {path} dropped the connection ({exc}); the "
                               "request may or may not have been applied") from None
    if not data.endswith(b"\n"):
        raise RuntimeError(f"the agent on {path} closed the connection without replying; "
                           "the request may or may not have been applied")
    try:
        return json.loads(data)  # type: ignore[no-any-return]
    except ValueError:
        raise RuntimeError(f"the agent on {path} sent a reply that is not JSON: "
                           f"{data[:200]!r}") from None
