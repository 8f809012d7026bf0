"""`morpheus status [--name N] [--json] [--watch]`: what the agent is doing.

Every figure shown is one the agent measured, or is marked unknown with the reason: the
throughput comes from the interface's counters (whatever the agent's options), ns/packet
only from BPF run statistics (`morpheus run --run-stats`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from .console import is_terminal, plain, show, stdout, table

SPARK = " ▁▂▃▄▅▆▇█"
WATCH_SECONDS = 60


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="show an agent's running version, sites and cycles")
    p.add_argument("--name", help="agent name (default: the only one running)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", action="store_true",
                   help="live view: refresh every second with throughput over time")
    p.add_argument("--frames", type=int, metavar="N",
                   help="with --watch: stop after N refreshes (default: until Ctrl-C)")
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
        return watch(args.name, frames=args.frames)
    reply = fetch(args.name)
    if args.json:
        print(json.dumps({**reply["status"], "control_plane": reply["control_plane"]},
                         indent=2))
    else:
        show(status_view(reply["status"], reply["control_plane"]))
    return 0


# --- figures -------------------------------------------------------------------------------

def format_pps(pps: float | None) -> str:
    """Packets per second, scaled: the same string everywhere the figure is shown."""
    if pps is None:
        return "unknown"
    if pps >= 1e6:
        return f"{pps / 1e6:.2f} Mpps"
    if pps >= 1e3:
        return f"{pps / 1e3:.1f} kpps"
    return f"{pps:.0f} pps"


def _ms(value: float | None, unknown: str = "unknown") -> str:
    return unknown if value is None else f"{value:.1f}"


def throughput_line(status: dict[str, Any]) -> Text:
    t = status.get("throughput") or {}
    line = Text("throughput ")
    line.append(format_pps(t.get("pps")), style="bold cyan")
    line.append(f"  (from {t.get('source', 'an agent too old to report it')})", style="dim")
    return line


def _per_packet(status: dict[str, Any]) -> str:
    v = status.get("version") or {}
    if v.get("ns_per_packet") is not None:
        return f"{v.get('packets')} packets, {v['ns_per_packet']} ns/packet"
    if v.get("run_stats") is False or not status.get("run_stats", True):
        return "ns/packet needs --run-stats"
    if "packets" in v:
        return "no packets since the swap: ns/packet unknown"
    return "ns/packet unknown"


# --- the view ------------------------------------------------------------------------------

def status_view(status: dict[str, Any], control: dict[str, Any]) -> RenderableType:
    """The status as rich renderables: a header, the sites, the control plane, the cycles."""
    v = status.get("version") or {}
    header = Text()
    header.append(f"{status['program']} on {status['iface']}", style="bold")
    if status.get("backend") == "userspace":
        header.append("  (backend userspace: JIT-compiled, fed over AF_XDP)")
    else:
        header.append(f"  (pins: {status['pin_dir']})")
    if v:
        insns = f"{v['insns']} instructions" if v.get("insns") else "instructions unknown " \
            "(adopted from a previous agent)"
        version = Text(f"version {v.get('number')} ({v.get('kind')}), {insns}, "
                       f"{_per_packet(status)}")
    else:
        version = Text("no version running yet")
    parts: list[RenderableType] = [header, version, throughput_line(status)]
    sites = sites_table(status)
    if sites is not None:
        parts.append(sites)
    parts.extend(_facts(status, control))
    parts.append(cycles_table(status))
    for e in status.get("errors", [])[-3:]:
        parts.append(Text(f"error: {e}", style="red"))
    return Group(*parts)


def sites_table(status: dict[str, Any]) -> Any:
    """Inlined and sampled sites of the running version; None when there are none."""
    v = status.get("version") or {}
    sampling = {s["instruction"]: s for s in (status.get("sampling") or {}).get("sites", [])}
    rows = [s for s in v.get("sites", []) if s["specialized"] or s["mode"] != "none"]
    listed = {s["instruction"] for s in rows}
    rows += [{"instruction": i, "map": s["map"], "mode": "sampled", "specialized": False,
              "keys": 0} for i, s in sampling.items() if i not in listed]
    if not rows:
        return None
    t = table("site", "map", "mode", "inlined keys", "hit rate", "sampling", "lookups/cycle",
              title="sites", right=("site", "inlined keys", "hit rate", "sampling",
                                    "lookups/cycle"))
    for site in sorted(rows, key=lambda s: s["instruction"]):
        s = sampling.get(site["instruction"])
        if site.get("hit_rate") is not None:
            hit = f"{site['hit_rate']:.0%}"
        elif site["specialized"] and site["mode"] in ("table", "constant"):
            hit = "all (whole table)"  # every lookup is answered inline
        else:
            hit = "not sampled" if s is None else "-"
        rate = f"1/{s['rate']}" if s and s.get("rate") else "not sampled"
        lookups = str(s["lookups"]) if s and s.get("lookups") is not None else "-"
        t.add_row(str(site["instruction"]), site["map"], site["mode"],
                  str(site.get("keys", 0)), hit, rate, lookups)
    return t


def _facts(status: dict[str, Any], control: dict[str, Any]) -> list[RenderableType]:
    out: list[RenderableType] = []
    cost = status.get("instrumentation") or {}
    if cost.get("state") == "measured":
        out.append(Text(f"sampling cost: {cost['ns_per_packet']:+.1f} ns/packet "
                        f"({cost['plain_ns']} → {cost['instrumented_ns']} ns, "
                        f"{cost['packets']} packets)"))
    elif cost:
        out.append(Text(f"sampling cost: {cost.get('state')}"))
    watcher = status.get("watcher")
    if watcher is not None:
        out.append(Text(
            f"write watcher: pinned at {watcher['path']} ({watcher['maps']} maps; outlives "
            "the agent)" if watcher["pinned"] else
            f"write watcher: running, not pinned ({watcher['maps']} maps)" if watcher["running"]
            else "write watcher: none (writes must go through the agent)"))
    swap = status.get("swap") or {}
    if swap:
        last = f", last swap call {swap['last_us']} µs" if swap.get("last_us") else \
            ", no swap yet"
        out.append(Text(f"swaps by {swap.get('mode')}{last}"))
    afxdp = status.get("afxdp") or {}
    if afxdp:
        verdicts = ", ".join(f"{k} {v}" for k, v in (afxdp.get("verdicts") or {}).items() if v)
        out.append(Text(f"AF_XDP ({afxdp.get('mode')} mode, queue {afxdp.get('queue')}): "
                        f"{afxdp.get('frames', 0)} frames in {afxdp.get('batches', 0)} "
                        f"batches ({verdicts or 'none yet'}); {afxdp.get('pauses', 0)} pauses "
                        f"between batches, {afxdp.get('pause_wait_us')} µs wait on average"))
        if afxdp.get("poller_error"):
            out.append(Text(f"poller stopped: {afxdp['poller_error']}", style="red"))
    check = status.get("check") or {}
    if check:
        verdict = "equivalent" if check.get("equivalent") else "DIFFERENT: not swapped in"
        out.append(Text(f"last pre-swap check: version {check.get('version')} on "
                        f"{check.get('packets')} frames, {verdict}"))
    writes = control.get("writes", 0)
    if writes:
        out.append(Text(f"control plane: {writes} writes, median {control.get('median_ms')} "
                        f"ms, max {control.get('max_ms')} ms"))
    else:
        out.append(Text("control plane: 0 writes (no latency measured yet)"))
    snap = status.get("snapshot") or {}
    if snap:
        out.append(Text(f"snapshots retaken after concurrent writes: {snap.get('retries', 0)}, "
                        f"cycles deferred: {snap.get('deferred_cycles', 0)} (not errors)"))
    paused = status.get("paused_maps") or {}
    if paused:
        out.append(Text("paused (written all the time): " + ", ".join(
            f"{m} for {n} cycles" for m, n in sorted(paused.items()))))
    return out


_PHASES = ("profile", "snapshot", "specialize", "verify", "check", "swap")


def cycles_table(status: dict[str, Any], count: int = 5) -> Any:
    t = table("outcome", "total ms", *_PHASES, "reason", title="recent cycles (ms)",
              right=("total ms", *_PHASES))
    for c in status.get("cycles", [])[-count:]:
        ms = c.get("ms", {})
        t.add_row(c["outcome"], _ms(ms.get("total")), *(_ms(ms.get(p), "-") for p in _PHASES),
                  c["reason"][:40])
    return t


def render(status: dict[str, Any], control: dict[str, Any]) -> str:
    """The status as plain text (what `morpheus status` prints when not on a terminal)."""
    return plain(status_view(status, control))


# --- the live view ---------------------------------------------------------------------

def sparkline(status: dict[str, Any], now: float, seconds: int = WATCH_SECONDS
              ) -> tuple[Text, Text, float]:
    """Throughput over the last `seconds` (one column a second, from the agent's readings
    of the interface counters) and a line under it marking the swaps; and the peak."""
    history = (status.get("traffic") or {}).get("history", [])
    columns: list[list[float]] = [[] for _ in range(seconds)]
    for t, pps in history:
        age = now - t
        if 0 <= age < seconds:
            columns[seconds - 1 - int(age)].append(pps)
    values = [sum(c) / len(c) if c else None for c in columns]
    peak = max((x for x in values if x is not None), default=0.0)
    spark = Text()
    for x in values:
        if x is None:
            spark.append("·", style="dim")  # no reading in that second: unknown, not 0
        else:
            spark.append(SPARK[round(x / peak * (len(SPARK) - 1)) if peak else 0],
                         style="cyan")
    marks = [" "] * seconds
    for swap in status.get("swaps", []):
        age = now - swap["at"]
        if 0 <= age < seconds:
            marks[seconds - 1 - int(age)] = "▲"
    return spark, Text("".join(marks), style="red"), peak


def live_view(status: dict[str, Any], control: dict[str, Any], now: float | None = None
              ) -> RenderableType:
    """`status --watch`: the throughput over the last minute with the swaps marked, then the
    status."""
    now = time.time() if now is None else now
    spark, marks, peak = sparkline(status, now)
    recent = sum(1 for s in status.get("swaps", []) if 0 <= now - s["at"] < WATCH_SECONDS)
    chart = Group(
        throughput_line(status),
        Text.assemble("|", spark, f"|  peak {format_pps(peak) if peak else 'unknown'}"),
        Text.assemble(" ", marks, f"   ▲ swap ({recent} in the last {WATCH_SECONDS} s)"),
    )
    return Group(chart, Text(""), status_view(status, control))


def watch(name: str | None, *, frames: int | None = None, interval: float = 1.0) -> int:
    """The live view, refreshed every `interval` s (on a terminal, in place through rich's
    Live; otherwise one plain frame after another, separated by a blank line)."""
    shown = 0
    try:
        if is_terminal():
            from rich.live import Live

            with Live(console=stdout(), auto_refresh=False, screen=False) as live:
                while frames is None or shown < frames:
                    reply = fetch(name)
                    live.update(live_view(reply["status"], reply["control_plane"]),
                                refresh=True)
                    shown += 1
                    time.sleep(interval)
        else:
            while frames is None or shown < frames:
                reply = fetch(name)
                if shown:
                    print()
                print(plain(live_view(reply["status"], reply["control_plane"])), flush=True)
                shown += 1
                if frames is None or shown < frames:
                    time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    return 0
