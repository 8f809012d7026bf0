"""Key provenance through the arithmetic that assembles packet bytes (analysis.pktbytes):
a MAC copied into a stack key with byte loads, shifts and ors, as clang emits for
`__builtin_memcpy(key.mac, eth->h_dest, 6)`, is traced to the packet offset of every byte;
whatever does not move whole bytes says "from the packet" and no more."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from morpheus.analysis import ProgramFacts, analyze, pktbytes
from morpheus.analysis.alu import alu as exact_alu
from morpheus.analysis.alu import endian as exact_endian
from morpheus.ir import Instruction, Program, asm
from morpheus.ir.asm import R0, R1, R2, R3, R4, R5, R8, R9, R10
from morpheus.ir.opcodes import C_ALU, OP_END, SRC_X, AluOp
from morpheus.obj import MapSpec
from morpheus.uapi import MapType

FDB = {"fdb": MapSpec("fdb", MapType.HASH, 8, 8, 16)}  # u16 vid, u8 mac[6]


def _facts(*body: Instruction) -> ProgramFacts:
    """r8 = data, r9 = data_end, 14 bytes checked; `body`; the key at r10-16 looked up."""
    head = [asm.ldx(4, R8, R1, 0), asm.ldx(4, R9, R1, 4), asm.mov64(R2, R8), asm.add64(R2, 14),
            asm.jgt(R2, R9, "out"), asm.st(2, R10, -16, 7)]
    tail = [asm.mov64(R2, R10), asm.add64(R2, -16), asm.ld_map_fd(R1, "fdb"),
            asm.call_helper("map_lookup_elem"), asm.jeq(R0, 0, "out"), asm.ldx(4, R1, R0, 0),
            asm.mov64(R0, 2, label="out"), asm.exit_()]
    return analyze(Program("t", (*head, *body, *tail)), FDB)


def _key_offsets(facts: ProgramFacts) -> list[int | str | None]:
    """Per key byte: its packet offset, the constant ("c<byte>"), or None (no offset)."""
    (site,) = facts.lookups()
    out: list[int | str | None] = []
    for b in site.key_bytes:
        if b.kind == "const":
            out.append(f"c{b.value}")
        elif b.kind == "pkt" and isinstance(b.field[1], int):
            out.append(b.field[1] + b.byte)
        else:
            out.append(None)
    return out


def _be16(reg: object) -> Instruction:
    return Instruction(C_ALU | OP_END | SRC_X, int(reg), 0, 0, 16)  # type: ignore[call-overload]


def test_a_mac_assembled_from_byte_loads_is_traced_to_each_packet_byte() -> None:
    # clang's copy of eth->h_dest (bytes 0..5) into key.mac (the key's bytes 2..7).
    facts = _facts(
        asm.ldx(1, R1, R8, 5), asm.alu32(AluOp.LSH, R1, 8), asm.ldx(1, R2, R8, 4),
        asm.alu32(AluOp.OR, R1, R2),
        asm.ldx(1, R2, R8, 1), asm.alu32(AluOp.LSH, R2, 8), asm.ldx(1, R3, R8, 0),
        asm.alu32(AluOp.OR, R2, R3),
        asm.stx(2, R10, -14, R2), asm.stx(2, R10, -10, R1),
        asm.ldx(1, R1, R8, 2), asm.alu32(AluOp.LSH, R1, 16), asm.ldx(1, R2, R8, 3),
        asm.alu32(AluOp.LSH, R2, 24), asm.alu32(AluOp.OR, R2, R1), asm.alu32(AluOp.RSH, R2, 16),
        asm.stx(2, R10, -12, R2))
    assert _key_offsets(facts) == ["c7", "c0", 0, 1, 2, 3, 4, 5]


def test_a_swapped_field_is_traced_byte_by_byte() -> None:
    # A big-endian 16-bit field swapped to host order, and a masked-off nibble.
    facts = _facts(asm.ldx(2, R1, R8, 12), _be16(R1), asm.stx(2, R10, -14, R1),
                   asm.ldx(2, R3, R8, 14), asm.alu32(AluOp.AND, R3, 0xFF0F), _be16(R3),
                   asm.stx(2, R10, -12, R3), asm.st(4, R10, -10, 0))
    assert _key_offsets(facts) == ["c7", "c0", 13, 12, 15, None, "c0", "c0"]


def test_arithmetic_that_mixes_bytes_keeps_no_offset() -> None:
    # An add with overlapping bytes (a carry), an xor, an unaligned shift, a sign extension.
    facts = _facts(asm.ldx(2, R1, R8, 0), asm.ldx(2, R2, R8, 2), asm.add64(R1, R2),
                   asm.stx(2, R10, -14, R1),
                   asm.ldx(2, R3, R8, 4), asm.alu64(AluOp.XOR, R3, 1), asm.stx(2, R10, -12, R3),
                   asm.ldx(2, R4, R8, 6), asm.alu64(AluOp.LSH, R4, 4), asm.stx(2, R10, -10, R4))
    (site,) = facts.lookups()
    assert _key_offsets(facts)[2:] == [None] * 6
    assert {b.kind for b in site.key_bytes[2:]} == {"pkt"}  # still "from the packet"


def test_a_join_keeps_the_bytes_both_paths_agree_on() -> None:
    # Byte 0 of the key's MAC is the same packet byte on both paths, byte 1 is not.
    facts = _facts(
        asm.ldx(1, R3, R8, 0), asm.ldx(4, R5, R1, 12), asm.jeq(R5, 2, "other"),
        asm.ldx(1, R4, R8, 1), asm.ja("join"),
        asm.ldx(1, R4, R8, 7, label="other"),
        asm.alu32(AluOp.LSH, R4, 8, label="join"), asm.alu32(AluOp.OR, R4, R3),
        asm.stx(2, R10, -14, R4), asm.st(4, R10, -12, 0), asm.st(2, R10, -8, 0))
    assert _key_offsets(facts)[2:4] == [0, None]


def test_a_narrow_store_of_a_wide_load_keeps_the_low_bytes() -> None:
    # A u32 load stored as u16 and the slot reloaded: the key holds bytes 6 and 7 only.
    facts = _facts(asm.ldx(4, R1, R8, 6), asm.stx(2, R10, -30, R1), asm.ldx(2, R2, R10, -30),
                   asm.alu64(AluOp.LSH, R2, 16), asm.stx(4, R10, -14, R2),
                   asm.st(2, R10, -10, 0))
    assert _key_offsets(facts)[2:] == [None, None, 6, 7, "c0", "c0"]


_OPS = st.sampled_from([AluOp.OR, AluOp.AND, AluOp.ADD, AluOp.LSH, AluOp.RSH])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(packet=st.binary(min_size=16, max_size=16),
       loads=st.lists(st.tuples(st.integers(0, 8), st.sampled_from([1, 2, 4, 8])),
                      min_size=2, max_size=2),
       op=_OPS, wide=st.booleans(), const=st.one_of(st.none(), st.sampled_from(
           [0, 8, 16, 24, 0xFF, 0xFF00, 0xFF0F, 0xFFFF0000, 0x12]))
       , swap=st.sampled_from([None, 16, 32, 64]))
def test_every_byte_a_map_names_is_that_packet_byte(
        packet: bytes, loads: list[tuple[int, int]], op: AluOp, wide: bool,
        const: int | None, swap: int | None) -> None:
    """Soundness: on concrete packets, a byte the map names holds that packet byte, and a
    ZERO byte holds zero, for loads combined by one operation and an optional swap."""
    (o1, s1), (o2, s2) = loads
    a = int.from_bytes(packet[o1:o1 + s1], "little")
    b = const if const is not None else int.from_bytes(packet[o2:o2 + s2], "little")
    left = pktbytes.of_load(o1, s1)
    right = pktbytes.of_constant(b) if const is not None else pktbytes.of_load(o2, s2)
    mapped = pktbytes.alu(op, left, right, const, wide=wide)
    if mapped is None:
        return
    value = exact_alu(op, a, b, wide=wide)
    if swap is not None:
        mapped = pktbytes.endian(mapped, swap, to_be=True, bswap=False)
        value = exact_endian(value, swap, to_be=True)
    for i, where in enumerate(mapped):
        byte = (value >> (8 * i)) & 0xFF
        if where == pktbytes.ZERO:
            assert byte == 0, (i, mapped)
        elif where is not None:
            assert byte == packet[where], (i, mapped)
