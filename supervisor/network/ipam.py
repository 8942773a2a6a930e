"""Networks and their address leases in the state directory, under one lock.

Runs in the supervisor.

    <state dir>/networks/lock                 flock'ed around every change below
    <state dir>/networks/<name>/network.json  the network: id, bridge, subnet, gateway
    <state dir>/networks/<name>/leases/<ip>   one container's lease (JSON, ``Lease``)

A lease is owned as a container's directory is (``state.py``): by the process that
holds an exclusive ``flock`` on its file, for as long as the container lives. The
kernel drops the lock when the owner dies, however it dies, so a lease whose lock
can be taken was left by a dead owner: the sweep removes it and what it names (the
veth, the nftables elements of its address and published ports). A lease is made
(``O_EXCL``) and locked under the networks' lock, which every sweeper takes too, so
no sweeper can take it in between.

The networks' lock is never held across an await: a task of the same process
waiting for it would block the event loop that the holder needs to go on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address, IPv4Network

from ..errors import SpecError

#: where the default subnets come from: /24s of the private ranges docker uses for
#: its own networks, in its order
_POOLS = (IPv4Network("172.17.0.0/16"), IPv4Network("172.16.0.0/12"), IPv4Network("192.168.0.0/16"))

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LEASE_NAME = re.compile(r"\d{1,3}(\.\d{1,3}){3}")


@dataclass(frozen=True)
class Network:
    """A network: a Linux bridge and the subnet its containers get addresses from.

    Attributes:
        name: what ``--network`` names.
        id: 64 hex digits, as docker's.
        bridge: the bridge's interface name (``myd-NAME``).
        subnet: e.g. ``"172.18.0.0/24"``.
        gateway: the bridge's address, the containers' default route.
        created: seconds since the epoch.
    """

    name: str
    id: str
    bridge: str
    subnet: str
    gateway: str
    created: float = 0.0

    @property
    def prefixlen(self) -> int:
        """The subnet's prefix length."""
        return int(self.subnet.partition("/")[2])


@dataclass(frozen=True)
class Lease:
    """What a container holds on a network; the lease file's content.

    Attributes:
        container: the container's id.
        address: its IPv4 address; ``mac``: its MAC (docker's: from the address).
        veth: the host side of its veth pair.
        names: the names peers know it by (``--name``, hostname, short id).
        forwards: its published ports as (protocol, host address, host port,
            container port).
        hosts: its hosts file on the host (with a root filesystem), else "".
    """

    container: str
    address: str
    mac: str
    veth: str
    names: tuple[str, ...] = ()
    forwards: tuple[tuple[str, str, int, int], ...] = ()
    hosts: str = ""

    @classmethod
    def from_json(cls, text: str) -> Lease:
        """A lease from its file's content.

        Raises:
            ValueError, KeyError, TypeError: not a lease mydocker wrote.
        """
        data = json.loads(text)
        return cls(
            container=str(data["container"]),
            address=str(IPv4Address(data["address"])),
            mac=str(data["mac"]),
            veth=str(data["veth"]),
            names=tuple(map(str, data.get("names", ()))),
            forwards=tuple((str(p), str(a), int(h), int(c)) for p, a, h, c in data.get("forwards", ())),
            hosts=str(data.get("hosts", "")),
        )

    def to_json(self) -> str:
        """The lease file's content."""
        return json.dumps(asdict(self))


def mac_of(address: str) -> str:
    """docker's MAC for an address: 02:42 and the address's four bytes."""
    return "02:42:" + ":".join(f"{b:02x}" for b in IPv4Address(address).packed)


def parse_subnet(text: str) -> IPv4Network:
    """A subnet given by a user: an IPv4 network of /8 to /30.

    Raises:
        SpecError: a malformed CIDR, host bits set, or a size that holds no container.
    """
    try:
        net = IPv4Network(text, strict=True)
    except ValueError as e:
        raise SpecError(f"invalid subnet {text!r}: {e} (e.g. 172.18.0.0/24)") from None
    if not 8 <= net.prefixlen <= 30:
        raise SpecError(f"invalid subnet {text!r}: the prefix length must be from 8 to 30")
    return net


def parse_gateway(text: str, subnet: IPv4Network) -> IPv4Address:
    """The gateway a user gave: a host address of ``subnet``.

    Raises:
        SpecError: malformed, or not a host address of the subnet.
    """
    try:
        gw = IPv4Address(text)
    except ValueError:
        raise SpecError(f"invalid gateway {text!r} (an IPv4 address)") from None
    if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
        raise SpecError(f"the gateway {gw} is not a host address of the subnet {subnet}")
    return gw


def free_subnet(taken: list[IPv4Network]) -> IPv4Network:
    """The first /24 of docker's private pools that overlaps nothing in ``taken``
    (the host's routes and addresses, and the other networks).

    Raises:
        SpecError: every one overlaps something.
    """
    for pool in _POOLS:
        for candidate in pool.subnets(new_prefix=24):
            if not any(candidate.overlaps(t) for t in taken):
                return candidate
    raise SpecError("no free private /24 is left for a network: give one with --subnet")


class Store:
    """The networks of one state directory."""

    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, "networks")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the networks' lock (blocking; never across an await)."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fd = os.open(
            os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _path(self, name: str, *more: str) -> str:
        return os.path.join(self.dir, name, *more)

    def get(self, name: str) -> Network | None:
        """The network called ``name``, or None."""
        try:
            with open(self._path(name, "network.json"), encoding="utf-8") as f:
                data = json.load(f)
            return Network(**{k: data[k] for k in Network.__dataclass_fields__ if k in data})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise SpecError(f"network {name}: its record in {self.dir} is unreadable: {e}") from None

    def all(self) -> list[Network]:
        """Every network, by name."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if os.path.isdir(self._path(name)) and not os.path.islink(self._path(name)):
                net = self.get(name)
                if net is not None:
                    out.append(net)
        return out

    def add(self, net: Network) -> None:
        """Record a new network (under the lock)."""
        path = self._path(net.name)
        os.makedirs(os.path.join(path, "leases"), mode=0o700)
        tmp = os.path.join(path, ".network.json")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(net), f, indent=1)
        os.rename(tmp, os.path.join(path, "network.json"))

    def drop(self, name: str) -> None:
        """Forget a network (under the lock, its leases gone)."""
        from .._fs import remove_tree

        fd = os.open(self.dir, _DIR_FLAGS)
        try:
            remove_tree(fd, name)
        finally:
            os.close(fd)

    def leases(self, name: str) -> list[tuple[Lease, bool]]:
        """Every lease of a network: (lease, whether its owner lives). Unreadable
        lease files are left out."""
        out = []
        ldir = self._path(name, "leases")
        try:
            entries = sorted(os.listdir(ldir))
        except FileNotFoundError:
            return []
        for entry in entries:
            if not _LEASE_NAME.fullmatch(entry):
                continue
            try:
                fd = os.open(os.path.join(ldir, entry), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    alive = False
                except OSError:
                    alive = True
                lease = Lease.from_json(os.pread(fd, 1 << 20, 0).decode())
            except (OSError, ValueError, KeyError, TypeError):
                continue
            finally:
                os.close(fd)  # our lock, if we took it, goes with it
            out.append((lease, alive))
        return out

    def take(self, net: Network, make: Callable[[str], Lease]) -> tuple[Lease, int]:
        """The lowest free address of ``net``: its lease file made with
        ``make(address)``'s content and locked; returns the lease and the fd that
        holds the lock (close it, after ``release``, to give the lease up). Call
        under the lock, after sweeping.

        Raises:
            SpecError: the subnet is full.
        """
        subnet = IPv4Network(net.subnet)
        used = {lease.address for lease, _alive in self.leases(net.name)} | {net.gateway}
        ldir = self._path(net.name, "leases")
        for host in subnet.hosts():
            address = str(host)
            if address in used:
                continue
            lease = make(address)
            fd = os.open(
                os.path.join(ldir, address),
                os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, lease.to_json().encode())
            except BaseException:
                os.close(fd)
                os.unlink(os.path.join(ldir, address))
                raise
            return lease, fd
        raise SpecError(f"network {net.name}: no address left in {net.subnet}")

    def release(self, net_name: str, address: str) -> None:
        """Remove a lease file (the owner then closes its fd)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(net_name, "leases", address))


def new_network(name: str, bridge: str, subnet: IPv4Network, gateway: IPv4Address | None) -> Network:
    """A network record (nothing made yet)."""
    gw = gateway or next(subnet.hosts())
    return Network(
        name=name,
        id=os.urandom(32).hex(),
        bridge=bridge,
        subnet=str(subnet),
        gateway=str(gw),
        created=time.time(),
    )


def overlapping(subnet: IPv4Network, taken: list[IPv4Network]) -> IPv4Network | None:
    """The first of ``taken`` that overlaps ``subnet``, or None."""
    for t in taken:
        if subnet.overlaps(t):
            return t
    return None
