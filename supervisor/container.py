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
import os
import time
import warnings
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from . import _linux, confine, enforce, mounts, records, rootfs, spawn, state, userns
from ._streams import FdStream
from .cgroups import Cgroup, create_cgroup
from .confine import Identity
from .errors import (
    ContainerNotRunningError,
    MydockerWarning,
    SpecError,
)
from .init import child_spec
from .launch import Gate, StdioArg, error_pipe, finish_start, stdio_fds
from .process import Process
from .records import Registration
from .spec import DEFAULT_GRACE, PIPE, ContainerSpec
from .usage import Rusage, Usage, Verdict, judge, report

if TYPE_CHECKING:
    from .exec import CompletedExec, ExecProcess, Target


class Container(Process):
    """A running (or finished) container; made by ``open_container``.

    Attributes:
        spec: the container's description.
        pid: the PID 1 of the container, as seen from the host.
        returncode: ``None`` while running; then the exit status (128+N if killed by
            signal N).
        signal: the signal that killed PID 1, or ``None``.
        stdin / stdout / stderr: anyio byte streams for ``PIPE`` (with a tty,
            ``stdin`` and ``stdout`` are the same stream over the pty master).
        cgroup: its cgroup, or None.
        endpoint: on a network, its ``network.endpoint.Endpoint`` (``address``,
            ``ports`` with the host ports chosen); else None.
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
        identity: Identity | None = None,
    ) -> None:
        super().__init__(
            pid, pidfd, stack, stdin=stdin, stdout=stdout, stderr=stderr, grace=grace, tty=spec.tty
        )
        self.spec = spec
        self.cgroup = cgroup
        self.endpoint: Any = None
        #: its record, when registered (``records.py``)
        self.record: records.Record | None = None
        #: who the container's processes are and how they are confined (for ``exec``)
        self.identity = identity
        # Our execs into it: a PID 1 cannot finish dying while a process of its
        # namespace that is our child waits to be reaped (zap_pid_ns_processes): so
        # while we wait for the container, we reap those that have exited.
        self._execs: weakref.WeakSet[Process] = weakref.WeakSet()
        self.struck: str | None = None
        self._watch: enforce.Watch | None = None
        self._started = time.monotonic()
        self._ended: float | None = None
        self._rusage: Rusage | None = None
        self._usage: Usage | None = None  # the final figures, once closed

    async def wait(self) -> int:
        """Wait until PID 1 exits, reap it, and return its exit status (reaping our
        execs into it that exit meanwhile).

        Cancelling ``wait()`` only stops waiting: the container keeps running.
        """
        while self.returncode is None and any(not e.reap_if_exited() for e in list(self._execs)):
            with anyio.move_on_after(0.05):  # polled only while execs of ours run
                return await super().wait()
        return await super().wait()

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

    def _reap(self) -> None:
        # with the rusage of PID 1 (its peak RSS, where the cgroup keeps no peak)
        code, status, user, system, maxrss = _linux.waitid_pidfd(self._pidfd, os.WEXITED | _linux.WALL)
        self._ended = time.monotonic()
        self._rusage = Rusage(user, system, maxrss)
        if code == os.CLD_EXITED:
            self.returncode, self.signal = status, None
        else:
            self.returncode, self.signal = 128 + status, status

    def kill(self) -> None:
        """Kill the container: SIGKILL to PID 1 (the kernel then kills all of its
        PID namespace) and, with a cgroup, to every process in the cgroup."""
        super().kill()
        if self.cgroup is not None:
            self.cgroup.kill()

    async def _finish(self) -> None:
        if self._watch is not None:
            self._watch.close()
        if self.cgroup is not None:
            await self.cgroup.destroy()
        if self.record is not None:
            assert self.returncode is not None
            usage, verdict = self.usage, self.verdict
            assert verdict is not None
            figures = report(self.returncode, self.signal, usage, verdict)
            self.record.exited(self.returncode, self.signal, usage.oom_killed, figures)
            await self.record.let_waiters_read()

    async def __aenter__(self) -> Container:
        return self

    def target(self) -> Target:
        """What an exec into this running container needs (``exec.Target``).

        Raises:
            ContainerNotRunningError: it has exited.
        """
        from .exec import Target

        if self.returncode is not None:
            raise ContainerNotRunningError(f"container {self.spec.short_id} is not running")
        return Target(self.spec, self.pid, self._pidfd, self.cgroup, self.identity, self._execs.add)

    async def exec(self, command: Sequence[str], **options: Any) -> CompletedExec:
        """Run ``command`` in the container to completion (``exec.run_exec``)."""
        from .exec import run_exec

        return await run_exec(self.target(), command, **options)

    async def open_exec(self, command: Sequence[str], **options: Any) -> ExecProcess:
        """Start ``command`` in the container (``exec.open_exec``)."""
        from .exec import open_exec

        return await open_exec(self.target(), command, **options)

    async def read_file(self, path: str) -> bytes:
        """The contents of ``path`` inside the container (``files.read_file``)."""
        from .files import read_file

        return await read_file(self.pid, self._pidfd, path)

    async def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write ``path`` inside the container (``files.write_file``)."""
        from .files import write_file

        await write_file(self.pid, self._pidfd, path, data, mode, self.identity)

    async def put_archive(self, path: str, archive: bytes | AsyncIterable[bytes]) -> None:
        """Unpack a tar archive into directory ``path`` inside the container."""
        from .files import put_archive

        await put_archive(self.pid, self._pidfd, path, archive, self.identity)

    def get_archive(self, path: str) -> AsyncIterator[bytes]:
        """A tar stream of ``path`` inside the container, docker's way."""
        from .files import get_archive

        return get_archive(self.pid, self._pidfd, path)

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        return f"<Container {self.spec.short_id} pid={self.pid} {state} {list(self.args)!r}>"


async def start_container(
    spec: ContainerSpec,
    *,
    stdin: StdioArg = PIPE,
    stdout: StdioArg = PIPE,
    stderr: StdioArg = PIPE,
    winsize: tuple[int, int] | None = None,
    grace: float = DEFAULT_GRACE,
    cgroup_factory: Callable[[ContainerSpec], Cgroup | None] | None = None,
    register: Registration | None = None,
) -> Container:
    """Start a container and return it once its command is running.

    ``cgroup_factory(spec)`` makes the container's cgroup (default:
    ``cgroups.create_cgroup``; a factory returning None gives no cgroup): a
    ``cgroups.Cgroup``. ``register``: record it for ``ps``, ``exec``, ``logs`` and
    the rest (``records.py``; its name is claimed, or ``ContainerConflictError``).

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
    if register is not None:
        spec = _for_records(spec)
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
        # The container's directory (overlay layers, its record): removed when the
        # stack closes (or only unlocked, when kept).
        record = None
        if register is None:
            _, dirs = rootfs.make_container_dir(spec, stack)
        else:
            spec, record, dirs = _make_record(spec, register, stack)
        endpoint = None
        if spec.network is not None:  # its lease, ports and /etc files; plugged in after the clone
            from .network import prepare_endpoint

            endpoint = prepare_endpoint(spec)
            stack.callback(endpoint.detach)
        fs_ops: tuple[tuple[str, str, tuple[object, ...]], ...] = ()
        if dirs is not None and "mount" in spec.namespaces:
            with_files = spec if endpoint is None else spec.evolve(mounts=(*spec.mounts, *endpoint.mounts))
            ops = mounts.child_ops(with_files, dirs, init, rootless=rootless, mapping=mapping)
            fs_ops = tuple((op.step, op.fn.__name__, op.args) for op in ops)
            init = mounts.INIT_PATH if init is not None else None
        fds: dict[str, int] = {}
        streams: dict[str, FdStream | None] = {"stdin": None, "stdout": None, "stderr": None}
        console = stdio_fds(
            spec.tty, spec.rootfs is not None, stack, child_side, fds, streams, stdin, stdout, stderr, winsize
        )
        err_r, errpipe = error_pipe(stack, child_side, fds)
        cgroup = (cgroup_factory or create_cgroup)(spec)
        if cgroup is not None:
            # Removes the directories if the clone fails; a no-op after destroy().
            stack.callback(cgroup.discard)
            fds.update(cgroup.child_fds())
        gate = Gate(mapping is not None or endpoint is not None, errpipe, child_side, fds)
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
        identity=Identity(user, confinement, mapping, rootless),
    )
    container.endpoint = endpoint
    container.record = record

    async def place(pid: int) -> None:
        if cgroup is not None:
            cgroup.attach(pid)
        if rootless and mapping is not None:
            userns.write_maps(pid, mapping)  # before the child's first step
        if endpoint is not None:
            await endpoint.attach(pid)  # eth0 in the child's namespace, before its first step

    await finish_start(
        container,
        err_r,
        errpipe,
        gate,
        console,
        winsize,
        attach_stdin=stdin == PIPE,
        place=place,
        waits=rootless or endpoint is not None,
        late_maps=mapping if mapping is not None and not rootless else None,
    )
    if record is not None:
        record.running(pid, cgroup.dirs if cgroup is not None else [], container.identity)
    if spec.limits.timed:
        container._watch = enforce.watch(container)
    return container


def _for_records(spec: ContainerSpec) -> ContainerSpec:
    """A registered spec: its state directory written in, its name checked."""
    if spec.name is not None:
        records.check_name(spec.name)
    sdir = state.state_dir(spec.state_dir)
    return spec if spec.state_dir == sdir else spec.evolve(state_dir=sdir)


def _make_record(
    spec: ContainerSpec, register: Registration, stack: contextlib.ExitStack
) -> tuple[ContainerSpec, records.Record, mounts.ContainerDirs | None]:
    """Make a registered container's directory, its name claimed (a container given
    none gets one, as docker's: ``records.random_name``)."""
    sdir = state.state_dir(spec.state_dir)
    given = spec.name is not None
    for attempt in range(20):
        if not given:
            made = records.random_name() if attempt < 10 else f"{records.random_name()}{attempt}"
            spec = spec.evolve(name=made)
        name = spec.name
        assert name is not None

        def claim(name: str = name, cid: str = spec.id) -> Callable[[], None]:
            records.claim_name(sdir, name, cid)
            return lambda: records.release_name(sdir, name, cid)

        files = records.record_files(spec, register, spec.image)
        try:
            owned, dirs = rootfs.make_container_dir(spec, stack, files, claim)
        except records.ContainerConflictError:
            if given:
                raise
            continue
        assert owned is not None
        return spec, records.Record(owned, spec, register), dirs
    raise records.ContainerConflictError("no free name found for the container: give one with --name")
