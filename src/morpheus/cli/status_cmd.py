"""`morpheus status [--name N] [--json] [--watch]`: what the agent is doing."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="show an agent's running version, sites and cycles")
    p.add_argument("--name", help="agent name (default: the only one running)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", action="store_true",
                   help="live view: refresh every second with throughput over time")
    p.set_defaults(func=run)


def agent_socket(name: str | None) -> Path:
    from ..runtime.server import SOCKET_DIR, socket_path

    if name:
        return socket_path(name)
    sockets = sorted(SOCKET_DIR.glob("*.sock")) if SOCKET_DIR.exists() else []
    if len(sockets) != 1:
        found = ", ".join(s.stem for s in sockets) or "none"
        raise RuntimeError(f"name the agent with --name (running agents: {found})")
    return sockets[0]


def fetch(name: str | None) -> dict[str, Any]:
    from ..runtime.server import request

    reply = request(agent_socket(name), {"op": "status"})
    if not reply.get("ok"):
        raise RuntimeError(reply.get("error", "agent error"))
    return reply


def run(args: argparse.Namespace) -> int:
    if args.watch:
        return watch(args.name)
    reply = fetch(args.name)
    if args.json:
        print(json.dumps({**reply["status"], "control_plane": reply["control_plane"]},
                         indent=2))
    else:
        print(render(reply["status"], reply["control_plane"]))
    return 0


def render(status: dict[str, Any], control: dict[str, Any]) -> str:
    v = status.get("version") or {}
    lines = [f"{status['program']} on {status['iface']}  (pins: {status['pin_dir']})",
             f"version {v.get('number')} ({v.get('kind')}), {v.get('insns')} instructions, "
             f"{v.get('packets', 0)} packets, {v.get('ns_per_packet')} ns/packet"]
    rates = {s["instruction"]: s.get("rate")
             for s in status.get("sampling", {}).get("sites", [])}
    for site in v.get("sites", []):
        if site["specialized"] or site["mode"] != "none":
            hit = f", hit rate {site['hit_rate']:.0%}" if site.get("hit_rate") is not None \
                else ""
            rate = rates.get(site["instruction"])
            sampled = f", sampling 1/{rate}" if rate else ""
            lines.append(f"  site {site['instruction']:>4} {site['map']:<14} {site['mode']:<8} "
                         f"{site['keys']} keys{hit}{sampled}")
    cost = status.get("instrumentation") or {}
    if cost.get("state") == "measured":
        lines.append(f"sampling cost: {cost['ns_per_packet']:+.1f} ns/packet "
                     f"({cost['plain_ns']} → {cost['instrumented_ns']} ns, "
                     f"{cost['packets']} packets)")
    elif cost:
        lines.append(f"sampling cost: {cost.get('state')}")
    swap = status.get("swap") or {}
    if swap:
        last = f", last swap call {swap['last_us']} µs" if swap.get("last_us") else ""
        lines.append(f"swaps by {swap.get('mode')}{last}")
    lines.append(f"control plane: {control.get('writes', 0)} writes, median "
                 f"{control.get('median_ms')} ms")
    lines.append("recent cycles:")
    for c in status.get("cycles", [])[-5:]:
        lines.append(f"  {c['outcome']:<10} {c['ms'].get('total', 0):7.1f} ms  {c['reason'][:70]}")
    for e in status.get("errors", [])[-3:]:
        lines.append(f"  error: {e}")
    return "\n".join(lines)


def watch(name: str | None) -> int:
    """A terminal view: the status, and packets per second over the last minute."""
    history: list[float] = []
    last: tuple[float, int, int] | None = None
    bars = " ▁▂▃▄▅▆▇█"
    try:
        while True:
            reply = fetch(name)
            status = reply["status"]
            v = status.get("version") or {}
            now = time.time()
            packets = int(v.get("packets") or 0)
            number = int(v.get("number") or 0)
            if last is not None and last[2] == number and now > last[0]:
                history.append(max(0.0, (packets - last[1]) / (now - last[0])))
            elif last is not None:
                history.append(history[-1] if history else 0.0)
            last = (now, packets, number)
            history = history[-60:]
            peak = max(history) if history else 0
            spark = "".join(bars[int(h / peak * (len(bars) - 1))] if peak else " "
                            for h in history)
            rate = history[-1] if history else 0
            print("\033[2J\033[H" + render(status, reply["control_plane"]))
            print(f"\nthroughput {rate / 1e6:6.2f} Mpps  |{spark}|  (last 60 s)", flush=True)
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
