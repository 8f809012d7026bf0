"""Fuzzing the object reader: mutated objects give our own errors, never another exception,
never a hang.

Seeded and bounded: every mutation is reproducible from (object, section, seed), and each
input must be read within TIME_LIMIT seconds (an interval timer interrupts a hang).
"""

from __future__ import annotations

import random
import signal
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from morpheus.kernel.btf import running_target
from morpheus.obj import ObjectError, read_object
from morpheus.obj.btf import BTF, Kind
from morpheus.obj.reader import ReadOptions

# CO-RE records and externs are resolved, so their code paths are fuzzed too (the kernel's
# BTF is parsed once, outside the per-input time limit).
OPTIONS = ReadOptions(target=running_target)

SEED = 20261201
TIME_LIMIT = 2.0
MUTATIONS_PER_SECTION = 5
# Objects that together use every section kind the reader interprets: BTF maps, map-in-map,
# global data, subprograms, tail calls, BTF.ext func/line info and CO-RE records.
OBJECTS = ("mapinmap.v3", "globals.v2", "subprogs.v3", "core.v3", "kconfig.v2",
           "static_init.v3")


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    def alarm(signum: int, frame: object) -> None:
        raise Hang(f"reading {what} took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def read_bounded(data: bytes, what: str) -> None:
    """Read `data`; only ObjectError (and its subclasses) may come out, within the limit."""
    with time_limit(TIME_LIMIT, what):
        try:
            read_object(data, name="fuzz", options=OPTIONS)
        except ObjectError as exc:
            assert str(exc), what
            # The reader's catch-all for pyelftools' errors must not hide our own bugs.
            message = str(exc)
            for bug in ("IndexError", "KeyError", "AttributeError", "TypeError",
                        "ZeroDivisionError", "RecursionError", "UnboundLocalError"):
                assert f"({bug}:" not in message, f"{what}: {message}"


def sections(data: bytes) -> list[tuple[str, int, int]]:
    import io

    elf = ELFFile(io.BytesIO(data))
    out = []
    for index in range(elf.num_sections()):
        sec = elf.get_section(index)
        if sec["sh_type"] != "SHT_NOBITS" and sec["sh_size"]:
            out.append((sec.name, sec["sh_offset"], sec["sh_size"]))
    return out


def mutate(data: bytes, start: int, size: int, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = start + rng.randrange(size)
        choice = rng.randrange(5)
        if choice == 0:
            out[at] ^= 1 << rng.randrange(8)
        elif choice == 1:
            out[at] = rng.choice((0, 0xFF, 0x7F, 0x80))
        elif choice == 2 and at + 4 <= start + size:
            value = rng.choice((0, 1, 0xFFFFFFFF, 0x7FFFFFFF, rng.randrange(1 << 32)))
            struct.pack_into("<I", out, at & ~3 if (at & ~3) >= start else at, value)
        elif choice == 3:
            out[at] = rng.randrange(256)
        else:
            span = min(16, start + size - at)
            out[at : at + span] = bytes(span)
    return bytes(out)


@pytest.mark.parametrize("key", OBJECTS)
def test_mutations_in_every_section(test_objects: dict[str, Path], key: str) -> None:
    running_target()
    data = test_objects[key].read_bytes()
    rng = random.Random(f"{SEED}:{key}")
    secs = sections(data)
    assert len(secs) >= 6, key
    for name, start, size in secs:
        for n in range(MUTATIONS_PER_SECTION):
            read_bounded(mutate(data, start, size, rng), f"{key} section {name} mutation {n}")
    # The ELF header and section headers themselves.
    for n in range(MUTATIONS_PER_SECTION * 2):
        read_bounded(mutate(data, 0, 64, rng), f"{key} ELF header mutation {n}")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    for n in range(MUTATIONS_PER_SECTION * 2):
        read_bounded(mutate(data, shoff, len(data) - shoff, rng),
                     f"{key} section headers mutation {n}")


def btf_records(data: bytes) -> tuple[int, BTF]:
    at = data.find(b"\x9f\xeb\x01\x00")
    assert at > 0
    return at, BTF(data[at:])


def test_btf_reference_loops_are_errors_naming_the_type(test_objects: dict[str, Path]) -> None:
    """Every typedef, qualifier and pointer pointed at itself, or at a two-type cycle."""
    data = test_objects["mapinmap.v3"].read_bytes()
    at, btf = btf_records(data)
    type_start = at + btf.hdr_len + struct.unpack_from("<I", data, at + 8)[0]
    refs = [t for t in btf.types[1:] if t.kind in (Kind.TYPEDEF, Kind.CONST, Kind.VOLATILE,
                                                   Kind.PTR, Kind.TYPE_TAG, Kind.RESTRICT)]
    assert refs
    looped = 0
    for t in refs:
        out = bytearray(data)
        struct.pack_into("<I", out, type_start + t.byte_offset + 8, t.id)
        read_bounded(bytes(out), f"type {t.id} refers to itself")
        with time_limit(TIME_LIMIT, f"type {t.id}"):
            try:
                read_object(bytes(out))
            except ObjectError as exc:
                if "loop" in str(exc):
                    assert f"type {t.id}" in str(exc) or "BTF type" in str(exc)
                    looped += 1
    assert looped > 0
    # A two-type cycle: typedef A -> typedef B -> A, reached from a map definition.
    typedefs = [t for t in refs if t.kind == Kind.TYPEDEF]
    if len(typedefs) >= 2:
        a, b = typedefs[:2]
        out = bytearray(data)
        struct.pack_into("<I", out, type_start + a.byte_offset + 8, b.id)
        struct.pack_into("<I", out, type_start + b.byte_offset + 8, a.id)
        read_bounded(bytes(out), "two-typedef cycle")


def test_skip_modifiers_bounds_a_self_loop() -> None:
    """A typedef that is its own target: an error naming the type id, not a hang."""
    strings = b"\0loop\0"
    types = struct.pack("<III", 1, 8 << 24, 1)  # typedef "loop" -> type 1 (itself)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    btf = BTF(header + types + strings)
    with time_limit(TIME_LIMIT, "self loop"), pytest.raises(ObjectError, match="BTF type 1"):
        btf.skip_modifiers(1)
    with time_limit(TIME_LIMIT, "self loop"), pytest.raises(ObjectError, match="BTF type 1"):
        btf.size_of(1)


def test_out_of_range_relocations(test_objects: dict[str, Path]) -> None:
    """Relocation entries naming offsets past the section, missing symbols, odd types."""
    data = test_objects["globals.v3"].read_bytes()
    rng = random.Random(SEED)
    rels = [(n, s, o, z) for n, s, o, z in _rel_sections(data)]
    assert rels
    for name, start, size, _ in rels:
        for n in range(20):
            out = bytearray(data)
            entry = start + 16 * rng.randrange(size // 16)
            field = rng.randrange(3)
            if field == 0:  # r_offset
                struct.pack_into("<Q", out, entry, rng.choice(
                    (size * 8, 1 << 40, 0xFFFFFFFFFFFFFFF8, rng.randrange(1 << 20) * 8 + 4)))
            elif field == 1:  # symbol index
                sym = rng.choice((0, 0xFFFFFF, 1 << 31, rng.randrange(1 << 16)))
                rtype = struct.unpack_from("<Q", out, entry + 8)[0] & 0xFFFFFFFF
                struct.pack_into("<Q", out, entry + 8, (sym << 32) | rtype)
            else:  # relocation type
                sym = struct.unpack_from("<Q", out, entry + 8)[0] >> 32
                struct.pack_into("<Q", out, entry + 8, (sym << 32) | rng.randrange(256))
            read_bounded(bytes(out), f"{name} entry mutation {n}")


def test_core_records_out_of_range(test_objects: dict[str, Path]) -> None:
    """CO-RE records with instruction offsets, type ids and access strings out of range."""
    running_target()
    data = test_objects["core.v3"].read_bytes()
    at = data.rfind(b"\x9f\xeb\x01\x00")  # .BTF.ext comes after .BTF in clang's output
    hdr_len = struct.unpack_from("<I", data, at + 4)[0]
    assert hdr_len >= 32
    core_off, core_len = struct.unpack_from("<II", data, at + 24)
    base = at + hdr_len + core_off
    rng = random.Random(SEED)
    # Records start after the record size (4 bytes) and one section header (8 bytes).
    first = base + 12
    count = (core_len - 12) // 16
    assert count > 0
    for n in range(60):
        out = bytearray(data)
        rec = first + 16 * rng.randrange(count)
        field = rng.randrange(4)
        value = rng.choice((0xFFFFFFFF, 1 << 20, rng.randrange(1 << 16), 3, 7))
        struct.pack_into("<I", out, rec + 4 * field, value)
        read_bounded(bytes(out), f"CO-RE record mutation {n} (field {field} = {value})")


def _rel_sections(data: bytes) -> list[tuple[str, int, int, int]]:
    import io

    elf = ELFFile(io.BytesIO(data))
    out = []
    for sec in elf.iter_sections():
        if sec["sh_type"] == "SHT_REL" and sec["sh_size"] >= 16:
            out.append((sec.name, sec["sh_offset"], sec["sh_size"], 0))
    return out
