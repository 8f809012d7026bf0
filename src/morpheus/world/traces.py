"""Check traces: more than the packets the program was profiled on.

A specialized program is fast on the keys it saw; the check must also visit what it did
not see. `check_trace` extends a profiling trace with, in this order:

- near-miss keys (below), first, while the inlined tables are still current;
- moves: the hottest flows' destinations answering from every other port, each answer
  followed by the flow's own packet;
- held-back packets: flows of the same configuration the profile never contained (so
  mostly misses of every inlined hot-key table), arriving on every ingress port the NF
  serves, not only the main one;
- the NF's edge cases (runts, TTL 0/1, IP options, fragments, foreign ports, ...);
- near-miss keys, in detail: for the hottest flows (those whose keys were inlined), copies of their
  first packet with one bit flipped in each byte that can feed a key: the bytes the
  analysis traced into the key of a specialized lookup, and the usual key fields (MAC
  addresses, VLAN id, IPv4 addresses and protocol, L4 ports) where the analysis lost the
  offset (a VLAN tag or IP options move the headers). The IPv4 header checksum is fixed up
  so the packet is not simply dropped as malformed. A key compare that checks one byte too
  few, or a key constant one bit off, is caught by exactly these.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence

from ..analysis import ProgramFacts
from ..nf import NetworkFunction
from ..traffic.generate import Trace, generate

NEAR_MISS_FLOWS = 64  # hottest flows whose key bytes are flipped (as many as a site inlines)
SECOND_BIT_FLOWS = 8  # the hottest also get their lowest bit flipped
MOVED_FLOWS = 4  # hottest flows replayed on every other port
HELD_BACK = 300  # packets of flows the profile did not contain


def check_trace(trace: Trace, *, nf: NetworkFunction | None = None,
                facts: ProgramFacts | None = None, sites: Iterable[int] = (),
                config: object = None, seed: int = 0, held_back: int = HELD_BACK) -> Trace:
    """`trace` followed by held-back packets, edge cases and near-miss keys of `sites`
    (instruction indexes of specialized lookups in `facts`)."""
    frames, ingress = list(trace.frames), list(trace.ingress)
    rng = random.Random(f"check/{trace.nf}/{trace.seed}/{seed}")
    # Near misses first, while the inlined tables still hold: the held-back flows and the
    # edge cases write the maps (a switch learns), which moves guards and sends every later
    # packet down the unspecialized path.
    near = 0
    if facts is not None:
        offsets = key_packet_offsets(facts, sites)
        for frame, port in near_misses(trace, offsets):
            frames.append(frame)
            ingress.append(port)
            near += 1
    if nf is not None:
        config = config if config is not None else nf.default_config()
        edge = list(nf.module.edge_cases(config, rng)) if hasattr(nf.module, "edge_cases") \
            else []
        ports = sorted({p for p in ingress if p >= 2} | {p for _, p in edge if p >= 2})
        for frame, port in moved(trace, ports):
            frames.append(frame)
            ingress.append(port)
        if held_back:
            extra = generate(nf, trace.profile or "none", held_back, trace.seed + 7919 + seed,
                             config=config, single_ingress=False)
            frames += extra.frames
            ingress += extra.ingress
        for frame, port in edge:
            frames.append(frame)
            ingress.append(port)
    flow_ids = list(trace.flow_ids) + [-1] * (len(frames) - len(trace.frames))
    return Trace(frames, flow_ids, ingress, trace.nf, trace.profile, trace.seed,
                 {**trace.meta, "check_extra": len(frames) - len(trace.frames),
                  "near_misses": near},
                 list(trace.warmup))


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
