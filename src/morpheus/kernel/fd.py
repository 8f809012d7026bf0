"""File descriptors as objects that close themselves."""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable
from typing import Self, TypeVar

T = TypeVar("T")

_live: weakref.WeakSet[FD] = weakref.WeakSet()


class OwnsFD:
    """A kernel object held through one owned file descriptor (`self.fd`): `close()` closes
    it, and so does leaving a `with` block."""

    fd: FD

    def close(self) -> None:
        self.fd.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def adopt(fd: FD, build: Callable[[FD], T]) -> T:
    """`build(fd)`: the object that owns `fd` from then on. If building fails (reading the
    object's info, say), `fd` is closed instead of leaked."""
    try:
        return build(fd)
    except BaseException:
        fd.close()
        raise


class ClosedError(ValueError):
    """An operation used a kernel object whose file descriptor was already closed."""


class FD:
    """An owned file descriptor of a kernel object (map, program, link, BTF).

    Closed by `close()`, by leaving a `with` block, or (with a ResourceWarning) when garbage
    collected. `live_fds()` lists the ones still open, so tests can catch leaks.
    """

    __slots__ = ("__weakref__", "_fd", "kind")

    def __init__(self, fd: int, kind: str) -> None:
        if fd < 0:
            raise ValueError(f"invalid file descriptor {fd}")
        self._fd = fd
        self.kind = kind
        _live.add(self)

    @property
    def number(self) -> int:
        if self._fd < 0:
            raise ClosedError(f"{self.kind} file descriptor is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            _live.discard(self)
            os.close(fd)

    def dup(self) -> FD:
        return FD(os.dup(self.number), self.kind)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            warnings.warn(f"unclosed {self.kind} fd {self._fd}", ResourceWarning, stacklevel=1)
            self.close()

    def __int__(self) -> int:
        return self.number

    def __repr__(self) -> str:
        return f"FD({self._fd}, {self.kind!r})"


def live_fds() -> list[FD]:
    """FD objects that are still open."""
    return [fd for fd in list(_live) if not fd.closed]
