"""Table inlining: map lookups answered by the code itself.

For each planned lookup site the helper call is replaced by a comparison tree over the
inlined keys, compared exactly on every key byte (never a hash), in O(log K) comparisons.
A hit points r0 into a frozen, read-only, single-entry array holding the inlined values
(direct value access), so that code which keeps using the pointer still works and the
verifier (and `constprop`) see the values as constants. A miss calls the original helper,
unless the plan covers every key the map holds (a complete table), in which case a miss is
NULL. A site whose map can change under it gets a version guard first: one load and one
compare against the version the snapshot was taken at; a changed version takes the miss path.

Constant-key sites (for example configuration arrays read at index 0) need no comparison:
r0 is set to the value directly.

An LPM trie read whole (`ranges`) is searched by address range instead of exact key: each
entry's key is the first address of a range (at full prefix length) and its value the
longest match there; the address is loaded, byte-swapped to a number and compared against
the range starts, and every address finds its range (no miss path).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from ..ir import EMPTY_META, Instruction, Program, asm
from ..ir.asm import R0, R2, R3, R4, Reg
from ..ir.edit import rewrite
from ..ir.opcodes import C_ALU, OP_END, SRC_X, JmpOp
from ..ir.program import index_by_origin
from ..obj import MapSpec
from ..uapi import MapFlags, MapType
from .lpmtable import build_table, table_code
from .pipeline import PassContext, register

VALUES_MAP = "mph_values"
GUARD_MAP = "mph_guard"
OFFSETS_MAP = "mph_offsets"
LINEAR_LIMIT = 3  # up to this many candidates, a chain of equality tests beats a search
_CONVERGE_MASK_PLACEHOLDER = 0x7FFFFFFF  # replaced once the values' total size is known


@dataclass(frozen=True)
class InlineEntry:
    key: bytes
    value: bytes | None  # None: the lookup returns NULL for this key
    weight: float = 0.0  # how often the key is looked up (shapes the comparison tree)


@dataclass(frozen=True)
class SitePlan:
    """What to inline at the lookup call at instruction `site`.

    `complete` says the entries are every key the lookup can succeed on, so a key that is
    not among them is a miss without asking the map. `constant_key` says the program always
    looks up `entries[0].key` here. With `guard_slot`, the site first checks that slot of
    the guard map still holds `guard_version`.
    """

    site: int  # provenance (meta.origin) of the lookup call
    map: str
    entries: tuple[InlineEntry, ...]
    complete: bool = False
    constant_key: bool = False
    guard_slot: int | None = None
    guard_version: int = 0
    # All hits leave the site with the same verifier state (a pointer with a variable
    # offset loaded from a map the verifier cannot read ahead): the verifier then explores
    # the code after the site once instead of once per key. Slower by three instructions,
    # needed when several large sites follow each other.
    converge: bool = False
    # Key bytes the program always passes at this site (None: varies), e.g. an LPM key's
    # prefix length: they are not compared, and entries that disagree with them are left out.
    known_bytes: tuple[int | None, ...] = ()
    # The map is an LPM trie read whole: `entries` are its ranges, sorted, each keyed by the
    # range's first address at full prefix length (see the module docstring).
    ranges: bool = False
    # With `ranges`: searched through direct-indexed tables (`passes.lpmtable`) instead of
    # a comparison tree (IPv4 only).
    direct: bool = False


LPM_PREFIXLEN_BYTES = 4


@dataclass(frozen=True)
class InlinePlan:
    sites: tuple[SitePlan, ...]
    guard_slots: int = 0  # size of the guard map, in u64 versions


@register
@dataclass(frozen=True)
class InlineTables:
    """Replace planned lookups by comparison trees over inlined entries."""

    name: ClassVar[str] = "inline"
    plan: InlinePlan = field(default_factory=lambda: InlinePlan(()))
    values_map: str = VALUES_MAP
    guard_map: str = GUARD_MAP
    offsets_map: str = OFFSETS_MAP
    missing_ok: bool = False  # skip planned sites an earlier pass removed (dead code)

    def run(self, program: Program, ctx: PassContext) -> Program:
        if not self.plan.sites:
            return program
        blob = bytearray()
        offsets: dict[bytes, int] = {}

        def place(value: bytes) -> int:
            # Identical values (many routes share a next hop) are stored once.
            if value not in offsets:
                while len(blob) % 8:
                    blob.append(0)
                offsets[value] = len(blob)
                blob.extend(value)
            return offsets[value]

        offsets_table: list[int] = []  # converging sites: entry slot → value offset
        edits: dict[int, list[Instruction]] = {}
        where = index_by_origin(program)
        index_of: dict[int, int] = {}
        sites = [p for p in self.plan.sites if not (self.missing_ok and p.site not in where)]
        for plan in sites:
            if plan.site not in where:
                raise ValueError(f"no instruction comes from lookup site {plan.site}")
            index = index_of[plan.site] = where[plan.site]
            call = program.insns[index]
            if not call.is_helper_call or call.imm != 1:
                raise ValueError(f"site {plan.site} (instruction {index}) is not a map lookup")
            spec = ctx.maps.get(plan.map)
            if spec is None:
                raise ValueError(f"site {plan.site}: map {plan.map!r} is unknown")
            for entry in plan.entries:
                if len(entry.key) != spec.key_size:
                    raise ValueError(f"site {plan.site}: key of {len(entry.key)} bytes for map "
                                     f"{plan.map!r} with {spec.key_size}-byte keys")
                if entry.value is not None and len(entry.value) != spec.value_size:
                    raise ValueError(f"site {plan.site}: value of {len(entry.value)} bytes for "
                                     f"map {plan.map!r} with {spec.value_size}-byte values")
            edits[index] = _site_code(program, plan, call, place, self.values_map,
                                      self.guard_map, offsets_table, self.offsets_map,
                                      lambda m: ctx.maps.__setitem__(m.name, m))
        if not blob:
            blob.extend(bytes(8))
        # Continuation labels are attached in the same rewrite: the instruction after each
        # call gets a label the site's code jumps to.
        for plan in sites:
            index = index_of[plan.site]
            after = index + 1
            nxt = program.insns[after]
            label = _cont_label(plan.site)
            if after in edits:
                raise ValueError(f"lookup sites at instructions {index} and {after} are adjacent")
            if nxt.label is not None:
                edits[index] = [i.with_reference(nxt.label) if i.reference == label else i
                                for i in edits[index]]
            else:
                edits[after] = [nxt.with_label(label)]
        out = rewrite(program, edits)
        if offsets_table:
            # Converged pointers carry an offset masked to a power of two: pad the values so
            # every offset under the mask plus the largest value stays inside.
            mask = _mask_for(len(blob))
            widest = max((ctx.maps[p.map].value_size for p in self.plan.sites), default=8)
            blob.extend(bytes(mask + 1 + widest - len(blob)))
            table = b"".join(o.to_bytes(4, "little") for o in offsets_table)
            out = out.with_insns(
                i._replace(imm=mask) if i.imm == _CONVERGE_MASK_PLACEHOLDER
                and i.meta.note == "converge" else i for i in out.insns)
            ctx.maps[self.offsets_map] = MapSpec(
                name=self.offsets_map, type=MapType.ARRAY, key_size=4, value_size=len(table),
                max_entries=1, flags=int(MapFlags.RDONLY_PROG), data=table, freeze=False)
        value_bytes = bytes(blob)
        ctx.maps[self.values_map] = MapSpec(
            name=self.values_map, type=MapType.ARRAY, key_size=4, value_size=len(value_bytes),
            max_entries=1, flags=int(MapFlags.RDONLY_PROG), data=value_bytes, freeze=True)
        ctx.known_values[self.values_map] = value_bytes
        if any(p.guard_slot is not None for p in sites):
            slots = max(self.plan.guard_slots,
                        1 + max(p.guard_slot for p in sites if p.guard_slot is not None))
            ctx.maps.setdefault(self.guard_map, MapSpec(
                name=self.guard_map, type=MapType.ARRAY, key_size=4, value_size=8 * slots,
                max_entries=1))
        ctx.stats["inlined_sites"] = ctx.stats.get("inlined_sites", 0) + len(sites)
        ctx.stats["inlined_entries"] = (ctx.stats.get("inlined_entries", 0)
                                        + sum(len(p.entries) for p in sites))
        ctx.stats["inline_value_bytes"] = (ctx.stats.get("inline_value_bytes", 0)
                                           + len(value_bytes))
        return out


def _cont_label(site: int) -> str:
    return f"mph{site}.cont"


def _chunks(size: int, known: Sequence[int | None] = ()) -> list[tuple[int, int]]:
    """(offset, width) loads covering the bytes of a `size`-byte key that are not `known`,
    each naturally aligned within the key (the stack only takes aligned loads)."""
    out = []
    off = 0
    while off < size:
        if known and known[off] is not None:
            off += 1
            continue
        for width in (8, 4, 2, 1):
            if off % width == 0 and off + width <= size and not (
                    known and any(known[off + k] is not None for k in range(width))):
                out.append((off, width))
                off += width
                break
    return out


def _mask_for(size: int) -> int:
    mask = 1
    while mask < size:
        mask <<= 1
    return mask - 1


def _site_code(program: Program, plan: SitePlan, call: Instruction, place: object,
               values_map: str, guard_map: str, offsets_table: list[int],
               offsets_map: str, add_map: Callable[[MapSpec], None]) -> list[Instruction]:
    base = f"mph{plan.site}"
    cont = _cont_label(plan.site)
    miss = f"{base}.miss"
    code: list[Instruction] = []
    if plan.guard_slot is not None:
        code += [
            asm.ld_map_value(R0, guard_map, 8 * plan.guard_slot, note="guard"),
            asm.ldx(8, R0, R0, 0, note="guard"),
            asm.ld_imm64(R4, plan.guard_version, note="guard"),
            asm.jne(R0, R4, miss, note="guard"),
        ]

    tail = f"{base}.tail"
    inlined = f"inlined {plan.map}"

    def leaf(entry: InlineEntry) -> list[Instruction]:
        if entry.value is None:
            return [asm.mov64(R0, 0, note="inlined: absent"), asm.ja(cont)]
        offset = place(entry.value)  # type: ignore[operator]
        if plan.converge:
            offsets_table.append(offset)
            return [asm.mov64(R0, len(offsets_table) - 1, note=inlined),
                    asm.ja(tail)]
        return [asm.ld_map_value(R0, values_map, offset, note=inlined),
                asm.ja(cont)]

    # A direct table sends entries out of bounds (which a correct table never holds) to
    # the map's own lookup.
    needs_call = plan.guard_slot is not None or not plan.complete or plan.direct
    if plan.constant_key:
        code += leaf(plan.entries[0])
    elif plan.direct:
        code += _direct_code(plan, base, cont, miss, add_map)
    elif plan.ranges:
        width = len(plan.entries[0].key) - LPM_PREFIXLEN_BYTES
        code.append(asm.ldx(width, R3, R2, LPM_PREFIXLEN_BYTES, note="address"))
        if width > 1:
            code.append(_to_big_endian(R3, 8 * width))
        items = [(int.from_bytes(e.key[LPM_PREFIXLEN_BYTES:], "big"), e) for e in plan.entries]
        counter = iter(range(1 << 30))
        _range_search(items, width, leaf, lambda: f"{base}.{next(counter)}", code)
    else:
        counter = iter(range(1 << 30))

        def fresh() -> str:
            return f"{base}.{next(counter)}"

        absent = miss if not plan.complete else f"{base}.none"
        size = len(plan.entries[0].key) if plan.entries else 0
        known = plan.known_bytes if len(plan.known_bytes) == size else ()
        chunks = _chunks(size, known)
        entries = [e for e in plan.entries
                   if all(b is None or e.key[i] == b for i, b in enumerate(known))]
        items = [(tuple(int.from_bytes(e.key[o:o + w], "little") for o, w in chunks), e)
                 for e in entries]
        code += _tree(items, 0, chunks, absent, leaf, fresh)
        if plan.complete:
            code += [asm.mov64(R0, 0, label=f"{base}.none", note="not in the table"),
                     asm.ja(cont)]
    if plan.converge and any(i.reference == tail for i in code):
        code += [
            asm.lsh64(R0, 2, label=tail, note="converge"),
            asm.ld_map_value(R3, offsets_map, 0, note="converge"),
            asm.add64(R3, R0, note="converge"),
            asm.ldx(4, R0, R3, 0, note="converge"),
            asm.and64(R0, _CONVERGE_MASK_PLACEHOLDER, note="converge"),
            asm.ld_map_value(R3, values_map, 0, note="converge"),
            asm.add64(R0, R3, note="converge"),
            asm.ja(cont),
        ]
    if needs_call:
        code.append(call.with_label(miss).with_reference(None))
    elif code and any(i.reference == miss for i in code):
        code += [asm.mov64(R0, 0, label=miss), asm.ja(cont)]
    return code


def _direct_code(plan: SitePlan, base: str, cont: str, miss: str,
                 add_map: Callable[[MapSpec], None]) -> list[Instruction]:
    """The ranges of an IPv4 trie as direct-indexed tables in maps of their own."""
    width = len(plan.entries[0].key) - LPM_PREFIXLEN_BYTES
    if width != 4:
        raise ValueError(f"site {plan.site}: direct tables take 4-byte addresses, not {width}")
    value_size = next((len(e.value) for e in plan.entries if e.value is not None), 8)
    ranges = [(int.from_bytes(e.key[LPM_PREFIXLEN_BYTES:], "big"), e.value)
              for e in plan.entries]
    table = build_table(ranges, value_size)
    if table is None:
        raise ValueError(f"site {plan.site}: the ranges do not fit a direct table")
    table_map, table_values = f"mph_lpt{plan.site}", f"mph_lpv{plan.site}"
    for name, data in ((table_map, table.table), (table_values, table.values)):
        add_map(MapSpec(name=name, type=MapType.ARRAY, key_size=4, value_size=len(data),
                        max_entries=1, flags=int(MapFlags.RDONLY_PROG), data=data,
                        freeze=True))
    return [asm.ldx(width, R3, R2, LPM_PREFIXLEN_BYTES, note="address"),
            _to_big_endian(R3, 8 * width),
            *table_code(table, table_map, table_values, base, cont, miss)]


Item = tuple[tuple[int, ...], InlineEntry]  # (the key's chunks, the entry)
Group = tuple[int, list[Item], float]  # (one chunk's value, the items having it, their weight)


def _tree(items: Sequence[Item], chunk: int, chunks: Sequence[tuple[int, int]], absent: str,
          leaf: object, fresh: object) -> list[Instruction]:
    """Code that finds the entry whose key chunks equal the key's, or jumps to `absent`."""
    if not items:
        return [asm.ja(absent)]
    if chunk == len(chunks):
        return leaf(items[0][1])  # type: ignore[operator, no-any-return]
    offset, width = chunks[chunk]
    code = [asm.ldx(width, R3, R2, offset)]
    groups: dict[int, list[Item]] = {}
    for item in items:
        groups.setdefault(item[0][chunk], []).append(item)
    ordered = [(value, members, sum(e.weight for _, e in members))
               for value, members in sorted(groups.items())]
    _search(ordered, chunk, chunks, width, absent, leaf, fresh, code)
    return code


def _to_big_endian(reg: Reg, bits: int) -> Instruction:
    """`reg = htobe<bits>(reg)`: the address as a number, most significant byte first
    (BPF_END with BPF_TO_BE swaps on this little-endian machine and clears the rest)."""
    return Instruction(C_ALU | OP_END | SRC_X, reg, 0, 0, bits, None, None, EMPTY_META)


def _range_search(items: Sequence[tuple[int, InlineEntry]], width: int, leaf: object,
                  fresh: object, code: list[Instruction]) -> None:
    """Append a binary search of the sorted range starts for the address in r3: the last
    range starting at or below it (split by lookup weight, like the key trees)."""
    if len(items) == 1:
        code += leaf(items[0][1])  # type: ignore[operator]
        return
    mid = _weighted_middle([(start, [], e.weight) for start, e in items])
    right = fresh()  # type: ignore[operator]
    code += _compare(JmpOp.JGE, items[mid][0], width, right)
    _range_search(items[:mid], width, leaf, fresh, code)
    start = len(code)
    _range_search(items[mid:], width, leaf, fresh, code)
    code[start] = code[start].with_label(right)


def _compare(op: JmpOp, value: int, width: int, target: str) -> list[Instruction]:
    """`if r3 <op> value goto target` for a chunk of `width` bytes (unsigned)."""
    if width <= 4:
        # 32-bit jumps compare the low halves; the immediate is taken as 32 bits.
        return [asm.jmp(op, R3, value, target, wide=False)]
    if value < 1 << 31:
        return [asm.jmp(op, R3, value, target)]
    return [asm.ld_imm64(R4, value), asm.jmp(op, R3, R4, target)]


def _weighted_middle(groups: Sequence[Group]) -> int:
    """Where to split a sorted run of candidates: at half of the lookup weight, so that
    frequent keys sit near the root (fewer comparisons, better predicted branches); at half
    of the count when nothing is known."""
    total = sum(g[2] for g in groups)
    if total <= 0:
        return len(groups) // 2
    acc = 0.0
    for i, (_, _, w) in enumerate(groups):
        if acc + w / 2 >= total / 2:
            return min(max(i, 1), len(groups) - 1)
        acc += w
    return len(groups) // 2


def _search(groups: Sequence[Group], chunk: int, chunks: Sequence[tuple[int, int]], width: int,
            absent: str, leaf: object, fresh: object, code: list[Instruction]) -> None:
    """Append to `code` a search of the sorted `groups` for the key's chunk."""
    if len(groups) <= LINEAR_LIMIT:
        # Hottest first: the common keys are found after the fewest tests.
        groups = sorted(groups, key=lambda g: -g[2])
        later: list[Instruction] = []
        for value, members, _ in groups[:-1]:
            label = fresh()  # type: ignore[operator]
            code += _compare(JmpOp.JEQ, value, width, label)
            sub = _tree(members, chunk + 1, chunks, absent, leaf, fresh)
            sub[0] = sub[0].with_label(label)
            later += sub
        value, members, _ = groups[-1]
        code += _compare(JmpOp.JNE, value, width, absent)
        code += _tree(members, chunk + 1, chunks, absent, leaf, fresh)
        code += later
        return
    mid = _weighted_middle(groups)
    right = fresh()  # type: ignore[operator]
    code += _compare(JmpOp.JGE, groups[mid][0], width, right)
    _search(groups[:mid], chunk, chunks, width, absent, leaf, fresh, code)
    start = len(code)
    _search(groups[mid:], chunk, chunks, width, absent, leaf, fresh, code)
    code[start] = code[start].with_label(right)
