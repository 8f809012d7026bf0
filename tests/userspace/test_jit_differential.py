"""The JIT against the kernel: random verifier-valid programs compute the same results.

The programs come from the constprop differential tests' strategy (ALU 32/64 with every
operator, signed division and modulo, sign-extending moves and loads, byte swaps, stack
stores/loads of every size, atomics with and without fetch, xchg, cmpxchg, 32- and 64-bit
conditional jumps, csum_diff): each is loaded into the kernel (the verifier must accept it),
run there with BPF_PROG_TEST_RUN, then compiled by our JIT and run on the same packet. The
return value and every output byte must agree.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from morpheus.ir import Instruction, Program, asm, encode, listing
from morpheus.ir.asm import R0, R1, R2, R3, R4
from morpheus.ir.opcodes import AluOp, Class, JmpOp, Source
from morpheus.kernel import Map, MapFlags, MapType, ProgType, load_program
from morpheus.obj import MapSpec
from morpheus.userspace.dataplane import UserDataPlane
from morpheus.userspace.lift import UnsupportedHelper
from tests.passes.test_constprop import PACKET, direct_value_program, random_program

pytestmark = pytest.mark.kernel


def kernel_run(program: Program, packet: bytes, maps: dict[str, int] | None = None
               ) -> tuple[int, bytes]:
    encoded = encode(program, maps)
    with load_program(encoded.bytecode, ProgType.XDP, name=program.name) as prog:
        result = prog.test_run(packet)
        assert result.data is not None
        return result.retval, result.data


def user_run(plane: UserDataPlane, program: Program, packet: bytes) -> tuple[int, bytes]:
    prog = plane.compile(program)
    try:
        result = plane.run(prog, packet)
    finally:
        plane.programs.remove(prog)
        prog.close()
    return result.retval, result.data


@pytest.fixture(scope="module")
def plane():
    with UserDataPlane.create() as p:
        yield p


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(program=random_program(), packet=st.binary(min_size=PACKET, max_size=PACKET))
def test_random_programs_agree_with_the_kernel(plane: UserDataPlane, program: Program,
                                               packet: bytes) -> None:
    expected = kernel_run(program, packet)
    got = user_run(plane, program, packet)
    assert got == expected, listing(program)


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=st.binary(min_size=48, max_size=48),
       packet=st.binary(min_size=PACKET, max_size=PACKET))
def test_direct_map_values_agree_with_the_kernel(data: st.DataObject, value: bytes,
                                                 packet: bytes) -> None:
    program = data.draw(direct_value_program(len(value)))
    spec = MapSpec("cfg", MapType.ARRAY, 4, len(value), 1, int(MapFlags.RDONLY_PROG))
    with Map.create(MapType.ARRAY, 4, len(value), 1, flags=MapFlags.RDONLY_PROG,
                    name="cfg") as cfg, UserDataPlane.create(extra_maps={"cfg": spec}) as p:
        cfg[0] = value
        p.maps["cfg"].update(0, value)
        expected = kernel_run(program, packet, {"cfg": cfg.fd.number})
        assert user_run(p, program, packet) == expected, listing(program)


def _edge_program(op: int, wide: bool, signed: bool) -> Program:
    """r0 = a OP b, a and b read from the packet (so division by zero happens at run time),
    the 64-bit result written back to the packet."""
    cls = Class.ALU64 if wide else Class.ALU
    return Program("edge", (
        asm.ldx(4, R2, R1, 0), asm.ldx(4, R3, R1, 4), asm.mov64(R4, R2), asm.add64(R4, 24),
        asm.jgt(R4, R3, "bail"),
        asm.ldx(8, R0, R2, 0), asm.ldx(8, R1, R2, 8),
        Instruction(cls | op | Source.X, 0, 1, 1 if signed else 0),
        asm.stx(8, R2, 16, R0), asm.mov64(R0, 2), asm.exit_(),
        asm.mov64(R0, 0, label="bail"), asm.exit_(),
    ))


EDGES = [0, 1, -1, 2, -2, 7, -7, 1 << 31, -(1 << 31), (1 << 31) - 1, 1 << 63,
         (1 << 63) - 1, 0xFFFFFFFF, 0x100000000]


@pytest.mark.parametrize("op", [AluOp.DIV, AluOp.MOD])
@pytest.mark.parametrize("wide", [True, False])
@pytest.mark.parametrize("signed", [False, True])
def test_division_edges_agree_with_the_kernel(plane: UserDataPlane, op: int, wide: bool,
                                              signed: bool) -> None:
    """Division and modulo by zero and by -1, at the edges of both widths."""
    program = _edge_program(op, wide, signed)
    encoded = encode(program)
    prog = plane.compile(program)
    with load_program(encoded.bytecode, ProgType.XDP, name="edge") as kernel:
        for a in EDGES:
            for b in (0, 1, -1, 3, -3, 1 << 31, -(1 << 31), 0xFFFFFFFF):
                packet = ((a % (1 << 64)).to_bytes(8, "little")
                          + (b % (1 << 64)).to_bytes(8, "little") + bytes(48))
                expected = kernel.test_run(packet)
                got = plane.run(prog, packet)
                assert (got.retval, got.data) == (expected.retval, expected.data), (a, b)


def test_unsupported_helper_is_refused_naming_it(plane: UserDataPlane) -> None:
    program = Program("fib", (
        asm.mov64(R0, 0), asm.call_helper("fib_lookup"), asm.mov64(R0, 2), asm.exit_(),
    ))
    with pytest.raises(UnsupportedHelper, match="bpf_fib_lookup"):
        plane.check_helpers(program)
    with pytest.raises(UnsupportedHelper, match="bpf_fib_lookup"):
        plane.compile(program)


def test_32bit_jumps_compare_the_low_halves(plane: UserDataPlane) -> None:
    """jmp32 ignores the high half; jmp64 does not (a value where the two disagree)."""
    for wide in (False, True):
        program = Program("j32", (
            asm.ld_imm64(R0, 0x1_0000_0005),
            asm.jmp(JmpOp.JEQ, R0, 5, "eq", wide=wide),
            asm.mov64(R0, 1), asm.exit_(),
            asm.mov64(R0, 2, label="eq"), asm.exit_(),
        ))
        packet = bytes(64)
        assert user_run(plane, program, packet) == kernel_run(program, packet)
        assert user_run(plane, program, packet)[0] == (1 if wide else 2)
