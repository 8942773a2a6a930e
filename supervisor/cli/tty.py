"""Interactive containers: the caller's terminal, the container's pty, and the bytes between.

``run_tty`` is what ``mydocker run -t`` does. The container gets a fresh pty (made by
``start_container``); this module

- puts mydocker's own terminal in raw mode while the container runs (only with ``-i``
  and only when stdin is a terminal) and always restores it;
- proxies bytes asynchronously: mydocker's stdin -> pty master (with ``-i``) and pty
  master -> mydocker's stdout, on whatever event loop runs us (asyncio or trio);
- gives the pty the caller's window size and follows every SIGWINCH;
- after PID 1 exits, drains the master until EIO so no output is lost.

mydocker's stdin/stdout are shared with the shell that started it, so their file
status flags (``O_NONBLOCK``) are never changed. Reading: wait until the fd is
readable, then one ``read`` on the blocking fd (readiness guarantees it returns at
once). Writing: readiness does not guarantee that a whole chunk fits, so a terminal or
a pipe is re-opened through ``/proc/self/fd`` as a private non-blocking file
description of the same object. Regular files and ``/dev/null`` cannot be polled at
all (epoll refuses them): those are read and written in a worker thread, one chunk at
a time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import termios
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import anyio

from .. import _linux
from .._streams import FdStream
from ..container import start_container
from ..spec import DEVNULL, PIPE, ContainerSpec
from .signals import FORWARDED_SIGNALS, SignalForwarder, drops_default_signals, report_oom, say

if TYPE_CHECKING:
    from ..container import Container

#: the pty's size when mydocker has no terminal to copy it from (CI, pipes)
DEFAULT_WINSIZE = (24, 80)

#: after PID 1 exits, stop draining the pty if no output came for this long: only
#: processes outside a PID namespace of their own (``--pid host``) can keep the pty
#: open after PID 1 is gone; normally EIO ends the drain at once
DRAIN_IDLE = 1.0

_CHUNK = 65536
#: at most this much per write to a pollable fd we could not re-open (a socket):
#: a pipe/socket reported writable takes at least this much without blocking
_SMALL_CHUNK = 4096


# -- the caller's terminal ---------------------------------------------------------


def _raw_attrs(attrs: list[Any]) -> list[Any]:
    """cfmakeraw(3) on a ``termios.tcgetattr`` list (a copy)."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    iflag &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
    )
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag &= ~(termios.CSIZE | termios.PARENB)
    cflag |= termios.CS8
    cc = list(cc)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[bool]:
    """Put the terminal on ``fd`` in raw mode for the ``with`` block.

    Yields True if it did, False when ``fd`` is not a terminal (nothing is changed
    then, and no termios call can fail). The saved attributes are restored however
    the block ends: normally, by an exception, or by cancellation. (A signal that
    would kill mydocker outright is not a way out: the signals mydocker forwards are
    caught for the whole life of the container.) Restoring uses ``TCSANOW``: waiting
    for output to drain could hang on a terminal that is gone.
    """
    try:
        saved = termios.tcgetattr(fd)
    except (termios.error, OSError):
        yield False
        return
    termios.tcsetattr(fd, termios.TCSANOW, _raw_attrs(saved))
    try:
        yield True
    finally:
        with contextlib.suppress(termios.error, OSError):  # the terminal may be gone (hangup)
            termios.tcsetattr(fd, termios.TCSANOW, saved)


def terminal_size(fds: tuple[int, ...] = (0, 1, 2)) -> tuple[int, int] | None:
    """(rows, cols) of the first of ``fds`` that is a terminal with a size, or None."""
    for fd in fds:
        size = _linux.get_winsize(fd)
        if size is not None and size != (0, 0):
            return size
    return None


# -- mydocker's stdin and stdout as async endpoints ---------------------------------


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


# -- the proxy ------------------------------------------------------------------------


def interrupt_dropped(container: Container, data: bytes) -> int | None:
    """The signal a typed control character will raise that the kernel then drops.

    With ``-t``, Ctrl-C and Ctrl-\\ are bytes: the container's line discipline turns
    them into SIGINT/SIGQUIT for the pty's foreground process group. When that group
    is PID 1's and PID 1 has no handler (``mydocker run -ti sleep 100``), the kernel
    discards the signal, exactly as it would discard mydocker's forwarded one. Return
    that signal so the caller can apply the same way out as for a forwarded one.
    A signal PID 1 catches or ignores on purpose is not "dropped".
    """
    if not drops_default_signals(container):
        return None
    master = container.stdout.fileno() if container.stdout is not None else -1
    try:
        attrs = termios.tcgetattr(master)  # on a pty master: the slave's settings
        if not attrs[3] & termios.ISIG:
            return None
        cc = attrs[6]
        found = None
        for sig, index in ((signal.SIGINT, termios.VINTR), (signal.SIGQUIT, termios.VQUIT)):
            char = cc[index]
            if isinstance(char, bytes) and char != b"\0" and char in data:
                found = sig
                break
        if found is None or os.tcgetpgrp(master) != container.pid:
            return None
    except (termios.error, OSError):
        return None
    return found if _default_disposition(container.pid, found) else None


def _default_disposition(pid: int, sig: int) -> bool:
    """Whether ``sig`` is neither caught nor ignored by process ``pid``.

    Only then did the kernel drop a signal that would have had its usual effect:
    an interactive shell that ignores SIGQUIT must not die from a typed Ctrl-\\.
    """
    bit = 1 << (sig - 1)
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith((b"SigCgt:", b"SigIgn:")) and int(line.split()[1], 16) & bit:
                    return False
    except OSError:
        return False
    return True


async def _pump_in(reader: StdinReader, container: Container, forwarder: SignalForwarder) -> None:
    """mydocker's stdin -> pty master, until end of input or the container is gone."""
    master = container.stdin
    assert master is not None
    last = b"\n"
    while True:
        try:
            data = await reader.read()
        except OSError as e:
            say(f"reading stdin: {e.strerror or e}; the container gets no more input")
            data = b""
        if not data:
            if reader.kind != "tty":
                # End of piped input: type what a user would, EOF (Ctrl-D); a partial
                # line needs one Ctrl-D to flush it and one more to be EOF.
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await master.send(b"\x04" if last == b"\n" else b"\x04\x04")
            return
        last = data[-1:]
        sig = interrupt_dropped(container, data)
        try:
            await master.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
        if sig is not None:
            forwarder.dropped(sig)


class _Progress:
    def __init__(self) -> None:
        self.chunks = 0
        #: True while the pump waits for the container's output (not for our reader)
        self.reading = False
        self.done = anyio.Event()


async def _pump_out(container: Container, writer: StdoutWriter, progress: _Progress) -> None:
    """pty master -> mydocker's stdout, until EIO (every slave end closed)."""
    master = container.stdout
    assert master is not None
    try:
        while True:
            progress.reading = True
            try:
                data = await master.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            progress.reading = False
            progress.chunks += 1
            data = _read_more(master.fileno(), data)
            try:
                await writer.write(data)
            except OSError:
                # Nobody reads our output any more (`mydocker run -t yes | head -1`,
                # or the terminal hung up): end the container, as a pipeline would.
                container.kill()
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


async def _drain(progress: _Progress) -> None:
    """Wait for the output pump to reach EIO, unless the container's output has
    stopped for good. A slow reader of ours (a pager) is waited for, however long."""
    while not progress.done.is_set():
        before = progress.chunks
        with anyio.move_on_after(DRAIN_IDLE):
            await progress.done.wait()
        if progress.chunks == before and progress.reading:
            return


async def _follow_signals(container: Container, signals: object, forwarder: SignalForwarder) -> None:
    async for sig in signals:  # type: ignore[attr-defined]
        if sig == signal.SIGWINCH:
            # Resizing the pty makes the kernel send SIGWINCH to its foreground group.
            size = terminal_size()
            if size is not None:
                with contextlib.suppress(OSError):
                    container.resize(*size)
        else:
            forwarder.forward(sig)


async def run_tty(spec: ContainerSpec, *, interactive: bool, grace: float) -> int:
    """Run a ``tty=True`` container in the foreground, proxying the caller's terminal.

    Args:
        spec: the container (``spec.tty`` must be set).
        interactive: ``-i``: forward mydocker's stdin to the pty (and, if stdin is a
            terminal, put it in raw mode); otherwise the container reads nothing.
        grace: seconds between SIGTERM and SIGKILL when the container is stopped.

    Returns:
        The container's exit status (128+N if killed by signal N).

    Raises:
        MydockerError: the container could not be started (the terminal is restored
        before the error propagates).

    Cancellation: the container is stopped and reaped, the terminal restored.
    """
    reader = StdinReader(0) if interactive else None
    with contextlib.ExitStack() as stack:
        writer = StdoutWriter(1)
        stack.callback(writer.close)
        signals = stack.enter_context(anyio.open_signal_receiver(*FORWARDED_SIGNALS, signal.SIGWINCH))
        if reader is not None and reader.kind == "tty":
            stack.enter_context(raw_mode(reader.fd))
        container = await start_container(
            spec,
            stdin=PIPE if interactive else DEVNULL,
            winsize=terminal_size() or DEFAULT_WINSIZE,
            grace=grace,
        )
        async with container:
            progress = _Progress()
            async with anyio.create_task_group() as tg:
                forwarder = SignalForwarder(container, tg)
                tg.start_soon(_follow_signals, container, signals, forwarder)
                tg.start_soon(_pump_out, container, writer, progress)
                if reader is not None:
                    tg.start_soon(_pump_in, reader, container, forwarder)
                status = await container.wait()
                await _drain(progress)
                tg.cancel_scope.cancel()
        report_oom(container)
    return status
