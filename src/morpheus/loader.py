"""Turning an ObjectSpec into live kernel objects, transactionally.

Maps are created first (BTF uploaded once, global data initialised, .rodata frozen), then
programs are encoded with the maps' fds and loaded. If anything fails, everything created so
far is closed; the caller owns the objects only once `load_collection` returns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from .ir import Program, encode
from .kernel import FD, LoadedProgram, Map, load_btf, load_program
from .obj import MapSpec, ObjectSpec, ProgramSpec
from .uapi import BPF_OBJ_NAME_LEN

LIBBPF_PIN_BY_NAME = 1


class LoadError(RuntimeError):
    """Loading an object failed; `__cause__` is the kernel error (e.g. a VerifierError)."""


def kernel_map_name(object_name: str, spec: MapSpec) -> str:
    """The name libbpf would give the map in the kernel (15 characters at most).

    Global data maps are called `<first 8 chars of the object name>.rodata` (or .data, .bss);
    custom sections like `.rodata.cfg` keep their own name.
    """
    if not spec.is_global_data:
        return spec.name[: BPF_OBJ_NAME_LEN - 1]
    section = spec.section
    if "." in section[1:]:
        name = section[: BPF_OBJ_NAME_LEN - 1]
    else:
        suffix = max(7, len(section))
        prefix = min(BPF_OBJ_NAME_LEN - suffix - 1, len(object_name))
        name = object_name[:prefix] + section
    return re.sub(r"[^A-Za-z0-9_.]", "_", name)[: BPF_OBJ_NAME_LEN - 1]


@dataclass
class Collection:
    """Live maps and programs of one object. Close it (or use `with`) to release them;
    pinned or attached objects stay in the kernel."""

    spec: ObjectSpec
    maps: dict[str, Map] = field(default_factory=dict)
    programs: dict[str, LoadedProgram] = field(default_factory=dict)
    btf_fd: FD | None = None

    def close(self) -> None:
        for prog in self.programs.values():
            prog.close()
        for m in self.maps.values():
            m.close()
        if self.btf_fd is not None:
            self.btf_fd.close()
        self.programs.clear()
        self.maps.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def map_fds(self) -> dict[str, int]:
        return {name: m.fd.number for name, m in self.maps.items()}

    def load_program(
        self,
        spec: ProgramSpec | None = None,
        program: Program | None = None,
        *,
        name: str | None = None,
        log_level: int = 0,
    ) -> LoadedProgram:
        """Load another version of a program against this collection's maps (not owned by
        the collection: the caller closes it)."""
        spec = spec or self.spec.program(None)
        return load_program_spec(spec, self, program=program, name=name, log_level=log_level)

    def pin(self, directory: str | Path) -> None:
        """Pin every map as DIR/maps/<name> and every program as DIR/progs/<name>."""
        root = Path(directory)
        (root / "maps").mkdir(parents=True, exist_ok=True)
        (root / "progs").mkdir(parents=True, exist_ok=True)
        for name, m in self.maps.items():
            m.pin(root / "maps" / _pin_name(name))
        for name, p in self.programs.items():
            p.pin(root / "progs" / _pin_name(name))


def _pin_name(name: str) -> str:
    return name.lstrip(".") if name.startswith(".") else name


def create_map(spec: MapSpec, *, object_name: str = "", btf_fd: FD | None = None) -> Map:
    """Create one map from its spec and write its initial data (global data sections)."""
    inner = None
    if spec.inner is not None:
        inner = Map.create(
            spec.inner.type,
            spec.inner.key_size,
            spec.inner.value_size,
            spec.inner.max_entries,
            flags=spec.inner.flags,
            name=spec.inner.name[: BPF_OBJ_NAME_LEN - 1].replace(".", "_"),
        )
    try:
        m = Map.create(
            spec.type,
            spec.key_size,
            spec.value_size,
            spec.max_entries,
            flags=spec.flags,
            name=kernel_map_name(object_name, spec),
            inner_map=inner,
            btf_fd=btf_fd if (spec.btf_key_type_id or spec.btf_value_type_id) else None,
            btf_key_type_id=spec.btf_key_type_id,
            btf_value_type_id=spec.btf_value_type_id,
            map_extra=spec.map_extra,
        )
    finally:
        if inner is not None:
            inner.close()
    m.name = spec.name
    try:
        if spec.data is not None and any(spec.data):
            m.update(0, spec.data)
        if spec.freeze:
            m.freeze()
    except BaseException:
        m.close()
        raise
    return m


def load_program_spec(
    spec: ProgramSpec,
    maps: Mapping[str, Map] | Collection,
    *,
    program: Program | None = None,
    btf_fd: FD | None = None,
    name: str | None = None,
    log_level: int = 0,
) -> LoadedProgram:
    """Encode `program` (default: the spec's) against `maps` (by name) and load it.

    With a Collection, its maps and BTF are used. The caller owns the returned program.
    """
    if isinstance(maps, Collection):
        btf_fd = btf_fd if btf_fd is not None else maps.btf_fd
        maps = maps.maps
    encoded = encode(program or spec.program, {n: m.fd.number for n, m in maps.items()})
    with_btf = btf_fd is not None and bool(encoded.func_info)
    return load_program(
        encoded.bytecode,
        spec.type,
        name=(name or spec.name)[: BPF_OBJ_NAME_LEN - 1],
        license=spec.license or "GPL",
        expected_attach_type=spec.attach_type,
        btf_fd=btf_fd if with_btf else None,
        func_info=encoded.func_info if with_btf else (),
        line_info=encoded.line_info if with_btf else (),
        prog_flags=spec.flags,
        kern_version=spec.kern_version,
        log_level=log_level,
    )


def load_collection(
    spec: ObjectSpec,
    *,
    programs: Iterable[str] | None = None,
    maps: Mapping[str, Map] | None = None,
    pin_root: str | Path | None = None,
    log_level: int = 0,
) -> Collection:
    """Create the object's maps and load its programs (all, or those named).

    `maps` supplies existing maps to use instead of creating them (by name; they are not
    owned by the collection and are not closed with it). With `pin_root`, maps declared with
    `__uint(pinning, LIBBPF_PIN_BY_NAME)` are reused from, or pinned at, `pin_root/<name>`.
    """
    wanted = list(spec.programs) if programs is None else list(programs)
    for name in wanted:
        spec.program(name)  # raises a KeyError naming the available programs
    coll = Collection(spec)
    borrowed = dict(maps or {})
    try:
        if spec.btf is not None:
            coll.btf_fd = load_btf(spec.btf.blob(), what=f"BTF of {spec.name}")
        needed = set()
        for name in wanted:
            needed |= spec.programs[name].map_names
        for name, mspec in spec.maps.items():
            if name in borrowed:
                coll.maps[name] = Map.from_fd(borrowed[name].fd, name)
                continue
            if mspec.pinning == LIBBPF_PIN_BY_NAME and pin_root is not None:
                path = Path(pin_root) / name
                if path.exists():
                    coll.maps[name] = Map.from_pin(path)
                    coll.maps[name].name = name
                    continue
                m = create_map(mspec, object_name=spec.name, btf_fd=coll.btf_fd)
                coll.maps[name] = m
                m.pin(path)
                continue
            coll.maps[name] = create_map(mspec, object_name=spec.name, btf_fd=coll.btf_fd)
        for name in wanted:
            coll.programs[name] = load_program_spec(spec.programs[name], coll, log_level=log_level)
    except BaseException:
        coll.close()
        raise
    return coll
