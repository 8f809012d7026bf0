"""`morpheus optimize DIR` on pinned objects of the shapes users bring: a Katran-shaped load
balancer (maps of maps, a 1M-slot ring, a root program tail-calling it) and a TC program."""

from __future__ import annotations

import json
import shutil
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from morpheus.analysis import analyze
from morpheus.cli.main import main as cli
from morpheus.ir import Program, asm
from morpheus.ir.asm import R1
from morpheus.kernel import LoadedProgram, Map, load_btf
from morpheus.obj import read_object
from morpheus.passes.pipeline import PassContext
from morpheus.pinned import load_and_pin, open_pinned_maps, optimize_pinned, pinned_info
from morpheus.traffic.packet import ETH_P_IP, IPPROTO_UDP, ethernet, ipv4, l4, mac
from morpheus.traffic.pcap import write_pcap
from morpheus.world import Clocks, Runner, World, pinned_cpu, written_maps
from tests.optimizer.katran_env import KatranShape, configure, trace

pytestmark = pytest.mark.kernel
BPFFS = Path("/sys/fs/bpf")
LRU, FALLBACK = 16, 17  # STATS_LRU, STATS_FALLBACK in katran_shape.c


@pytest.fixture
def pin_dirs() -> Iterator[tuple[Path, Path]]:
    tag = uuid.uuid4().hex[:8]
    dirs = (BPFFS / f"mph-opt-{tag}", BPFFS / f"mph-opt-{tag}-out")
    try:
        yield dirs
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        from morpheus.pinned import _state_path

        shutil.rmtree(_state_path(dirs[0]), ignore_errors=True)


@pytest.fixture
def katran(test_objects: dict[str, Path], pin_dirs: tuple[Path, Path]
           ) -> Iterator[tuple[Path, KatranShape]]:
    """The Katran-shaped object loaded, pinned and configured as its control plane would."""
    load_and_pin(test_objects["katran_shape.v3"], pin_dirs[0])
    maps = open_pinned_maps(pin_dirs[0])
    try:
        shape = configure(maps)
        with LoadedProgram.from_pin(pin_dirs[0] / "progs" / "balancer_ingress") as balancer:
            maps["root_array"].update(0, struct.pack("<I", balancer.fd.number))
        yield pin_dirs[0], shape
    finally:
        for m in maps.values():
            m.close()
        shape.close()


def _optimize(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict, float]:
    """Run `optimize`; the time returned is this process's CPU time (user + system, the
    test runs' kernel time included), which other load on the machine does not stretch the
    way it stretches wall time (19-25 s wall for ~6 s of work at load 5)."""
    capsys.readouterr()
    start = time.process_time()
    code = cli(["optimize", *args, "--json", "--rounds", "2"])
    cpu = time.process_time() - start
    return code, json.loads(capsys.readouterr().out), cpu


def test_optimize_a_katran_shaped_chain_and_pin_the_result(
        katran: tuple[Path, KatranShape], pin_dirs: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    directory, shape = katran
    pcap = tmp_path / "high.pcap"
    write_pcap(pcap, trace(shape, 3000))
    code, report, cpu = _optimize(capsys, str(directory), "--program", "xdp_root",
                                  "--trace", str(pcap), "--pin", str(pin_dirs[1]))
    assert code == 0 and report["equivalent"], report
    assert cpu < 10, (cpu, report)
    (link,) = report["chain"]  # the root tail-calls the balancer: optimized together
    assert (link["array"], link["slot"], link["program"]) == ("root_array", 0,
                                                                "balancer_ingress")
    assert link["equivalent"], link.get("mismatch") or link.get("error")
    sites = {s["map"]: s for s in link["sites"]}
    assert sites["vip_map"]["specialized"]
    assert not sites["fallback_cache|lru_mapping[inner]"]["specialized"]
    # The pinned chain: the root, and its own prog array holding the specialized balancer.
    assert report["pinned"]["chain"] == [{"array": "root_array", "slot": 0,
                                          "program": "balancer_ingress"}]
    with LoadedProgram.from_pin(pin_dirs[1] / "progs" / "xdp_root") as root, \
            LoadedProgram.from_pin(pin_dirs[1] / "progs" / "balancer_ingress") as special, \
            LoadedProgram.from_pin(directory / "progs" / "balancer_ingress") as original, \
            Map.from_pin(pin_dirs[1] / "maps" / "root_array") as array:
        assert root.id == report["pinned"]["id"]
        assert array.lookup(0) == struct.pack("<I", special.id) and special.id != original.id
        frame = trace(shape, 1)[0]
        assert root.test_run(frame).retval == original.test_run(frame).retval == 3  # XDP_TX


def test_optimize_needs_a_program_name_when_the_object_has_several(
        katran: tuple[Path, KatranShape], tmp_path: Path) -> None:
    directory, shape = katran
    pcap = tmp_path / "t.pcap"
    write_pcap(pcap, trace(shape, 10))
    assert cli(["optimize", str(directory), "--trace", str(pcap)]) == 1


def _udp(dport: int) -> bytes:
    segment = l4(IPPROTO_UDP, "10.0.0.1", "10.0.0.2", 4000, dport, b"q" * 10)
    return ethernet(mac("02:00:00:00:00:02"), mac("02:00:00:00:00:01"), ETH_P_IP,
                    ipv4("10.0.0.1", "10.0.0.2", IPPROTO_UDP, segment))


def test_optimize_a_tc_program(test_objects: dict[str, Path], pin_dirs: tuple[Path, Path],
                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    load_and_pin(test_objects["tc.v3"], pin_dirs[0])
    maps = open_pinned_maps(pin_dirs[0])
    try:
        for port in range(100, 300):
            maps["port_dscp"].update(struct.pack("<H", port), bytes([port % 64]))
    finally:
        for m in maps.values():
            m.close()
    pcap = tmp_path / "tc.pcap"
    write_pcap(pcap, [_udp(100 + (i * i) % 7) for i in range(2000)])
    code, report, _ = _optimize(capsys, str(pin_dirs[0]), "--program", "tc_dscp_mark",
                                "--trace", str(pcap))
    assert code == 0 and report["equivalent"], report.get("mismatch") or report.get("error")
    assert {s["map"]: s["specialized"] for s in report["sites"]}["port_dscp"]
    assert report["speedup"]["median"] > 0


@dataclass(frozen=True)
class DropFirstStatsStore:
    """A miscompile the verifier accepts: the first store into a `stats` value is lost."""

    name: ClassVar[str] = "drop-first-stats-store"

    def run(self, program: Program, ctx: PassContext) -> Program:
        facts = analyze(program, ctx.maps, prog_type=ctx.prog_type)
        index = min(u.index for s in facts.lookups() if s.map == "stats" for u in s.uses
                    if u.kind == "write")
        insns = list(program.insns)
        insns[index] = asm.mov64(R1, R1, label=insns[index].label)
        return program.with_insns(tuple(insns))


def test_a_miscompile_on_the_katran_shape_is_caught(katran: tuple[Path, KatranShape],
                                                    tmp_path: Path) -> None:
    directory, shape = katran
    pcap = tmp_path / "high.pcap"
    write_pcap(pcap, trace(shape, 500))
    report = optimize_pinned(directory, pcap, program="balancer_ingress", rounds=1,
                             passes=[DropFirstStatsStore()])
    assert not report["equivalent"]
    assert report["mismatch"]["tables_differing"] == ["stats"], report["mismatch"]


def test_the_check_world_runs_the_production_path(katran: tuple[Path, KatranShape]) -> None:
    """Copies of the per-CPU LRU maps in the array of maps: the check never takes the
    fallback LRU, and its writes land in the copies, not in the user's maps."""
    directory, shape = katran
    spec = read_object(pinned_info(directory)["object"])
    prog = spec.program("balancer_ingress")
    frames = trace(shape, 400)
    maps = open_pinned_maps(directory)
    try:
        written = written_maps([prog.program], spec.maps, prog.type)
        assert {"stats", "fallback_cache", "lru_mapping[inner]"} <= written
        with load_btf(spec.btf.blob()) as btf, World.build(maps, written) as world, \
                pinned_cpu(None) as cpu:
            runner = Runner(world, prog, None, btf_fd=btf, clocks=Clocks.now(), cpu=cpu)
            with runner:
                verdicts = [runner.run(i, f, 0).verdict for i, f in enumerate(frames)]
            assert set(verdicts) == {3}  # XDP_TX to a real
            fallback = world.maps["stats"].lookup(FALLBACK)
            assert all(struct.unpack("<QQ", v)[0] == 0 for v in fallback)  # type: ignore[union-attr]
            seen = world.maps["stats"].lookup(LRU)
            assert struct.unpack("<QQ", seen[cpu])[0] == len(frames)  # type: ignore[index]
            assert sum(len(t) for t in world.table("lru_mapping").values()) > 0
        live = maps["stats"].lookup(LRU)
        assert all(struct.unpack("<QQ", v)[0] == 0 for v in live)  # type: ignore[union-attr]
    finally:
        for m in maps.values():
            m.close()


def test_optimize_profiles_checks_and_benches_the_production_path(
        katran: tuple[Path, KatranShape], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`optimize DIR` reproduces the user's per-CPU LRU maps inside the array of maps for
    the profile, the check and the benchmark: the state every check starts from (what the
    profiling run left) shows no packet on the fallback LRU, and the user's maps are not
    written."""
    import morpheus.offline as offline

    directory, shape = katran
    pcap = tmp_path / "high.pcap"
    write_pcap(pcap, trace(shape, 400))
    starts: list[tuple[int, int]] = []
    real_check = offline.check

    def recording_check(request):  # type: ignore[no-untyped-def]
        stats = request.source["stats"]
        seen = sum(struct.unpack("<QQ", v)[0] for v in stats.lookup(LRU))
        fallback = sum(struct.unpack("<QQ", v)[0] for v in stats.lookup(FALLBACK))
        starts.append((seen, fallback))
        return real_check(request)

    monkeypatch.setattr(offline, "check", recording_check)
    report = optimize_pinned(directory, pcap, program="balancer_ingress", rounds=1)
    assert report["equivalent"], report.get("mismatch") or report.get("error")
    assert starts and all(seen > 0 and fallback == 0 for seen, fallback in starts), starts
    with Map.from_pin(directory / "maps" / "stats") as live:
        assert all(struct.unpack("<QQ", v)[0] == 0 for v in live.lookup(LRU))  # type: ignore[union-attr]


@pytest.fixture
def katran_by_bpftool(test_objects: dict[str, Path], pin_dirs: tuple[Path, Path]
                      ) -> Iterator[tuple[Path, Path, KatranShape]]:
    """The Katran-shaped object as another owner (bpfman) leaves it: loaded and its maps
    pinned one per name by `bpftool prog loadall ... pinmaps`, configured through them."""
    import subprocess

    from morpheus.loader import adopt_pinned_maps, read_for_kernel

    obj = test_objects["katran_shape.v3"]
    root = pin_dirs[0]
    root.mkdir()
    subprocess.run(["bpftool", "prog", "loadall", str(obj), str(root / "progs"), "pinmaps",
                    str(root / "maps"), "type", "xdp"], check=True, capture_output=True)
    maps = adopt_pinned_maps(read_for_kernel(obj), root / "maps")
    try:
        shape = configure(maps)
        with LoadedProgram.from_pin(root / "progs" / "balancer_ingress") as balancer:
            maps["root_array"].update(0, struct.pack("<I", balancer.fd.number))
        yield obj, root / "maps", shape
    finally:
        for m in maps.values():
            m.close()
        shape.close()


def test_optimize_maps_pinned_by_another_owner_with_the_object(
        katran_by_bpftool: tuple[Path, Path, KatranShape], pin_dirs: tuple[Path, Path],
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    obj, maps_dir, shape = katran_by_bpftool
    pcap = tmp_path / "high.pcap"
    write_pcap(pcap, trace(shape, 2000))
    before = {p.name: Map.from_pin(p) for p in maps_dir.iterdir()}
    try:
        ids = {n: m.id for n, m in before.items()}
        # Given the parent of the maps directory, as bpfman's /run/bpfman/fs/maps.
        code, report, _ = _optimize(capsys, str(maps_dir.parent), "--object", str(obj),
                                    "--program", "xdp_root", "--trace", str(pcap),
                                    "--pin", str(pin_dirs[1]))
        assert code == 0 and report["equivalent"], report
        assert report["directory"] == str(maps_dir.parent)
        # The specialized chain, pinned on the owner's maps (the same kernel maps).
        assert report["pinned"]["chain"] == [{"array": "root_array", "slot": 0,
                                              "program": "balancer_ingress"}]
        shared = [n for n in report["pinned"]["maps"] if n in before and n != "root_array"]
        assert shared, report["pinned"]
        for name in shared:
            with Map.from_pin(pin_dirs[1] / "maps" / name) as pinned:
                assert pinned.id == before[name].id, name
        # The chain is followed by program name (the owner's ids are not recorded anywhere).
        (link,) = report["chain"]
        assert (link["array"], link["slot"], link["program"]) == ("root_array", 0,
                                                                    "balancer_ingress")
        assert {s["map"]: s for s in link["sites"]}["vip_map"]["specialized"]
        # Read only: the same maps, still pinned, the root's prog array unchanged.
        after = {p.name: Map.from_pin(p) for p in maps_dir.iterdir()}
        try:
            assert {n: m.id for n, m in after.items()} == ids
        finally:
            for m in after.values():
                m.close()
        with LoadedProgram.from_pin(maps_dir.parent / "progs" / "balancer_ingress") as b:
            assert before["root_array"].lookup(0) == struct.pack("<I", b.id)
        # `check --maps` reads the same directory with the reference object's definitions.
        capsys.readouterr()
        assert cli(["check", str(obj), str(obj), "--maps", str(maps_dir), "--program",
                    "xdp_root", "--trace", str(pcap)]) == 0
    finally:
        for m in before.values():
            m.close()
