"""The optimizer sits below the runtime, offline and bench layers: it imports none of them."""

from __future__ import annotations

import ast
from pathlib import Path

import morpheus.optimizer

HIGHER = ("bench", "runtime", "offline", "cli", "demo", "userspace", "pinned")


def test_the_optimizer_imports_no_higher_layer() -> None:
    package = Path(morpheus.optimizer.__file__).parent
    offenders = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                parts = node.module.split(".")
                top = parts[0] if node.level == 2 else parts[1] if parts[0] == "morpheus" \
                    and len(parts) > 1 else None
                if top in HIGHER:
                    offenders.append(f"{path.name}: from {'.' * node.level}{node.module}")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.name}: import {a.name}" for a in node.names
                              if a.name.split(".")[1:2] and a.name.split(".")[1] in HIGHER]
    assert offenders == []
