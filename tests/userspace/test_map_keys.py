"""Map lookups inlined by the JIT, for keys of every size the runtime treats differently
(straight-line words up to 64 bytes, a loop beyond; LPM prefixes in registers up to 16 bytes
of address, bytewise beyond), against a model: the key is built on the stack byte by byte
from the packet, so LLVM keeps it in registers, and must still find exactly the entries the
control plane (the runtime's shared, out-of-line code) wrote."""

from __future__ import annotations

import random

import pytest

from morpheus.ir import Program, asm
from morpheus.ir.asm import R0, R1, R2, R3, R6, R7, R10
from morpheus.obj import MapSpec
from morpheus.uapi import MapType
from morpheus.userspace.dataplane import UserDataPlane


def lookup_program(size: int) -> Program:
    """Copies the packet's first `size` bytes to the stack and looks them up in map "m":
    returns the value's first byte, 255 on a miss, 254 for a short packet."""
    code = [asm.ldx(4, R6, R1, 0), asm.ldx(4, R7, R1, 4), asm.mov64(R2, R6),
            asm.add64(R2, size), asm.jgt(R2, R7, "short")]
    for i in range(size):
        code += [asm.ldx(1, R3, R6, i), asm.stx(1, R10, -96 + i, R3)]
    code += [asm.ld_map_fd(R1, "m"), asm.mov64(R2, R10), asm.add64(R2, -96),
             asm.call_helper("map_lookup_elem"), asm.jeq(R0, 0, "miss"),
             asm.ldx(1, R0, R0, 0), asm.exit_(),
             asm.mov64(R0, 255, label="miss"), asm.exit_(),
             asm.mov64(R0, 254, label="short"), asm.exit_()]
    return Program("keys", tuple(code))


def _frame(key: bytes) -> bytes:
    return key + bytes(max(0, 14 - len(key)))  # the runtime's frames are at least 14 bytes


@pytest.mark.parametrize("size", [1, 3, 6, 8, 12, 13, 16, 20, 36, 64, 65, 72])
def test_hash_lookup_of_every_key_size(size: int) -> None:
    rng = random.Random(size)
    spec = MapSpec("m", MapType.HASH, size, 4, 64)
    keys = [bytes(rng.randrange(256) for _ in range(size)) for _ in range(20)]
    with UserDataPlane.create(extra_maps={"m": spec}) as plane:
        model = {}
        for n, key in enumerate(keys):
            plane.maps["m"].update(key, bytes([n, 0, 0, 0]))
            model[key] = n
        prog = plane.compile(lookup_program(size))
        probes = list(keys)
        for key in keys:  # each key with one byte changed: a near miss
            pos = rng.randrange(size)
            probes.append(key[:pos] + bytes([key[pos] ^ 1 << rng.randrange(8)]) + key[pos + 1:])
        for probe in probes:
            assert plane.run(prog, _frame(probe)).retval == model.get(probe, 255), probe.hex()


def _lpm_model(routes: dict[tuple[int, bytes], int], plen: int, data: bytes, bits: int
               ) -> int:
    best, best_len = 255, -1
    want = int.from_bytes(data, "big")
    for (length, prefix), value in routes.items():
        if length > min(plen, bits) or length <= best_len:
            continue
        mask = ((1 << length) - 1) << (bits - length) if length else 0
        if int.from_bytes(prefix, "big") & mask == want & mask:
            best, best_len = value, length
    return best


@pytest.mark.parametrize("dlen", [4, 8, 12, 16, 20])
def test_lpm_lookup_of_every_address_size(dlen: int) -> None:
    rng = random.Random(dlen)
    bits = dlen * 8
    spec = MapSpec("m", MapType.LPM_TRIE, 4 + dlen, 4, 64, flags=1)
    base = bytes(rng.randrange(256) for _ in range(dlen))
    routes: dict[tuple[int, bytes], int] = {}
    with UserDataPlane.create(extra_maps={"m": spec}) as plane:
        for n in range(24):  # nested prefixes of one address, and others
            length = rng.randrange(bits + 1)
            addr = base if rng.random() < 0.6 else bytes(rng.randrange(256)
                                                         for _ in range(dlen))
            plane.maps["m"].update(length.to_bytes(4, "little") + addr, bytes([n, 0, 0, 0]))
            masked = (int.from_bytes(addr, "big") >> (bits - length) << (bits - length)
                      if length else 0)
            routes[(length, masked.to_bytes(dlen, "big"))] = n
        prog = plane.compile(lookup_program(4 + dlen))
        for _ in range(80):
            addr = bytearray(base if rng.random() < 0.7 else bytes(dlen))
            addr[rng.randrange(dlen)] ^= 1 << rng.randrange(8)
            plen = rng.choice([bits, bits, rng.randrange(bits + 1), bits + 5])
            frame = plen.to_bytes(4, "little") + bytes(addr)
            assert plane.run(prog, _frame(frame)).retval == \
                _lpm_model(routes, plen, bytes(addr), bits), frame.hex()
