"""An LPM trie read whole, as the sorted address ranges its longest-prefix match answers.

A trie's prefixes cut the address space into at most 2N+1 intervals on which the longest
matching prefix does not change; neighbours with the same answer merge. A lookup then is
a binary search of the address over the range starts (`passes.inline` emits it, with a
full-width prefix length in the key), with no miss path: every address falls in one range,
and a range no prefix covers answers NULL. This replaces the kernel's trie walk (one node
per prefix bit that differs, each a memory load and a compare) by ~log2(ranges) compares
on a register, and, unlike hot keys, covers uniform traffic too.
"""

from __future__ import annotations

from collections.abc import Mapping

PREFIXLEN_BYTES = 4  # struct bpf_lpm_trie_key: __u32 prefixlen, then the data bytes
DATA_WIDTHS = (1, 2, 4)  # data sizes the search loads with one aligned load


def full_prefixlen_key(known: tuple[int | None, ...], key_size: int) -> bool:
    """Whether the key's prefix length is a constant equal to the data's full width (the
    site asks for the longest match of one address, not for a shorter prefix)."""
    data = key_size - PREFIXLEN_BYTES
    if data not in DATA_WIDTHS or len(known) != key_size:
        return False
    head = known[:PREFIXLEN_BYTES]
    if any(b is None for b in head):
        return False
    return int.from_bytes(bytes(head), "little") == 8 * data  # type: ignore[arg-type]


def lpm_ranges(entries: Mapping[bytes, bytes | None], key_size: int
               ) -> list[tuple[int, bytes | None]]:
    """(first address, value or None) of each range, sorted, the first starting at 0.

    `entries` maps trie keys (prefix length, then the data in network order) to values;
    None values (keys looked up and found absent) are ignored. Host bits beyond a key's
    prefix length are ignored, as the kernel's match does.

    Prefixes nest or are disjoint: one sweep over them sorted by first address, shortest
    first, with a stack of the prefixes holding the current address (O(N log N)).
    """
    bits = 8 * (key_size - PREFIXLEN_BYTES)
    prefixes: dict[tuple[int, int], bytes] = {}
    for key, value in entries.items():
        if value is None:
            continue
        length = int.from_bytes(key[:PREFIXLEN_BYTES], "little")
        if length > bits:
            raise ValueError(f"prefix length {length} exceeds the key's {bits} bits")
        net = int.from_bytes(key[PREFIXLEN_BYTES:], "big") >> (bits - length)
        prefixes[length, net] = value  # the same prefix twice: one node in the trie
    spans = sorted((net << (bits - length), length, value)
                   for (length, net), value in prefixes.items())
    out: list[tuple[int, bytes | None]] = [(0, None)]
    stack: list[tuple[int, bytes]] = []  # (end, value) of the prefixes holding the address

    def close_until(address: int) -> None:
        while stack and stack[-1][0] <= address:
            end = stack.pop()[0]
            _emit(out, end, stack[-1][1] if stack else None)

    for low, length, value in spans:
        close_until(low)
        _emit(out, low, value)
        stack.append((low + (1 << (bits - length)), value))
    close_until((1 << bits) - 1)
    if out and out[-1][0] >= 1 << bits:
        out.pop()  # a prefix ending at the top of the space opens no range after it
    return out


def _emit(out: list[tuple[int, bytes | None]], start: int, value: bytes | None) -> None:
    """Start a range at `start` answering `value` (replacing one that starts there too,
    merging with the range before when they answer the same)."""
    if out and out[-1][0] == start:
        out.pop()
    if out and out[-1][1] == value:
        return
    out.append((start, value))


def range_of(ranges: list[tuple[int, bytes | None]], address: int) -> int:
    """Index of the range holding `address`."""
    lo, hi = 0, len(ranges) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ranges[mid][0] <= address:
            lo = mid
        else:
            hi = mid - 1
    return lo
