"""Pure, deterministic reading of BPF ELF objects: no system calls."""

from .btf import BTF, BTFExt, Kind
from .errors import ObjectError, UnsupportedFeature
from .reader import read_object
from .spec import MapSpec, ObjectSpec, ProgramSpec

__all__ = [
    "BTF",
    "BTFExt",
    "Kind",
    "MapSpec",
    "ObjectError",
    "ObjectSpec",
    "ProgramSpec",
    "UnsupportedFeature",
    "read_object",
]
