"""AF_XDP input for the user-space data plane (copy mode, one queue).

The kernel side is a tiny XDP program of ours (`bpf/xsk_redirect.bpf.c`) that redirects the
queue's frames into an XSKMAP holding our socket; the user side processes the receive ring
in batches in native code (`rt_xsk_batch`): each frame runs through the JIT-compiled program
where it lies in the UMEM, XDP_TX frames go back out through the TX ring, the others return
to the fill ring. The socket is set up here with plain syscalls (socket, setsockopt, mmap,
bind) through ctypes: the rings' layout is all the kernel's uapi (linux/if_xdp.h) defines.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import socket
import struct
from dataclasses import dataclass

from ..kernel import Link, LoadedProgram, Map
from ..loader import load_collection
from ..obj import read_object
from .dataplane import LowMemory, UserDataPlane, UserProgram, UserspaceError
from .jit import engine

AF_XDP = 44
SOL_XDP = 283
XDP_MMAP_OFFSETS, XDP_RX_RING, XDP_TX_RING, XDP_UMEM_REG = 1, 2, 3, 4
XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_STATISTICS = 5, 6, 7
XDP_COPY = 1 << 1
PGOFF_RX, PGOFF_TX = 0, 0x80000000
PGOFF_FILL, PGOFF_COMPLETION = 0x100000000, 0x180000000
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setsockopt.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                             ctypes.c_uint32)
_libc.getsockopt.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                             ctypes.c_void_p)
_libc.bind.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.sendto.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                         ctypes.c_void_p, ctypes.c_uint32)


class _Xsk(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in (
        "rx_prod", "rx_cons", "rx", "fr_prod", "fr_cons", "fr", "tx_prod", "tx_cons", "tx",
        "cr_prod", "cr_cons", "cr", "umem")] + [
        ("rx_mask", ctypes.c_uint32), ("fr_mask", ctypes.c_uint32),
        ("tx_mask", ctypes.c_uint32), ("cr_mask", ctypes.c_uint32),
        ("frame_size", ctypes.c_uint32), ("headroom", ctypes.c_uint32),
        ("verdicts", ctypes.c_uint64 * 5), ("other", ctypes.c_uint64),
        ("tx_pending", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


def _check(rc: int, what: str) -> None:
    if rc < 0:
        err = ctypes.get_errno()
        raise UserspaceError(f"AF_XDP: {what} failed: {os.strerror(err)} (errno {err})")


@dataclass
class XskOptions:
    frames: int = 4096
    frame_size: int = 4096
    ring_size: int = 2048
    # Native XDP for the redirect program: needed when frames arrive as XDP frames (a veth
    # peer's generator: without a native program the veth refuses them); generic otherwise.
    native: bool = False


class XskPort:
    """One AF_XDP socket on queue 0 of `ifindex` (in the current network namespace), with
    the redirect program attached in generic (SKB) mode, feeding a user-space program."""

    def __init__(self, plane: UserDataPlane, program: UserProgram, ifindex: int,
                 options: XskOptions | None = None) -> None:
        self.options = o = options or XskOptions()
        self.plane, self.program, self.ifindex = plane, program, ifindex
        self._maps: list[tuple[int, int]] = []
        self.umem = LowMemory(o.frames * o.frame_size)
        self.fd = -1
        self.link: Link | None = None
        self.kernel_prog: LoadedProgram | None = None
        self.xsks: Map | None = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        o = self.options
        self.fd = socket.socket(AF_XDP, socket.SOCK_RAW, 0).detach()
        reg = struct.pack("<QQIIII", self.umem.address, o.frames * o.frame_size, o.frame_size,
                          0, 0, 0)
        buf = ctypes.create_string_buffer(reg)
        _check(_libc.setsockopt(self.fd, SOL_XDP, XDP_UMEM_REG, buf, len(reg)), "UMEM_REG")
        size = ctypes.c_uint32(o.ring_size)
        for opt in (XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_RX_RING, XDP_TX_RING):
            _check(_libc.setsockopt(self.fd, SOL_XDP, opt, ctypes.byref(size), 4), "ring size")
        offsets = ctypes.create_string_buffer(128)
        optlen = ctypes.c_uint32(128)
        _check(_libc.getsockopt(self.fd, SOL_XDP, XDP_MMAP_OFFSETS, offsets,
                                ctypes.byref(optlen)), "MMAP_OFFSETS")
        off = struct.unpack("<16Q", offsets.raw)
        rings = {}
        for n, (name, pgoff, elem) in enumerate((("rx", PGOFF_RX, 16), ("tx", PGOFF_TX, 16),
                                                 ("fr", PGOFF_FILL, 8),
                                                 ("cr", PGOFF_COMPLETION, 8))):
            prod, cons, desc = off[4 * n], off[4 * n + 1], off[4 * n + 2]
            length = desc + o.ring_size * elem
            address = _libc.mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE,
                                 mmap.MAP_SHARED | 0x8000,  # MAP_POPULATE
                                 self.fd, pgoff)
            if address in (None, ctypes.c_void_p(-1).value):
                _check(-1, f"mmap {name} ring")
            self._maps.append((address, length))
            rings[name] = (address + prod, address + cons, address + desc)
        mask = o.ring_size - 1
        x = _Xsk()
        for name, (p, c, d) in rings.items():
            setattr(x, f"{name}_prod", p)
            setattr(x, f"{name}_cons", c)
            setattr(x, name, d)
            setattr(x, f"{name}_mask", mask)
        x.umem = self.umem.address
        x.frame_size = o.frame_size
        self.xsk = x
        # Hand the kernel half the frames to receive into.
        fr_prod = ctypes.c_uint32.from_address(rings["fr"][0])
        fill = (ctypes.c_uint64 * o.ring_size).from_address(rings["fr"][2])
        for i in range(o.ring_size):
            fill[i] = i * o.frame_size
        fr_prod.value = o.ring_size
        addr = struct.pack("<HHIII", AF_XDP, XDP_COPY, self.ifindex, 0, 0)
        _check(_libc.bind(self.fd, addr, len(addr)), f"bind to ifindex {self.ifindex}")
        from ..bpf import object_path

        spec = read_object(object_path("xsk_redirect"))
        coll = load_collection(spec)
        self._coll = coll
        self.xsks = coll.maps["xsks"]
        self.xsks.update(0, struct.pack("<I", self.fd))
        self.link = Link.xdp(coll.programs["xsk_redirect"], self.ifindex,
                             XDP_FLAGS_DRV_MODE if o.native else XDP_FLAGS_SKB_MODE)

    def poll(self, budget: int = 256) -> int:
        """Process what the receive ring holds (up to `budget` frames); kick TX if needed."""
        n = engine().api["rt_xsk_batch"](
            ctypes.addressof(self.xsk), self.program.entry_address,
            ctypes.addressof(self.plane._ctx), ctypes.addressof(self.plane.env),
            self.ifindex, budget)
        pending = self.xsk.tx_pending
        if pending:
            # In copy mode one sendto transmits at most 32 descriptors (the kernel's
            # TX_BATCH_SIZE): kick once per 32, or the TX ring holds the UMEM hostage.
            for _ in range(-(-pending // 32)):
                _libc.sendto(self.fd, None, 0, socket.MSG_DONTWAIT, None, 0)
            self.xsk.tx_pending = 0
        return n

    @property
    def verdicts(self) -> dict[str, int]:
        names = ("aborted", "drop", "pass", "tx", "redirect")
        return {name: int(self.xsk.verdicts[i]) for i, name in enumerate(names)}

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None
        if getattr(self, "_coll", None) is not None:
            self._coll.close()
            self._coll = None
        for address, length in self._maps:
            _libc.munmap(address, length)
        self._maps.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.umem.close()
