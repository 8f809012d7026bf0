"""Building the runtime bitcode: `runtime.c` → `runtime.bc` with clang-16, once.

The bitcode lives next to the BPF objects (`<build dir>/../userspace/runtime.bc`, see
`morpheus.bpf.default_build_dir`); `MORPHEUS_RUNTIME_BC` names a prebuilt file instead.
clang is needed only here, at build time: the JIT reads the bitcode with llvmlite's own LLVM.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..bpf import BuildError, default_build_dir, find_clang

SOURCE = Path(__file__).resolve().parent / "runtime.c"


class RuntimeUnavailable(RuntimeError):
    """The runtime bitcode is missing and cannot be built (no clang-16)."""


def bitcode_path() -> Path:
    override = os.environ.get("MORPHEUS_RUNTIME_BC")
    if override:
        return Path(override)
    return default_build_dir().parent / "userspace" / "runtime.bc"


def build_runtime(output: Path | None = None, *, force: bool = False) -> Path:
    """Compile the runtime to bitcode unless `output` is newer than the source."""
    output = output or bitcode_path()
    if not force and output.exists() and output.stat().st_mtime >= SOURCE.stat().st_mtime:
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = [find_clang(), "-O2", "-emit-llvm", "-fno-stack-protector", "-fno-exceptions",
           "-Wall", "-Wextra", "-Wno-unused-parameter", "-c", str(SOURCE), "-o", str(output)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"compiling the user-space runtime failed:\n{result.stderr.strip()}")
    return output


def runtime_bitcode() -> bytes:
    """The runtime's bitcode, building it if a clang is available."""
    path = bitcode_path()
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
