"""Check traces: more than the packets the program was profiled on.

A specialized program is fast on the keys it saw; the check must also visit what it did
not see. `check_trace` extends a profiling trace with, in this order:

- near-miss keys (below), first, while the inlined tables are still current;
- moves: the hottest flows' destinations answering from every other port, each answer
  followed by the flow's own packet;
- held-back packets: flows of the same configuration the profile never contained (so
  mostly misses of every inlined hot-key table), arriving on every ingress port the NF
  serves, not only the main one; without an NF, copies of the trace's frames with new
  addresses and ports (`unseen_flows`);
- the NF's edge cases (runts, TTL 0/1, IP options, fragments, foreign ports, ...); without
  an NF, the same kinds of frames derived from the trace's own (`frame_edge_cases`);
- near-miss keys, in detail: for the hottest flows (those whose keys were inlined), copies of their
  first packet with one bit flipped in each byte that can feed a key: the bytes the
  analysis traced into the key of a specialized lookup, and the usual key fields (MAC
  addresses, VLAN id, IPv4 addresses and protocol, L4 ports) where the analysis lost the
  offset (a VLAN tag or IP options move the headers). The IPv4 header checksum is fixed up
  so the packet is not simply dropped as malformed. A key compare that checks one byte too
  few, or a key constant one bit off, is caught by exactly these. Where the data plane
  inserts into a specialized site's map (a switch learning a source address), each near
  miss runs from the state before the first of them (`CheckRequest.isolated`): learning
  one moves the guard, and without that the later ones would all take the generic path.

`check_plan` is what `optimize`'s check and the agent's pre-swap check both run: that
trace plus the control-plane writes between its packets (`guarded_writes`).
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..analysis import ProgramFacts
from ..nf import NetworkFunction
from ..passes.inline import GUARD_MAP
from ..traffic.generate import Trace, generate
from .check import Write

NEAR_MISS_FLOWS = 64  # hottest flows whose key bytes are flipped (as many as a site inlines)
SECOND_BIT_FLOWS = 8  # the hottest also get their lowest bit flipped
MOVED_FLOWS = 4  # hottest flows replayed on every other port
HELD_BACK = 300  # packets of flows the profile did not contain
STRANGERS_PER_PORT = 4  # flows of each served port replayed on lo
LOOPBACK_IFINDEX = 1  # lo: in every namespace, served by no configuration
GUARDED_WRITES_PER_SITE = 3  # inlined entries changed per guarded site
AFTER_WRITES = 400  # packets of the trace replayed after the control-plane writes
INLINED_KEYS_PER_SITE = 64  # inlined keys of each site written into a check frame
XDP_MD_INGRESS_IFINDEX = 12  # offset of ingress_ifindex in struct xdp_md
TEMPLATE_SHAPES = 8  # L2 header shapes an inlined key is written into (untraced key bytes)
ISOLATED = "isolated"  # trace meta: the packets (start, stop) each run from one state


@dataclass(frozen=True)
class CheckPlan:
    """The packets of a check and the control-plane writes made between them."""

    trace: Trace
    writes: list[Write]

    @property
    def packets(self) -> list[tuple[bytes, int]]:
        """(frame, ingress ifindex) pairs; lo stays lo, ports below it (no device) become
        0 (a test run then reports lo too)."""
        return [(frame, port if port >= LOOPBACK_IFINDEX else 0)
                for frame, port in zip(self.trace.frames, self.trace.ingress, strict=True)]


def check_plan(trace: Trace, specialization: Any = None, *, nf: NetworkFunction | None = None,
               facts: ProgramFacts | None = None, config: object = None,
               ports: Iterable[int] = (), seed: int = 0, held_back: int = HELD_BACK
               ) -> CheckPlan:
    """What a specialized program is checked on: `check_trace` over the sites
    `specialization` (an `optimizer.Specialization`) inlined, then `guarded_writes`, then
    the first `AFTER_WRITES` packets of the trace again (which reach the written keys).

    The writes come last because they move guards: where every inlined table is guarded
    (the agent guards every map it may inline), every packet after them takes the generic
    path, and moves, unseen flows, edge cases and strangers before them are what exercise
    the inlined code on keys it did not see."""
    decisions = list(specialization.decisions) if specialization is not None else []
    sites = [d.site.index for d in decisions if d.plan is not None]
    checked = check_trace(trace, nf=nf, facts=facts, sites=sites, config=config, ports=ports,
                          seed=seed, held_back=held_back, first=inlined_key_packets(
                              trace, decisions))
    writes = guarded_writes(decisions, len(checked) - 1)
    if writes and trace.frames:
        again = min(len(trace), AFTER_WRITES)
        checked = Trace(checked.frames + trace.frames[:again],
                        checked.flow_ids + [-1] * again, checked.ingress + trace.ingress[:again],
                        checked.nf, checked.profile, checked.seed,
                        {**checked.meta, "after_writes": again}, list(checked.warmup))
    return CheckPlan(checked, writes)


def joined_plans(plans: Sequence[CheckPlan]) -> CheckPlan:
    """One plan running `plans` one after the other (each one's writes after its own
    packets): the check of a root and the programs it tail-calls, each with its own sites."""
    if len(plans) == 1:
        return plans[0]
    first = plans[0].trace
    frames: list[bytes] = []
    flow_ids: list[int] = []
    ingress: list[int] = []
    writes: list[Write] = []
    for plan in plans:
        writes += [replace(w, after=w.after + len(frames)) for w in plan.writes]
        frames += plan.trace.frames
        flow_ids += plan.trace.flow_ids
        ingress += plan.trace.ingress
    return CheckPlan(Trace(frames, flow_ids, ingress, first.nf, first.profile, first.seed,
                           dict(first.meta), list(first.warmup)), writes)


def inlined_key_packets(trace: Trace, decisions: Iterable[Any],
                        per_site: int = INLINED_KEYS_PER_SITE) -> list[tuple[bytes, int]]:
    """A packet for every inlined key (up to `per_site` a site), then its near misses: a
    frame of the trace long enough to hold the key's packet fields, with the key's bytes
    written at the offsets the site builds its key from (and the ingress port, where the
    key holds it); then the same packets with one bit flipped in each of those bytes.

    The hot keys come from live traffic a check trace may not contain, and an inlined entry
    no check packet reaches is never checked; a compare that skips bytes of one key is seen
    only by a packet that differs from that key in those bytes alone. Where part of the key
    comes from the packet in a way the analysis did not trace (a VLAN id that is the tag's
    or the port's), the key is written into one frame of each L2 header shape the trace
    holds (`l2_shape`), one of which supplies the rest of the key."""
    if not trace.frames:
        return []
    # Sent in batches: on the template's port before on another port, packets that change
    # destination fields before the others before those that change source fields
    # (`_source_rank`), exact keys before near misses. A packet on another port than its
    # template's moves the template's station in a learning switch, and one with a new
    # VLAN id or source address is learned: data-plane writes that move guards, after
    # which no packet reaches the inlined code.
    batches: dict[tuple[int, int, int], list[tuple[bytes, int]]] = {}
    for d in decisions:
        plan, key_bytes = d.plan, getattr(d.site, "key_bytes", None)
        if plan is None or not key_bytes or getattr(d.site, "inner_of", None) is not None:
            continue
        places, port_bytes, untraced = _key_places(key_bytes)
        if not places:
            continue
        reach = max(o for _, o in places)
        templates = _templates(trace, reach, every_shape=untraced)
        for k, entry in enumerate(plan.entries[:per_site]):
            key = entry.key
            if len(key) < len(key_bytes):
                continue
            for template in templates:
                frame = bytearray(trace.frames[template])
                for n, off in places:
                    frame[off] = key[n]
                port = trace.ingress[template]
                if port_bytes:
                    port = sum(key[n] << (8 * byte) for n, byte in port_bytes)
                moved = int(port != trace.ingress[template])
                rank = max(_source_rank(frame, off) for _, off in places)
                batches.setdefault((moved, rank, 0), []).append(
                    (_fix_ipv4_checksum(bytes(frame), -1), port))
                for _, off in places:
                    # Never bit 0: in a MAC's first byte it would make a group address.
                    flipped = bytearray(frame)
                    flipped[off] ^= 1 << ((k + off + 1) % 8 or 1)
                    batches.setdefault((moved, rank, 1), []).append(
                        (_fix_ipv4_checksum(bytes(flipped), -1), port))
    return [packet for _, batch in sorted(batches.items()) for packet in batch]


def _key_places(key_bytes: Sequence[Any]
                ) -> tuple[list[tuple[int, int]], list[tuple[int, int]], bool]:
    """(key byte, packet offset) for the key bytes that are one packet byte, (key byte,
    byte of ingress_ifindex) for those of the ingress port, and whether some other byte
    is neither a constant nor one of those."""
    places: list[tuple[int, int]] = []
    port_bytes: list[tuple[int, int]] = []
    untraced = False
    for n, b in enumerate(key_bytes):
        origin = b.field
        if b.kind == "const":
            continue
        off = origin[1] if origin and len(origin) >= 3 else None
        size = origin[2] if origin and len(origin) >= 3 else None
        if not isinstance(off, int) or not isinstance(size, int) or b.byte is None or \
                b.byte >= size:
            untraced = True
        elif b.kind == "pkt":
            places.append((n, off + b.byte))  # a load: least significant byte first
        elif b.kind == "ctx" and off == XDP_MD_INGRESS_IFINDEX and size == 4:
            port_bytes.append((n, b.byte))
        else:
            untraced = True
    return places, port_bytes, untraced


def l2_shape(frame: bytes) -> bytes:
    """The EtherType and, for an 802.1Q frame, its tag and inner EtherType."""
    if frame[12:14] == b"\x81\x00":
        return frame[12:18]
    return frame[12:14]


def _templates(trace: Trace, reach: int, *, every_shape: bool,
               limit: int = TEMPLATE_SHAPES) -> list[int]:
    """Frames of the trace longer than `reach`: the first, or the first of each L2 shape
    (up to `limit`)."""
    out: list[int] = []
    shapes: set[bytes] = set()
    for i, frame in enumerate(trace.frames):
        if len(frame) <= reach:
            continue
        if not every_shape:
            return [i]
        shape = l2_shape(frame)
        if shape not in shapes:
            shapes.add(shape)
            out.append(i)
            if len(out) >= limit:
                break
    return out


def guarded_writes(decisions: Iterable[Any], after: int,
                   per_site: int = GUARDED_WRITES_PER_SITE) -> list[Write]:
    """Control-plane writes for the check: the first inlined entries of every guarded site
    change (one bit of their value) after packet `after`, with the guard moved as the API
    moves it. The specialized program must notice (its guard fails, the generic path reads
    the new value); one whose guard never fires serves the stale inlined value."""
    out: list[Write] = []
    for d in decisions:
        plan = d.plan
        if plan is None or plan.guard_slot is None:
            continue
        # An inner map resolved through its outer map (`outer[key]`, `outer[cpu]`) is
        # written in the inner map the outer holds there (the check's worlds clone it);
        # for the CPU's own, CPU 0's (resolved only where every CPU holds the same map).
        inner_of = getattr(d.site, "inner_of", None)
        target, inner = plan.map, None
        if inner_of is not None:
            target, inner = inner_of[0], inner_of[1] or struct.pack("<I", 0)
        for entry in [e for e in plan.entries if e.value][:per_site]:
            value = bytes([entry.value[0] ^ 1]) + entry.value[1:]
            out.append(Write(max(after, 0), target, entry.key, value,
                             guard=(GUARD_MAP, 8 * plan.guard_slot), inner=inner))
    return out


def frames_trace(frames: Sequence[bytes], ingress: int | Sequence[int], nf: str = ""
                 ) -> Trace:
    """A trace of raw frames (a user's pcap): flows told apart by the fields lookups are
    usually keyed on (`header_key_offsets`), so "the hottest flows" means the same here
    as in a generated trace."""
    ports = [ingress] * len(frames) if isinstance(ingress, int) else list(ingress)
    ids: dict[tuple[bytes, ...], int] = {}
    flow_ids = []
    for frame in frames:
        key = tuple(frame[o:o + 1] for o in header_key_offsets(frame))
        flow_ids.append(ids.setdefault((bytes([len(frame) >= 14]), *key), len(ids)))
    return Trace(list(frames), flow_ids, ports, nf, "", 0, {"source": "frames"})


def check_trace(trace: Trace, *, nf: NetworkFunction | None = None,
                facts: ProgramFacts | None = None, sites: Iterable[int] = (),
                config: object = None, seed: int = 0, held_back: int = HELD_BACK,
                ports: Iterable[int] = (), first: Iterable[tuple[bytes, int]] = ()
                ) -> Trace:
    """`trace` followed by `first` (packets for the inlined keys), near-miss keys of
    `sites` (instruction indexes of specialized lookups in `facts`), moves, held-back
    packets and edge cases. `ports` are ingress ifindexes the program serves on top of
    those the trace and the NF name."""
    frames, ingress = list(trace.frames), list(trace.ingress)
    rng = random.Random(f"check/{trace.nf}/{trace.seed}/{seed}")
    # Near misses first, while the inlined tables still hold: the held-back flows and the
    # edge cases write the maps (a switch learns), which moves guards and sends every later
    # packet down the unspecialized path.
    # The packets for the inlined keys (and their one-bit neighbours) are isolated with the
    # near misses: where the data plane learns, each would otherwise move the guard for
    # every packet after it.
    near_start = len(frames)
    for frame, port in first:
        frames.append(frame)
        ingress.append(port)
    near = 0
    isolated: tuple[int, int] | None = None
    if facts is not None:
        sites = list(sites)
        offsets = key_packet_offsets(facts, sites)
        for frame, port in near_misses(trace, offsets):
            frames.append(frame)
            ingress.append(port)
            near += 1
        if len(frames) > near_start and learns(facts, sites):
            isolated = (near_start, len(frames))
    edge: list[tuple[bytes, int]] = []
    extra: list[tuple[bytes, int]] = []
    if nf is not None:
        config = config if config is not None else nf.default_config()
        edge = list(nf.module.edge_cases(config, rng)) if hasattr(nf.module, "edge_cases") \
            else []
        if held_back:
            more = generate(nf, trace.profile or "none", held_back, trace.seed + 7919 + seed,
                            config=config, single_ingress=False)
            extra = list(zip(more.frames, more.ingress, strict=True))
    elif trace.frames:
        edge = frame_edge_cases(trace)
        extra = unseen_flows(trace, held_back, rng) if held_back else []
    served = sorted({p for p in ingress if p >= 2} | {p for _, p in edge if p >= 2}
                    | {p for p in ports if p >= 2})
    # Held-back flows name ports too, but moves keep to the ports of the trace and the
    # edge cases, as they always did; lo receives packets of every port.
    stranger_ports = sorted(set(served) | {p for _, p in extra if p >= 2})
    moves = moved(trace, served)
    if nf is None and len(served) > 1:
        # Without an NF to say which flows arrive where, the unseen flows and the edge
        # cases arrive on every port the program serves.
        extra = [(f, served[i % len(served)]) for i, (f, _) in enumerate(extra)]
        edge = [(f, p) for f, _ in edge for p in served]
    for frame, port in (*moves, *extra, *edge):
        frames.append(frame)
        ingress.append(port)
    for frame, port in strangers(list(zip(frames, ingress, strict=True)), stranger_ports):
        frames.append(frame)
        ingress.append(port)
    flow_ids = list(trace.flow_ids) + [-1] * (len(frames) - len(trace.frames))
    return Trace(frames, flow_ids, ingress, trace.nf, trace.profile, trace.seed,
                 {**trace.meta, "check_extra": len(frames) - len(trace.frames),
                  "near_misses": near, **({ISOLATED: isolated} if isolated else {})},
                 list(trace.warmup))


def learns(facts: ProgramFacts, sites: Iterable[int]) -> bool:
    """Whether the data plane inserts into the map of one of `sites` (a learning switch's
    table): a near miss of its key is then learned, which moves the map's guard, and no
    later packet would reach the inlined code."""
    maps = {facts.sites[i].map for i in sites if i in facts.sites}
    return any(s.kind == "update" and s.map in maps for s in facts.sites.values())


def isolated_packets(trace: Trace) -> tuple[int, int] | None:
    """The packets of a check trace that each run from the state before the first of them
    (`CheckRequest.isolated`): the near misses, where the data plane learns."""
    span = trace.meta.get(ISOLATED)
    return (int(span[0]), int(span[1])) if span else None


def strangers(packets: Sequence[tuple[bytes, int]], served: Sequence[int],
              per_port: int = STRANGERS_PER_PORT) -> list[tuple[bytes, int]]:
    """For every port the program serves, the first packets of its first `per_port` flows
    (by their key fields) arriving instead on lo, an interface no configuration serves: a
    table keyed on the ingress interface then misses, with frames addressed to every
    configured interface (an inlined table that answers an absent key with an entry is
    caught whichever entry it serves)."""
    out = []
    for port in served:
        seen: set[tuple[bytes, ...]] = set()
        for frame, arrived in packets:
            if arrived != port or _ipv4_at(frame) is None:
                continue
            key = tuple(frame[o:o + 1] for o in header_key_offsets(frame))
            if key in seen:
                continue
            seen.add(key)
            out.append((frame, LOOPBACK_IFINDEX))
            if len(seen) >= per_port:
                break
    return out


def moved(trace: Trace, ports: Sequence[int], flows: int = MOVED_FLOWS
          ) -> list[tuple[bytes, int]]:
    """For the hottest flows: their destination answers (the frame with its Ethernet
    addresses swapped) from every other port, each time followed by the flow's own packet.
    A station that moves is a data-plane write to what may be inlined (a learning switch's
    table), which a guard must notice; a frame on a port that does not serve it is an edge
    case of its own."""
    first: dict[int, int] = {}
    for i, flow in enumerate(trace.flow_ids):
        first.setdefault(flow, i)
    out = []
    for flow, _ in Counter(trace.flow_ids).most_common(flows):
        index = first[flow]
        frame, home = trace.frames[index], trace.ingress[index]
        if len(frame) < 14:
            continue
        answer = frame[6:12] + frame[:6] + frame[12:]
        for port in ports:
            if port != home:
                out += [(answer, port), (frame, home)]
    return out


def key_packet_offsets(facts: ProgramFacts, sites: Iterable[int]) -> list[int]:
    """Packet byte offsets the keys of `sites` are built from (sorted, distinct)."""
    out: set[int] = set()
    for index in sites:
        site = facts.sites.get(index)
        if site is None or not site.key_bytes:
            continue
        for byte in site.key_bytes:
            origin = byte.field
            if byte.kind != "pkt" or not origin or len(origin) < 3:
                continue
            off, size = origin[1], origin[2]
            if isinstance(off, int) and isinstance(size, int):
                out.update(range(off, off + size))
    return sorted(out)


def near_misses(trace: Trace, offsets: Sequence[int], flows: int = NEAR_MISS_FLOWS
                ) -> list[tuple[bytes, int]]:
    """One-bit-off copies of the hottest flows' first packets, at every key offset."""
    if not trace.frames:
        return []
    first: dict[int, int] = {}
    for i, flow in enumerate(trace.flow_ids):
        first.setdefault(flow, i)
    hottest = [flow for flow, _ in Counter(trace.flow_ids).most_common(flows)]
    # Destination fields before source fields, and one field across all flows before the
    # next: a flipped source address can be learned (a data-plane write that moves a
    # guard), after which nothing reaches the inlined code any more.
    per_flow = []
    for flow in hottest:
        index = first[flow]
        frame = trace.frames[index]
        keyed = sorted(set(offsets) | set(header_key_offsets(frame)),
                       key=lambda off, f=frame: (_source_rank(f, off), off))
        per_flow.append((index, frame, keyed))
    out = []
    longest = max((len(k) for _, _, k in per_flow), default=0)
    for k in range(longest):
        for n, (index, frame, keyed) in enumerate(per_flow):
            if k >= len(keyed) or keyed[k] >= len(frame):
                continue
            off = keyed[k]
            # A bit that moves from flow to flow and, for the hottest flows, the lowest bit
            # too (the neighbouring address, port or VLAN: often configured as well).
            for bit in sorted({0, (n + k) % 8} if n < SECOND_BIT_FLOWS else {(n + k) % 8}):
                mutated = bytearray(frame)
                mutated[off] ^= 1 << bit
                out.append((_fix_ipv4_checksum(bytes(mutated), off), trace.ingress[index]))
    return out


def _source_rank(frame: bytes, off: int) -> int:
    """0 for bytes of destination fields, 1 for the others, 2 for source fields."""
    if off < 6:
        return 0
    if off < 12:
        return 2
    l3 = 18 if frame[12:14] == b"\x81\x00" else 14
    if l3 + 12 <= off < l3 + 16:
        return 2
    if l3 + 16 <= off < l3 + 20:
        return 0
    ihl = (frame[l3] & 0x0F) * 4 if len(frame) > l3 else 20
    if l3 + ihl <= off < l3 + ihl + 2:
        return 2
    if l3 + ihl + 2 <= off < l3 + ihl + 4:
        return 0
    return 1


def header_key_offsets(frame: bytes) -> list[int]:
    """Offsets of the fields lookups are usually keyed on: MACs, VLAN id, IPv4 protocol
    and addresses, TCP/UDP ports."""
    out = list(range(min(12, len(frame))))
    if len(frame) < 14:
        return out
    ethertype, l3 = int.from_bytes(frame[12:14], "big"), 14
    if ethertype == 0x8100 and len(frame) >= 18:
        out += [14, 15]
        ethertype, l3 = int.from_bytes(frame[16:18], "big"), 18
    if ethertype != 0x0800 or len(frame) < l3 + 20:
        return out
    out += [l3 + 9, *range(l3 + 12, l3 + 20)]
    ihl = (frame[l3] & 0x0F) * 4
    if frame[l3 + 9] in (6, 17) and len(frame) >= l3 + ihl + 4:
        out += list(range(l3 + ihl, l3 + ihl + 4))
    return out


def _fix_ipv4_checksum(frame: bytes, changed: int) -> bytes:
    from ..traffic.packet import ETH_P_8021Q, ETH_P_IP, checksum

    start = 14
    ethertype = int.from_bytes(frame[12:14], "big") if len(frame) >= 14 else 0
    if ethertype == ETH_P_8021Q and len(frame) >= 18:
        ethertype = int.from_bytes(frame[16:18], "big")
        start = 18
    if ethertype != ETH_P_IP or len(frame) < start + 20:
        return frame
    ihl = (frame[start] & 0x0F) * 4
    if ihl < 20 or len(frame) < start + ihl or start + 10 <= changed < start + 12:
        return frame
    header = bytearray(frame[start:start + ihl])
    header[10:12] = b"\0\0"
    header[10:12] = checksum(bytes(header)).to_bytes(2, "big")
    return frame[:start] + bytes(header) + frame[start + ihl:]


def _ipv4_at(frame: bytes) -> int | None:
    """Offset of the IPv4 header of an Ethernet (optionally 802.1Q) frame, or None."""
    if len(frame) < 14:
        return None
    ethertype, l3 = int.from_bytes(frame[12:14], "big"), 14
    if ethertype == 0x8100 and len(frame) >= 18:
        ethertype, l3 = int.from_bytes(frame[16:18], "big"), 18
    if ethertype != 0x0800 or len(frame) < l3 + 20 or frame[l3] >> 4 != 4:
        return None
    return l3


def _with_ipv4(frame: bytes, l3: int, edit: Callable[[bytearray], None]) -> bytes:
    """`frame` with its IPv4 header edited by `edit`, the header checksum fixed."""
    out = bytearray(frame)
    header = out[l3:]
    edit(header)
    out[l3:] = header
    return _fix_ipv4_checksum(bytes(out), l3)


def frame_edge_cases(trace: Trace, templates: int = 2) -> list[tuple[bytes, int]]:
    """Edge cases derived from a trace's own frames, for programs no NF describes: from the
    first IPv4 frames of the hottest flows, TTL 0/1/2/255, IP options, fragments, a bad
    version and header length, frames cut inside every header, a VLAN tag, other
    ethertypes, broadcast and multicast destinations; each on the template's port."""
    first: dict[int, int] = {}
    for i, flow in enumerate(trace.flow_ids):
        first.setdefault(flow, i)
    picked = [first[f] for f, _ in Counter(trace.flow_ids).most_common()
              if _ipv4_at(trace.frames[first[f]]) is not None][:templates]
    out: list[tuple[bytes, int]] = []
    for index in picked:
        frame, port = trace.frames[index], trace.ingress[index]
        l3 = _ipv4_at(frame)
        assert l3 is not None
        ihl = (frame[l3] & 0x0F) * 4

        def set_byte(off: int, value: int) -> Callable[[bytearray], None]:
            def edit(h: bytearray) -> None:
                h[off] = value
            return edit

        variants = [_with_ipv4(frame, l3, set_byte(8, ttl)) for ttl in (0, 1, 2, 255)]
        # Fragments: first (MF), a later one (offset, no transport header), DF only.
        for flags_frag in (0x2000, 0x2000 | 185, 0x4000):
            def frag(h: bytearray, value: int = flags_frag) -> None:
                h[6:8] = value.to_bytes(2, "big")
            variants.append(_with_ipv4(frame, l3, frag))
        variants.append(_with_ipv4(frame, l3, set_byte(0, 0x60 | (frame[l3] & 0x0F))))
        variants.append(_with_ipv4(frame, l3, set_byte(0, 0x44)))  # IHL below 5
        # Four bytes of IP options (NOPs): every later header moves.
        total = int.from_bytes(frame[l3 + 2:l3 + 4], "big")
        if ihl <= 56:
            header = bytearray(frame[l3:l3 + ihl]) + b"\x01\x01\x01\x01"
            header[0] = (header[0] & 0xF0) | (ihl + 4) // 4
            header[2:4] = (total + 4).to_bytes(2, "big")
            variants.append(_fix_ipv4_checksum(frame[:l3] + bytes(header) + frame[l3 + ihl:],
                                               l3))
        # Cut inside the Ethernet, IP and transport headers.
        variants += [frame[:14], frame[:l3 + 10], frame[:l3 + ihl + 2]]
        # A VLAN tag (VID 1), other ethertypes, broadcast and multicast destinations.
        if l3 == 14:
            variants.append(frame[:12] + b"\x81\x00\x00\x01" + frame[12:])
        variants += [frame[:12] + bytes.fromhex(t) + frame[14:] for t in ("0806", "86dd")]
        variants += [b"\xff" * 6 + frame[6:], b"\x01\x00\x5e\x00\x00\x01" + frame[6:]]
        out += [(v, port) for v in variants]
    return out


def unseen_flows(trace: Trace, count: int, rng: random.Random) -> list[tuple[bytes, int]]:
    """`count` frames of flows the trace does not hold, for programs no NF describes: the
    trace's IPv4 frames with new addresses and L4 ports (the MACs kept, so the program gets
    as far as its lookups), each on the port its template arrived on."""
    ipv4 = [i for i, frame in enumerate(trace.frames) if _ipv4_at(frame) is not None]
    out: list[tuple[bytes, int]] = []
    for _ in range(count if ipv4 else 0):
        index = rng.choice(ipv4)
        frame = trace.frames[index]
        l3 = _ipv4_at(frame)
        assert l3 is not None
        ihl = (frame[l3] & 0x0F) * 4

        def edit(h: bytearray) -> None:
            h[12:20] = rng.randbytes(8)
        mutated = bytearray(_with_ipv4(frame, l3, edit))
        if frame[l3 + 9] in (6, 17) and len(frame) >= l3 + ihl + 4:
            mutated[l3 + ihl:l3 + ihl + 4] = rng.randbytes(4)
        out.append((bytes(mutated), trace.ingress[index]))
    return out
