"""Building the runtime bitcode: `runtime.c` → `runtime.bc` with clang-16, once.

The bitcode lives next to the BPF objects (`<build dir>/../userspace/runtime.bc`, see
`morpheus.bpf.default_build_dir`); `MORPHEUS_RUNTIME_BC` names a prebuilt file instead.
clang is needed only here, at build time: the JIT reads the bitcode with llvmlite's own LLVM.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..bpf import (
    RUNTIME_BITCODE,
    RUNTIME_SOURCE,
    BuildError,
    compile_bitcode,
    default_build_dir,
    shipped,
)

SOURCE = RUNTIME_SOURCE


class RuntimeUnavailable(RuntimeError):
    """The runtime bitcode is missing and cannot be built (no clang-16)."""


def bitcode_path() -> Path:
    override = os.environ.get("MORPHEUS_RUNTIME_BC")
    if override:
        return Path(override)
    return shipped(RUNTIME_BITCODE) or default_build_dir().parent / "userspace" / RUNTIME_BITCODE


def build_runtime(output: Path | None = None, *, force: bool = False) -> Path:
    """Compile the runtime to bitcode unless `output` is newer than the source."""
    output = output or bitcode_path()
    if not force and output.exists() and output.stat().st_mtime >= SOURCE.stat().st_mtime:
        return output
    return compile_bitcode(SOURCE, output)


def runtime_bitcode() -> bytes:
    """The runtime's bitcode, building it if a clang is available."""
    path = bitcode_path()
    if path == shipped(RUNTIME_BITCODE):  # from the wheel: no clang, never rebuilt in place
        return path.read_bytes()
    if not path.exists() or (SOURCE.exists() and path.stat().st_mtime < SOURCE.stat().st_mtime):
        if "MORPHEUS_RUNTIME_BC" in os.environ and path.exists():
            return path.read_bytes()
        try:
            build_runtime(path)
        except BuildError as exc:
            raise RuntimeUnavailable(
                f"the user-space backend needs its runtime bitcode at {path}, built at "
                f"bootstrap with clang-16 (`make bootstrap`); building it now failed: {exc}"
            ) from None
    return path.read_bytes()


if __name__ == "__main__":
    print(build_runtime())
