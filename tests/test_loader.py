"""Our loader against libbpf: the kernel computes the same program tags, for every object."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from morpheus.ir import asm
from morpheus.ir.asm import R0
from morpheus.kernel import KernelError, VerifierError, live_fds
from morpheus.loader import kernel_map_name, load_collection, read_for_kernel
from morpheus.obj import read_object

pytestmark = pytest.mark.kernel
BPFTOOL = shutil.which("bpftool")
BPFFS = Path("/sys/fs/bpf")


def libbpf_tags(path: Path) -> dict[str, str]:
    """Program name → tag, as the kernel reports them after `bpftool prog loadall`."""
    pin = BPFFS / f"morpheus-tags-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run(
            [BPFTOOL, "prog", "loadall", str(path), str(pin)],  # type: ignore[list-item]
            check=True,
            capture_output=True,
            text=True,
        )
        tags = {}
        for entry in pin.iterdir():
            shown = subprocess.run(
                [BPFTOOL, "-j", "prog", "show", "pinned", str(entry)],  # type: ignore[list-item]
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            info = json.loads(shown)
            tags[info["name"]] = info["tag"]
        return tags
    finally:
        shutil.rmtree(pin, ignore_errors=True)


@pytest.mark.skipif(BPFTOOL is None, reason="bpftool is not installed")
def test_program_tags_equal_libbpf(test_objects: dict[str, Path]) -> None:
    comparable = {k: v for k, v in test_objects.items() if "/" not in k}
    assert len(comparable) >= 20
    for key, path in sorted(comparable.items()):
        expected = libbpf_tags(path)
        with load_collection(read_for_kernel(path)) as coll:
            ours = {name: prog.tag for name, prog in coll.programs.items()}
        # bpftool shows the full function name (from BTF); the kernel keeps 15 characters.
        assert ours == {name: expected.get(name, expected.get(name[:15])) for name in ours}, key
        assert len(ours) == len(expected), key


def test_objects_libbpf_refuses_still_load(test_objects: dict[str, Path]) -> None:
    for key in ("nolibbpf/samesec.v2", "nolibbpf/samesec.v3"):
        with load_collection(read_object(test_objects[key])) as coll:
            assert len(coll.programs) == 2
            for prog in coll.programs.values():
                assert prog.test_run(bytes(64)).retval in (0, 1, 2, 3, 4)


def test_global_data_is_initialised_and_rodata_frozen(test_objects: dict[str, Path]) -> None:
    spec = read_object(test_objects["globals.v3"])
    with load_collection(spec) as coll:
        rodata = coll.maps[".rodata"]
        assert rodata.lookup(0) == spec.maps[".rodata"].data
        assert rodata.info.name == kernel_map_name("globals", spec.maps[".rodata"])
        assert rodata.info.name == "globals.rodata"
        with pytest.raises(KernelError, match="Operation not permitted"):
            rodata.update(0, bytes(rodata.value_size))
        data = coll.maps[".data"]
        data.update(0, bytes(data.value_size))  # writable


def test_programs_share_the_collection_maps(test_objects: dict[str, Path]) -> None:
    spec = read_object(test_objects["globals.v3"])
    with load_collection(spec) as coll:
        ids = {m.id for m in coll.maps.values()}
        for prog in coll.programs.values():
            assert set(prog.info().map_ids) <= ids


def test_failure_closes_everything_half_made(test_objects: dict[str, Path]) -> None:
    """A program the verifier refuses: the error carries the log; no map or BTF fd stays open."""
    spec = read_object(test_objects["counter.v3"])
    name, prog = next(iter(spec.programs.items()))
    broken = prog.with_program(
        prog.program.with_insns((asm.ldx(8, R0, asm.R3, 0), *prog.program.insns))
    )  # r3 is not initialised
    bad_spec = type(spec)(spec.name, {name: broken}, spec.maps, spec.btf, spec.license)
    before = len(live_fds())
    with pytest.raises(VerifierError) as info:
        load_collection(bad_spec)
    assert "R3 !read_ok" in str(info.value)
    assert len(live_fds()) == before


def test_load_only_some_programs_and_reuse_maps(test_objects: dict[str, Path]) -> None:
    spec = read_object(test_objects["tailcall.v3"])
    with load_collection(spec, programs=["xdp_dispatch"]) as first:
        assert set(first.programs) == {"xdp_dispatch"}
        with load_collection(spec, programs=["xdp_ipv4"], maps=first.maps) as second:
            assert second.maps["stages"].id == first.maps["stages"].id
            # a tail-call target installed through one collection is seen by the other
            first.maps["stages"].update(0, second.programs["xdp_ipv4"])
            raw = second.maps["stages"].lookup(0)
            assert raw is not None and struct.unpack("<I", raw)[0] == second.programs["xdp_ipv4"].id
    with pytest.raises(KeyError, match="has no program 'nope'"):
        load_collection(spec, programs=["nope"])


def test_inspect_load_adds_tags(
    test_objects: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from morpheus.cli.main import main as cli

    assert cli(["inspect", str(test_objects["lpm.v3"]), "--json", "--load"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert all(len(p["tag"]) == 16 for p in info["programs"])
