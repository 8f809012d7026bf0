"""world.run on TC programs: frames BPF_PROG_TEST_RUN cannot build an skb from."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from morpheus.loader import load_collection
from morpheus.obj import read_object
from morpheus.traffic.packet import ETH_P_IP, IPPROTO_UDP, ethernet, ipv4, l4, mac
from morpheus.world import CheckRequest, Side, check
from morpheus.world.run import REFUSED_BY_TEST_RUN

pytestmark = pytest.mark.kernel


def test_a_frame_the_skb_test_run_refuses_is_recorded_alike_and_the_rest_compared(
        test_objects: dict[str, Path]) -> None:
    segment = l4(IPPROTO_UDP, "10.0.0.1", "10.0.0.2", 4000, 53, b"q" * 10)
    frame = ethernet(mac("02:00:00:00:00:02"), mac("02:00:00:00:00:01"), ETH_P_IP,
                     ipv4("10.0.0.1", "10.0.0.2", IPPROTO_UDP, segment))
    runt = frame[:14]  # an IPv4 ethertype and no IP header: the kernel refuses the skb
    spec = read_object(test_objects["tc.v3"])
    prog = spec.program("tc_dscp_mark")
    with load_collection(spec, programs=[]) as coll:
        coll.maps["port_dscp"].update(struct.pack("<H", 53), b"\x2e")
        side = Side("base", prog, spec=spec, btf_fd=coll.btf_fd)
        packets = [(runt, 0), (frame, 0), (runt, 0)]
        same = check(CheckRequest(coll.maps, side, Side("candidate", prog, spec=spec,
                                                        btf_fd=coll.btf_fd), packets))
        assert same.equivalent, same.first
        assert same.base_verdicts[0] == same.base_verdicts[2] == REFUSED_BY_TEST_RUN
        assert same.base_verdicts[1] != REFUSED_BY_TEST_RUN
        # A program that differs on the frames it does see is still caught.
        other = check(CheckRequest(coll.maps, side, Side(
            "candidate", spec.program("tc_ethertype_acct"), spec=spec, btf_fd=coll.btf_fd),
            packets))
        assert not other.equivalent and other.first is not None and other.first[0] == 1
