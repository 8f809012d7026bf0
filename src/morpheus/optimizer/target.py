"""The program being optimized: its bytecode with provenance and what the analysis says,
and the versions derived from it before any plan (version bumps, sampling)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..analysis import ProgramFacts, analyze
from ..analysis.sites import site_spec
from ..analysis.values import TAIL_CALL, analyze_values, map_set
from ..ir import Program
from ..ir.program import index_by_origin, with_origins
from ..obj import MapSpec, ObjectSpec, ProgramSpec
from ..passes.guards import GuardBumps
from ..passes.inline import GUARD_MAP
from ..passes.instrument import Instrument, SampledSite, SamplingLayout, layout_for
from ..passes.pipeline import PassContext
from ..uapi import MapType
from .plan import PlanOptions
from .shadow import shadow_eligible, shadow_maps


@dataclass(frozen=True)
class Target:
    """One program of an object, analysed: the input of every specialization request.

    `program` carries provenance (`with_origins`) matching `facts`' instruction indices.
    """

    spec: ObjectSpec
    prog: ProgramSpec
    program: Program
    facts: ProgramFacts

    @classmethod
    def analyze(cls, spec: ObjectSpec, prog: ProgramSpec) -> Target:
        program, facts = analyze_program(prog, spec.maps)
        return cls(spec, prog, program, facts)

    def guarded_maps(self, *, shadow: bool = True) -> list[str]:
        """Maps with specializable sites that the data plane writes (they need guards),
        and with `shadow`, the maps of lookups shadow values may answer."""
        return sorted(set(guarded_maps(self.facts)) | (
            shadow_maps(self.facts, self.spec.maps) if shadow else set()))

    def written_maps(self) -> list[str]:
        """Maps the data plane writes, in the object."""
        return sorted(m.name for m in self.facts.maps.values()
                      if m.written_by_data_plane and m.name in self.spec.maps)


def prepare(program: Program) -> tuple[Program, dict[int, int]]:
    """Give every instruction provenance; returns the program and index → provenance."""
    prepared = with_origins(program)
    return prepared, {i: o for o, i in index_by_origin(prepared).items()}


def analyze_program(prog: ProgramSpec, maps: Mapping[str, MapSpec]) -> tuple[Program,
                                                                               ProgramFacts]:
    """The program with provenance and its facts."""
    from .specialize import collector_paused

    with collector_paused():
        program, _ = prepare(prog.program)
        return program, analyze(program, maps, prog_type=prog.type)


def guarded_maps(facts: ProgramFacts) -> list[str]:
    """Maps with specializable sites that the data plane writes."""
    return sorted({s.map for s in facts.lookups() if s.specializable and s.guarded})


def sampled_sites(facts: ProgramFacts, maps: Mapping[str, MapSpec],
                  options: PlanOptions) -> list[SampledSite]:
    """Sites worth watching: specializable lookups with a variable key on a map too large
    to inline whole."""
    out = []
    for site in facts.lookups():
        spec = site_spec(site, maps)
        wanted = site.specializable or (options.shadow and shadow_eligible(site, facts, maps))
        if not wanted or spec is None or site.constant_key is not None:
            continue
        if spec.max_entries <= options.whole_max:
            continue  # inlined whole
        out.append(SampledSite(site.index, site.map, spec.key_size))
    return out


def instrument(program: Program, spec: ObjectSpec, prog: ProgramSpec, sites: Sequence[SampledSite],
               *, rate: int = 16, slots: int = 256) -> tuple[Program, dict[str, MapSpec],
                                                              SamplingLayout]:
    """`program` with sampled key recording at `sites`, the maps it adds, and its layout."""
    layout = layout_for(sites, slots=slots, rate=rate)
    ctx = PassContext(dict(spec.maps), prog.type)
    out = Instrument(layout).run(program, ctx)
    extra = {k: v for k, v in ctx.maps.items() if k not in spec.maps}
    return out, extra, layout


def with_guard_bumps(target: Target, slots: Mapping[str, int]
                     ) -> tuple[Program, dict[str, MapSpec]]:
    """The target's program with version bumps at the data plane's writes to the maps in
    `slots` (map → guard slot), and the guard map it needs (none when `slots` is empty)."""
    if not slots:
        return target.program, {}
    ctx = PassContext(dict(target.spec.maps), target.prog.type)
    ctx.maps[GUARD_MAP] = MapSpec(GUARD_MAP, MapType.ARRAY, 4, 8 * (1 + max(slots.values())), 1)
    out = GuardBumps(dict(slots), all_read_ranges(target.facts, list(slots))).run(
        target.program, ctx)
    return out, {GUARD_MAP: ctx.maps[GUARD_MAP]}


def tail_call_arrays(program: Program, maps: Mapping[str, MapSpec],
                     prog_type: int) -> frozenset[str] | None:
    """The prog arrays `program` tail-calls through (None: a tail call through a map the
    analysis could not identify)."""
    analysis = analyze_values(program, prog_type, {n: s.type for n, s in maps.items()})
    out: set[str] = set()
    for index, insn in enumerate(program.insns):
        state = analysis.states[index]
        if state is None or not insn.is_helper_call or insn.imm != TAIL_CALL:
            continue
        members = map_set(state.regs[2])
        if members is None:
            return None
        out |= members
    return frozenset(out)


def all_read_ranges(facts: ProgramFacts, maps: list[str]
                     ) -> dict[str, tuple[tuple[int, int], ...] | None]:
    """Bytes any specializable site of each map reads (a superset of any plan's)."""
    out: dict[str, list[tuple[int, int]] | None] = {m: [] for m in maps}
    for site in facts.lookups():
        if site.map not in out or not site.specializable:
            continue
        for use in site.uses:
            ranges = out[site.map]
            if ranges is None or use.kind != "read":
                continue
            if use.offset is None or not use.size:
                out[site.map] = None
            else:
                ranges.append((use.offset, use.offset + use.size))
    return {k: (tuple(v) if v is not None else None) for k, v in out.items()}
