"""Namespaces, veths, addresses and link state over netlink (pyroute2), never on the host."""

from __future__ import annotations

import os
import socket

import pytest

from morpheus.ir import Program, asm, encode
from morpheus.ir.asm import R0
from morpheus.kernel import Link, ProgType, load_program
from morpheus.kernel.netns import NetNamespace, NetnsError, temporary_netns
from morpheus.uapi import XDP_FLAGS_DRV_MODE


def _host_links() -> set[str]:
    return {name for _index, name in socket.if_nameindex()}


def test_veth_pair_with_chosen_indexes_mtu_and_addresses() -> None:
    host_before = _host_links()
    with temporary_netns("morpheus-nltest") as ns:
        assert os.path.exists(f"/run/netns/{ns.name}")
        ns.add_veth("na", "nb", mtu=1400, indexes=(40, 41))
        assert ns.ifindex("na") == 40 and ns.ifindex("nb") == 41
        assert set(ns.links()) == {"lo", "na", "nb"}
        ns.add_address("na", "10.77.0.1", 24)
        ns.add_address("nb", "10.77.0.2", 24)
        with ns.netlink() as ipr:
            link = ipr.get_links(40)[0]
            assert link.get("mtu") == 1400 and link.get("operstate") in ("UP", "LOWERLAYERDOWN")
            addresses = {a.get("address") for a in ipr.get_addr(index=40)}
        assert "10.77.0.1" in addresses
        # A datagram between the two ends crosses the veth: its counters move.
        before = ns.link_stats("nb")["rx_packets"]
        with ns.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"na")
            s.sendto(b"x", ("10.77.0.2", 9))
        assert ns.link_stats("nb")["rx_packets"] > before
        ns.set_up("na", False)
        with ns.netlink() as ipr:
            assert ipr.get_links(40)[0].get("operstate") == "DOWN"
        # The host never saw any of it.
        assert _host_links() == host_before
    assert not os.path.exists(f"/run/netns/{ns.name}")
    ns.delete()  # twice is harmless


def test_xdp_program_id_reads_the_attached_program_over_netlink() -> None:
    code = encode(Program("nl_pass", (asm.mov64(R0, 2), asm.exit_()))).bytecode
    with temporary_netns("morpheus-nltest") as ns, load_program(
            code, ProgType.XDP, name="nl_pass") as prog:
        ns.add_veth("xa", "xb")
        assert ns.xdp_program_id("xa") == 0
        with ns.entered():
            link = Link.xdp(prog, ns.ifindex("xa"), XDP_FLAGS_DRV_MODE)
        with link:
            assert ns.xdp_program_id("xa") == prog.info().id
        assert ns.xdp_program_id("xa") == 0


def test_errors_name_the_namespace_and_device() -> None:
    with pytest.raises(NetnsError, match="no network namespace named 'morpheus-absent'"):
        NetNamespace.named("morpheus-absent")
    with pytest.raises(NetnsError, match="does not exist"), NetNamespace("morpheus-gone").entered():
        pass
    with temporary_netns("morpheus-nltest") as ns:
        with pytest.raises(NetnsError, match="no device 'nope'"):
            ns.set_up("nope")
        ns.add_veth("da", "db")
        with pytest.raises(NetnsError, match="creating veth pair da/db"):
            ns.add_veth("da", "db")
    with pytest.raises(NetnsError, match="not a namespace this project created"):
        NetNamespace.current().delete()


def test_current_namespace_is_the_process_own_also_from_inside_another() -> None:
    own = os.stat("/proc/thread-self/ns/net").st_ino
    with temporary_netns("morpheus-nltest") as ns, ns.entered():
        assert os.stat("/proc/thread-self/ns/net").st_ino != own
        with NetNamespace.current().entered():
            assert os.stat("/proc/thread-self/ns/net").st_ino == own
