"""Legacy `SEC("maps")` map definitions, as iproute2's tc loader still reads them.

Two layouts exist: libbpf's old `struct bpf_map_def` (type, key_size, value_size,
max_entries, map_flags: 5 u32) and iproute2's `struct bpf_elf_map` (type, size_key,
size_value, max_elem, flags, id, pinning, inner_id, inner_idx: 9 u32). Each map is a symbol
in the section; the definition size is the section size divided by the number of maps, as
libbpf computed it before 1.0 dropped these.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..uapi import MapType
from .errors import ObjectError, UnsupportedFeature
from .spec import MapSpec

if TYPE_CHECKING:
    from .reader import _Reader

_STT_OBJECT, _STT_NOTYPE = 1, 0
PIN_GLOBAL_NS = 2  # iproute2: pinned under /sys/fs/bpf/tc/globals (LIBBPF_PIN_BY_NAME here)


def legacy_maps(reader: _Reader) -> list[MapSpec]:
    sec = reader.by_name["maps"]
    data = reader.section_data(sec)
    syms = sorted((s for s in reader.symbols if s.shndx == sec.index and s.name
                   and s.type in (_STT_OBJECT, _STT_NOTYPE)), key=lambda s: s.value)
    if not syms:
        raise ObjectError("'maps' section has no map symbols")
    size = len(data) // len(syms)
    if size < 20 or len(data) % len(syms):
        raise ObjectError(f"'maps' section of {len(data)} bytes does not divide into "
                          f"{len(syms)} definitions of at least 20 bytes")
    out = []
    for sym in syms:
        if sym.value + size > len(data) or sym.value % 4:
            raise ObjectError(f"legacy map {sym.name!r} is outside the 'maps' section")
        words = struct.unpack_from(f"<{size // 4}I", data, sym.value)
        mtype_raw, key_size, value_size, max_entries, flags = words[:5]
        pinning = words[6] if len(words) > 6 else 0
        if len(words) > 7 and words[7]:
            raise UnsupportedFeature("legacy maps of maps (inner_id)", f"map {sym.name!r}")
        try:
            mtype = MapType(mtype_raw)
        except ValueError:
            raise UnsupportedFeature(f"map type {mtype_raw}", f"map {sym.name!r}") from None
        if any(words[9:]):
            raise ObjectError(f"legacy map {sym.name!r}: {size} byte definition with unknown "
                              "non-zero fields")
        out.append(MapSpec(
            name=sym.name,
            type=mtype,
            key_size=key_size,
            value_size=value_size,
            max_entries=max_entries,
            flags=flags,
            pinning=1 if pinning == PIN_GLOBAL_NS else 0,
        ))
    return out
