"""Which packet byte each byte of a scalar holds, through the arithmetic that assembles it.

clang copies a MAC address into a stack key with byte loads, shifts and ors (`w3 = b1;
w3 <<= 8; w3 |= b0`); a plain origin ("pkt", off, size) cannot describe the result, and a
key built from it would say only "from the packet". A byte map says, for each of the
scalar's eight bytes (least significant first), the packet offset it holds, `ZERO` when the
byte is known to be zero (zero extension, shifted-in bytes, masked-off bytes), or None when
it is anything else (a partial mask, a carry, a sign extension, a constant's non-zero byte).

Only what is exact is kept: a byte is a packet offset only if the scalar's byte equals that
packet byte on every run, so a check that writes a key's bytes at those offsets builds a
packet whose key is that key.
"""

from __future__ import annotations

from ..ir.opcodes import AluOp

ZERO = -1  # the byte is known to be zero
WIDTH = 8

ByteMap = tuple[int | None, ...]  # WIDTH entries: packet offset, ZERO or None


def of_load(off: int, size: int, *, sign_extended: bool = False) -> ByteMap:
    """A load of `size` bytes at packet offset `off` (little-endian: byte i is off + i)."""
    high = None if sign_extended else ZERO
    return tuple(off + i if i < size else high for i in range(WIDTH))


def of_constant(value: int) -> ByteMap:
    """A constant's zero bytes are ZERO; the others are no packet byte."""
    return tuple(ZERO if (value >> (8 * i)) & 0xFF == 0 else None for i in range(WIDTH))


def of_origin(origin: tuple[object, ...] | None) -> ByteMap | None:
    """The byte map an origin describes: a composed one, or a plain packet load's."""
    if not origin or origin[0] != "pkt":
        return None
    if len(origin) == 4:
        return origin[3]  # type: ignore[return-value]
    off, size = origin[1], origin[2]
    if isinstance(off, int) and isinstance(size, int) and 0 < size <= WIDTH:
        return of_load(off, size)
    return None


def as_origin(bytes_: ByteMap | None) -> tuple[object, ...] | None:
    """The origin for a byte map: a plain load's when it is one, ("pkt", None, 0, map)
    otherwise, None when it says nothing about any byte."""
    if bytes_ is None or all(b is None for b in bytes_):
        return None
    size = next((i for i, b in enumerate(bytes_) if b is None or b < 0), WIDTH)
    off = bytes_[0]
    if off is not None and off >= 0 and bytes_ == of_load(off, size):
        return ("pkt", off, size)
    return ("pkt", None, 0, bytes_)


def truncated(bytes_: ByteMap, size: int) -> ByteMap:
    """The low `size` bytes, zero-extended (a 32-bit result, a narrow store reloaded)."""
    return tuple(b if i < size else ZERO for i, b in enumerate(bytes_))


def join(a: ByteMap, b: ByteMap) -> ByteMap:
    """Byte by byte: what both agree on."""
    return tuple(x if x == y else None for x, y in zip(a, b, strict=True))


def byte_offsets(bytes_: ByteMap) -> list[int | None]:
    """The packet offset of each byte (None for the bytes that are no packet byte)."""
    return [b if b is not None and b >= 0 else None for b in bytes_]


def alu(op: int, dst: ByteMap, src: ByteMap, src_const: int | None, *, wide: bool
        ) -> ByteMap | None:
    """`dst op= src` on byte maps (`src_const` when the source is a known constant); None
    for operations that do not move whole bytes."""
    out: ByteMap | None
    if op == AluOp.OR:
        out = tuple(_or(x, y) for x, y in zip(dst, src, strict=True))
    elif op == AluOp.ADD:
        # Without a byte where both sides may be non-zero there is no carry: an or.
        if any(x != ZERO and y != ZERO for x, y in zip(dst, src, strict=True)):
            return None
        out = tuple(_or(x, y) for x, y in zip(dst, src, strict=True))
    elif op == AluOp.AND:
        out = tuple(_and(x, y, None if src_const is None else (src_const >> (8 * i)) & 0xFF)
                    for i, (x, y) in enumerate(zip(dst, src, strict=True)))
    elif op in (AluOp.LSH, AluOp.RSH) and src_const is not None:
        bits = 64 if wide else 32
        shift = src_const & (bits - 1)
        if shift % 8:
            return None
        low = dst if wide else truncated(dst, 4)
        n, width = shift // 8, bits // 8
        if op == AluOp.LSH:
            moved = [ZERO] * n + list(low[:width - n])
        else:
            moved = list(low[n:width]) + [ZERO] * n
        out = tuple(moved) + (ZERO,) * (WIDTH - width)
    else:
        return None
    return out if wide else truncated(out, 4)


def endian(bytes_: ByteMap, bits: int, *, to_be: bool, bswap: bool) -> ByteMap:
    """BPF_END on a little-endian machine (see `alu.endian`)."""
    width = bits // 8
    low = list(bytes_[:width])
    if to_be or bswap:
        low.reverse()
    return tuple(low) + (ZERO,) * (WIDTH - width)


def _or(x: int | None, y: int | None) -> int | None:
    if x == ZERO:
        return y
    if y == ZERO or x == y:
        return x
    return None


def _and(x: int | None, y: int | None, mask: int | None) -> int | None:
    if x == ZERO or y == ZERO or mask == 0:
        return ZERO
    if mask == 0xFF:
        return x
    return None


__all__ = ["WIDTH", "ZERO", "ByteMap", "alu", "as_origin", "byte_offsets", "endian", "join",
           "of_constant", "of_load", "of_origin", "truncated"]
