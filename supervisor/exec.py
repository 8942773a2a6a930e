"""exec: another process in a running container (``docker exec``), for the library and
the CLI alike.

The exec'd process is cloned like a container's PID 1 (by the spawn helper, or in the
CLI's own process), but instead of new namespaces it joins the container's: the
cloner enters the container's PID namespace for that one clone (setns through the
PID 1's pidfd: only children land there), and the child joins the rest through the
same pidfd in one setns, the user namespace first. It is born into the container's
cgroup (CLONE_INTO_CGROUP; placed in the v1 ones before it goes on), takes the
container's confinement (capabilities, seccomp, user, no_new_privs: ``confine.py``),
has only fds 0-2, and execs. It is our child: we reap it. Cancelling an exec stops
and reaps the exec'd process (SIGTERM, the grace period, SIGKILL), never the
container; the container ending kills its execs (its PID namespace, or its cgroup).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _linux, confine, spawn
from ._streams import FdStream
from .errors import ContainerFailedError, ContainerNotRunningError, SpecError
from .init import exec_child_spec
from .launch import Gate, communicate, error_pipe, finish_start, stdio_fds
from .process import Process
from .spec import DEFAULT_GRACE, PIPE, ContainerSpec, stdin_for

if TYPE_CHECKING:
    from .cgroups import Cgroup
    from .confine import Identity
    from .launch import StdioArg


@dataclass(frozen=True)
class CompletedExec:
    """The result of ``Container.exec``, like ``subprocess.CompletedProcess``."""

    args: tuple[str, ...]
    returncode: int
    stdout: bytes | None
    stderr: bytes | None
    #: the signal that killed it, if one did
    signal: int | None = None

    def check_returncode(self) -> None:
        """Raise ``ContainerFailedError`` if the exit status is non-zero."""
        if self.returncode:
            raise ContainerFailedError(self.args, self.returncode, self.stdout, self.stderr)


class ExecProcess(Process):
    """A process exec'd into a running container; made by ``open_exec``. Use it as
    ``async with``: leaving the block stops it (SIGTERM, grace, SIGKILL) and reaps it.

    Attributes:
        args: its command.
        container_id: the id of the container it runs in.
    """

    def __init__(self, args: tuple[str, ...], container_id: str, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.args = args
        self.container_id = container_id

    async def __aenter__(self) -> ExecProcess:
        return self

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        return f"<ExecProcess in {self.container_id[:12]} pid={self.pid} {state} {list(self.args)!r}>"


@dataclass(frozen=True)
class Target:
    """What an exec needs of a running container (a ``Container``, or one the CLI
    found on disk): its spec, its PID 1 (pid and a pidfd of it), its cgroup, and who
    its processes are."""

    spec: ContainerSpec
    pid: int
    pidfd: int
    cgroup: Cgroup | None
    identity: Identity | None
    #: told of each exec started (the container then reaps it when it must)
    register: Callable[[Process], None] | None = None


def _join_flags(target: Target) -> int:
    flags = 0
    for ns in target.spec.namespaces:
        flags |= spawn.NAMESPACE_FLAGS[ns]
    if target.identity is not None and target.identity.mapping is not None:
        flags |= _linux.CLONE_NEWUSER
    return flags


def _alive(target: Target) -> None:
    import select

    if select.select([target.pidfd], [], [], 0)[0]:
        raise ContainerNotRunningError(f"container {target.spec.short_id} is not running")


async def open_exec(
    target: Target,
    command: Sequence[str],
    *,
    stdin: StdioArg = PIPE,
    stdout: StdioArg = PIPE,
    stderr: StdioArg = PIPE,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    user: str | None = None,
    tty: bool = False,
    winsize: tuple[int, int] | None = None,
    grace: float = DEFAULT_GRACE,
) -> ExecProcess:
    """Start ``command`` inside a running container and return it once it runs.

    Args:
        target: the running container (``Container.target()``, or one the CLI
            built from its records).
        command: the program and its arguments (looked up on the container's PATH).
        stdin, stdout, stderr: as ``open_container``'s.
        env: variables set over the container's environment.
        cwd: its working directory (default: the container's, else ``/``).
        user: ``NAME|UID[:GROUP|GID]`` in the container's own files (default: the
            container's user).
        tty: a pseudo-terminal of its own (in the container's devpts when it has a
            root filesystem).
        winsize: the pty's ``(rows, cols)``.
        grace: seconds between SIGTERM and SIGKILL when it is stopped or cancelled.

    Raises:
        ContainerNotRunningError: the container has exited.
        SpecError: bad arguments, an unknown user.
        CommandNotFoundError, CommandNotExecutableError, StartError: as
        ``open_container``; nothing is left behind.

    Cancellation: as ``open_container``: a child that exists is killed and reaped
    before the cancellation propagates; the container is never touched.
    """
    argv = tuple(command)
    if (
        not argv
        or isinstance(command, (str, bytes))
        or not all(isinstance(a, str) and "\0" not in a for a in argv)
    ):
        raise SpecError("the command of an exec must be a non-empty sequence of strings")
    if cwd is not None and not os.path.isabs(cwd):
        raise SpecError(f"the working directory must be an absolute path: {cwd!r}")
    _alive(target)
    identity = target.identity
    who = identity.user if identity is not None and user is None else None
    if who is None:
        from .users import resolve_user

        # the container's own /etc/passwd, through its root as its PID 1 sees it
        who = resolve_user(user or target.spec.user or "", f"/proc/{target.pid}/root")
        _alive(target)  # the pid still named the container when its files were read
    mapping = identity.mapping if identity is not None else None
    confinement = confine.confinement(target.spec, who, mapping)
    environment = confine.environment(target.spec, who)
    if tty:
        environment["TERM"] = environment.get("TERM", "xterm")
    for key, value in (env or {}).items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise SpecError(f"invalid environment variable: {key!r}")
        environment[key] = value
    stack = contextlib.ExitStack()
    child_side = contextlib.ExitStack()
    try:
        fds: dict[str, int] = {"target": target.pidfd}
        streams: dict[str, FdStream | None] = {"stdin": None, "stdout": None, "stderr": None}
        console = stdio_fds(
            tty,
            target.spec.rootfs is not None,
            stack,
            child_side,
            fds,
            streams,
            stdin,
            stdout,
            stderr,
            winsize,
        )
        err_r, errpipe = error_pipe(stack, child_side, fds)
        cgroup = target.cgroup
        if cgroup is not None:
            v2 = cgroup.open_v2()
            if v2 >= 0:
                child_side.callback(os.close, v2)
                fds["cgroup"] = v2
        gate = Gate(False, errpipe, child_side, fds)
        child = exec_child_spec(
            argv,
            environment,
            cwd or target.spec.cwd or "/",
            tty,
            _join_flags(target),
            confinement,
            placement=cgroup.join_files() if cgroup is not None else (),
        )
        parents = tuple(os.path.dirname(d) for d in cgroup.dirs) if cgroup is not None else ()
        pid, pidfd = await spawn.spawn(child, _linux.CLONE_PARENT, fds, parents)
    except BaseException:
        child_side.close()
        stack.close()
        raise
    child_side.close()
    stack.callback(os.close, pidfd)
    proc = ExecProcess(
        argv,
        target.spec.id,
        pid,
        pidfd,
        stack,
        stdin=streams["stdin"],
        stdout=streams["stdout"],
        stderr=streams["stderr"],
        grace=grace,
        tty=tty,
    )
    if target.register is not None:
        target.register(proc)
    await finish_start(
        proc,
        err_r,
        errpipe,
        gate,
        console,
        winsize,
        attach_stdin=stdin == PIPE,
        place=None,
        waits=False,
    )
    return proc


async def run_exec(
    target: Target,
    command: Sequence[str],
    *,
    input: bytes | None = None,
    stdin: StdioArg = None,
    stdout: StdioArg = PIPE,
    stderr: StdioArg = PIPE,
    check: bool = False,
    **options: Any,
) -> CompletedExec:
    """Run ``command`` in a running container to completion and collect its output
    (``open_exec``'s options; ``input`` fed to its stdin, else it reads EOF).

    Raises:
        ContainerFailedError: ``check`` and a non-zero status.
        the errors of ``open_exec``.

    Cancellation: the exec'd process is stopped and reaped (never the container).
    """
    stdin = stdin_for(input, stdin)
    async with await open_exec(target, command, stdin=stdin, stdout=stdout, stderr=stderr, **options) as proc:
        output = await communicate(proc, input)
    assert proc.returncode is not None
    result = CompletedExec(
        proc.args,
        proc.returncode,
        output.get("stdout") if stdout == PIPE else None,
        output.get("stderr") if stderr == PIPE else None,
        proc.signal,
    )
    if check:
        result.check_returncode()
    return result
