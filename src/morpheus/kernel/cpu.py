"""Pinning the calling thread to one CPU: per-CPU maps and LRU lists follow the CPU, so a
test run, a replay and a comparison of their map contents must all stay on one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def pinned_cpu(cpu: int | None) -> Iterator[int]:
    """Run the calling thread on `cpu` (default: the lowest it may use) until exit."""
    allowed = os.sched_getaffinity(0)
    chosen = min(allowed) if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    try:
        yield chosen
    finally:
        os.sched_setaffinity(0, allowed)
