"""Shadow values: hot keys of a lookup whose value the program writes, answered inline.

A lookup whose value pointer is written (a learning switch refreshing an entry's
timestamp) must keep a pointer into the real map, so table inlining leaves it alone. This
pass answers its hot keys anyway, behind the map's version guard and an exact key match:

- every hot key has a slot in a writable side array (`shadow`): the key, a valid word,
  then a copy of its value. A hit on a valid slot points the value register into that
  copy instead of the map;
- the code after the site runs as a copy (the *speculative copy*) in which the pointer is
  the shadow. It may read the copy, compute and branch, and call the clock; it goes back
  to the original code at the first instruction where the pointer is dead. The first
  store (to anything), or any other helper call, ends the speculation: nothing observable
  has happened yet, so the program looks the key up in the real map (with the key kept in
  the slot), copies the real value into the slot, marks it valid, and runs a second copy
  of the code after the site (the *writing copy*) with the real pointer, in which every
  store through the pointer is also made to the slot. A key the real map no longer holds
  marks the slot invalid and takes the original code with NULL, as the original would;
- slots start invalid: a version's slots are only ever filled by that version's own real
  lookup (a hit on an invalid slot resyncs before anything reads it), never from the
  agent's snapshot, which the previous version may have written after (a station's state
  flipped between the snapshot and the swap would otherwise be read stale). Every version
  gets a fresh side array (the agent creates extra maps per version), so no other
  version's mirrored stores reach it;
- the guard covers everything else that changes the map: inserts, deletes and moves by
  the data plane (version bumps at those helpers) and by the control plane (the agent and
  its write watcher). Stores through this site's pointer do not move it: the writing copy
  keeps the slot equal to the map.

So a valid slot holds what the real entry holds when a hit reads it, but for stores of
the previous version still running on another CPU while the swap takes effect (a packet
it started before the swap that stores after this version filled the slot): such a slot
stays older than the map until the next store through the pointer resyncs it.

Slots are shared by all CPUs, as the map's entries are: two CPUs refreshing one entry at
once race on the slot as they race on the entry in the original (the slot may then keep
the other CPU's copy until the next resync).

Registers: the speculative copy may only overwrite r6-r9 where the original code after
the site does not read them before writing them, so that ending the speculation can
resume the original path with the state the lookup left. Where that, the pointer's flow
(moved between registers, never spilled, offset or compared to anything but NULL) or a
free register for the slot stores cannot be shown, the site is left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from ..ir import Instruction, Program, asm
from ..ir.asm import R0, R1, R2, R4, R10
from ..ir.helpers import HELPER_IDS
from ..ir.opcodes import C_ALU64, C_JMP, OP_MOV, SRC_X, JmpOp
from ..ir.program import index_by_origin
from ..obj import MapSpec
from ..uapi import MapType
from .dce import register_effects
from .inline import GUARD_MAP, InlineEntry, SitePlan, _chunks, _tree
from .pipeline import PassContext, register

SHADOW_MAP = "mph_shadow"
SHADOW_KEY = "shadow key"  # note on the key compares of a shadow site's tree
LOOKUP = HELPER_IDS["map_lookup_elem"]
# Helpers the speculative copy may call: they read a clock and change nothing. During one
# packet a second call is indistinguishable from the original's one call made a little
# later (and the equivalence check answers every call of one packet alike).
PURE_HELPERS = frozenset(HELPER_IDS[n] for n in ("ktime_get_ns", "ktime_get_boot_ns",
                                                 "ktime_get_coarse_ns") if n in HELPER_IDS)
CALLEE_SAVED = 0b1111000000  # r6-r9
STACK_LIMIT = 512
VALID_SIZE = 8  # a slot's valid word, just before its value copy
VALID_NOTE = "shadow valid"  # the hit's test of the slot's valid word
FILL = "fill"  # the resync stub a hit on a slot not yet valid takes


class Refused(ValueError):
    """The site's code does not fit the scheme (the reason says where)."""


@register
@dataclass(frozen=True)
class ShadowValues:
    """Answer the hot keys of written-value lookups (`sites`) from shadow slots."""

    name: ClassVar[str] = "shadow"
    sites: tuple[SitePlan, ...] = ()
    shadow_map: str = SHADOW_MAP
    guard_map: str = GUARD_MAP

    def run(self, program: Program, ctx: PassContext) -> Program:
        blob = bytearray()
        done: list[int] = []
        for plan in self.sites:
            spec = ctx.maps.get(plan.map)
            if spec is None:
                raise ValueError(f"site {plan.site}: map {plan.map!r} is unknown")
            try:
                program, slots = _shadow_site(program, plan, spec, len(blob),
                                              self.shadow_map, self.guard_map)
            except Refused as exc:
                ctx.notes.append(f"shadow: site {plan.site} left alone: {exc}")
                continue
            blob.extend(slots)
            done.append(plan.site)
        if blob:
            slots = 1 + max(p.guard_slot or 0 for p in self.sites)
            ctx.maps.setdefault(self.guard_map, MapSpec(
                name=self.guard_map, type=MapType.ARRAY, key_size=4, value_size=8 * slots,
                max_entries=1))
            ctx.maps[self.shadow_map] = MapSpec(
                name=self.shadow_map, type=MapType.ARRAY, key_size=4, value_size=len(blob),
                max_entries=1, data=bytes(blob))
        ctx.stats["shadow_sites"] = ctx.stats.get("shadow_sites", []) + done
        return program


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _slots(entries: Sequence[InlineEntry], key_size: int, value_size: int) -> bytes:
    """Each entry as key (padded to 8 bytes), a valid word, then room for the value
    (padded to 8 bytes). Slots start invalid: only this version's own real lookup fills
    them (a snapshot's copy may miss a store the previous version made after it)."""
    out = bytearray()
    for e in entries:
        out += e.key.ljust(_align8(key_size), b"\0") + bytes(VALID_SIZE + _align8(value_size))
    return bytes(out)


def _shadow_site(program: Program, plan: SitePlan, spec: MapSpec, base: int,
                 shadow_map: str, guard_map: str) -> tuple[Program, bytes]:
    entries = [e for e in plan.entries if e.value is not None]
    if not entries or plan.guard_slot is None:
        raise Refused("no present hot key, or no guard")
    where = index_by_origin(program)
    if plan.site not in where:
        raise Refused("the lookup is gone")
    call_at = where[plan.site]
    call = program.insns[call_at]
    if not call.is_helper_call or call.imm != LOOKUP:
        raise Refused(f"instruction {call_at} is not a map lookup")
    functions = program.functions()
    end = functions[0].end if functions else len(program.insns)
    if call_at + 1 >= end:
        raise Refused("the lookup is not in the entry function")
    live = live_in(program, end)
    kpad = _align8(spec.key_size)
    slot = kpad + VALID_SIZE + _align8(spec.value_size)
    spill = _spill_offset(program, end)
    tag = f"sh{plan.site}"
    entry = program.insns[call_at + 1]
    resume = entry.label or f"{tag}.resume"
    speculative = _Region(program, call_at + 1, end, live, writing=False).walk()
    writing = _Region(program, call_at + 1, end, live, writing=True).walk()
    written = 0
    for i in speculative.copied:
        written |= register_effects(program.insns[i])[1]
    if written & CALLEE_SAVED & live[call_at + 1]:
        raise Refused("the code after the lookup overwrites r6-r9 before it stops "
                      "reading the value, where the original path still needs them")
    if any(i == call_at + 1 for i in speculative.rejoin):
        raise Refused("the value is dead right after the lookup")
    labels: dict[int, str] = {}  # original instruction -> label for jumps back into it
    for i in speculative.rejoin | writing.rejoin:
        labels[i] = program.insns[i].label or f"{tag}.j{i}"
    labels[call_at + 1] = resume
    tail: list[Instruction] = []
    spec_code, stubs = speculative.emit(f"{tag}.s", labels, bail=f"{tag}.bail")
    tail += spec_code
    write_entry = f"{tag}.w"
    # A slot this version has not filled yet (its valid word is 0) is resynced before
    # anything reads it, as a store would resync it.
    ends: list[tuple[int | str, int]] = [(FILL, R0), *stubs]
    for index, reg in ends:
        tail += _stub(f"{tag}.bail{index}", reg, kpad, spec, plan.map, spill, resume,
                      f"{write_entry}{call_at + 1}")
    write_code, _ = writing.emit(f"{tag}.w", labels, spill=spill)
    tail += write_code
    # The site: guard, exact-match tree over the key at r2, hits point r0 into a slot.
    site_code = [
        asm.ld_map_value(R0, guard_map, 8 * plan.guard_slot, note="guard"),
        asm.ldx(8, R0, R0, 0, note="guard"),
        asm.ld_imm64(R4, plan.guard_version, note="guard"),
        asm.jne(R0, R4, f"{tag}.miss", note="guard"),
    ]
    offsets = {e.key: base + n * slot + kpad + VALID_SIZE for n, e in enumerate(entries)}
    spec_entry = (f"{tag}.bail{call_at + 1}" if call_at + 1 in speculative.bails
                  else f"{tag}.s{call_at + 1}")

    def leaf(e: InlineEntry) -> list[Instruction]:
        return [asm.ld_map_value(R0, shadow_map, offsets[e.key], note=f"shadow {plan.map}"),
                asm.ldx(8, R1, R0, -VALID_SIZE, note=VALID_NOTE),
                asm.jeq(R1, 0, f"{tag}.bail{FILL}", note=VALID_NOTE),
                asm.ja(spec_entry)]

    counter = iter(range(1 << 30))
    known = plan.known_bytes if len(plan.known_bytes) == spec.key_size else ()
    chunks = _chunks(spec.key_size, known)
    matching = [e for e in entries
                if all(b is None or e.key[i] == b for i, b in enumerate(known))]
    items = [(tuple(int.from_bytes(e.key[o:o + w], "little") for o, w in chunks), e)
             for e in matching]
    # The tree's compares say where they come from: the mutation suite tells a learning
    # site's compares (reached by the check's isolated near misses) from the other sites'.
    site_code += [i.with_meta(note=SHADOW_KEY)
                  if i.is_conditional_jump and i.meta.note != VALID_NOTE else i
                  for i in _tree(items, 0, chunks, f"{tag}.miss", leaf,
                                 lambda: f"{tag}.t{next(counter)}")]
    site_code.append(call.with_label(f"{tag}.miss").with_reference(None))
    insns = list(program.insns)
    out: list[Instruction] = []
    for i, insn in enumerate(insns):
        if i == call_at:
            first = site_code[0]
            site_code[0] = first.with_label(insn.label) if insn.label else first
            if insn.meta.origin is not None:
                site_code[-1] = site_code[-1].with_meta(origin=insn.meta.origin)
            out += site_code
            continue
        if i in labels and insn.label is None:
            insn = insn.with_label(labels[i])
        out.append(insn)
        if i == end - 1:
            out += tail
    return Program(program.name, tuple(out)), _slots(entries, spec.key_size, spec.value_size)


def _stub(label: str, reg: int, kpad: int, spec: MapSpec, map_name: str, spill: int,
          resume: str, write_entry: str) -> list[Instruction]:
    """End of speculation with the shadow pointer in `reg`: look the key up for real,
    resync the slot and mark it valid, go on in the writing copy; on NULL mark the slot
    invalid and take the original code, as the original would."""
    note = "shadow resync"
    code = [
        asm.stx(8, R10, spill, reg, label=label, note=note),
        asm.mov64(R2, asm.Reg(reg), note=note),
        asm.add64(R2, -(kpad + VALID_SIZE), note=note),
        asm.ld_map_fd(R1, map_name, note=note),
        asm.call_helper("map_lookup_elem", note=note),
        asm.jeq(R0, 0, f"{label}.gone", note=note),
        asm.ldx(8, R1, R10, spill, note=note),
    ]
    for off, width in _chunks(spec.value_size):
        code += [asm.ldx(width, R2, R0, off, note=note), asm.stx(width, R1, off, R2, note=note)]
    code += [
        asm.st(8, R1, -VALID_SIZE, 1, note=note),
        asm.ja(write_entry, note=note),
        # r1-r5 are dead after the original's lookup, r0 is NULL as it would be there.
        asm.ldx(8, R1, R10, spill, label=f"{label}.gone", note=note),
        asm.st(8, R1, -VALID_SIZE, 0, note=note),
        asm.ja(resume, note=note),
    ]
    return code


def _successors(program: Program, i: int, end: int) -> list[int]:
    insn = program.insns[i]
    if insn.is_exit:
        return []
    if insn.is_branch:
        target = program.target(i)
        return [target] if insn.is_unconditional_jump else [target, i + 1]
    return [i + 1] if i + 1 < end else []


def live_in(program: Program, end: int) -> list[int]:
    """Registers live on entry to each instruction of the entry function (bit n: rn)."""
    effects = [register_effects(program.insns[i]) for i in range(end)]
    succs = [_successors(program, i, end) for i in range(end)]
    live = [0] * end
    changed = True
    while changed:
        changed = False
        for i in range(end - 1, -1, -1):
            out = 0
            for s in succs[i]:
                out |= live[s]
            reads, writes = effects[i]
            new = reads | (out & ~writes)
            if new != live[i]:
                live[i] = new
                changed = True
    return live


def _spill_offset(program: Program, end: int) -> int:
    """A stack slot below everything the entry function may touch (conservatively: the
    lowest r10-relative access, lowered by the most negative constant added to any
    register and the most negative offset of any access)."""
    lowest = 0
    adds = 0
    offs = 0
    for i in range(end):
        insn = program.insns[i]
        if insn.is_load or insn.is_store or insn.is_atomic:
            base = insn.src if insn.is_load else insn.dst
            if base == R10:
                lowest = min(lowest, insn.off)
            else:
                offs = min(offs, insn.off)
        elif insn.is_alu and not insn.uses_reg_source and insn.opcode & 0xF0 in (0x00, 0x10):
            value = insn.imm if insn.opcode & 0xF0 == 0x00 else -insn.imm
            adds = min(adds, value)
    spill = (min(lowest, adds + offs) - 8) & ~7
    if spill < -STACK_LIMIT:
        raise Refused("no stack left for the shadow pointer")
    return spill


@dataclass
class _Region:
    """The code after the site with the value pointer followed: which instructions are
    copied, where the copy goes back to the original code (the pointer is dead there),
    and, for the speculative copy, where speculation ends."""

    program: Program
    start: int
    end: int
    live: list[int]
    writing: bool
    may: dict[int, int] = field(default_factory=dict)  # registers that may hold the pointer
    must: dict[int, int] = field(default_factory=dict)  # registers that surely hold it
    copied: set[int] = field(default_factory=set)
    rejoin: set[int] = field(default_factory=set)
    bails: dict[int, int] = field(default_factory=dict)  # instruction -> pointer register
    mirrors: dict[int, int] = field(default_factory=dict)  # store -> scratch register

    def walk(self) -> _Region:
        self.may[self.start] = self.must[self.start] = 1  # r0
        work = [self.start]
        while work:
            i = work.pop()
            for s, may, must in self._step(i):
                old_may, old_must = self.may.get(s), self.must.get(s)
                new_may = may if old_may is None else old_may | may
                new_must = must if old_must is None else old_must & must
                if (new_may, new_must) != (old_may, old_must):
                    self.may[s], self.must[s] = new_may, new_must
                    work.append(s)
        return self

    def _step(self, i: int) -> list[tuple[int, int, int]]:
        may, must = self.may[i], self.must[i]
        self.copied.discard(i)
        self.rejoin.discard(i)
        self.bails.pop(i, None)
        if not may & self.live[i]:
            self.rejoin.add(i)
            return []
        insn = self.program.insns[i]
        reads, writes = register_effects(insn)
        held = may & reads
        if not self.writing and _ends_speculation(insn):
            if not must:
                raise Refused(f"instruction {i}: the pointer's register is not known")
            self.bails[i] = (must & -must).bit_length() - 1
            return []
        if insn.is_store or insn.is_atomic:
            if insn.is_atomic and (1 << insn.dst) & may:
                raise Refused(f"instruction {i}: atomic operation on the value")
            if insn.is_store and (insn.opcode & SRC_X and (1 << insn.src) & may):
                raise Refused(f"instruction {i}: the pointer is stored")
            if (1 << insn.dst) & may:
                if not (1 << insn.dst) & must:
                    raise Refused(f"instruction {i}: a store that may or may not be "
                                  "through the pointer")
                self.mirrors[i] = self._scratch(i, insn)
        elif insn.is_call:
            if held:
                raise Refused(f"instruction {i}: the pointer is passed to a call")
        elif insn.is_exit:
            if held:
                raise Refused(f"instruction {i}: the pointer is returned")
        elif insn.is_conditional_jump and held:
            if not _null_test(insn) or not (1 << insn.dst) & must:
                raise Refused(f"instruction {i}: the pointer is compared")
            self.copied.add(i)
            # A hit is never NULL: only the non-NULL side is taken.
            taken = insn.opcode & 0xF0 == JmpOp.JNE
            target = self.program.target(i) if taken else i + 1
            return [(target, may, must)]
        elif insn.is_alu and held:
            if not _plain_move(insn):
                raise Refused(f"instruction {i}: arithmetic on the pointer")
            self.copied.add(i)
            bit = 1 << insn.dst
            return [(s, may | bit, must | bit) for s in _successors(self.program, i, self.end)]
        self.copied.add(i)
        return [(s, may & ~writes, must & ~writes)
                for s in _successors(self.program, i, self.end)]

    def _scratch(self, i: int, insn: Instruction) -> int:
        busy = self.live[i] | (1 << insn.dst) | (1 << R10)
        if insn.opcode & SRC_X:
            busy |= 1 << insn.src
        for reg in (1, 2, 3, 4, 5, 6, 7, 8, 9):
            if not busy & (1 << reg):
                return reg
        raise Refused(f"instruction {i}: no free register to mirror the store")

    def emit(self, prefix: str, labels: dict[int, str], *, bail: str = "",
             spill: int = 0) -> tuple[list[Instruction], list[tuple[int, int]]]:
        """The copy (its instructions labelled `prefix<index>`) and the speculation ends
        it jumps to as (instruction, pointer register)."""
        def target(j: int) -> str:
            if j in self.copied:
                return f"{prefix}{j}"
            if j in self.bails:
                return f"{bail}{j}"
            return labels[j]

        code: list[Instruction] = []
        order = sorted(self.copied)
        for n, i in enumerate(order):
            insn = self.program.insns[i]
            meta = insn.meta
            if meta.func_btf_id is not None:
                meta = meta._replace(func_btf_id=None)
            copy = insn._replace(label=None, meta=meta)
            first: list[Instruction] = []
            if i in self.mirrors:
                reg = self.mirrors[i]
                first = [asm.ldx(8, reg, R10, spill, note="shadow mirror"),
                         copy._replace(dst=reg, meta=copy.meta._replace(note="shadow mirror"),
                                       reference=None)]
            follow: int | None = i + 1
            if insn.is_conditional_jump and (1 << insn.dst) & self.may.get(i, 0) \
                    and _null_test(insn):
                taken = insn.opcode & 0xF0 == JmpOp.JNE
                nxt = self.program.target(i) if taken else i + 1
                body = [asm.ja(target(nxt))]
                follow = None
            elif insn.is_branch:
                body = [copy._replace(reference=target(self.program.target(i)))]
                if insn.is_unconditional_jump:
                    follow = None
            elif insn.is_exit:
                body = [copy]
                follow = None
            else:
                body = [copy]
            block = first + body
            block[0] = block[0].with_label(f"{prefix}{i}")
            code += block
            if follow is not None and (n + 1 >= len(order) or order[n + 1] != follow):
                code.append(asm.ja(target(follow)))
        return code, sorted(self.bails.items())


def _ends_speculation(insn: Instruction) -> bool:
    if insn.is_store or insn.is_atomic:
        return True
    if insn.is_call:
        return not (insn.is_helper_call and insn.imm in PURE_HELPERS)
    return insn.opcode & 0x07 == 0x00 and insn.opcode != 0x18  # legacy packet loads


def _null_test(insn: Instruction) -> bool:
    return (insn.opcode & 0x07 == C_JMP and not insn.opcode & SRC_X and insn.imm == 0
            and insn.opcode & 0xF0 in (JmpOp.JEQ, JmpOp.JNE))


def _plain_move(insn: Instruction) -> bool:
    return (insn.opcode == (C_ALU64 | OP_MOV | SRC_X) and insn.off == 0)
