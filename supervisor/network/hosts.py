"""A networked container's /etc/hosts, /etc/hostname and /etc/resolv.conf.

Runs in the supervisor. The files live in the container's directory under the state
directory and are bind-mounted over the image's (``mounts.py`` makes the mounts, as
for a volume). Names resolve among a network's members through the hosts files
rather than an embedded DNS server: no server process to own and keep alive, and
the files are rewritten, under the networks' lock, whenever a member comes or goes.

A bind-mounted file is the inode it was when mounted: a rewrite is made in place
(written from the start, then cut to length), never by renaming a new file over it.
Every name written comes from a validated spec (``spec._CONTAINER_NAME``, the
hostname rule): no container can put a line of its own into another's hosts file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

#: docker's first lines of /etc/hosts
_HEADER = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)


def hosts(own: tuple[str, Iterable[str]], peers: Iterable[tuple[str, Iterable[str]]]) -> str:
    """/etc/hosts: localhost, the container itself, then each peer: (address,
    names)."""
    lines = [_HEADER]
    for address, names in (own, *sorted(peers, key=lambda p: tuple(map(int, p[0].split("."))))):
        unique = list(dict.fromkeys(n for n in names if n))
        if unique:
            lines.append(f"{address}\t{' '.join(unique)}\n")
    return "".join(lines)


def resolv_conf(host_text: str) -> str:
    """The host's resolv.conf less its loopback resolvers (a container cannot reach
    the host's 127.0.0.53: docker drops them too). Docker then falls back to
    Google's public servers when none is left; mydocker writes none instead (a
    container's queries should not leave for a resolver nobody chose)."""
    out = []
    for line in host_text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            server = words[1].split("%")[0]
            if server.startswith("127.") or server == "::1":
                continue
        out.append(line)
    return "\n".join(out).strip("\n") + "\n"


def host_resolv_conf() -> str:
    """The host's /etc/resolv.conf ("" when it has none)."""
    try:
        with open("/etc/resolv.conf", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def write(path: str, content: str) -> None:
    """Write ``content`` into ``path`` in place (the inode stays: it may be
    bind-mounted into a container), creating it if missing; never through a
    symlink."""
    data = content.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += os.pwrite(fd, view[offset:], offset)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
