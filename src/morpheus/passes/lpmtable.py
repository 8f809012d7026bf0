"""A whole IPv4 LPM trie as a direct-indexed table (16-8-8), searched in at most 3 loads.

`passes.inline` searches a trie read whole by address range (`optimizer.lpm`). With
hundreds of ranges or more, a comparison tree is large, slow for the verifier (each leaf
walks the code after it) and mispredicts on every level. Here the ranges become tables in
a frozen read-only map instead, as routers' DIR-24-8 does with smaller levels:

- level 1: 65,536 u16 entries indexed by the address's top 16 bits;
- blocks of 256 u16 entries, indexed by the next 8 bits (level 2) or the last 8 (level 3),
  for the /16s and /24s that some range boundary cuts.

An entry with bit 15 set names a block (its number in the low bits); any other entry is a
leaf: 0 answers NULL (no route), s > 0 points at slot s of a values map holding each
distinct value once, `stride` bytes apart. Every index the code computes is bounded by a
compare before it is used (which is also what the verifier needs): an out-of-range entry,
which a correct table never holds, takes the map's own lookup.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from ..ir import Instruction, asm
from ..ir.asm import R0, R3, R4, R5
from ..ir.opcodes import AluOp, JmpOp

L1_BITS = 16
BLOCK_BITS = 8
ENTRY_BYTES = 2
L1_BYTES = ENTRY_BYTES << L1_BITS
BLOCK_BYTES = ENTRY_BYTES << BLOCK_BITS
CHILD = 0x8000  # entry bit: the rest is a block number
MAX_TABLE_BYTES = 4 << 20  # the largest array value the kernel allocates (KMALLOC_MAX_SIZE)
MAX_BLOCKS = min(CHILD - 1, (MAX_TABLE_BYTES - L1_BYTES) // BLOCK_BYTES)
ADDRESS_BITS = 32
VALUES_NOTE = "lpm table values"  # the load of the values' base (mutants find it by it)

Ranges = Sequence[tuple[int, bytes | None]]  # (first address, value or None), sorted


@dataclass(frozen=True)
class LpmTable:
    """The tables (level 1, then the blocks) and the values they point at."""

    table: bytes
    blocks: int
    values: bytes  # slot s at s * stride; slot 0 is unused (0 answers NULL)
    slots: int  # including slot 0
    stride: int


def table_blocks(starts: Sequence[int]) -> int:
    """How many blocks the ranges starting at `starts` need: one per /16 a start cuts,
    one per /24 a start cuts (cheap: the plan decides with it before anything is built)."""
    cut16 = {s >> 16 for s in starts if s & 0xFFFF}
    cut24 = {s >> 8 for s in starts if s & 0xFF}
    return len(cut16) + len(cut24)


def build_table(ranges: Ranges, value_size: int) -> LpmTable | None:
    """The 16-8-8 tables answering `ranges` (which start at 0 and cover every address);
    None when they need more blocks or distinct values than an entry can name."""
    starts = [s for s, _ in ranges]
    if not starts or starts[0] != 0:
        raise ValueError("the ranges must start at address 0")
    if table_blocks(starts) > MAX_BLOCKS:
        return None
    stride = -(-value_size // 8) * 8
    slot_of: dict[bytes, int] = {}
    leaves = []
    for _, value in ranges:
        if value is None:
            leaves.append(0)
            continue
        if len(value) != value_size:
            raise ValueError(f"a value of {len(value)} bytes in a table of {value_size}")
        leaves.append(slot_of.setdefault(value, len(slot_of) + 1))
    if len(slot_of) + 1 >= CHILD:
        return None
    blocks: list[array[int] | None] = []

    def level(first: int, span_bits: int, entry_bits: int) -> array[int]:
        """Entries for [first, first + 2**span_bits), each covering 2**(span - entry)."""
        width = 1 << (span_bits - entry_bits)
        count = 1 << entry_bits
        out = array("H", bytes(ENTRY_BYTES * count))
        k = bisect_right(starts, first) - 1  # the range holding `first`
        children: list[int] = []
        end = first + (1 << span_bits)
        while k < len(starts) and starts[k] < end:
            lo = max(starts[k], first) - first
            hi = (starts[k + 1] if k + 1 < len(starts) else 1 << ADDRESS_BITS)
            hi = min(hi, end) - first
            j0, j1 = -(-lo // width), hi // width
            if j1 > j0:
                out[j0:j1] = array("H", [leaves[k]]) * (j1 - j0)
            if lo % width and not (children and children[-1] == lo // width):
                children.append(lo // width)  # starts are sorted: one block per cut slot
            k += 1
        for j in children:
            number = len(blocks)
            blocks.append(None)  # numbered before the blocks it holds
            out[j] = CHILD | number
            blocks[number] = level(first + j * width, span_bits - entry_bits, BLOCK_BITS)
        return out

    top = level(0, ADDRESS_BITS, L1_BITS)
    if len(blocks) > MAX_BLOCKS:
        return None
    parts = [top, *(b for b in blocks if b is not None)]
    if sys.byteorder != "little":
        for part in parts:
            part.byteswap()
    table = b"".join(p.tobytes() for p in parts)
    values = bytearray(stride * (len(slot_of) + 1))
    for value, slot in slot_of.items():
        values[slot * stride: slot * stride + value_size] = value
    return LpmTable(table, len(blocks), bytes(values), len(slot_of) + 1, stride)


def table_code(table: LpmTable, table_map: str, values_map: str, base: str, cont: str,
               miss: str) -> list[Instruction]:
    """The search for the address in r3 (host order, upper half zero): r0 points at its
    value or is NULL, then `cont`; an entry out of bounds goes to `miss` (the map's own
    lookup, which must keep r1 and r2: only r0, r3, r4 and r5 are used)."""
    leaf, null = f"{base}.leaf", f"{base}.null"
    note = "lpm table"
    code = [
        asm.mov64(R4, R3, note=note),
        asm.rsh64(R4, ADDRESS_BITS - L1_BITS, note=note),
        asm.lsh64(R4, 1, note=note),
        asm.ld_map_value(R5, table_map, 0, note=note),
        asm.add64(R5, R4, note=note),
        asm.ldx(ENTRY_BYTES, R0, R5, 0, note=note),
        asm.jmp(JmpOp.JSET, R0, CHILD, f"{base}.l2" if table.blocks else miss, note=note),
        asm.jeq(R0, 0, null, label=leaf, note=note),
        asm.jmp(JmpOp.JGE, R0, table.slots, miss, note=note),
        asm.alu64(AluOp.MUL, R0, table.stride, note=note),
        asm.ld_map_value(R5, values_map, 0, note=VALUES_NOTE),
        asm.add64(R0, R5, note=note),
        asm.ja(cont),
        asm.mov64(R0, 0, label=null, note="inlined: absent"),
        asm.ja(cont),
    ]
    if not table.blocks:
        return code
    for n, shift in ((2, BLOCK_BITS), (3, 0)):
        code += [
            asm.and64(R0, CHILD - 1, label=f"{base}.l{n}", note=note),
            asm.jmp(JmpOp.JGE, R0, table.blocks, miss, note=note),
            asm.lsh64(R0, BLOCK_BITS + 1, note=note),
            asm.mov64(R4, R3, note=note),
        ]
        if shift:
            code.append(asm.rsh64(R4, shift, note=note))
        code += [
            asm.and64(R4, (1 << BLOCK_BITS) - 1, note=note),
            asm.lsh64(R4, 1, note=note),
            asm.add64(R0, R4, note=note),
            asm.ld_map_value(R5, table_map, L1_BYTES, note=note),
            asm.add64(R5, R0, note=note),
            asm.ldx(ENTRY_BYTES, R0, R5, 0, note=note),
        ]
        if n == 2:
            code.append(asm.jmp(JmpOp.JSET, R0, CHILD, f"{base}.l3", note=note))
        code.append(asm.ja(leaf))
    return code
