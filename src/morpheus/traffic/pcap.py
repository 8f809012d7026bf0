"""Classic libpcap files (microsecond timestamps, Ethernet link type)."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

_MAGIC_US = 0xA1B2C3D4
_MAGIC_NS = 0xA1B23C4D
LINKTYPE_ETHERNET = 1
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


class PcapError(ValueError):
    """The file is not a pcap file we can read (wrong magic, link type, truncated record)."""


def write_pcap(path: str | os.PathLike[str], frames: Iterable[bytes], *,
               start_us: int = 0, interval_us: int = 1, snaplen: int = 65535) -> int:
    """Write frames with deterministic timestamps (start + i * interval); returns the count.

    Deterministic timestamps make the same trace byte-identical on every run.
    """
    count = 0
    with open(path, "wb") as f:
        f.write(_GLOBAL.pack(_MAGIC_US, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        for i, frame in enumerate(frames):
            ts = start_us + i * interval_us
            f.write(_RECORD.pack(ts // 1_000_000, ts % 1_000_000, len(frame), len(frame)))
            f.write(frame)
            count += 1
    return count


def read_pcap(path: str | os.PathLike[str]) -> list[bytes]:
    """All frames of an Ethernet pcap file (either byte order, µs or ns timestamps)."""
    return list(iter_pcap(path))


def iter_pcap(path: str | os.PathLike[str]) -> Iterator[bytes]:
    data = Path(path).read_bytes()
    if len(data) < _GLOBAL.size:
        raise PcapError(f"{path}: too short for a pcap header")
    magic_le = struct.unpack_from("<I", data)[0]
    if magic_le in (_MAGIC_US, _MAGIC_NS):
        endian = "<"
    elif struct.unpack_from(">I", data)[0] in (_MAGIC_US, _MAGIC_NS):
        endian = ">"
    else:
        raise PcapError(f"{path}: not a pcap file (magic {magic_le:#x}; pcapng is not supported)")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    if linktype != LINKTYPE_ETHERNET:
        raise PcapError(f"{path}: link type {linktype}, only Ethernet (1) is supported")
    record = struct.Struct(endian + "IIII")
    pos = _GLOBAL.size
    n = 0
    while pos < len(data):
        if pos + record.size > len(data):
            raise PcapError(f"{path}: truncated record header after {n} packets")
        _sec, _frac, incl, _orig = record.unpack_from(data, pos)
        pos += record.size
        if pos + incl > len(data):
            raise PcapError(f"{path}: truncated packet {n}")
        yield data[pos:pos + incl]
        pos += incl
        n += 1
