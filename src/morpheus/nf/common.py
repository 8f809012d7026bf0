"""Types every network function shares: XDP verdicts, `Outcome`, `MapLike`.

A reference model answers each frame with an `Outcome` (the verdict, the bytes the program
leaves in the frame, the redirect target); a control plane writes through `MapLike`, which a
kernel `Map` and the tests' in-memory fakes both satisfy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

# enum xdp_action (include/uapi/linux/bpf.h).
XDP_ABORTED = 0
XDP_DROP = 1
XDP_PASS = 2
XDP_TX = 3
XDP_REDIRECT = 4

VERDICT_NAMES = {XDP_ABORTED: "XDP_ABORTED", XDP_DROP: "XDP_DROP", XDP_PASS: "XDP_PASS",
                 XDP_TX: "XDP_TX", XDP_REDIRECT: "XDP_REDIRECT"}


def verdict_name(verdict: int) -> str:
    """"XDP_PASS" for 2; an unknown code is shown as a number, so a wrong return is visible."""
    return VERDICT_NAMES.get(verdict, f"verdict {verdict}")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the program does with one frame: its XDP verdict and the bytes it leaves behind."""

    verdict: int
    frame: bytes
    redirect_ifindex: int | None = None


class MapLike(Protocol):
    """The slice of a BPF map a control plane needs; a kernel map or an in-memory fake."""

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def lookup(self, key: bytes) -> bytes | list[bytes] | None: ...

    def keys(self) -> Iterator[bytes]: ...


__all__ = [
    "VERDICT_NAMES", "XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_REDIRECT", "XDP_TX",
    "MapLike", "Outcome", "verdict_name",
]
