"""/proc/kallsyms, parsed once: the loader's typeless __ksym externs and the write watcher's
kernel addresses both read this one table."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

KALLSYMS = Path("/proc/kallsyms")


@dataclass(frozen=True)
class Kallsyms:
    """Each name's first address (0 where kptr_restrict hides it), whether that first
    listing is in vmlinux (not a module), and the names listed at two different addresses
    (static functions of one name in two files, or in vmlinux and a module)."""

    addresses: dict[str, int] = field(default_factory=dict)
    vmlinux: dict[str, int] = field(default_factory=dict)
    ambiguous: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Kallsyms:
        table = cls()
        for line in text.splitlines():
            # "address type name", and "\t[module]" after a module's symbols.
            fields = line.split()
            if not 3 <= len(fields) <= 4:
                continue
            address, name = int(fields[0], 16), fields[2]
            first = table.addresses.setdefault(name, address)
            if first != address:
                table.ambiguous.setdefault(name, (first, address))
            if len(fields) == 3:
                table.vmlinux.setdefault(name, address)
        return table


@functools.cache
def read_kallsyms(path: Path = KALLSYMS) -> Kallsyms:
    """The parsed table (read once per process: addresses only change when a module is
    loaded or unloaded). Raises OSError when the file cannot be read."""
    return Kallsyms.parse(path.read_text())
