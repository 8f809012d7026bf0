"""Per-packet cost of TC (sched_cls) programs: one BPF_PROG_TEST_RUN per packet.

The XDP harness cannot carry an skb program: live-frames mode is XDP-only, and `repeat`
on a sched_cls program reuses one skb, so a program that rewrites the packet would see its
own output on the next repeat (KERNEL-FACTS, "TC test runs"). Every packet therefore gets
its own call with fresh bytes and length, and the cost is the kernel-reported duration of
that one run (the timer's ~50 ns are in every packet of both programs compared, like the
XDP harness's own overhead, and `SkbReplay(None, ...)` measures them with an empty program
so they can be subtracted).

The interface is `Replay`'s (run, records, verdicts, reset, close), so the benchmark and
the profiler drive both the same way (`open_replay` picks one by program type).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Self

from ..ir import Program, asm
from ..ir.asm import R0
from ..kernel import FD, LoadedProgram, Map, load_btf
from ..kernel.cpu import pinned_cpu
from ..kernel.netns import NetNamespace
from ..loader import load_program_spec
from ..obj import ProgramSpec
from ..uapi import ProgType
from .replay import MAX_PKT_LEN, Replay, ReplayError, ReplayResult

TC_ACT_OK = 0


def is_skb_program(prog: ProgramSpec | None) -> bool:
    """A program BPF_PROG_TEST_RUN feeds an skb (TC classifier or action)."""
    return prog is not None and ProgType(prog.type).is_tc


class SkbReplay:
    """A TC program loaded against its maps, with a trace, ready to run packet by packet.

    `guest` None loads an empty program (returns TC_ACT_OK): the per-call overhead.
    `share_trace_with` is accepted for `Replay`'s interface; the frames are plain bytes
    here, so there is nothing to share.
    """

    def __init__(self, guest: ProgramSpec | None, guest_btf: object,
                 guest_maps: Mapping[str, Map], frames: Sequence[bytes], *,
                 program: Program | None = None, record_latency: bool = False,
                 ingress_ifindex: int = 0, cpu: int = 0,
                 namespace: NetNamespace | None = None,
                 share_trace_with: object = None, **_xdp_only: object) -> None:
        if not frames:
            raise ReplayError("the trace is empty")
        longest = max(len(f) for f in frames)
        if longest > MAX_PKT_LEN:
            raise ReplayError(f"a packet of {longest} bytes exceeds the replay's {MAX_PKT_LEN}")
        if min(len(f) for f in frames) < 14:
            raise ReplayError("packets shorter than an Ethernet header cannot be replayed")
        self.frames = list(frames)
        self.cpu = cpu
        self.record_latency = record_latency
        # The skb's ifindex is the loopback device of the caller's namespace; an ingress
        # port only matters to XDP programs here (none of ours read skb->ifindex).
        self.ingress_ifindex = ingress_ifindex
        self.namespace = namespace
        self._btf_fd: FD | None = None
        self._records: list[tuple[int, int]] = [(0, 0)] * len(self.frames)
        if guest is None:
            self.program: LoadedProgram = _empty_program()
        else:
            blob = getattr(guest_btf, "blob", None)
            if blob is not None:
                self._btf_fd = load_btf(blob(), what=f"BTF of {guest.name}")
            try:
                self.program = self._load(guest, guest_maps, program)
            except BaseException:
                self.close()
                raise
        self.instructions = sum(i.width for i in (program or (guest.program if guest else None)
                                                  or Program("empty", ())).insns)

    def _load(self, guest: ProgramSpec, maps: Mapping[str, Map],
              program: Program | None) -> LoadedProgram:
        used = guest.with_program(program).map_names if program is not None else guest.map_names
        missing = sorted(n for n in used if n not in maps)
        if missing:
            raise ReplayError(f"program {guest.name} uses map {missing[0]!r}, which was not "
                              "given")
        if self.namespace is not None:
            with self.namespace.entered():
                return load_program_spec(guest, maps, program=program, btf_fd=self._btf_fd)
        return load_program_spec(guest, maps, program=program, btf_fd=self._btf_fd)

    def reset(self) -> None:
        """Nothing carries over between passes but the maps (as with `Replay`)."""
        self._records = [(0, 0)] * len(self.frames)

    def run(self, passes: int = 1, *, reset: bool = True) -> ReplayResult:
        """Run every packet of the trace `passes` times, each in its own call."""
        total = 0
        verdicts: Counter[int] = Counter()
        with pinned_cpu(self.cpu):
            if self.namespace is not None:
                with self.namespace.entered():
                    total = self._passes(passes, verdicts)
            else:
                total = self._passes(passes, verdicts)
        count = len(self.frames)
        return ReplayResult(count, total / (count * passes),
                            {v: n // passes for v, n in verdicts.items()}, 0)

    def _passes(self, passes: int, verdicts: Counter[int]) -> int:
        total = 0
        for _ in range(passes):
            records = []
            for frame in self.frames:
                result = self.program.test_run(frame)
                total += result.duration_ns
                verdicts[result.retval] += 1
                records.append((result.retval,
                                result.duration_ns if self.record_latency else 0))
            self._records = records
        return total

    def records(self) -> list[tuple[int, int]]:
        """(verdict, ns) of each packet in the last pass (ns is 0 without record_latency)."""
        return list(self._records)

    def verdicts(self) -> list[int]:
        return [v for v, _ in self._records]

    def close(self) -> None:
        program = getattr(self, "program", None)
        if program is not None:
            program.close()
        if self._btf_fd is not None:
            self._btf_fd.close()
            self._btf_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _empty_program() -> LoadedProgram:
    spec = ProgramSpec("tc_empty", "tc", ProgType.SCHED_CLS, 0, 0, "GPL", 0,
                       Program("tc_empty", (asm.mov64(R0, TC_ACT_OK), asm.exit_())))
    return load_program_spec(spec, {})


def open_replay(guest: ProgramSpec | None, guest_btf: object, guest_maps: Mapping[str, Map],
                frames: Sequence[bytes], **options: object) -> Replay | SkbReplay:
    """The replay for the program's type: the XDP harness, or one call per packet for TC.
    With no program (the overhead measurement), the type of `share_trace_with`'s."""
    shared = options.get("share_trace_with")
    tc = is_skb_program(guest) if guest is not None else isinstance(shared, SkbReplay)
    if tc:
        return SkbReplay(guest, guest_btf, guest_maps, frames, **options)  # type: ignore[arg-type]
    return Replay(guest, guest_btf, guest_maps, frames, **options)  # type: ignore[arg-type]
