"""A prog-array trampoline: the attached program tail-calls slot 0 of a one-entry prog array,
so a swap is one map update (a pointer exchange in the kernel) instead of a link update.

What it costs: every packet pays one tail call, and the versions must be tail-call
compatible with the trampoline (same program type, attach type and flags; the kernel
checks). What it buys: the swap is a single map-element update, with no detach/attach work
in the XDP core. If slot 0 is ever empty, the trampoline passes the packet to the stack
(XDP_PASS, or TC_ACT_OK for a TC program).
"""

from __future__ import annotations

import struct
from pathlib import Path

from ..ir import Program, asm, encode
from ..ir.asm import R0, R2, R3
from ..kernel import LoadedProgram, Map, MapType, XdpAction, load_program
from ..obj import ProgramSpec
from ..uapi import ProgType

SLOTS_NAME = "mph_slots"
XDP_PASS = int(XdpAction.PASS)
TC_ACT_OK = 0


def _program(name: str, prog_type: int = ProgType.XDP) -> Program:
    passed = XDP_PASS if prog_type == ProgType.XDP else TC_ACT_OK
    return Program(name, (
        asm.ld_map_fd(R2, SLOTS_NAME),  # r1 still holds the context the version gets
        asm.mov64(R3, 0),
        asm.call_helper("tail_call"),
        asm.mov64(R0, passed),  # reached only when slot 0 is empty
        asm.exit_(),
    ))


class Trampoline:
    """The attached program and its prog array; `swap` installs a version."""

    def __init__(self, program: LoadedProgram, slots: Map) -> None:
        self.program = program
        self.slots = slots

    @classmethod
    def create(cls, spec: ProgramSpec) -> Trampoline:
        """A trampoline for versions of `spec` (same type, attach type and flags)."""
        slots = Map.create(MapType.PROG_ARRAY, 4, 4, 1, name=SLOTS_NAME)
        try:
            encoded = encode(_program("mph_tramp", spec.type), {SLOTS_NAME: slots.fd.number})
            program = load_program(encoded.bytecode, spec.type, name="mph_tramp",
                                   license=spec.license or "GPL",
                                   expected_attach_type=spec.attach_type,
                                   prog_flags=spec.flags)
        except BaseException:
            slots.close()
            raise
        return cls(program, slots)

    @classmethod
    def from_pins(cls, slots_pin: Path, program: LoadedProgram) -> Trampoline:
        slots = Map.from_pin(slots_pin)
        slots.name = SLOTS_NAME
        return cls(program, slots)

    def swap(self, version: LoadedProgram) -> None:
        self.slots.update(0, struct.pack("<I", version.fd.number))

    def running_id(self) -> int | None:
        """The id of the program in slot 0 (None when empty)."""
        raw = self.slots.lookup(0)
        return struct.unpack("<I", raw)[0] if isinstance(raw, bytes) else None

    def close(self) -> None:
        self.program.close()
        self.slots.close()
