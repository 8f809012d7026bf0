"""`morpheus disasm OBJ [--objdump] [--program NAME]`: disassemble an object."""

from __future__ import annotations

import argparse

from ..ir import decode, listing, objdump_lines
from ..loader import read_for_kernel
from ..obj.elfview import executable_sections
from .read_args import add_read_arguments, read_options


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="disassemble a BPF object")
    p.add_argument("object", help="clang-built BPF object file")
    p.add_argument("--objdump", action="store_true",
                   help="print sections exactly as llvm-objdump-16 -d --no-show-raw-insn does")
    p.add_argument("--program", help="only this program (symbolic listing)")
    add_read_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.objdump:
        for section in executable_sections(args.object):
            print(f"\nDisassembly of section {section.name}:")
            insns = decode(section.data)
            lines = objdump_lines(insns, section.labels)
            slot_to_line = {}
            slot = 0
            for i, insn in enumerate(insns):
                slot_to_line[slot] = i
                slot += insn.width
            for slot, line_index in sorted(slot_to_line.items()):
                if slot in section.functions or slot in section.labels:
                    name = section.functions.get(slot) or section.labels[slot]
                    prefix = "" if slot == 0 else "\n"
                    print(f"{prefix}{slot * 8:016x} <{name}>:")
                print(lines[line_index])
        return 0
    spec = read_for_kernel(args.object, **read_options(args))
    for prog in spec.programs.values():
        if args.program and prog.name != args.program:
            continue
        print(f"; section {prog.section}, {prog.insn_count} instructions")
        print(listing(prog.program))
        print()
    return 0
