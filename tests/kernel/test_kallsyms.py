"""kernel.kallsyms: one parsed /proc/kallsyms for the loader's ksyms and the watcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from morpheus.kernel.kallsyms import Kallsyms, read_kallsyms
from morpheus.kernel.tracing import KernelFactError, kernel_symbol

TEXT = """\
ffffffff81000000 T _stext
ffffffff81001000 t helper_fn
ffffffff81002000 t helper_fn
ffffffffc0001000 t mod_only\t[veth]
ffffffffc0002000 t _stext\t[veth]
0000000000000000 T hidden_fn
"""


def test_module_listings_are_kept_apart_and_doubles_are_ambiguous() -> None:
    table = Kallsyms.parse(TEXT)
    assert table.addresses["mod_only"] == 0xFFFFFFFFC0001000
    assert "mod_only" not in table.vmlinux
    assert table.vmlinux["_stext"] == 0xFFFFFFFF81000000
    assert table.ambiguous == {"helper_fn": (0xFFFFFFFF81001000, 0xFFFFFFFF81002000),
                               "_stext": (0xFFFFFFFF81000000, 0xFFFFFFFFC0002000)}
    assert table.addresses["hidden_fn"] == 0


def test_kernel_symbol_reads_vmlinux_only_and_refuses_hidden_addresses(tmp_path: Path) -> None:
    path = tmp_path / "kallsyms"
    path.write_text(TEXT)
    assert kernel_symbol("_stext", kallsyms=path) == 0xFFFFFFFF81000000
    with pytest.raises(KernelFactError, match="not in"):
        kernel_symbol("mod_only", kallsyms=path)
    with pytest.raises(KernelFactError, match="hidden"):
        kernel_symbol("hidden_fn", kallsyms=path)


def test_the_running_kernel_lists_the_symbol_the_watcher_needs() -> None:
    assert read_kallsyms().vmlinux.get("bpf_map_release")
    assert kernel_symbol("bpf_map_release") == read_kallsyms().vmlinux["bpf_map_release"]
