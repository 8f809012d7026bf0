"""The runtime as program modules link it: fast paths with bodies, slow paths declared and
resolved to the engine's one compiled copy."""

from __future__ import annotations

import llvmlite.binding as llvm

from morpheus.userspace.jit import engine


def test_inline_part_keeps_fast_paths_and_declares_slow_paths() -> None:
    e = engine()
    part = {f.name: f for f in e.inline_runtime().functions}
    for name in ("rt_lookup_hash", "rt_lookup_lpm", "rt_helper_map_update_elem",
                 "rt_helper_csum_diff"):
        assert not part[name].is_declaration, name
    for name in ("rt_hash_update", "rt_lpm_update", "rt_map_delete", "rt_map_lookup",
                 "rt_helper_map_lookup_elem", "rt_replay"):
        assert part[name].is_declaration, name
        assert e.engine.get_function_address(name), name  # the engine's copy exports it
    bodies = [f for f in part.values() if not f.is_declaration]
    assert all(f.linkage != llvm.Linkage.external
               or any(b"alwaysinline" in a for a in f.attributes) for f in bodies)
