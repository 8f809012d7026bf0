"""Running a program on a copy of the world, and checking two programs against each other.

`World` holds the maps one program runs against (shared where the data plane only reads,
cloned where it writes, maps of maps and prog arrays reproduced); `Runner` runs packets
through a harnessed program in a world; `check` compares two programs on the same packets
from the same state. Benchmarks, `morpheus optimize`, the agent's pre-swap check and
`morpheus check` all go through here.
"""

from ..kernel.cpu import pinned_cpu
from .check import CheckRequest, CheckResult, Side, Write, check
from .harness import CLOCK_MAP, NONDETERMINISTIC, REDIRECT_MAP, REDIRECTS, Clocks, Redirect, harness
from .run import Outcome, Runner
from .state import World, WorldError, table_contents, written_maps

__all__ = ["CLOCK_MAP", "NONDETERMINISTIC", "REDIRECTS", "REDIRECT_MAP", "CheckRequest",
           "CheckResult", "Clocks", "Outcome", "Redirect", "Runner", "Side", "World",
           "WorldError", "Write", "check", "harness", "pinned_cpu", "table_contents",
           "written_maps"]
