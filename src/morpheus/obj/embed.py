"""Linking one program into another as a BPF-to-BPF subprogram (pure, no syscalls).

The host program calls a stub function; the guest program replaces the stub's body. Guest
labels and map names get a prefix so nothing collides, and the two objects' BTF are merged
so that func_info and line_info of both stay valid (the kernel wants BTF func_info for
subprograms that make tail calls).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import Instruction, LineInfo, Meta, Program
from .btf import BTF, merge_btf
from .errors import ObjectError
from .spec import ProgramSpec


@dataclass(frozen=True)
class Embedded:
    """The combined program, its BTF, and the names the guest's maps are referenced by."""

    spec: ProgramSpec
    btf: BTF | None
    guest_maps: dict[str, str]  # guest map name → name in the combined program


def embed(host: ProgramSpec, host_btf: BTF | None, stub: str, guest: ProgramSpec,
          guest_btf: BTF | None, *, prefix: str = "put:") -> Embedded:
    """Replace function `stub` of `host` by the whole of `guest` (entry + subprograms)."""
    functions = {f.name: f for f in host.program.functions()}
    if stub not in functions:
        raise ObjectError(f"program {host.name} has no function {stub!r} to replace "
                          f"(functions: {', '.join(functions)})")
    stub_fn = functions[stub]
    if host_btf is not None and guest_btf is not None:
        btf, id_shift, str_shift = merge_btf(host_btf, guest_btf)
    else:
        # Without BTF on both sides, drop function and line info: the kernel accepts a
        # program without them (it cannot take half of them).
        btf, id_shift, str_shift = None, 0, 0

    entry_label = guest.program.insns[0].label
    guest_maps: dict[str, str] = {}

    def rename(label: str | None) -> str | None:
        if label is None:
            return None
        return stub if label == entry_label else prefix + label

    moved = []
    for insn in guest.program.insns:
        reference = insn.reference
        if reference is not None:
            if insn.is_map_load:
                guest_maps[reference] = prefix + reference
                reference = prefix + reference
            else:
                reference = rename(reference)
        meta = _shift_meta(insn.meta, id_shift, str_shift, btf)
        moved.append(Instruction(insn.opcode, insn.dst, insn.src, insn.off, insn.imm, reference,
                                 rename(insn.label), meta))
    if moved[0].label != stub:
        moved[0] = moved[0].with_label(stub)

    host_insns = list(host.program.insns)
    if btf is None:
        host_insns = [i.with_meta_object(Meta(None, None, i.meta.origin, i.meta.note))
                      for i in host_insns]
    kept = host_insns[: stub_fn.start] + host_insns[stub_fn.end :]
    program = Program(host.program.name, (*kept, *moved))
    return Embedded(host.with_program(program), btf, guest_maps)


def _shift_meta(meta: Meta, id_shift: int, str_shift: int, btf: BTF | None) -> Meta:
    if btf is None:
        return Meta(None, None, meta.origin, meta.note)
    line = meta.line
    if line is not None:
        line = LineInfo(line.file_name_off + str_shift, line.line_off + str_shift, line.line,
                        line.col, btf)
    func = meta.func_btf_id + id_shift if meta.func_btf_id is not None else None
    return Meta(line, func, meta.origin, meta.note)
