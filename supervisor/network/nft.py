"""mydocker's firewall: two nftables tables of its own, never a rule among the host's.

Runs in the supervisor. The tables are made whole in one transaction with the first
network on the host and deleted whole with the last one; their rules never change.
What networks and containers add and remove is data in their sets and maps, one
small transaction each (through libnftables: ``_linux.nft_json``, nft's JSON):

``ip mydocker``
    ``bridges`` our bridges; ``subnets`` their subnets; ``same`` (bridge . bridge)
    for each; ``tcp_at``/``udp_at`` (host address . host port) -> (container address
    . port); ``tcp_any``/``udp_any`` host port -> (container address . port), for
    ports published on every host address.

    - ``guard`` (prerouting, raw): nothing from a bridge to or from 127.0.0.0/8. Our
      bridges have ``route_localnet`` on (so that the host's 127.0.0.1:PORT reaches a
      container); without this guard a container could reach the host's loopback
      services through it (kube-proxy's CVE-2020-8558).
    - ``prerouting`` and ``output`` (nat): a published port of a local address goes
      to its container (DNAT), from outside, from containers and from the host.
    - ``postrouting`` (nat): masquerade a container's traffic out of its network,
      the host's 127.0.0.1 into a bridge, and a container's to a published port
      (the reply must come back through the host).
    - ``forward`` (filter): between two of our bridges, only a published port; else
      drop: containers on different networks do not reach each other.

``bridge mydocker``
    ``ports`` the host sides of containers' veths; ``owned`` (veth . MAC . address).

    - ``prerouting`` (filter): a frame a container sends is IPv4 or ARP, with the
      container's own MAC and address as its source: with ``CAP_NET_RAW`` (docker's
      default set) it could otherwise forge another container's address or poison
      the bridge's MAC table.

Every element added for a container is named in its lease (``ipam.py``), so a sweep
can remove what a dead owner left.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterable
from typing import Any

from .. import _linux

TABLE = "mydocker"
_IP = {"family": "ip", "table": TABLE}
_BRIDGE = {"family": "bridge", "table": TABLE}

#: (protocol, host address, host port, container address, container port)
Forward = tuple[str, str, int, str, int]


#: both tables, whole: made in one transaction (``create``: EEXIST, and nothing done,
#: when they exist). nft's own syntax here, JSON for everything else: this text holds
#: nothing that comes from a user, and nft 1.0.6 crashes parsing the JSON of a
#: ``dnat ... map`` whose data is a concatenation.
LAYOUT = """
create table ip mydocker
create table bridge mydocker
table ip mydocker {
    set bridges { type ifname; }
    set subnets { type ipv4_addr; flags interval; }
    set same { type ifname . ifname; }
    map tcp_at { type ipv4_addr . inet_service : ipv4_addr . inet_service; }
    map udp_at { type ipv4_addr . inet_service : ipv4_addr . inet_service; }
    map tcp_any { type inet_service : ipv4_addr . inet_service; }
    map udp_any { type inet_service : ipv4_addr . inet_service; }
    chain guard {
        type filter hook prerouting priority raw; policy accept;
        iifname @bridges ip daddr 127.0.0.0/8 drop
        iifname @bridges ip saddr 127.0.0.0/8 drop
    }
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        fib daddr type local dnat to ip daddr . tcp dport map @tcp_at
        fib daddr type local dnat to tcp dport map @tcp_any
        fib daddr type local dnat to ip daddr . udp dport map @udp_at
        fib daddr type local dnat to udp dport map @udp_any
    }
    chain output {
        type nat hook output priority -100; policy accept;
        fib daddr type local dnat to ip daddr . tcp dport map @tcp_at
        fib daddr type local dnat to tcp dport map @tcp_any
        fib daddr type local dnat to ip daddr . udp dport map @udp_at
        fib daddr type local dnat to udp dport map @udp_any
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname @bridges ip saddr 127.0.0.0/8 masquerade
        oifname @bridges ct status dnat ip saddr @subnets masquerade
        ip saddr @subnets oifname != @bridges masquerade
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname @bridges oifname @bridges ct status dnat accept
        iifname @bridges oifname @bridges iifname . oifname != @same drop
    }
}
table bridge mydocker {
    set ports { type ifname; }
    set owned { type ifname . ether_addr . ipv4_addr; }
    chain prerouting {
        type filter hook prerouting priority -200; policy accept;
        iifname != @ports accept
        ether type != { ip, arp } drop
        ether type ip iifname . ether saddr . ip saddr != @owned drop
        ether type arp iifname . arp saddr ether . arp saddr ip != @owned drop
    }
}
"""


def run(commands: Iterable[dict[str, Any]]) -> str:
    """Run commands (nft's JSON objects) as one transaction.

    Raises:
        OSError: as ``_linux.nft_json``.
    """
    return _linux.nft_run(json.dumps({"nftables": list(commands)}))


def ensure_tables() -> None:
    """Make both tables, unless they exist (they are made and removed together)."""
    try:
        _linux.nft_run(LAYOUT)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise


def delete_tables() -> None:
    """Delete both tables whole, with every rule and element (either may be gone)."""
    for family in ("ip", "bridge"):
        try:
            run([{"delete": {"table": {"family": family, "name": TABLE}}}])
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise


def tables() -> list[tuple[str, str]]:
    """(family, name) of every nftables table on the host."""
    out = json.loads(run([{"list": {"tables": {}}}]) or '{"nftables": []}')
    return [(t["table"]["family"], t["table"]["name"]) for t in out["nftables"] if "table" in t]


def bridges() -> list[str]:
    """The bridges in our table (every state directory's networks); [] without it."""
    try:
        out = json.loads(run([{"list": {"set": {**_IP, "name": "bridges"}}}]))
    except OSError as e:
        if e.errno == errno.ENOENT:
            return []
        raise
    for item in out["nftables"]:
        if "set" in item:
            return [str(e) for e in item["set"].get("elem", [])]
    return []


def _element(table: dict[str, str], name: str, elems: list[object]) -> dict[str, Any]:
    return {"element": {**table, "name": name, "elem": elems}}


def _network_elements(bridge: str, subnet: str) -> list[dict[str, Any]]:
    addr, _, length = subnet.partition("/")
    return [
        _element(_IP, "bridges", [bridge]),
        _element(_IP, "subnets", [{"prefix": {"addr": addr, "len": int(length)}}]),
        _element(_IP, "same", [{"concat": [bridge, bridge]}]),
    ]


def _member_elements(veth: str, mac: str, ip: str, forwards: Iterable[Forward]) -> list[dict[str, Any]]:
    out = [
        _element(_BRIDGE, "ports", [veth]),
        _element(_BRIDGE, "owned", [{"concat": [veth, mac, ip]}]),
    ]
    for proto, host_ip, host_port, cip, cport in forwards:
        to = {"concat": [cip, cport]}
        if host_ip == "0.0.0.0":
            out.append(_element(_IP, f"{proto}_any", [[host_port, to]]))
        else:
            out.append(_element(_IP, f"{proto}_at", [[{"concat": [host_ip, host_port]}, to]]))
    return out


def add_network(bridge: str, subnet: str) -> None:
    """Our rules apply to this bridge and subnet (tables made if missing)."""
    ensure_tables()
    run({"add": e} for e in _network_elements(bridge, subnet))


def remove_network(bridge: str, subnet: str) -> None:
    """Undo ``add_network`` (what is not there is skipped)."""
    _delete_each(_network_elements(bridge, subnet))


def add_member(veth: str, mac: str, ip: str, forwards: Iterable[Forward]) -> None:
    """A container's port (its veth, MAC and address) and published ports."""
    run({"add": e} for e in _member_elements(veth, mac, ip, forwards))


def remove_member(veth: str, mac: str, ip: str, forwards: Iterable[Forward]) -> None:
    """Undo ``add_member`` (what is not there is skipped: a sweep may find a
    container that died before its elements were added)."""
    _delete_each(_member_elements(veth, mac, ip, forwards))


def _delete_each(elements: list[dict[str, Any]]) -> None:
    # One transaction first; nft 1.0.6 has no "destroy" (delete unless missing), so
    # when one element is missing, each is deleted on its own.
    try:
        run({"delete": e} for e in elements)
        return
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise
    for element in elements:
        try:
            run([{"delete": element}])
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
