"""Reading the map contents a plan is based on: small tables whole, large ones at their hot
keys."""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..analysis import ProgramFacts
from ..analysis.sites import site_spec
from ..kernel import Map
from ..kernel.maps import possible_cpus
from ..obj import MapSpec
from ..uapi import MapFlags, MapType
from .heat import SiteHeat
from .plan import MapSnapshot, PlanOptions
from .shadow import shadow_eligible

PATH_ARRAY_MAX = 4096  # arrays up to this size are snapshotted whole for path specialization


@dataclass
class WholeReads:
    """LPM tries read whole in earlier cycles, kept while their version stays put.

    `versions` are the maps' versions now (the agent's guard versions, which every write
    moves: through the API, from outside via the write watcher); `cache` outlives the
    cycle: map → (version, contents, what planning derived from them). Reading the
    router's 5,000 prefixes one syscall pair each took 60-190 ms a cycle."""

    versions: Mapping[str, int]
    cache: dict[str, tuple[int, dict[bytes, bytes], dict[str, object]]] = field(
        default_factory=dict)

    def get(self, name: str) -> tuple[dict[bytes, bytes], dict[str, object]] | None:
        kept = self.cache.get(name)
        if kept is None or name not in self.versions or kept[0] != self.versions[name]:
            return None
        return kept[1], kept[2]

    def keep(self, name: str, entries: dict[bytes, bytes], derived: dict[str, object]
             ) -> None:
        if name in self.versions:
            self.cache[name] = (self.versions[name], entries, derived)


def _read_trie(live: Map, limit: int) -> dict[bytes, bytes] | None:
    """Every prefix of a trie, or None past `limit` of them (one walk: tries have no batch
    operations, and counting first walked the keys twice)."""
    out: dict[bytes, bytes] = {}
    for k, v in live.items():
        if len(out) >= limit:
            return None
        out[k] = v  # type: ignore[assignment]
    return out


def _array_entries(live: Map, spec: MapSpec) -> dict[bytes, bytes]:
    """Every index of an array: one batch walk when the kernel offers it."""
    if spec.max_entries > 64:
        try:
            return dict(live.lookup_batch())  # type: ignore[arg-type]
        except OSError:
            pass
    return {struct.pack("<I", i): live.lookup(struct.pack("<I", i))  # type: ignore[misc]
            for i in range(spec.max_entries)}


def _path_array(name: str, facts: ProgramFacts, specs: Mapping[str, MapSpec],
                options: PlanOptions) -> bool:
    """An array the data plane only reads and small enough to read whole: path
    specialization turns its variable indices into constants (next hop, backend)."""
    spec = specs.get(name)
    mf = facts.maps.get(name)
    return (spec is not None and spec.type == MapType.ARRAY and options.path_budget > 0
            and spec.max_entries <= PATH_ARRAY_MAX
            and mf is not None and not mf.written_by_data_plane)


def snapshot_maps(maps: Mapping[str, Map], facts: ProgramFacts, specs: Mapping[str, MapSpec],
                  heat: Mapping[int, SiteHeat], options: PlanOptions,
                  whole: WholeReads | None = None) -> dict[str, MapSnapshot]:
    """Read what the plan needs: small tables whole, large ones at their hot keys. Inner
    maps resolved through an outer map (`Site.inner_of`) are read through its slot. LPM
    tries read whole are taken from `whole` while their version has not moved."""
    resolved: dict[str, tuple[Map, MapSpec]] = {}
    unavailable: dict[str, MapSnapshot] = {}
    opened: list[Map] = []
    try:
        for site in facts.lookups():
            if site.inner_of is None or not site.specializable or site.map in resolved \
                    or site.map in unavailable:
                continue
            inner_spec = site_spec(site, specs)
            assert inner_spec is not None
            found = _resolve(maps, site.inner_of, inner_spec)
            if isinstance(found, str):
                unavailable[site.map] = MapSnapshot(inner_spec, unavailable=found)
                continue
            opened.append(found)
            resolved[site.map] = (found, _live_spec(site.map, found, inner_spec))
        out = _snapshot(maps, facts, specs, heat, options, resolved, whole)
        out.update(unavailable)
        return out
    finally:
        for m in opened:
            m.close()


def _resolve(maps: Mapping[str, Map], inner_of: tuple[str, bytes | None],
             template: MapSpec) -> Map | str:
    """The inner map a site reads (opened: close it), or why it cannot be named."""
    outer_name, key = inner_of
    outer = maps.get(outer_name)
    if outer is None:
        return f"map of maps {outer_name} not available"
    keys = [key] if key is not None else [
        struct.pack("<I", cpu) for cpu in range(min(possible_cpus(), outer.max_entries))]
    ids = {v for v in (outer.lookup(k) for k in keys) if v is not None}
    if not ids:
        return f"{outer_name} holds no inner map there: nothing to resolve"
    if len(ids) > 1:
        return (f"the CPUs' inner maps of {outer_name} differ ({len(ids)} maps): inlining "
                "them would need per-CPU dispatch")
    raw = ids.pop()
    inner = Map.from_id(int.from_bytes(raw[:4], "little") if isinstance(raw, bytes) else raw)
    if (inner.type, inner.key_size, inner.value_size) != (template.type, template.key_size,
                                                         template.value_size):
        inner.close()
        return f"the inner map in {outer_name} does not match its template"
    return inner


def _live_spec(name: str, live: Map, template: MapSpec) -> MapSpec:
    return dataclasses.replace(template, name=name, max_entries=live.max_entries)


def _snapshot(maps: Mapping[str, Map], facts: ProgramFacts, specs: Mapping[str, MapSpec],
              heat: Mapping[int, SiteHeat], options: PlanOptions,
              resolved: Mapping[str, tuple[Map, MapSpec]], whole: WholeReads | None
              ) -> dict[str, MapSnapshot]:
    maps = {**maps, **{n: m for n, (m, _) in resolved.items()}}
    specs = {**specs, **{n: s for n, (_, s) in resolved.items()}}
    wanted: dict[str, set[bytes]] = {}
    for site in facts.lookups():
        if site.map not in maps or (site.inner_of is not None and site.map not in resolved):
            continue
        if not site.specializable and not (options.shadow
                                           and shadow_eligible(site, facts, specs)):
            if _path_array(site.map, facts, specs, options):
                wanted.setdefault(site.map, set())  # read whole for path specialization
            continue
        keys = wanted.setdefault(site.map, set())
        if site.constant_key is not None:
            keys.add(site.constant_key)
        h = heat.get(site.index)
        if h is not None:
            keys.update(k for k, _ in h.hottest(options.hot_max, cover=options.hot_cover))
    out: dict[str, MapSnapshot] = {}
    for name, keys in wanted.items():
        live, spec = maps[name], specs[name]
        snap = MapSnapshot(spec)
        if spec.type == MapType.LRU_HASH:
            # Per-CPU LRU lists evict once one CPU used its share of the entries.
            share = (spec.max_entries // (os.cpu_count() or 1)
                     if spec.flags & MapFlags.NO_COMMON_LRU else spec.max_entries)
            half = max(1, share // 2)
            snap.crowded = live.count(limit=half) >= half
        small = spec.max_entries <= options.whole_max
        if small or _path_array(name, facts, specs, options):
            if spec.type == MapType.ARRAY:
                snap.entries.update(_array_entries(live, spec))
            else:
                for k, v in live.items():
                    snap.entries[k] = v  # type: ignore[assignment]
            snap.complete = True
        elif spec.type == MapType.LPM_TRIE and options.lpm_max and whole is not None \
                and name not in resolved and (kept := whole.get(name)) is not None:
            snap.entries.update(kept[0])
            snap.derived = kept[1]
            snap.complete = True
        elif spec.type == MapType.LPM_TRIE and options.lpm_max and \
                (read := _read_trie(live, options.lpm_max)) is not None:
            # Read whole, a trie becomes a search over its address ranges (optimizer.lpm).
            snap.entries.update(read)
            snap.complete = True
            if whole is not None and name not in resolved:
                whole.keep(name, read, snap.derived)
        elif spec.type == MapType.HASH and live.count(limit=options.whole_max + 1) \
                <= options.whole_max:
            # A hash map may hold few entries although it could hold many.
            for k, v in live.items():
                snap.entries[k] = v  # type: ignore[assignment]
            snap.complete = True
        for key in keys:
            if key not in snap.entries:
                snap.entries[key] = live.lookup(key)  # type: ignore[assignment]
        if name in resolved:
            snap.source_ids = (live.id,)
        out[name] = snap
    return out
