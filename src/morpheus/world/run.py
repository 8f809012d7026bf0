"""Running a harnessed program in a world, one packet at a time, pinned to one CPU.

Every packet is one BPF_PROG_TEST_RUN with fresh bytes and length (never `repeat`, which
would feed a rewriting program its own output). Before it the runner writes the clock map
(the harness's helper results for this packet); after it, it reads the redirect record.
The calling thread is pinned to one CPU for the whole run,
so per-CPU maps and LRU lists see every packet on the same CPU in both programs.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from ..ir import Program
from ..kernel import FD, KernelError, LoadedProgram, xdp_ctx
from ..kernel.maps import MapSlot
from ..kernel.prog import XDP_MD, TestRunner
from ..loader import create_map, load_program_spec
from ..obj import ProgramSpec
from ..uapi import ProgType
from .harness import (
    CLOCK_MAP,
    RECORD,
    REDIRECT_MAP,
    Clocks,
    Harnessed,
    Redirect,
    decode_record,
    harness,
    harness_map_specs,
)
from .state import World

XDP_REDIRECT = 4
TC_ACT_REDIRECT = 7


@dataclass(frozen=True)
class Outcome:
    """What one packet did: the verdict, the output bytes (their length is the output
    length) and, for a redirect verdict, where to."""

    verdict: int
    data: bytes
    redirect: Redirect | None = None


# The verdict of a frame BPF_PROG_TEST_RUN refuses to build an skb from (EINVAL: an IPv4
# ethertype with no room for the IP header, for one): the program never sees it, on either
# side, so both record this and the check compares on.
REFUSED_BY_TEST_RUN = -1


def redirect_verdict(prog_type: int) -> int:
    return XDP_REDIRECT if prog_type == ProgType.XDP else TC_ACT_REDIRECT


def add_harness_maps(world: World) -> None:
    """The harness's maps in `world` (created once per world, shared by its programs)."""
    for name, spec in harness_map_specs().items():
        if name not in world.maps:
            world.maps[name] = world.stack.enter_context(create_map(spec))


class Runner:
    """One program, harnessed, loaded against a world."""

    def __init__(self, world: World, prog: ProgramSpec, program: Program | None, *,
                 btf_fd: FD | None, clocks: Clocks, cpu: int) -> None:
        self.world = world
        self.prog_type = prog.type
        self.harnessed: Harnessed = harness(program or prog.program, prog.type)
        add_harness_maps(world)
        self.clocks = clocks
        self.cpu = cpu
        self._clock = MapSlot(world.maps[CLOCK_MAP], 0)
        self._record = MapSlot(world.maps[REDIRECT_MAP], 0)
        self._calls = 0
        self.loaded: LoadedProgram = load_program_spec(
            prog, world.maps, program=self.harnessed.program, btf_fd=btf_fd)
        self._xdp = prog.type == ProgType.XDP
        self._runner = TestRunner(self.loaded.fd, ctx_size=XDP_MD.size if self._xdp else 0)
        self._redirect = redirect_verdict(prog.type)

    def run(self, index: int, frame: bytes, ingress: int) -> Outcome:
        """Packet number `index` of the run, arriving on `ingress` (0: no context)."""
        if self.harnessed.nondeterministic_calls:
            self._clock.write(self.clocks.encode(index, self.cpu))
        ctx = xdp_ctx(ingress, len(frame)) if ingress and self._xdp else None
        try:
            verdict, data = self._runner.run(frame, ctx)
        except KernelError as exc:
            if self._xdp or exc.errno != errno.EINVAL:
                raise
            return Outcome(REFUSED_BY_TEST_RUN, b"")
        redirect = None
        if self.harnessed.redirect_calls:
            raw = self._record.read()
            calls = RECORD.unpack_from(raw)[0]
            if verdict == self._redirect:
                redirect = decode_record(raw, self.harnessed.map_tags, self._calls)
            self._calls = calls
        return Outcome(verdict, data, redirect)

    def close(self) -> None:
        self.loaded.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
