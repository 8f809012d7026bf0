"""Trace replay in native code: every frame copied fresh into the frame slot and run through
the program by the runtime's loop (`rt_replay`), no Python per packet.

This is the user-space counterpart of the kernel's replay harness (bench.replay): the same
trace, fresh bytes and length for every packet, timed around the whole pass.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass

from .dataplane import UserDataPlane, UserProgram
from .jit import engine


class _Trace(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_void_p), ("offset", ctypes.c_void_p),
                ("len", ctypes.c_void_p), ("count", ctypes.c_uint32),
                ("ingress", ctypes.c_uint32)]


class NativeTrace:
    """Frames laid out for the runtime: one buffer, offsets and lengths."""

    def __init__(self, frames: Sequence[bytes], ingress: int) -> None:
        if not frames:
            raise ValueError("an empty trace cannot be replayed")
        offsets, total = [], 0
        for f in frames:
            offsets.append(total)
            total += len(f)
        self.blob = ctypes.create_string_buffer(b"".join(frames), total)
        self.offsets = (ctypes.c_uint32 * len(frames))(*offsets)
        self.lens = (ctypes.c_uint32 * len(frames))(*(len(f) for f in frames))
        self.struct = _Trace(ctypes.addressof(self.blob), ctypes.addressof(self.offsets),
                             ctypes.addressof(self.lens), len(frames), ingress)
        self.count = len(frames)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    ns_total: int
    packets: int

    @property
    def ns_per_packet(self) -> float:
        return self.ns_total / self.packets


class UserReplay:
    """Replays `frames` through `program` on `plane` (maps change as the program writes)."""

    def __init__(self, plane: UserDataPlane, program: UserProgram | None,
                 trace: NativeTrace) -> None:
        self.plane = plane
        self.program = program
        self.trace = trace
        self._verdicts = (ctypes.c_uint32 * trace.count)()
        self._api = engine().api

    def run(self, passes: int = 1, *, record: bool = False) -> ReplayResult:
        plane = self.plane
        assert plane._frames is not None
        args = (ctypes.byref(self.trace.struct), plane._frames.address,
                ctypes.addressof(plane._ctx), ctypes.addressof(plane.env))
        if self.program is None:
            ns = self._api["rt_replay_overhead"](*args, passes)
        else:
            ns = self._api["rt_replay"](self.program.entry_address, *args, passes,
                                        self._verdicts if record else None)
        return ReplayResult(ns, self.trace.count * passes)

    def verdicts(self) -> list[int]:
        """Verdicts of the last pass run with `record=True`."""
        return list(self._verdicts)
