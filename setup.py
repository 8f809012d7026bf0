"""Build hook: compile the package's artifacts into the wheel (metadata is in pyproject.toml).

A wheel must run where no clang is installed, so `build_py` compiles what the package's C
sources produce into the build tree, next to the Python modules, and nothing built is ever
committed. Each entry of PREBUILT names a module (loaded by path: the package is not
installed yet, so such a module may import only the standard library) whose
`build_prebuilt(out_dir)` writes its artifacts into `out_dir`, a directory of the package.
An editable install (a source checkout) skips it: a checkout compiles on demand into
build/ (see morpheus.bpf).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent

# (module with build_prebuilt(out_dir), package directory the artifacts go to)
PREBUILT = [
    ("src/morpheus/bpf/__init__.py", "morpheus/bpf/prebuilt"),
]


def _load(path: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(f"_prebuilt_{len(path)}", ROOT / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithPrebuilt(build_py):
    """`build_py` that also compiles the PREBUILT artifacts into the build directory."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for module_path, package_dir in PREBUILT:
            out_dir = Path(self.build_lib) / package_dir
            out_dir.mkdir(parents=True, exist_ok=True)
            built = _load(module_path).build_prebuilt(out_dir)
            self.announce(f"prebuilt {len(built)} artifact(s) into {out_dir}", level=2)


setup(cmdclass={"build_py": BuildWithPrebuilt})
