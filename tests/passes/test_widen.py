"""Wide packet loads and stores for byte-wise copies: the same verdicts, bytes and map
contents as the byte-wise original, on any frame."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from morpheus.ir import Program, asm
from morpheus.ir.asm import R0, R1, R2, R3, R4, R6, R10
from morpheus.ir.opcodes import OP_OR
from morpheus.loader import load_collection
from morpheus.obj import read_object
from morpheus.passes.dce import DeadCodeElimination
from morpheus.passes.pipeline import PassContext
from morpheus.passes.widen import WidenBytes
from morpheus.uapi import ProgType
from morpheus.world import CheckRequest, Side, check


def widened(program: Program, ctx: PassContext) -> Program:
    return DeadCodeElimination().run(WidenBytes().run(program, ctx), ctx)


def gather_program(clobber: bool = False) -> Program:
    """Bytes 4 and 5 of the frame, little-endian, stored to the stack and returned."""
    return Program("p", (
        asm.ldx(4, R6, R1, 0),
        asm.ldx(4, R2, R1, 4),
        asm.mov64(R3, R6),
        asm.add64(R3, 8),
        asm.jgt(R3, R2, "out"),
        asm.ldx(1, R4, R6, 5),
        asm.lsh64(R4, 8),
        asm.ldx(1, R0, R6, 4),
        asm.alu64(OP_OR, R0, R4),
        *([asm.mov64(R6, 0)] if clobber else []),
        asm.stx(2, R10, -8, R0),
        asm.ldx(2, R0, R10, -8),
        asm.exit_(),
        asm.mov64(R0, 0, label="out"),
        asm.exit_(),
    ))


def test_a_gathered_pair_of_bytes_becomes_one_load_and_the_chain_goes() -> None:
    ctx = PassContext({}, ProgType.XDP)
    out = widened(gather_program(), ctx)
    loads = [i for i in out.insns if i.is_load and i.src == R6]
    assert [(i.size_bytes, i.off) for i in loads] == [(2, 4)]
    assert ctx.stats["widen"]["loads"] == 1


def test_no_register_left_pointing_at_the_bytes_leaves_them_alone() -> None:
    ctx = PassContext({}, ProgType.XDP)
    program = gather_program(clobber=True)
    assert WidenBytes().run(program, ctx) is program


def test_a_pointer_the_last_byte_load_overwrites_is_read_before_it() -> None:
    program = Program("p", (
        asm.ldx(4, R6, R1, 0),
        asm.ldx(4, R2, R1, 4),
        asm.mov64(R3, R6),
        asm.add64(R3, 8),
        asm.jgt(R3, R2, "out"),
        asm.ldx(1, R4, R6, 5),
        asm.lsh64(R4, 8),
        asm.ldx(1, R6, R6, 4),  # the last holder of the packet pointer is overwritten
        asm.alu64(OP_OR, R6, R4),
        asm.stx(2, R10, -8, R6),
        asm.ldx(2, R0, R10, -8),
        asm.exit_(),
        asm.mov64(R0, 0, label="out"),
        asm.exit_(),
    ))
    ctx = PassContext({}, ProgType.XDP)
    out = widened(program, ctx)
    (wide,) = [i for i in out.insns if i.meta.note == "widened load"]
    (store,) = [i for i in out.insns if i.is_store]
    assert (wide.size_bytes, wide.off, wide.src) == (2, 4, R6) and store.src == wide.dst
    assert not [i for i in out.insns if i.is_load and i.size_bytes == 1]


def frames() -> st.SearchStrategy[bytes]:
    return st.binary(min_size=14, max_size=80)


@pytest.mark.kernel
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(packets=st.lists(frames(), min_size=1, max_size=40))
def test_widened_copies_do_what_the_byte_copies_do(packets: list[bytes],
                                                   test_objects: dict[str, Path]) -> None:
    spec = read_object(test_objects["bytecopy.v3"])
    prog = spec.program("xdp_bytecopy")
    ctx = PassContext(dict(spec.maps), prog.type)
    out = widened(prog.program, ctx)
    assert ctx.stats["widen"]["loads"] >= 2 and ctx.stats["widen"]["stores"] >= 1, ctx.stats
    with load_collection(spec, programs=[]) as coll:
        result = check(CheckRequest(
            coll.maps, Side("bytes", prog, btf_fd=coll.btf_fd, spec=spec),
            Side("widened", prog, out, btf_fd=coll.btf_fd, spec=spec),
            [(p, 0) for p in packets]))
        assert result.equivalent, result.to_json()
