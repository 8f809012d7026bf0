"""`morpheus run` as users start it: a separate process, its socket, status and map
commands, and the options that change how it swaps and checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from morpheus.nf import get
from morpheus.nf.env import NFEnv
from morpheus.runtime.agent import DEFAULT_PIN_ROOT
from morpheus.traffic.generate import generate
from morpheus.traffic.pcap import write_pcap

pytestmark = pytest.mark.kernel
MORPHEUS = [sys.executable, "-m", "morpheus.cli.main"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MORPHEUS, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_an_unreadable_check_trace_is_refused_before_anything_is_attached(
        tmp_path: Path) -> None:
    bogus = tmp_path / "not.pcap"
    bogus.write_bytes(b"hello, this is not a capture file")
    out = _cli("run", str(get("router").object_path), "--iface", "port2",
               "--check-trace", str(bogus))
    assert out.returncode == 2
    assert "cannot read --check-trace" in out.stderr and "not a pcap file" in out.stderr


def test_run_with_prog_array_swaps_and_a_check_trace_then_status_and_map(
        tmp_path: Path) -> None:
    nf = get("router")
    trace = generate(nf, "high", 500, seed=3)
    pcap = tmp_path / "check.pcap"
    write_pcap(pcap, trace.frames)
    name = f"cli{os.getpid()}"
    with NFEnv.start(nf, configure=False) as env:
        proc = subprocess.Popen(
            [*MORPHEUS, "run", str(nf.object_path), "--iface", "port2", "--netns",
             env.namespace.name, "--name", name, "--swap", "prog-array", "--check-trace",
             str(pcap), "--check-packets", "200", "--interval", "0.2", "--detach-on-exit",
             "--log-level", "WARNING"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        try:
            started = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
            assert started["event"] == "running" and started["name"] == name
            status = json.loads(_cli("status", "--name", name, "--json").stdout)
            assert status["program"] == nf.program and status["swap"]["mode"] == "prog-array"
            assert status["version"]["number"] >= 1
            reply = json.loads(_cli("map", "lookup", "rt_config", "00000000",
                                    "--name", name).stdout)
            assert reply["ok"]
            text = _cli("status", "--name", name).stdout
            assert f"{nf.program} on port2" in text and "swaps by prog-array" in text
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read()  # type: ignore[union-attr]
    assert not (DEFAULT_PIN_ROOT / name).exists()  # --detach-on-exit removed the pins
