"""Executed instructions per packet, and the floor of the veth path.

`executed_insns` replays a trace once through a block-counting copy of a program
(`passes.blockcount`), from the state `prepare` gives, and divides the count by the
packets. `drop_floor_mpps` measures, over the same veth pair as the NF's throughput runs,
a program that drops every frame: what the generator and the driver cost without any
program work, so that a reader sees which share of the end-to-end time the NF is.
"""

from __future__ import annotations

import statistics
from typing import Any

from ..ir import Program, asm
from ..ir.asm import R0
from ..nf import NetworkFunction
from ..passes.blockcount import COUNTER_MAP, CountBlocks
from ..passes.pipeline import PassContext
from ..traffic.generate import Trace
from ..world.environment import Subject, open_environment, warm_up
from .compare import _ingress, _throughput_devices
from .replay import Replay
from .throughput import Throughput


def executed_insns(subject: Subject, trace: Trace, nf: NetworkFunction | None,
                   prepare: Any = None) -> float:
    """Instructions of `subject`'s program executed per packet of `trace` (one pass)."""
    spec = subject.load_spec()
    prog = subject.program_spec()
    program = subject.program or prog.program
    ctx = PassContext({**spec.maps, **subject.extra_maps}, prog.type)
    counted = CountBlocks().run(program, ctx)
    counting = Subject(subject.label, subject.object_path, subject.program_name,
                       program=counted,
                       extra_maps={**subject.extra_maps, COUNTER_MAP: ctx.maps[COUNTER_MAP]})
    environment = open_environment(counting, nf)
    try:
        warm_up(environment, subject, trace)
        if prepare is not None:
            prepare(environment)
        with Replay(prog, spec.btf, environment.maps, trace.frames, program=counted,
                    ingress_ifindex=_ingress(trace, nf),
                    namespace=environment.namespace) as replay:
            result = replay.run()
        raw = environment.maps[COUNTER_MAP].lookup(0)
        assert isinstance(raw, bytes)
        return int.from_bytes(raw[:8], "little") / max(result.packets, 1)
    finally:
        environment.close()


def drop_program(subject: Subject) -> Program:
    """`return XDP_DROP`, carrying the BTF function record of `subject`'s program."""
    first = (subject.program or subject.program_spec().program).insns[0]
    return Program(subject.program_spec().name, (
        asm.mov64(R0, 1, label=first.label).with_meta_object(first.meta), asm.exit_()))


def drop_floor_mpps(subject: Subject, trace: Trace, nf: NetworkFunction,
                    rounds: int) -> dict[str, float]:
    """Mpps of an XDP_DROP program over the veth pair the NF's throughput runs use."""
    environment = open_environment(subject, nf)
    try:
        rx, tx = _throughput_devices(_ingress(trace, nf))
        values = []
        with Throughput(subject.program_spec(), subject.load_spec().btf, environment.maps,
                        trace.frames, environment.namespace, rx, tx,
                        program=drop_program(subject)) as tput:
            for _ in range(rounds):
                values.append(tput.run().mpps)
        return {"min": round(min(values), 3), "median": round(statistics.median(values), 3),
                "max": round(max(values), 3)}
    finally:
        environment.close()
