"""Setting global variables (`const volatile` configuration in .rodata, .data) before load."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from .btf import Kind
from .errors import ObjectError
from .spec import ObjectSpec


def with_globals(spec: ObjectSpec, values: Mapping[str, int | bytes],
                 section: str = ".rodata") -> ObjectSpec:
    """A copy of `spec` whose `section` map starts with the given variable values.

    Integers are stored little-endian in the variable's size. Variables are found through
    the section's BTF datasec, so the object must carry BTF.
    """
    if section not in spec.maps:
        raise ObjectError(f"object {spec.name} has no {section} section")
    if spec.btf is None:
        raise ObjectError(f"object {spec.name} has no BTF: cannot locate variables")
    datasec = spec.btf.find(Kind.DATASEC, section)
    if datasec is None:
        raise ObjectError(f"object {spec.name}: no BTF datasec for {section}")
    where = {spec.btf[m.type].name: (m.offset, m.size) for m in datasec.members}
    mspec = spec.maps[section]
    data = bytearray(mspec.data or bytes(mspec.value_size))
    for name, value in values.items():
        if name not in where:
            raise ObjectError(f"object {spec.name}: no variable {name!r} in {section} "
                              f"(variables: {', '.join(sorted(where))})")
        offset, size = where[name]
        raw = value.to_bytes(size, "little", signed=value < 0) if isinstance(value, int) \
            else bytes(value)
        if len(raw) != size:
            raise ObjectError(f"variable {name!r} is {size} bytes, got {len(raw)}")
        data[offset:offset + size] = raw
    maps = dict(spec.maps)
    maps[section] = mspec.with_changes(data=bytes(data))
    return replace(spec, maps=maps)
