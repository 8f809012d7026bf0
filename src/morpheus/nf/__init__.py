"""Network functions: BPF sources, control planes, reference models and traffic.

Each NF module (switch, router, firewall, lb) provides NAME, DESCRIPTION, SOURCE (the stem
of its `.bpf.c` in morpheus/bpf), PROGRAM (the XDP function), `default_config(seed)`,
`ControlPlane(maps)` with `apply(config)`, `Reference(config)` with
`process(frame, ingress_ifindex)`, and `flows` / `packet` / `edge_cases` for traffic.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

NAMES = ("switch", "router", "firewall", "lb")


@dataclass(frozen=True)
class NetworkFunction:
    """A handle on one NF module."""

    name: str

    @cached_property
    def module(self) -> ModuleType:
        return importlib.import_module(f"morpheus.nf.{self.name}")

    @property
    def description(self) -> str:
        return str(self.module.DESCRIPTION)

    @property
    def program(self) -> str:
        return str(self.module.PROGRAM)

    @property
    def object_path(self) -> Path:
        """The built object (compiled on first use)."""
        from ..bpf import object_path

        return object_path(self.module.SOURCE)

    def default_config(self, seed: int = 1) -> Any:
        return self.module.default_config(seed)

    def control_plane(self, maps: Any) -> Any:
        return self.module.ControlPlane(maps)

    def reference(self, config: Any) -> Any:
        return self.module.Reference(config)


def get(name: str) -> NetworkFunction:
    if name not in NAMES:
        raise KeyError(f"unknown network function {name!r}; known: {', '.join(NAMES)}")
    return NetworkFunction(name)


def all_nfs() -> list[NetworkFunction]:
    return [NetworkFunction(n) for n in NAMES]
