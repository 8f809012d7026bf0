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
from morpheus.kernel import KernelError, VerifierError, live_fds, possible_cpus
from morpheus.loader import kernel_map_name, load_collection, read_for_kernel
from morpheus.obj import read_object

pytestmark = pytest.mark.kernel
BPFTOOL = shutil.which("bpftool")
BPFFS = Path("/sys/fs/bpf")


# Objects whose sections the libbpf here (1.1) does not know: bpftool's type, and ours (None:
# our loader knows the section names).
TYPED = {"typed/nonstd": ("xdp", "xdp"), "typed/tcx": ("tc", None)}
# Maps our test sources pin by name (LIBBPF_PIN_BY_NAME, default root /sys/fs/bpf).
PINNED_BY_NAME = ("morpheus_pin_cnt", "morpheus_pin_ports")


def libbpf_tags(path: Path, prog_type: str | None = None) -> dict[str, str]:
    """Program name → tag, as the kernel reports them after `bpftool prog loadall`."""
    pin = BPFFS / f"morpheus-tags-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run(
            [BPFTOOL, "prog", "loadall", str(path), str(pin),  # type: ignore[list-item]
             *(("type", prog_type) if prog_type else ())],
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
    comparable = {k: v for k, v in test_objects.items()
                  if "/" not in k or k.rsplit(".", 1)[0] in TYPED}
    assert len(comparable) >= 20
    try:
        for key, path in sorted(comparable.items()):
            theirs_type, our_type = TYPED.get(key.rsplit(".", 1)[0], (None, None))
            expected = libbpf_tags(path, theirs_type)
            with load_collection(read_for_kernel(path, program_type=our_type)) as coll:
                ours = {name: prog.tag for name, prog in coll.programs.items()}
            # bpftool shows the full function name (from BTF); the kernel keeps 15 characters.
            assert ours == {name: expected.get(name, expected.get(name[:15])) for name in ours}, \
                key
            assert len(ours) == len(expected), key
    finally:
        for name in PINNED_BY_NAME:
            (BPFFS / name).unlink(missing_ok=True)


def test_legacy_maps_with_and_without_btf(test_objects: dict[str, Path], tmp_path: Path) -> None:
    """SEC("maps") definitions load when asked for; an object built without -g too."""
    from morpheus.bpf import compile_object
    from morpheus.obj import UnsupportedFeature

    with pytest.raises(UnsupportedFeature, match="--legacy-maps"):
        read_for_kernel(test_objects["nolibbpf/legacy_maps.v3"])
    source = Path(__file__).parent / "progs" / "nolibbpf" / "legacy_maps.c"
    no_btf = compile_object(source, tmp_path / "legacy_nobtf.o", cpu="v3", extra_flags=("-g0",))
    tags = []
    for path in (test_objects["nolibbpf/legacy_maps.v3"], no_btf):
        spec = read_for_kernel(path, legacy_maps=True)
        assert (spec.btf is None) == (path == no_btf)
        marks = spec.maps["legacy_marks"]
        assert (marks.key_size, marks.value_size, marks.max_entries, marks.flags) == (4, 4, 1024, 1)
        with load_collection(spec) as coll:
            assert coll.maps["legacy_counts"].max_entries == 16
            tags.append(coll.programs["tc_legacy"].tag)
    assert tags[0] == tags[1]


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


def test_perf_event_array_gets_one_slot_per_possible_cpu(test_objects: dict[str, Path]) -> None:
    spec = read_for_kernel(test_objects["perf_event.v3"])
    assert spec.maps["samples"].max_entries == 0
    with load_collection(spec) as coll:
        assert coll.maps["samples"].max_entries == possible_cpus()


def test_static_initialisers_fill_prog_array_and_map_of_maps(
        test_objects: dict[str, Path]) -> None:
    spec = read_for_kernel(test_objects["static_init.v3"])
    assert spec.maps["generations"].init_slots == ((0, "counts_a"), (1, "counts_b"))
    progs = dict(spec.maps["stage_progs"].init_slots)
    assert set(progs.values()) <= set(spec.programs)
    with load_collection(spec) as coll:
        for slot, inner in spec.maps["generations"].init_slots:
            raw = coll.maps["generations"].lookup(slot)
            assert raw is not None and struct.unpack("<I", raw)[0] == coll.maps[inner].id
        for slot, prog in progs.items():
            raw = coll.maps["stage_progs"].lookup(slot)
            assert raw is not None and struct.unpack("<I", raw)[0] == coll.programs[prog].id


def test_kconfig_externs_hold_the_kernels_values(test_objects: dict[str, Path]) -> None:
    from morpheus.kernel.btf import kernel_config, kernel_version_code
    from morpheus.obj.btf import Kind

    spec = read_for_kernel(test_objects["kconfig.v3"])
    kcfg = spec.maps[".kconfig"]
    assert spec.btf is not None and kcfg.data is not None
    datasec = spec.btf.find(Kind.DATASEC, ".kconfig")
    assert datasec is not None
    where = {spec.btf[m.type].name: (m.offset, m.size) for m in datasec.members}

    def value(name: str) -> int:
        off, size = where[name]
        return int.from_bytes(kcfg.data[off:off + size], "little")  # type: ignore[index]

    config = kernel_config()
    assert config is not None
    assert value("LINUX_KERNEL_VERSION") == kernel_version_code()
    assert value("CONFIG_HZ") == int(config["CONFIG_HZ"])
    assert value("CONFIG_XDP_SOCKETS") == (config.get("CONFIG_XDP_SOCKETS") == "y")
    tristate = {"y": 1, "m": 2}.get(config.get("CONFIG_NET_CLS_BPF", ""), 0)
    assert value("CONFIG_NET_CLS_BPF") == tristate
    assert value("CONFIG_MORPHEUS_NEVER_SET") == 0  # weak, not set: 0
    with load_collection(spec) as coll:
        assert coll.maps[".kconfig"].lookup(0) == kcfg.data
        assert coll.maps[".kconfig"].info.name == kernel_map_name("kconfig", kcfg)


def test_pinned_by_name_is_reused_and_a_mismatch_is_refused(
        test_objects: dict[str, Path]) -> None:
    from morpheus.kernel import Map, MapType
    from morpheus.loader import PinnedMapMismatch

    root = BPFFS / f"morpheus-pin-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    try:
        spec = read_for_kernel(test_objects["pin.v3"])
        with load_collection(spec, pin_root=root) as first:
            assert (root / "morpheus_pin_cnt").exists()
            with load_collection(spec, pin_root=root) as second:
                for name in PINNED_BY_NAME:
                    assert second.maps[name].id == first.maps[name].id
        (root / "morpheus_pin_cnt").unlink()
        with Map.create(MapType.ARRAY, 4, 8, 99, name="other") as other:
            other.pin(root / "morpheus_pin_cnt")
        with pytest.raises(PinnedMapMismatch, match="max_entries 99 \\(declared 4\\)"):
            load_collection(spec, pin_root=root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_unsatisfiable_relocation_reached_names_program_instruction_type_field(
        test_objects: dict[str, Path]) -> None:
    from morpheus.loader import PoisonedRelocation

    spec = read_for_kernel(test_objects["readonly/core_unguarded.v3"])
    with pytest.raises(PoisonedRelocation) as info:
        load_collection(spec)
    message = str(info.value)
    for part in ("xdp_unguarded", "instruction 0", "xdp_md___future", "'0:0'",
                 "morpheus_rx_hash"):
        assert part in message
    assert isinstance(info.value.__cause__, VerifierError)


def test_kfunc_and_weak_kfunc_calls(test_objects: dict[str, Path]) -> None:
    from morpheus.kernel.btf import vmlinux_btf
    from morpheus.obj.btf import Kind

    spec = read_for_kernel(test_objects["ksym.v3"])
    calls = [i for i in spec.program().program.insns if i.is_call and i.src == 2]
    want = vmlinux_btf().find(Kind.FUNC, "bpf_dynptr_from_xdp")
    assert want is not None and want.id in {i.imm for i in calls}
    assert 0 in {i.imm for i in calls}  # the weak kfunc this kernel lacks


def test_typed_ksym_the_kernel_has_no_address_for_is_named_with_the_reason(
        test_objects: dict[str, Path]) -> None:
    """Without CONFIG_KALLSYMS_ALL the kernel finds a typed ksym's BTF but no address (libbpf
    fails the same way): the error names the program, the variable and the kernel option."""
    from morpheus.kernel.btf import kernel_config
    from morpheus.loader import KsymWithoutAddress

    spec = read_for_kernel(test_objects["readonly/ksym_var.v3"])
    if (kernel_config() or {}).get("CONFIG_KALLSYMS_ALL") == "y":
        load_collection(spec).close()  # such a kernel has the address: the program loads
        return
    with pytest.raises(KsymWithoutAddress) as info:
        load_collection(spec)
    message = str(info.value)
    for part in ("xdp_backlog_probe", "'__softirq_pending'", "CONFIG_KALLSYMS_ALL",
                 "libbpf fails the same way"):
        assert part in message
    assert isinstance(info.value.__cause__, VerifierError)
