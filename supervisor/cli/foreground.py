"""What ``mydocker run`` does once the spec is built: run the container in the
foreground, forward signals to it, and return its exit status."""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

import anyio
import anyio.abc

from ..container import Container, start_container
from ..enforce import OutputCap
from ..errors import SpecError
from ..launch import StdioArg
from ..process import Process
from ..records import Registration
from ..spec import DEVNULL, PIPE, ContainerSpec
from ..usage import ReportFile
from .signals import FORWARDED_SIGNALS, forward_signals, say
from .stdio import Progress, Starter, StdinReader, StdoutWriter, drain, pump_out
from .verdict import end

#: the hidden ``MYDOCKER_BACKEND`` environment variable may name one of these (tests
#: run the CLI on both); the default is asyncio
BACKENDS = ("asyncio", "trio")


async def _run(
    start: Starter, tty: bool, interactive: bool, report: ReportFile | None, max_output: int | None
) -> int:
    if tty:
        from .tty import run_tty

        return await run_tty(start, interactive=interactive, report=report, max_output=max_output)
    # The container gets pipes, never our own fds (stdio.py says why); we copy.
    reader = StdinReader(0) if interactive else None
    with contextlib.ExitStack() as stack:
        outputs = [StdoutWriter(1), StdoutWriter(2)]
        for writer in outputs:
            stack.callback(writer.close)
        signals = stack.enter_context(anyio.open_signal_receiver(*FORWARDED_SIGNALS, signal.SIGWINCH))
        container = await start(PIPE if interactive else DEVNULL, PIPE, PIPE, None)
        async with container:
            progress = [Progress(), Progress()]
            capped = max_output is not None and isinstance(container, Container)
            cap = OutputCap(container, max_output) if capped else None  # type: ignore[arg-type]
            async with anyio.create_task_group() as tg:
                tg.start_soon(forward_signals, container, signals)
                for stream, writer, p in zip(
                    (container.stdout, container.stderr), outputs, progress, strict=True
                ):
                    assert stream is not None
                    source = cap.wrap(stream) if cap is not None else stream
                    tg.start_soon(pump_out, source, writer, p, stream.close)
                if reader is not None:
                    tg.start_soon(_pump_in, reader, container)
                status = await container.wait()
                for p in progress:
                    await drain(p)
                tg.cancel_scope.cancel()
    end(container, report)
    return status


async def _pump_in(reader: StdinReader, container: Process) -> None:
    """mydocker's stdin -> the container's, then end of file."""
    stdin = container.stdin
    assert stdin is not None
    try:
        while data := await reader.read():
            await stdin.send(data)
    except OSError as e:
        say(f"reading stdin: {e.strerror or e}; the container gets no more input")
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        return  # the container closed its stdin: like a pipe's reader going away
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await stdin.aclose()


def run_cli(
    spec: ContainerSpec,
    *,
    interactive: bool,
    grace: float,
    report: ReportFile | None = None,
    max_output: int | None = None,
) -> int:
    """Run the container in the foreground, registered while it runs (``ps`` lists
    it, ``exec`` reaches it); return the status mydocker exits with. ``report``:
    where to write the verdict and the figures when it is gone; ``max_output``: the
    most bytes of its stdout and stderr to pass on (more: it is killed).

    Raises:
        SpecError: ``MYDOCKER_BACKEND`` names no known event loop.
    """

    def start(stdin: StdioArg, stdout: StdioArg, stderr: StdioArg, winsize: tuple[int, int] | None) -> Any:
        return start_container(
            spec,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            winsize=winsize,
            grace=grace,
            register=Registration(),
        )

    return run_foreground(start, tty=spec.tty, interactive=interactive, report=report, max_output=max_output)


def run_foreground(
    start: Starter,
    *,
    tty: bool,
    interactive: bool,
    report: ReportFile | None = None,
    max_output: int | None = None,
) -> int:
    """Run what ``start`` starts in the foreground, mydocker's stdio proxied to it and
    signals forwarded; its exit status.

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
        return anyio.run(_run, start, tty, interactive, report, max_output, backend=backend)
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
