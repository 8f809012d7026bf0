"""What a BPF object says: programs, maps and type information. Deterministic, no syscalls."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ..ir import Program
from ..uapi import MapFlags, MapType, ProgType
from .btf import BTF


@dataclass(frozen=True, slots=True)
class MapSpec:
    """A map the object defines: BTF-defined in `.maps`, or a global data section.

    Global data sections (.rodata, .data, .bss and their `.name` variants) become single-entry
    arrays whose value is the section; `data` holds their initial contents and `freeze` says
    the map is made read-only (to user space) once initialised (.rodata).
    """

    name: str
    type: MapType
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    inner: MapSpec | None = None
    pinning: int = 0
    map_extra: int = 0
    numa_node: int = 0
    btf_key_type_id: int = 0
    btf_value_type_id: int = 0
    data: bytes | None = None
    section: str = ".maps"
    freeze: bool = False
    # Static initialiser (`.values = { [i] = &x }`): (slot, name) of a program (prog
    # arrays) or a map (maps of maps), set by the loader once everything exists.
    init_slots: tuple[tuple[int, str], ...] = ()

    @property
    def is_global_data(self) -> bool:
        return self.section != ".maps"

    @property
    def read_only_for_programs(self) -> bool:
        return bool(self.flags & MapFlags.RDONLY_PROG)

    def with_changes(self, **changes: object) -> MapSpec:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ProgramSpec:
    """An entry point with every subprogram it calls linked in after it (as libbpf does)."""

    name: str
    section: str
    type: ProgType
    attach_type: int
    flags: int
    license: str
    kern_version: int
    program: Program
    # Kernel modules whose BTF the program's kfunc calls and ksym loads refer to: module
    # i's BTF fd goes in fd_array[i + 1] at load (index 0 is reserved: vmlinux). The
    # whole object shares one table, as libbpf shares one fd_array between programs.
    module_btfs: tuple[str, ...] = ()

    @property
    def insn_count(self) -> int:
        """Number of 8-byte instruction slots (what the kernel and llvm-objdump count)."""
        return sum(insn.width for insn in self.program.insns)

    def with_program(self, program: Program) -> ProgramSpec:
        return replace(self, program=program)

    @property
    def map_names(self) -> frozenset[str]:
        """Names of the maps the program references."""
        return frozenset(
            i.reference for i in self.program.insns if i.is_map_load and i.reference is not None
        )


@dataclass(frozen=True)
class ObjectSpec:
    """Everything read from one object file. `btf` is None for objects built without -g."""

    name: str
    programs: Mapping[str, ProgramSpec]
    maps: Mapping[str, MapSpec]
    btf: BTF | None = None
    license: str = ""
    kern_version: int = 0
    path: str | None = None
    notes: tuple[str, ...] = field(default=())

    def program(self, name: str | None = None) -> ProgramSpec:
        """The program called `name`, or the only program when `name` is None."""
        if name is None:
            if len(self.programs) != 1:
                raise KeyError(
                    f"object {self.name} has {len(self.programs)} programs "
                    f"({', '.join(self.programs)}); name one"
                )
            return next(iter(self.programs.values()))
        try:
            return self.programs[name]
        except KeyError:
            raise KeyError(
                f"object {self.name} has no program {name!r}; it has {', '.join(self.programs)}"
            ) from None
