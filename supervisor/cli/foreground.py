"""What ``mydocker run`` does once the spec is built: run the container in the
foreground, forward signals to it, and return its exit status."""

from __future__ import annotations

import os
import signal

import anyio
import anyio.abc

from ..container import start_container
from ..errors import SpecError
from ..spec import DEVNULL, ContainerSpec
from .signals import FORWARDED_SIGNALS, forward_signals, report_oom

#: the hidden ``MYDOCKER_BACKEND`` environment variable may name one of these (tests
#: run the CLI on both); the default is asyncio
BACKENDS = ("asyncio", "trio")


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


def run_cli(spec: ContainerSpec, *, interactive: bool, grace: float) -> int:
    """Run the container in the foreground; return the status mydocker exits with.

    Raises:
        SpecError: ``MYDOCKER_BACKEND`` names no known event loop.
    """
    from ..spawn import prefer_direct_clone

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
