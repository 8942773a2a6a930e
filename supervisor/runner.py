"""What ``mydocker run`` does once the spec is built: run the container in the
foreground, forward signals to it, and return its exit status."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import anyio
import anyio.abc

from .cli import FORWARDED_SIGNALS, SECOND_INTERRUPT_WINDOW
from .container import DEVNULL, Container, start_container
from .errors import SpecError
from .spec import ContainerSpec

#: the hidden ``MYDOCKER_BACKEND`` environment variable may name one of these (tests
#: run the CLI on both); the default is asyncio
BACKENDS = ("asyncio", "trio")


def say(message: str) -> None:
    """One ``mydocker: ...`` line on stderr (``\\r\\n`` in case the terminal is raw)."""
    sys.stderr.write(f"mydocker: {message}\r\n" if sys.stderr.isatty() else f"mydocker: {message}\n")
    sys.stderr.flush()


def drops_default_signals(container: Container) -> bool:
    """Whether the kernel drops signals that PID 1 leaves at their default action.

    True for the init of a PID namespace of its own; not with ``--pid host`` (an
    ordinary process), nor with ``--init`` (mydocker's init waits for every signal
    and passes it on).
    """
    return "pid" in container.spec.namespaces and not container.spec.init


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

    def __init__(self, container: Container, task_group: anyio.abc.TaskGroup) -> None:
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


async def forward_signals(container: Container, signals: Any) -> None:
    """Pass each received signal to the container's PID 1 (see ``SignalForwarder``).

    Cancellation: stops forwarding (and any pending grace-period kill).
    """
    async with anyio.create_task_group() as tg:
        await SignalForwarder(container, tg).serve(signals)


async def _run(spec: ContainerSpec, interactive: bool, grace: float) -> int:
    if spec.tty:
        from .tty import run_tty

        return await run_tty(spec, interactive=interactive, grace=grace)
    with anyio.open_signal_receiver(*FORWARDED_SIGNALS, signal.SIGWINCH) as signals:
        container = await start_container(
            spec, stdin=0 if interactive else DEVNULL, stdout=None, stderr=None, grace=grace
        )
        async with container:
            async with anyio.create_task_group() as tg:
                tg.start_soon(forward_signals, container, signals)
                status = await container.wait()
                tg.cancel_scope.cancel()
    report_oom(container)
    return status


def report_oom(container: Container) -> None:
    """Say on stderr if the memory limit's OOM killer struck inside the container."""
    if container.oom_killed:
        # PID 1 itself, or only one of its processes (PID 1 lived on and exited)
        who = "the container was" if container.signal == signal.SIGKILL else "a process in the container was"
        say(f"{who} killed: out of memory (memory limit reached)")


def run_cli(spec: ContainerSpec, *, interactive: bool, grace: float) -> int:
    """Run the container in the foreground; return the status mydocker exits with.

    Raises:
        SpecError: ``MYDOCKER_BACKEND`` names no known event loop.
    """
    from .spawn import prefer_direct_clone

    backend = os.environ.get("MYDOCKER_BACKEND") or "asyncio"
    if backend not in BACKENDS:
        raise SpecError(f"MYDOCKER_BACKEND must be one of {', '.join(BACKENDS)}, not {backend!r}")
    _open_standard_fds()
    prefer_direct_clone()
    try:
        return anyio.run(_run, spec, interactive, grace, backend=backend)
    except BaseExceptionGroup as group:
        # A task group wraps even a single error; unwrap it so the CLI reports an
        # OSError or MydockerError as its usual one line instead of a traceback.
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        raise error from error.__cause__


def _open_standard_fds() -> None:
    """Make a closed stdin/stdout/stderr ``/dev/null``, as daemons do.

    Otherwise the next fd mydocker opens (the event loop's, a pty) takes the number
    0, 1 or 2 and would be handed to the container as its stdio.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: fd itself
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
