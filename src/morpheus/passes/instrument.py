"""Instrumentation: sampled recording of the keys looked up at chosen sites.

Before each instrumented lookup call the program bumps a per-CPU lookup counter for the
site; one lookup in `rate` (a power of two) also copies the key into the site's ring of
`slots` per-CPU sample slots. Memory is bounded (sites * slots * key size, per CPU) and the
reader (`morpheus.optimizer.heat`) uses the counters to know which slots are new.

Two maps are added: `mph_ctl` (per-CPU array, one value of 16 bytes per site: lookups,
samples) and `mph_samples` (per-CPU array, `slots` entries per site, each a key padded to a
multiple of 8 bytes). The code uses three 8-byte stack slots below the function's frame to
keep the key pointer across the helper calls it makes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from ..analysis.values import Kind, analyze_values
from ..ir import Instruction, Program, asm
from ..ir.asm import FP, R0, R1, R2, R3, R4
from ..ir.edit import rewrite
from ..ir.opcodes import STACK_SIZE
from ..ir.program import index_by_origin
from ..obj import MapSpec
from ..uapi import MapType
from .pipeline import PassContext, register

CTL_MAP = "mph_ctl"
SAMPLES_MAP = "mph_samples"
CTL_STRIDE = 16  # per site: u64 lookups, u64 samples


@dataclass(frozen=True)
class SampledSite:
    site: int  # provenance of the lookup call
    map: str
    key_size: int


@dataclass(frozen=True)
class SamplingLayout:
    """Where each site's counters and samples live; the reader needs the same layout."""

    sites: tuple[SampledSite, ...]
    slots: int
    rate: int
    slot_size: int
    rates: tuple[int, ...] = ()  # per site; empty: every site samples at `rate`

    def rate_of(self, n: int) -> int:
        return self.rates[n] if self.rates else self.rate

    def with_rates(self, rates: Sequence[int]) -> SamplingLayout:
        if any(r & (r - 1) or r < 1 for r in rates) or len(rates) != len(self.sites):
            raise ValueError("one power-of-two rate per site")
        return SamplingLayout(self.sites, self.slots, self.rate, self.slot_size, tuple(rates))

    def ctl_offset(self, n: int) -> int:
        return CTL_STRIDE * n

    def slot_base(self, n: int) -> int:
        return self.slots * n


def layout_for(sites: Sequence[SampledSite], *, slots: int = 256, rate: int = 16
               ) -> SamplingLayout:
    if slots & (slots - 1) or rate & (rate - 1):
        raise ValueError("slots and rate must be powers of two")
    widest = max((s.key_size for s in sites), default=8)
    return SamplingLayout(tuple(sites), slots, rate, (widest + 7) & ~7)


@register
@dataclass(frozen=True)
class Instrument:
    """Insert key sampling before the lookups of `layout.sites`."""

    name: ClassVar[str] = "instrument"
    layout: SamplingLayout = field(default_factory=lambda: layout_for(()))

    def run(self, program: Program, ctx: PassContext) -> Program:
        if not self.layout.sites:
            return program
        where = index_by_origin(program)
        analysis = analyze_values(program, ctx.prog_type)
        frames = _frame_floors(program, analysis)
        edits: dict[int, list[Instruction]] = {}
        for n, site in enumerate(self.layout.sites):
            if site.site not in where:
                raise ValueError(f"no instruction comes from lookup site {site.site}")
            index = where[site.site]
            call = program.insns[index]
            state = analysis.states[index]
            if state is None:
                continue  # unreachable: nothing to watch
            if not call.is_helper_call or call.imm != 1:
                raise ValueError(f"site {site.site} (instruction {index}) is not a map lookup")
            map_reg = state.regs[1]
            if map_reg.kind != Kind.MAP or map_reg.ref != site.map:
                raise ValueError(f"site {site.site}: r1 does not hold map {site.map!r}")
            floor = frames[_function_of(program, index)]
            if floor - 24 < -STACK_SIZE:
                raise ValueError(f"site {site.site}: no stack left for instrumentation")
            edits[index] = [*self._sample(n, site, call, floor), call.without_label()]
        out = rewrite(program, edits)
        ctx.maps[CTL_MAP] = MapSpec(CTL_MAP, MapType.PERCPU_ARRAY, 4,
                                    CTL_STRIDE * len(self.layout.sites), 1)
        ctx.maps[SAMPLES_MAP] = MapSpec(SAMPLES_MAP, MapType.PERCPU_ARRAY, 4,
                                        self.layout.slot_size,
                                        self.layout.slots * len(self.layout.sites))
        ctx.stats["instrumented_sites"] = len(edits)
        return out

    def _sample(self, n: int, site: SampledSite, call: Instruction, floor: int
                ) -> list[Instruction]:
        lay = self.layout
        key_slot, idx_slot = floor - 8, floor - 16
        done = f"mph{site.site}.sampled"
        ctl = lay.ctl_offset(n)
        code = [
            asm.stx(8, FP, key_slot, R2, note="sample"),
            asm.st(4, FP, idx_slot, 0, note="sample"),
            asm.ld_map_fd(R1, CTL_MAP, note="sample"),
            asm.mov64(R2, FP, note="sample"),
            asm.add64(R2, idx_slot, note="sample"),
            asm.call_helper("map_lookup_elem", note="sample"),
            asm.jeq(R0, 0, done, note="sample"),
            asm.ldx(8, R3, R0, ctl, note="sample"),
            asm.add64(R3, 1, note="sample"),
            asm.stx(8, R0, ctl, R3, note="sample"),
            asm.and64(R3, lay.rate_of(n) - 1, note="sample"),
            asm.jne(R3, 0, done, note="sample"),
            asm.ldx(8, R3, R0, ctl + 8, note="sample"),
            asm.add64(R3, 1, note="sample"),
            asm.stx(8, R0, ctl + 8, R3, note="sample"),
            asm.and64(R3, lay.slots - 1, note="sample"),
            asm.add64(R3, lay.slot_base(n), note="sample"),
            asm.stx(4, FP, idx_slot, R3, note="sample"),
            asm.ld_map_fd(R1, SAMPLES_MAP, note="sample"),
            asm.mov64(R2, FP, note="sample"),
            asm.add64(R2, idx_slot, note="sample"),
            asm.call_helper("map_lookup_elem", note="sample"),
            asm.jeq(R0, 0, done, note="sample"),
            asm.ldx(8, R2, FP, key_slot, note="sample"),
        ]
        off = 0
        for width in (8, 4, 2, 1):
            while site.key_size - off >= width:
                code += [asm.ldx(width, R4, R2, off, note="sample"),
                         asm.stx(width, R0, off, R4, note="sample")]
                off += width
        code += [
            # Both ways through the sampler leave the same stack (the index slot zeroed), so
            # the verifier merges them instead of walking the rest twice.
            asm.st(4, FP, idx_slot, 0, label=done, note="sample"),
            asm.ld_map_fd(R1, site.map, note="sample"),
            asm.ldx(8, R2, FP, key_slot, note="sample"),
        ]
        _ = call
        return code


def _function_of(program: Program, index: int) -> str:
    for fn in program.functions():
        if fn.start <= index < fn.end:
            return fn.name
    raise ValueError(f"instruction {index} is in no function")


def _frame_floors(program: Program, analysis: object) -> Mapping[str, int]:
    """Lowest stack offset each function touches (so that new slots go below it)."""
    floors: dict[str, int] = {}
    states = analysis.states  # type: ignore[attr-defined]
    for fn in program.functions():
        low = 0
        for index in range(fn.start, fn.end):
            state = states[index]
            insn = program.insns[index]
            if state is None:
                continue
            for reg in (insn.src, insn.dst):
                value = state.regs[reg] if reg < len(state.regs) else None
                if value is not None and value.kind == Kind.STACK and value.const is not None:
                    low = min(low, value.const + min(insn.off, 0))
            for off in state.stack:
                low = min(low, off)
        floors[fn.name] = low - low % 8 if low % 8 else low
        floors[fn.name] = min(floors[fn.name], 0)
    return floors


__all__ = ["CTL_MAP", "SAMPLES_MAP", "Instrument", "SampledSite", "SamplingLayout",
           "layout_for"]
_ = R3
