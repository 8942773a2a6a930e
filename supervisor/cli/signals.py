"""Signals in the foreground: docker's sig-proxy, and ways out of a PID 1 that ignores them.

Used by ``foreground.py`` (a plain ``mydocker run``) and ``tty.py`` (``-t``), in the
CLI's process.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import anyio
import anyio.abc

from ..container import Container
from ..process import Process

#: signals mydocker passes on to the container's PID 1 (docker's sig-proxy)
FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)

#: a second SIGINT within this many seconds kills a container that ignores the first
SECOND_INTERRUPT_WINDOW = 3.0


def say(message: str) -> None:
    """One ``mydocker: ...`` line on stderr (``\\r\\n`` in case the terminal is raw)."""
    sys.stderr.write(f"mydocker: {message}\r\n" if sys.stderr.isatty() else f"mydocker: {message}\n")
    sys.stderr.flush()


def drops_default_signals(container: Process) -> bool:
    """Whether the kernel drops signals that PID 1 leaves at their default action.

    True for the init of a PID namespace of its own; not with ``--pid host`` (an
    ordinary process), nor with ``--init`` (tini waits for every signal and passes
    it on), nor for a process exec'd into a container (not its PID 1).
    """
    return isinstance(container, Container) and "pid" in container.spec.namespaces and not container.spec.init


class SignalForwarder:
    """docker's sig-proxy, plus a way out of a PID 1 that ignores signals.

    PID 1 of a namespace never sees a signal it has no handler for. So that the user
    still has a way out:

    - a terminating signal (TERM, HUP, QUIT) that PID 1 does not handle kills the
      container (so mydocker ends and the terminal is restored);
    - a SIGINT that PID 1 does not handle is dropped, but a second one within
      ``SECOND_INTERRUPT_WINDOW`` seconds kills the container (the first says so);
    - a SIGTERM that PID 1 handles but does not act on kills the container after the
      grace period, as ``docker stop`` does.

    With ``--init``, mydocker's init handles everything and passes it on to the
    command, so the rules apply to nothing but the grace period.
    """

    def __init__(self, container: Process, task_group: anyio.abc.TaskGroup) -> None:
        self.container = container
        self._tg = task_group
        self._last_interrupt: float | None = None
        self._stopping = False

    def forward(self, sig: int) -> None:
        """Send ``sig``, received by mydocker, to PID 1; apply the rules above."""
        container = self.container
        handled = not drops_default_signals(container) or container.handles(sig)
        container.send_signal(sig)
        if handled:
            if sig == signal.SIGTERM and not self._stopping:
                self._stopping = True
                self._tg.start_soon(self._kill_after_grace)
        else:
            self.dropped(sig)

    def dropped(self, sig: int) -> None:
        """React to ``sig`` having been dropped by the kernel (PID 1 has no handler).

        Also called by the tty proxy for a Ctrl-C / Ctrl-\\ typed into the container.
        """
        if sig == signal.SIGINT:
            now = anyio.current_time()
            if self._last_interrupt is not None and now - self._last_interrupt <= SECOND_INTERRUPT_WINDOW:
                say("second interrupt: killing the container")
                self.container.kill()
            else:
                say(
                    "the container's PID 1 ignores SIGINT; press Ctrl-C again within "
                    f"{SECOND_INTERRUPT_WINDOW:g}s to kill it (or use --init)"
                )
            self._last_interrupt = now
        elif sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            self.container.kill()

    async def _kill_after_grace(self) -> None:
        with anyio.move_on_after(self.container.grace):
            await self.container.wait()
            return
        if self.container.returncode is None:
            say(f"the container did not stop within {self.container.grace:g}s of SIGTERM: killing it")
            self.container.kill()

    async def serve(self, signals: Any) -> None:
        """Forward every signal from an ``anyio.open_signal_receiver`` iterator."""
        async for sig in signals:
            self.forward(sig)


async def forward_signals(container: Process, signals: Any) -> None:
    """Pass each received signal to the container's PID 1 (see ``SignalForwarder``).

    Cancellation: stops forwarding (and any pending grace-period kill).
    """
    async with anyio.create_task_group() as tg:
        await SignalForwarder(container, tg).serve(signals)


def report_oom(container: Process) -> None:
    """Say on stderr if the memory limit's OOM killer struck inside the container."""
    if isinstance(container, Container) and container.oom_killed:
        # PID 1 itself, or only one of its processes (PID 1 lived on and exited)
        who = "the container was" if container.signal == signal.SIGKILL else "a process in the container was"
        say(f"{who} killed: out of memory (memory limit reached)")
