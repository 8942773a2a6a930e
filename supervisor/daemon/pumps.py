"""Every detached container's output and exit, watched by one task of the daemon.

A task per stream and one per container waiting for its exit (each with anyio's
task handle, its events, a stream's locks) cost the daemon ~15 kB per container;
one epoll set holding every container's stdout, stderr and pidfd, waited on as one
fd (``anyio.wait_readable`` on the epoll fd, which asyncio and trio both take),
costs a dict entry each. Reads are level-triggered and at most 64 KiB per stream per
turn, so one busy container cannot starve the others; what is read goes to
``deliver`` (the log, the attached clients), synchronously, in the order it was
written; a pidfd that turns readable (its process exited) goes to ``exited``, once.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable

import anyio

#: the most bytes read from one stream per turn of the loop
CHUNK = 65536
#: the stream name that marks a pidfd
_EXIT = "exit"


class Pumps:
    """The output streams of the daemon's containers, in one epoll set.

    ``deliver(container_id, stream_name, data)`` gets each chunk; it must not raise.
    A stream leaves the set at its end (every writer gone) or with ``forget``, which
    must come before its fd is closed.
    """

    def __init__(self, deliver: Callable[[str, str, bytes], None], exited: Callable[[str], None]) -> None:
        self._epoll = select.epoll()  # close-on-exec, as Python makes every fd
        self._by_fd: dict[int, tuple[str, str]] = {}
        #: each container's fds in the set (at most its stdout, stderr and pidfd)
        self._fds_of: dict[str, list[int]] = {}
        self._deliver = deliver
        self._exited = exited

    def watch_exit(self, container_id: str, pidfd: int) -> None:
        """Call ``exited(container_id)`` once ``pidfd`` turns readable."""
        self._register(container_id, _EXIT, pidfd)

    def add(self, container_id: str, name: str, fd: int) -> None:
        """Read ``fd`` (non-blocking, a pipe's or a pty's read end) as stream
        ``name`` of container ``container_id``."""
        self._register(container_id, name, fd)

    def open_streams(self, container_id: str) -> int:
        """How many of the container's streams have not ended yet."""
        return sum(self._by_fd[fd][1] != _EXIT for fd in self._fds_of.get(container_id, ()))

    def forget(self, container_id: str) -> None:
        """Stop watching the container's streams and pidfd (before they are closed)."""
        for fd in list(self._fds_of.get(container_id, ())):
            self._drop(fd)

    async def run(self) -> None:
        """Read whatever is ready, for ever (cancel to stop)."""
        while True:
            await anyio.wait_readable(self._epoll.fileno())
            for fd, _events in self._epoll.poll(0):
                self._read(fd)

    def close(self) -> None:
        """Close the epoll set (the streams' fds are their owners')."""
        self._epoll.close()

    def _read(self, fd: int) -> None:
        owner = self._by_fd.get(fd)
        if owner is None:
            return
        if owner[1] == _EXIT:
            self._drop(fd)
            self._exited(owner[0])
            return
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: a pty's every slave end closed; as the end of the stream
        if not data:
            self._drop(fd)
            return
        self._deliver(owner[0], owner[1], data)

    def _drop(self, fd: int) -> None:
        owner = self._by_fd.pop(fd, None)
        if owner is None:
            return
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # closed already: the kernel dropped it with its last reference
        fds = self._fds_of[owner[0]]
        fds.remove(fd)
        if not fds:
            del self._fds_of[owner[0]]

    def _register(self, container_id: str, name: str, fd: int) -> None:
        self._epoll.register(fd, select.EPOLLIN)
        self._by_fd[fd] = (container_id, name)
        self._fds_of.setdefault(container_id, []).append(fd)
