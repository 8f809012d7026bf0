"""Checking a candidate version against the unspecialized program before it goes live.

The agent's pre-swap check is the project's one equivalence checker (`morpheus.world`), on
the same check plan `optimize`'s check runs (`world.traces.check_plan`): the agent's check
packets (the user's --check-trace) on the interface the program serves, then near-miss
keys of every site the candidate inlined, moves, unseen flows and edge cases (the NF's,
when the agent is told which NF it runs, else derived from the check packets), and the
control-plane writes that change guarded inlined entries between them. Both programs run
from one snapshot of the live maps (the maps the data plane writes are copied once, then
cloned per program; maps it only reads are shared), on one CPU, with nondeterministic
helpers made deterministic and redirects recorded. Compared: verdict, output bytes and
length, redirect target of every packet, and every key and value of every map either
program writes. Neither the live maps nor the other program's side effects are touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..analysis import ProgramFacts
from ..ir import Program
from ..kernel import FD, Map
from ..obj import ObjectSpec, ProgramSpec
from ..world import CheckRequest, CheckResult, Side, Write, check
from ..world.traces import (
    AFTER_WRITES,
    HELD_BACK,
    CheckPlan,
    check_plan,
    frames_trace,
    isolated_packets,
    joined_plans,
)

__all__ = [
    "CandidatePair",
    "CheckInputs",
    "CheckResult",
    "candidate_plan",
    "chain_plan",
    "check_candidate",
]


@dataclass(frozen=True)
class CandidatePair:
    """The running program's spec and object, its unspecialized and its candidate code;
    `tail_programs`: the candidate's versions of the programs it reaches by tail calls (by
    name; the base runs the object's)."""

    prog: ProgramSpec
    spec: ObjectSpec
    base: Program
    candidate: Program
    btf_fd: FD | None = None
    tail_programs: Mapping[str, Program] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckInputs:
    """What the agent checks a candidate on: its check packets, the interface they arrive
    on, and what it knows of the candidate and the program.

    `specialization` (an `optimizer.Specialization`) names the inlined sites (near-miss keys)
    and the guarded entries (control-plane writes); `facts` traces the sites' keys to packet
    bytes. `nf` and `config`, when the agent runs a known NF, give the held-back flows and the
    NF's edge cases; `ports` are further ifindexes the program serves. `enrich` False runs
    the check packets alone."""

    frames: Sequence[bytes]
    ingress: int
    facts: ProgramFacts | None = None
    specialization: Any = None
    nf: Any = None
    config: Any = None
    ports: Sequence[int] = ()
    enrich: bool = True
    held_back: int = HELD_BACK


def candidate_plan(inputs: CheckInputs) -> CheckPlan:
    """The packets and control-plane writes of the agent's check (`world.traces.check_plan`
    over the agent's check packets)."""
    trace = frames_trace(inputs.frames, inputs.ingress, inputs.nf.name if inputs.nf else "")
    if not inputs.enrich:
        return CheckPlan(trace, [])
    return check_plan(trace, inputs.specialization, nf=inputs.nf, facts=inputs.facts,
                      config=inputs.config, ports=(inputs.ingress, *inputs.ports),
                      held_back=inputs.held_back)


def chain_plan(inputs: CheckInputs, callees: Sequence[tuple[ProgramFacts, Any]],
               emptied: Sequence[Write] = ()) -> CheckPlan:
    """The root's check plan followed by one for each program it tail-calls ((facts,
    specialization) of each specialized callee): their near-miss keys and guarded writes
    come from their own inlined sites. Then the `emptied` writes (deletes of the slots of
    the user's prog arrays, moving their guards) and the check packets again: the root
    must follow the user's array from then on, not keep running the agent's callees."""
    plans = [candidate_plan(inputs)]
    for facts, specialization in callees:
        plans.append(candidate_plan(replace(inputs, facts=facts,
                                            specialization=specialization)))
    if emptied and inputs.frames:
        again = frames_trace(inputs.frames[:AFTER_WRITES], inputs.ingress)
        plans.append(CheckPlan(again, [replace(w, after=-1) for w in emptied]))
    return joined_plans(plans)


def check_candidate(maps: Mapping[str, Map], inputs: CheckInputs, pair: CandidatePair,
                    plan: CheckPlan | None = None) -> CheckResult:
    """Run the base and the candidate on the check plan of `inputs` (`plan`, if the caller
    built it already), from a snapshot of the live `maps`; compare everything they did.

    Call it inside the network namespace of the interface `inputs.ingress` names."""
    def side(label: str, program: Program, tail: Mapping[str, Program]) -> Side:
        return Side(label, pair.prog, program, spec=pair.spec, btf_fd=pair.btf_fd,
                    tail_programs=tail)

    plan = plan if plan is not None else candidate_plan(inputs)
    return check(CheckRequest(maps, side("base", pair.base, {}),
                              side("candidate", pair.candidate, pair.tail_programs),
                              plan.packets, snapshot=True, writes=plan.writes,
                              isolated=isolated_packets(plan.trace)))
