"""An anyio byte stream over a raw file descriptor (a pipe end or a pty master).

anyio has no public stream over an arbitrary fd, so this is a small one: the fd is
made non-blocking (it is ours alone), reads and writes are retried after
``anyio.wait_readable`` / ``wait_writable``, and ``aclose`` calls ``notify_closing``
first so a task blocked on the fd wakes up with ``ClosedResourceError``.
"""

from __future__ import annotations

import errno
import os

import anyio
import anyio.abc


class FdStream(anyio.abc.ByteStream):
    """A byte stream over an fd this object owns (it closes it).

    For a pty master, EIO on read (all slave ends closed) is end of stream.
    """

    def __init__(self, fd: int, *, eof_on_eio: bool = False) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._eof_on_eio = eof_on_eio
        self._closed = False
        # made on first use: a stream only ever read needs no send lock (and a lock
        # is ~0.8 kB, which the daemon would pay twice per container for nothing)
        self._receive_guard: anyio.Lock | None = None
        self._send_guard: anyio.Lock | None = None

    def fileno(self) -> int:
        """The underlying file descriptor."""
        return self._fd

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._receive_guard is None:
            self._receive_guard = anyio.Lock()
        async with self._receive_guard:
            while True:
                if self._closed:
                    raise anyio.ClosedResourceError
                try:
                    data = os.read(self._fd, max_bytes)
                except BlockingIOError:
                    await anyio.wait_readable(self._fd)
                    continue
                except OSError as e:
                    if e.errno == errno.EIO and self._eof_on_eio:
                        raise anyio.EndOfStream from None
                    raise anyio.BrokenResourceError from e
                if not data:
                    raise anyio.EndOfStream
                return data

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        if self._send_guard is None:
            self._send_guard = anyio.Lock()
        async with self._send_guard:
            while view:
                if self._closed:
                    raise anyio.ClosedResourceError
                try:
                    n = os.write(self._fd, view)
                except BlockingIOError:
                    await anyio.wait_writable(self._fd)
                    continue
                except OSError as e:
                    raise anyio.BrokenResourceError from e
                view = view[n:]

    async def send_eof(self) -> None:
        """End the input: a pipe's reader sees EOF; on a pty, send the EOF character.

        A pty master cannot be half-closed (closing it hangs up the terminal), so the
        line discipline's EOF (Ctrl-D) is what a terminal user would type instead.
        """
        if self._eof_on_eio:
            await self.send(b"\x04")
        else:
            await self.aclose()

    async def aclose(self) -> None:
        self.close()
        await anyio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close synchronously (for cleanup paths that cannot await)."""
        if not self._closed:
            self._closed = True
            try:
                anyio.notify_closing(self._fd)
            except Exception:  # noqa: BLE001 - no event loop here: nobody can be waiting
                pass
            os.close(self._fd)
