"""Planning shadow-value sites (`passes.shadow`): lookups whose value the program writes.

A site qualifies when the only thing keeping it a map lookup is plain stores through its
value pointer (no atomics, no pointer handed to a helper or returned), on a hash map,
and no other lookup of that map writes its value (the shadow slots follow this site's
stores only). Its hot keys present in the snapshot are inlined like any hot keys, behind
the map's guard; keys the map lacks are left to the map (the program inserts them, which
moves the guard anyway).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..analysis import ProgramFacts, Site
from ..analysis.sites import MAX_KEY_SIZE, site_spec
from ..analysis.values import K_PKT, K_STACK, K_VALUE
from ..obj import MapSpec
from ..passes.inline import InlineEntry, SitePlan
from ..uapi import MapType
from .heat import SiteHeat
from .plan import MapSnapshot, PlanOptions, SiteDecision


def shadow_eligible(site: Site, facts: ProgramFacts, maps: Mapping[str, MapSpec]) -> bool:
    """Whether `site` is a lookup the shadow scheme can answer (see the module docstring)."""
    if not site.is_lookup or site.specializable or site.inner_of is not None:
        return False
    spec = site_spec(site, maps)
    if spec is None or spec.type != MapType.HASH or spec.key_size > MAX_KEY_SIZE:
        return False
    if site.key is None or site.key.kind not in (K_STACK, K_PKT, K_VALUE):
        return False
    writes = site.value_writes
    if not writes or any(u.kind != "write" or u.offset is None or u.size <= 0 for u in writes):
        return False
    return not any(s.map == site.map and s.index != site.index and s.value_writes
                   for s in facts.lookups())


def shadow_maps(facts: ProgramFacts, maps: Mapping[str, MapSpec]) -> set[str]:
    """Maps with a lookup shadow values may answer (they need a guard)."""
    return {s.map for s in facts.lookups() if shadow_eligible(s, facts, maps)}


def plan_shadow_sites(facts: ProgramFacts, snapshots: Mapping[str, MapSnapshot],
                      heat: Mapping[int, SiteHeat], options: PlanOptions,
                      guard_slots: Mapping[str, int], guard_versions: Mapping[str, int],
                      decisions: list[SiteDecision]) -> list[SitePlan]:
    """Plans for the eligible sites worth it; their entries in `decisions` say so."""
    out: list[SitePlan] = []
    by_index = {d.site.index: n for n, d in enumerate(decisions)}
    maps = {name: s.spec for name, s in snapshots.items()}
    for site in facts.lookups():
        if site.index not in by_index or site.map not in guard_slots:
            continue
        snap = snapshots.get(site.map)
        if snap is None or snap.unavailable or not shadow_eligible(site, facts, maps):
            continue
        site_heat = heat.get(site.index)
        if site_heat is None or sum(site_heat.keys.values()) < options.min_samples:
            continue
        entries = []
        for key, share in site_heat.hottest(options.hot_max, cover=options.hot_cover):
            value = snap.entries.get(key)
            if value is not None:
                entries.append(InlineEntry(key, value, share))
        if not entries:
            continue
        coverage = site_heat.share({e.key for e in entries})
        if coverage < options.min_coverage:
            continue
        plan = SitePlan(site.index, site.map, tuple(entries), guard_slot=guard_slots[site.map],
                        guard_version=guard_versions.get(site.map, 0),
                        known_bytes=tuple(b.value if b.kind == "const" else None
                                          for b in site.key_bytes or ()))
        out.append(plan)
        decisions[by_index[site.index]] = SiteDecision(
            site, plan, "shadow",
            f"{len(entries)} hot keys cover {coverage:.0%} of sampled lookups; the value "
            "is written, so hits read a shadow copy the program keeps equal to the map",
            len(entries), coverage)
    return out


def is_shadow_site(plan: SitePlan, facts: ProgramFacts) -> bool:
    """Whether a planned site is a shadow site (the analysis left it a map lookup)."""
    site = facts.sites.get(plan.site)
    return site is not None and not site.specializable


def stable_value(plan: SitePlan, value: bytes | None, facts: ProgramFacts) -> bytes | None:
    """`value` as a shadow site's program depends on it: not at all (its slots start
    invalid and fill from the map), only on the key being present. So a runtime need not
    specialize again each time a timestamp moves; anything else that changes the entry
    moves the guard, whose version the fingerprint holds."""
    if value is None or not is_shadow_site(plan, facts):
        return value
    return bytes(len(value))
