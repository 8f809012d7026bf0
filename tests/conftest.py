"""Shared fixtures: test objects built from our C sources, kernel availability, fd leaks.

Kernel tests are marked `kernel`; they skip only when the kernel really lacks BPF (not root,
bpf() refused), printing why. `.ci/run` treats any skip it did not expect as a failure.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from morpheus.kernel import KernelError, Map, MapType, live_fds

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "tests"


@functools.cache
def kernel_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "BPF tests need root"
    try:
        Map.create(MapType.ARRAY, 4, 4, 1, name="probe").close()
    except KernelError as exc:
        return f"the kernel refuses bpf(): {exc}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = kernel_unavailable_reason()
    for item in items:
        if "tests/kernel/" in item.nodeid or item.get_closest_marker("kernel"):
            item.add_marker(pytest.mark.kernel)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def test_objects() -> dict[str, Path]:
    """Every test object, built once per session (reused while up to date)."""
    from tests.progs.build import build_test_objects

    return build_test_objects(BUILD)


@pytest.fixture(autouse=True)
def no_fd_leaks() -> Iterator[None]:
    """Fail a test that leaves kernel objects (maps, programs, links, BTF) open."""
    before = {id(fd) for fd in live_fds()}
    yield
    leaked = [fd for fd in live_fds() if id(fd) not in before]
    for fd in leaked:
        fd.close()
    assert not leaked, f"test leaked file descriptors: {leaked}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    """Skips are failures unless MORPHEUS_ALLOW_SKIPS=1: every feature a test needs exists on
    the machines we run on, so a skip there means something is broken, not missing."""
    skipped = terminalreporter.stats.get("skipped", [])
    terminalreporter.write_line(f"morpheus: {len(skipped)} test(s) skipped")
    if skipped and os.environ.get("MORPHEUS_ALLOW_SKIPS") != "1":
        terminalreporter.write_line(
            "morpheus: unexpected skips count as failures (set MORPHEUS_ALLOW_SKIPS=1 on a "
            "machine without BPF)", red=True)
        config._morpheus_unexpected_skips = True  # type: ignore[attr-defined]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped and os.environ.get("MORPHEUS_ALLOW_SKIPS") != "1" and exitstatus == 0:
        session.exitstatus = 1
