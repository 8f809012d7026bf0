"""Malformed and unsupported objects give errors that name the problem."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from morpheus.obj import ObjectError, UnsupportedFeature, read_object

UNSUPPORTED = {
    "unsupported/struct_ops": "struct_ops programs",
}


@pytest.mark.parametrize("key", sorted(UNSUPPORTED))
def test_unsupported_features_are_named(test_objects: dict[str, Path], key: str) -> None:
    with pytest.raises(UnsupportedFeature) as info:
        read_object(test_objects[key])
    assert UNSUPPORTED[key] in str(info.value)
    assert str(test_objects[key]) in str(info.value)
    assert "morpheus_cong_init" in str(info.value)  # the program
    assert "struct_ops/morpheus_cong_init" in str(info.value)  # and its section


def test_every_unsupported_source_is_covered(test_objects: dict[str, Path]) -> None:
    assert {k for k in test_objects if k.startswith("unsupported/")} == set(UNSUPPORTED)


def test_not_an_elf_file() -> None:
    with pytest.raises(ObjectError, match="not an ELF file"):
        read_object(b"hello world, this is not an object")
    with pytest.raises(ObjectError, match="not an ELF file"):
        read_object(b"")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ObjectError, match="cannot read"):
        read_object(tmp_path / "nope.o")


def test_truncated_object(test_objects: dict[str, Path]) -> None:
    data = test_objects["counter.v3"].read_bytes()
    for cut in (16, 64, len(data) // 2, len(data) - 8):
        with pytest.raises(ObjectError):
            read_object(data[:cut])


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_elf_for_another_machine(tmp_path: Path) -> None:
    src = tmp_path / "x.c"
    src.write_text("int f(void) { return 1; }\n")
    subprocess.run(["gcc", "-c", str(src), "-o", str(tmp_path / "x.o")], check=True)
    with pytest.raises(ObjectError, match="not BPF"):
        read_object(tmp_path / "x.o")


def test_corrupted_btf(test_objects: dict[str, Path]) -> None:
    data = bytearray(test_objects["counter.v3"].read_bytes())
    at = data.find(b"\x9f\xeb\x01\x00")  # BTF header magic, version 1
    assert at > 0
    data[at + 2] = 9  # unknown BTF version
    with pytest.raises(ObjectError, match="BTF version"):
        read_object(bytes(data))


def test_garbage_in_code_is_reported(test_objects: dict[str, Path]) -> None:
    """An ld_imm64 missing its second half inside a section is a clear error, not a crash."""
    data = bytearray(test_objects["counter.v3"].read_bytes())
    spec = read_object(bytes(data))
    assert spec.programs
    from morpheus.obj.elfview import executable_sections

    section = next(s for s in executable_sections(test_objects["counter.v3"]) if s.name == "xdp")
    start = bytes(data).find(section.data)
    data[start + len(section.data) - 8] = 0x18  # last instruction becomes half an ld_imm64
    with pytest.raises(ObjectError, match="second half"):
        read_object(bytes(data))
