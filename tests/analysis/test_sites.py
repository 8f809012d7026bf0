"""Direct tests of the analysis on small programs built with the IR builder: the sites it
finds, where their keys come from, how the value pointers are used, and which maps the data
plane writes, including every case where the answer must be "no"."""

from __future__ import annotations

from morpheus.analysis import ProgramFacts, analyze
from morpheus.ir import Instruction, Program, asm
from morpheus.ir.asm import R0, R1, R2, R3, R4, R6, R7, R10
from morpheus.ir.opcodes import AtomicOp
from morpheus.obj import MapSpec
from morpheus.uapi import MapType
from morpheus.world import written_maps

MAPS = {
    "m": MapSpec("m", MapType.HASH, 4, 8, 16),
    "other": MapSpec("other", MapType.HASH, 4, 8, 16),
    "lru": MapSpec("lru", MapType.LRU_HASH, 4, 8, 16),
    "arr": MapSpec("arr", MapType.ARRAY, 4, 8, 4),
    "m8": MapSpec("m8", MapType.HASH, 8, 8, 16),
}


def _facts(*insns: Instruction) -> ProgramFacts:
    return analyze(Program("t", tuple(insns)), MAPS)


def _lookup(map_name: str, key: int | None = 7, *, off: int = -4) -> list[Instruction]:
    """key on the stack at r10+off (a constant, or whatever is there), then the lookup."""
    out = [asm.st(4, R10, off, key)] if key is not None else []
    return [*out, asm.mov64(R2, R10), asm.add64(R2, off), asm.ld_map_fd(R1, map_name),
            asm.call_helper("map_lookup_elem")]


def _null_check() -> list[Instruction]:
    return [asm.jeq(R0, 0, "out")]


def _tail() -> list[Instruction]:
    return [asm.mov64(R0, 2), asm.exit_(), asm.mov64(R0, 1, label="out"), asm.exit_()]


def _site(facts: ProgramFacts):  # type: ignore[no-untyped-def]
    (site,) = facts.lookups()
    return site


def test_a_constant_key_read_only_lookup_is_specializable() -> None:
    facts = _facts(*_lookup("m"), *_null_check(), asm.ldx(4, R1, R0, 4), *_tail())
    site = _site(facts)
    assert site.index == 4 and site.map == "m" and site.kind == "lookup"
    assert site.constant_key == (7).to_bytes(4, "little")
    assert site.key_source == "constant"
    assert [(u.kind, u.offset, u.size) for u in site.uses] == [("read", 4, 4)]
    assert site.specializable and not site.guarded
    assert not facts.maps["m"].written_by_data_plane


def test_a_key_from_the_packet_is_traced_to_its_bytes() -> None:
    facts = _facts(
        asm.ldx(4, R2, R1, 0), asm.ldx(4, R3, R1, 4),
        asm.mov64(R4, R2), asm.add64(R4, 34), asm.jgt(R4, R3, "out"),
        asm.ldx(4, R4, R2, 26),  # the IPv4 source address
        asm.stx(4, R10, -4, R4),
        *_lookup("m", None), *_null_check(), asm.ldx(8, R1, R0, 0), *_tail())
    site = _site(facts)
    assert {b.kind for b in site.key_bytes} == {"pkt"}
    assert {b.field for b in site.key_bytes} == {("pkt", 26, 4)}
    assert site.constant_key is None and site.specializable


def test_a_key_half_constant_half_unknown() -> None:
    facts = _facts(asm.st(2, R10, -4, 0x0102), *_lookup("m", None), *_null_check(),
                   *_tail())
    site = _site(facts)
    kinds = [b.kind for b in site.key_bytes]
    assert kinds[:2] == ["const", "const"] and kinds[2:] == ["unknown", "unknown"]
    assert site.constant_key is None


def test_a_wide_constant_partly_overwritten_keeps_the_bytes_left_alone() -> None:
    """`struct k = { .prefixlen = 32 }; k.addr = pkt->daddr` is one 8-byte constant store,
    then a 4-byte store over its upper half: the prefix length stays a known constant."""
    facts = _facts(
        asm.ldx(4, R2, R1, 0), asm.ldx(4, R3, R1, 4),
        asm.mov64(R4, R2), asm.add64(R4, 34), asm.jgt(R4, R3, "out"),
        asm.ld_imm64(R4, 0x1122334455667788), asm.stx(8, R10, -8, R4),
        asm.ldx(2, R4, R2, 30), asm.stx(2, R10, -6, R4),  # bytes 2-3 of the 8
        *_lookup("m8", None, off=-8), *_null_check(), *_tail())
    site = _site(facts)
    kinds = [b.kind for b in site.key_bytes]
    assert kinds == ["const", "const", "pkt", "pkt", "const", "const", "const", "const"]
    assert [b.value for b in site.key_bytes if b.kind == "const"] == [
        0x88, 0x77, 0x44, 0x33, 0x22, 0x11]


def test_a_store_through_the_value_pointer_is_a_data_plane_write() -> None:
    facts = _facts(*_lookup("m"), *_null_check(), asm.st(4, R0, 4, 1), *_tail())
    site = _site(facts)
    mf = facts.maps["m"]
    assert mf.written_by_data_plane and mf.written_ranges == [(4, 8)]
    assert [(u.kind, u.offset, u.size) for u in site.value_writes] == [("write", 4, 4)]
    assert not site.specializable and "write" in site.reason
    assert not facts.maps["other"].written_by_data_plane


def test_an_atomic_add_into_a_value_is_a_write() -> None:
    facts = _facts(*_lookup("m"), *_null_check(), asm.mov64(R1, 1),
                   asm.atomic(8, AtomicOp.ADD, R0, 0, R1), *_tail())
    site = _site(facts)
    assert [u.kind for u in site.value_writes] == ["atomic"]
    assert facts.maps["m"].written_by_data_plane and not site.specializable


def test_writes_through_aliases_are_attributed_to_the_map() -> None:
    # A copy of the pointer in another register, and a spill to the stack and back.
    copy = _facts(*_lookup("m"), *_null_check(), asm.mov64(R6, R0), asm.st(4, R6, 0, 1),
                  *_tail())
    assert copy.maps["m"].written_by_data_plane and not _site(copy).specializable
    spilled = _facts(*_lookup("m"), *_null_check(), asm.stx(8, R10, -16, R0),
                     asm.ldx(8, R7, R10, -16), asm.st(8, R7, 0, 5), *_tail())
    assert spilled.maps["m"].written_by_data_plane
    assert [u.kind for u in _site(spilled).value_writes] == ["write"]


def test_a_pointer_stored_into_another_map_escapes() -> None:
    facts = _facts(*_lookup("m"), *_null_check(), asm.mov64(R6, R0),
                   *_lookup("other", 1, off=-8), *_null_check(),
                   asm.stx(8, R0, 0, R6), *_tail())
    first, second = sorted(facts.lookups(), key=lambda s: s.index)
    assert first.map == "m" and any(u.kind == "escape" for u in first.uses)
    assert not first.specializable
    assert facts.maps["m"].written_by_data_plane  # who knows what is done with it
    assert any(u.kind == "write" for u in second.uses)  # the store itself writes `other`


def test_a_value_pointer_given_to_a_writing_helper_is_a_write() -> None:
    facts = _facts(*_lookup("m"), *_null_check(), asm.mov64(R1, R0), asm.mov64(R2, 8),
                   asm.mov64(R3, 0), asm.call_helper("probe_read_kernel"), *_tail())
    site = _site(facts)
    assert [u.kind for u in site.value_writes] == ["helper"]
    assert facts.maps["m"].written_by_data_plane and not site.specializable


def test_update_and_delete_helpers_write_the_map() -> None:
    facts = _facts(asm.st(4, R10, -4, 1), asm.st(8, R10, -16, 2),
                   asm.mov64(R2, R10), asm.add64(R2, -4), asm.mov64(R3, R10),
                   asm.add64(R3, -16), asm.mov64(R4, 0), asm.ld_map_fd(R1, "m"),
                   asm.call_helper("map_update_elem"), *_tail())
    mf = facts.maps["m"]
    assert mf.helper_writes and mf.written_by_data_plane
    assert any("update" in w for w in mf.data_plane_writes)
    assert not facts.lookups()


def test_a_lookup_in_a_map_the_data_plane_writes_needs_a_guard() -> None:
    facts = _facts(*_lookup("m"), *_null_check(), asm.ldx(8, R1, R0, 0), asm.mov64(R6, R0),
                   *_lookup("m", 3, off=-8), *_null_check(), asm.st(8, R0, 0, 1),
                   *_tail())
    reader, writer = sorted(facts.lookups(), key=lambda s: s.index)
    assert reader.specializable and reader.guarded
    assert not writer.specializable


def test_lru_lookups_are_guarded() -> None:
    site = _site(_facts(*_lookup("lru"), *_null_check(), asm.ldx(8, R1, R0, 0), *_tail()))
    assert site.specializable and site.guarded and "LRU" in site.reason


def test_a_map_pointer_lost_at_a_join_is_not_specialized() -> None:
    facts = _facts(
        asm.ldx(4, R6, R1, 12),  # ingress ifindex: which map depends on the packet
        asm.st(4, R10, -4, 1), asm.mov64(R2, R10), asm.add64(R2, -4),
        asm.jeq(R6, 2, "b"),
        asm.ld_map_fd(R1, "m"), asm.ja("call"),
        asm.ld_map_fd(R1, "other", label="b"),
        asm.call_helper("map_lookup_elem", label="call"),
        *_null_check(), asm.st(8, R0, 0, 1), *_tail())
    site = _site(facts)
    assert site.map not in ("m", "other")
    assert not site.specializable
    # Whoever copies the world for a run must treat the write as one to either map.
    written = written_maps([facts.program], MAPS)
    assert {"m", "other"} <= written
