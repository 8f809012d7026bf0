"""The mutation suite through the agent's pre-swap check.

For each NF, one agent runs the NF on an interface under traffic, told which NF it runs
and given the first 400 packets as its check trace (`morpheus run --check-trace
--check-nf`). Every mutant of the suite is injected as the candidate's last pass
(`AgentOptions.final_passes`, after the hot-key trees, where `optimize`'s variants are
taken) and a real cycle runs: the candidate must be refused by the equivalence check and
the running version kept. The real candidate, before and after, is swapped in (no false
alarm). tests/progs/checked.c's mutants go through `runtime.check.check_candidate`, the
function the agent calls, with the inputs an agent running that program has.

The mutations of inlined code are tried at every inlined site that has a place for them
(`Mutation.placements`), not only the first: a mutant counts as caught when every
placement is caught, or shown equivalent from its bytecode (`tests.world.equivalent`).
"""

from __future__ import annotations

import dataclasses
import socket
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from morpheus.bench.replay import Replay
from morpheus.ir import Program
from morpheus.nf import get
from morpheus.nf.env import NFEnv
from morpheus.optimizer import Target
from morpheus.passes.pipeline import PassContext
from morpheus.runtime.agent import Agent, AgentOptions
from morpheus.runtime.check import CandidatePair, CheckInputs, check_candidate
from morpheus.traffic.generate import generate
from morpheus.uapi import MapType
from tests.world import equivalent as EQ
from tests.world import mutants as M
from tests.world.checked_env import checked_env, packets
from tests.world.test_mutants import KEY_MUTANTS, NF_MUTANTS

pytestmark = pytest.mark.kernel

CHECK_FRAMES = 400

# Placements (NF, mutant, inlined map, placement) the agent's check does not catch, each
# with what was found: all but the last are equivalent on the configuration the check
# runs (argued from the program and its maps, not shown by a test), the last is a limit
# of the check. The test fails on any other miss; these are reported ("known_miss").
_FW_CONFIG = ("equivalent on this configuration (argued): fw_config's fields keep their "
              "meaning, default action 0 and the mutant's are both 'not accept', conntrack "
              "and stats stay non-zero, and rule_words above 5 only makes the rule loop AND "
              "words 5.. of the bit vectors, which every table holds as zero")
_EGRESS = ("equivalent on this configuration (argued): the key is the egress port (and "
           "VLAN) taken from the {source} entry, and every port {source} can name is in "
           "the inlined table, so no key reaching this site is absent")
_VLAN_BIT = ("equivalent (argued): the program reads a sw_vlans value only as "
             "`value & SW_VLAN_MEMBER` (bit 0), and the entry the leaf now points at "
             "(sw_config's inlined value, 7) has bit 0 set like every sw_vlans value (1)")
KNOWN_AGENT_MISSES = {
    ("firewall", "inlined value one bit off", "fw_config", 0): _FW_CONFIG,
    ("firewall", "inlined leaf points at another entry", "fw_config", 0): _FW_CONFIG,
    ("router", "absent key served the first entry", "rt_ifaces", 1):
        _EGRESS.format(source="rt_routes"),
    ("switch", "absent key served the first entry", "sw_ports", 1):
        _EGRESS.format(source="sw_fdb"),
    ("switch", "absent key served the first entry", "sw_vlans", 3):
        _EGRESS.format(source="sw_fdb") + " (an egress trunk lists every tagged VLAN; "
        "its native VLAN returns before the lookup)",
    ("switch", "key compare one word short", "sw_vlans", 2):
        _EGRESS.format(source="sw_fdb") + "; a key that reaches the shortened compare "
        "wrongly is present itself, and every sw_vlans value is the same (member)",
    ("switch", "inlined leaf points at another entry", "sw_vlans", 3): _VLAN_BIT,
    ("switch", "inlined leaf points at another entry", "sw_vlans", 4): _VLAN_BIT,
}
PLACEMENTS = 8  # inlined sites each mutation of inlined code is tried at, at most


@dataclass
class Miscompile:
    """A final pass applying one placement of a mutation to the candidate (its inlined
    values included); `applied` says whether it found its place in the candidate the
    cycle loaded last (a candidate the verifier refused is relieved of sites and built
    again: `tried` says whether any build had the place), `where` names the inlined map
    it changed, `before`/`mutant` the candidate and its mutant."""

    operator: M.Operator
    applied: bool = field(default=False)
    tried: bool = field(default=False)
    where: str | None = None
    before: Program | None = None
    mutant: Program | None = None
    name: ClassVar[str] = "miscompile"

    def run(self, program: Program, ctx: PassContext) -> Program:
        # Every map's spec: the operators read the value size of the map a leaf inlines.
        maps = dict(ctx.maps)
        mutant = self.operator(program, maps)
        self.applied, self.where, self.before, self.mutant = False, None, None, None
        if mutant is None:
            return program
        self.applied = self.tried = True
        self.where = M.inlined_map_at(program, mutant, maps)
        if isinstance(mutant, tuple):
            mutant, changed = mutant
            ctx.maps.update(changed)
        self.before, self.mutant = program, mutant
        return mutant


def never_missing(agent: Agent) -> set[str]:
    """LPM tries that cannot miss: they hold a /0 entry and the data plane never writes
    them (and the check's control-plane writes only change values)."""
    out = set()
    for name, m in agent.maps.items():
        facts = agent.facts.maps.get(name)
        if m.type != MapType.LPM_TRIE or facts is None or facts.written_by_data_plane:
            continue
        if any(int.from_bytes(key[:4], "little") == 0 for key in m):
            out.add(name)
    return out


def equivalence_shown(inject: Miscompile, agent: Agent) -> str | None:
    """Why the placement is equivalent, when its bytecode (and the maps) show it; else
    None."""
    if inject.before is None or inject.mutant is None:
        return None
    index = M.first_change(inject.before, inject.mutant)
    if index is None:
        return None
    if EQ.only_on_runts(inject.mutant, index):
        return (f"instruction {index} is reached only through a bounds check that found "
                "the frame shorter than 14 bytes (every path to it, shown on the CFG); "
                "XDP never runs on such frames")
    tables = never_missing(agent)
    if EQ.only_on_misses(inject.mutant, index, tables):
        return (f"instruction {index} is reached only when an inlined lookup in "
                f"{', '.join(sorted(tables))} finds nothing (every path to it, shown on the "
                "CFG), and that LPM trie holds a /0 entry the data plane never deletes")
    return None


def _peer(ifindex: int) -> str:
    return f"port{ifindex + 1 if ifindex % 2 == 0 else ifindex - 1}"


def _nf_mutations(name: str) -> list[M.Mutation]:
    generic, key_mutant = NF_MUTANTS[name]
    out = [m for m in M.SPECIALIZED if m.name not in KEY_MUTANTS or m.name == key_mutant]
    return out + list(generic)


@pytest.mark.parametrize("name", sorted(NF_MUTANTS))
def test_the_agents_pre_swap_check_refuses_every_mutant(
        name: str, mutation_report: list[dict[str, Any]]) -> None:
    nf = get(name)
    config = nf.default_config(1)
    trace = generate(nf, "high", 2000, seed=5, config=config)
    # The firewall and the balancer treat every port alike (their traces say port 1):
    # the agent runs them on port2.
    ingress = trace.main_ingress if trace.main_ingress >= 2 else 2
    frames = tuple(f for f, port in zip(trace.frames, trace.ingress, strict=True)
                   if port == trace.main_ingress)[:CHECK_FRAMES]
    with NFEnv.start(nf, config=config, configure=False) as env:
        # decay 1: the samples of the one replay keep the plan the same from cycle to cycle.
        options = AgentOptions(check_frames=frames, check_nf=nf, check_config=config,
                               decay=1.0, measure_instrumentation=False, watch_external=False)
        agent = Agent(nf.object_path, iface=f"port{ingress}", netns=env.namespace.name,
                      name=f"m{name[:3]}{env.namespace.name[-8:]}", options=options)
        agent.start()
        try:
            with env.entered():
                nf.control_plane(agent.control_maps()).apply(config)
                tx = socket.if_nametoindex(_peer(ingress))
            replayed = [f for f, _ in trace.warmup] + list(trace.frames)
            with Replay(None, None, {}, replayed, namespace=env.namespace,
                        redirect_ifindex=tx) as gen:
                gen.run()
            report = agent.cycle()
            assert report.outcome == "swapped", report.reason
            real = agent.current
            assert real is not None and real.kind == "specialized"
            assert agent.last_check is not None and agent.last_check.equivalent
            checked = agent.last_check.packets
            assert checked > len(frames) + 500, checked  # near misses, unseen flows, edges
            assert agent.last_check_writes > 0 or name == "lb"
            missed, applied = [], 0
            for mutation in _nf_mutations(name):
                for n, operator in enumerate(mutation.placements(PLACEMENTS)):
                    inject = Miscompile(operator)
                    agent.options = dataclasses.replace(options, final_passes=(inject,))
                    agent.force_respecialize()
                    t0 = time.perf_counter()
                    report = agent.cycle()
                    elapsed = time.perf_counter() - t0
                    if not inject.tried:  # nothing (more) to mutate: the real one went in
                        real = agent.current
                        break
                    row: dict[str, Any] = {"target": name, "entry": "agent",
                                           "mutant": mutation.name, "placement": n,
                                           "site": inject.where}
                    if not inject.applied:
                        # The verifier refused the mutant; the relieved candidate went in
                        # without the place (checked like any candidate: no false alarm).
                        mutation_report.append({**row, "rejected": "relieved of its place "
                                                f"by the verifier: {report.reason[:160]}"})
                        if "equivalence check failed" in report.reason:
                            missed.append((mutation.name, n, "false alarm", report.reason))
                        real = agent.current
                        continue
                    if "VerifierError" in report.reason or "verifier refused" in report.reason:
                        mutation_report.append({**row, "rejected": report.reason[:200]})
                        continue
                    applied += 1
                    result = agent.last_check
                    caught = report.outcome == "failed" and \
                        "equivalence check failed" in report.reason
                    assert caught <= (agent.current is real)  # refused: the running one stays
                    shown = equivalence_shown(inject, agent) if not caught else None
                    known = None if caught or shown else KNOWN_AGENT_MISSES.get(
                        (name, mutation.name, inject.where, n))
                    mutation_report.append({
                        **row, "caught": caught, "what": report.reason[:300],
                        **({"equivalent": shown} if shown else {}),
                        **({"known_miss": known} if known else {}),
                        "packets_to_catch": result.packets_to_catch if caught and result
                        else None,
                        "packets_checked": result.packets if result else None,
                        "cycle_s": round(elapsed, 3)})
                    if not caught and not shown and known is None:
                        missed.append((mutation.name, n, inject.where, report.outcome,
                                       report.reason[:400]))
                    if not caught:
                        real = agent.current
            # The real candidate still goes through.
            agent.options = options
            agent.force_respecialize()
            report = agent.cycle()
            assert report.outcome == "swapped", report.reason
        finally:
            agent.stop(detach=True)
    assert applied >= 6 and not missed, missed


def test_the_agents_check_entry_point_catches_the_mutants_of_checked_c(
        test_objects, mutation_report: list[dict[str, Any]]) -> None:  # type: ignore[no-untyped-def]
    """checked.c stores ktime and prandom values: through the agent's entry point it stays
    equivalent to itself, and its mutants are caught."""
    with checked_env(test_objects["checked.v3"]) as env:
        facts = Target.analyze(env.spec, env.prog).facts  # what the agent analyses
        # An agent on lo (ifindex 1) with these packets as its check trace.
        inputs = CheckInputs([f for f, _ in packets(300)], 1, facts=facts)
        btf = env.collection.btf_fd
        same = check_candidate(env.maps, inputs, CandidatePair(
            env.prog, env.spec, env.prog.program, env.prog.program, btf))
        assert same.equivalent, same.describe()
        assert same.packets > 300
        missed, applied = [], 0
        for mutation in (*M.GENERIC, *M.CHECKED):
            mutant = mutation.apply(env.prog.program)
            if mutant is None:
                continue
            assert not isinstance(mutant, tuple)
            row: dict[str, Any] = {"target": "checked.c", "entry": "agent",
                                   "mutant": mutation.name}
            try:
                result = check_candidate(env.maps, inputs, CandidatePair(
                    env.prog, env.spec, env.prog.program, mutant, btf))
            except Exception as exc:  # the verifier's refusal: not a mutant we count
                if type(exc).__name__ != "VerifierError":
                    raise
                mutation_report.append({**row, "rejected": str(exc)[:200]})
                continue
            applied += 1
            mutation_report.append({**row, "caught": not result.equivalent,
                                    "packets_to_catch": result.packets_to_catch,
                                    "packets_checked": result.packets,
                                    "what": (result.first_mismatch() or {}).get("what")})
            if result.equivalent:
                missed.append(mutation.name)
    assert applied >= 14 and not missed, missed
