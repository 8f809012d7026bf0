"""The agent's pre-swap check (the project's one checker, `morpheus.world`) refuses
miscompiled candidates and lets the correct one through, on the router under traffic."""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass
from typing import ClassVar

import pytest

from morpheus.bench.replay import Replay
from morpheus.ir import Program
from morpheus.nf import get
from morpheus.nf.env import NFEnv
from morpheus.passes.pipeline import PassContext
from morpheus.runtime.agent import Agent, AgentOptions
from morpheus.traffic.generate import generate
from tests.world import mutants as M

pytestmark = pytest.mark.kernel


@dataclass(frozen=True)
class Miscompile:
    """A pass that applies one mutation at the end of the pipeline."""

    mutation: M.Mutation
    name: ClassVar[str] = "miscompile"

    def run(self, program: Program, ctx: PassContext) -> Program:
        mutant = self.mutation.apply(program)
        assert mutant is not None and not isinstance(mutant, tuple), self.mutation.name
        return mutant


AGENT_MUTANTS = (
    M.Mutation("inlined leaf points at another entry", M.inlined_wrong_entry),
    M.Mutation("store into a map value dropped", M.map_store_dropped(-1)),
    M.Mutation("counter incremented twice", M.counter_incremented_twice(-1)),
    M.Mutation("redirect to the wrong ifindex", M.redirect_ifindex_wrong),
    M.Mutation("packet byte one bit off", M.packet_byte_wrong),
)


def test_the_pre_swap_check_refuses_miscompiles_and_passes_the_real_candidate(
        mutation_report) -> None:  # type: ignore[no-untyped-def]
    nf = get("router")
    config = nf.module.default_config(1, (2, 4, 6, 8, 10))
    trace = generate(nf, "high", 2000, seed=5, config=config)
    ingress = trace.main_ingress
    rng = random.Random(3)
    edge = [f for f, port in nf.module.edge_cases(config, rng) if port == ingress]
    frames = tuple(trace.frames[:400]) + tuple(edge)
    with NFEnv.start(nf, config=config, configure=False) as env:
        agent = Agent(nf.object_path, iface=f"port{ingress}", netns=env.namespace.name,
                      name=f"c{env.namespace.name[-8:]}", options=AgentOptions())
        agent.start()
        try:
            with env.entered():
                nf.control_plane(agent.control_maps()).apply(config)
                tx = socket.if_nametoindex(f"port{ingress + 1}")
            with Replay(None, None, {}, trace.frames, namespace=env.namespace,
                        redirect_ifindex=tx) as gen:
                gen.run()
            running = agent.current
            for mutation in AGENT_MUTANTS:
                agent.options = AgentOptions(check_frames=frames,
                                             extra_passes=(Miscompile(mutation),))
                agent.force_respecialize()
                report = agent.cycle()
                caught = report.outcome == "failed" and \
                    "equivalence check failed" in report.reason
                mutation_report.append({"target": "router", "entry": "agent",
                                        "mutant": mutation.name, "caught": caught,
                                        "packets_to_catch": None, "what": report.reason})
                assert caught, (mutation.name, report.outcome, report.reason)
                assert agent.current is running
            agent.options = AgentOptions(check_frames=frames)
            agent.force_respecialize()
            report = agent.cycle()
            assert report.outcome == "swapped", report.reason
        finally:
            agent.stop(detach=True)
