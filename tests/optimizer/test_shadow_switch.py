"""The switch's learning lookup answered from shadow slots (`passes.shadow`), checked
against the original with every learned timestamp due for a refresh: the refreshes take the
resync path and write the table exactly as the original does."""

from __future__ import annotations

import struct

import pytest

from morpheus.nf import get
from morpheus.offline import check_subjects, optimize_program
from morpheus.passes.inline import GUARD_MAP
from morpheus.passes.shadow import SHADOW_MAP
from morpheus.traffic.generate import generate
from morpheus.world import written_maps
from morpheus.world.environment import Environment, Subject
from morpheus.world.traces import check_plan

pytestmark = pytest.mark.kernel

AGE_NS = 3_000_000_000
FDB_KEY, FDB_ENTRY = 8, 16
SLOT = FDB_KEY + FDB_ENTRY  # key, then value, each padded to 8 bytes


def aged(guard_slot: int, version: int):  # type: ignore[no-untyped-def]
    """A `prepare` hook: the guard at the version the plan was made at, every dynamic entry
    seen `AGE_NS` earlier, and the shadow slots holding what the table holds (this
    environment's warm-up learned at other times than the profiling run's)."""
    def prepare(environment: Environment) -> None:
        _age(environment)
        guard = environment.maps[GUARD_MAP]
        raw = bytearray(guard.lookup(0))  # type: ignore[arg-type]
        raw[8 * guard_slot:8 * guard_slot + 8] = version.to_bytes(8, "little")
        guard.update(0, bytes(raw))
    return prepare


def _age(environment: Environment) -> None:
    fdb = environment.maps["sw_fdb"]
    for key, value in list(fdb.items()):
        ifindex, flags, seen = struct.unpack("=IIQ", value)
        if not flags & 1:
            fdb.update(key, struct.pack("=IIQ", ifindex, flags, seen - AGE_NS))
    shadow = environment.maps[SHADOW_MAP]
    blob = bytearray(shadow.lookup(0))  # type: ignore[arg-type]
    for off in range(0, len(blob), SLOT):
        value = fdb.lookup(bytes(blob[off:off + FDB_KEY]))
        assert isinstance(value, bytes)
        blob[off + FDB_KEY:off + SLOT] = value
    shadow.update(0, bytes(blob))


def test_refreshes_due_on_every_hot_station_write_what_the_original_writes() -> None:
    nf = get("switch")
    trace = generate(nf, "high", 3000, 1)
    subject = Subject("original", nf.object_path, nf.program)
    report = optimize_program(subject, trace, nf=nf, bench=False)
    assert report["equivalent"], report.get("mismatch")
    learn = [s for s in report["sites"] if s["mode"] == "shadow"]
    assert len(learn) == 1 and learn[0]["map"] == "sw_fdb", report["sites"]
    result = report["specialization"]
    special = Subject("specialized", subject.object_path, subject.program_name,
                      program=result.program, spec=subject.load_spec(),
                      extra_maps=result.extra_maps)
    spec = subject.load_spec()
    written = sorted(n for n in written_maps([spec.program(nf.program).program], spec.maps)
                     if n in spec.maps)
    plan = check_plan(trace, result, nf=nf, facts=None)
    (site,) = [p for p in result.plan.sites if p.site == learn[0]["instruction"]]
    assert site.guard_slot is not None
    prepare = aged(site.guard_slot, site.guard_version)
    checked = check_subjects(nf, subject, special, plan.trace, prepare, written)
    assert checked.equivalent, checked.to_json()
