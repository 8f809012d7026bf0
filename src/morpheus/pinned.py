"""Programs this project did not write: load and pin them, optimize them later.

`morpheus load OBJ --pin DIR` loads an object with our loader and pins its maps under
DIR/maps and its programs under DIR/progs (DIR on a bpffs mount), so the user's own control
plane or bpftool configures the maps. bpffs holds only kernel objects, so what is needed to
optimize the program later (a copy of the object and which program was loaded) is kept in
/run/morpheus/pins/, keyed by DIR.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .kernel import Map
from .kernel.pin import is_bpffs
from .loader import load_collection, read_for_kernel
from .optimizer import PlanOptions
from .traffic.generate import from_frames
from .traffic.pcap import read_pcap
from .world.environment import Subject

STATE_DIR = Path("/run/morpheus/pins")


class PinError(RuntimeError):
    pass


def _state_path(directory: Path) -> Path:
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    return STATE_DIR / digest


def load_and_pin(object_path: str | Path, directory: str | Path,
                 read: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load every program and map of the object and pin them under `directory`.

    `read` holds `read_for_kernel` options (btf, program_type, legacy_maps); they are kept
    with the pins so that `optimize` reads the object the same way."""
    directory = Path(directory)
    if not is_bpffs(directory.parent if not directory.exists() else directory):
        raise PinError(f"{directory} is not on a bpffs mount (use a path under /sys/fs/bpf)")
    if directory.exists() and any(directory.iterdir()):
        raise PinError(f"{directory} is not empty; unpin it first (rm -r {directory})")
    read = dict(read or {})
    spec = read_for_kernel(object_path, **read)
    state = _state_path(directory)
    state.mkdir(parents=True, exist_ok=True)
    try:
        with load_collection(spec) as coll:
            coll.pin(directory)
            info = {
                "directory": str(directory.resolve()),
                "object": str(state / "object.o"),
                "source": str(Path(object_path).resolve()),
                "programs": {name: p.id for name, p in coll.programs.items()},
                "maps": {name: m.id for name, m in coll.maps.items()},
                "read": read,
            }
        shutil.copyfile(object_path, state / "object.o")
        (state / "pins.json").write_text(json.dumps(info, indent=2))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        raise
    return info


def pinned_info(directory: str | Path) -> dict[str, Any]:
    state = _state_path(Path(directory)) / "pins.json"
    if not state.exists():
        raise PinError(f"{directory} was not pinned by `morpheus load` on this machine "
                       f"(no {state})")
    return json.loads(state.read_text())  # type: ignore[no-any-return]


def foreign_info(directory: str | Path, object_path: str | Path) -> dict[str, Any]:
    """What `pinned_info` records, for maps another owner pinned under `directory` (bpfman's
    /run/bpfman/fs/maps/<prog id>, or `bpftool prog loadall OBJ P pinmaps DIR`), given the
    object it loaded. Program ids are not known: tail-call chains are followed by the
    names of the programs in the prog arrays."""
    directory = Path(directory)
    if (directory / "maps").is_dir() and _state_path(directory).exists():
        raise PinError(f"{directory} was pinned by `morpheus load`: leave out --object")
    if not directory.is_dir():
        raise PinError(f"{directory}: no such directory of pinned maps")
    from .loader import find_pinned_maps

    spec = read_for_kernel(object_path)
    directory = find_pinned_maps(spec, directory)  # bpfman's maps/ root: the program's own
    return {"directory": str(directory.resolve()), "object": str(Path(object_path).resolve()),
            "source": str(Path(object_path).resolve()), "foreign": True,
            "programs": {name: None for name in spec.programs},
            "maps": {name: None for name in spec.maps}, "read": {}}


def source_info(directory: str | Path, object_path: str | Path | None = None) -> dict[str, Any]:
    """`pinned_info` for a `morpheus load --pin` directory, `foreign_info` with an object."""
    if object_path is not None:
        return foreign_info(directory, object_path)
    return pinned_info(directory)


def open_pinned_maps(directory: str | Path, info: dict[str, Any] | None = None
                     ) -> dict[str, Map]:
    """The live maps under `directory` (read them; the pins stay): DIR/maps/<name> for a
    `morpheus load --pin` directory, the owner's layout (one pin per map name, checked
    against the object) for `foreign_info`."""
    info = info if info is not None else pinned_info(directory)
    if info.get("foreign"):
        from .loader import adopt_pinned_maps

        return adopt_pinned_maps(read_for_kernel(info["object"]), info["directory"])
    root = Path(directory) / "maps"
    out: dict[str, Map] = {}
    try:
        for name in info["maps"]:
            pin = root / (name.lstrip(".") if name.startswith(".") else name)
            m = Map.from_pin(pin)
            m.name = name
            out[name] = m
    except BaseException:
        for m in out.values():
            m.close()
        raise
    return out


def optimize_pinned(directory: str | Path, trace_path: str | Path, *, program: str | None = None,
                    rounds: int = 5, ingress: int = 0, options: PlanOptions | None = None,
                    passes: Any = None, object_path: str | Path | None = None
                    ) -> dict[str, Any]:
    """The offline cycle on a pinned program, its live maps (read only) and a pcap trace.
    With `object_path`, `directory` holds maps another owner pinned for that object
    (bpfman's map pin path). `passes` replaces the cleanup passes (tests inject miscompiles
    this way)."""
    from .offline import optimize_program

    info = source_info(directory, object_path)
    spec = read_for_kernel(info["object"], **info.get("read", {}))
    name = program or (next(iter(info["programs"])) if len(info["programs"]) == 1 else None)
    if name is None:
        raise PinError(f"{directory} holds programs {', '.join(info['programs'])}: name one")
    trace = from_frames(read_pcap(trace_path), ingress, name=Path(trace_path).name)
    subject = Subject("original", Path(info["object"]), name, spec=spec)
    maps = open_pinned_maps(directory, info)
    try:
        report = optimize_program(subject, trace, source_maps=maps, options=options,
                                  rounds=rounds, passes=passes)
        chain = tail_call_chain(spec, name, maps, info)
        if chain:
            # The programs the root reaches through the object's prog arrays are optimized
            # with it, on the same trace (a root that dispatches without rewriting the
            # packet, as Katran's does, hands them exactly these packets).
            reports: dict[str, dict[str, Any]] = {}
            for _array, _slot, callee in chain:
                if callee not in reports and callee != name:
                    reports[callee] = optimize_program(
                        Subject("original", Path(info["object"]), callee, spec=spec), trace,
                        source_maps=maps, options=options, rounds=rounds, passes=passes)
            report["chain"] = [{"array": array, "slot": slot, "program": callee,
                                **reports.get(callee, {})}
                               for array, slot, callee in chain]
            report["equivalent"] = bool(report["equivalent"]) and all(
                r["equivalent"] for r in reports.values())
    finally:
        for m in maps.values():
            m.close()
    return {"program": name, "directory": str(directory), "trace": str(trace_path), **report}


def tail_call_chain(spec: Any, root: str, maps: dict[str, Map], info: dict[str, Any]
                    ) -> list[tuple[str, int, str]]:
    """(prog array, slot, program) for every program of the object that `root` reaches by
    tail calls, directly or not, through the object's prog arrays as they are filled now.
    Slots holding programs of other objects are left out: they run as they are."""
    from .optimizer import tail_call_arrays
    from .uapi import MapType

    ids = {pid: n for n, pid in info["programs"].items() if pid is not None}
    by_name = {n[:15]: n for n, pid in info["programs"].items() if pid is None}
    out: list[tuple[str, int, str]] = []
    seen, todo = {root}, [root]
    while todo:
        prog = spec.program(todo.pop())
        for array in sorted(tail_call_arrays(prog.program, spec.maps, prog.type) or ()):
            m = maps.get(array)
            if m is None or m.type != MapType.PROG_ARRAY:
                continue
            for key, value in m.items():
                assert isinstance(value, bytes)
                prog_id = int.from_bytes(value[:4], "little")
                callee = ids.get(prog_id)
                if callee is None and by_name:
                    # Loaded by another owner: known by the name the kernel keeps (15
                    # characters), as bpftool shows it.
                    callee = by_name.get(_program_name(prog_id))
                if callee is None:
                    continue
                out.append((array, int.from_bytes(key[:4], "little"), callee))
                if callee not in seen:
                    seen.add(callee)
                    todo.append(callee)
    return out


def _program_name(prog_id: int) -> str | None:
    from .kernel import KernelError, LoadedProgram

    try:
        with LoadedProgram.from_id(prog_id) as prog:
            return prog.name
    except (KernelError, OSError):
        return None


def pin_specialized(directory: str | Path, destination: str | Path, program: str,
                    specialization: Any, chain: Sequence[tuple[str, int, str, Any]] = (),
                    object_path: str | Path | None = None) -> dict[str, Any]:
    """Pin a specialized version of `program` (loaded from `directory`) under `destination`:
    the program as progs/<name>, and every map it uses as maps/<name> — the user's own maps
    from `directory` (the same kernel maps, pinned a second time) and the maps the
    specialization added (inlined values, guards), so bpftool and the user's tools can run
    and inspect it.

    `chain` holds (prog array, slot, program, its specialization or None) for the programs
    `program` tail-calls: they are loaded too, and the pinned root tail-calls them through
    new prog arrays of its own (the user's arrays keep their programs), so the pinned chain
    is specialized end to end.

    The inlined values are those of the maps when `optimize` read them. Sites on maps the
    data plane writes check a version guard that the program's own writes move; writes by
    the control plane are not seen by this copy (`morpheus run` is what keeps a specialized
    program true to its maps while they change).
    """
    from .kernel import load_btf
    from .loader import create_map, load_program_spec
    from .uapi import MapType

    destination = Path(destination)
    if not is_bpffs(destination.parent if not destination.exists() else destination):
        raise PinError(f"{destination} is not on a bpffs mount (use a path under /sys/fs/bpf)")
    if destination.exists() and any(destination.iterdir()):
        raise PinError(f"{destination} is not empty; unpin it first (rm -r {destination})")
    info = source_info(directory, object_path)
    spec = read_for_kernel(info["object"], **info.get("read", {}))
    maps = open_pinned_maps(directory, info)
    with ExitStack() as stack:
        for m in maps.values():
            stack.callback(m.close)
        btf_fd = stack.enter_context(load_btf(spec.btf.blob())) if spec.btf is not None \
            else None
        used: dict[str, Map] = dict(maps)
        pinned: dict[str, Any] = {}

        def load(name: str, special: Any) -> Any:
            for extra, mspec in (special.extra_maps.items() if special is not None else ()):
                if extra not in used:
                    used[extra] = stack.enter_context(create_map(mspec))
            prog_spec = spec.program(name)
            program = special.program if special is not None else None
            loaded = stack.enter_context(load_program_spec(prog_spec, used, program=program,
                                                           btf_fd=btf_fd))
            pinned[name] = (loaded, prog_spec.with_program(program or prog_spec.program))
            return loaded

        for array, _slot, _callee, _special in chain:
            if array not in pinned and isinstance(used.get(array), Map) and \
                    used[array].type == MapType.PROG_ARRAY and array in maps:
                source = maps[array]
                used[array] = stack.enter_context(Map.create(
                    MapType.PROG_ARRAY, source.key_size, source.value_size, source.max_entries,
                    name=source.info.name[:15]))
                used[array].name = array
                pinned[array] = None
        for array, slot, callee, special in chain:
            loaded = pinned[callee][0] if callee in pinned else load(callee, special)
            used[array].update(slot, loaded)
        root = load(program, specialization)
        try:
            (destination / "progs").mkdir(parents=True, exist_ok=True)
            (destination / "maps").mkdir(parents=True, exist_ok=True)
            names: set[str] = set()
            for name, entry in pinned.items():
                if entry is None:
                    continue
                entry[0].pin(destination / "progs" / name)
                names |= entry[1].map_names
            for name in sorted(names):
                used[name].pin(destination / "maps" / (name.lstrip(".") or name))
        except BaseException:
            shutil.rmtree(destination, ignore_errors=True)
            raise
        return {"directory": str(destination), "program": program, "id": root.id,
                "maps": sorted(names),
                "chain": [{"array": a, "slot": s, "program": c} for a, s, c, _ in chain]}
