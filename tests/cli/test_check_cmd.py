"""`morpheus check A.o B.o` as users run it: exit status and JSON shape, from an NF's
default configuration and from maps pinned by `morpheus load --pin`."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from morpheus.bpf import SOURCE_DIR, compile_object
from morpheus.nf import get
from morpheus.obj import read_object
from morpheus.pinned import _state_path, load_and_pin, open_pinned_maps
from morpheus.traffic.generate import generate
from morpheus.traffic.pcap import write_pcap
from tests.world import mutants as M
from tests.world.checked_env import configure_maps, packets

pytestmark = pytest.mark.kernel
MORPHEUS = [sys.executable, "-m", "morpheus.cli.main"]
KEYS = {"equivalent", "packets_checked", "mismatches", "first_mismatch", "tables_differing",
        "redirects_differing"}


def _check(*args: str) -> tuple[int, dict | str]:  # type: ignore[type-arg]
    out = subprocess.run([*MORPHEUS, "check", *args], capture_output=True, text=True,
                         timeout=120, check=False)
    if "--json" in args and out.returncode in (0, 1):
        return out.returncode, json.loads(out.stdout)
    return out.returncode, out.stderr


def patched(source: Path, target: Path, program: str, mutation: M.Mutation) -> Path:
    """A copy of `source` with `program`'s instructions replaced by a same-length mutant,
    byte for byte in the ELF section (a miscompiled build of the same object)."""
    spec = read_object(source)
    prog = spec.program(program)
    mutant = mutation.apply(prog.program)
    assert mutant is not None and not isinstance(mutant, tuple)
    assert [i.width for i in mutant.insns] == [i.width for i in prog.program.insns]
    raw = bytearray(source.read_bytes())
    with source.open("rb") as f:
        elf = ELFFile(f)
        symbol = next(s for sec in elf.iter_sections() if sec.name == ".symtab"
                      for s in sec.iter_symbols() if s.name == program)
        section = elf.get_section(symbol["st_shndx"])
        base = section["sh_offset"] + symbol["st_value"]
    slot = 0
    for old, new in zip(prog.program.insns, mutant.insns, strict=True):
        if old != new:
            # Only the immediate or the opcode changes in these mutants.
            off = base + 8 * slot
            raw[off] = new.opcode
            struct.pack_into("<i", raw, off + 4, new.imm if new.imm < 1 << 31 else
                             new.imm - (1 << 32))
        slot += old.width
    target.write_bytes(bytes(raw))
    return target


def test_check_from_an_nfs_configuration(tmp_path: Path) -> None:
    nf = get("router")
    trace = tmp_path / "router.pcap"
    generated = generate(nf, "high", 300, 2)
    write_pcap(trace, generated.frames)
    port = str(generated.main_ingress)
    original = nf.object_path
    rebuilt = compile_object(SOURCE_DIR / "router.bpf.c", tmp_path / "rebuilt.o", force=True)
    code, out = _check(str(original), str(rebuilt), "--nf", "router", "--trace", str(trace),
                       "--ingress", port, "--json")
    assert code == 0, out
    assert isinstance(out, dict) and set(out) == KEYS and out["equivalent"]
    assert out["packets_checked"] == 300 and out["first_mismatch"] is None
    wrong = patched(original, tmp_path / "wrong.o", nf.program,
                    M.Mutation("counter twice", M.counter_incremented_twice(-1)))
    code, out = _check(str(original), str(wrong), "--nf", "router", "--trace", str(trace),
                       "--ingress", port, "--json")
    assert code == 1, out
    assert isinstance(out, dict) and not out["equivalent"] and out["mismatches"] == 0
    assert out["tables_differing"] == ["rt_stats"]
    assert set(out["first_mismatch"]) == {"index", "what"}
    code, err = _check(str(original), str(wrong), "--nf", "router", "--trace",
                       str(tmp_path / "missing.pcap"))
    assert code == 2 and "error" in str(err)


def test_check_from_pinned_maps(tmp_path: Path, test_objects) -> None:  # type: ignore[no-untyped-def]
    obj = test_objects["checked.v3"]
    pins = Path("/sys/fs/bpf") / f"morpheus-check-{uuid.uuid4().hex[:8]}"
    trace = tmp_path / "checked.pcap"
    write_pcap(trace, [f for f, _ in packets(200)])
    try:
        load_and_pin(obj, pins)
        maps = open_pinned_maps(pins)
        try:
            configure_maps(maps, read_object(obj))
        finally:
            for m in maps.values():
                m.close()
        code, out = _check(str(obj), str(obj), "--maps", str(pins), "--trace", str(trace),
                           "--program", "xdp_checked", "--json")
        assert code == 0, out
        assert isinstance(out, dict) and out["equivalent"] and out["packets_checked"] == 200
        wrong = patched(obj, tmp_path / "wrong.o", "xdp_checked",
                        M.Mutation("TTL bound", M.compare_constant_changed(2, 1)))
        code, out = _check(str(obj), str(wrong), "--maps", str(pins), "--trace", str(trace),
                           "--program", "xdp_checked", "--json")
        assert code == 1, out
        assert isinstance(out, dict) and out["redirects_differing"] == 0
        assert "verdict" in out["first_mismatch"]["what"]
        # The pinned maps were only read.
        maps = open_pinned_maps(pins)
        try:
            assert maps["flows"].count() == 0 and maps["sources"].count() == 0
        finally:
            for m in maps.values():
                m.close()
        code, err = _check(str(obj), str(wrong), "--maps", str(pins), "--trace", str(trace))
        assert code == 2 and "name one" in str(err)
    finally:
        shutil.rmtree(pins, ignore_errors=True)
        shutil.rmtree(_state_path(pins), ignore_errors=True)
