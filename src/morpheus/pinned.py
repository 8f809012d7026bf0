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
from pathlib import Path
from typing import Any

from .bench.compare import Subject
from .kernel import Map
from .kernel.pin import is_bpffs
from .loader import load_collection
from .obj import read_object
from .optimizer import PlanOptions
from .traffic.generate import from_frames
from .traffic.pcap import read_pcap

STATE_DIR = Path("/run/morpheus/pins")


class PinError(RuntimeError):
    pass


def _state_path(directory: Path) -> Path:
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    return STATE_DIR / digest


def load_and_pin(object_path: str | Path, directory: str | Path) -> dict[str, Any]:
    """Load every program and map of the object and pin them under `directory`."""
    directory = Path(directory)
    if not is_bpffs(directory.parent if not directory.exists() else directory):
        raise PinError(f"{directory} is not on a bpffs mount (use a path under /sys/fs/bpf)")
    if directory.exists() and any(directory.iterdir()):
        raise PinError(f"{directory} is not empty; unpin it first (rm -r {directory})")
    spec = read_object(object_path)
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


def open_pinned_maps(directory: str | Path) -> dict[str, Map]:
    root = Path(directory) / "maps"
    out: dict[str, Map] = {}
    info = pinned_info(directory)
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
                    rounds: int = 5, ingress: int = 0, options: PlanOptions | None = None
                    ) -> dict[str, Any]:
    """The offline cycle on a pinned program, its live maps (read only) and a pcap trace."""
    from .offline import optimize_program

    info = pinned_info(directory)
    spec = read_object(info["object"])
    name = program or (next(iter(info["programs"])) if len(info["programs"]) == 1 else None)
    if name is None:
        raise PinError(f"{directory} holds programs {', '.join(info['programs'])}: name one")
    trace = from_frames(read_pcap(trace_path), ingress, name=Path(trace_path).name)
    subject = Subject("original", Path(info["object"]), name, spec=spec)
    maps = open_pinned_maps(directory)
    try:
        report = optimize_program(subject, trace, source_maps=maps, options=options,
                                  rounds=rounds)
    finally:
        for m in maps.values():
            m.close()
    return {"program": name, "directory": str(directory), "trace": str(trace_path), **report}
