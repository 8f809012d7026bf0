"""An XDP program for network tests: counts the frames of the tests' own ethertype (0x88b5,
local experimental: not the kernel's IPv6 chatter on a fresh veth) and drops them."""

from __future__ import annotations

from morpheus.ir import Program, asm, encode
from morpheus.ir.asm import R0, R1, R2, R3, R6
from morpheus.ir.opcodes import AluOp, AtomicOp
from morpheus.kernel import Map

TEST_ETHERTYPE = b"\x88\xb5"


def frame_counter(counter: Map, *, count_bytes: bool = False, spins: int = 0) -> bytes:
    """Bytecode counting matching frames in slot 0 of the ARRAY `counter` (u64 at offset 0;
    with `count_bytes` their bytes too, u64 at offset 8), burning `spins` loop iterations
    per frame (a receiver slower than its sender), then XDP_DROP for every frame."""
    count = [asm.ld_map_value(R1, "counter", 0),
             asm.mov64(R2, 1),
             asm.atomic(8, AtomicOp.ADD, R1, 0, R2)]
    if count_bytes:
        count = [asm.alu64(AluOp.SUB, R3, R2), *count, asm.atomic(8, AtomicOp.ADD, R1, 8, R3)]
    spin = [asm.mov64(R6, spins),
            asm.add64(R6, -1, label="spin"),
            asm.jne(R6, 0, "spin")] if spins else []
    return encode(Program("rxcount", (
        asm.ldx(4, R2, R1, 0),
        asm.ldx(4, R3, R1, 4),
        asm.mov64(R1, R2),
        asm.add64(R1, 14),
        asm.jgt(R1, R3, "out"),
        asm.ldx(2, R1, R2, 12),
        asm.jne(R1, 0xB588, "out"),  # TEST_ETHERTYPE read as a little-endian u16
        *count,
        *spin,
        asm.mov64(R0, 1, label="out"),
        asm.exit_(),
    )), {"counter": counter.fd.number}).bytecode
