"""Tail calls redirected to the optimizer's own prog array while the user's array's guard
holds (`passes.tailcalls`): in the kernel, the redirected root runs what the own array
holds, and what the user's array holds once the guard moved."""

from __future__ import annotations

import struct

import pytest

from morpheus.ir import Program, asm, encode
from morpheus.ir.asm import R0, R1, R2, R3
from morpheus.kernel import Map, MapType, ProgType, load_program
from morpheus.obj import MapSpec
from morpheus.passes.inline import GUARD_MAP
from morpheus.passes.pipeline import PassContext
from morpheus.passes.tailcalls import Redirect, RedirectTailCalls

XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
ARRAYS = {name: MapSpec(name, MapType.PROG_ARRAY, 4, 4, 4) for name in ("user", "other")}


def _root(*, join: bool = False) -> Program:
    """Tail-call slot 0 of `user` (or, with `join`, of `user` or `other` depending on the
    receive queue), then pass."""
    pick = [asm.ld_map_fd(R2, "user")]
    if join:
        pick = [asm.ldx(4, R0, R1, 16), asm.ld_map_fd(R2, "user"), asm.jeq(R0, 0, "call"),
                asm.ld_map_fd(R2, "other")]
    return Program("root", (*pick, asm.mov64(R3, 0, label="call" if join else None),
                            asm.call_helper("tail_call"), asm.mov64(R0, XDP_PASS),
                            asm.exit_()))


def _redirect() -> RedirectTailCalls:
    return RedirectTailCalls({"user": Redirect("user@own", guard_slot=1, guard_version=4)})


def _ctx() -> PassContext:
    return PassContext(dict(ARRAYS), ProgType.XDP)


def test_a_tail_call_through_one_array_takes_the_own_array_behind_the_guard() -> None:
    out = _redirect().run(_root(), _ctx())
    refs = [(i.reference, i.imm) for i in out.insns if i.is_map_load]
    assert refs == [("user", 0), (GUARD_MAP, 8), ("user@own", 0)]
    call = next(n for n, i in enumerate(out.insns) if i.is_helper_call)
    guard_jump = next(i for i in out.insns if i.is_conditional_jump)
    assert guard_jump.reference == out.insns[call].label  # a moved guard skips the redirect
    assert out.insns[call - 1].reference == "user@own"


def test_a_tail_call_through_one_of_several_arrays_is_left_alone() -> None:
    program = _root(join=True)
    assert _redirect().run(program, _ctx()) == program


@pytest.mark.kernel
def test_the_redirected_root_follows_the_guard_in_the_kernel() -> None:
    def returning(verdict: int) -> bytes:
        return encode(Program("leaf", (asm.mov64(R0, verdict), asm.exit_())), {}).bytecode

    with Map.create(MapType.PROG_ARRAY, 4, 4, 4, name="user") as user, \
            Map.create(MapType.PROG_ARRAY, 4, 4, 4, name="own") as own, \
            Map.create(MapType.ARRAY, 4, 16, 1, name=GUARD_MAP) as guard, \
            load_program(returning(XDP_DROP), ProgType.XDP, name="users") as users, \
            load_program(returning(XDP_TX), ProgType.XDP, name="ours") as ours:
        user.update(0, users)
        own.update(0, ours)
        guard.update(0, struct.pack("<QQ", 0, 4))
        program = _redirect().run(_root(), _ctx())
        fds = {"user": user.fd.number, "user@own": own.fd.number, GUARD_MAP: guard.fd.number}
        with load_program(encode(program, fds).bytecode, ProgType.XDP, name="root") as root:
            frame = bytes(64)
            assert root.test_run(frame).retval == XDP_TX  # the guard holds: the own array
            guard.update(0, struct.pack("<QQ", 0, 6))  # the user wrote the array
            assert root.test_run(frame).retval == XDP_DROP
            user.delete(0)
            assert root.test_run(frame).retval == XDP_PASS  # the user's (empty) slot
