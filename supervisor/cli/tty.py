"""Interactive containers: the caller's terminal, the container's pty, and the bytes between.

``run_tty`` is what ``mydocker run -t`` does. The container gets a fresh pty (made by
``start_container``); this module

- puts mydocker's own terminal in raw mode while the container runs (only with ``-i``
  and only when stdin is a terminal) and always restores it;
- proxies bytes asynchronously: mydocker's stdin -> pty master (with ``-i``) and pty
  master -> mydocker's stdout, on whatever event loop runs us (asyncio or trio);
- gives the pty the caller's window size and follows every SIGWINCH;
- after PID 1 exits, drains the master until EIO so no output is lost.

How mydocker's own stdin and stdout are read and written: ``stdio.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import termios
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from .. import _linux
from ..container import Container
from ..enforce import OutputCap
from ..spec import DEVNULL, PIPE
from .signals import FORWARDED_SIGNALS, SignalForwarder, drops_default_signals, say
from .stdio import Progress, Starter, StdinReader, StdoutWriter, drain, pump_out
from .verdict import end

if TYPE_CHECKING:
    from ..process import Process
    from ..usage import ReportFile

#: the pty's size when mydocker has no terminal to copy it from (CI, pipes)
DEFAULT_WINSIZE = (24, 80)


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


# -- the proxy ------------------------------------------------------------------------


def interrupt_dropped(container: Process, data: bytes) -> int | None:
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


async def _pump_in(reader: StdinReader, container: Process, forwarder: SignalForwarder) -> None:
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


async def _follow_signals(container: Process, signals: object, forwarder: SignalForwarder) -> None:
    async for sig in signals:  # type: ignore[attr-defined]
        if sig == signal.SIGWINCH:
            # Resizing the pty makes the kernel send SIGWINCH to its foreground group.
            size = terminal_size()
            if size is not None:
                with contextlib.suppress(OSError):
                    container.resize(*size)
        else:
            forwarder.forward(sig)


async def run_tty(
    start: Starter,
    *,
    interactive: bool,
    report: ReportFile | None = None,
    max_output: int | None = None,
) -> int:
    """Run a process with a pty in the foreground (``run -t``, ``exec -t``), proxying
    the caller's terminal.

    Args:
        start: starts it (``foreground.Starter``), given stdin, stdout, stderr and
            the pty's size.
        interactive: ``-i``: forward mydocker's stdin to the pty (and, if stdin is a
            terminal, put it in raw mode); otherwise it reads nothing.
        report: where to write the verdict and figures (``--report``).
        max_output: the most bytes of output to pass on (``--max-output``).

    Returns:
        Its exit status (128+N if killed by signal N).

    Raises:
        MydockerError: it could not be started (the terminal is restored before the
        error propagates).

    Cancellation: it is stopped and reaped, the terminal restored.
    """
    reader = StdinReader(0) if interactive else None
    with contextlib.ExitStack() as stack:
        writer = StdoutWriter(1)
        stack.callback(writer.close)
        signals = stack.enter_context(anyio.open_signal_receiver(*FORWARDED_SIGNALS, signal.SIGWINCH))
        if reader is not None and reader.kind == "tty":
            stack.enter_context(raw_mode(reader.fd))
        container = await start(
            PIPE if interactive else DEVNULL, PIPE, PIPE, terminal_size() or DEFAULT_WINSIZE
        )
        async with container:
            progress = Progress()
            async with anyio.create_task_group() as tg:
                forwarder = SignalForwarder(container, tg)
                tg.start_soon(_follow_signals, container, signals, forwarder)
                assert container.stdout is not None
                output: anyio.abc.ByteReceiveStream = container.stdout
                if max_output is not None and isinstance(container, Container):
                    output = OutputCap(container, max_output).wrap(output)
                tg.start_soon(pump_out, output, writer, progress, container.kill)
                if reader is not None:
                    tg.start_soon(_pump_in, reader, container, forwarder)
                status = await container.wait()
                await drain(progress)
                tg.cancel_scope.cancel()
        end(container, report)
    return status
