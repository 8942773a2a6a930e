"""Bridge networks: create, list, inspect and remove them; put containers on them.

Runs in the supervisor (the CLI, a service, the daemon). A network is a Linux bridge
``myd-NAME`` with an address of its subnet (the gateway), a record and its leases in
the state directory (``ipam.py``), and data in mydocker's own nftables tables
(``nft.py``, ``hostwide.py``). A container on one (``ContainerSpec.network``) gets a
veth pair whose peer is its ``eth0`` (``links.py``), an address, published ports and
hosts files (``endpoint.py``, ``hosts.py``).

    from supervisor.network import create_network, remove_network
    net = create_network("backend")                     # a free private /24
    await run_container(["ping", "-c1", "db"], network="backend", rootfs=...)
    remove_network("backend")

Needs root and nftables (libnftables); the network named ``bridge`` is made the
first time a container asks for it, as docker's default network is there.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Network
from typing import Any

from ..errors import MydockerError, SpecError
from ..spec import NETWORK_MODES, NETWORK_NAME, ContainerSpec
from .ipam import Network

__all__ = [
    "DEFAULT_NETWORK",
    "Network",
    "NetworkInUseError",
    "create_network",
    "inspect_network",
    "list_networks",
    "remove_network",
]

#: the network made on first use, as docker's default one
DEFAULT_NETWORK = "bridge"
#: a bridge's name: this and the network's name (at most 15 bytes in all)
BRIDGE_PREFIX = "myd-"


class NetworkInUseError(MydockerError):
    """``remove_network`` of a network that running containers are on."""


def _store(state_dir: str | None) -> Any:
    from ..state import state_dir as resolve
    from .ipam import Store

    return Store(resolve(state_dir))


def _check_name(name: str) -> None:
    if name in NETWORK_MODES:
        raise SpecError(f"network name {name!r} is reserved (--network {name} needs no network)")
    if not isinstance(name, str) or not NETWORK_NAME.fullmatch(name):
        if isinstance(name, str) and NETWORK_NAME.fullmatch(name[:11]):
            raise SpecError(
                f"network name {name!r} is too long: at most 11 characters (its bridge, "
                f"{BRIDGE_PREFIX}NAME, is an interface name, at most 15)"
            )
        raise SpecError(f"invalid network name {name!r} (letters, digits, '_', '.' and '-', at most 11)")


def _need_nftables() -> None:
    from .. import _linux

    if os.geteuid() != 0:
        raise SpecError("networks need root (rootless containers have only lo, or --network host)")
    if not _linux.nft_available():
        raise SpecError("networks need nftables (libnftables.so.1 is missing: apt-get install nftables)")


def _create_locked(store: Any, name: str, subnet: str | None, gateway: str | None) -> Network:
    from . import hostwide, links
    from .ipam import free_subnet, new_network, overlapping, parse_gateway, parse_subnet

    if store.get(name) is not None:
        raise SpecError(f"network {name} exists already")
    net_subnet = parse_subnet(subnet) if subnet is not None else None
    gw = parse_gateway(gateway, net_subnet) if gateway is not None and net_subnet is not None else None
    if gateway is not None and net_subnet is None:
        raise SpecError("--gateway needs --subnet")
    bridge = BRIDGE_PREFIX + name
    if links.exists(bridge):
        raise SpecError(f"network {name}: an interface {bridge} exists already (another state directory's?)")
    taken = links.run_sync(links.routes) + [IPv4Network(n.subnet) for n in store.all()]
    if net_subnet is None:
        net_subnet = free_subnet(taken)
    else:
        clash = overlapping(net_subnet, taken)
        if clash is not None:
            raise SpecError(f"subnet {net_subnet} overlaps {clash}, which the host routes or a network has")
    net = new_network(name, bridge, net_subnet, gw)
    try:
        links.run_sync(links.create_bridge, bridge, net.gateway, net.prefixlen)
    except OSError as e:
        raise MydockerError(f"network {name}: {e}") from None
    try:
        hostwide.network_up(bridge, net.subnet)
        store.add(net)
    except BaseException:
        links.delete(bridge)
        hostwide.network_down(bridge, net.subnet)
        raise
    return net


def create_network(
    name: str, *, subnet: str | None = None, gateway: str | None = None, state_dir: str | None = None
) -> Network:
    """Create a network: its bridge (up, with the gateway's address) right away.

    Args:
        name: 1 to 11 letters, digits, ``_ . -`` (the bridge is ``myd-NAME``).
        subnet: an IPv4 CIDR; default: the first private /24 that overlaps no route
            or address of the host and no other network.
        gateway: the bridge's address in ``subnet`` (default: its first).
        state_dir: where networks are recorded (``$MYDOCKER_STATE_DIR`` ...).

    Raises:
        SpecError: a bad or taken name, a bad CIDR, a gateway outside the subnet, a
            subnet that overlaps, no nftables.
    """
    from .endpoint import sweep

    _check_name(name)
    _need_nftables()
    store = _store(state_dir)
    with store.locked():
        for other in store.all():  # what dead owners left goes first
            sweep(store, other)
        return _create_locked(store, name, subnet, gateway)


def list_networks(state_dir: str | None = None) -> list[Network]:
    """The networks of the state directory, by name."""
    return _store(state_dir).all()


def inspect_network(name: str, state_dir: str | None = None) -> dict[str, Any]:
    """A network as docker's ``network inspect`` shows it (one dict), with its
    running containers.

    Raises:
        SpecError: no such network.
    """
    from dataclasses import asdict

    store = _store(state_dir)
    net = store.get(name)
    if net is None:
        raise SpecError(f"network {name} not found")
    containers = {}
    for lease, alive in store.leases(name):
        if alive:
            containers[lease.container] = {
                "Name": lease.names[0] if lease.names else lease.container[:12],
                "IPv4Address": f"{lease.address}/{net.prefixlen}",
                "MacAddress": lease.mac,
                "Interface": lease.veth,
                "Ports": [f"{a}:{h}->{c}/{p}" for p, a, h, c in lease.forwards],
            }
    record = asdict(net)
    return {
        "Name": net.name,
        "Id": net.id,
        "Created": record["created"],
        "Driver": "bridge",
        "Bridge": net.bridge,
        "IPAM": {"Config": [{"Subnet": net.subnet, "Gateway": net.gateway}]},
        "Containers": containers,
    }


def remove_network(name: str, state_dir: str | None = None) -> None:
    """Remove a network: its bridge, its nftables elements (the tables with the
    host's last network) and its record.

    Raises:
        SpecError: no such network.
        NetworkInUseError: running containers are on it.
    """
    from . import hostwide, links
    from .endpoint import sweep

    store = _store(state_dir)
    with store.locked():
        net = store.get(name)
        if net is None:
            raise SpecError(f"network {name} not found")
        sweep(store, net)
        live = [lease for lease, alive in store.leases(name) if alive]
        if live:
            names = ", ".join(lease.names[0] if lease.names else lease.container[:12] for lease in live)
            raise NetworkInUseError(f"network {name} is in use by {len(live)} running container(s): {names}")
        try:
            hostwide.network_down(net.bridge, net.subnet)
        except OSError:
            pass  # no nftables any more: nothing of ours is there
        links.delete(net.bridge)
        store.drop(name)


#: networks made ready on this host by this process (state dir, name)
_ready: set[tuple[str, str]] = set()


def _ensure(store: Any, name: str) -> Network:
    """The network ``name`` (the default one made on first use), its bridge and
    rules there: they are gone after a reboot, while its record stays."""
    from . import hostwide, links

    net: Network | None = store.get(name)
    if net is None:
        if name != DEFAULT_NETWORK:
            raise SpecError(f"network {name} not found (mydocker network create {name})")
        return _create_locked(store, name, None, None)
    key = (store.dir, name)
    if key in _ready and links.exists(net.bridge):
        return net
    if not links.exists(net.bridge):
        try:
            links.run_sync(links.create_bridge, net.bridge, net.gateway, net.prefixlen)
        except OSError as e:
            raise MydockerError(f"network {name}: {e}") from None
    hostwide.network_up(net.bridge, net.subnet)
    _ready.add(key)
    return net


def prepare_endpoint(spec: ContainerSpec) -> Any:
    """The ``endpoint.Endpoint`` of a container on a network (before its clone).

    Raises:
        SpecError: no nftables, an unknown network, a port in use.
    """
    from .endpoint import prepare

    _need_nftables()
    return prepare(spec, _ensure)
