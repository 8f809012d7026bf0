"""The agent on a root program that tail-calls the Katran-shaped balancer through the
object's own prog array (`xdp_root` → `root_array[0]` → `balancer_ingress`), filled by the
user's control plane as Katran's fills its root array.

What this pins down today: the agent's pre-swap check runs the root together with the
program in its prog array (the world reproduces the array with the callee loaded against
the check's maps), packets through the live root give the callee's verdicts and bytes, and
a control-plane write replacing the slot takes effect at once. The callee itself is not yet
specialized by the agent (issue 12, item 7: it runs as the user loaded it)."""

from __future__ import annotations

import os
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from morpheus.kernel.netns import NetNamespace
from morpheus.loader import load_program_spec
from morpheus.runtime.agent import Agent, AgentOptions
from morpheus.world import CheckRequest, Side, check
from tests.optimizer.katran_env import configure, trace

pytestmark = pytest.mark.kernel
XDP_PASS = 2
SLOT = struct.pack("<I", 0)


def test_the_agent_runs_the_root_with_its_callee_and_honours_slot_writes(
        test_objects: dict[str, Path]) -> None:
    ns = NetNamespace.create("mph-kc")
    try:
        ns.add_veth("kc0", "kc1", up=True)
        agent = Agent(test_objects["katran_shape.v3"], iface="kc0", program="xdp_root",
                      netns=ns.name, name=f"kc{os.getpid()}", options=AgentOptions())
        agent.start()
        try:
            shape = configure(agent.maps)
            balancer = load_program_spec(agent.spec.program("balancer_ingress"), agent.maps,
                                         btf_fd=agent.btf_fd)
            try:
                agent.maps["root_array"].update(SLOT, balancer)
                frames = tuple(trace(shape, 200))
                agent.options = AgentOptions(check_frames=frames)
                agent.force_respecialize()
                report = agent.cycle()
                assert report.outcome == "swapped", report.reason
                assert report.timings_ms["check"] > 0
                root = agent.current.program  # type: ignore[union-attr]
                # Through the live root, every packet gets what the balancer gives it.
                for frame in frames[:50]:
                    via_root = root.test_run(frame)
                    direct = balancer.test_run(frame)
                    assert (via_root.retval, via_root.data) == (direct.retval, direct.data)
                assert {root.test_run(f).retval for f in frames[:50]} != {XDP_PASS}
                # The control plane replaces the callee (here by a program that passes
                # everything: the root itself, whose tail calls end at the kernel's limit):
                # the next packet sees the new one.
                replacement = load_program_spec(agent.spec.program("xdp_root"), agent.maps,
                                                btf_fd=agent.btf_fd)
                with replacement:
                    agent.maps["root_array"].update(SLOT, replacement)
                    assert {root.test_run(f).retval for f in frames[:50]} == {XDP_PASS}
                    # ... and a later cycle checks and runs against the new slot content.
                    agent.force_respecialize()
                    again = agent.cycle()
                    assert again.outcome == "swapped", again.reason
                    live = agent.current.program  # type: ignore[union-attr]
                    assert {live.test_run(f).retval for f in frames[:50]} == {XDP_PASS}
                    agent.maps["root_array"].delete(SLOT)
                # Another build under the callee's name (xdp_root's code named
                # balancer_ingress): the check runs the slot's program as loaded, not the
                # object's balancer of that name, and says so.
                other_build = replace(agent.spec.program("xdp_root"), name="balancer_ingress")
                with load_program_spec(other_build, agent.maps, btf_fd=agent.btf_fd) as other:
                    agent.maps["root_array"].update(SLOT, other)
                    root_spec = agent.spec.program("xdp_root")
                    side = Side("base", root_spec, spec=agent.spec, btf_fd=agent.btf_fd)
                    with ns.entered():
                        ifindex = ns.ifindex("kc0")
                        result = check(CheckRequest(agent.maps, side, replace(
                            side, label="candidate"), [(f, ifindex) for f in frames[:20]],
                            snapshot=True))
                    agent.maps["root_array"].delete(SLOT)
                assert result.equivalent
                assert any("not the object's program" in n for n in result.notes), result.notes
                assert set(result.base_verdicts) == {XDP_PASS}  # what the slot really runs
            finally:
                balancer.close()
                shape.close()
        finally:
            agent.stop(detach=True)
    finally:
        ns.delete()
