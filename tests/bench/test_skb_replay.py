"""TC programs are replayed one call per packet, with fresh bytes each time, and attach
through tcx links."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from morpheus.bench.skb_replay import SkbReplay, open_replay
from morpheus.kernel import Link
from morpheus.kernel.netns import NetNamespace
from morpheus.loader import load_collection, load_program_spec
from morpheus.obj import read_object
from morpheus.traffic.packet import ETH_P_IP, IPPROTO_UDP, ethernet, ipv4, l4, mac

pytestmark = pytest.mark.kernel


def _frames(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        segment = l4(IPPROTO_UDP, "10.0.0.1", "10.0.0.2", 1000 + i, 53 + i % 4, b"p" * (i % 7))
        out.append(ethernet(mac("02:00:00:00:00:02"), mac("02:00:00:00:00:01"), ETH_P_IP,
                            ipv4("10.0.0.1", "10.0.0.2", IPPROTO_UDP, segment)))
    return out


def test_replay_of_a_rewriting_tc_program_matches_individual_runs(
        test_objects: dict[str, Path]) -> None:
    spec = read_object(test_objects["tc.v3"])
    prog = spec.program("tc_dscp_mark")
    frames = _frames(200)
    with load_collection(spec, programs=[]) as coll:
        coll.maps["port_dscp"].update(struct.pack("<H", 53), b"\x2e")
        coll.maps["port_dscp"].update(struct.pack("<H", 55), b"\x0a")
        with load_program_spec(prog, coll.maps, btf_fd=coll.btf_fd) as single:
            expected = [single.test_run(f).retval for f in frames]
            rewritten = [single.test_run(f).data for f in frames]
        assert sum(a != b for a, b in zip(rewritten, frames, strict=True)) == 100
        replay = open_replay(prog, spec.btf, coll.maps, frames, record_latency=True)
        assert isinstance(replay, SkbReplay)
        with replay:
            result = replay.run(passes=3)
            assert result.packets == 200 and result.verdicts == {0: 200}
            assert replay.verdicts() == expected
            assert all(ns > 0 for _, ns in replay.records())
            with open_replay(None, None, {}, frames, share_trace_with=replay) as empty:
                assert isinstance(empty, SkbReplay)
                assert empty.run().ns_per_packet < result.ns_per_packet * 4


def test_tc_program_attaches_through_a_tcx_link(test_objects: dict[str, Path]) -> None:
    spec = read_object(test_objects["tc.v3"])
    ns = NetNamespace.create("mph-tcx")
    try:
        ns.add_veth("tcx0", "tcx1", up=True)
        with load_collection(spec) as coll, ns.entered():
            link = Link.tcx(coll.programs["tc_ethertype_acct"], ns.ifindex("tcx0"))
            try:
                assert link.info().prog_id == coll.programs["tc_ethertype_acct"].id
                link.update(coll.programs["tc_dscp_mark"])
                assert link.info().prog_id == coll.programs["tc_dscp_mark"].id
            finally:
                link.close()
    finally:
        ns.delete()
