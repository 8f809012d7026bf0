"""XDP links on a veth pair inside a namespace the test creates and removes."""

from __future__ import annotations

import errno
import struct

import pytest

from morpheus.ir import Program, asm, encode
from morpheus.ir.asm import R0
from morpheus.kernel import KernelError, Link, LoadedProgram, ProgType, load_program
from morpheus.kernel.netns import NetNamespace, veth_pair
from morpheus.kernel.prog import test_run as run_program
from morpheus.uapi import F_TEST_XDP_LIVE_FRAMES, XDP_FLAGS_DRV_MODE


def returning(verdict: int, name: str) -> LoadedProgram:
    code = encode(Program(name, (asm.mov64(R0, verdict), asm.exit_()))).bytecode
    return load_program(code, ProgType.XDP, name=name)


def test_netns_is_removed_even_when_the_body_fails() -> None:
    with pytest.raises(RuntimeError), veth_pair() as (ns, _a, _b):
        name = ns.name
        raise RuntimeError("boom")
    from pathlib import Path

    assert not Path(f"/run/netns/{name}").exists()


def test_attach_update_detach() -> None:
    with veth_pair() as (ns, a, _b), returning(2, "pass") as p1, returning(1, "drop") as p2:
        with ns.entered():
            link = Link.xdp(p1, ns.ifindex(a), XDP_FLAGS_DRV_MODE)
        with link:
            assert link.info().prog_id == p1.id
            link.update(p2, expected_old=p1)
            assert link.info().prog_id == p2.id
            with pytest.raises(KernelError) as info:
                link.update(p1, expected_old=p1)  # p1 is no longer attached
            assert info.value.errno == errno.EPERM
            link.detach()
            assert link.info().ifindex == 0


def test_live_frames_run_the_verdict() -> None:
    """Live-frames mode on an attached program: verdicts are executed, DROP frames vanish."""
    with veth_pair(up=False) as (ns, a, _b), returning(1, "sink") as prog:
        with ns.entered():
            link = Link.xdp(prog, ns.ifindex(a))
        with link:
            result = run_program(
                prog.fd,
                bytes(64),
                repeat=1000,
                data_out_size=0,
                flags=F_TEST_XDP_LIVE_FRAMES,
                batch_size=64,
            )
            assert result.retval == 0  # live frames report no verdict, only errors


def test_namespace_helpers_keep_the_host_clean() -> None:
    ns = NetNamespace.create("morpheus-unit")
    try:
        ns.add_veth("x0", "x1")
        assert ns.ifindex("x0") > 0
        assert "x0" in ns.links()
    finally:
        ns.delete()
    assert struct.calcsize("<I") == 4
