"""Kernel differential tests: each NF's loaded XDP program against its reference model.

For every NF the test starts the program in its own namespace (NFEnv), then sends the same
frames in the same order through the kernel (one BPF_PROG_TEST_RUN each) and through a fresh
`Reference` of the same configuration. Every frame must get the same verdict and leave the
same bytes. Mid-stream a control-plane change goes to both sides (to the kernel through the
NF's ControlPlane, to the model through `set_config`, which keeps the state the data plane
keeps). At the end the state the data plane wrote must agree as well: the switch's MAC table,
the firewall's connection table, the load balancer's connection table, and every per-CPU
counter summed over CPUs.

Traffic: a few thousand flows of each NF's own generator with a skewed popularity (so most
flows see several packets: connection hits, MAC refreshes), some reversed (firewall replies)
or moved (switch stations changing ports), the NF's scripted edge cases before and after the
change, and new flows of the new configuration.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from morpheus.kernel import TestRunResult as RunResult  # "Test*" names get collected
from morpheus.nf import NAMES, lb
from morpheus.nf import firewall as fw
from morpheus.nf import router as rt
from morpheus.nf import switch as sw
from morpheus.nf.common import XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, Outcome, verdict_name
from morpheus.nf.env import NFEnv

pytestmark = pytest.mark.kernel

Frames = Iterable[tuple[bytes, int]]
StateCheck = Callable[["Run"], None]  # compares the final kernel state with the model's
HEX_BYTES = 64  # how much of a frame a mismatch report shows


@dataclass(frozen=True)
class Scale:
    """How much traffic one scenario sends."""

    flows: int  # distinct flows of the initial configuration
    packets: int  # flow packets before the control-plane change
    after: int  # flow packets after it (old and new flows mixed)
    new_flows: int  # flows generated from the new configuration
    edge_cases: int | None  # None: every scripted edge case, in order; n: a sample of n


FULL = Scale(flows=2000, packets=5000, after=2500, new_flows=300, edge_cases=None)
SMALL = Scale(flows=40, packets=100, after=70, new_flows=10, edge_cases=15)


# --- lockstep runner -------------------------------------------------------------------------


class Diverged(Exception):
    """The kernel and the model disagreed on a frame; the message says where and how."""


def first_difference(a: bytes, b: bytes) -> int | None:
    """Offset of the first byte where `a` and `b` differ (a length difference counts at the
    end of the shorter one); None if they are equal."""
    for offset, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return offset
    return None if len(a) == len(b) else min(len(a), len(b))


def _hex(data: bytes, start: int = 0) -> str:
    chunk = data[start:start + HEX_BYTES]
    return chunk.hex() + ("..." if len(data) > start + HEX_BYTES else "")


def describe_mismatch(index: int, phase: str, frame: bytes, ifindex: int, got: RunResult,
                      want: Outcome) -> str:
    out = got.data or b""
    offset = first_difference(out, want.frame)
    where = ("output bytes equal" if offset is None else
             f"first differing output byte at offset {offset} (kernel {len(out)} bytes, "
             f"model {len(want.frame)} bytes)")
    lines = [f"packet #{index} ({phase}), ingress ifindex {ifindex}, {len(frame)} bytes: "
             f"kernel {verdict_name(got.retval)}, model {verdict_name(want.verdict)}; {where}",
             f"  {'input':<14}{_hex(frame)}"]
    if offset is not None:
        start = max(0, offset - 16)  # a little context before the first difference
        lines += [f"  {f'kernel @{start}':<14}{_hex(out, start)}",
                  f"  {f'model  @{start}':<14}{_hex(want.frame, start)}"]
    return "\n".join(lines)


@dataclass
class Stream:
    """Feeds frames to the kernel and to the model in lockstep; stops at the first frame on
    which they disagree (the model's state is meaningless after that)."""

    env: NFEnv
    model: Any
    sent: int = 0
    verdicts: Counter[int] = field(default_factory=Counter)
    changes: list[str] = field(default_factory=list)  # control-plane changes, for reports

    def feed(self, frames: Frames, phase: str) -> None:
        for frame, ifindex in frames:
            got = self.env.run(frame, ifindex)
            want = self.model.process(frame, ifindex)
            if got.retval != want.verdict or got.data != want.frame:
                raise Diverged(describe_mismatch(self.sent, phase, frame, ifindex, got, want))
            self.verdicts[want.verdict] += 1
            self.sent += 1


def popular(items: Sequence[Any], count: int, rng: random.Random) -> list[Any]:
    """`count` draws from `items`, skewed towards the front (index ~ n·u², so the first 10%
    get about a third of the draws): heavy hitters see many packets, the tail one or two."""
    return [items[int(len(items) * rng.random() ** 2)] for _ in range(count)]


def edge_sample(frames: list[tuple[bytes, int]], scale: Scale,
                rng: random.Random) -> list[tuple[bytes, int]]:
    if scale.edge_cases is None:
        return frames
    return [frames[i] for i in sorted(rng.sample(range(len(frames)),
                                                 min(scale.edge_cases, len(frames))))]


def percpu_sum(raw: bytes | list[bytes] | None, decode: Callable[[bytes], tuple[int, ...]]
               ) -> tuple[int, ...]:
    """A per-CPU counter summed over CPUs, field by field."""
    if raw is None:
        raise AssertionError("a per-CPU array slot is missing")  # arrays have every slot
    values = raw if isinstance(raw, list) else [raw]
    return tuple(sum(column) for column in zip(*(decode(v) for v in values), strict=True))


def table_problems(name: str, kernel: Mapping[Any, Any], model: Mapping[Any, Any],
                   show: int = 5) -> list[str]:
    """Differences between a map's contents and the model's, a few of each kind."""
    missing = [k for k in model if k not in kernel]
    extra = [k for k in kernel if k not in model]
    changed = [k for k in model if k in kernel and kernel[k] != model[k]]
    problems = []
    if missing:
        problems.append(f"{name}: {len(missing)} entries only in the model, e.g. "
                        + ", ".join(f"{k}: {model[k]}" for k in missing[:show]))
    if extra:
        problems.append(f"{name}: {len(extra)} entries only in the kernel, e.g. "
                        + ", ".join(f"{k}: {kernel[k]}" for k in extra[:show]))
    if changed:
        problems.append(f"{name}: {len(changed)} entries differ, e.g. "
                        + ", ".join(f"{k}: kernel {kernel[k]} model {model[k]}"
                                    for k in changed[:show]))
    return problems


@dataclass
class Run:
    """What one scenario produced: where it diverged (if it did), and the final state of
    both sides, compared table by table."""

    name: str
    sent: int = 0
    seconds: float = 0.0
    verdicts: Counter[int] = field(default_factory=Counter)
    diverged: str | None = None
    table_problems: list[str] = field(default_factory=list)
    stats_problems: list[str] = field(default_factory=list)
    tables_compared: dict[str, int] = field(default_factory=dict)  # table → entries
    stats: dict[str, int] = field(default_factory=dict)  # model counters, packets only
    changes: list[str] = field(default_factory=list)

    def all_problems(self) -> list[str]:
        if self.diverged is not None:
            return [self.diverged]
        return self.table_problems + self.stats_problems

    def report(self, problems: Sequence[str]) -> str:
        return "\n".join([f"{self.name} ({self.sent} frames, {self.seconds:.1f} s):", *problems,
                          f"(control-plane changes: {'; '.join(self.changes) or 'none'})"])


# --- switch ----------------------------------------------------------------------------------


def moved_station(config: sw.Config, flow: sw.Flow, rng: random.Random) -> sw.Flow | None:
    """`flow`'s source sending from another learning port of its VLAN: the bridge moves it."""
    ports = [p for p in config.ports if p.enabled and p.learning and p.ifindex != flow.ingress
             and (not config.vlan_filtering or p.carries(flow.vlan))]
    if not ports or not config.learning:
        return None
    port = rng.choice(ports)
    tagged = config.vlan_filtering and flow.vlan != port.pvid
    return dataclasses.replace(flow, ingress=port.ifindex, tagged=tagged)


def switch_change(config: sw.Config, model: sw.Reference, rng: random.Random) -> sw.Config:
    """Move an access port to another VLAN, bring shut ports up, pin a learned MAC to another
    port, add a new static MAC and drop an old one."""
    ports = list(config.ports)
    access = [i for i, p in enumerate(ports) if p.enabled and not p.trunk and p.pvid]
    if access:
        i = access[len(access) // 2]
        others = sorted({v for v in config.vlans() if v != ports[i].pvid})
        if others:
            ports[i] = dataclasses.replace(ports[i], pvid=others[0])
    ports = [dataclasses.replace(p, enabled=True) for p in ports]
    new = sw.Config(tuple(ports), config.static_macs, config.vlan_filtering, config.learning,
                    config.stats)
    statics = list(config.static_macs[1:])
    learned = sorted(k for k, e in model.fdb.items() if not e.static)
    for vlan, mac in learned:
        home = model.fdb[vlan, mac].ifindex
        there = [p.ifindex for p in new.ports if p.ifindex != home
                 and (not new.vlan_filtering or p.carries(vlan))]
        if there:
            statics.append(sw.StaticMac(mac, vlan, rng.choice(there)))
            break
    home_port = new.ports[0]
    statics.append(sw.StaticMac(b"\x0e" + rng.randbytes(5),
                                home_port.pvid if new.vlan_filtering else 0, home_port.ifindex))
    return dataclasses.replace(new, static_macs=tuple(statics))


def describe_switch_change(old: sw.Config, new: sw.Config) -> str:
    ports = []
    for was, now in zip(old.ports, new.ports, strict=True):
        if was.pvid != now.pvid:
            ports.append(f"port {now.ifindex} pvid {was.pvid}->{now.pvid}")
        if now.enabled and not was.enabled:
            ports.append(f"port {now.ifindex} up")
    added = [f"+static {sw.pkt.mac_str(m.mac)} vlan {m.vlan} port {m.ifindex}"
             for m in new.static_macs if m not in old.static_macs]
    removed = [f"-static {sw.pkt.mac_str(m.mac)} vlan {m.vlan}"
               for m in old.static_macs if m not in new.static_macs]
    return ", ".join(ports + added + removed)


def switch_traffic(stream: Stream, rng: random.Random, scale: Scale) -> StateCheck:
    env, model = stream.env, stream.model
    since_ns = time.monotonic_ns()
    config: sw.Config = env.config
    flows = sw.flows(config, scale.flows, rng)
    # Before the stations announce themselves most destinations are unknown (passed to the
    # stack to flood); the sources are learned on the way.
    stream.feed((sw.packet(f, rng) for f in popular(flows, scale.packets // 10, rng)), "cold")
    stream.feed(sw.warmup(config, flows), "warmup")
    picks = []
    for flow in popular(flows, scale.packets, rng):
        moved = moved_station(config, flow, rng) if rng.random() < 0.05 else None
        picks.append(moved or flow)
    stream.feed((sw.packet(f, rng) for f in picks), "flows")
    stream.feed(edge_sample(sw.edge_cases(config, rng), scale, rng), "edge cases")

    new = switch_change(config, model, rng)
    stream.changes.append(describe_switch_change(config, new))
    with env.entered():  # devmap writes check the ifindex in the caller's namespace
        env.control_plane.apply(new)
    model.set_config(new)
    env.config = new

    new_flows = sw.flows(new, scale.new_flows, rng)
    stream.feed(sw.warmup(new, new_flows), "warmup after change")
    mixed = popular(flows, scale.after * 3 // 4, rng) + popular(new_flows, scale.after // 4, rng)
    rng.shuffle(mixed)
    stream.feed((sw.packet(f, rng) for f in mixed), "after change")
    stream.feed(edge_sample(sw.edge_cases(new, rng), scale, rng), "edge cases after change")
    return lambda run: switch_state(env, model, run, since_ns)


def switch_state(env: NFEnv, model: sw.Reference, run: Run, since_ns: int) -> None:
    kernel = env.control_plane.fdb()
    now = time.monotonic_ns()
    # Timestamps come from bpf_ktime_get_ns(): compared by range, not value. Learned entries
    # were stamped during this run; static ones are written by the control plane as 0.
    stamps = [f"{k}: {e.last_seen}" for k, e in kernel.items()
              if not ((e.static and e.last_seen == 0)
                      or (not e.static and since_ns <= e.last_seen <= now))]
    if stamps:
        run.table_problems.append(f"sw_fdb: {len(stamps)} timestamps outside the run, e.g. "
                                  + ", ".join(stamps[:5]))
    run.table_problems += table_problems(
        sw.MAP_FDB, {k: (e.ifindex, e.static) for k, e in kernel.items()},
        {k: (e.ifindex, e.static) for k, e in model.fdb.items()})
    run.tables_compared[sw.MAP_FDB] = len(kernel)
    run.stats_problems += table_problems(sw.MAP_STATS, env.control_plane.stats(), model.stats)
    run.stats = {reason: value[0] for reason, value in model.stats.items()}


# --- router ----------------------------------------------------------------------------------


def router_change(config: rt.Config, model: rt.Reference, flows: Sequence[rt.Flow]
                  ) -> tuple[rt.Config, rt.Route, rt.Route]:
    """Replace the forwarding route most flows use by a more specific one (through another
    next hop) that covers only part of those flows, and drop the default route, so that the
    rest fall to shorter routes or to no route at all."""
    hits: Counter[rt.Route] = Counter()
    inside: dict[rt.Route, int] = {}  # an address the more specific route will cover
    for f in flows:
        route = model.lookup(f.dst)
        if route is not None and route.kind is rt.RouteKind.FORWARD and 0 < route.length <= 28:
            hits[route] += 1
            inside.setdefault(route, f.dst)
    if not hits:  # a tiny run whose flows all went elsewhere: any short forwarding route
        for r in config.routes:
            if r.kind is rt.RouteKind.FORWARD and 0 < r.length <= 28:
                hits[r] = 1
                inside[r] = r.prefix
                break
    old = max(hits, key=lambda r: (hits[r], -r.length, r.prefix))
    taken = {(r.prefix, r.length) for r in config.routes}
    for length in range(old.length + 2, 33):
        mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
        if (inside[old] & mask, length) not in taken:
            break
    else:
        raise AssertionError(f"every prefix inside {old} towards {inside[old]} is taken")
    nexthop = next(nh for nh in config.nexthops if nh.resolved and nh.index != old.nexthop
                   and config.interface(nh.ifindex).enabled)  # type: ignore[union-attr]
    new = rt.Route(inside[old] & mask, length, nexthop.index)
    routes = (*(r for r in config.routes if r != old and r.length), new)
    return dataclasses.replace(config, routes=routes), old, new


def router_traffic(stream: Stream, rng: random.Random, scale: Scale) -> StateCheck:
    env, model = stream.env, stream.model
    config: rt.Config = env.config
    flows = rt.flows(config, scale.flows, rng)
    stream.feed((rt.packet(f, rng) for f in popular(flows, scale.packets, rng)), "flows")
    stream.feed(edge_sample(rt.edge_cases(config, rng), scale, rng), "edge cases")

    new, old, added = router_change(config, model, flows)
    stream.changes.append(f"-route {old}, +route {added}, -route 0.0.0.0/0")
    env.control_plane.add_route(added)  # more specific first: the prefix is never unrouted
    env.control_plane.remove_route(old.prefix, old.length)
    env.control_plane.remove_route(0, 0)
    model.set_config(new)
    env.config = new

    # Every flow of the replaced route again, then a mix of old and new flows.
    affected = [f for f in flows if old.contains(f.dst)]
    stream.feed((rt.packet(f, rng) for f in affected), "replaced route")
    new_flows = rt.flows(new, scale.new_flows, rng)
    mixed = popular(flows, scale.after * 3 // 4, rng) + popular(new_flows, scale.after // 4, rng)
    rng.shuffle(mixed)
    stream.feed((rt.packet(f, rng) for f in mixed), "after change")
    stream.feed(edge_sample(rt.edge_cases(new, rng), scale, rng), "edge cases after change")
    return lambda run: router_state(env, model, run)


def router_state(env: NFEnv, model: rt.Reference, run: Run) -> None:
    run.stats_problems += table_problems(rt.MAP_STATS, env.control_plane.stats(), model.stats)
    run.stats = {reason: value[0] for reason, value in model.stats.items()}


# --- firewall --------------------------------------------------------------------------------


@dataclass
class FirewallRanks:
    """fw_rule_stats is indexed by rank, which a rule change shifts; the model counts by rule
    id. Each segment is (rule order, model rule counters at the segment's end)."""

    segments: list[tuple[tuple[fw.Rule, ...], Counter[tuple[int, str]]]] = field(
        default_factory=list)

    def expected(self) -> dict[int, tuple[int, int]]:
        totals: dict[int, list[int]] = {}
        previous: Counter[tuple[int, str]] = Counter()
        for ordered, counts in self.segments:
            for rank, rule in enumerate(ordered):
                slot = totals.setdefault(rank, [0, 0])
                for i, what in enumerate(("packets", "bytes")):
                    slot[i] += counts[rule.rule_id, what] - previous[rule.rule_id, what]
            previous = counts
        return {rank: (p, b) for rank, (p, b) in totals.items() if p or b}


def firewall_change(cp: fw.ControlPlane, model: fw.Reference, flows: Sequence[fw.Flow]
                    ) -> tuple[fw.Flow | None, fw.Flow | None]:
    """Two rules above every other: DROP from the source of a tracked connection (which keeps
    passing: conntrack is consulted first) and ACCEPT of a flow the default policy dropped;
    then remove the rule that matched most packets so far. Returns the two flows."""
    tracked = next((f for f in flows if (f.src, f.dst, f.sport, f.dport, f.proto)
                    in model.conntrack), None)
    dropped = next((f for f in flows if f.proto in (fw.pkt.IPPROTO_TCP, fw.pkt.IPPROTO_UDP)
                    and model.classify(f.src, f.dst, f.proto, f.sport, f.dport) is None), None)
    next_id = max(r.rule_id for r in cp.config.rules) + 1
    if tracked is not None:
        cp.add_rule(fw.Rule(next_id, 1, fw.Action.DROP, src=fw.Prefix(tracked.src, 32)))
    if dropped is not None:
        cp.add_rule(fw.Rule(next_id + 1, 2, fw.Action.ACCEPT, src=fw.Prefix(dropped.src, 32),
                            dst=fw.Prefix(dropped.dst, 32), proto=dropped.proto,
                            dport=fw.PortRange(dropped.dport, dropped.dport)))
    busiest = max(cp.config.rules, key=lambda r: (model.rule_stats[r.rule_id, "packets"],
                                                  -r.rule_id))
    if model.rule_stats[busiest.rule_id, "packets"]:
        cp.remove_rule(busiest.rule_id)
    return tracked, dropped


def firewall_traffic(stream: Stream, rng: random.Random, scale: Scale) -> StateCheck:
    env, model = stream.env, stream.model
    config: fw.FirewallConfig = env.config
    ranks = FirewallRanks()
    flows = fw.flows(config, scale.flows, rng)
    # One packet in five goes the other way: replies hit the reverse conntrack entry.
    picks = [f.reply() if rng.random() < 0.2 else f for f in popular(flows, scale.packets, rng)]
    stream.feed((fw.packet(f, rng) for f in picks), "flows")
    stream.feed(edge_sample(fw.edge_cases(config, rng), scale, rng), "edge cases")
    ranks.segments.append((model.config.ordered(), Counter(model.rule_stats)))

    cp: fw.ControlPlane = env.control_plane
    before = {r.rule_id for r in cp.config.rules}
    tracked, dropped = firewall_change(cp, model, flows)
    after = {r.rule_id for r in cp.config.rules}
    stream.changes.append(", ".join(
        [f"+rule {r}" for r in cp.config.ordered() if r.rule_id not in before]
        + [f"-rule #{i}" for i in sorted(before - after)]))
    model.set_config(cp.config)
    env.config = cp.config

    specials = [f for f in (tracked, dropped) if f is not None]
    opening = [fw.flow_frame(f, tcp_flags=fw.pkt.TCP_SYN) for f in specials]
    stream.feed(((frame, 1) for frame in opening), "changed rules")
    new_flows = fw.flows(cp.config, scale.new_flows, rng)
    mixed = popular(flows, scale.after * 3 // 4, rng) + popular(new_flows, scale.after // 4, rng)
    mixed = [f.reply() if rng.random() < 0.2 else f for f in mixed]
    rng.shuffle(mixed)
    stream.feed((fw.packet(f, rng) for f in mixed), "after change")
    stream.feed(edge_sample(fw.edge_cases(cp.config, rng), scale, rng), "edge cases after change")
    ranks.segments.append((model.config.ordered(), Counter(model.rule_stats)))
    return lambda run: firewall_state(env, model, run, ranks)


def firewall_state(env: NFEnv, model: fw.Reference, run: Run, ranks: FirewallRanks) -> None:
    maps = env.collection.maps
    kernel = {fw.decode_flow_key(k): fw.CtEntry(*fw.decode_ct_value(v))
              for k, v in maps[fw.MAP_CONNTRACK].items() if isinstance(v, bytes)}
    run.table_problems += table_problems(fw.MAP_CONNTRACK, kernel, model.conntrack)
    run.tables_compared[fw.MAP_CONNTRACK] = len(kernel)
    counters = {stat.name: percpu_sum(maps[fw.MAP_STATS].lookup(fw.encode_u32(stat)),
                                      fw.decode_counter) for stat in fw.Stat}
    expected = {stat.name: (model.stats[stat, "packets"], model.stats[stat, "bytes"])
                for stat in fw.Stat}
    run.stats_problems += table_problems(fw.MAP_STATS, counters, expected)
    per_rank = {}
    for rank in range(fw.MAX_RULES):
        value = percpu_sum(maps[fw.MAP_RULE_STATS].lookup(fw.encode_u32(rank)),
                           fw.decode_counter)
        if any(value):
            per_rank[rank] = value
    run.stats_problems += table_problems(fw.MAP_RULE_STATS, per_rank, ranks.expected())
    run.stats = {name: value[0] for name, value in expected.items()}


# --- load balancer ---------------------------------------------------------------------------


def lb_change(cp: lb.ControlPlane, model: lb.Reference) -> tuple[lb.VipKey, int]:
    """Remove the backend that holds the most connections, and give another VIP a new
    weighted backend (its ring is recomputed). Returns the VIP and the removed address."""
    backend_addr = {i: a for a, i in cp.layout.backend_index.items()}
    holders: Counter[tuple[lb.VipKey, int]] = Counter()
    vips = {v.key: v for v in cp.config.vips}
    for (_src, dst, _sport, dport, proto), index in model.conn.items():
        key = (dst, dport, proto) if (dst, dport, proto) in vips else (dst, 0, proto)
        holders[key, backend_addr[index]] += 1
    if holders:
        (vip_key, addr), _count = max(holders.items(), key=lambda kv: (kv[1], kv[0]))
    else:  # no connection yet (a tiny run): any backend will do
        vip = next(v for v in cp.config.vips if v.backends)
        vip_key, addr = vip.key, vip.backends[0].addr
    cp.remove_backend(vip_key, addr)
    other = next(v for v in cp.config.vips if v.key != vip_key and v.backends)
    cp.add_backend(other.key, lb.Backend(lb.pkt.ip4("10.9.0.1"), 2))
    return vip_key, addr


def lb_traffic(stream: Stream, rng: random.Random, scale: Scale) -> StateCheck:
    env, model = stream.env, stream.model
    config: lb.LbConfig = env.config
    flows = lb.flows(config, scale.flows, rng)
    stream.feed((lb.packet(f, rng) for f in popular(flows, scale.packets, rng)), "flows")
    stream.feed(edge_sample(lb.edge_cases(config, rng), scale, rng), "edge cases")

    cp: lb.ControlPlane = env.control_plane
    vip_key, addr = lb_change(cp, model)
    stream.changes.append(f"-backend {lb.pkt.ip4_str(addr)} of {lb.Vip(*vip_key)}, "
                          "+backend 10.9.0.1 (weight 2)")
    model.set_config(cp.config, cp.layout)
    env.config = cp.config

    # Every flow of the VIP that lost a backend again (connections to it are re-picked).
    affected = [f for f in flows if (f.dst, f.dport, f.proto) == vip_key
                or (f.dst, 0, f.proto) == vip_key]
    stream.feed((lb.packet(f, rng) for f in affected), "removed backend")
    new_flows = lb.flows(cp.config, scale.new_flows, rng)
    mixed = popular(flows, scale.after * 3 // 4, rng) + popular(new_flows, scale.after // 4, rng)
    rng.shuffle(mixed)
    stream.feed((lb.packet(f, rng) for f in mixed), "after change")
    stream.feed(edge_sample(lb.edge_cases(cp.config, rng), scale, rng), "edge cases after change")
    return lambda run: lb_state(env, model, run)


def lb_state(env: NFEnv, model: lb.Reference, run: Run) -> None:
    maps = env.collection.maps
    kernel = {lb.decode_flow_key(k): lb.decode_u32(v)
              for k, v in maps[lb.MAP_CONN].items() if isinstance(v, bytes)}
    run.table_problems += table_problems(lb.MAP_CONN, kernel, model.conn)
    run.tables_compared[lb.MAP_CONN] = len(kernel)
    counters = {stat.name: percpu_sum(maps[lb.MAP_STATS].lookup(lb.encode_u32(stat)),
                                      lb.decode_counter) for stat in lb.Stat}
    expected = {stat.name: (model.stats[stat, "packets"], model.stats[stat, "bytes"])
                for stat in lb.Stat}
    run.stats_problems += table_problems(lb.MAP_STATS, counters, expected)
    layout: lb.Layout = env.control_plane.layout
    per_vip = {str(lb.Vip(*key)): percpu_sum(
        maps[lb.MAP_VIP_STATS].lookup(lb.encode_u32(index)), lb.decode_counter)
        for key, index in layout.vip_index.items()}
    want_vip = {str(lb.Vip(*key)): (model.vip_stats[key, "packets"],
                                    model.vip_stats[key, "bytes"])
                for key in layout.vip_index}
    run.stats_problems += table_problems(lb.MAP_VIP_STATS, per_vip, want_vip)
    run.stats = {name: value[0] for name, value in expected.items()}


# --- scenarios -------------------------------------------------------------------------------

TRAFFIC: dict[str, Callable[[Stream, random.Random, Scale], StateCheck]] = {
    "switch": switch_traffic, "router": router_traffic, "firewall": firewall_traffic,
    "lb": lb_traffic}


def run_scenario(name: str, config_seed: int, traffic_seed: int, scale: Scale) -> Run:
    """Start `name` with default_config(config_seed), drive it with traffic from
    traffic_seed, and compare everything; the namespace is gone when this returns."""
    run = Run(name)
    started = time.perf_counter()
    rng = random.Random(f"{name}-traffic-{traffic_seed}")
    with NFEnv.start(name, seed=config_seed) as env:
        if name == "lb":
            model: Any = lb.Reference(env.config, env.control_plane.layout)
        else:
            model = env.reference()
        stream = Stream(env, model)
        try:
            check_state = TRAFFIC[name](stream, rng, scale)
        except Diverged as exc:
            run.diverged = str(exc)
        else:
            check_state(run)
        run.sent, run.verdicts, run.changes = stream.sent, stream.verdicts, stream.changes
    run.seconds = time.perf_counter() - started
    return run


# Counters the full run must have seen move: the traffic reached every decision worth
# comparing (hits and misses, the stateful paths, the drops). Reasons the default
# configurations cannot produce are left out (switch "error": a redirect the devmap rejects).
MUST_SEE = {
    "switch": ("forward", "flood", "unknown", "not_port", "hairpin", "vlan", "port_down",
               "invalid", "learned", "moved"),
    "router": ("forward", "tx", "not_us", "not_ip", "malformed", "options", "mcast", "ttl",
               "no_route", "blackhole", "local", "no_neigh", "link_down", "mtu"),
    "firewall": ("NON_IP", "MALFORMED", "CT_HIT", "RULE_ACCEPT", "RULE_DROP", "DEFAULT_DROP",
                 "CT_NEW"),
    "lb": ("NON_IP", "MALFORMED", "OPT_FRAG", "NON_L4", "NO_VIP", "CONN_HIT", "CONN_MISS",
           "NO_BACKEND", "TX"),
}
VERDICTS = {
    "switch": (XDP_DROP, XDP_PASS, XDP_REDIRECT),
    "router": (XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX),
    "firewall": (XDP_DROP, XDP_PASS),
    "lb": (XDP_DROP, XDP_PASS, XDP_TX),
}
MIN_PACKETS = 5000


@pytest.fixture(scope="module", params=NAMES)
def full_run(request: pytest.FixtureRequest) -> Run:
    return run_scenario(request.param, config_seed=1, traffic_seed=2024, scale=FULL)


def fail_on(run: Run, problems: Sequence[str]) -> None:
    """Fail with the problems alone: pytest's rewriting of a long assert would repeat them."""
    if problems:
        pytest.fail(run.report(problems), pytrace=False)


def test_every_frame_matches_the_model(full_run: Run) -> None:
    fail_on(full_run, [full_run.diverged] if full_run.diverged else [])
    assert full_run.sent >= MIN_PACKETS, f"{full_run.name}: only {full_run.sent} frames"
    seen = {verdict_name(v) for v in full_run.verdicts}
    wanted = {verdict_name(v) for v in VERDICTS[full_run.name]}
    assert wanted <= seen, f"{full_run.name}: verdicts {sorted(seen)} lack {wanted - seen}"
    quiet = [s for s in MUST_SEE[full_run.name] if not full_run.stats.get(s)]
    assert not quiet, f"{full_run.name}: the traffic never reached {quiet}"


def test_data_plane_tables_match_the_model(full_run: Run) -> None:
    assert full_run.diverged is None, "the packet stream diverged first (see the frame test)"
    fail_on(full_run, full_run.table_problems)
    # Enough state to make the comparison worth something.
    assert all(n >= 100 for n in full_run.tables_compared.values()), full_run.tables_compared


def test_percpu_stats_match_the_model(full_run: Run) -> None:
    assert full_run.diverged is None, "the packet stream diverged first (see the frame test)"
    fail_on(full_run, full_run.stats_problems)
    # Every frame counts in exactly one of these counters (the others count events on top:
    # learning, connection setup, transmission), so together they saw the whole stream.
    exclusive = {"switch": sw.STATS[:9], "router": rt.STATS,
                 "firewall": [s.name for s in fw.Stat][:7],
                 "lb": [s.name for s in lb.Stat if s is not lb.Stat.TX]}[full_run.name]
    assert sum(full_run.stats[s] for s in exclusive) == full_run.sent


@pytest.mark.parametrize("name", NAMES)
# No shrinking: a smaller seed is not a simpler case, and each example starts a namespace.
@settings(max_examples=10, derandomize=True, deadline=None, database=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(config_seed=st.integers(1, 1 << 16), traffic_seed=st.integers(0, (1 << 32) - 1))
def test_random_configs_and_traffic(name: str, config_seed: int, traffic_seed: int) -> None:
    run = run_scenario(name, config_seed, traffic_seed, SMALL)
    problems = run.all_problems()
    if problems:
        fail_on(run, [f"config seed {config_seed}, traffic seed {traffic_seed}", *problems])
