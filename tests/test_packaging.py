"""The wheel: built with `python -m build`, installed into a fresh virtual environment, its CLI
run with no clang on PATH and no source checkout in reach."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from morpheus.bpf import SOURCE_DIR

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)  # type: ignore[call-overload]
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout}\n{out.stderr}"
    return out  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    # setuptools packs whatever build/lib holds: a module deleted since the last build
    # would still ship.
    shutil.rmtree(REPO / "build" / "lib", ignore_errors=True)
    # No isolation: the dev extra has setuptools and build, so nothing is fetched to build.
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
          str(REPO)])
    (path,) = dist.glob("morpheus_xdp-*.whl")
    return path


def test_the_wheel_carries_every_bpf_object_and_the_sources(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for source in SOURCE_DIR.glob("*.bpf.c"):
        stem = source.name.removesuffix(".bpf.c")
        assert f"morpheus/bpf/prebuilt/{stem}.o" in names
        assert f"morpheus/bpf/{source.name}" in names
    assert "morpheus/bpf/nf_common.h" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "morpheus = morpheus.cli.main:main" in zipfile.ZipFile(wheel).read(
        entry_points).decode()
    # Built objects come from the build hook, never from the repository.
    tracked = _run(["git", "-C", str(REPO), "ls-files", "*.o"]).stdout.split()
    assert tracked == []


def test_installed_cli_runs_without_clang(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # ensurepip costs ~30 s on this VM: the venv gets no pip of its own, and this
    # interpreter's pip installs into it (`pip --python`), resolving the dependencies
    # from the wheel's metadata like any `pip install morpheus-xdp`.
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
          "-q", str(wheel)])
    # Only the venv on PATH: no clang, no iproute2, no checkout to fall back on.
    env = {"PATH": str(venv / "bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert shutil.which("clang", path=env["PATH"]) is None
    assert shutil.which("clang-16", path=env["PATH"]) is None
    cli = str(venv / "bin" / "morpheus")

    version = _run([cli, "--version"], env=env, cwd=tmp_path).stdout
    from morpheus import __version__

    assert version.strip() == f"morpheus (morpheus-xdp) {__version__}"

    listed = json.loads(_run([cli, "nf", "list", "--json"], env=env, cwd=tmp_path).stdout)
    site = _run([str(venv / "bin" / "python"), "-c",
                 "import morpheus, os; print(os.path.dirname(morpheus.__file__))"],
                env=env, cwd=tmp_path).stdout.strip()
    for nf in listed:
        assert nf["object"] == f"{site}/bpf/prebuilt/{nf['name']}.o"

    report = json.loads(_run([cli, "optimize", "--nf", "router", "--profile", "high",
                              "--packets", "2000", "--rounds", "1", "--json"],
                             env=env, cwd=tmp_path).stdout)
    assert report["equivalent"] is True
    assert any(site["specialized"] for site in report["sites"])
    # Nothing was compiled on the way: the cache the package would compile into is empty.
    assert not (tmp_path / "cache" / "morpheus").exists()
    assert os.listdir(f"{site}/bpf/prebuilt")
    # The user-space backend's runtime bitcode ships too, found without a clang.
    bitcode = _run([str(venv / "bin" / "python"), "-c",
                    "from morpheus.userspace.build import bitcode_path, runtime_bitcode; "
                    "print(bitcode_path(), len(runtime_bitcode()))"],
                   env=env, cwd=tmp_path).stdout.split()
    assert bitcode[0] == f"{site}/bpf/prebuilt/runtime.bc"
    assert int(bitcode[1]) > 1000
