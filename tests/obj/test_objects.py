"""Every object built from our C test sources is read, disassembled and re-encoded exactly."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from morpheus.cli.main import main as cli
from morpheus.ir import decode, encode, encode_raw
from morpheus.kernel.btf import running_target
from morpheus.obj import read_object
from morpheus.obj.elfview import executable_sections
from morpheus.obj.reader import ReadOptions

FOR_THIS_KERNEL = ReadOptions(target=running_target)

OBJDUMP = shutil.which("llvm-objdump-16")
INSN_LINE = re.compile(r"^\s+\d+:\t")


def supported(objects: dict[str, Path]) -> dict[str, Path]:
    # modules/ objects need module BTF that only their own tests write
    return {k: v for k, v in objects.items() if not k.startswith(("unsupported/", "modules/"))}


def test_every_object_is_read(test_objects: dict[str, Path]) -> None:
    for key, path in supported(test_objects).items():
        options = FOR_THIS_KERNEL
        if key.startswith("typed/nonstd"):
            options = ReadOptions(target=running_target, program_type="xdp")
        elif key.startswith("nolibbpf/legacy_maps"):
            options = ReadOptions(target=running_target, legacy_maps=True)
        spec = read_object(path, options=options)
        assert spec.programs, key
        assert spec.license == "GPL", key
        for prog in spec.programs.values():
            assert prog.program.insns[0].label == prog.name
            assert prog.insn_count > 0


def test_decode_encode_is_identity_on_every_section(test_objects: dict[str, Path]) -> None:
    for key, path in supported(test_objects).items():
        for section in executable_sections(path):
            assert encode_raw(decode(section.data)) == section.data, (key, section.name)


def test_symbolic_programs_encode_to_the_same_instructions(test_objects: dict[str, Path]) -> None:
    """Linking changes only call offsets and map immediates; everything else is untouched."""
    spec = read_object(test_objects["subprogs.v3"])
    for prog in spec.programs.values():
        fds = {name: 100 + n for n, name in enumerate(spec.maps)}
        raw = decode(encode(prog.program, fds).bytecode)
        assert [i.opcode for i in raw] == [i.opcode for i in prog.program.insns]


@pytest.mark.skipif(OBJDUMP is None, reason="llvm-objdump-16 is not installed")
def test_disassembler_agrees_with_llvm_objdump(
    test_objects: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for key, path in supported(test_objects).items():
        assert cli(["disasm", "--objdump", str(path)]) == 0
        ours = [line for line in capsys.readouterr().out.splitlines() if INSN_LINE.match(line)]
        theirs = subprocess.run(
            [OBJDUMP, "-d", "--no-show-raw-insn", str(path)],  # type: ignore[list-item]
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        expected = [line for line in theirs.splitlines() if INSN_LINE.match(line)]
        assert ours == expected, key


def test_global_data_becomes_single_entry_arrays(test_objects: dict[str, Path]) -> None:
    spec = read_object(test_objects["globals.v3"])
    rodata, data, bss = spec.maps[".rodata"], spec.maps[".data"], spec.maps[".bss"]
    for m in (rodata, data, bss):
        assert (m.type.name, m.key_size, m.max_entries) == ("ARRAY", 4, 1)
        assert m.data is not None and len(m.data) == m.value_size
        assert m.btf_value_type_id  # the datasec, so the kernel knows the variables
    assert rodata.freeze and rodata.read_only_for_programs
    assert not data.freeze and not data.read_only_for_programs
    assert not any(bss.data or b"")
    loads = [i for p in spec.programs.values() for i in p.program.insns if i.is_map_load]
    assert {i.reference for i in loads} >= {".rodata", ".data", ".bss"}


def test_btf_datasecs_are_fixed_up_for_the_kernel(test_objects: dict[str, Path]) -> None:
    from morpheus.obj import Kind

    spec = read_object(test_objects["globals.v3"])
    assert spec.btf is not None
    for name in (".maps", ".rodata", ".data", ".bss"):
        sec = spec.btf.find(Kind.DATASEC, name)
        assert sec is not None, name
        assert sec.ref > 0  # clang leaves 0; the kernel needs the section size
        if name in spec.maps:
            assert sec.ref == spec.maps[name].value_size
        offsets = [m.offset for m in sec.members]
        assert offsets == sorted(offsets)


def test_map_in_map_templates_and_map_flags(test_objects: dict[str, Path]) -> None:
    spec = read_object(test_objects["mapinmap.v3"])
    outer = [m for m in spec.maps.values() if m.type.name in ("ARRAY_OF_MAPS", "HASH_OF_MAPS")]
    assert len(outer) == 2
    assert {m.inner.type.name for m in outer if m.inner} == {"HASH", "ARRAY"}
    for m in outer:
        assert m.value_size == 4 and m.btf_key_type_id == 0 and m.btf_value_type_id == 0
    lpm = read_object(test_objects["lpm.v3"]).maps["routes_v4"]
    assert lpm.type.name == "LPM_TRIE" and lpm.flags & 1  # BPF_F_NO_PREALLOC


def test_subprograms_are_appended_once_in_call_order(test_objects: dict[str, Path]) -> None:
    spec = read_object(test_objects["subprogs.v3"])
    for prog in spec.programs.values():
        functions = prog.program.functions()
        names = [f.name for f in functions]
        assert names[0] == prog.name
        assert len(names) == len(set(names))
        called = {i.reference for i in prog.program.insns if i.is_pseudo_call}
        assert called <= set(names)


def test_static_subprograms_in_program_sections(test_objects: dict[str, Path]) -> None:
    spec = read_object(test_objects["nolibbpf/samesec.v3"])
    for prog in spec.programs.values():
        calls = [i.reference for i in prog.program.insns if i.is_pseudo_call]
        assert calls, prog.name
        assert all(c in prog.program.labels for c in calls)


def test_callbacks_are_function_references(test_objects: dict[str, Path]) -> None:
    spec = read_object(test_objects["loops.v3"])
    prog = spec.programs["xdp_acl_bpf_loop"]
    loads = [i for i in prog.program.insns if i.is_func_load]
    assert loads and all(i.reference in prog.program.labels for i in loads)


def test_inspect_json_shape(
    test_objects: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    assert cli(["inspect", str(test_objects["tailcall.v3"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) == {"programs", "maps"}
    assert {"name", "section", "type", "insns"} == set(info["programs"][0])
    assert {"name", "type", "key_size", "value_size", "max_entries"} == set(info["maps"][0])
    assert {m["type"] for m in info["maps"]} == {"prog_array", "percpu_array"}
