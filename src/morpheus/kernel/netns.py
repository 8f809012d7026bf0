"""Network namespaces with veth pairs for tests and benchmarks.

Everything is created inside a fresh namespace and removed on exit, also when the body
raises. The machine's own interfaces are never touched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class NetnsError(RuntimeError):
    pass


def _ip(*args: str, netns: str | None = None) -> str:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
    return result.stdout


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns failed: {os.strerror(err)}")


@dataclass
class NetNamespace:
    """A named network namespace (`ip netns`) owned by this process."""

    name: str
    interfaces: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, prefix: str = "morpheus") -> NetNamespace:
        name = f"{prefix}-{secrets.token_hex(4)}"
        _ip("netns", "add", name)
        ns = cls(name)
        try:
            _ip("link", "set", "lo", "up", netns=name)
        except BaseException:
            ns.delete()
            raise
        return ns

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def ip(self, *args: str) -> str:
        return _ip(*args, netns=self.name)

    def add_veth(self, a: str, b: str, *, up: bool = True, mtu: int | None = None) -> None:
        """Create a veth pair with both ends in this namespace."""
        self.ip("link", "add", a, "type", "veth", "peer", "name", b)
        self.interfaces += [a, b]
        for dev in (a, b):
            if mtu:
                self.ip("link", "set", dev, "mtu", str(mtu))
            if up:
                self.ip("link", "set", dev, "up")

    def set_up(self, dev: str, up: bool = True) -> None:
        self.ip("link", "set", dev, "up" if up else "down")

    def ifindex(self, dev: str) -> int:
        with self.entered():
            return socket.if_nametoindex(dev)

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block with this thread inside the namespace (for ifindex lookups, XDP
        attach and test runs with an ingress device), then switch back."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)


@contextmanager
def temporary_netns(prefix: str = "morpheus") -> Iterator[NetNamespace]:
    """A fresh namespace, deleted (with its interfaces) when the block ends."""
    ns = NetNamespace.create(prefix)
    try:
        yield ns
    finally:
        ns.delete()


@contextmanager
def veth_pair(
    prefix: str = "morpheus", *, up: bool = True
) -> Iterator[tuple[NetNamespace, str, str]]:
    """A namespace with one veth pair `veth0`/`veth1`, removed on exit."""
    with temporary_netns(prefix) as ns:
        ns.add_veth("veth0", "veth1", up=up)
        yield ns, "veth0", "veth1"
