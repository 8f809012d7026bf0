#!/usr/bin/env python3
"""Render the Grafana dashboard's panels from a real run, without Grafana.

Grafana does not install here (no Debian package, no network), so this does what Grafana
would: a real Prometheus (Debian's `prometheus` package: `apt-get install prometheus`)
scrapes a real agent every second while the router takes live traffic in a namespace, then
every panel query of deploy/grafana/morpheus.json is evaluated by that Prometheus
(/api/v1/query_range, `$instance` = all, `$__rate_interval` = 4 s, four scrape intervals as
Grafana picks it) and plotted with matplotlib, one subplot per panel, swaps (the
dashboard's annotation query) as red lines.

The run: the router under `morpheus run` (default flags), traffic at 40 kpps with high
locality, 80 kpps from 30 s, a new hot set at 50 s, and bursts of 200 route writes through
the agent at 20 s and 60 s. Also saves one frame of `morpheus status --watch` taken during
the run (docs/results/live-view.txt).

    sudo .venv/bin/python scripts/render_dashboard.py [--out docs/results] [--seconds 80]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from morpheus.bench.replay import Replay
from morpheus.demo import ROUTER_PORTS, SocketMap, _attach_sinks
from morpheus.kernel import Map
from morpheus.nf import get
from morpheus.nf.env import NFEnv
from morpheus.nf.router import Route
from morpheus.runtime.agent import DEFAULT_PIN_ROOT
from morpheus.runtime.server import socket_path
from morpheus.traffic.generate import generate

ROOT = Path(__file__).resolve().parents[1]
BOARD = ROOT / "deploy" / "grafana" / "morpheus.json"
MORPHEUS = [sys.executable, "-m", "morpheus.cli.main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Traffic(threading.Thread):
    """Sends the current trace at the current rate (both changeable while it runs)."""

    def __init__(self, gen: Replay, rate: float) -> None:
        super().__init__(daemon=True)
        self.gen, self.rate = gen, rate
        self.stop = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            gen = self.gen
            gen.run()
            next_at += len(gen.frames) / self.rate
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.5:
                next_at = time.monotonic()  # behind: do not burst to catch up


def _prometheus(port: int, target: int, data: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("needs Prometheus: apt-get install prometheus")
    config = data / "prometheus.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "morpheus",
                            "static_configs": [{"targets": [f"127.0.0.1:{target}"]}]}]}))
    return subprocess.Popen([binary, f"--config.file={config}",
                             f"--storage.tsdb.path={data / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _query_range(port: int, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "1"})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query_range?{params}",
                                timeout=30) as reply:
        body = json.loads(reply.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]  # type: ignore[no-any-return]


def _grafana(expr: str) -> str:
    return expr.replace('{instance=~"$instance"}', "").replace("$__rate_interval", "4s")


def _legend(fmt: str, labels: dict[str, str]) -> str:
    out = fmt
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value)
    return out


def run(out: Path, seconds: float) -> None:
    nf = get("router")
    config = nf.module.default_config(1, ROUTER_PORTS)
    high = generate(nf, "high", 2000, seed=7, config=config)
    shift = generate(nf, "shift", 4000, seed=7, config=config)
    shift = shift.segment(len(shift) // 2, len(shift))
    ingress = high.main_ingress
    rx, tx = f"port{ingress}", f"port{ingress + 1 if ingress % 2 == 0 else ingress - 1}"
    name = f"dash{os.getpid()}"
    with ExitStack() as stack:
        data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mph-prom-")))
        env = stack.enter_context(NFEnv.start(nf, config=config, configure=False))
        for link, prog in _attach_sinks(env, exclude={rx, tx}):
            stack.callback(prog.close)
            stack.callback(link.close)
        with env.entered():
            tx_ifindex = socket.if_nametoindex(tx)
        gens = [stack.enter_context(Replay(None, None, {}, t.frames, namespace=env.namespace,
                                           redirect_ifindex=tx_ifindex))
                for t in (high, shift)]
        agent = subprocess.Popen(
            [*MORPHEUS, "run", str(nf.object_path), "--iface", rx, "--netns",
             env.namespace.name, "--name", name, "--metrics-port", "0", "--detach-on-exit",
             "--log-level", "WARNING"], stdout=subprocess.PIPE, text=True)
        stack.callback(agent.wait, 30)
        stack.callback(agent.send_signal, signal.SIGTERM)
        metrics_port = json.loads(agent.stdout.readline())["metrics_port"]  # type: ignore[union-attr]
        prom_port = _free_port()
        prom = _prometheus(prom_port, metrics_port, data)
        stack.callback(prom.wait, 30)
        stack.callback(prom.terminate)
        maps = {n: stack.enter_context(Map.from_pin(DEFAULT_PIN_ROOT / name / "maps" / n))
                for n in ("rt_config", "rt_ifaces", "rt_routes", "rt_nexthops", "rt_stats")}
        cp = nf.control_plane({n: SocketMap(socket_path(name), n, m) for n, m in maps.items()})
        cp.apply(env.config)
        nexthop = config.routes[0].nexthop
        traffic = Traffic(gens[0], 40_000)
        start = time.time()
        traffic.start()
        stack.callback(traffic.join, 10)
        stack.callback(traffic.stop.set)
        events = {20: "writes", 30: "faster", 50: "shift", 60: "writes", 70: "capture"}
        done: set[int] = set()
        while (elapsed := time.time() - start) < seconds:
            for at, what in events.items():
                if elapsed >= at * seconds / 80 and at not in done:
                    done.add(at)
                    if what == "writes":
                        base = 0x0B000000 + at * 0x10000
                        for i in range(200):
                            cp.add_route(Route(base + (i << 8), 24, nexthop))
                    elif what == "faster":
                        traffic.rate = 80_000
                    elif what == "shift":
                        traffic.gen = gens[1]
                    elif what == "capture":
                        frame = subprocess.run([*MORPHEUS, "status", "--name", name, "--watch",
                                                "--frames", "1"], capture_output=True,
                                               text=True, check=True).stdout
                        (out / "live-view.txt").write_text(frame)
            time.sleep(0.2)
        end = time.time()
        traffic.stop.set()
        traffic.join(10)
        time.sleep(2)  # the last scrapes
        _plot(prom_port, start, end, out / "dashboard.png")


def _plot(port: int, start: float, end: float, path: Path) -> None:
    board = json.loads(BOARD.read_text())
    panels = board["panels"]
    # The annotation marks changes of morpheus_version: here, every step where it moved.
    versions = _query_range(port, _grafana(board["annotations"]["list"][0]["expr"])
                            .replace("$__interval", "2s"), start, end)
    swap_marks = sorted({float(t) for series in versions for t, v in series["values"]
                         if float(v) > 0})
    cols = 2
    rows = math.ceil(len(panels) / cols)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(14, 2.6 * rows), sharex=True)
    for ax, panel in zip(axes.flat, panels, strict=False):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        scale, suffix = {"s": (1e3, "ms"), "pps": (1e-3, "kpps"), "bps": (1e-6, "Mbit/s"),
                         "percentunit": (100, "%")}.get(unit, (1, ""))
        plotted = 0
        for target in panel["targets"]:
            for series in _query_range(port, _grafana(target["expr"]), start, end):
                points = [(float(t) - start, float(v) * scale) for t, v in series["values"]
                          if v not in ("NaN", "+Inf", "-Inf")]
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, linewidth=1,
                        label=_legend(target.get("legendFormat", ""), series["metric"]))
                plotted += 1
        for t in swap_marks:
            ax.axvline(t - start, color="tab:red", linewidth=0.6, alpha=0.6)
        ax.set_title(panel["title"], fontsize=9)
        ax.set_ylabel(suffix, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if plotted:
            ax.legend(fontsize=6, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data in this run", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8, color="gray")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Morpheus agent dashboard: panel queries evaluated by Prometheus on a real "
                 "run (x: seconds; red: swaps)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))  # room for the title above the panels
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--seconds", type=float, default=80.0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run(out, args.seconds)


if __name__ == "__main__":
    main()
