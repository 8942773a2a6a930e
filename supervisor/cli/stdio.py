"""mydocker's own stdin, stdout and stderr as async endpoints, and the pumps between
them and a container's streams (a pty master with ``-t``, pipes without).

mydocker's stdio is shared with the shell that started it, so its file status flags
(``O_NONBLOCK``) are never changed. Reading: wait until the fd is readable, then one
``read`` on the blocking fd (readiness guarantees it returns at once). Writing:
readiness does not guarantee that a whole chunk fits, so a terminal or a pipe is
re-opened through ``/proc/self/fd`` as a private non-blocking file description of
the same object. Regular files and ``/dev/null`` cannot be polled at all (epoll
refuses them): those are read and written in a worker thread, one chunk at a time.

Why pipes without ``-t`` (docker does the same): a container that held the caller's
terminal could type into the caller's shell (``TIOCSTI``), and one that held a file
the caller opened for appending could reopen it through ``/proc/self/fd`` and
truncate it. So the container only ever gets pipes, and mydocker copies.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from .._streams import FdStream

if TYPE_CHECKING:
    from ..launch import StdioArg
    from ..process import Process

#: starts the process to run in the foreground, given its stdin, stdout, stderr and
#: (with a pty) the pty's size: a container (``run``) or an exec into one (``exec``)
Starter = Callable[["StdioArg", "StdioArg", "StdioArg", "tuple[int, int] | None"], Awaitable["Process"]]

#: after PID 1 exits, stop draining its output if none came for this long: only
#: processes outside a PID namespace of their own (``--pid host``) can keep the pipe
#: or pty open after PID 1 is gone; normally end of file ends the drain at once
DRAIN_IDLE = 1.0

_CHUNK = 65536
#: at most this much per write to a pollable fd we could not re-open (a socket):
#: a pipe/socket reported writable takes at least this much without blocking
_SMALL_CHUNK = 4096


def _kind(fd: int) -> str:
    """'closed', 'tty', 'fifo', 'socket' or 'file' (cannot be polled: regular file,
    /dev/null and other character devices that are not terminals)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return "closed"
    if stat.S_ISFIFO(st.st_mode):
        return "fifo"
    if stat.S_ISSOCK(st.st_mode):
        return "socket"
    if stat.S_ISCHR(st.st_mode) and os.isatty(fd):
        return "tty"
    return "file"


def _reopen_nonblocking(fd: int, flags: int) -> int | None:
    """A new, private file description of the object behind ``fd``, non-blocking.

    Opening ``/proc/self/fd/N`` opens the terminal or pipe again instead of
    duplicating the descriptor, so ``O_NONBLOCK`` on the new one does not touch the
    one we share with the calling shell. None if that is not possible.
    """
    try:
        new = os.open(f"/proc/self/fd/{fd}", flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    a, b = os.fstat(fd), os.fstat(new)
    if (a.st_dev, a.st_ino, a.st_rdev) != (b.st_dev, b.st_ino, b.st_rdev):
        # e.g. a pty *master* as stdin: re-opening /dev/ptmx would make a new pty
        os.close(new)
        return None
    return new


class StdinReader:
    """mydocker's stdin as an async byte source; never changes the fd's flags."""

    def __init__(self, fd: int = 0) -> None:
        self.fd = fd
        self.kind = _kind(fd)

    async def read(self) -> bytes:
        """The next chunk; ``b""`` at end of input (also on hangup or a closed fd).

        Cancellation: safe while waiting for a pollable fd; a worker-thread read
        (regular file) finishes first, which is immediate.
        """
        if self.kind == "closed":
            await anyio.lowlevel.checkpoint()
            return b""
        if self.kind == "file":
            return await anyio.to_thread.run_sync(self._read_now)
        while True:
            await anyio.wait_readable(self.fd)
            try:
                return self._read_now()
            except BlockingIOError:
                # someone else set O_NONBLOCK on the shared fd, or took the data
                continue

    def _read_now(self) -> bytes:
        try:
            return os.read(self.fd, _CHUNK)
        except OSError as e:
            if e.errno in (errno.EIO, errno.EBADF, errno.ECONNRESET):
                return b""  # a hung-up terminal, a closed fd: end of input
            raise


class StdoutWriter:
    """mydocker's stdout as an async byte sink; never changes the fd's flags.

    Raises ``BrokenPipeError`` (or another ``OSError``) from ``write`` when the
    reader is gone. Writes to a closed stdout are discarded.
    """

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd
        self.kind = _kind(fd)
        self._stream: FdStream | None = None
        if self.kind in ("tty", "fifo"):
            private = _reopen_nonblocking(fd, os.O_WRONLY)
            if private is not None:
                self._stream = FdStream(private)
            else:
                self.kind = "socket"  # pollable, but written carefully (see write)

    async def write(self, data: bytes) -> None:
        """Write all of ``data``."""
        if self._stream is not None:
            try:
                await self._stream.send(data)
            except anyio.BrokenResourceError as e:
                cause = e.__cause__
                raise cause if isinstance(cause, OSError) else BrokenPipeError() from e
        elif self.kind == "file":
            await anyio.to_thread.run_sync(self._write_all, data)
        elif self.kind == "closed":
            await anyio.lowlevel.checkpoint()
        else:
            view = memoryview(data)
            while view:
                await anyio.wait_writable(self.fd)
                # a socket or pipe reported writable takes a small chunk without blocking
                try:
                    n = os.write(self.fd, view[:_SMALL_CHUNK])
                except BlockingIOError:
                    continue  # the shared fd was made non-blocking by someone else
                view = view[n:]

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def close(self) -> None:
        """Close the private file description, if one was opened."""
        if self._stream is not None:
            self._stream.close()


class Progress:
    def __init__(self) -> None:
        self.chunks = 0
        #: True while the pump waits for the container's output (not for our reader)
        self.reading = False
        self.done = anyio.Event()


async def pump_out(
    source: anyio.abc.ByteReceiveStream, writer: StdoutWriter, progress: Progress, on_broken: object
) -> None:
    """``source`` -> one of mydocker's outputs, until end of stream. When nobody reads
    mydocker's output any more (``mydocker run yes | head -1``, or the terminal hung
    up), ``on_broken()`` is called, and the pump ends."""
    fd = source.fileno() if isinstance(source, FdStream) else -1
    try:
        while True:
            progress.reading = True
            try:
                data = await source.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            progress.reading = False
            progress.chunks += 1
            if fd >= 0:
                data = _read_more(fd, data)
            try:
                await writer.write(data)
            except OSError:
                on_broken()  # type: ignore[operator]
                return
    finally:
        progress.done.set()


def _read_more(fd: int, data: bytes) -> bytes:
    """Append what else the pty has ready (it hands out ~4 KiB per read): fewer,
    larger writes to our stdout."""
    chunks = [data]
    size = len(data)
    while size < _CHUNK:
        try:
            more = os.read(fd, _CHUNK - size)
        except OSError:  # EAGAIN: nothing ready; EIO: the next receive reports the end
            break
        if not more:
            break
        chunks.append(more)
        size += len(more)
    return b"".join(chunks) if len(chunks) > 1 else data


async def drain(progress: Progress) -> None:
    """Wait for the output pump to reach EIO, unless the container's output has
    stopped for good. A slow reader of ours (a pager) is waited for, however long."""
    while not progress.done.is_set():
        before = progress.chunks
        with anyio.move_on_after(DRAIN_IDLE):
            await progress.done.wait()
        if progress.chunks == before and progress.reading:
            return
