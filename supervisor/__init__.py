"""mydocker: Linux containers as async processes, for asyncio and trio (via anyio).

The API mirrors anyio's ``run_process`` / ``open_process``::

    result = await run_container(["sh", "-c", "echo hi"])
    async with await open_container(["cat"]) as c:
        await c.stdin.send(b"data")

Containers get new PID, mount, UTS, IPC and network namespaces; the module needs
Linux and root.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import (
    NOT_PERMITTED,
    CommandNotExecutableError,
    CommandNotFoundError,
    ContainerFailedError,
    ContainerNotRunningError,
    ContainerPathError,
    MydockerError,
    NotPermittedError,
    SpecError,
    StartError,
)
from .spec import DEFAULT_GRACE, DEVNULL, PIPE, STDOUT, ContainerSpec, Limits, Mount, stdin_for
from .ulimits import Ulimit
from .usage import Usage

__version__ = "0.1.0"

__all__ = [
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "CommandNotExecutableError",
    "CommandNotFoundError",
    "CompletedContainer",
    "Container",
    "ContainerFailedError",
    "ContainerNotRunningError",
    "ContainerPathError",
    "ContainerSpec",
    "Limits",
    "Mount",
    "MydockerError",
    "NotPermittedError",
    "SpecError",
    "StartError",
    "Ulimit",
    "Usage",
    "open_container",
    "run_container",
]


@dataclass(frozen=True)
class CompletedContainer:
    """The result of ``run_container``, like ``subprocess.CompletedProcess``."""

    args: tuple[str, ...]
    returncode: int
    stdout: bytes | None
    stderr: bytes | None
    #: the container's id
    id: str = ""
    #: the signal that killed PID 1, if one did
    signal: int | None = None
    #: True if the memory limit's OOM killer struck
    oom_killed: bool = False
    #: how it ended, as a judge says it: ``OK``, ``RE`` (non-zero exit), ``SG`` (a
    #: signal no limit sent), ``TO`` (CPU or wall time), ``ML`` (memory), ``OL``
    #: (``max_output``); ``usage.Verdict``
    status: str = "OK"
    #: the limit that struck (``cpu_time``, ``wall_time``, ``memory``, ``output``)
    limit: str | None = None
    #: what it used: ``cpu_time``, ``cpu_user``, ``cpu_system``, ``wall_time``,
    #: ``memory_peak``, ``oom_killed`` (``usage.Usage``)
    usage: Usage | None = None

    def check_returncode(self) -> None:
        """Raise ``ContainerFailedError`` if the exit status is non-zero."""
        if self.returncode:
            raise ContainerFailedError(self.args, self.returncode, self.stdout, self.stderr, self.oom_killed)


def _make_spec(command: Sequence[str] | ContainerSpec, options: dict[str, Any]) -> ContainerSpec:
    if isinstance(command, ContainerSpec):
        return command.evolve(**options) if options else command
    if isinstance(command, (str, bytes)):
        raise SpecError("command must be a sequence of arguments, e.g. ['sh', '-c', 'echo hi']")
    env = options.pop("env", None)
    if isinstance(env, Mapping):
        options["env"] = tuple(env.items())
    elif env is not None:
        options["env"] = tuple(env)
    return ContainerSpec(command=tuple(command), **options)


async def open_container(
    command: Sequence[str] | ContainerSpec,
    *,
    stdin: Any = PIPE,
    stdout: Any = PIPE,
    stderr: Any = PIPE,
    winsize: tuple[int, int] | None = None,
    grace: float | None = None,
    **options: Any,
) -> Container:
    """Start a container and return it as soon as its command runs.

    Args:
        command: the program and its arguments, or a whole ``ContainerSpec``.
        stdin, stdout, stderr: ``PIPE`` (an anyio byte stream on the container
            object), ``DEVNULL``, ``None`` (share this process's), an fd or a file
            object; ``stderr=STDOUT`` merges it into stdout.
        winsize: ``(rows, cols)`` of the pty when ``tty=True``.
        grace: seconds between SIGTERM and SIGKILL on stop/cancel (default 10,
            as ``docker stop``).
        options: any ``ContainerSpec`` field: ``hostname``, ``env`` (mapping or
            pairs), ``cwd``, ``tty``, ``namespaces``, ``init``, ``limits``,
            ``rootfs`` / ``image``, ``read_only``, ``mounts`` (``Mount`` objects),
            ``state_dir``, ...

    Returns:
        a ``Container``; use it as ``async with``: leaving the block stops the
        container (SIGTERM, grace period, SIGKILL), reaps it and frees everything.

    Raises:
        SpecError: invalid options (nothing was started).
        CommandNotFoundError / CommandNotExecutableError / StartError /
        NotPermittedError: the container could not start; nothing is left behind.

    Cancellation: if cancelled while starting, a child that was already created is
    killed and reaped before the cancellation propagates. Inside ``async with``, a
    cancellation (``move_on_after``, ``fail_after``, asyncio ``Task.cancel()``)
    leaves the block through ``aclose()``: SIGTERM, up to ``grace`` seconds, SIGKILL
    (at once if PID 1 has no SIGTERM handler: the kernel would drop the signal), and
    the reap, all shielded, before the cancellation propagates. A further asyncio
    ``Task.cancel()`` meanwhile (which no anyio shield holds off) cuts the grace
    period short, never the kill and the reap.

    Any task may call it, many at once; from another thread use
    ``anyio.from_thread.run(open_container, ...)``. Containers are cloned by a small
    helper process that belongs to the running event loop and ends with it.
    """
    _check_permitted()  # before any lazy import: the package may be unreadable to this user
    if grace is not None and not grace >= 0:
        raise SpecError(f"grace must be a number of seconds >= 0, not {grace!r}")
    spec = _make_spec(command, options)
    from .container import start_container

    return await start_container(
        spec,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        winsize=winsize,
        grace=DEFAULT_GRACE if grace is None else grace,
    )


def _check_permitted() -> None:
    """Whether this process may run containers at all, found out with no import (the
    rest of the package is imported lazily, and may be unreadable to this user):
    root may; another user may through a user namespace (rootless), if the kernel
    allows it and mydocker's own files are readable to it."""
    if os.geteuid() == 0:
        return
    why = rootless_refused()
    if why is not None:
        raise NotPermittedError(f"{NOT_PERMITTED}, or user namespaces: {why}")


def rootless_refused() -> str | None:
    """None when this (non-root) process can run containers, else why not."""
    here = os.path.dirname(os.path.abspath(__file__))
    if not os.access(here, os.R_OK | os.X_OK, effective_ids=True):
        return f"mydocker's files in {here} are not readable by uid {os.geteuid()}"
    for path, off, why in (
        ("/proc/sys/user/max_user_namespaces", b"0", "disabled (sysctl user.max_user_namespaces = 0)"),
        ("/proc/sys/kernel/unprivileged_userns_clone", b"0", "off (kernel.unprivileged_userns_clone = 0)"),
    ):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if os.read(fd, 32).strip() == off:
                return why
        finally:
            os.close(fd)
    return None


async def run_container(
    command: Sequence[str] | ContainerSpec,
    *,
    input: bytes | None = None,
    stdin: Any = None,
    stdout: Any = PIPE,
    stderr: Any = PIPE,
    check: bool = True,
    grace: float | None = None,
    max_output: int | None = None,
    **options: Any,
) -> CompletedContainer:
    """Run a container to completion and collect its output.

    Args:
        command: the program and its arguments, or a whole ``ContainerSpec``.
        input: bytes fed to the container's stdin (then EOF); excludes ``stdin``.
        stdin: as in ``open_container``; default: the container reads EOF
            (``DEVNULL``), like ``docker run`` without ``-i``.
        stdout, stderr: ``PIPE`` (collected into the result), ``DEVNULL``, ``None``
            (this process's), an fd or a file; ``stderr=STDOUT`` merges.
        check: raise ``ContainerFailedError`` on a non-zero exit status.
        grace: seconds between SIGTERM and SIGKILL on cancellation (default 10).
        max_output: the most bytes of stdout and stderr (together) to collect: a
            container that writes more is killed (status ``OL``), and what was
            collected is kept, up to ``max_output`` bytes.
        options: ``ContainerSpec`` fields (``hostname``, ``env``, ``cwd``,
            ``limits``, ``ulimits``, ...).

    Returns:
        a ``CompletedContainer`` (status 128+N when killed by signal N; a judge's
        ``status`` and ``usage``).

    Raises:
        ContainerFailedError: ``check`` and a non-zero status.
        SpecError, StartError and subclasses: as ``open_container``.

    Cancellation: the container is terminated (SIGTERM), killed after ``grace``
    seconds (at once if its PID 1 has no SIGTERM handler) and reaped, inside a
    shielded scope, before the cancellation propagates.
    """
    if max_output is not None and (
        isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 0
    ):
        raise SpecError(f"max_output must be a number of bytes >= 0, not {max_output!r}")
    stdin = stdin_for(input, stdin)
    async with await open_container(
        command, stdin=stdin, stdout=stdout, stderr=stderr, grace=grace, **options
    ) as container:
        from .launch import communicate  # only now: root was checked (see open_container)

        wrap = None
        if max_output is not None:
            from .enforce import OutputCap

            wrap = OutputCap(container, max_output).wrap
        output = await communicate(container, input, wrap)
    assert container.returncode is not None
    verdict = container.verdict
    assert verdict is not None
    result = CompletedContainer(
        args=container.args,
        returncode=container.returncode,
        stdout=output.get("stdout") if stdout == PIPE else None,
        stderr=output.get("stderr") if stderr == PIPE else None,
        id=container.spec.id,
        signal=container.signal,
        oom_killed=container.oom_killed,
        status=verdict.status,
        limit=verdict.limit,
        usage=container.usage,
    )
    if check:
        result.check_returncode()
    return result


def __getattr__(name: str) -> Any:
    # Container pulls in anyio: import it only when asked for.
    if name == "Container":
        from .container import Container

        return Container
    raise AttributeError(name)


if TYPE_CHECKING:
    from .container import Container
