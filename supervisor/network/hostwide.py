"""What there is one of per host, whatever the state directory: mydocker's nftables
tables and the IPv4 forwarding switch. Runs in the supervisor.

    /run/mydocker/network.lock   flock'ed around both
    /run/mydocker/ip_forward     the sysctls as they were before mydocker turned
                                 forwarding on; present while it is on for mydocker

The tables are made with the first network on the host and deleted with the last
(``nft.bridges()`` is empty), and forwarding goes back to what it was then: a host
without mydocker networks carries no trace of them. /run is a tmpfs: after a reboot,
when the kernel's settings are its defaults again, the record is gone with them.
Take a state directory's lock (``ipam.Store.locked``) before this one, never after.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator

from . import nft

RUN_DIR = "/run/mydocker"
#: turning ip_forward on also sets conf/all/accept_redirects to 0 (the kernel's
#: inet_forward_change); both are put back
_SYSCTLS = ("ipv4/ip_forward", "ipv4/conf/all/accept_redirects")


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Hold the host-wide networks lock."""
    os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
    fd = os.open(
        os.path.join(RUN_DIR, "network.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(f"/proc/sys/net/{path}", encoding="ascii") as f:
        return f.read().strip()


def _write(path: str, value: str) -> None:
    with open(f"/proc/sys/net/{path}", "w", encoding="ascii") as f:
        f.write(value)


def _record() -> str:
    return os.path.join(RUN_DIR, "ip_forward")


def network_up(bridge: str, subnet: str) -> None:
    """Our rules for this bridge (tables made if they are not there), and IPv4
    forwarding on (what it was recorded first).

    Raises:
        OSError: nftables refused (or is not installed), or /proc/sys is read-only.
    """
    with locked():
        nft.add_network(bridge, subnet)
        if _read("ipv4/ip_forward") != "1":
            before = {path: _read(path) for path in _SYSCTLS}
            if not os.path.exists(_record()):
                with open(_record(), "w", encoding="ascii") as f:
                    json.dump(before, f)
            _write("ipv4/ip_forward", "1")


def network_down(bridge: str, subnet: str) -> None:
    """Undo ``network_up`` for this bridge; with the host's last network, delete the
    tables and put forwarding back as it was."""
    with locked():
        nft.remove_network(bridge, subnet)
        if nft.bridges():
            return
        nft.delete_tables()
        try:
            with open(_record(), encoding="ascii") as f:
                before = json.load(f)
        except (OSError, ValueError):
            return  # forwarding was on before us (or someone else put it back)
        for path in _SYSCTLS:  # ip_forward first: it changes accept_redirects
            if isinstance(before.get(path), str):
                _write(path, before[path])
        os.unlink(_record())
