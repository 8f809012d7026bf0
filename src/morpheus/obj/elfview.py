"""A raw view of an object's code sections, for disassembly in llvm-objdump's layout."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .reader import STT_FUNC, STT_NOTYPE, _Reader


@dataclass(frozen=True, slots=True)
class SectionView:
    name: str
    data: bytes
    functions: dict[int, str]  # slot → function symbol
    labels: dict[int, str]  # slot → other (local label) symbol


def executable_sections(path: str | os.PathLike[str]) -> list[SectionView]:
    """Executable sections in file order with their symbols by instruction slot."""
    reader = _Reader(Path(path).read_bytes(), Path(path).name, os.fspath(path))
    out = []
    for sec in reader.sections:
        if not sec.executable:
            continue
        functions: dict[int, str] = {}
        labels: dict[int, str] = {}
        for sym in reader.symbols:
            if sym.shndx != sec.index or not sym.name:
                continue
            if sym.type == STT_FUNC:
                functions.setdefault(sym.value // 8, sym.name)
            elif sym.type == STT_NOTYPE:
                labels.setdefault(sym.value // 8, sym.name)
        out.append(SectionView(sec.name, reader.section_data(sec), functions, labels))
    return out
