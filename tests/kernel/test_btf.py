"""kernel.btf: what the running kernel tells the loader (here: kallsyms for typeless ksyms)."""

from __future__ import annotations

import pytest

from morpheus.kernel.btf import AmbiguousKsym, _kallsyms, kallsyms_address, kallsyms_listed


def test_a_name_kallsyms_lists_at_two_addresses_is_refused_like_libbpf() -> None:
    ambiguous = _kallsyms().ambiguous
    if not ambiguous:
        pytest.skip("this kernel's kallsyms has no name listed at two addresses")
    name, (first, other) = next(iter(ambiguous.items()))
    assert first != other
    with pytest.raises(AmbiguousKsym, match=f"'{name}'.*ambiguous.*{first:#x}.*{other:#x}"):
        kallsyms_address(name)
    assert kallsyms_listed(name)


def test_a_unique_symbol_resolves_and_an_absent_one_is_none() -> None:
    table = _kallsyms()
    addresses, ambiguous = table.addresses, table.ambiguous
    unique = next(n for n, a in addresses.items() if a and n not in ambiguous)
    assert kallsyms_address(unique) == addresses[unique]
    assert kallsyms_address("morpheus_no_such_symbol") is None
    assert not kallsyms_listed("morpheus_no_such_symbol")
