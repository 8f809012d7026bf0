"""A program's copy of the world: the maps it runs against, shared or private.

Maps the data plane only reads are shared with the source (nothing is copied: a
33.5M-entry ring costs nothing). Maps it writes are cloned with batch operations, so the
source — a user's live maps, or the state one check starts from for two programs — is
never touched. Maps of maps whose inner maps are written get a new outer map holding clones
of the inner maps. Prog arrays are always reproduced: a new array holding the programs of
the source's slots loaded against this world (so a tail call runs against the world's
maps too), or, where a program cannot be loaded again, the source's program itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from ..analysis import analyze
from ..ir import Program
from ..kernel import LoadedProgram, Map
from ..kernel.errors import KernelError
from ..loader import create_map
from ..obj import MapSpec
from ..uapi import MapFlags, MapType, ProgType

UNKNOWN_MAP = "?"


class WorldError(RuntimeError):
    """The world cannot be reproduced (a map cannot be opened, cloned or filled)."""


def written_maps(programs: Iterable[Program], maps: Mapping[str, MapSpec],
                 prog_type: int = ProgType.XDP) -> set[str]:
    """Maps any of `programs` may write in the data plane (`outer[inner]` for the inner maps
    of a map of maps). A write through a map pointer the analysis lost counts as a write to
    every writable map: better a needless clone than a shared map written behind our back."""
    out: set[str] = set()
    for program in programs:
        facts = analyze(program, maps, prog_type=prog_type)
        for name, mf in facts.maps.items():
            if mf.written_by_data_plane:
                out.add(name)
    if UNKNOWN_MAP in out:
        out.discard(UNKNOWN_MAP)
        for name, spec in maps.items():
            if spec.type.is_map_of_maps:
                out.add(f"{name}[inner]")
            elif not spec.type.holds_fds and not spec.flags & MapFlags.RDONLY_PROG \
                    and not spec.freeze:
                out.add(name)
    return out


# Loads the program a prog array slot held (its kernel name) against the world; None when
# it cannot (the source's program is then used as is).
TailCallLoader = Callable[[LoadedProgram, "World"], LoadedProgram | None]


@dataclass
class World:
    """The maps one program runs against, by the names its instructions use."""

    maps: dict[str, Map]
    private: frozenset[str]  # names whose contents are this world's own (cloned or fresh)
    inner: dict[str, dict[bytes, Map]] = field(default_factory=dict)  # cloned inner maps
    notes: list[str] = field(default_factory=list)
    stack: ExitStack = field(default_factory=ExitStack, repr=False)

    @classmethod
    def build(cls, source: Mapping[str, Map], written: Iterable[str], *,
              fresh: Mapping[str, MapSpec] | None = None,
              tail_calls: TailCallLoader | None = None,
              object_name: str = "", prog_arrays: bool = True) -> World:
        """A world over `source`: written maps cloned, the others shared; `fresh` maps
        (not in the source) created empty from their specs. Without `prog_arrays`, prog
        arrays are shared instead of reproduced (for a snapshot nothing runs in)."""
        written = set(written)
        world = cls({}, frozenset())
        private: set[str] = set()
        reproduce = prog_arrays
        held: list[str] = []
        try:
            for name, m in source.items():
                if m.type == MapType.PROG_ARRAY and reproduce:
                    held.append(name)
                    continue
                if m.type.is_map_of_maps:
                    if f"{name}[inner]" in written:
                        world.maps[name] = world._reproduce_outer(name, m)
                        private.add(name)
                    else:
                        world.maps[name] = world._share(m)
                    continue
                if name in written and not m.type.holds_fds:
                    world.maps[name] = world._clone(name, m)
                    private.add(name)
                else:
                    world.maps[name] = world._share(m)
            for name, spec in (fresh or {}).items():
                if name in world.maps:
                    continue
                made = world.stack.enter_context(create_map(spec, object_name=object_name))
                world.maps[name] = made
                private.add(name)
            for name in held:
                world.maps[name] = world._new_prog_array(name, source[name])
                private.add(name)
            world.private = frozenset(private)
            for name in held:
                world._fill_prog_array(name, source[name], tail_calls)
        except BaseException:
            world.close()
            raise
        return world

    def _share(self, m: Map) -> Map:
        copy = self.stack.enter_context(Map.from_fd(m.fd, m.name))
        copy.name = m.name
        return copy

    def _clone(self, name: str, m: Map) -> Map:
        try:
            copy = self.stack.enter_context(m.clone())
        except (KernelError, ValueError) as exc:
            raise WorldError(f"cannot clone map {name!r} for the check: {exc}") from exc
        copy.name = name
        return copy

    def _reproduce_outer(self, name: str, outer: Map) -> Map:
        clones: dict[bytes, Map] = {}
        by_id: dict[int, Map] = {}  # an inner map held in several slots: one clone for all
        for key, value in _entries(outer):
            assert isinstance(value, bytes)
            inner_id = int.from_bytes(value[:4], "little")
            if inner_id in by_id:
                clones[key] = by_id[inner_id]
                continue
            try:
                with Map.from_id(inner_id) as inner:
                    clones[key] = by_id[inner_id] = self._clone(f"{name}[{key.hex()}]", inner)
            except KernelError as exc:
                raise WorldError(f"map of maps {name!r}: cannot open inner map id "
                                 f"{inner_id}: {exc}") from exc
        template = next(iter(clones.values()), None)
        if template is None:  # nothing inside: nothing to write into, share it
            return self._share(outer)
        new = self.stack.enter_context(Map.create(
            outer.type, outer.key_size, outer.value_size, outer.max_entries,
            flags=outer.flags, name=outer.name[:15], inner_map=template))
        new.name = name
        for key, inner in clones.items():
            new.update(key, inner)
        self.inner[name] = clones
        return new

    def _new_prog_array(self, name: str, source: Map) -> Map:
        new = self.stack.enter_context(Map.create(
            MapType.PROG_ARRAY, source.key_size, source.value_size, source.max_entries,
            flags=source.flags, name=source.info.name[:15]))  # the kernel's: a valid name
        new.name = name
        return new

    def _fill_prog_array(self, name: str, source: Map, loader: TailCallLoader | None) -> None:
        target = self.maps[name]
        for key, value in _entries(source):
            assert isinstance(value, bytes)
            prog_id = int.from_bytes(value[:4], "little")
            try:
                held = self.stack.enter_context(LoadedProgram.from_id(prog_id))
            except KernelError as exc:
                raise WorldError(f"prog array {name!r}: cannot open program id {prog_id}: "
                                 f"{exc}") from exc
            own = loader(held, self) if loader is not None else None
            if own is None:
                self.notes.append(f"{name}[{key.hex()}]: program {held.name!r} (tag "
                                  f"{held.tag}) is not the object's program of that name: "
                                  "it runs as loaded in the source (against the source's "
                                  "maps)")
                own = held
            else:
                self.stack.enter_context(own)
            target.update(key, own)

    def table(self, name: str) -> Any:
        """Everything in map `name`, comparable between two worlds: key -> value (per-CPU
        maps: one value per CPU), maps of maps: outer key -> the inner map's contents."""
        if name in self.inner:
            return {key: table_contents(m) for key, m in self.inner[name].items()}
        return table_contents(self.maps[name])

    def saved(self) -> dict[str, Any]:
        """What `restore` puts back: the contents of every private map holding data (not
        prog arrays, not fd maps), by name (`table`'s form)."""
        out: dict[str, Any] = {}
        for name in sorted(self.private):
            if name not in self.inner and self.maps[name].type.holds_fds:
                continue
            with contextlib.suppress(KernelError):  # a ring buffer: nothing to look up
                out[name] = self.table(name)
        return out

    def restore(self, saved: Mapping[str, Any]) -> dict[str, Any]:
        """Put the private maps back to `saved` (from `saved()`), writing only the entries
        that changed; returns what they held before."""
        before: dict[str, Any] = {}
        for name, contents in saved.items():
            now = self.table(name)
            before[name] = now
            if now == contents:
                continue
            if name in self.inner:
                for key, inner in self.inner[name].items():
                    _put_back(inner, now.get(key, {}), contents.get(key, {}))
            else:
                _put_back(self.maps[name], now, contents)
        return before

    def close(self) -> None:
        self.stack.close()

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _put_back(m: Map, now: Mapping[bytes, Any], contents: Mapping[bytes, Any]) -> None:
    for key in now.keys() - contents.keys():
        m.delete(key)
    for key, value in contents.items():
        if now.get(key) != value:
            m.update(key, value if isinstance(value, bytes) else list(value))


def _entries(m: Map) -> list[tuple[bytes, Any]]:
    return list(m.items())


def table_contents(m: Map) -> dict[bytes, Any]:
    """Every key and value of `m` (batched where the map type allows)."""
    if m.type.holds_fds and m.type not in (MapType.DEVMAP, MapType.DEVMAP_HASH):
        return {}
    with contextlib.suppress(KernelError):
        # No larger than the map: the buffers are allocated (and zeroed) at every call.
        batch = max(1, min(4096, m.max_entries))
        return {k: _canonical(v) for k, v in m.lookup_batch(batch)}
    return {k: _canonical(v) for k, v in m.items()}


def _canonical(value: bytes | list[bytes]) -> bytes | tuple[bytes, ...]:
    return value if isinstance(value, bytes) else tuple(value)
