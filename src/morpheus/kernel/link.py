"""BPF links: attach XDP and TC (tcx) programs, replace them atomically, detach."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from ..uapi import F_REPLACE, AttachType, Cmd
from .fd import FD, OwnsFD
from .prog import LoadedProgram
from .syscall import Attr, bpf, buffer

_LINK_INFO_SIZE = 48
LINK_TYPE_XDP = 6


@dataclass(frozen=True, slots=True)
class LinkInfo:
    type: int
    id: int
    prog_id: int
    ifindex: int  # for XDP links; 0 once the device is gone or the link detached


def link_info(fd: FD) -> LinkInfo:
    raw = buffer(_LINK_INFO_SIZE)
    attr = Attr().u32(0, fd.number).u32(4, _LINK_INFO_SIZE).pointer(8, raw)
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, "read link info")
    ltype, lid, prog_id = struct.unpack_from("<III", raw, 0)
    (ifindex,) = struct.unpack_from("<I", raw, 16)
    return LinkInfo(ltype, lid, prog_id, ifindex)


class Link(OwnsFD):
    """An attachment of a program to a hook, owned through a file descriptor (or a pin)."""

    def __init__(self, fd: FD) -> None:
        self.fd = fd

    @classmethod
    def xdp(cls, prog: LoadedProgram, ifindex: int, flags: int = 0) -> Link:
        """Attach `prog` to the XDP hook of `ifindex` (in the caller's network namespace).

        `flags` selects the mode: XDP_FLAGS_SKB_MODE (generic) or XDP_FLAGS_DRV_MODE (native);
        0 lets the kernel pick native when the driver supports it.
        """
        attr = Attr().u32(0, prog.fd.number).u32(4, ifindex).u32(8, AttachType.XDP).u32(12, flags)
        fd = bpf(
            Cmd.LINK_CREATE,
            attr,
            f"attach XDP program {prog.name!r} to ifindex {ifindex}",
            "EBUSY means another program or link already owns the hook",
        )
        return cls(FD(fd, "link"))

    @classmethod
    def tcx(cls, prog: LoadedProgram, ifindex: int, *, egress: bool = False) -> Link:
        """Attach a TC (sched_cls) program to the tcx ingress (or egress) hook of `ifindex`,
        after the programs already there (CONFIG_NET_XGRESS)."""
        hook = AttachType.TCX_EGRESS if egress else AttachType.TCX_INGRESS
        attr = Attr().u32(0, prog.fd.number).u32(4, ifindex).u32(8, hook).u32(12, 0)
        fd = bpf(
            Cmd.LINK_CREATE,
            attr,
            f"attach TC program {prog.name!r} to tcx {'egress' if egress else 'ingress'} of "
            f"ifindex {ifindex}",
            "EINVAL means the kernel has no tcx (CONFIG_NET_XGRESS) or the program is not a "
            "TC classifier",
        )
        return cls(FD(fd, "link"))

    @classmethod
    def from_pin(cls, path: str | Path) -> Link:
        from .pin import obj_get

        return cls(obj_get(path, "link"))

    @classmethod
    def from_id(cls, link_id: int) -> Link:
        attr = Attr().u32(0, link_id)
        return cls(FD(bpf(Cmd.LINK_GET_FD_BY_ID, attr, f"open link id {link_id}"), "link"))

    def info(self) -> LinkInfo:
        return link_info(self.fd)

    def update(self, new: LoadedProgram, expected_old: LoadedProgram | None = None) -> None:
        """Atomically swap the program; with `expected_old`, fail (EPERM) unless that
        program is the one attached, so two writers cannot overwrite each other."""
        attr = Attr().u32(0, self.fd.number).u32(4, new.fd.number)
        if expected_old is not None:
            attr.u32(8, F_REPLACE).u32(12, expected_old.fd.number)
        bpf(
            Cmd.LINK_UPDATE,
            attr,
            f"replace program of link with {new.name!r}",
            "EPERM with an expected old program means another program is attached",
        )

    def detach(self) -> None:
        """Detach from the hook now; the link object stays valid but defunct."""
        bpf(Cmd.LINK_DETACH, Attr().u32(0, self.fd.number), "detach link")

    def pin(self, path: str | Path) -> None:
        from .pin import obj_pin

        obj_pin(self.fd, path, "link")

