"""One container's place on a network: made before its clone, plugged in while its
child waits, removed with it. Runs in the supervisor.

``prepare`` (before the clone, synchronous): the published ports' host sockets
(bound, never listening: they hold the port, so a second container or a host
process cannot take it, and a port in use is one ``SpecError`` before anything
starts), the address lease, and with a root filesystem the files bind-mounted at
/etc/hosts, /etc/hostname and /etc/resolv.conf. ``Endpoint.attach(pid)`` (after the
clone, while the child waits on its sync pipe): the nftables elements, the veth
pair with ``eth0`` configured in the child's namespace, the peers' hosts files.
``Endpoint.detach()`` (on the container's ExitStack, whenever it closes) undoes all
of it. Nothing here assumes who runs the container: a foreground CLI, a service,
or a daemon that keeps a detached container (and so its network) until removed.
"""

from __future__ import annotations

import errno
import os
import socket
import warnings

from .. import state
from ..errors import MydockerWarning, SpecError, StartError
from ..spec import ContainerSpec, Mount, Port
from . import hosts, links, nft
from .ipam import Lease, Network, Store, mac_of

#: the files a networked container with a root filesystem gets, by name in its directory
FILES = ("hosts", "hostname", "resolv.conf")


def _reserve(ports: tuple[Port, ...]) -> list[tuple[Port, socket.socket]]:
    """Bind a host socket for each published port (port 0: the kernel picks one).

    Raises:
        SpecError: the port is in use, or the address is not the host's.
    """
    held: list[tuple[Port, socket.socket]] = []
    try:
        for port in ports:
            kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
            sock = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
            try:
                sock.bind((port.host_ip, port.host_port))
            except OSError as e:
                sock.close()
                where = f"{port.host_ip}:{port.host_port}/{port.protocol}"
                if e.errno == errno.EADDRINUSE:
                    raise SpecError(
                        f"port {where} is already in use "
                        "(published by another container, or a host process has it)"
                    ) from None
                if e.errno == errno.EADDRNOTAVAIL:
                    raise SpecError(
                        f"cannot publish port {where}: {port.host_ip} is not an address of this host"
                    ) from None
                raise SpecError(f"cannot publish port {where}: {e.strerror}") from None
            held.append((port, sock))
    except BaseException:
        for _port, sock in held:
            sock.close()
        raise
    return held


class Endpoint:
    """A container's lease, ports and files on one network (see the module)."""

    def __init__(
        self,
        store: Store,
        net: Network,
        lease: Lease,
        lease_fd: int,
        sockets: list[socket.socket],
        mounts: tuple[Mount, ...],
    ) -> None:
        self.store = store
        self.network = net
        self.lease = lease
        #: bind mounts of the container's /etc/hosts, /etc/hostname, /etc/resolv.conf
        self.mounts = mounts
        self._lease_fd = lease_fd
        self._sockets = sockets
        self._in_nft = False

    @property
    def address(self) -> str:
        """The container's IPv4 address."""
        return self.lease.address

    @property
    def ports(self) -> tuple[Port, ...]:
        """The published ports, with the host ports the kernel chose for port 0."""
        return tuple(Port(c, h, a, p) for p, a, h, c in self.lease.forwards)

    def _forwards(self) -> list[nft.Forward]:
        return [(p, a, h, self.lease.address, c) for p, a, h, c in self.lease.forwards]

    async def attach(self, pid: int) -> None:
        """Plug the container whose PID 1 is ``pid`` (our child, waiting on its sync
        pipe: not reaped, so the pid names it for sure) into the network.

        Raises:
            StartError: a netlink or nftables step failed (``detach`` undoes the rest).
        """
        lease, net = self.lease, self.network
        try:
            # The elements first: the port is guarded from its first frame on.
            self._in_nft = True
            nft.add_member(lease.veth, lease.mac, lease.address, self._forwards())
            netns = links.netns_of(pid)
            try:
                await links.run_async(
                    links.plug,
                    netns,
                    lease.veth,
                    net.bridge,
                    lease.mac,
                    lease.address,
                    net.prefixlen,
                    net.gateway,
                )
            finally:
                os.close(netns)
        except OSError as e:
            raise StartError(f"attach to network {net.name}", e.errno or 0, str(e)) from None
        with self.store.locked():
            update_hosts(self.store, net)

    def detach(self) -> None:
        """Take the container off the network: its nftables elements, veth, ports,
        lease and the peers' hosts entries. Never raises (a failure is a warning; a
        later sweep retries); a no-op the second time."""
        if self._lease_fd < 0:
            return
        lease = self.lease
        # The veth is left to go with the container's network namespace (its last
        # process is dead by now): the kernel tears namespaces down in batches, where
        # deleting it here waited ~20 ms for an RCU grace period. A sweep deletes one
        # that is still there.
        try:
            if self._in_nft:
                nft.remove_member(lease.veth, lease.mac, lease.address, self._forwards())
        except OSError as e:
            warnings.warn(f"network {self.network.name}: {e}", MydockerWarning, stacklevel=2)
        for sock in self._sockets:
            sock.close()
        try:
            with self.store.locked():
                self.store.release(self.network.name, lease.address)
                update_hosts(self.store, self.network)
        except OSError as e:
            warnings.warn(f"network {self.network.name}: {e}", MydockerWarning, stacklevel=2)
        finally:
            os.close(self._lease_fd)
            self._lease_fd = -1


def update_hosts(store: Store, net: Network) -> None:
    """Rewrite the hosts file of every live member of ``net`` (under the lock)."""
    members = [lease for lease, alive in store.leases(net.name) if alive]
    for m in members:
        if not m.hosts:
            continue
        peers = [(p.address, p.names) for p in members if p is not m]
        try:
            _write_existing(m.hosts, hosts.hosts((m.address, m.names), peers))
        except OSError:
            pass  # its container is going: its directory with it


def _write_existing(path: str, content: str) -> None:
    # A peer's file is only ever rewritten, never made: O_CREAT could recreate it
    # in a directory being removed.
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    os.close(fd)
    hosts.write(path, content)


def sweep(store: Store, net: Network) -> list[str]:
    """Remove what dead owners left on ``net`` (under the lock): their nftables
    elements, veths and leases; returns their containers' ids."""
    gone = []
    for lease, alive in store.leases(net.name):
        if alive:
            continue
        forwards = [(p, a, h, lease.address, c) for p, a, h, c in lease.forwards]
        try:
            nft.remove_member(lease.veth, lease.mac, lease.address, forwards)
        except OSError:
            pass  # no tables (a reboot): nothing of it is left there
        links.delete(lease.veth)
        store.release(net.name, lease.address)
        gone.append(lease.container)
    if gone:
        update_hosts(store, net)
    return gone


def prepare(spec: ContainerSpec, ensure: object) -> Endpoint:
    """A container's endpoint on ``spec.network``, before its clone (see the
    module). ``spec`` is resolved (its ``state_dir`` set when it has a root
    filesystem). ``ensure(store, name)`` returns the network, made ready on this
    host (the default network made on first use).

    Raises:
        SpecError: an unknown network, a port in use, no address left.
    """
    assert spec.network is not None
    sdir = state.state_dir(spec.state_dir)
    store = Store(sdir)
    held = _reserve(spec.ports)
    try:
        cdir = state.ContainerDir.of(spec).dir if spec.rootfs is not None else ""
        names = tuple(dict.fromkeys(n for n in (spec.name, spec.effective_hostname, spec.short_id) if n))
        forwards = tuple((p.protocol, p.host_ip, sock.getsockname()[1], p.container_port) for p, sock in held)
        with store.locked():
            net: Network = ensure(store, spec.network)  # type: ignore[operator]
            for other in store.all():
                sweep(store, other)
            veth = "myd" + spec.id[:12]
            lease, fd = store.take(
                net,
                lambda address: Lease(
                    container=spec.id,
                    address=address,
                    mac=mac_of(address),
                    veth=veth,
                    names=names,
                    forwards=forwards,
                    hosts=os.path.join(cdir, "hosts") if cdir else "",
                ),
            )
            try:
                mounts = _write_files(spec, store, net, lease, cdir)
            except BaseException:
                store.release(net.name, lease.address)
                os.close(fd)
                raise
    except BaseException:
        for _port, sock in held:
            sock.close()
        raise
    return Endpoint(store, net, lease, fd, [sock for _port, sock in held], mounts)


def _write_files(
    spec: ContainerSpec, store: Store, net: Network, lease: Lease, cdir: str
) -> tuple[Mount, ...]:
    """The container's hosts, hostname and resolv.conf in its directory, and the
    mounts that put them at /etc (none without a root filesystem, or where a
    volume of the user's is mounted)."""
    if not cdir:
        return ()
    peers = [(p.address, p.names) for p, alive in store.leases(net.name) if alive and p.container != spec.id]
    contents = {
        "hosts": hosts.hosts((lease.address, lease.names), peers),
        "hostname": spec.effective_hostname + "\n",
        "resolv.conf": hosts.resolv_conf(hosts.host_resolv_conf()),
    }
    taken = {os.path.normpath(m.target) for m in spec.mounts}
    mounts = []
    for name in FILES:
        path = os.path.join(cdir, name)
        hosts.write(path, contents[name])
        if f"/etc/{name}" not in taken:
            mounts.append(Mount(target=f"/etc/{name}", source=path))
    return tuple(mounts)
