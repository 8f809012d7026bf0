"""Deciding what to inline at each site (pure: works on a snapshot and a heat profile).

Rules, in order, for a lookup site the analysis calls specializable (whether a site can be
specialized at all is decided there, in `analysis.sites`, and only there: `inspect --sites`
and the plan give the same reason):
1. a constant key: inline the one value (or NULL) the key maps to;
2. a small table (at most `whole_max` entries): inline all of it; a miss is then NULL;
   an LPM trie read whole (at most `lpm_max` prefixes, looked up with a full-length
   prefix) becomes a search over its address ranges (`optimizer.lpm`), whatever the traffic;
3. a large table with a heat profile: inline its hottest keys (at most `hot_max`, enough to
   cover `hot_cover` of the sampled lookups) with an exact key match; a miss calls the map;
4. otherwise leave the site alone and say why.
Sites on maps the data plane writes get a version guard.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..analysis import ProgramFacts, Site
from ..obj import MapSpec
from ..passes.inline import InlineEntry, InlinePlan, SitePlan
from ..passes.lpmtable import MAX_BLOCKS, table_blocks
from ..uapi import MapType
from .heat import SiteHeat
from .lpm import PREFIXLEN_BYTES, full_prefixlen_key, lpm_ranges, range_of


@dataclass(frozen=True)
class PlanOptions:
    whole_max: int = 64  # tables up to this many entries are inlined whole
    hot_max: int = 64  # hot keys inlined per site
    hot_cover: float = 0.99  # stop adding hot keys once they cover this share of samples
    min_samples: int = 32  # below this, a site's heat is noise
    # Hot keys that answer fewer lookups than this are not worth a comparison tree in front
    # of every lookup (uniform traffic would pay the tree and the map on most packets).
    min_coverage: float = 0.5
    # Estimated instructions the verifier processes (optimizer.verifier_estimate, an upper
    # bound; the verifier here takes about 1 µs per instruction): above it comparison trees
    # converge their hits, least used first, then the least used are dropped.
    verifier_budget: int = 400_000
    # Instructions path specialization may add (copies of the code after hot hits, one per
    # distinct inlined value); 0 turns it off. Off by default: on the router it cut executed
    # instructions per packet by ~20% but not the time per packet (interleaved, 2 rounds of
    # 5: median 2.18x/1.89x with it, 2.37x/2.06x without), and made specialization 10-20x
    # slower (270-660 ms against 19-38 ms), past the 300 ms cycle.
    path_budget: int = 0
    coalesce_stores: bool = True  # runs of constant byte stores become wide stores
    # Hot keys of lookups whose value the program writes (a switch's learning lookup) are
    # answered from shadow slots the program keeps equal to the map (`passes.shadow`).
    shadow: bool = True
    # Byte-wise packet copies (MAC addresses into keys, a VLAN tag's move) become wide
    # loads and stores (`passes.widen`).
    widen: bool = True
    # LPM tries with at most this many prefixes are read whole and searched by address
    # range (2N+1 ranges at most, no trie walk and no miss); 0 turns it off (hot keys
    # only). Reading a trie costs ~3 µs a prefix (the router's 5,000: ~15 ms).
    lpm_max: int = 8192
    # Up to this many ranges, a comparison tree (~log2 of that in compares); above, IPv4
    # tries become direct-indexed tables (passes.lpmtable: at most 3 loads, ~40
    # instructions however many ranges; on the router's 5,448 ranges the tree was 16,000
    # instructions and 100-190 ms of verification, the tables 1.3 MB of map and ~3 ms).
    lpm_tree_max: int = 64


@dataclass
class MapSnapshot:
    """The contents the plan is based on.

    `entries` is the whole table when `complete`; otherwise it holds the values of the keys
    that were asked for (a None value: the key is absent). For LPM tries the value of an
    exact key is the result of a lookup with that key (the longest matching prefix).
    """

    spec: MapSpec
    entries: dict[bytes, bytes | None] = field(default_factory=dict)
    complete: bool = False
    # LRU maps: at least half full, so that an insert may evict (see plan_sites).
    crowded: bool = False
    # An inner map resolved through its outer map: the ids of the inner maps read (the
    # agent's write watcher must watch them), or why the slot could not be resolved.
    source_ids: tuple[int, ...] = ()
    unavailable: str = ""
    # What planning derives from complete contents (an LPM trie's ranges), computed once
    # per snapshot, and shared by the snapshots of one version (`snapshot.WholeReads`).
    derived: dict[str, object] = field(default_factory=dict)


@dataclass
class SiteDecision:
    site: Site
    plan: SitePlan | None
    mode: str  # "constant", "table", "hot", "none"
    reason: str
    keys: int = 0
    coverage: float | None = None  # share of sampled lookups the inlined keys cover


def plan_sites(facts: ProgramFacts, snapshots: Mapping[str, MapSnapshot],
               heat: Mapping[int, SiteHeat], options: PlanOptions = PlanOptions(),
               *, origin_of: Mapping[int, int] | None = None,
               guard_slots: Mapping[str, int] | None = None,
               guard_versions: Mapping[str, int] | None = None, guard_all: bool = False
               ) -> tuple[InlinePlan, list[SiteDecision]]:
    """The inline plan and, for every lookup site, what was decided and why.

    Sites are reported and planned by provenance (`origin_of` maps instruction index to
    provenance; identity by default). Guarded sites need `guard_slots[map]` and the version
    the snapshot was taken at in `guard_versions[map]`.
    """
    origin_of = origin_of or {}
    guard_slots = guard_slots or {}
    guard_versions = guard_versions or {}
    plans: list[SitePlan] = []
    decisions: list[SiteDecision] = []
    for site in facts.lookups():
        origin = origin_of.get(site.index, site.index)
        snap = snapshots.get(site.map)
        if not site.specializable:
            decisions.append(SiteDecision(site, None, "none", site.reason))
            continue
        if snap is None:
            decisions.append(SiteDecision(site, None, "none", "no snapshot of the map"))
            continue
        if snap.unavailable:
            decisions.append(SiteDecision(site, None, "none", snap.unavailable))
            continue
        if snap.crowded:
            # An LRU map evicts by recency, and inlined hits do not refresh it: once inserts
            # may evict, the specialized program could lose other entries than the original.
            # Below half full no insert evicts (and the first one moves the guard anyway).
            decisions.append(SiteDecision(site, None, "none",
                                          "LRU map at least half full: inserts may evict by "
                                          "a recency the inlined hits would not refresh"))
            continue
        guard_slot = guard_version = None
        if guard_all and site.map in guard_slots:
            guard_slot = guard_slots[site.map]
            guard_version = guard_versions.get(site.map, 0)
        elif site.guarded:
            if site.map not in guard_slots:
                decisions.append(SiteDecision(site, None, "none",
                                              "map written by the data plane and no guard slot"))
                continue
            guard_slot = guard_slots[site.map]
            guard_version = guard_versions.get(site.map, 0)
        common = {"site": origin, "map": site.map, "guard_slot": guard_slot,
                  "guard_version": guard_version or 0,
                  "known_bytes": tuple(b.value if b.kind == "const" else None
                                       for b in site.key_bytes or ())}
        key = site.constant_key
        if key is not None:
            value = _value_of(snap, key)
            if value is _UNKNOWN:
                decisions.append(SiteDecision(site, None, "none", "constant key not in snapshot"))
                continue
            plan = SitePlan(entries=(InlineEntry(key, value),), constant_key=True, complete=True,
                            **common)  # type: ignore[arg-type]
            plans.append(plan)
            decisions.append(SiteDecision(site, plan, "constant", "constant key", 1, 1.0))
            continue
        if snap.spec.type == MapType.LPM_TRIE:
            ranged = _range_plan(site, snap, heat.get(origin), options, common)
            if ranged is not None:
                plans.append(ranged)
                decisions.append(SiteDecision(
                    site, ranged, "table", f"whole LPM trie ({len(snap.entries)} prefixes) as "
                    f"{len(ranged.entries)} address ranges", len(ranged.entries), 1.0))
                continue
            # A trie's entries are prefixes, not the keys it is looked up with: never an
            # exact-match table (hot keys below hold lookup results, which are).
        elif snap.complete and len(snap.entries) <= options.whole_max:
            site_heat = heat.get(origin)
            weights = dict(site_heat.keys) if site_heat is not None else {}
            entries = tuple(InlineEntry(k, v, weights.get(k, 0.0))
                            for k, v in sorted(snap.entries.items()) if v is not None)
            plan = SitePlan(entries=entries, complete=True, **common)  # type: ignore[arg-type]
            plans.append(plan)
            decisions.append(SiteDecision(site, plan, "table",
                                          f"whole table ({len(entries)} entries)", len(entries),
                                          1.0))
            continue
        site_heat = heat.get(origin)
        if site_heat is None or sum(site_heat.keys.values()) < 1e-9:
            decisions.append(SiteDecision(site, None, "none",
                                          "large table and no heat profile for the site"))
            continue
        if site_heat.samples and site_heat.samples < options.min_samples and \
                sum(site_heat.keys.values()) < options.min_samples:
            decisions.append(SiteDecision(site, None, "none", "too few samples"))
            continue
        hot = site_heat.hottest(options.hot_max, cover=options.hot_cover)
        entries_list = []
        for k, share in hot:
            value = _value_of(snap, k)
            if value is _UNKNOWN:
                continue
            entries_list.append(InlineEntry(k, value, share))
        if not entries_list:
            decisions.append(SiteDecision(site, None, "none", "hot keys not in the snapshot"))
            continue
        coverage = site_heat.share({e.key for e in entries_list})
        if coverage < options.min_coverage:
            decisions.append(SiteDecision(site, None, "none",
                                          f"hot keys cover only {coverage:.0%} of sampled "
                                          f"lookups (under {options.min_coverage:.0%})",
                                          len(entries_list), coverage))
            continue
        plan = SitePlan(entries=tuple(entries_list), complete=False, **common)  # type: ignore[arg-type]
        plans.append(plan)
        decisions.append(SiteDecision(site, plan, "hot",
                                      f"{len(entries_list)} hot keys cover {coverage:.0%} of "
                                      "sampled lookups", len(entries_list), coverage))
    slots = 1 + max(guard_slots.values()) if guard_slots else 0
    return InlinePlan(tuple(plans), slots), decisions


def _range_plan(site: Site, snap: MapSnapshot, site_heat: SiteHeat | None,
                options: PlanOptions, common: dict[str, object]) -> SitePlan | None:
    """The whole trie as address ranges, when it was read whole and the site looks up one
    address at full prefix length; weights from the sampled keys shape the search."""
    known = tuple(common["known_bytes"])  # type: ignore[arg-type]
    size = snap.spec.key_size
    if not snap.complete or not full_prefixlen_key(known, size):
        return None
    # Hot keys the snapshot looked up on top of the trie hold the answer of the range
    # they fall in: they split no range, and the ranges of one version are computed once.
    ranges = snap.derived.get("lpm_ranges")
    if not isinstance(ranges, list):
        ranges = snap.derived["lpm_ranges"] = lpm_ranges(snap.entries, size)
    direct = len(ranges) > options.lpm_tree_max and size - PREFIXLEN_BYTES == 4
    if direct and table_blocks([start for start, _ in ranges]) > MAX_BLOCKS:
        return None
    if not direct and len(ranges) > 2 * options.lpm_max + 1:
        return None
    weights = [0.0] * len(ranges)
    if site_heat is not None:
        for key, weight in site_heat.keys.items():
            if len(key) == size:
                weights[range_of(ranges, int.from_bytes(key[PREFIXLEN_BYTES:], "big"))] += weight
    prefix = known[:PREFIXLEN_BYTES]
    entries = tuple(
        InlineEntry(bytes(prefix) + start.to_bytes(size - PREFIXLEN_BYTES, "big"),  # type: ignore[arg-type]
                    value, weight)
        for (start, value), weight in zip(ranges, weights, strict=True))
    # Hundreds of distinct values would each walk the code after the site in the verifier:
    # converge them (one pointer with a variable offset) beyond a handful. A direct table
    # converges by construction.
    return SitePlan(entries=entries, complete=True, ranges=True, direct=direct,
                    converge=not direct and len(entries) > RANGE_CONVERGE_OVER,
                    **common)  # type: ignore[arg-type]


RANGE_CONVERGE_OVER = 8


class _Unknown:
    pass


_UNKNOWN = _Unknown()


def _value_of(snap: MapSnapshot, key: bytes) -> bytes | _Unknown | None:
    if key in snap.entries:
        return snap.entries[key]
    if snap.spec.type == MapType.ARRAY:
        index = int.from_bytes(key[:4], "little")
        if index >= snap.spec.max_entries:
            return None
    if snap.complete:
        return None
    return _UNKNOWN
