"""Traces with the locality profiles of the Morpheus paper's evaluation.

- `high`: Zipf with a steep exponent: a handful of flows carry most packets;
- `low`: Zipf with a mild exponent;
- `none`: every flow carries the same number of packets, in random order;
- `shift`: like `high`, but half way through a different set of flows becomes hot.

Everything derives from one seeded `random.Random`, so a seed gives the same trace (and a
byte-identical pcap) on every run.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..nf import NetworkFunction

PROFILES = ("high", "low", "none", "shift")
ZIPF_EXPONENT = {"high": 1.3, "low": 0.8, "shift": 1.3}
PACKETS_PER_FLOW = 4  # the flow universe is packets / 4 flows


@dataclass
class Trace:
    """Frames to replay, with the flow each belongs to and the port it arrives on."""

    frames: list[bytes]
    flow_ids: list[int]
    ingress: list[int]
    nf: str = ""
    profile: str = ""
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    # Frames (with their ingress ifindex) to process before the trace, e.g. the switch's
    # gratuitous ARPs that teach it where the destinations are.
    warmup: list[tuple[bytes, int]] = field(default_factory=list)

    @property
    def main_ingress(self) -> int:
        """The ifindex most packets arrive on (replays use one ingress device)."""
        return Counter(self.ingress).most_common(1)[0][0] if self.ingress else 0

    def __len__(self) -> int:
        return len(self.frames)

    def summary(self) -> dict[str, float | int]:
        """Packets, distinct flows, and the share of packets carried by the top 1% and 10%
        of those flows."""
        return summarize(self.flow_ids)

    def segment(self, start: int, end: int) -> Trace:
        return Trace(self.frames[start:end], self.flow_ids[start:end], self.ingress[start:end],
                     self.nf, self.profile, self.seed, dict(self.meta), list(self.warmup))


def summarize(flow_ids: list[int] | list[Any]) -> dict[str, float | int]:
    counts = sorted(Counter(flow_ids).values(), reverse=True)
    total = sum(counts)
    flows = len(counts)

    def share(fraction: float) -> float:
        if not total:
            return 0.0
        top = max(1, round(flows * fraction))
        return round(sum(counts[:top]) / total, 4)

    return {"packets": total, "flows": flows, "top1_share": share(0.01),
            "top10_share": share(0.10)}


def _zipf_sequence(n_flows: int, packets: int, exponent: float,
                   rng: random.Random) -> list[int]:
    weights = [1.0 / (rank ** exponent) for rank in range(1, n_flows + 1)]
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]
    return [bisect.bisect_left(cumulative, rng.random() * total) for _ in range(packets)]


def flow_sequence(profile: str, n_flows: int, packets: int, rng: random.Random) -> list[int]:
    """Rank of the flow of each packet (rank 0 is the hottest flow of the profile)."""
    if profile == "none":
        seq = [i % n_flows for i in range(packets)]
        rng.shuffle(seq)
        return seq
    if profile in ("high", "low"):
        return _zipf_sequence(n_flows, packets, ZIPF_EXPONENT[profile], rng)
    if profile == "shift":
        half = packets // 2
        first = _zipf_sequence(n_flows, half, ZIPF_EXPONENT["shift"], rng)
        second = _zipf_sequence(n_flows, packets - half, ZIPF_EXPONENT["shift"], rng)
        # A new hot set: ranks are rotated by half the universe, so yesterday's cold flows
        # are today's heavy hitters.
        offset = n_flows // 2
        return first + [(r + offset) % n_flows for r in second]
    raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")


def ingress_of(nf: NetworkFunction, flow: Any) -> int:
    """The ifindex a flow's packets arrive on (a throwaway generator: packet contents vary,
    the port does not)."""
    return int(nf.module.packet(flow, random.Random(0))[1])


def default_ingress(nf: NetworkFunction, config: Any = None) -> int:
    """The interface most of the NF's flows arrive on under `config`."""
    config = config if config is not None else nf.default_config()
    candidates = nf.module.flows(config, 200, random.Random(0))
    return Counter(ingress_of(nf, f) for f in candidates).most_common(1)[0][0]


def flow_key(frame: bytes) -> tuple[object, ...]:
    """A flow identity for frames of unknown origin: the 5-tuple for IPv4, else the MACs."""
    from .packet import parse

    p = parse(frame)
    if p is None:
        return ("short",)
    if p.ip_proto is not None:
        return (p.vlan, p.ip_src, p.ip_dst, p.ip_proto, p.sport, p.dport)
    return (p.vlan, p.eth_src, p.eth_dst, p.ethertype)


def from_frames(frames: list[bytes], ingress: int, *, name: str = "") -> Trace:
    """A trace from captured frames (all arriving on `ingress`)."""
    keys: dict[tuple[object, ...], int] = {}
    flow_ids = [keys.setdefault(flow_key(f), len(keys)) for f in frames]
    return Trace(list(frames), flow_ids, [ingress] * len(frames), profile=name)


def generate(nf: NetworkFunction, profile: str, packets: int, seed: int, *,
             config: Any = None, flows: int | None = None,
             single_ingress: bool = True) -> Trace:
    """A trace of `packets` valid packets for `nf` under its default configuration.

    With `single_ingress` (the default) every flow arrives on the same interface, the one
    most of the NF's flows use: a replay feeds all packets through one device, and a flow
    arriving on the wrong port would measure a different code path (a router's "not for
    me", a switch's MAC move) instead of the NF's work.
    """
    if packets <= 0:
        raise ValueError("a trace needs at least one packet")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    rng = random.Random(f"{nf.name}/{profile}/{packets}/{seed}")
    config = config if config is not None else nf.default_config()
    n_flows = flows or max(1, packets // PACKETS_PER_FLOW)
    if single_ingress:
        candidates = nf.module.flows(config, n_flows * 4, rng)
        ports = [ingress_of(nf, f) for f in candidates]
        main = Counter(ports).most_common(1)[0][0]
        universe = [f for f, p in zip(candidates, ports, strict=True) if p == main][:n_flows]
    else:
        universe = nf.module.flows(config, n_flows, rng)
    if not universe:
        raise ValueError(f"{nf.name}: the configuration yields no flows")
    rng.shuffle(universe)  # which flows are hot must not follow the NF's flow order
    n_flows = len(universe)
    frames, ingress = [], []
    seq = flow_sequence(profile, n_flows, packets, rng)
    for rank in seq:
        frame, ifindex = nf.module.packet(universe[rank], rng)
        frames.append(frame)
        ingress.append(ifindex)
    warmup = list(nf.module.warmup(config, universe)) if hasattr(nf.module, "warmup") else []
    return Trace(frames, seq, ingress, nf.name, profile, seed, {"universe": n_flows}, warmup)
