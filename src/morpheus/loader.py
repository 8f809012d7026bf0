"""Turning an ObjectSpec into live kernel objects, transactionally.

Maps are created first (BTF uploaded once, global data initialised, .rodata frozen), then
programs are encoded with the maps' fds and loaded. If anything fails, everything created so
far is closed; the caller owns the objects only once `load_collection` returns.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from .ir import Program, encode
from .ir.program import EncodedProgram
from .kernel import FD, LoadedProgram, Map, VerifierError, load_btf, load_program, possible_cpus
from .kernel.btf import kallsyms_listed, kernel_config, open_module_btfs, running_target
from .obj import MapSpec, ObjectSpec, ProgramSpec, read_object
from .obj.core import POISON_IMM
from .obj.reader import ReadOptions
from .uapi import BPF_OBJ_NAME_LEN, MapFlags, MapType

LIBBPF_PIN_BY_NAME = 1
DEFAULT_PIN_ROOT = Path("/sys/fs/bpf")  # libbpf's default for LIBBPF_PIN_BY_NAME


class LoadError(RuntimeError):
    """Loading an object failed; `__cause__` is the kernel error (e.g. a VerifierError)."""


class PinnedMapMismatch(LoadError):
    """A map declared LIBBPF_PIN_BY_NAME is pinned already with other parameters."""


class PinnedMapMissing(LoadError):
    """A map of the object has no pin in the directory the maps are adopted from."""


class KsymWithoutAddress(LoadError):
    """The kernel found a typed `__ksym` variable in its BTF but no address for it."""


class PoisonedRelocation(LoadError):
    """The verifier reached an instruction whose CO-RE relocation the target cannot satisfy
    (libbpf's "bad relo" call): the message names program, instruction, type and access."""


def read_for_kernel(
    path: str | os.PathLike[str] | bytes,
    *,
    btf: str | None = None,
    program_type: str | None = None,
    legacy_maps: bool = False,
    name: str | None = None,
) -> ObjectSpec:
    """Read an object for the running kernel: CO-RE relocations against its BTF (or the BTF
    file `btf`, like libbpf's btf_custom_path), externs against its BTF and configuration.
    The kernel's BTF is read at most once per process, and only if the object needs it."""
    options = ReadOptions(target=lambda: running_target(btf), program_type=program_type,
                          legacy_maps=legacy_maps)
    return read_object(path, name, options)


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
    # BTF fds of the kernel modules whose kfuncs or ksyms the programs use (their fd_array),
    # held as long as the collection, as libbpf holds them as long as the object.
    module_btf_fds: dict[str, FD] = field(default_factory=dict)

    def close(self) -> None:
        for prog in self.programs.values():
            prog.close()
        for m in self.maps.values():
            m.close()
        if self.btf_fd is not None:
            self.btf_fd.close()
        for fd in self.module_btf_fds.values():
            fd.close()
        self.programs.clear()
        self.maps.clear()
        self.module_btf_fds.clear()

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


def _max_entries(spec: MapSpec) -> int:
    # As libbpf: a perf event array without max_entries gets one slot per possible CPU.
    if spec.type == MapType.PERF_EVENT_ARRAY and not spec.max_entries:
        return possible_cpus()
    return spec.max_entries


def create_map(spec: MapSpec, *, object_name: str = "", btf_fd: FD | None = None) -> Map:
    """Create one map from its spec and write its initial data (global data sections)."""
    inner = None
    if spec.inner is not None:
        inner_btf = spec.inner.btf_key_type_id or spec.inner.btf_value_type_id
        inner = Map.create(
            spec.inner.type,
            spec.inner.key_size,
            spec.inner.value_size,
            _max_entries(spec.inner),
            flags=spec.inner.flags,
            name=spec.inner.name[: BPF_OBJ_NAME_LEN - 1].replace(".", "_"),
            btf_fd=btf_fd if inner_btf else None,
            btf_key_type_id=spec.inner.btf_key_type_id,
            btf_value_type_id=spec.inner.btf_value_type_id,
            map_extra=spec.inner.map_extra,
        )
    try:
        m = Map.create(
            spec.type,
            spec.key_size,
            spec.value_size,
            _max_entries(spec),
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

    With a Collection, its maps, BTF and module BTF fds are used; otherwise the BTF of the
    kernel modules whose kfuncs the program calls is opened for the load (the kernel keeps
    its own references). The caller owns the returned program.
    """
    module_fds: Mapping[str, FD] = {}
    if isinstance(maps, Collection):
        btf_fd = btf_fd if btf_fd is not None else maps.btf_fd
        module_fds = maps.module_btf_fds
        maps = maps.maps
    program = program or spec.program
    with contextlib.ExitStack() as opened:
        fd_array: tuple[int, ...] = ()
        if spec.module_btfs:
            if any(m not in module_fds for m in spec.module_btfs):
                module_fds = open_module_btfs(spec.module_btfs)
                for fd in module_fds.values():
                    opened.callback(fd.close)
            # Index 0 stays unused: a kfunc call with `off` 0 is vmlinux's (as libbpf).
            fd_array = (0, *(module_fds[m].number for m in spec.module_btfs))
        encoded = encode(program, {n: m.fd.number for n, m in maps.items()}, fd_array)
        with_btf = btf_fd is not None and bool(encoded.func_info)
        try:
            return _load(spec, encoded, _LoadOptions(btf_fd if with_btf else None, name,
                                                     log_level, fd_array))
        except VerifierError as exc:
            _explain(spec, program, exc)
            raise


def _explain(spec: ProgramSpec, program: Program, exc: VerifierError) -> None:
    """Raise a LoadError that says what to do, for refusals the loader can explain."""
    if f"unknown#{POISON_IMM}" in exc.log:
        raise PoisonedRelocation(
            f"program {spec.name}: the verifier reached an instruction whose CO-RE relocation "
            f"the target kernel cannot satisfy: {'; '.join(_poison_notes(program))}"
        ) from exc
    missing = _KSYM_WITHOUT_ADDRESS.search(exc.log)
    if missing is not None:
        raise KsymWithoutAddress(
            f"program {spec.name}: __ksym variable {missing.group(1)!r}: "
            f"{_why_no_address(missing.group(1))} (verifier: {missing.group(0)})") from exc


# The verifier's words when kallsyms has no address for a typed ksym's BTF VAR.
_KSYM_WITHOUT_ADDRESS = re.compile(r"ldimm64 failed to find the address for kernel symbol "
                                   r"'([^']+)'")


def _why_no_address(symbol: str) -> str:
    found = "the kernel knows its type (BTF) but has no address for it"
    if not kallsyms_listed(symbol):
        config = kernel_config()
        if config is not None and config.get("CONFIG_KALLSYMS_ALL") != "y":
            return (f"{found}: the kernel looks typed ksyms up in kallsyms, which lists no "
                    "data symbols on this kernel (built without CONFIG_KALLSYMS_ALL); libbpf "
                    "fails the same way. Run on a kernel with CONFIG_KALLSYMS_ALL=y, or read "
                    "the value through a helper or kfunc instead")
        return (f"{found}: the symbol is not in /proc/kallsyms (not exported as data on this "
                "kernel, or renamed); libbpf fails the same way")
    return f"{found} (see the verifier log)"


def _poison_notes(program: Program) -> list[str]:
    """Where the program's poisoned CO-RE relocations are (slot numbers, as the verifier
    counts instructions), and why."""
    notes = []
    slot = 0
    for insn in program.insns:
        note = insn.meta.note
        if note and note.startswith("CO-RE"):
            notes.append(f"instruction {slot}: {note}")
        slot += insn.width
    return notes or ["see the verifier log"]


@dataclass(frozen=True, slots=True)
class _LoadOptions:
    btf_fd: FD | None
    name: str | None
    log_level: int
    fd_array: tuple[int, ...] = ()


def _load(spec: ProgramSpec, encoded: EncodedProgram, options: _LoadOptions) -> LoadedProgram:
    btf_fd = options.btf_fd
    with_btf = btf_fd is not None
    return load_program(
        encoded.bytecode,
        spec.type,
        name=(options.name or spec.name)[: BPF_OBJ_NAME_LEN - 1],
        license=spec.license or "GPL",
        expected_attach_type=spec.attach_type,
        btf_fd=btf_fd if with_btf else None,
        func_info=encoded.func_info if with_btf else (),
        line_info=encoded.line_info if with_btf else (),
        prog_flags=spec.flags,
        kern_version=spec.kern_version,
        log_level=options.log_level,
        fd_array=options.fd_array,
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
    owned by the collection and are not closed with it). Maps declared with
    `__uint(pinning, LIBBPF_PIN_BY_NAME)` are reused from, or pinned at, `pin_root/<name>`
    (default /sys/fs/bpf, as libbpf); a pinned map with other parameters is an error.
    Static initialisers (`.values = {...}`) are written once the maps and programs exist.
    """
    wanted = list(spec.programs) if programs is None else list(programs)
    for name in wanted:
        spec.program(name)  # raises a KeyError naming the available programs
    coll = Collection(spec)
    borrowed = dict(maps or {})
    created: set[str] = set()
    try:
        if spec.btf is not None:
            coll.btf_fd = load_btf(spec.btf.blob(), what=f"BTF of {spec.name}")
        for name, mspec in spec.maps.items():
            if name in borrowed:
                coll.maps[name] = Map.from_fd(borrowed[name].fd, name)
                continue
            if mspec.pinning == LIBBPF_PIN_BY_NAME:
                path = Path(pin_root if pin_root is not None else DEFAULT_PIN_ROOT) / name
                if path.exists():
                    coll.maps[name] = _reuse_pinned(mspec, path)
                    continue
                m = create_map(mspec, object_name=spec.name, btf_fd=coll.btf_fd)
                coll.maps[name] = m
                created.add(name)
                m.pin(path)
                continue
            coll.maps[name] = create_map(mspec, object_name=spec.name, btf_fd=coll.btf_fd)
            created.add(name)
        for name, mspec in spec.maps.items():
            if mspec.init_slots and mspec.type != MapType.PROG_ARRAY and name in created:
                for slot, inner in mspec.init_slots:
                    coll.maps[name].update(slot, coll.maps[inner])
        modules = dict.fromkeys(m for n in wanted for m in spec.programs[n].module_btfs)
        if modules:
            coll.module_btf_fds = open_module_btfs(tuple(modules))
        for name in wanted:
            coll.programs[name] = load_program_spec(spec.programs[name], coll, log_level=log_level)
        for name, mspec in spec.maps.items():
            if mspec.type == MapType.PROG_ARRAY:
                for slot, prog in mspec.init_slots:
                    if prog in coll.programs:
                        coll.maps[name].update(slot, coll.programs[prog])
    except BaseException:
        coll.close()
        raise
    return coll


def foreign_pin_names(object_name: str, spec: MapSpec) -> list[str]:
    """The names another loader may have pinned the map under, most likely first: the
    object's own name for it (bpfman's and `bpftool ... pinmaps`'s layout for BTF maps), the
    name the kernel knows it by (libbpf's for global data, e.g. `router.rodata`) and the
    section without its leading dot."""
    names = [spec.name, kernel_map_name(object_name, spec), spec.name.lstrip(".")]
    return list(dict.fromkeys(n for n in names if n))


def adopt_pinned_maps(spec: ObjectSpec, directory: str | Path,
                      names: Iterable[str] | None = None) -> dict[str, Map]:
    """Open the maps of `spec` (all, or those named) pinned by another owner under
    `directory`, one pin per map named after it (bpfman's /run/bpfman/fs/maps/<prog id>/,
    `bpftool prog loadall OBJ DIR pinmaps MAPDIR`), each checked against the object's
    definition as LIBBPF_PIN_BY_NAME reuse is (`PinnedMapMismatch`); a map with no pin is
    `PinnedMapMissing`. Nothing is created, written or unpinned: the caller closes the
    returned maps, and the owner's pins stay."""
    root = Path(directory)
    if not root.is_dir():
        raise PinnedMapMissing(f"{root}: no such directory of pinned maps")
    out: dict[str, Map] = {}
    try:
        for name in (list(spec.maps) if names is None else list(names)):
            mspec = spec.maps[name]
            candidates = foreign_pin_names(spec.name, mspec)
            path = next((root / n for n in candidates if (root / n).exists()), None)
            if path is None:
                present = sorted(p.name for p in root.iterdir())
                raise PinnedMapMissing(
                    f"map {name!r} of {spec.name} is not pinned under {root} (looked for "
                    f"{', '.join(candidates)}; the directory holds "
                    f"{', '.join(present) or 'nothing'}): give the directory the owner "
                    "pinned this object's maps in")
            out[name] = _reuse_pinned(mspec, path, hint="it belongs to another program or "
                                      "another build of this object")
    except BaseException:
        for m in out.values():
            m.close()
        raise
    return out


def find_pinned_maps(spec: ObjectSpec, directory: str | Path) -> Path:
    """The directory holding the object's maps: `directory` itself when it has a pin for
    each, else its one subdirectory that does with maps of the declared parameters (under
    bpfman's /run/bpfman/fs/maps, each program's maps sit in a directory named by its
    program id, which differs from node to node). None or several: a LoadError saying so."""
    root = Path(directory)
    if not root.is_dir():
        raise PinnedMapMissing(f"{root}: no such directory of pinned maps")

    def holds_all(d: Path) -> bool:
        return all(any((d / n).exists() for n in foreign_pin_names(spec.name, m))
                   for m in spec.maps.values())

    if holds_all(root):
        return root
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and holds_all(p)):
        try:
            maps = adopt_pinned_maps(spec, sub)
        except LoadError:
            continue
        for m in maps.values():
            m.close()
        found.append(sub)
    if len(found) == 1:
        return found[0]
    if not found:
        adopt_pinned_maps(spec, root)  # raises, naming the first missing or different map
    raise LoadError(f"{len(found)} directories under {root} hold maps of {spec.name} "
                    f"({', '.join(p.name for p in found)}): give the one of the program "
                    "to specialize (bpfman: `bpfman get PROGRAM_ID` shows its map pin path)")


def _reuse_pinned(spec: MapSpec, path: Path, hint: str = "unpin it or rename the map") -> Map:
    """The map pinned at `path`, if it is what `spec` declares (libbpf's
    map_is_reuse_compat: type, key and value size, entries, flags, map_extra)."""
    m = Map.from_pin(path)
    info = m.info
    flags = spec.flags
    if spec.type in (MapType.DEVMAP, MapType.DEVMAP_HASH):
        flags |= MapFlags.RDONLY_PROG  # the kernel adds it to every devmap
    wanted = {"type": spec.type, "key_size": spec.key_size, "value_size": spec.value_size,
              "max_entries": _max_entries(spec), "flags": flags,
              "map_extra": spec.map_extra}
    found = {"type": info.type, "key_size": info.key_size, "value_size": info.value_size,
             "max_entries": info.max_entries, "flags": info.flags, "map_extra": info.map_extra}
    differ = [f"{k} {found[k]} (declared {wanted[k]})" for k in wanted if found[k] != wanted[k]]
    if differ:
        m.close()
        raise PinnedMapMismatch(
            f"map {spec.name!r}: the map pinned at {path} cannot be reused, its parameters "
            f"differ: {', '.join(differ)}; {hint}")
    m.name = spec.name
    return m
