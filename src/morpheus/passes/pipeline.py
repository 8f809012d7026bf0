"""Passes and the pipeline that runs them.

A pass is a small frozen dataclass with a `name` and options as fields; `run(program, ctx)`
returns a new Program and never mutates its input. The pipeline can validate the program
after every pass, time each pass, and print the program between passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from ..analysis.values import Analysis
from ..ir import Program, encode, listing
from ..obj import MapSpec


@dataclass
class PassContext:
    """What passes may know besides the program.

    `maps` are the specs of every map the program may reference (the object's, plus maps
    created by passes, e.g. the inlined values). `known_values` holds the contents of maps
    whose value the data plane sees as constant (frozen, read-only inlined values): a load
    through a pointer into them may be folded. `notes` collects per-pass remarks.
    `analysis` may hold the abstract states of a program already analysed (the one the
    pipeline starts from): a pass handed that very program reuses them.
    """

    maps: dict[str, MapSpec]
    prog_type: int
    known_values: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    analysis: Analysis | None = None


class Pass(Protocol):
    name: ClassVar[str]

    def run(self, program: Program, ctx: PassContext) -> Program: ...


class ValidationError(RuntimeError):
    """A pass produced a program that does not even encode (a broken label, bad jump)."""


@dataclass(frozen=True)
class PassTiming:
    name: str
    ms: float
    insns_before: int
    insns_after: int


@dataclass
class Pipeline:
    """Runs passes in order.

    `validate` encodes the program after every pass (labels resolve, jumps fit) and, when a
    `verifier` callable is given, hands it the program too (the kernel is the final judge;
    it is passed in so that this module stays free of system calls). `trace` receives the
    listing between passes.
    """

    passes: Sequence[Pass]
    validate: bool = False
    verifier: Callable[[Program, str], None] | None = None
    trace: Callable[[str], None] | None = None
    timings: list[PassTiming] = field(default_factory=list)

    def run(self, program: Program, ctx: PassContext) -> Program:
        for p in self.passes:
            start = time.perf_counter()
            before = len(program.insns)
            program = p.run(program, ctx)
            elapsed = (time.perf_counter() - start) * 1000
            self.timings.append(PassTiming(p.name, elapsed, before, len(program.insns)))
            if self.validate:
                fds = {name: 1000 + n for n, name in enumerate(ctx.maps)}
                try:
                    encode(program, fds)
                except ValueError as exc:
                    raise ValidationError(f"after pass {p.name}: {exc}") from exc
                if self.verifier is not None:
                    self.verifier(program, p.name)
            if self.trace is not None:
                self.trace(f"; after {p.name} ({len(program.insns)} instructions)\n"
                           f"{listing(program)}")
        return program


REGISTRY: dict[str, Callable[..., Pass]] = {}


def register(cls: type) -> type:
    """Class decorator: make a pass available by its `name` (its CLI id)."""
    REGISTRY[cls.name] = cls  # type: ignore[attr-defined]
    return cls


def build(names: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None = None
          ) -> list[Pass]:
    options = options or {}
    out = []
    for name in names:
        if name not in REGISTRY:
            raise KeyError(f"unknown pass {name!r}; known: {', '.join(sorted(REGISTRY))}")
        out.append(REGISTRY[name](**options.get(name, {})))
    return out
