"""Starting a child we will reap: its stdio, its error pipe, its sync gate, and the wait
until its exec. Shared by a container's PID 1 (container.py) and an exec (exec.py).

Every resource is registered in the caller's ``ExitStack`` the moment it is made
(the child's ends in a second one, closed right after the clone), so a failure at
any point releases exactly what was made so far; a child that exists is always
killed and reaped before the error propagates (``finish_start``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Awaitable, Callable
from typing import IO, Any

import anyio

from . import _linux, userns, wire
from ._streams import FdStream
from .errors import CommandNotExecutableError, CommandNotFoundError, SpecError, StartError
from .process import Process
from .spec import DEVNULL, PIPE, STDOUT

#: what a stdio argument may be: PIPE, DEVNULL, STDOUT (stderr only), None
#: (inherit this process's fd), an fd number, or an object with ``fileno()``
StdioArg = int | IO[Any] | None


def _child_fd(
    child_side: contextlib.ExitStack,
    ours: contextlib.ExitStack,
    arg: StdioArg,
    index: int,
    *,
    readable: bool,
    devnull: list[int],
) -> tuple[int, FdStream | None]:
    """(fd the child gets, our stream or None) for one stdio argument.

    The child's end goes on ``child_side`` (closed after the clone), our stream on
    ``ours`` (closed with the container) the moment each exists. ``devnull`` holds
    the container's one /dev/null fd once opened (read-write: /dev/null keeps no
    state worth separating, and it saves an open and a close per stream).

    Raises:
        SpecError: ``arg`` is not PIPE, DEVNULL, None, an fd or a file object.
    """
    if arg is None:
        return index, None
    if arg == PIPE:
        r, w = os.pipe2(os.O_CLOEXEC)
        child_side.callback(os.close, r if readable else w)
        stream = FdStream(w if readable else r)
        ours.callback(stream.close)
        return (r if readable else w), stream
    if arg == DEVNULL:
        if not devnull:
            devnull.append(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
            child_side.callback(os.close, devnull[0])
        return devnull[0], None
    if isinstance(arg, int) and arg >= 0:
        return arg, None
    fileno = getattr(arg, "fileno", None)
    if isinstance(arg, int) or fileno is None:
        raise SpecError(f"invalid stdio argument: {arg!r} (PIPE, DEVNULL, None, an fd or a file)")
    return fileno(), None


def _start_error(step: str, err: int, detail: str) -> StartError:
    if step == "exec":
        if err in (errno.ENOENT, errno.ENOTDIR):
            return CommandNotFoundError(detail, err, "command not found")
        if err in (errno.EACCES, errno.ENOEXEC, errno.EISDIR, errno.EPERM):
            why = "is a directory" if err == errno.EISDIR else os.strerror(err).lower()
            return CommandNotExecutableError(detail, err, f"not executable ({why})")
        if err:  # E2BIG: the arguments and environment are too large, ...
            return StartError(step, err, f"{detail}: {os.strerror(err)}")
    return StartError(step, err, detail)


async def _receive_console(
    container: Process, sock: socket.socket, winsize: tuple[int, int] | None, *, attach_stdin: bool
) -> None:
    """Take the pty master the child sends, size it, and let the child go on.

    If the child dies first (a setup step failed), there is no master: the error
    pipe then says why.
    """
    while True:
        try:
            master = wire.receive_console(sock)
            break
        except BlockingIOError:
            await anyio.wait_readable(sock)
    if master is None:
        return
    pty = FdStream(master, eof_on_eio=True)
    container._stack.callback(pty.close)
    container.stdout = pty
    container.stdin = pty if attach_stdin else None
    if winsize:
        _linux.set_winsize(master, *winsize)
    with contextlib.suppress(OSError):  # the child died meanwhile: the error pipe says why
        wire.console_ready(sock)


async def _read_errpipe(fd: int) -> bytes:
    """Everything the child writes on its error pipe until EOF (its exec), or until
    it asks for its user namespace maps (``wire.ASK_FOR_MAPS``), which it then waits
    for."""
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            await anyio.wait_readable(fd)
            continue
        if not data:
            return b"".join(chunks)
        chunks.append(data)
        if chunks[0].startswith(wire.ASK_FOR_MAPS):
            return b"".join(chunks)


def error_pipe(
    stack: contextlib.ExitStack, child_side: contextlib.ExitStack, fds: dict[str, int]
) -> tuple[int, contextlib.ExitStack]:
    """The error pipe: the child's end in ``fds``; ours is closed at the exec (EOF),
    not with the process, so that a running container holds one fd (its pidfd)."""
    err_r, err_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    errpipe = stack.enter_context(contextlib.ExitStack())
    errpipe.callback(os.close, err_r)
    child_side.callback(os.close, err_w)
    fds["errpipe"] = err_w
    return err_r, errpipe


async def finish_start(
    proc: Process,
    err_r: int,
    errpipe: contextlib.ExitStack,
    gate: Gate,
    console: socket.socket | None,
    winsize: tuple[int, int] | None,
    *,
    attach_stdin: bool,
    place: Callable[[int], Awaitable[None]] | None = None,
    waits: bool = False,
    late_maps: userns.Mapping | None = None,
) -> None:
    """After the clone: place the child (``place``: cgroups, user namespace maps,
    network),
    let it go (``waits``), take its terminal, and wait until its exec (EOF on the
    error pipe), writing the maps of a user namespace it enters late. A failure
    kills and reaps it, releases everything, and raises the typed error.

    Raises:
        CommandNotFoundError, CommandNotExecutableError, StartError: as
        ``start_container``.
    """
    try:
        if place is not None:
            await place(proc.pid)
        gate.release_first(waits)
        if console is not None:
            await _receive_console(proc, console, winsize, attach_stdin=attach_stdin)
        report = await _read_errpipe(err_r)
        if report.startswith(wire.ASK_FOR_MAPS) and late_maps is not None:  # --userns auto
            userns.write_maps(proc.pid, late_maps)
            gate.release()
            report = report[len(wire.ASK_FOR_MAPS) :] + await _read_errpipe(err_r)
        gate.close()
        errpipe.close()
    except BaseException:
        gate.close()
        with anyio.CancelScope(shield=True):
            proc.kill()
            await proc.aclose()
        raise
    if report:
        with anyio.CancelScope(shield=True):
            proc.kill()
            await proc.aclose()
        raise _start_error(*wire.decode_failure(report))


class Gate:
    """The child's sync pipe: it waits on it before its first step until the
    supervisor has placed it in its cgroups, mapped its user namespace and plugged
    it into its network, and (with ``--userns auto``) again once it has entered its
    user namespace."""

    def __init__(
        self, needed: bool, owner: contextlib.ExitStack, child_side: contextlib.ExitStack, fds: dict[str, int]
    ) -> None:
        self._w = -1
        if needed:
            r, self._w = os.pipe2(os.O_CLOEXEC)
            child_side.callback(os.close, r)
            fds["sync"] = r
            owner.callback(self.close)

    def release_first(self, waits: bool) -> None:
        """Let the child take its first step (if it waits for one)."""
        if waits:
            self.release()

    def release(self) -> None:
        if self._w >= 0:
            wire.release(self._w)

    def close(self) -> None:
        """EOF on the pipe: a child still waiting gives up."""
        if self._w >= 0:
            fd, self._w = self._w, -1
            os.close(fd)


def stdio_fds(
    tty: bool,
    console_socket: bool,
    stack: contextlib.ExitStack,
    child_side: contextlib.ExitStack,
    fds: dict[str, int],
    streams: dict[str, FdStream | None],
    stdin: StdioArg,
    stdout: StdioArg,
    stderr: StdioArg,
    winsize: tuple[int, int] | None,
) -> socket.socket | None:
    """The child's stdin, stdout and stderr (into ``fds``) and our streams of them
    (into ``streams``); with ``tty`` and ``console_socket`` (a root filesystem), the
    console socket on which the child will send the pty it opens in its own devpts."""
    if tty and console_socket:
        # The docker/runc way: the child opens its pty in the container's own devpts
        # (so `tty` names a path that exists inside) and sends the master back.
        console, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stack.callback(console.close)
        child_side.callback(theirs.close)
        console.setblocking(False)
        # stdio: placeholders until the child has its pty
        fds.update(stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=theirs.fileno())
        fds["console"] = theirs.fileno()
        return console
    if tty:
        master, slave = os.openpty()
        os.set_inheritable(master, False)
        child_side.callback(os.close, slave)
        pty = FdStream(master, eof_on_eio=True)
        stack.callback(pty.close)
        if winsize:
            _linux.set_winsize(slave, *winsize)
        fds.update(stdin=slave, stdout=slave, stderr=slave)
        streams.update(stdin=pty if stdin == PIPE else None, stdout=pty)
        return None
    null: list[int] = []  # the container's one /dev/null, once opened
    for index, (role, arg) in enumerate((("stdin", stdin), ("stdout", stdout), ("stderr", stderr))):
        if index == 2 and arg == STDOUT:
            fds[role] = fds["stdout"]
        else:
            fds[role], streams[role] = _child_fd(
                child_side, stack, arg, index, readable=index == 0, devnull=null
            )
    return None


async def communicate(
    proc: Process, input: bytes | None, wrap: Callable[[Any], Any] | None = None
) -> dict[str, bytes]:
    """Wait for ``proc`` while reading its piped stdout and stderr to their ends (each
    through ``wrap``, if given) and feeding ``input`` to its piped stdin, then EOF;
    what was read, by stream name."""
    output: dict[str, bytes] = {}
    streams = [("stdout", proc.stdout)]
    if proc.stderr is not proc.stdout:  # a tty's one stream is read once
        streams.append(("stderr", proc.stderr))
    readable = [(name, stream) for name, stream in streams if stream is not None]
    feeding = proc.stdin is not None and input is not None

    async def drain(name: str, stream: Any) -> None:
        if wrap is not None:
            stream = wrap(stream)
        output[name] = b"".join([chunk async for chunk in stream])

    async def feed(stream: Any) -> None:
        with contextlib.suppress(anyio.BrokenResourceError):
            await stream.send(input)  # a process that stopped reading: not an error
        await stream.aclose()

    if not readable and not feeding:
        # Nothing to collect or feed: no task group, whose setup and teardown cost
        # ~10 us of CPU per container (measured with DEVNULL output).
        await proc.wait()
        return output
    async with anyio.create_task_group() as tg:
        for name, stream in readable:
            tg.start_soon(drain, name, stream)
        if feeding:
            tg.start_soon(feed, proc.stdin)
        await proc.wait()
    return output
