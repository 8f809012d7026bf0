"""Direct-indexed LPM tables (passes.lpmtable): the tables answer like the ranges they
come from. The code that searches them runs in the kernel in tests/optimizer/test_lpm.py."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from morpheus.optimizer.lpm import lpm_ranges, range_of
from morpheus.passes import lpmtable
from morpheus.passes.lpmtable import CHILD, L1_BYTES, LpmTable, build_table, table_blocks

VALUE_SIZE = 6


def table_lookup(table: LpmTable, address: int) -> bytes | None:
    """What the emitted code computes, step by step (level 1, then up to two blocks)."""
    def entry(offset: int) -> int:
        return int(struct.unpack_from("<H", table.table, offset)[0])

    e = entry(2 * (address >> 16))
    for shift in (8, 0):
        if not e & CHILD:
            break
        block = e & (CHILD - 1)
        assert block < table.blocks
        e = entry(L1_BYTES + 512 * block + 2 * ((address >> shift) & 0xFF))
    assert not e & CHILD and e < table.slots
    if e == 0:
        return None
    return table.values[e * table.stride: e * table.stride + VALUE_SIZE]


def trie_key(length: int, address: int) -> bytes:
    net = address & ((0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF)
    return struct.pack("<I", length) + net.to_bytes(4, "big")


routes = st.lists(st.tuples(st.integers(0, 32), st.integers(0, 2**32 - 1),
                            st.integers(0, 5)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(case=routes, probes=st.lists(st.integers(0, 2**32 - 1), max_size=30))
def test_the_tables_answer_like_the_ranges(case: list[tuple[int, int, int]],
                                           probes: list[int]) -> None:
    entries: dict[bytes, bytes | None] = {
        trie_key(length, addr): bytes([value]) * VALUE_SIZE for length, addr, value in case}
    ranges = lpm_ranges(entries, 8)
    table = build_table(ranges, VALUE_SIZE)
    assert table is not None
    assert table.blocks == table_blocks([s for s, _ in ranges])
    assert len(table.table) == L1_BYTES + 512 * table.blocks
    assert table.stride % 8 == 0 and table.slots == 1 + len({v for _, v in ranges if v})
    edges = [s + d for s, _ in ranges for d in (-1, 0, 1) if 0 <= s + d < 2**32]
    for address in [*probes, *edges, 0, 2**32 - 1]:
        assert table_lookup(table, address) == ranges[range_of(ranges, address)][1], \
            hex(address)


def test_ranges_that_need_too_many_blocks_make_no_table(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    ranges = [(0, None), (0x0A000080, b"a" * 8), (0x0A000100, None), (0x0B000001, b"b" * 8),
              (0x0B000002, None)]
    assert table_blocks([s for s, _ in ranges]) == 4  # two /16s cut, two /24s cut
    assert build_table(ranges, 8) is not None
    monkeypatch.setattr(lpmtable, "MAX_BLOCKS", 3)
    assert build_table(ranges, 8) is None


def test_ranges_must_cover_the_address_space_from_zero() -> None:
    with pytest.raises(ValueError, match="address 0"):
        build_table([(5, b"a" * 8)], 8)
