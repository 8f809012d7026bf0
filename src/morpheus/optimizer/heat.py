"""Reading the samples the instrumentation records, into per-site key heat with decay.

Per site and CPU, the counters say how many lookups happened and how many samples were
taken; only the samples written since the last read are counted (all of the ring if more
than a ring's worth arrived). Each sample counts for the lookups it stands for (its site's
sampling rate), so heat stays comparable when a site's rate changes. Counts decay
geometrically at every read, so heavy hitters of the past fade when traffic shifts.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..kernel import Map
from ..passes.instrument import CTL_MAP, SAMPLES_MAP, SamplingLayout

_CTL = struct.Struct("<QQ")


@dataclass
class SiteHeat:
    """What one site saw: decayed key counts and lookup totals."""

    keys: Counter[bytes] = field(default_factory=Counter)  # decayed, in estimated lookups
    recent: Counter[bytes] = field(default_factory=Counter)  # raw samples since last read
    lookups: int = 0  # lookups since the previous read (all CPUs)
    samples: int = 0  # samples taken since the previous read

    def hottest(self, limit: int, *, cover: float = 1.0) -> list[tuple[bytes, float]]:
        """The hottest keys, at most `limit`, stopping once they cover `cover` of the heat."""
        total = sum(self.keys.values())
        out: list[tuple[bytes, float]] = []
        acc = 0.0
        for key, count in self.keys.most_common(limit):
            if total and acc / total >= cover:
                break
            out.append((key, count / total if total else 0.0))
            acc += count
        return out

    def share(self, keys: set[bytes] | frozenset[bytes]) -> float:
        """Fraction of the (decayed) samples that hit `keys`."""
        total = sum(self.keys.values())
        return sum(c for k, c in self.keys.items() if k in keys) / total if total else 0.0

    def recent_share(self, keys: set[bytes] | frozenset[bytes]) -> float:
        """Fraction of the samples taken since the previous read that hit `keys`."""
        total = sum(self.recent.values())
        return sum(c for k, c in self.recent.items() if k in keys) / total if total else 0.0


@dataclass
class HeatReader:
    """Incremental reader of one program version's sampling maps."""

    layout: SamplingLayout
    maps: Mapping[str, Map]
    decay: float = 0.5
    heat: dict[int, SiteHeat] = field(default_factory=dict)
    _seen: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)

    def read(self) -> dict[int, SiteHeat]:
        """Fold the new samples into the heat; returns it (by site provenance)."""
        if not self.layout.sites:
            return self.heat
        ctl_raw = self.maps[CTL_MAP].lookup(0)
        assert isinstance(ctl_raw, list)
        samples = self.maps[SAMPLES_MAP]
        slots = self.layout.slots
        all_slots: dict[bytes, list[bytes]] | None = None
        for n, site in enumerate(self.layout.sites):
            heat = self.heat.setdefault(site.site, SiteHeat())
            for key in list(heat.keys):
                heat.keys[key] *= self.decay
                if heat.keys[key] < 0.01:
                    del heat.keys[key]
            heat.lookups = heat.samples = 0
            heat.recent = Counter()
            weight = self.layout.rate_of(n)
            for cpu, raw in enumerate(ctl_raw):
                lookups, taken = _CTL.unpack_from(raw, self.layout.ctl_offset(n))
                old_lookups, old_taken = self._seen.get((n, cpu), (0, 0))
                self._seen[(n, cpu)] = (lookups, taken)
                new = taken - old_taken
                heat.lookups += lookups - old_lookups
                heat.samples += new
                if new <= 0:
                    continue
                if all_slots is None:
                    all_slots = {k: v for k, v in samples.lookup_batch(batch_size=4096)}  # type: ignore[misc]
                count = min(new, slots)
                for i in range(count):
                    # Slot of the i-th most recent sample: samples are written at
                    # (count_after_increment & (slots-1)), i.e. 1-based positions.
                    position = (taken - i) & (slots - 1)
                    key = struct.pack("<I", self.layout.slot_base(n) + position)
                    per_cpu = all_slots.get(key)
                    if per_cpu is None:
                        continue
                    sampled = bytes(per_cpu[cpu][: site.key_size])
                    heat.keys[sampled] += weight
                    heat.recent[sampled] += 1
        return self.heat
