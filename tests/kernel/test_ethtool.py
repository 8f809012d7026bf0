"""Driver statistics: a veth counts the XDP frames its peer's full ring refused, so that a
loss measurement can tell load drops from lost packets."""

from __future__ import annotations

import struct
import time

import pytest

from morpheus.bench.replay import Replay
from morpheus.kernel import KernelError, Link, Map, MapType, ProgType, load_program
from morpheus.kernel.ethtool import ethtool_stats
from morpheus.kernel.netns import NetNamespace
from morpheus.uapi import XDP_FLAGS_DRV_MODE
from tests.kernel.frame_counter import TEST_ETHERTYPE, frame_counter

pytestmark = pytest.mark.kernel


def test_frames_a_full_ring_refused_are_counted_and_account_for_every_missing_frame(
) -> None:
    ns = NetNamespace.create("mph-ethtool")
    try:
        ns.add_veth("gen", "sut")
        counter = Map.create(MapType.ARRAY, 4, 8, 1, name="counter")
        with ns.entered(), counter, \
                load_program(frame_counter(counter, spins=3000), ProgType.XDP) as slow, \
                Link.xdp(slow, ns.ifindex("sut"), XDP_FLAGS_DRV_MODE):
            before = ethtool_stats("gen")
            assert "tx_queue_0_xdp_xmit_errors" in before
            frame = bytes(6) + bytes.fromhex("020000000001") + TEST_ETHERTYPE + bytes(50)
            sent = refused = 0
            with Replay(None, None, {}, [frame] * 256, namespace=ns,
                        redirect_ifindex=ns.ifindex("gen"), batch_size=256) as gen:
                # Batches as large as the receiver's ring overflow it now and then; on a quiet
                # machine the receiver keeps up longer, so up to 200 bursts (it stops at the
                # first refused frame).
                for _ in range(200):
                    gen.run(50)
                    sent += 256 * 50
                    refused = sum(v - before.get(k, 0) for k, v in ethtool_stats("gen").items()
                                  if k.endswith("xdp_xmit_errors"))
                    if refused:
                        break
            time.sleep(0.2)  # let the receiver drain its ring
            received = struct.unpack("<Q", counter.lookup(0))[0]  # type: ignore[arg-type]
        assert refused > 0, "the slow receiver never fell behind: no drop to count"
        assert received + refused == sent  # every frame: handled, or refused and counted
    finally:
        ns.delete()


def test_an_unknown_device_gives_a_clear_error() -> None:
    with pytest.raises(KernelError, match="no-such-dev"):
        ethtool_stats("no-such-dev")
