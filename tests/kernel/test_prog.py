"""Program loading, verifier errors with their log, program info and test runs."""

from __future__ import annotations

import pytest

from morpheus.ir import Program, asm, encode
from morpheus.ir.asm import R0, R1, R2, R3, R6
from morpheus.kernel import (
    LoadedProgram,
    ProgType,
    VerifierError,
    load_program,
)
from morpheus.kernel.prog import test_run as run_program


def xdp(*insns: object) -> bytes:
    return encode(Program("t", tuple(insns))).bytecode  # type: ignore[arg-type]


def test_load_and_run_returns_the_verdict() -> None:
    with load_program(xdp(asm.mov64(R0, 1), asm.exit_()), ProgType.XDP, name="drop") as prog:
        result = prog.test_run(b"\xaa" * 64)
        assert result.retval == 1
        assert result.data == b"\xaa" * 64
        info = prog.info()
        assert info.name == "drop" and len(info.tag) == 16 and info.xlated_len == 16


def test_program_that_writes_the_packet() -> None:
    # *(u8 *)data = 0x42 after the bounds check data + 1 <= data_end
    code = xdp(
        asm.ldx(4, R2, R1, 0),  # data
        asm.ldx(4, R3, R1, 4),  # data_end
        asm.mov64(R6, R2),
        asm.add64(R6, 1),
        asm.jgt(R6, R3, "out"),
        asm.st(1, R2, 0, 0x42),
        asm.mov64(R0, 2, label="out"),
        asm.exit_(),
    )
    with load_program(code, ProgType.XDP, name="poke") as prog:
        result = prog.test_run(bytes(64))
        assert result.retval == 2 and result.data is not None and result.data[0] == 0x42


def test_verifier_rejection_carries_the_log() -> None:
    bad = xdp(asm.ldx(8, R0, R2, 0), asm.exit_())  # r2 is uninitialised
    with pytest.raises(VerifierError) as info:
        load_program(bad, ProgType.XDP, name="bad")
    err = info.value
    assert "R2 !read_ok" in err.log
    assert "R2 !read_ok" in str(err)  # the summary shows the reason
    assert "load xdp program 'bad'" in str(err)


def test_huge_verifier_log_grows_the_buffer() -> None:
    # Many instructions with a log level that prints state per instruction, then an error.
    body = [asm.mov64(R1, i) for i in range(20000)]
    bad = xdp(*body, asm.ldx(8, R0, R2, 0), asm.exit_())
    with pytest.raises(VerifierError) as info:
        load_program(bad, ProgType.XDP, name="biglog", log_level=2)
    assert "R2 !read_ok" in info.value.log
    assert len(info.value.log) > 1 << 20  # more than the first 1 MiB buffer
    assert not info.value.truncated


def test_repeat_and_duration() -> None:
    with load_program(xdp(asm.mov64(R0, 2), asm.exit_()), ProgType.XDP, name="rep") as prog:
        result = run_program(prog.fd, bytes(64), repeat=100)
        assert result.retval == 2
        assert result.duration_ns < 1_000_000


def test_xdp_context_in_and_out() -> None:
    import struct

    ctx = struct.pack("<6I", 0, 64, 0, 0, 0, 0)
    with load_program(xdp(asm.mov64(R0, 2), asm.exit_()), ProgType.XDP, name="ctx") as prog:
        result = prog.test_run(bytes(64), ctx=ctx)
        assert result.ctx is not None and len(result.ctx) == 24


def test_reopen_by_id_and_xlated() -> None:
    code = xdp(asm.mov64(R0, 2), asm.exit_())
    with (
        load_program(code, ProgType.XDP, name="byid") as prog,
        LoadedProgram.from_id(prog.id) as again,
    ):
        assert again.tag == prog.tag
        assert len(again.xlated()) == 16
