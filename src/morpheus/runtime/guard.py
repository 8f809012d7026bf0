"""The version map that guards specialized code, and atomic bumps from user space.

One single-entry array holds a u64 version per guarded map. Specialized sites compare their
map's version with the one their snapshot was taken at; every change to a map moves its
version first. The data plane bumps with atomic adds (see passes.guards), the write watcher
too; user space must not read-modify-write the value (it would undo a concurrent atomic
add, and a version going back could match an old snapshot again), so the agent bumps by
running a two-line BPF program on the map with BPF_PROG_TEST_RUN: an atomic add as well.
"""

from __future__ import annotations

import struct
from typing import Self

from ..ir import Program, asm, encode
from ..ir.asm import R0, R1, R2, R3, R4, R5
from ..ir.opcodes import AtomicOp
from ..kernel import LoadedProgram, Map, MapType, ProgType, load_program
from ..passes.inline import GUARD_MAP


class GuardMap:
    """`slots` versions, with `bump(slot)` atomic against the data plane."""

    def __init__(self, slots: int, *, existing: Map | None = None) -> None:
        self.slots = max(1, slots)
        self.map = existing if existing is not None else Map.create(
            MapType.ARRAY, 4, 8 * self.slots, 1, name=GUARD_MAP)
        self.map.name = GUARD_MAP
        try:
            self._bumper = self._load_bumper()
        except BaseException:
            if existing is None:
                self.map.close()
            raise

    def _load_bumper(self) -> LoadedProgram:
        program = Program("mph_bump", (
            asm.ldx(4, R2, R1, 0),
            asm.ldx(4, R3, R1, 4),
            asm.mov64(R4, R2),
            asm.add64(R4, 4),
            asm.jgt(R4, R3, "out"),
            asm.ldx(4, R5, R2, 0),
            asm.jmp(asm.JmpOp.JGE, R5, self.slots, "out"),
            asm.lsh64(R5, 3),
            asm.ld_map_value(R0, GUARD_MAP, 0),
            asm.add64(R0, R5),
            asm.mov64(R4, 1),
            asm.atomic(8, AtomicOp.ADD, R0, 0, R4),
            asm.mov64(R0, 1, label="out"),
            asm.exit_(),
        ))
        code = encode(program, {GUARD_MAP: self.map.fd.number}).bytecode
        return load_program(code, ProgType.XDP, name="mph_bump")

    def bump(self, slot: int) -> None:
        """Atomically add one to `slot`."""
        if not 0 <= slot < self.slots:
            raise IndexError(f"guard slot {slot} out of range (0..{self.slots - 1})")
        self._bumper.test_run(struct.pack("<I", slot) + bytes(60))

    def versions(self) -> list[int]:
        raw = self.map.lookup(0)
        assert isinstance(raw, bytes)
        return list(struct.unpack(f"<{self.slots}Q", raw))

    def version(self, slot: int) -> int:
        return self.versions()[slot]

    def close(self) -> None:
        self._bumper.close()
        self.map.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["GuardMap"]
