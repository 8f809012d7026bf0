"""The control socket: owner-only, one JSON request per line, clear errors, nothing changed
by a malformed request."""

from __future__ import annotations

import stat
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
