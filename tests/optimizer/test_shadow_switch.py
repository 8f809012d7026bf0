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
FDB_KEY = 8  # a slot: the key padded to 8 bytes, the valid word, the value

def aged(guard_slot: int, version: int):  # type: ignore[no-untyped-def]
    """A `prepare` hook: the guard at the version the plan was made at and every dynamic
    entry seen `AGE_NS` earlier. The shadow slots start invalid: the first hit on each
    fills it from the table (this environment's warm-up learned at other times than the
    profiling run's), and later hits read the refreshed copy."""
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
    assert not any(shadow.lookup(0)[FDB_KEY:FDB_KEY + 8])  # type: ignore[index]


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
