"""Table inlining: the comparison tree answers exactly like the map, for any contents."""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from morpheus.ir import Program, asm, listing
from morpheus.ir.asm import R0, R1, R2, R10
from morpheus.ir.program import with_origins
from morpheus.loader import create_map, load_collection, load_program_spec
from morpheus.obj import MapSpec, read_object
from morpheus.optimizer import Guards, MapSnapshot, SiteHeat, SpecializeRequest, Target, specialize
from morpheus.passes.inline import InlineEntry, InlinePlan, InlineTables, SitePlan
from morpheus.passes.pipeline import PassContext
from morpheus.uapi import MapType, ProgType


def lookup_program() -> Program:
    return with_origins(Program("p", (
        asm.st(4, R10, -4, 7),
        asm.mov64(R2, R10),
        asm.add64(R2, -4),
        asm.ld_map_fd(R1, "t"),
        asm.call_helper("map_lookup_elem"),  # instruction 4
        asm.jeq(R0, 0, "out"),
        asm.ldx(4, R0, R0, 0),
        asm.exit_(),
        asm.mov64(R0, 2, label="out"),
        asm.exit_(),
    )))


def test_golden_hot_keys_with_fallback() -> None:
    ctx = PassContext({"t": MapSpec("t", MapType.HASH, 4, 4, 100)}, ProgType.XDP)
    entries = tuple(InlineEntry(struct.pack("<I", k), struct.pack("<I", 10 * k)) for k in (1, 5))
    out = InlineTables(InlinePlan((SitePlan(4, "t", entries),))).run(lookup_program(), ctx)
    assert listing(out).splitlines()[5:] == [
        "      5: r3 = *(u32 *)(r2 + 0x0)",
        "      6: if w3 == 0x1 goto mph4.0",
        "      7: if w3 != 0x5 goto mph4.miss",
        "      8: r0 = map_value[mph_values][0x8] ll  ; inlined t",
        "     10: goto mph4.cont",
        "mph4.0:",
        "     11: r0 = map_value[mph_values][0x0] ll  ; inlined t",
        "     13: goto mph4.cont",
        "mph4.miss:",
        "     14: call bpf_map_lookup_elem",
        "mph4.cont:",
        "     15: if r0 == 0x0 goto out",
        "     16: r0 = *(u32 *)(r0 + 0x0)",
        "     17: exit",
        "out:",
        "     18: r0 = 0x2",
        "     19: exit",
    ]
    assert ctx.known_values["mph_values"] == struct.pack("<IxxxxI", 10, 50)  # 8-aligned


def test_golden_complete_table_has_no_call_and_constant_key_no_tree() -> None:
    ctx = PassContext({"t": MapSpec("t", MapType.HASH, 4, 4, 100)}, ProgType.XDP)
    entry = InlineEntry(struct.pack("<I", 7), struct.pack("<I", 99))
    out = InlineTables(InlinePlan((SitePlan(4, "t", (entry,), complete=True,
                                            constant_key=True),))).run(lookup_program(), ctx)
    text = listing(out)
    assert "call bpf_map_lookup_elem" not in text
    assert "r0 = map_value[mph_values][0x0] ll" in text
    assert "if w3" not in text


def test_keys_must_fit_the_map() -> None:
    ctx = PassContext({"t": MapSpec("t", MapType.HASH, 4, 4, 100)}, ProgType.XDP)
    bad = SitePlan(4, "t", (InlineEntry(b"12345678", b"abcd"),))
    with pytest.raises(ValueError, match="key of 8 bytes"):
        InlineTables(InlinePlan((bad,))).run(lookup_program(), ctx)


def frame(key: int) -> bytes:
    return bytes([0, 0]) + struct.pack("<I", key) + bytes(58)


@pytest.mark.kernel
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(contents=st.dictionaries(st.integers(0, 2**32 - 1), st.sampled_from([1, 2]),
                                min_size=1, max_size=80),
       hot_fraction=st.floats(0.0, 1.0), extra=st.lists(st.integers(0, 2**32 - 1),
                                                        max_size=20))
def test_specialized_lookups_answer_like_the_map(contents: dict[int, int], hot_fraction: float,
                                                 extra: list[int],
                                                 test_objects: dict[str, Path]) -> None:
    spec = read_object(test_objects["learn.v3"])
    prog = spec.program("xdp_learn")
    target = Target.analyze(spec, prog)
    (site,) = [s for s in target.facts.lookups() if s.map == "table"]
    keys = sorted(contents)
    hot = keys[: max(1, int(len(keys) * hot_fraction))]
    absent_hot = [k for k in extra[:3] if k not in contents]
    heat = {site.index: SiteHeat(Counter({struct.pack("<I", k): 1 + i
                                          for i, k in enumerate(hot + absent_hot)}))}
    with load_collection(spec, programs=[]) as coll:
        for k, v in contents.items():
            coll.maps["table"].update(k, v)
        snap = MapSnapshot(spec.maps["table"], {struct.pack("<I", k): coll.maps["table"].lookup(k)
                                                for k in hot + absent_hot})
        result = specialize(SpecializeRequest(target, {"table": snap}, heat,
                                              guards=Guards(slots={}, bumps={})))
        extras = {n: create_map(m) for n, m in result.extra_maps.items()}
        try:
            maps = {**coll.maps, **extras}
            with load_program_spec(prog, maps, btf_fd=coll.btf_fd) as original, \
                    load_program_spec(prog, maps, program=result.program,
                                      btf_fd=coll.btf_fd) as special:
                for k in [*keys, *extra, 0, 2**32 - 1]:
                    f = frame(k)
                    assert special.test_run(f).retval == original.test_run(f).retval, k
        finally:
            for m in extras.values():
                m.close()


def test_golden_known_key_bytes_are_not_compared() -> None:
    """An LPM key's prefix length is a constant at the site: only the address is compared
    (32-bit compares), and an entry with another prefix length cannot match there."""
    prog = with_origins(Program("p", (
        asm.st(4, R10, -8, 32),
        asm.ldx(4, R0, R1, 0xC),
        asm.stx(4, R10, -4, R0),
        asm.mov64(R2, R10),
        asm.add64(R2, -8),
        asm.ld_map_fd(R1, "t"),
        asm.call_helper("map_lookup_elem"),  # instruction 6
        asm.exit_(),
    )))
    ctx = PassContext({"t": MapSpec("t", MapType.LPM_TRIE, 8, 4, 100)}, ProgType.XDP)
    entries = tuple(InlineEntry(struct.pack("<II", plen, addr), struct.pack("<I", addr))
                    for plen, addr in ((32, 7), (32, 9), (24, 5)))
    plan = SitePlan(6, "t", entries, known_bytes=(32, 0, 0, 0, None, None, None, None))
    out = InlineTables(InlinePlan((plan,))).run(prog, ctx)
    assert listing(out).splitlines()[7:13] == [
        "      7: r3 = *(u32 *)(r2 + 0x4)",
        "      8: if w3 == 0x7 goto mph6.0",
        "      9: if w3 != 0x9 goto mph6.miss",
        "     10: r0 = map_value[mph_values][0x8] ll  ; inlined t",
        "     12: goto mph6.cont",
        "mph6.0:",
    ]
    assert "0x5" not in listing(out)  # the /24 entry is left out
