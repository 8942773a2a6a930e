"""A process mydocker started and must reap: a container's PID 1, or an exec'd one.

``Process`` owns the pidfd and the stdio streams; it waits on the pidfd with anyio
and reaps through it (``waitid(P_PIDFD)``: no SIGCHLD, no pid reuse), signals
through it, and stops under a shield (SIGTERM, the grace period, SIGKILL, the reap)
however its caller is cancelled. ``Container`` (container.py) and ``ExecProcess``
(exec.py) are processes with more to tear down.
"""

from __future__ import annotations

import contextlib
import os
import signal
from types import TracebackType

import anyio

from . import _linux
from ._cancel import to_the_end
from ._streams import FdStream


def _exit_status(info: os.waitid_result) -> tuple[int, int | None]:
    """(docker-style status, terminating signal or None) from a waitid result."""
    if info.si_code == os.CLD_EXITED:
        return info.si_status, None
    return 128 + info.si_status, info.si_status


def catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (from /proc/PID/status).

    A namespace's PID 1 never receives a signal it has no handler for (except
    SIGKILL/SIGSTOP from an ancestor namespace): sending it is a no-op.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    except OSError:
        pass
    return True


class Process:
    """A process we started (a child of ours: we reap it).

    Attributes:
        pid: its process id, as seen from the host.
        returncode: ``None`` while it runs; then its exit status (128+N if killed by
            signal N).
        signal: the signal that killed it, or ``None``.
        stdin / stdout / stderr: anyio byte streams for ``PIPE`` (with a tty,
            ``stdin`` and ``stdout`` are the same stream over the pty master).
    """

    def __init__(
        self,
        pid: int,
        pidfd: int,
        stack: contextlib.ExitStack,
        *,
        stdin: FdStream | None,
        stdout: FdStream | None,
        stderr: FdStream | None,
        grace: float,
        tty: bool = False,
    ) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.signal: int | None = None
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.grace = grace
        self.tty = tty
        self._pidfd = pidfd
        self._stack = stack
        # fast_acquire: wait() runs several times per container (run_container, stop,
        # aclose), mostly uncontended: taking the lock need not yield to the event
        # loop each time; waiting on the pidfd yields when there is something to wait.
        self._wait_lock = anyio.Lock(fast_acquire=True)
        self._closed = False

    @property
    def pidfd(self) -> int:
        """Its pidfd, to watch in a selector of one's own (readable once it has
        exited). It stays this object's: never close it; it is closed by ``aclose``."""
        return self._pidfd

    async def wait(self) -> int:
        """Wait until it exits, reap it, and return its exit status.

        Cancelling ``wait()`` only stops waiting: the process keeps running.
        """
        if self.returncode is not None:  # reaped already: nothing to wait for
            return self.returncode
        async with self._wait_lock:
            if self.returncode is None:
                await anyio.wait_readable(self._pidfd)
                self._reap()
        assert self.returncode is not None
        return self.returncode

    def _reap(self) -> None:
        info = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | _linux.WALL)
        assert info is not None
        self.returncode, self.signal = _exit_status(info)

    def reap_if_exited(self) -> bool:
        """Reap it if it has exited, without waiting; whether it is reaped."""
        if self.returncode is None and not self._closed:
            info = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG | _linux.WALL)
            if info is not None and info.si_pid:
                self.returncode, self.signal = _exit_status(info)
        return self.returncode is not None

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` through its pidfd.

        A no-op once it has exited (the pidfd makes a PID-reuse race impossible).
        Note that a namespace's PID 1 ignores signals it has no handler for.
        """
        if self.returncode is not None or self._closed:
            return
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        """Send SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL."""
        self.send_signal(signal.SIGKILL)

    def handles(self, sig: int) -> bool:
        """Whether it has a handler for ``sig`` (a namespace's PID 1 without one never
        sees the signal)."""
        return self.returncode is None and catches(self.pid, sig)

    async def stop(self, grace: float | None = None) -> int:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; return the status.

        Runs shielded from cancellation: when it returns, the process is reaped.
        Without a SIGTERM handler (a PID 1 would not even see the signal) it is
        killed at once instead of after a pointless wait.
        """
        if self.returncode is not None:  # reaped already (the common end)
            return self.returncode
        grace = self.grace if grace is None else grace
        cancelled: BaseException | None = None
        with anyio.CancelScope(shield=True):
            if grace > 0 and self.handles(signal.SIGTERM):
                self.terminate()
                try:
                    with anyio.move_on_after(grace):
                        await self.wait()
                except anyio.get_cancelled_exc_class() as e:
                    # asyncio's own Task.cancel() (see _cancel.py): the rest of the
                    # grace period is skipped, the kill and the reap are not
                    cancelled = e
            if self.returncode is None:
                self.kill()
            status, later = await to_the_end(self.wait)
        cancelled = cancelled or later
        if cancelled is not None:
            raise cancelled
        return status

    async def aclose(self) -> None:
        """Stop it if it still runs (see ``stop``), reap it, and release its streams
        and pidfd (and what a subclass tears down: ``_finish``). Safe to call more
        than once; shielded."""
        cancelled: BaseException | None = None
        with anyio.CancelScope(shield=True):
            if self._closed:
                return
            try:
                _, cancelled = await to_the_end(self.stop)
                _, later = await to_the_end(self._finish)
                cancelled = cancelled or later
            finally:
                self._closed = True
                self._stack.close()
        if cancelled is not None:
            raise cancelled

    async def _finish(self) -> None:
        """What goes once the process is reaped, before the streams and the pidfd."""

    async def __aenter__(self) -> Process:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def resize(self, rows: int, cols: int) -> None:
        """Set the window size of its pty (no-op without a tty)."""
        if self.tty and self.stdout is not None and not self._closed:
            _linux.set_winsize(self.stdout.fileno(), rows, cols)
