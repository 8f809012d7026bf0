"""Fault injection: kill the agent at a named point of its life, for the crash tests.

`MORPHEUS_FAULT=point[:n]` in the environment makes the agent SIGKILL itself the n-th time
(default: the first) it reaches `point` — no cleanup, no flushed buffers, as a kill -9 or an
OOM kill would. Unset, `reach` costs one dictionary lookup. The points are listed in
`POINTS`; reaching one that is not listed is a programming error.
"""

from __future__ import annotations

import os
import signal

ENV = "MORPHEUS_FAULT"

POINTS = (
    # start-up
    "start.locked",  # the agent's lock is held, nothing else done
    "start.state",  # the state file names the pins about to be made
    "fresh.maps",  # the object's maps are pinned
    "fresh.guard",  # the guard map is pinned
    "fresh.sampling",  # the sampling maps are pinned
    "fresh.loaded",  # the base version is loaded, not attached
    "fresh.attached",  # attached, the link not pinned
    "fresh.link",  # the link is pinned, the state not yet rewritten
    "adopt.opened",  # a restart has opened the pinned objects
    "watcher.started",  # the write watcher is attached, not pinned
    "watcher.maps",  # its maps are pinned
    "watcher.exit",  # its exit link is pinned, not its entry link
    "watcher.pinned",  # the whole watcher is pinned
    # the cycle
    "cycle.profile",  # samples read
    "cycle.snapshot",  # map contents snapshotted
    "cycle.specialize",  # the new version's bytecode is made
    "cycle.load",  # it is loaded and verified
    "swap.before",  # about to swap
    "swap.after",  # swapped, the state file not rewritten
    "state.tmp",  # the state file's temporary copy is written, not renamed
    "state.renamed",  # the state file is replaced
    # control-plane writes
    "write.bumped",  # the guard moved, the write not made
    "write.done",  # the write is made, the closing bump not
)

_counts: dict[str, int] = {}


def _wanted() -> tuple[str, int] | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    point, _, nth = spec.partition(":")
    return point, int(nth) if nth else 1


def reach(point: str) -> None:
    """Die here if the environment asks for it."""
    assert point in POINTS, point
    wanted = _wanted()
    if wanted is None or wanted[0] != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] >= wanted[1]:
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["ENV", "POINTS", "reach"]
