"""The CLI's side of the daemon: connect (starting it on demand), ask, read the answer.

Starting on demand: a CLI that finds no daemon takes ``daemon.start`` (flock), looks
again, and only then starts one, detached (a new session, its stdio on /dev/null
and its stderr appended to ``daemon.log``), and waits until it says it serves. Two
CLIs at once therefore start one daemon; the daemon's own lock makes sure of it
even against a ``mydocker daemon`` started by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from typing import Any

from ..errors import MydockerError
from . import protocol

#: how long the CLI waits for a daemon it started to serve
_START_TIMEOUT = 30.0


class DaemonError(MydockerError):
    """The daemon refused a request, or could not be reached or started. Carries the
    exit status the request's own error has (e.g. 127 for a command not found)."""

    def __init__(self, message: str, exit_code: int = 125, kind: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.kind = kind


def _connect(sdir: str, timeout: float | None = None) -> socket.socket:
    """A connection to the daemon's socket."""
    return protocol.socket_at(sdir, socket.socket.connect, timeout)


def _exchange(sock: socket.socket, request: dict[str, Any]) -> dict[str, Any]:
    """Send one request and read its reply.

    Raises:
        ConnectionError: the daemon went away before answering.
    """
    sock.sendall(protocol.encode({"v": protocol.VERSION, **request}))
    buffer = b""
    while b"\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("the daemon closed the connection without answering")
        buffer += chunk
        if len(buffer) > protocol.MAX_LINE:
            raise DaemonError("the daemon's answer is too long")
    try:
        return protocol.decode(buffer.partition(b"\n")[0])
    except protocol.ProtocolError as e:
        raise DaemonError(f"the daemon's answer is not understood: {e}") from None


def ping(sdir: str) -> dict[str, Any] | None:
    """The daemon's answer to a ping, or None if none answers."""
    try:
        with _connect(sdir, timeout=2.0) as sock:
            reply = _exchange(sock, {"op": "ping"})
    except OSError:
        return None
    return reply if reply.get("ok") else None


def _spawn_daemon(sdir: str) -> None:
    """Start ``mydocker daemon`` for ``sdir``, detached; return once it serves.

    Raises:
        DaemonError: it could not start (its one line).
    """
    ready_r, ready_w = os.pipe()
    log = os.open(
        protocol.path(sdir, protocol.LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
    )
    argv = [sys.executable, "-m", "supervisor.cli", "daemon", "--state-dir", sdir, "--ready-fd", str(ready_w)]
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child execs or exits at once
            try:
                os.setsid()
                if os.fork():
                    os._exit(0)  # the daemon is not our child: nobody has to reap it
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                os.dup2(log, 2)
                os.set_inheritable(ready_w, True)
                os.chdir("/")
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        os.waitpid(pid, 0)
    finally:
        os.close(ready_w)
        os.close(log)
    with os.fdopen(ready_r, "rb") as ready:
        said = ready.readline().decode(errors="replace").strip()
    if said != "ok":
        where = protocol.path(sdir, protocol.LOG)
        raise DaemonError(f"the daemon did not start: {said or f'it exited (see {where})'}")


def connect(sdir: str) -> socket.socket:
    """A connection to the daemon of ``sdir``, started if none runs.

    Raises:
        DaemonError: none could be started.
    """
    with contextlib.suppress(FileNotFoundError, ConnectionRefusedError):
        return _connect(sdir)
    os.makedirs(sdir, mode=0o711, exist_ok=True)
    start = os.open(protocol.path(sdir, protocol.START), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(start, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError, ConnectionRefusedError):
            return _connect(sdir)  # another CLI started it while we waited
        _spawn_daemon(sdir)
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                return _connect(sdir)
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise DaemonError(f"the daemon of {sdir} started but does not answer") from None
                time.sleep(0.01)
    finally:
        os.close(start)


def request(sdir: str, message: dict[str, Any], *, start: bool = True) -> dict[str, Any]:
    """Send one request to the daemon of ``sdir`` and return its (successful) reply.

    A daemon that leaves as the request arrives (idle) is replaced, and the request
    sent again: it was never read.

    Raises:
        DaemonError: the request failed (its message and exit status), or no daemon
            runs (``start=False``) or none could be started.
    """
    for attempt in range(3):
        try:
            sock = connect(sdir) if start else _connect(sdir)
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonError(f"no daemon serves {sdir}") from None
        except OSError as e:
            raise DaemonError(f"cannot reach the daemon of {sdir}: {e.strerror or e}") from None
        with sock:
            try:
                reply = _exchange(sock, message)
            except (ConnectionResetError, BrokenPipeError):
                if attempt == 2 or not start:
                    raise DaemonError("the daemon went away before answering") from None
                time.sleep(0.05)
                continue
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise DaemonError(
                str(error.get("message") or "the daemon refused the request"),
                int(error.get("exit_code") or 125),
                str(error.get("type") or ""),
            )
        return reply
    raise AssertionError("unreachable")
