"""The async Container: owns the pidfd, the stdio streams, the cgroup and the teardown.

``start_container`` prepares the host side (pipes, pty, error pipe, cgroup), asks the
spawn helper for a clone, waits on the error pipe until the command has really been
exec'd (or reports which init step failed), and returns a ``Container``. Every
resource is registered in one ``ExitStack`` the moment it is made, so a failure at
any point releases exactly what was made so far, and a child that exists is always
killed and reaped before the error propagates.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import time
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import IO, Any

import anyio

from . import _linux, confine, enforce, mounts, rootfs, spawn, state, userns, wire
from ._cancel import to_the_end
from ._streams import FdStream
from .cgroups import Cgroup, create_cgroup
from .errors import (
    CommandNotExecutableError,
    CommandNotFoundError,
    MydockerWarning,
    SpecError,
    StartError,
)
from .init import child_spec
from .spec import DEFAULT_GRACE, DEVNULL, PIPE, STDOUT, ContainerSpec
from .usage import Rusage, Usage, Verdict, judge

#: what a stdio argument may be: PIPE, DEVNULL, STDOUT (stderr only), None
#: (inherit this process's fd), an fd number, or an object with ``fileno()``
StdioArg = int | IO[Any] | None


def _catches(pid: int, sig: int) -> bool:
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


class Container:
    """A running (or finished) container; made by ``open_container``.

    Attributes:
        spec: the container's description.
        pid: the PID 1 of the container, as seen from the host.
        returncode: ``None`` while running; then the exit status (128+N if killed by
            signal N).
        signal: the signal that killed PID 1, or ``None``.
        stdin / stdout / stderr: anyio byte streams for ``PIPE`` (with a tty,
            ``stdin`` and ``stdout`` are the same stream over the pty master).
        struck: the limit mydocker killed the container for (``cpu_time``,
            ``wall_time``, ``output``), or None.
    """

    def __init__(
        self,
        spec: ContainerSpec,
        pid: int,
        pidfd: int,
        stack: contextlib.ExitStack,
        *,
        stdin: FdStream | None,
        stdout: FdStream | None,
        stderr: FdStream | None,
        grace: float,
        cgroup: Cgroup | None = None,
    ) -> None:
        self.spec = spec
        self.pid = pid
        self.returncode: int | None = None
        self.signal: int | None = None
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.grace = grace
        self.cgroup = cgroup
        self._pidfd = pidfd
        self._stack = stack
        # fast_acquire: wait() runs several times per container (run_container, stop,
        # aclose), mostly uncontended: taking the lock need not yield to the event
        # loop each time; waiting on the pidfd yields when there is something to wait.
        self._wait_lock = anyio.Lock(fast_acquire=True)
        self._closed = False
        self.struck: str | None = None
        self._watch: enforce.Watch | None = None
        self._started = time.monotonic()
        self._ended: float | None = None
        self._rusage: Rusage | None = None
        self._usage: Usage | None = None  # the final figures, once closed

    @property
    def args(self) -> tuple[str, ...]:
        """The command the container runs."""
        return self.spec.command

    @property
    def oom_killed(self) -> bool:
        """True if the memory limit's OOM killer struck inside the container."""
        return bool(self.cgroup is not None and self.cgroup.oom_killed())

    @property
    def usage(self) -> Usage:
        """What the container used (``usage.Usage``): the final figures once it is
        closed, the figures so far while it runs."""
        if self._usage is not None:
            return self._usage
        end = self._ended if self._ended is not None else time.monotonic()
        counters = self.cgroup.counters() if self.cgroup is not None else None
        usage = Usage.of(counters, self._rusage, end - self._started, self.oom_killed)
        if self._closed:
            self._usage = usage
        return usage

    @property
    def verdict(self) -> Verdict | None:
        """How the container ended, as a judge says it (``usage.Verdict``: status
        ``OK``, ``RE``, ``SG``, ``TO``, ``ML``, ``OL``); None while it runs."""
        if self.returncode is None:
            return None
        limits = self.spec.limits
        return judge(
            self.returncode,
            self.signal,
            self.usage,
            cpu_time=limits.cpu_time,
            wall_time=limits.wall_time,
            struck=self.struck,
        )

    def exited(self) -> bool:
        """Whether PID 1 has exited (reaped or not)."""
        if self.returncode is not None or self._closed:
            return True
        # WNOWAIT: only look (wait() reaps); no select(), which refuses an fd >= 1024
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT | _linux.WALL
        return os.waitid(os.P_PIDFD, self._pidfd, flags) is not None

    async def wait(self) -> int:
        """Wait until PID 1 exits, reap it, and return its exit status.

        Cancelling ``wait()`` only stops waiting: the container keeps running.
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
        code, status, user, system, maxrss = _linux.waitid_pidfd(self._pidfd, os.WEXITED | _linux.WALL)
        self._ended = time.monotonic()
        self._rusage = Rusage(user, system, maxrss)
        if code == os.CLD_EXITED:
            self.returncode, self.signal = status, None
        else:
            self.returncode, self.signal = 128 + status, status

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the container's PID 1 through its pidfd.

        A no-op once the container has exited (the pidfd makes a PID-reuse race
        impossible). Note that PID 1 ignores signals it has no handler for.
        """
        if self.returncode is not None or self._closed:
            return
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        """Send SIGTERM to PID 1."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the container: SIGKILL to PID 1 (the kernel then kills all of its
        PID namespace) and, with a cgroup, to every process in the cgroup."""
        self.send_signal(signal.SIGKILL)
        if self.cgroup is not None:
            self.cgroup.kill()

    def handles(self, sig: int) -> bool:
        """Whether PID 1 has a handler for ``sig`` (else the kernel drops it)."""
        return self.returncode is None and _catches(self.pid, sig)

    async def stop(self, grace: float | None = None) -> int:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; return the status.

        Runs shielded from cancellation: when it returns, the container is reaped.
        If PID 1 has no SIGTERM handler the signal would be dropped by the kernel,
        so it is killed at once instead of after a pointless wait.
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
        """Stop the container if it still runs (see ``stop``), reap it, and release
        its streams, pidfd and cgroup. Safe to call more than once; shielded."""
        cancelled: BaseException | None = None
        with anyio.CancelScope(shield=True):
            if self._closed:
                return
            try:
                _, cancelled = await to_the_end(self.stop)
                if self.cgroup is not None:
                    _, later = await to_the_end(self.cgroup.destroy)
                    cancelled = cancelled or later
            finally:
                self._closed = True
                if self._watch is not None:
                    self._watch.close()
                self._stack.close()
        if cancelled is not None:
            raise cancelled

    async def __aenter__(self) -> Container:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def resize(self, rows: int, cols: int) -> None:
        """Set the window size of the container's pty (no-op without a tty)."""
        if self.spec.tty and self.stdout is not None and not self._closed:
            _linux.set_winsize(self.stdout.fileno(), rows, cols)

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        return f"<Container {self.spec.short_id} pid={self.pid} {state} {list(self.args)!r}>"


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
    container: Container, sock: socket.socket, winsize: tuple[int, int] | None, *, attach_stdin: bool
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


class _Gate:
    """The child's sync pipe: it waits on it before its first step until the
    supervisor has mapped its user namespace (rootless), and (with
    ``--userns auto``) again once it has entered its user namespace."""

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


def _stdio(
    spec: ContainerSpec,
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
    (into ``streams``); with ``-t`` and a root filesystem, the console socket on
    which the child will send the pty it opens in its own devpts."""
    if spec.tty and spec.rootfs is not None:
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
    if spec.tty:
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


async def start_container(
    spec: ContainerSpec,
    *,
    stdin: StdioArg = PIPE,
    stdout: StdioArg = PIPE,
    stderr: StdioArg = PIPE,
    winsize: tuple[int, int] | None = None,
    grace: float = DEFAULT_GRACE,
    cgroup_factory: Callable[[ContainerSpec], Cgroup | None] | None = None,
) -> Container:
    """Start a container and return it once its command is running.

    ``cgroup_factory(spec)`` makes the container's cgroup (default:
    ``cgroups.create_cgroup``; a factory returning None gives no cgroup): a
    ``cgroups.Cgroup``.

    Raises:
        CommandNotFoundError, CommandNotExecutableError: exec failed (127 / 126).
        StartError: another init step or the clone failed (``.step`` says which).
        NotPermittedError: not root.
        SpecError: a missing image, rootfs or volume host path (nothing was created).

    If cancelled while starting, the child (if any) is killed and reaped first.
    """
    # Image, rootfs, volume paths, the user and the confinement are worked out before
    # anything exists on the host.
    spec = rootfs.resolve(spec)
    rootless = os.geteuid() != 0
    if rootless and spec.userns == "host":
        raise SpecError("--userns host needs root: without root a container has a user namespace of its own")
    user = confine.user_of(spec)
    init = confine.init_binary() if spec.init else None
    stack = contextlib.ExitStack()
    child_side = contextlib.ExitStack()  # fds only the child keeps: closed after the clone
    try:
        mapping: userns.Mapping | None = None
        if rootless:
            notices: list[str] = []
            mapping = userns.rootless_mapping(notices)
            for notice in notices:
                warnings.warn(notice, MydockerWarning, stacklevel=2)
        elif spec.userns == "auto":
            slot = userns.auto_mapping(state.state_dir(spec.state_dir))
            stack.callback(slot.release)
            mapping = slot.mapping
        confinement = confine.confinement(spec, user, mapping)
        # The container's directory (overlay layers): removed when the stack closes.
        dirs = rootfs.make_container_dir(spec, stack)
        fs_ops: tuple[tuple[str, str, tuple[object, ...]], ...] = ()
        if dirs is not None and "mount" in spec.namespaces:
            ops = mounts.child_ops(spec, dirs, init, rootless=rootless, mapping=mapping)
            fs_ops = tuple((op.step, op.fn.__name__, op.args) for op in ops)
            init = mounts.INIT_PATH if init is not None else None
        fds: dict[str, int] = {}
        streams: dict[str, FdStream | None] = {"stdin": None, "stdout": None, "stderr": None}
        console = _stdio(spec, stack, child_side, fds, streams, stdin, stdout, stderr, winsize)
        err_r, err_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        # Ours only until the child has exec'd (EOF): closed then, not with the
        # container, so a running container holds one fd (its pidfd), not two.
        errpipe = stack.enter_context(contextlib.ExitStack())
        errpipe.callback(os.close, err_r)
        child_side.callback(os.close, err_w)
        fds["errpipe"] = err_w
        cgroup = (cgroup_factory or create_cgroup)(spec)
        if cgroup is not None:
            # Removes the directories if the clone fails; a no-op after destroy().
            stack.callback(cgroup.discard)
            fds.update(cgroup.child_fds())
        gate = _Gate(mapping is not None, errpipe, child_side, fds)
        parents = tuple(os.path.dirname(d) for d in cgroup.dirs) if cgroup is not None else ()
        child = child_spec(
            spec,
            fs_ops,
            confinement,
            confine.environment(spec, user),
            init,
            placement=cgroup.join_files() if cgroup is not None else (),
            userns=0 if mapping is None else 1 if rootless else 2,
        )
        flags = spawn.clone_flags(spec) | (_linux.CLONE_NEWUSER if rootless else 0)
        pid, pidfd = await spawn.spawn(child, flags, fds, parents)
    except BaseException:
        child_side.close()
        stack.close()
        raise
    child_side.close()
    stack.callback(os.close, pidfd)
    container = Container(
        spec,
        pid,
        pidfd,
        stack,
        stdin=streams["stdin"],
        stdout=streams["stdout"],
        stderr=streams["stderr"],
        grace=grace,
        cgroup=cgroup,
    )
    try:
        if cgroup is not None:
            cgroup.attach(pid)
        if rootless and mapping is not None:
            userns.write_maps(pid, mapping)  # before the child's first step
        gate.release_first(rootless)
        if console is not None:
            await _receive_console(container, console, winsize, attach_stdin=stdin == PIPE)
        report = await _read_errpipe(err_r)
        if report.startswith(wire.ASK_FOR_MAPS) and mapping is not None:  # --userns auto
            userns.write_maps(pid, mapping)
            gate.release()
            report = report[len(wire.ASK_FOR_MAPS) :] + await _read_errpipe(err_r)
        gate.close()
        errpipe.close()
    except BaseException:
        gate.close()
        with anyio.CancelScope(shield=True):
            container.kill()
            await container.aclose()
        raise
    if report:
        with anyio.CancelScope(shield=True):
            container.kill()
            await container.aclose()
        raise _start_error(*wire.decode_failure(report))
    if spec.limits.timed:
        container._watch = enforce.watch(container)
    return container
