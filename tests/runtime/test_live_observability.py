"""What the agent shows under live traffic is true: `morpheus run` with default flags on the
router in a namespace, a generator sending at a known rate into the router's interface, and
`status --json`, the live view and the metrics endpoint all report that rate (within 20%),
from the interface's counters, without BPF run statistics. The Grafana dashboard queries
only metrics this real endpoint exports."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from morpheus.bench.replay import Replay
from morpheus.cli.console import plain
from morpheus.cli.status_cmd import format_pps, live_view
from morpheus.demo import ROUTER_PORTS, SocketMap, _attach_sinks
from morpheus.kernel import Map
from morpheus.nf import get
from morpheus.nf.env import NFEnv
from morpheus.runtime.agent import DEFAULT_PIN_ROOT
from morpheus.runtime.server import socket_path
from morpheus.traffic.generate import generate

pytestmark = pytest.mark.kernel
MORPHEUS = [sys.executable, "-m", "morpheus.cli.main"]
DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "morpheus.json"
RATE = 50_000  # packets per second the generator paces itself to (it keeps it on this VM)


class PacedGenerator(threading.Thread):
    """Sends the trace again and again at `rate` packets per second; records what it sent."""

    def __init__(self, gen: Replay, rate: float) -> None:
        super().__init__(daemon=True)
        self.gen, self.rate = gen, rate
        self.stop = threading.Event()
        self.sent: list[tuple[float, int]] = []  # wall time, frames sent so far
        self.error: BaseException | None = None

    def run(self) -> None:
        total, batch = 0, len(self.gen.frames)
        next_at = time.monotonic()
        self.sent.append((time.time(), 0))
        try:
            while not self.stop.is_set():
                self.gen.run()
                total += batch
                self.sent.append((time.time(), total))
                next_at += batch / self.rate
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:  # starved of CPU: carry on at the pace, no burst to catch up
                    next_at = time.monotonic()
        except BaseException as exc:
            self.error = exc

    def rate_between(self, t0: float, t1: float) -> float:
        """Frames sent per second between wall times t0 and t1 (to the nearest batch)."""
        inside = [(t, n) for t, n in self.sent if t0 <= t <= t1]
        assert len(inside) >= 2, "the generator sent nothing in that window"
        (ta, na), (tb, nb) = inside[0], inside[-1]
        return (nb - na) / (tb - ta)


def _cli(*args: str) -> str:
    out = subprocess.run([*MORPHEUS, *args], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _dashboard_metrics() -> set[str]:
    """Metric names the dashboard's panel queries read (identifiers followed by a selector
    or a range, minus PromQL's own functions and keywords)."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    exprs += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    assert exprs, "the dashboard has no queries"
    names: set[str] = set()
    for expr in exprs:
        stripped = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)  # label matchers, ranges
        stripped = re.sub(r"\b(by|without)\s*\([^)]*\)", " ", stripped)  # grouping labels
        for name in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped):
            if not name.startswith(("morpheus_", "process_", "python_")):
                continue  # functions (rate, sum, histogram_quantile, ...)
            names.add(name)
    return names


_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
             "summary": ("_sum", "_count"), "gauge": ("",), "info": ("_info",)}


def _exported(text: str) -> set[str]:
    """Series names the exposition declares (a labelled counter with no child yet still has
    its HELP and TYPE lines) or has samples for."""
    names: set[str] = set()
    for f in text_string_to_metric_families(text):
        names.update(f.name + suffix for suffix in _SUFFIXES.get(f.type, ("",)))
        names.update(s.name for s in f.samples)
    return names


def test_status_live_view_and_metrics_show_the_generators_rate(tmp_path: Path) -> None:
    nf = get("router")
    config = nf.module.default_config(1, ROUTER_PORTS)
    trace = generate(nf, "high", 1000, seed=7, config=config)
    ingress = trace.main_ingress
    rx, tx = f"port{ingress}", f"port{ingress + 1 if ingress % 2 == 0 else ingress - 1}"
    name = f"obs{os.getpid()}"
    with ExitStack() as stack:
        env = stack.enter_context(NFEnv.start(nf, config=config, configure=False))
        for link, prog in _attach_sinks(env, exclude={rx, tx}):
            stack.callback(prog.close)
            stack.callback(link.close)
        with env.entered():
            tx_ifindex = socket.if_nametoindex(tx)
        gen = stack.enter_context(Replay(None, None, {}, trace.frames,
                                         namespace=env.namespace, redirect_ifindex=tx_ifindex))
        # Default flags: no --run-stats; only what naming the interface and serving the
        # metrics needs.
        proc = subprocess.Popen(
            [*MORPHEUS, "run", str(nf.object_path), "--iface", rx, "--netns",
             env.namespace.name, "--name", name, "--metrics-port", "0", "--detach-on-exit",
             "--log-level", "WARNING"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)

        def stop_agent() -> None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

        stack.callback(stop_agent)
        started = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        port = started["metrics_port"]
        maps = {}
        for map_name in ("rt_config", "rt_ifaces", "rt_routes", "rt_nexthops", "rt_stats"):
            maps[map_name] = stack.enter_context(
                Map.from_pin(DEFAULT_PIN_ROOT / name / "maps" / map_name))
        nf.control_plane({n: SocketMap(socket_path(name), n, m) for n, m in maps.items()}
                         ).apply(env.config)

        generator = PacedGenerator(gen, RATE)
        generator.start()
        stack.callback(generator.join, 10)
        stack.callback(generator.stop.set)
        time.sleep(3.0)  # the agent's first cycles, the meter's first readings
        status = json.loads(_cli("status", "--name", name, "--json"))
        frame_start = time.time()
        frame = _cli("status", "--name", name, "--watch", "--frames", "1")
        frame_at = time.time()  # the frame's figure covers a second within these bounds
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            scrape = reply.read().decode()
        scrape_at = time.time()
        time.sleep(0.1)  # a last batch after the scrape bounds its window
        generator.stop.set()
        generator.join(10)
        assert generator.error is None, generator.error

        # What the generator sent in the very window the agent measured (CLOCK_REALTIME is
        # shared by both processes).
        traffic = status["traffic"]
        sent_rate = generator.rate_between(traffic["window_end"] - traffic["window_s"],
                                           traffic["window_end"])
        throughput = status["throughput"]
        assert set(throughput) == {"pps", "source"}
        assert "netlink" in throughput["source"] and rx in throughput["source"]
        # On a busy shared VM the generator may fall short of its pace; what matters is
        # that the agent reports what was really sent.
        assert sent_rate > RATE / 10, sent_rate
        print(f"generator {sent_rate:.0f} pps, status {throughput['pps']} pps")
        assert throughput["pps"] == pytest.approx(sent_rate, rel=0.2), (throughput, sent_rate)
        assert status["run_stats"] is False and "ns_per_packet" not in status["version"]

        # The live view renders the very figure status gave, and its own frame agrees.
        rendered = plain(live_view({**status, "traffic": status["traffic"]},
                                   status["control_plane"]))
        assert f"throughput {format_pps(throughput['pps'])}" in rendered
        assert "ns/packet needs --run-stats" in rendered
        shown = re.search(r"throughput ([\d.]+) (M|k)pps", frame)
        assert shown is not None, frame
        pps = float(shown.group(1)) * (1e6 if shown.group(2) == "M" else 1e3)
        # The CLI prints its frame after fetching the status; its figure is the agent's
        # last second or so (the window is not in the frame, so allow for its edges).
        frame_rate = generator.rate_between(frame_start - 1.5, frame_at)
        print(f"live view {pps:.0f} pps, generator {frame_rate:.0f} pps")
        assert pps == pytest.approx(frame_rate, rel=0.2), frame

        # The endpoint: the same source, and every metric the dashboard queries.
        families = {f.name: f for f in text_string_to_metric_families(scrape)}
        (sample,) = families["morpheus_throughput_packets_per_second"].samples
        assert sample.labels["source"] == throughput["source"]
        scrape_rate = generator.rate_between(scrape_at - 1.5, scrape_at + 0.1)
        print(f"metrics {sample.value:.0f} pps, generator {scrape_rate:.0f} pps")
        assert sample.value == pytest.approx(scrape_rate, rel=0.2)
        missing = _dashboard_metrics() - _exported(scrape)
        assert not missing, f"the dashboard queries metrics the endpoint does not export: " \
                            f"{sorted(missing)}"
    assert proc.returncode == 0, proc.stderr.read()  # type: ignore[union-attr]
    assert not (DEFAULT_PIN_ROOT / name).exists()


def test_dashboard_queries_parse_to_known_metric_names() -> None:
    """Without a kernel: the names the dashboard reads are ones AgentMetrics registers."""
    from morpheus.runtime.metrics import AgentMetrics
    from tests.runtime.test_metrics import FakeAgent, FakeControl

    metrics = AgentMetrics(FakeAgent(), FakeControl())
    from morpheus.runtime.agent import CycleReport

    metrics.observe_cycle(CycleReport(0.0, "swapped", "", {"verify": 1.0, "swap_call": 0.1,
                                                           "total": 2.0}))
    metrics.observe_cycle(CycleReport(0.0, "failed", "VerifierError: x", {"total": 1.0}))
    missing = _dashboard_metrics() - _exported(metrics.exposition().decode())
    assert not missing, sorted(missing)
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"].lower() for p in board["panels"])
    for topic in ("throughput", "cycle", "phase", "swap", "verifier", "hit rate", "sampling",
                  "guard", "error"):
        assert topic in titles, topic
