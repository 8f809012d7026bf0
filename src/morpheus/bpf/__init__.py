"""The project's own BPF C sources (network functions, replay harness) and their build.

Where an object comes from, first match wins:

- `MORPHEUS_BPF_DIR` set: compiled there with clang-16 (a user's own build of our sources);
- a source checkout (`<repo>/pyproject.toml`, writable): compiled into `<repo>/build/bpf`;
- an installed wheel: the objects the wheel was built with, in `morpheus/bpf/prebuilt`
  (compiled by the build hook in setup.py, `build_prebuilt`); no clang needed;
- otherwise (an install without prebuilt objects): compiled into
  `$XDG_CACHE_HOME/morpheus/bpf`.

Compilation happens once; an object newer than its sources is reused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
PREBUILT_DIR = SOURCE_DIR / "prebuilt"
# The user-space backend's runtime, compiled to LLVM bitcode (read by llvmlite's own LLVM).
RUNTIME_SOURCE = SOURCE_DIR.parent / "userspace" / "runtime.c"
RUNTIME_BITCODE = "runtime.bc"
CLANG_CANDIDATES = ("clang-16", "clang")


class BuildError(RuntimeError):
    """A BPF C source failed to compile, or no suitable clang is installed."""


def find_clang() -> str:
    override = os.environ.get("MORPHEUS_CLANG")
    for candidate in (override,) if override else CLANG_CANDIDATES:
        path = shutil.which(candidate)
        if path:
            return path
    raise BuildError("clang-16 is not installed (apt-get install clang-16 libbpf-dev)")


def _multiarch_include() -> list[str]:
    # <linux/types.h> includes <asm/types.h>, which Debian keeps under the multiarch directory.
    triplet = sysconfig.get_config_var("MULTIARCH")
    if not triplet:
        try:
            triplet = subprocess.run(
                ["gcc", "-dumpmachine"], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return []
    path = Path("/usr/include") / triplet
    return [f"-I{path}"] if path.is_dir() else []


def _checkout_build_dir() -> Path | None:
    override = os.environ.get("MORPHEUS_BPF_DIR")
    if override:
        return Path(override)
    repo = SOURCE_DIR.parents[2]
    if (repo / "pyproject.toml").is_file() and os.access(repo, os.W_OK):
        return repo / "build" / "bpf"
    return None


def shipped(name: str) -> Path | None:
    """The artifact `name` an installed wheel carries in `prebuilt/`, if this is one."""
    path = PREBUILT_DIR / name
    return path if _checkout_build_dir() is None and path.is_file() else None


def default_build_dir() -> Path:
    checkout = _checkout_build_dir()
    if checkout is not None:
        return checkout
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "morpheus" / "bpf"


def compile_object(
    source: Path,
    output: Path,
    *,
    cpu: str = "v3",
    extra_flags: Sequence[str] = (),
    force: bool = False,
) -> Path:
    """Compile one BPF C file unless `output` is newer than it and its local headers."""
    deps = [source, *source.parent.glob("*.h")]
    if (
        not force
        and output.exists()
        and output.stat().st_mtime >= max(d.stat().st_mtime for d in deps)
    ):
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        find_clang(),
        "-O2",
        "-g",
        "-target",
        "bpf",
        f"-mcpu={cpu}",
        "-Wall",
        "-Wno-unused-function",
        *_multiarch_include(),
        f"-I{source.parent}",
        *extra_flags,
        "-c",
        str(source),
        "-o",
        str(output),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"compiling {source} failed:\n{result.stderr.strip()}")
    return output


def build_all(
    sources: Iterable[Path] | None = None, out_dir: Path | None = None, *, cpu: str = "v3",
    force: bool = False,
) -> list[Path]:
    """Compile the package's BPF sources (or `sources`) into `out_dir`."""
    out_dir = out_dir or default_build_dir()
    sources = sorted(sources) if sources is not None else sorted(SOURCE_DIR.glob("*.bpf.c"))
    return [
        compile_object(src, out_dir / (src.name.removesuffix(".bpf.c") + ".o"), cpu=cpu,
                       force=force)
        for src in sources
    ]


def object_path(name: str) -> Path:
    """Path of the built object for the package source `<name>.bpf.c`, building it if needed."""
    source = SOURCE_DIR / f"{name}.bpf.c"
    if not source.is_file():
        known = sorted(p.name.removesuffix(".bpf.c") for p in SOURCE_DIR.glob("*.bpf.c"))
        raise FileNotFoundError(f"no BPF source named {name!r}; known: {', '.join(known)}")
    prebuilt = shipped(f"{name}.o")
    if prebuilt is not None:
        # Shipped with the wheel next to the sources it was compiled from: no clang needed.
        return prebuilt
    return compile_object(source, default_build_dir() / f"{name}.o")


def compile_bitcode(source: Path, output: Path) -> Path:
    """Compile a C file of the user-space runtime to LLVM bitcode."""
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = [find_clang(), "-O2", "-emit-llvm", "-fno-stack-protector", "-fno-exceptions",
           "-Wall", "-Wextra", "-Wno-unused-parameter", "-c", str(source), "-o", str(output)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"compiling {source} to bitcode failed:\n{result.stderr.strip()}")
    return output


def build_prebuilt(out_dir: Path) -> list[Path]:
    """Build hook (setup.py): compile every source into `out_dir`, the wheel's
    `morpheus/bpf/prebuilt`, and the user-space runtime's bitcode beside them. Uses only
    the standard library, so setup.py can load this module by path before the package is
    installed."""
    built = build_all(out_dir=out_dir, force=True)
    if RUNTIME_SOURCE.is_file():
        built.append(compile_bitcode(RUNTIME_SOURCE, out_dir / RUNTIME_BITCODE))
    return built
