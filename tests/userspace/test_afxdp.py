"""AF_XDP input: frames sent into a veth inside a namespace reach the user-space program
through our redirect program and an XSKMAP, in copy mode, and XDP_TX sends them back."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from morpheus.ir import Program, asm
from morpheus.ir.asm import R0, R1, R2, R3, R4
from morpheus.kernel.netns import NetNamespace
from morpheus.userspace.afxdp import XskPort
from morpheus.userspace.dataplane import UserDataPlane

pytestmark = pytest.mark.kernel

FRAME = bytes.fromhex("020000000001" "020000000002" "0800") + bytes(range(50))


@pytest.fixture
def namespace() -> Iterator[NetNamespace]:
    ns = NetNamespace.create("morpheus-xsk")
    try:
        ns.add_veth("xa", "xb")
        # A veth that comes up sends IPv6 neighbour and MLD messages of its own, seconds
        # later; they would reach the socket beside the test's frames.
        with ns.entered():
            for iface in ("xa", "xb"):
                with open(f"/proc/sys/net/ipv6/conf/{iface}/disable_ipv6", "w") as f:
                    f.write("1")
        yield ns
    finally:
        ns.delete()


def _serve(port: XskPort, expected: int, timeout: float = 5.0) -> int:
    total, deadline = 0, time.monotonic() + timeout
    while total < expected and time.monotonic() < deadline:
        total += port.poll()
    return total


def test_frames_reach_the_program_and_get_its_verdicts(namespace: NetNamespace) -> None:
    # Drop odd-length frames, pass the others up the stack.
    program = Program("odd", (
        asm.ldx(4, R2, R1, 0), asm.ldx(4, R3, R1, 4), asm.mov64(R4, R3), asm.alu64(0x10, R4, R2),
        asm.and64(R4, 1), asm.mov64(R0, 2), asm.jeq(R4, 0, "out"), asm.mov64(R0, 1),
        asm.exit_(label="out"),
    ))
    with namespace.entered(), UserDataPlane.create() as plane:
        prog = plane.compile(program)
        port = XskPort(plane, prog, namespace.ifindex("xa"))
        try:
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
                s.bind(("xb", 0))
                for n in range(100):
                    s.send(FRAME + bytes(n % 2))
            assert _serve(port, 100) == 100
            assert port.verdicts["drop"] == 50 and port.verdicts["pass"] == 50
        finally:
            port.close()


def test_xdp_tx_sends_the_frame_back(namespace: NetNamespace) -> None:
    with namespace.entered(), UserDataPlane.create() as plane:
        prog = plane.compile(Program("tx", (asm.mov64(R0, 3), asm.exit_())))
        port = XskPort(plane, prog, namespace.ifindex("xa"))
        try:
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                               socket.htons(0x0800)) as s:
                s.bind(("xb", 0))
                s.settimeout(2.0)
                s.send(FRAME)
                assert _serve(port, 1) == 1
                port.poll()
                back = s.recv(2048)
                while back != FRAME:  # our own transmission may be seen first
                    back = s.recv(2048)
            assert port.verdicts["tx"] == 1
        finally:
            port.close()
