"""Checking a candidate version against the unspecialized program before it goes live.

The agent's pre-swap check is the project's one equivalence checker (`morpheus.world`):
both programs run the check packets from one snapshot of the live maps (the maps the data
plane writes are copied once, then cloned per program; maps it only reads are shared), on
one CPU, with nondeterministic helpers made deterministic and redirects recorded. Compared:
verdict, output bytes and length, redirect target of every packet, and every key and
value of every map either program writes. Neither the live maps nor the other program's
side effects are touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..ir import Program
from ..kernel import FD, Map
from ..obj import ObjectSpec, ProgramSpec
from ..world import CheckRequest, CheckResult, Side, check

__all__ = ["CandidatePair", "CheckResult", "check_candidate"]


@dataclass(frozen=True)
class CandidatePair:
    """The running program's spec and object, its unspecialized and its candidate code."""

    prog: ProgramSpec
    spec: ObjectSpec
    base: Program
    candidate: Program
    btf_fd: FD | None = None


def check_candidate(maps: Mapping[str, Map], frames: Sequence[bytes], ingress_ifindex: int,
                    pair: CandidatePair) -> CheckResult:
    """Run the base and the candidate on `frames` arriving on `ingress_ifindex`, from a
    snapshot of the live `maps`; compare everything they did.

    Call it inside the network namespace of the interface `ingress_ifindex` names."""
    def side(label: str, program: Program) -> Side:
        return Side(label, pair.prog, program, spec=pair.spec, btf_fd=pair.btf_fd)

    return check(CheckRequest(maps, side("base", pair.base), side("candidate", pair.candidate),
                              [(f, ingress_ifindex) for f in frames], snapshot=True))
