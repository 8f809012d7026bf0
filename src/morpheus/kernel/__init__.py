"""The only layer that makes system calls: bpf() via ctypes, netns helpers.

Everything above talks to `Map`, `LoadedProgram` and `Link` objects.
"""

from ..uapi import AttachType, MapFlags, MapType, ProgType, UpdateFlags, XdpAction
from .btf import load_btf
from .errors import BTFError, KernelError, VerifierError
from .fd import FD, ClosedError, live_fds
from .link import Link, LinkInfo
from .maps import Map, MapInfo, possible_cpus
from .prog import LoadedProgram, ProgInfo, TestRunResult, load_program, test_run, xdp_ctx
from .syscall import use_backend

__all__ = [
    "FD",
    "AttachType",
    "BTFError",
    "ClosedError",
    "KernelError",
    "Link",
    "LinkInfo",
    "LoadedProgram",
    "Map",
    "MapFlags",
    "MapInfo",
    "MapType",
    "ProgInfo",
    "ProgType",
    "TestRunResult",
    "UpdateFlags",
    "VerifierError",
    "XdpAction",
    "live_fds",
    "load_btf",
    "load_program",
    "possible_cpus",
    "test_run",
    "use_backend",
    "xdp_ctx",
]
