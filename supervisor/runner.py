"""What ``mydocker run`` does once the spec is built: run the container in the
foreground, forward signals to it, and return its exit status."""

from __future__ import annotations

import signal
import sys
from typing import Any

import anyio

from .cli import FORWARDED_SIGNALS, SECOND_INTERRUPT_WINDOW
from .container import DEVNULL, Container, start_container
from .spec import ContainerSpec


def _say(message: str) -> None:
    sys.stderr.write(f"mydocker: {message}\r\n" if sys.stderr.isatty() else f"mydocker: {message}\n")
    sys.stderr.flush()


async def forward_signals(container: Container, signals: Any) -> None:
    """Pass each received signal to the container's PID 1.

    PID 1 of a namespace never sees a signal it has no handler for. So that the
    user still has a way out: a terminating signal (TERM, HUP, QUIT) that PID 1
    does not handle kills the container, and a second SIGINT within a few seconds
    does too (the first one says so on stderr).
    """
    last_interrupt: float | None = None
    async for sig in signals:
        if sig == signal.SIGWINCH:
            continue
        handled = container.handles(sig)
        container.send_signal(sig)
        if handled or container.spec.init:
            continue
        if sig == signal.SIGINT:
            now = anyio.current_time()
            if last_interrupt is not None and now - last_interrupt <= SECOND_INTERRUPT_WINDOW:
                _say("second interrupt: killing the container")
                container.kill()
            else:
                _say(
                    "the container's PID 1 ignores SIGINT; press Ctrl-C again within "
                    f"{SECOND_INTERRUPT_WINDOW:g}s to kill it (or use --init)"
                )
            last_interrupt = now
        elif sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            container.kill()


async def _run(spec: ContainerSpec, interactive: bool, grace: float) -> int:
    if spec.tty:
        from .tty import run_tty

        return await run_tty(spec, interactive=interactive, grace=grace)
    with anyio.open_signal_receiver(*FORWARDED_SIGNALS) as signals:
        container = await start_container(
            spec, stdin=0 if interactive else DEVNULL, stdout=None, stderr=None, grace=grace
        )
        async with container:
            async with anyio.create_task_group() as tg:
                tg.start_soon(forward_signals, container, signals)
                status = await container.wait()
                tg.cancel_scope.cancel()
    if container.oom_killed:
        _say("the container was killed: out of memory (memory limit reached)")
    return status


def run_cli(spec: ContainerSpec, *, interactive: bool, grace: float) -> int:
    """Run the container in the foreground; return the status mydocker exits with."""
    from .spawn import prefer_direct_clone

    prefer_direct_clone()
    return anyio.run(_run, spec, interactive, grace)
