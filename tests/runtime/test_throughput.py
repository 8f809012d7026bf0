"""The throughput meter: rates over a window from counter readings, unknown (never 0) when
the counters cannot be read, and the interface's real counters over netlink."""

from __future__ import annotations

import os
import threading

import pytest

from morpheus.kernel.netns import NetNamespace
from morpheus.runtime.throughput import (
    LinkCounters,
    LinkSample,
    ThroughputError,
    ThroughputMeter,
)


class FakeCounters:
    source = "fake counters"

    def __init__(self, readings: list[LinkSample | Exception]) -> None:
        self.readings = readings

    def read(self) -> LinkSample:
        item = self.readings.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def test_rate_over_the_window_and_history() -> None:
    readings: list[LinkSample | Exception] = [
        LinkSample(10.0 + i * 0.5, 1000.0 + i * 0.5, i * 50_000, i * 3_200_000)
        for i in range(5)]
    readings.insert(2, LinkSample(10.6, 1000.6, 62_000, 0))  # a reading between periods
    meter = ThroughputMeter(FakeCounters(readings), period=0.5, window=1.0)
    for _ in range(5):
        meter.sample()
    rate = meter.rate()  # the last reading is old by the real clock: takes the sixth
    assert rate.pps == pytest.approx(100_000) and rate.bps == pytest.approx(6_400_000)
    assert rate.window_s == pytest.approx(1.0) and rate.source == "fake counters"
    # One history point per period; the reading in between starts no rate of its own.
    assert [p for _, p in meter.history()] == [pytest.approx(100_000)] * 4


def test_unreadable_counters_make_the_rate_unknown() -> None:
    meter = ThroughputMeter(FakeCounters([LinkSample(0.0, 0.0, 0, 0),
                                          ThroughputError("port9 is gone")]),
                            period=0.0, window=1.0)
    meter.sample()
    rate = meter.rate()
    assert rate.pps is None and rate.error == "port9 is gone"


def test_a_counter_reset_starts_a_new_series() -> None:
    readings: list[LinkSample | Exception] = [LinkSample(0.0, 0.0, 900, 0),
                                              LinkSample(1.0, 1.0, 10, 0),
                                              LinkSample(2.0, 2.0, 110, 0)]
    meter = ThroughputMeter(FakeCounters(readings), period=1e9)
    for _ in range(3):
        meter.sample()
    assert meter.rate().pps == pytest.approx(100)


@pytest.mark.kernel
def test_link_counters_read_a_veth_in_a_namespace() -> None:
    ns = NetNamespace.create(f"mph-tp{os.getpid()}")
    try:
        ns.add_veth("tpa", "tpb")
        counters = LinkCounters("tpa", ns.name)
        try:
            first = counters.read()
            assert first.packets >= 0 and "tpa" in counters.source and ns.name in \
                counters.source
            # The meter reads from a thread of its own: the socket must still see the
            # namespace there (pyroute2 binds sockets per thread).
            from_thread: list[object] = []
            reader = threading.Thread(target=lambda: from_thread.append(counters.read()))
            reader.start()
            reader.join(10)
            assert len(from_thread) == 1 and from_thread[0].packets >= 0  # type: ignore[attr-defined]
            missing = LinkCounters("nope", ns.name)
            with pytest.raises(ThroughputError, match="nope"):
                missing.read()
            missing.close()
        finally:
            counters.close()
    finally:
        ns.delete()
