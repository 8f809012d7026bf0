"""Network namespaces with veth pairs for tests, benchmarks and `morpheus send`.

Everything is created inside a fresh namespace and removed on exit, also when the body
raises. The machine's own interfaces are never touched.

Namespaces, links and addresses are configured over rtnetlink with pyroute2, from a netlink
socket opened inside the namespace; nothing runs `ip` in a subprocess. The namespace is
entered per thread with setns(2) (`entered()`), unlike `ip netns exec`, which also unshares
the mount namespace and remounts /sys: here /sys — and the bpffs at /sys/fs/bpf with the
project's pins — stays the host's, while sockets, ifindex lookups, XDP attachment and test
runs made from the block see the namespace's devices.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyroute2 import IPRoute
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

# pyroute2 is imported where it is used, not here: its package imports all of itself
# (~0.3 s, over 1 s on a loaded VM), and most users of this module only enter namespaces
# (the agent, test runs) — every CLI command would pay for it at start.

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
# Creating a namespace moves the calling thread for a moment (see NetNamespace.create).
_create_lock = threading.Lock()
# Held open for the process's life: `/proc/PID/ns/net` would name whichever namespace the
# main thread happens to be in at that moment.
_PROCESS_NS_FD = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


class NetnsError(RuntimeError):
    pass


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns failed: {os.strerror(err)}")


def _netlink_error(what: str, exc: Exception) -> NetnsError:
    code = getattr(exc, "code", 0)
    return NetnsError(f"{what}: {os.strerror(code) if code else exc}")


def _netlink_errors() -> type[Exception]:
    from pyroute2.netlink.exceptions import NetlinkError

    return NetlinkError  # type: ignore[no-any-return]


def _new_veth_message(a: str, b: str, indexes: tuple[int, int]) -> ifinfmsg:
    # pyroute2's `link("add", kind="veth", peer={...})` turns the peer's keys into
    # attributes only, and a peer's ifindex lives in its message header: the request is
    # spelled out to choose both indexes (0 lets the kernel pick).
    from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
    from pyroute2.netlink.rtnl import RTM_NEWLINK
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    peer = {"index": indexes[1], "attrs": [("IFLA_IFNAME", b)]}
    msg = ifinfmsg()
    msg["index"] = indexes[0]
    msg["attrs"] = [
        ("IFLA_IFNAME", a),
        ("IFLA_LINKINFO", {"attrs": [
            ("IFLA_INFO_KIND", "veth"),
            ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]}),
        ]}),
    ]
    msg["header"]["type"] = RTM_NEWLINK
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK
    return msg


@dataclass
class NetNamespace:
    """A network namespace: a named one under /run/netns (`ip netns` sees it), or the one at
    `path` (`NetNamespace.current()`: the process's own)."""

    name: str
    interfaces: list[str] = field(default_factory=list)
    path: str | None = None

    @property
    def ns_path(self) -> str:
        return self.path or f"{NETNS_RUN_DIR}/{self.name}"

    @classmethod
    def create(cls, prefix: str = "morpheus") -> NetNamespace:
        """A new, uniquely named namespace with its loopback up."""
        from pyroute2 import netns as pyroute2_netns

        name = f"{prefix}-{secrets.token_hex(4)}"
        # pyroute2's own `netns.create` forks a helper process for the unshare (~12 ms);
        # unsharing this thread, binding its namespace under /run/netns and switching
        # back does the same in-process, like `ip netns add`.
        with _create_lock:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            try:
                if _libc.unshare(CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise NetnsError(f"cannot create network namespace {name}: "
                                     f"{os.strerror(err)} (needs CAP_SYS_ADMIN)")
                try:
                    pyroute2_netns.attach(name, "thread-self")
                finally:
                    _setns(own)
            except OSError as exc:
                raise NetnsError(f"cannot create network namespace {name}: {exc}") from None
            finally:
                os.close(own)
        ns = cls(name)
        try:
            ns.set_up("lo")
        except BaseException:
            ns.delete()
            raise
        return ns

    @classmethod
    def current(cls) -> NetNamespace:
        """The namespace this process started in: for a command run on the host, the
        machine's own interfaces (also from a thread that is inside another namespace)."""
        return cls("current", path=f"/proc/self/fd/{_PROCESS_NS_FD}")

    @classmethod
    def named(cls, name: str) -> NetNamespace:
        """An existing namespace under /run/netns (`ip netns add NAME`), checked to exist."""
        ns = cls(name)
        if not os.path.exists(ns.ns_path):
            raise NetnsError(f"no network namespace named {name!r} (no {ns.ns_path}; "
                             "`ip netns list` shows the named ones)")
        return ns

    def delete(self) -> None:
        """Remove the namespace (its veths go with it). Deleting twice is harmless."""
        if self.path is not None:
            raise NetnsError(f"{self.ns_path} is not a namespace this project created")
        from pyroute2 import netns as pyroute2_netns

        with suppress(FileNotFoundError):
            pyroute2_netns.remove(self.name)

    @contextmanager
    def netlink(self) -> Iterator[IPRoute]:
        """An rtnetlink socket bound to this namespace (a socket belongs to the namespace of
        the thread that opened it, so it is opened inside and used from anywhere)."""
        from pyroute2 import IPRoute

        with self.entered():
            ipr = IPRoute()
        try:
            yield ipr
        finally:
            ipr.close()

    def ip(self, *args: str) -> str:
        """Run `ip -n NAME ARGS...` and return its output: for diagnostics by hand only
        (the project configures namespaces over netlink; this needs iproute2 installed)."""
        cmd = ["ip", *(["-n", self.name] if self.path is None else []), *args]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise NetnsError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
        return result.stdout

    def add_veth(self, a: str, b: str, *, up: bool = True, mtu: int | None = None,
                 indexes: tuple[int, int] | None = None) -> None:
        """Create a veth pair with both ends in this namespace (with the given ifindexes)."""
        with self.netlink() as ipr:
            try:
                ipr.nlm_request_batch([_new_veth_message(a, b, indexes or (0, 0))])
            except _netlink_errors() as exc:
                raise _netlink_error(f"creating veth pair {a}/{b} in {self.name}",
                                     exc) from None
            self.interfaces += [a, b]
            for dev in (a, b):
                changes: dict[str, Any] = {}
                if mtu:
                    changes["mtu"] = mtu
                if up:
                    changes["state"] = "up"
                if changes:
                    self._set(ipr, dev, **changes)

    def set_up(self, dev: str, up: bool = True) -> None:
        with self.netlink() as ipr:
            self._set(ipr, dev, state="up" if up else "down")

    def add_address(self, dev: str, address: str, prefixlen: int) -> None:
        """Add an IPv4 or IPv6 address to `dev`."""
        with self.netlink() as ipr:
            try:
                ipr.addr("add", index=self._index(ipr, dev), address=address,
                         prefixlen=prefixlen)
            except _netlink_errors() as exc:
                raise _netlink_error(f"adding {address}/{prefixlen} to {dev}", exc) from None

    def links(self) -> list[str]:
        """Names of the devices in this namespace."""
        with self.netlink() as ipr:
            return [str(link.get("ifname")) for link in ipr.get_links()]

    def link_stats(self, dev: str) -> dict[str, int]:
        """The device's counters (rx_packets, tx_packets, rx_dropped, ...: IFLA_STATS64)."""
        with self.netlink() as ipr:
            (link,) = ipr.get_links(self._index(ipr, dev))
            stats = link.get("IFLA_STATS64") or link.get("IFLA_STATS")
            return {k: int(v) for k, v in dict(stats or {}).items()}

    def xdp_program_id(self, dev: str) -> int:
        """Id of the XDP program attached to `dev` (any mode), 0 if none (IFLA_XDP)."""
        with self.netlink() as ipr:
            (link,) = ipr.get_links(self._index(ipr, dev))
            xdp = link.get("IFLA_XDP")
            if xdp is None:
                return 0
            return int(xdp.get("IFLA_XDP_PROG_ID") or 0)

    def veth_peer(self, dev: str) -> str | None:
        """Name of `dev`'s veth peer when it is a veth whose peer is in this namespace."""
        with self.netlink() as ipr:
            (link,) = ipr.get_links(self._index(ipr, dev))
            kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
            if kind != "veth" or link.get("IFLA_LINK_NETNSID") is not None:
                return None
            peers = ipr.get_links(int(link.get("IFLA_LINK")))
            return str(peers[0].get("IFLA_IFNAME")) if peers else None

    def ifindex(self, dev: str) -> int:
        with self.entered():
            try:
                return socket.if_nametoindex(dev)
            except OSError:
                raise NetnsError(f"no device {dev!r} in namespace {self.name}") from None

    def _index(self, ipr: IPRoute, dev: str) -> int:
        found = ipr.link_lookup(ifname=dev)
        if not found:
            raise NetnsError(f"no device {dev!r} in namespace {self.name}")
        return int(found[0])

    def _set(self, ipr: IPRoute, dev: str, **changes: Any) -> None:
        try:
            ipr.link("set", index=self._index(ipr, dev), **changes)
        except _netlink_errors() as exc:
            raise _netlink_error(f"setting {changes} on {dev} in {self.name}", exc) from None

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block with this thread inside the namespace (for ifindex lookups, XDP
        attach and test runs with an ingress device), then switch back."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            try:
                target = os.open(self.ns_path, os.O_RDONLY)
            except FileNotFoundError:
                raise NetnsError(f"network namespace {self.name!r} does not exist "
                                 f"({self.ns_path})") from None
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

