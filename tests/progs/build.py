"""Build the object-loader test objects from the C sources next to this file.

- `tests/progs/*.c` are the libbpf-comparable sources: each is compiled twice, into
  `<out_dir>/<stem>.v2.o` and `<out_dir>/<stem>.v3.o`, and every object loads with
  `bpftool prog loadall`.
- `tests/progs/nolibbpf/*.c` are objects our loader must accept but libbpf refuses; they are
  compiled the same way into `<out_dir>/nolibbpf/`.
- `tests/progs/typed/*.c` have section names the libbpf on this machine (1.1) does not know:
  libbpf loads them only with a given type (`bpftool prog loadall OBJ DIR type tc`).
- `tests/progs/readonly/*.c` are read (pure tests), not compared with libbpf: this kernel lacks what
  they need (e.g. CONFIG_KALLSYMS_ALL for typed ksym variables), for libbpf as for us.
- `tests/progs/modules/*.c` call kfuncs and read ksyms of kernel modules that do not exist:
  the tests read them against module BTF they write themselves, never for this kernel.
- `tests/progs/unsupported/*.c` use one feature each that our loader must reject with a clear
  error; they are compiled once (v3) into `<out_dir>/unsupported/<stem>.o`.

The returned mapping is keyed by the object's path relative to `out_dir` without `.o`:
`"globals.v2"`, `"nolibbpf/samesec.v3"`, `"unsupported/struct_ops"`. Up-to-date objects are reused.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from morpheus.bpf import BuildError, compile_object, find_clang

PROGS_DIR = Path(__file__).resolve().parent
CPUS = ("v2", "v3")
UNSUPPORTED_CPU = "v3"


@functools.cache
def cpu_flags(cpu: str) -> tuple[str, ...]:
    """Defines __BPF_CPU_VERSION__ when clang does not (clang >= 17 does, clang-16 not).

    Sources guard v3-only code (32-bit atomic fetch forms) with it; without the define the
    v3 object would silently be built like the v2 one.
    """
    result = subprocess.run(
        [find_clang(), "-target", "bpf", f"-mcpu={cpu}", "-dM", "-E", "-x", "c", "/dev/null"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise BuildError(f"probing clang's predefined macros failed:\n{result.stderr.strip()}")
    if "__BPF_CPU_VERSION__" in result.stdout:
        return ()
    return (f"-D__BPF_CPU_VERSION__={cpu.removeprefix('v')}",)


def _jobs(out_dir: Path) -> list[tuple[str, Path, Path, str]]:
    """(key, source, output, cpu) for every object to build."""
    jobs = []
    for sub in ("", "nolibbpf", "typed", "readonly", "modules"):
        for source in sorted((PROGS_DIR / sub).glob("*.c")):
            for cpu in CPUS:
                rel = Path(sub, f"{source.stem}.{cpu}")
                jobs.append((rel.as_posix(), source, out_dir / f"{rel}.o", cpu))
    for source in sorted((PROGS_DIR / "unsupported").glob("*.c")):
        rel = Path("unsupported", source.stem)
        jobs.append((rel.as_posix(), source, out_dir / f"{rel}.o", UNSUPPORTED_CPU))
    return jobs


def build_test_objects(out_dir: Path) -> dict[str, Path]:
    """Compile every test source into `out_dir`; returns {key: object path} (see module doc)."""
    out_dir = Path(out_dir)
    jobs = _jobs(out_dir)
    # Each clang run is a separate process, so threads are enough to build in parallel.
    with ThreadPoolExecutor() as pool:
        futures = {
            key: pool.submit(compile_object, source, output, cpu=cpu, extra_flags=cpu_flags(cpu))
            for key, source, output, cpu in jobs
        }
        return {key: future.result() for key, future in futures.items()}


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PROGS_DIR.parents[1] / "build" / "tests"
    for name, path in build_test_objects(target).items():
        print(f"{name:28} {path}")
