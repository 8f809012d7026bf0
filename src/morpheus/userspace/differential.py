"""Running the same packets through the kernel and the user-space data plane, from the same
state, and comparing verdicts, output bytes and map side effects.

Values from nondeterministic helpers (time, random numbers) must not raise false alarms and
nothing else may be missed: the user-space side runs twice, on two planes copied from the
same kernel state, with different clocks and random seeds. Whatever differs between those two
runs (an 8-byte word of a map value, a packet's verdict) depends on time or chance and is left
out of the comparison with the kernel; everything else must be equal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..kernel import Map, MapType, xdp_ctx
from ..obj import ObjectSpec
from .dataplane import (
    UserDataPlane,
    UserProgram,
    kernel_snapshot,
    read_array_raw,
    read_entries,
)
from .maps import ARRAYS, UserMap

_RUN_B_CLOCK_SHIFT = (1 << 40) + (1 << 32) + (1 << 24) + (1 << 16) + (1 << 8) + 1


@dataclass
class Difference:
    what: str
    kernel: object
    user: object

    def __str__(self) -> str:
        return f"{self.what}: kernel {self.kernel!r}, user space {self.user!r}"


@dataclass
class DiffReport:
    packets: int = 0
    nondeterministic_packets: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not self.differences

    def summary(self, limit: int = 5) -> str:
        lines = [f"{len(self.differences)} differences on {self.packets} packets"]
        lines += [str(d) for d in self.differences[:limit]]
        return "\n".join(lines)


KernelRun = Callable[[bytes, int], tuple[int, bytes]]


def kernel_runner(program: object, namespace: object | None = None) -> KernelRun:
    """BPF_PROG_TEST_RUN of a LoadedProgram on (frame, ingress ifindex)."""

    def run(frame: bytes, ingress: int) -> tuple[int, bytes]:
        ctx = xdp_ctx(ingress, len(frame)) if ingress > 1 else None
        if namespace is not None:
            with namespace.entered():  # type: ignore[attr-defined]
                result = program.test_run(frame, ctx=ctx)  # type: ignore[attr-defined]
        else:
            result = program.test_run(frame, ctx=ctx)  # type: ignore[attr-defined]
        return result.retval, result.data or b""

    return run


@dataclass
class UserSide:
    """The two user-space planes (different clocks and seeds) and their entry programs."""

    planes: tuple[UserDataPlane, UserDataPlane]
    entries: tuple[UserProgram, UserProgram]

    def close(self) -> None:
        for plane in self.planes:
            plane.close()


Setup = Callable[[UserDataPlane], UserProgram]


def user_side(spec: ObjectSpec | None, kernel_maps: Mapping[str, Map], setup: Setup, *,
              cpu: int = 0, extra_maps: Mapping[str, object] | None = None) -> UserSide:
    """Two planes holding what `kernel_maps` hold now; `setup(plane)` loads the programs
    (and fills prog arrays) and returns the entry program."""
    planes: list[UserDataPlane] = []
    entries: list[UserProgram] = []
    try:
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        snapshot = kernel_snapshot(kernel_maps, list(kernel_maps))
        for n in range(2):
            plane = UserDataPlane.create(spec, cpu=cpu,
                                         extra_maps=extra_maps)  # type: ignore[arg-type]
            planes.append(plane)
            plane.copy_from_kernel(kernel_maps, snapshot=snapshot)
            plane.env.fake_time = now + (_RUN_B_CLOCK_SHIFT if n else 0)
            plane.env.prandom = 0x9E3779B97F4A7C15 if n == 0 else 0xD1B54A32D192ED03
            entries.append(setup(plane))
    except BaseException:
        for plane in planes:
            plane.close()
        raise
    return UserSide((planes[0], planes[1]), (entries[0], entries[1]))


def compare_runs(frames: Sequence[tuple[bytes, int]], kernel: KernelRun, user: UserSide,
                 kernel_maps: Mapping[str, Map], *, report: DiffReport | None = None,
                 compare_maps_after: bool = True) -> DiffReport:
    """Every frame through the kernel and both user planes; then the maps."""
    report = report or DiffReport()
    a, b = user.planes
    pa, pb = user.entries
    for n, (frame, ingress) in enumerate(frames):
        k = kernel(frame, ingress)
        ra = a.run(pa, frame, ingress)
        rb = b.run(pb, frame, ingress)
        report.packets += 1
        if (ra.retval, ra.data) != (rb.retval, rb.data):
            report.nondeterministic_packets += 1
            continue
        if k != (ra.retval, ra.data):
            report.differences.append(Difference(f"packet {n}", k, (ra.retval, ra.data)))
    if compare_maps_after:
        report.differences.extend(compare_maps(kernel_maps, a, b))
    return report


def _masked_equal(kernel: bytes, a: bytes, b: bytes) -> bool:
    if len(kernel) != len(a):
        return False
    for off in range(0, len(a), 8):
        if a[off:off + 8] != b[off:off + 8]:
            continue  # time- or chance-derived word
        if kernel[off:off + 8] != a[off:off + 8]:
            return False
    return True


def _value_equal(kernel: object, a: object, b: object) -> bool:
    if isinstance(kernel, list):
        return (isinstance(a, list) and isinstance(b, list) and len(kernel) == len(a)
                and all(_masked_equal(bytes(k), x, y) for k, x, y in zip(kernel, a, b,
                                                                          strict=True)))
    return _masked_equal(bytes(kernel), a, b)  # type: ignore[arg-type]


def compare_maps(kernel_maps: Mapping[str, Map], a: UserDataPlane,
                 b: UserDataPlane) -> list[Difference]:
    """Differences between the kernel's maps and plane `a`'s (words that differ between the
    planes `a` and `b` are ignored)."""
    out: list[Difference] = []
    for name, mine in a.maps.items():
        theirs = kernel_maps.get(name)
        if theirs is None or mine.type in (MapType.PROG_ARRAY, MapType.RINGBUF):
            continue
        if mine.type in (MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS):
            out.extend(_compare_inner(name, theirs, mine, b.maps[name]))
            continue
        if mine.type in ARRAYS and read_array_raw(theirs) == mine.array_raw():
            continue  # the common case, without looking at 262,000 entries one by one
        out.extend(_compare_contents(name, _kernel_contents(theirs), mine.contents(),
                                     b.maps[name].contents()))
    return out


def _kernel_contents(m: Map) -> dict[bytes, object]:
    return dict(read_entries(m))


def _compare_contents(name: str, kernel: Mapping[bytes, object], a: Mapping[bytes, object],
                      b: Mapping[bytes, object]) -> list[Difference]:
    out = []
    for key in sorted(set(kernel) | set(a)):
        kv, av, bv = kernel.get(key), a.get(key), b.get(key)
        if kv is None or av is None:
            if (kv is None) != (av is None) and (av is None) == (bv is None):
                out.append(Difference(f"map {name} key {key.hex()}", kv, av))
            continue
        if bv is None:
            continue  # present in one user run only: chance decided
        if not _value_equal(kv, av, bv):
            out.append(Difference(f"map {name} key {key.hex()}", kv, av))
    return out


def _compare_inner(name: str, theirs: Map, a: UserMap, b: UserMap) -> list[Difference]:
    out = []
    kernel_keys = {bytes(k): v for k, v in theirs.items()}
    if set(kernel_keys) != set(a.referenced):
        out.append(Difference(f"map {name} keys", sorted(kernel_keys), sorted(a.referenced)))
        return out
    for key, value in kernel_keys.items():
        inner_id = int.from_bytes(bytes(value)[:4], "little")  # type: ignore[arg-type]
        inner_a, inner_b = a.referenced[key], b.referenced.get(key)
        assert isinstance(inner_a, UserMap) and isinstance(inner_b, UserMap)
        with Map.from_id(inner_id) as inner:
            out.extend(_compare_contents(f"{name}[{key.hex()}]", _kernel_contents(inner),
                                         inner_a.contents(), inner_b.contents()))
    return out
