"""What lets agents start, stop, crash and restart safely: names, the per-name lock, the
state file and the pins it records.

- A name is one safe path component: it becomes a directory under the pin root, a state
  file, a lock and a socket, and must never reach outside them (`..`, `/`, a leading dot).
- One agent per name: `AgentLock` holds an exclusive flock on /run/morpheus/agents/NAME.lock
  for the agent's life. The kernel drops it when the process dies, however it dies, so a
  killed agent never blocks its successor.
- The state file is replaced atomically (temporary file, fsync, rename, fsync of the
  directory): a crash leaves the old or the new file, never a torn one. It records the pins
  the agent is about to create *before* it creates them, so that a restart after a kill
  part-way through a start removes exactly those (and nothing another tool pinned nearby),
  and a stop with detach removes only them too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Any

from . import faults

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class AgentError(RuntimeError):
    """The agent cannot do what was asked; the message says why and what to do."""


def check_name(name: str) -> str:
    """`name` if it is one safe path component (letters, digits, `_`, `.`, `-`; not
    starting with a dot or a dash; at most 64 characters); else AgentError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise AgentError(
            f"invalid agent name {name!r}: a name is 1-64 letters, digits, '_', '.' or '-', "
            "not starting with '.' or '-' (it names a directory, a socket and a state file)")
    return name


class AgentLock:
    """An exclusive lock on `path`, held until `release()` (or the process's death)."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self._fd: int | None = None

    def acquire(self, holder: str = "") -> None:
        """Take the lock or raise AgentError naming who holds it. `holder` (a pid, from the
        state file) goes into the message."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    who = f" (pid {holder})" if holder else ""
                    raise AgentError(
                        f"an agent named {self.name!r} is already running{who}: it holds "
                        f"{self.path}; stop it first or choose another --name") from None
                raise AgentError(f"cannot lock {self.path}: {exc.strerror}") from None
            # A stopping agent unlinks the file while holding the lock; if we locked the
            # file it just unlinked, we hold nothing anyone else will see: open it again.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return
            os.close(fd)
        raise AgentError(f"cannot lock {self.path}: it keeps being replaced")

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def read_state(path: Path) -> dict[str, Any] | None:
    """The state file's contents, None if there is none; AgentError naming the file if it
    cannot be read or is not a state file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AgentError(f"cannot read the agent state file {path}: {exc.strerror}") from None
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise AgentError(f"the agent state file {path} is not valid JSON ({exc}); if no "
                         f"agent of this name runs, remove it") from None
    if not isinstance(state, dict):
        raise AgentError(f"the agent state file {path} does not hold a JSON object; if no "
                         f"agent of this name runs, remove it")
    return state


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace the state file atomically: a crash at any point leaves the old contents or
    the new ones."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps(state, indent=1).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        faults.reach("state.tmp")
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise AgentError(f"cannot write the agent state file {path}: {exc.strerror}") from None
    faults.reach("state.renamed")


def remove_stale_tmp(path: Path) -> None:
    """Remove temporary copies of the state file left by killed writers."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def remove_pins(pin_dir: Path, recorded: list[str]) -> list[str]:
    """Unlink the pins `recorded` (paths relative to `pin_dir`) that exist, then the
    directories they leave empty, up to `pin_dir` itself. Nothing else is touched: a pin
    the state does not name survives (and keeps `pin_dir`). Returns what was removed."""
    removed: list[str] = []
    root = pin_dir.resolve()
    dirs: set[Path] = set()
    for rel in recorded:
        path = (pin_dir / rel)
        if not path.resolve().is_relative_to(root) or path.resolve() == root:
            raise AgentError(f"the state names a pin outside {pin_dir}: {rel!r}")
        dirs.update(p for p in path.parents if p.resolve().is_relative_to(root))
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(rel)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()  # only when empty
    return removed


__all__ = ["AgentError", "AgentLock", "check_name", "read_state", "remove_pins",
           "remove_stale_tmp", "write_state"]
