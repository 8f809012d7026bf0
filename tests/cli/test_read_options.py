"""`--btf FILE`, `--type TYPE` and `--legacy-maps` on inspect, disasm, load and parse-bench."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from morpheus.cli.main import main as cli

from ..obj.btfgen import BTFWriter


def xdp_md_btf(rx_queue_at_bits: int | None) -> bytes:
    """A kernel whose struct xdp_md has rx_queue_index elsewhere (or not at all)."""
    w = BTFWriter()
    u32 = w.int("unsigned int", 4)
    members = [("data", u32, 0, 0), ("data_end", u32, 32, 0)]
    if rx_queue_at_bits is not None:
        members.append(("rx_queue_index", u32, rx_queue_at_bits, 0))
    w.struct("xdp_md", 24, members)
    return w.blob()


def test_disasm_relocates_against_the_given_btf(
        test_objects: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    obj = str(test_objects["core.v3"])
    moved = tmp_path / "moved.btf"
    moved.write_bytes(xdp_md_btf(96))
    missing = tmp_path / "missing.btf"
    missing.write_bytes(xdp_md_btf(None))
    assert cli(["disasm", obj, "--btf", str(moved)]) == 0
    text = capsys.readouterr().out
    assert "(r1 + 0xc)" in text  # rx_queue_index now read at offset 12
    assert cli(["disasm", obj, "--btf", str(missing)]) == 0
    text = capsys.readouterr().out
    assert "(r1 + 0xc)" not in text and "(r1 + 0x10)" not in text
    assert "helper#195896080" in text and "rx_queue_index" in text  # poisoned, with its why


def test_inspect_type_for_non_standard_sections(
        test_objects: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    obj = str(test_objects["typed/nonstd.v3"])
    assert cli(["inspect", obj, "--json"]) != 0
    assert "--type xdp" in capsys.readouterr().err
    assert cli(["inspect", obj, "--json", "--type", "xdp"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {p["type"] for p in info["programs"]} == {"xdp"}
    assert {p["section"] for p in info["programs"]} == {"xdp_prog", "prog/drop_small"}


def test_parse_bench_reports_relocations(
        test_objects: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["parse-bench", str(test_objects["core_big.v3"]), "--rounds", "2",
                "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["core_relocations"] > 500 and info["insns"] > 2500
    assert info["target_btf"] == "vmlinux" and info["ms"]["min"] > 0


@pytest.mark.kernel
def test_load_with_type_pins_programs(
        test_objects: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pin = Path("/sys/fs/bpf") / f"morpheus-readopt-{uuid.uuid4().hex[:8]}"
    try:
        assert cli(["load", str(test_objects["typed/nonstd.v3"]), "--pin", str(pin),
                    "--type", "xdp", "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert set(info["programs"]) == {"xdp_nonstd_pass", "xdp_nonstd_drop"}
        assert info["read"]["program_type"] == "xdp"
        assert (pin / "progs" / "xdp_nonstd_pass").exists()
    finally:
        shutil.rmtree(pin, ignore_errors=True)
        from morpheus.pinned import _state_path

        shutil.rmtree(_state_path(pin), ignore_errors=True)
