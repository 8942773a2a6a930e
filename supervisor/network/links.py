"""Interfaces, addresses and routes, through netlink (pyroute2), in the supervisor.

pyroute2's ``AsyncIPRoute`` runs on asyncio: on an asyncio event loop it is awaited
there; elsewhere (trio, or no event loop at all: the CLI's ``network`` commands) the
same coroutine runs on a private asyncio loop, in a worker thread when the caller
has an event loop of its own (``run_async``, ``run_sync``).

A container's side is configured from the supervisor: a netlink socket is made in
the container's network namespace (``socket_in``: a setns of this one thread and
straight back, which the network namespace, unlike the mount namespace, allows in a
multi-threaded process) while the child waits on its sync pipe. The child does
nothing for its network: its synchronous stage does not grow.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import sys
import threading
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Network
from typing import Any, TypeVar

from .. import _linux

T = TypeVar("T")

#: <linux/netlink.h>
NETLINK_ROUTE = 0
#: eth0's interface index in a container's namespace (made with lo, index 1)
_ETH0 = 2
#: written in a container's namespace: IPv6 off (eth0's too: "all" reaches every
#: interface there is)
_NO_IPV6 = (("ipv6/conf/all/disable_ipv6", b"1"), ("ipv6/conf/default/disable_ipv6", b"1"))


def _ipr(fileno: int | None = None) -> Any:
    from pyroute2 import AsyncIPRoute

    # groups=0: no multicast subscription (nobody reads the events)
    return AsyncIPRoute(fileno=fileno, groups=0)


async def run_async(fn: Callable[..., Awaitable[T]], *args: object) -> T:
    """Await ``fn(*args)`` (a coroutine using pyroute2) from any anyio backend."""
    import anyio
    import sniffio

    if sniffio.current_async_library() == "asyncio":
        return await fn(*args)
    return await anyio.to_thread.run_sync(lambda: asyncio.run(fn(*args)))  # type: ignore[arg-type]


def run_sync(fn: Callable[..., Awaitable[T]], *args: object) -> T:
    """Run ``fn(*args)`` to its end from synchronous code (the CLI, the library's
    ``create_network``), also when this thread runs an event loop: then in a
    short-lived thread of its own."""
    import sniffio

    try:
        asyncio.get_running_loop()
        in_loop = True
    except RuntimeError:
        try:
            sniffio.current_async_library()
            in_loop = True
        except sniffio.AsyncLibraryNotFoundError:
            in_loop = False
    if in_loop:
        return _in_thread(fn, *args)
    return asyncio.run(fn(*args))  # type: ignore[arg-type]


def _in_thread(fn: Callable[..., Awaitable[T]], *args: object) -> T:
    result: list[Any] = []

    def target() -> None:
        try:
            result.append((True, asyncio.run(fn(*args))))  # type: ignore[arg-type]
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            result.append((False, e))

    thread = threading.Thread(target=target, name="mydocker netlink")
    thread.start()
    thread.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value


def exists(name: str) -> bool:
    """Whether the host has an interface of this name."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def netns_of(pid: int) -> int:
    """An fd of the network namespace of process ``pid`` (our child, not reaped:
    its pid names it for sure)."""
    return os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def socket_in(netns: int, sysctls: tuple[tuple[str, bytes], ...] = ()) -> socket.socket:
    """A netlink (rtnetlink) socket in the network namespace ``netns``; the
    ``sysctls`` (paths below /proc/sys/net) written in that namespace on the way.

    This thread joins the namespace for the few calls and comes straight back; a
    thread that could not come back must not go on in a container's namespace
    (nor let the process): it ends the process.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _linux.setns(netns, _linux.CLONE_NEWNET)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
            for path, value in sysctls:
                try:
                    fd = os.open(f"/proc/sys/net/{path}", os.O_WRONLY | os.O_CLOEXEC)
                except FileNotFoundError:  # e.g. no IPv6 in this kernel
                    continue
                try:
                    os.write(fd, value)
                finally:
                    os.close(fd)
        finally:
            try:
                _linux.setns(home, _linux.CLONE_NEWNET)
            except OSError as e:
                sys.stderr.write(f"mydocker: cannot return to the host's network namespace: {e}\n")
                os._exit(70)
    finally:
        os.close(home)
    return sock


async def _index(ipr: Any, name: str) -> int:
    found = await ipr.link_lookup(ifname=name)
    if not found:
        raise OSError(errno.ENODEV, f"no interface {name}")
    return int(found[0])


async def create_bridge(name: str, gateway: str, prefixlen: int) -> None:
    """A bridge ``name`` with the gateway's address, up; ``route_localnet`` on it
    (``nft.py`` says why, and what guards it). Removed again if a step fails.

    Raises:
        OSError: EEXIST when an interface has that name already; another errno from
            the kernel.
    """
    from pyroute2.netlink.exceptions import NetlinkError

    async with _ipr() as ipr:
        try:
            await ipr.link("add", ifname=name, kind="bridge")
        except NetlinkError as e:
            raise OSError(e.code, f"cannot create bridge {name}: {os.strerror(e.code)}") from None
        try:
            index = await _index(ipr, name)
            await ipr.addr("add", index=index, address=gateway, prefixlen=prefixlen)
            _write_sysctl(f"ipv4/conf/{name}/route_localnet", b"1")
            await ipr.link("set", index=index, state="up")
        except BaseException:
            delete(name)
            raise


def _write_sysctl(path: str, value: bytes) -> None:
    fd = os.open(f"/proc/sys/net/{path}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value)
    finally:
        os.close(fd)


#: <linux/rtnetlink.h> RTM_DELLINK; <linux/netlink.h> NLM_F_REQUEST | NLM_F_ACK, NLMSG_ERROR
_RTM_DELLINK, _REQUEST_ACK, _NLMSG_ERROR = 17, 0x1 | 0x4, 2


def delete(name: str) -> bool:
    """Delete interface ``name`` (a veth: both ends; a bridge) now, synchronously
    (sweeps and ``network rm`` are synchronous); False when there was none.

    The request is pyroute2's ``ifinfmsg``, sent on a plain socket: one message
    and its acknowledgement, without an event loop.
    """
    try:
        index = socket.if_nametoindex(name)
    except OSError:
        return False
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg()
    msg["index"] = index
    msg["header"]["type"] = _RTM_DELLINK
    msg["header"]["flags"] = _REQUEST_ACK
    msg["header"]["sequence_number"] = 1
    msg.encode()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as sock:
        sock.send(msg.data)
        reply = sock.recv(4096)
    kind = struct.unpack_from("=H", reply, 4)[0]
    code = -struct.unpack_from("=i", reply, 16)[0] if kind == _NLMSG_ERROR else 0
    if code in (errno.ENODEV, errno.ENOENT):
        return False
    if code:
        raise OSError(code, f"cannot delete interface {name}: {os.strerror(code)}")
    return True


async def plug(
    netns: int, veth: str, bridge: str, mac: str, address: str, prefixlen: int, gateway: str
) -> None:
    """A veth pair: ``veth`` on the host, a port of ``bridge``; its peer ``eth0`` in
    the namespace ``netns`` with ``mac`` and ``address``, up, and a default route
    via ``gateway``. IPv6 is off in that namespace (mydocker's networks are IPv4,
    and the bridge takes no IPv6 from a container).

    Raises:
        OSError: a step failed (the caller deletes ``veth``).
    """
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        master = socket.if_nametoindex(bridge)
        async with _ipr() as ipr:
            # eth0 gets index 2 in its fresh namespace (lo has 1): no lookup after
            await ipr.link(
                "add",
                ifname=veth,
                kind="veth",
                peer={"ifname": "eth0", "index": _ETH0, "net_ns_fd": netns, "address": mac},
                master=master,
                state="up",
            )
        sock = socket_in(netns, _NO_IPV6)
        async with _ipr(sock.detach()) as inside:
            await inside.addr("add", index=_ETH0, address=address, prefixlen=prefixlen)
            await inside.link("set", index=_ETH0, state="up")
            await inside.route("add", dst="0.0.0.0/0", gateway=gateway)
    except NetlinkError as e:
        raise OSError(e.code, f"cannot plug {veth} into {bridge}: {os.strerror(e.code)}") from None


async def routes() -> list[IPv4Network]:
    """Every IPv4 destination the host routes (all tables; the default route
    left out: it overlaps everything), and every address it has."""
    out: list[IPv4Network] = []
    async with _ipr() as ipr:
        async for msg in await ipr.route("dump", family=socket.AF_INET):
            if msg["dst_len"] == 0:
                continue
            dst = msg.get("dst")
            if dst:
                out.append(IPv4Network(f"{dst}/{msg['dst_len']}", strict=False))
        async for msg in await ipr.addr("dump", family=socket.AF_INET):
            out.append(IPv4Network(f"{msg.get('address')}/{msg['prefixlen']}", strict=False))
    return out
