"""The raw clone path, supervisor side: ask the spawn helper for a clone3, or clone here.

Runs in the supervisor (a service's event loop, the CLI, the daemon). ``SpawnHelper``
is the handle on one spawn helper process (``helper.py``; the wire format is in
``wire.py``); ``DirectSpawner`` clones in this very process while it is
single-threaded (the CLI). Either way the result is ``(pid, pidfd)`` of a child that
runs ``init.py`` and is this process's own child, reaped through the pidfd.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import signal
import socket
import subprocess
import sys
import weakref

import anyio
from anyio.lowlevel import RunVar

from . import _linux, wire
from ._cancel import to_the_end
from .errors import NOT_PERMITTED, NotPermittedError, StartError
from .helper import clone_in_pid_namespace
from .init import ChildSpec, child_plan, child_to_wire, prepare, run_prepared
from .spec import ContainerSpec

NAMESPACE_FLAGS = {
    "pid": _linux.CLONE_NEWPID,
    "mount": _linux.CLONE_NEWNS,
    "uts": _linux.CLONE_NEWUTS,
    "ipc": _linux.CLONE_NEWIPC,
    "net": _linux.CLONE_NEWNET,
    "cgroup": _linux.CLONE_NEWCGROUP,
}


def clone_flags(spec: ContainerSpec) -> int:
    """The clone3 flags for a spec's namespaces (plus CLONE_PARENT)."""
    flags = _linux.CLONE_PARENT
    for ns in spec.namespaces:
        flags |= NAMESPACE_FLAGS[ns]
    return flags


class HelperGone(StartError):
    """The spawn helper died before it took the request: nothing was cloned, the
    request can go to a new helper."""


def _close_helper(sock: socket.socket, proc: subprocess.Popen[bytes]) -> None:
    sock.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class _Waiter:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event: anyio.Event | None = None
        self.reply: tuple[tuple[int, int, int, str], list[int]] | None = None


class SpawnHelper:
    """The supervisor's handle on one spawn helper process (one per event loop).

    ``spawn()`` may be called from many tasks at once: requests are pipelined over
    the socket, and whichever waiting task finds nobody reading takes the reader role
    and hands every reply to its owner.
    """

    def __init__(self, base_filter: bytes | None = None, bounding: int = _linux.ALL_CAPS) -> None:
        """``base_filter``: a helper for one confinement, which loads this seccomp
        program once for all its children (``seccomp.split_programs``); ``bounding``:
        the confinement's bounding set, which it drops to once for all of them too
        (the plain helper, without a base, drops nothing)."""
        drop_to = -1 if base_filter is None or bounding == _linux.ALL_CAPS else bounding
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        passed = [theirs.fileno()]
        base_fd = -1
        if base_filter is not None:
            base_fd = os.memfd_create("mydocker-seccomp-base", 0)  # inherited by the helper
            os.write(base_fd, base_filter)
            passed.append(base_fd)
        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        # The package's __init__ is not run in the helper: it loads the public API
        # (spec, dataclasses), which the helper does not need and every clone would
        # pay for (helper.py). An empty package module with the right __path__
        # stands in for it.
        pkg_dir = os.path.join(pkg_parent, "supervisor")
        code = (
            f"import sys; pkg = type(sys)('supervisor'); pkg.__path__ = [{pkg_dir!r}]; "
            "sys.modules['supervisor'] = pkg; "
            f"from supervisor.helper import helper_main; "
            f"helper_main({theirs.fileno()}, {base_fd}, {drop_to})"
        )
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", code],
                pass_fds=passed,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            theirs.close()
            if base_fd >= 0:
                os.close(base_fd)
        ours.setblocking(False)
        self._sock = ours
        self._ids = itertools.count()
        self._waiters: dict[int, _Waiter] = {}
        # fast_acquire: the lock is nearly always free (it only keeps two tasks from
        # waiting for the socket to be writable at once); not yielding to the event
        # loop to take it saves a scheduling round per container.
        self._send_lock = anyio.Lock(fast_acquire=True)
        self._reading = False
        self._broken: str | None = None
        self._closer_task: object = None
        self._finalizer = weakref.finalize(self, _close_helper, ours, self._proc)

    @property
    def pid(self) -> int:
        """The helper's process id."""
        return self._proc.pid

    @property
    def exit_code(self) -> int | None:
        """The helper's exit status once it is gone."""
        return self._proc.poll()

    @property
    def broken(self) -> bool:
        """True once the helper died or the socket failed; make a new one."""
        if self._broken is None and self._proc.poll() is not None:
            self._broken = f"the spawn helper (pid {self._proc.pid}) exited"
        return self._broken is not None

    def close(self) -> None:
        """Close the socket and reap the helper (it exits on EOF)."""
        self._finalizer()

    async def spawn(
        self, child: ChildSpec, flags: int, fds: dict[str, int], cgroup_parents: tuple[str, ...] = ()
    ) -> tuple[int, int]:
        """Clone a container child that runs ``child`` (``init.child_spec``) with the
        clone3 ``flags`` (``clone_flags``) and the fds by role (``wire.ROLES``);
        returns ``(pid, pidfd)``. ``cgroup_parents``: where the container's cgroups
        are (the helper removes them if the supervisor dies without doing it).

        The round trip is shielded from cancellation: once the request is sent, a
        child may exist, and only the reply tells us its pidfd, without which it
        could not be reaped. It takes well under a millisecond. A native asyncio
        ``Task.cancel()``, which an anyio shield does not hold off, is held back
        until the reply is in; the child is then killed and reaped, and the
        cancellation goes on.

        Raises:
            HelperGone: the helper was dead before the request reached it.
            StartError: clone3 failed (errno says why) or the helper died with the
                request in hand.
        """
        rid = next(self._ids)
        message, fdlist, memfd = wire.encode_request(rid, child_to_wire(child), fds, flags, cgroup_parents)
        with anyio.CancelScope(shield=True):
            waiter = _Waiter()
            self._waiters[rid] = waiter
            try:
                try:
                    async with self._send_lock:
                        await self._send(message, fdlist)
                finally:
                    if memfd >= 0:
                        os.close(memfd)
                (reply, rfds), cancelled = await to_the_end(lambda: self._await_reply(waiter))
            finally:
                self._waiters.pop(rid, None)
        _rid, pid, err, detail = reply
        # Besides the child's pidfd: intermediates to reap (an exec without root,
        # ``helper._clone_through_userns``); they exit at once.
        for f in rfds[1:] if pid > 0 else rfds:
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PIDFD, f, os.WEXITED | _linux.WALL)
            os.close(f)
        if pid <= 0:
            if cancelled is not None:
                raise cancelled
            raise _clone_error(err, detail, flags)
        if cancelled is not None:
            await self._kill_and_reap(rfds[0])
            raise cancelled
        return pid, rfds[0]

    async def _kill_and_reap(self, pidfd: int) -> None:
        """SIGKILL a child we will not hand out, and reap it (through native
        cancellations, as above)."""
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            await to_the_end(lambda: anyio.wait_readable(pidfd))
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED | _linux.WALL)
        finally:
            os.close(pidfd)

    async def _send(self, data: bytes, fdlist: list[int]) -> None:
        while True:
            if self.broken:
                raise HelperGone("spawn helper", 0, self._broken or "")
            try:
                wire.send_fds(self._sock, data, fdlist)
                return
            except BlockingIOError:
                await anyio.wait_writable(self._sock)
            except OSError as e:
                self._fail(f"spawn helper socket: {e}")
                if e.errno in (errno.EPIPE, errno.ECONNRESET, errno.ECONNREFUSED):
                    raise HelperGone("spawn helper", e.errno, self._broken or "") from None

    def _fail(self, why: str) -> None:
        self._broken = why
        for w in self._waiters.values():
            if w.event is not None:
                w.event.set()

    async def _await_reply(self, waiter: _Waiter) -> tuple[tuple[int, int, int, str], list[int]]:
        while waiter.reply is None:
            if self._broken:
                raise StartError("spawn helper", 0, self._broken)
            if self._reading:
                waiter.event = anyio.Event()
                await waiter.event.wait()
                continue
            self._reading = True
            try:
                await self._read_until(waiter)
            finally:
                self._reading = False
                # Hand the reader role on to somebody still waiting.
                for other in self._waiters.values():
                    if other.reply is None and other.event is not None:
                        other.event.set()
                        break
        return waiter.reply

    async def _read_until(self, waiter: _Waiter) -> None:
        while waiter.reply is None:
            try:
                msg, rfds = wire.recv_fds(self._sock, 4096, 1)  # a head and an error message
            except BlockingIOError:
                await anyio.wait_readable(self._sock)
                continue
            except OSError as e:
                self._fail(f"spawn helper socket: {e}")
                return
            if not msg:
                self._fail(f"the spawn helper (pid {self._proc.pid}) exited")
                return
            reply = wire.decode_reply(msg)
            owner = self._waiters.get(reply[0])
            if owner is None:  # cannot happen: every request waits, shielded
                for f in rfds:
                    os.close(f)
                continue
            owner.reply = (reply, rfds)
            if owner.event is not None:
                owner.event.set()


def _clone_error(err: int, detail: str, flags: int = 0) -> StartError | NotPermittedError:
    if flags & _linux.CLONE_NEWUSER and err in (errno.EPERM, errno.ENOSPC, errno.EUSERS):
        return NotPermittedError(
            f"cannot create the container's user namespace: {os.strerror(err)} "
            "(the kernel's limit user.max_user_namespaces, or user namespaces refused to this user)"
        )
    if err == errno.EPERM:
        return NotPermittedError(f"{NOT_PERMITTED}: clone3 was refused")
    return StartError("clone3", err, detail)


def _single_threaded() -> bool:
    # Counts every thread of the process, C-level ones included.
    return len(os.listdir("/proc/self/task")) == 1


class DirectSpawner:
    """Clones in this very process, for a short-lived single-threaded caller.

    The ``mydocker`` CLI is one thread and small: a clone from it is as safe as one
    from the helper (no other thread can hold a lock), costs a few page tables, and
    saves starting a helper interpreter (~50 ms, most of ``mydocker run /bin/true``).
    Whenever the process has more than one thread at the moment of the clone, it
    falls back to the helper. The child is then our own child (no CLONE_PARENT).
    """

    async def spawn(
        self, child: ChildSpec, flags: int, fds: dict[str, int], cgroup_parents: tuple[str, ...] = ()
    ) -> tuple[int, int]:
        """Same contract as ``SpawnHelper.spawn``.

        Only a container with a PID namespace of its own is cloned here: if the CLI
        dies, its PID 1 dies (``PR_SET_PDEATHSIG``) and the kernel kills the rest of
        the namespace. Without one (``--pid host``) its processes would outlive us;
        the helper, which does outlive us, then removes them (``helper.py``).
        """
        # Without root an exec's clone goes through an intermediate with CLONE_PARENT
        # (helper._clone_through_userns): only the helper has a parent to give it.
        exec_rootless = bool(child.join & _linux.CLONE_NEWPID) and os.geteuid() != 0
        if (
            not (flags & _linux.CLONE_NEWPID or child.join & _linux.CLONE_NEWPID)
            or exec_rootless
            or not _single_threaded()
        ):
            return await spawn(child, flags, fds, cgroup_parents, direct=False)
        # The child is a copy of this whole process: it must not keep our side of its
        # pipes (the sync pipe's write end above all, or it would never see EOF if
        # we die or fail to map its user namespace). The helper's children have only the
        # fds of their request; give ours the same.
        me = os.pidfd_open(os.getpid())  # the parent the child checks it still has
        pid = -1
        try:
            keep = {0, 1, 2, me, *fds.values()}
            drop = tuple(fd for fd in map(int, os.listdir("/proc/self/fd")) if fd not in keep)
            # Worked out before the clone, as the helper does: fewer copy-on-write faults.
            prepared = prepare(child_plan(child, {**fds, "supervisor": me}, None), drop, flags)
            flags &= ~_linux.CLONE_PARENT
            clone_args, pidfd = _linux.clone3_args(flags, 0, fds.get("cgroup", -1))
            if child.join & _linux.CLONE_NEWPID:  # an exec: into the container's PID namespace
                pid = clone_in_pid_namespace(fds["target"], clone_args, prepared)
            else:
                pid = _linux.raw_clone3(clone_args)
                if pid == 0:
                    run_prepared(prepared)  # never returns
        finally:
            if pid != 0:
                os.close(me)
        if pid < 0:
            err = _linux.errno_now()
            raise _clone_error(err, wire.clone_failed(flags, err), flags)
        return pid, pidfd.value


_direct: DirectSpawner | None = None


def prefer_direct_clone(enabled: bool = True) -> None:
    """Let ``spawn`` clone in-process while the process is single-threaded.

    Only for programs that stay single-threaded and small, like the CLI; services
    should keep the default (the helper), whose cost does not grow with their size.
    """
    global _direct
    _direct = DirectSpawner() if enabled else None


async def spawn(
    child: ChildSpec,
    flags: int,
    fds: dict[str, int],
    cgroup_parents: tuple[str, ...] = (),
    *,
    direct: bool = True,
) -> tuple[int, int]:
    """Clone a container child (see ``SpawnHelper.spawn``): in-process for the CLI
    (``prefer_direct_clone``), else through the event loop's helper, or through the
    helper of the child's confinement when its seccomp filter comes in two parts
    (``seccomp.split_programs``). A helper found dead (killed, OOM) is replaced for
    the request in hand.

    Raises:
        StartError, NotPermittedError: as ``SpawnHelper.spawn``.
    """
    conf = child.confine
    if conf is not None and conf.split is not None:
        base, closing_program = conf.split
        if not (direct and _direct is not None):
            closing = child._replace(confine=conf._replace(seccomp=closing_program, split=None))
            for _attempt in range(2):
                helper = get_helper(base, conf.bounding)
                if helper is None:
                    break
                try:
                    return await helper.spawn(closing, flags, fds, cgroup_parents)
                except HelperGone:
                    _zygote_failed((base, conf.bounding))
        child = child._replace(confine=conf._replace(split=None))  # the filter whole
    if direct and _direct is not None:
        return await _direct.spawn(child, flags, fds, cgroup_parents)
    try:
        return await _plain_helper().spawn(child, flags, fds, cgroup_parents)
    except HelperGone:
        return await _plain_helper().spawn(child, flags, fds, cgroup_parents)


def _plain_helper() -> SpawnHelper:
    helper = get_helper(None)
    assert helper is not None  # the plain helper is always there to be had
    return helper


#: a helper for one confinement: its base seccomp program and its bounding set
_Zygote = tuple[bytes, int]
#: the spawn helpers of an event loop: the plain one (key None), and one per distinct
#: confinement (at most ``_MOST_BASES``; containers beyond load their filter whole
#: and drop their bounding set themselves), or False for one whose helper could not
#: load its filter or drop its bounding set
_helpers_var: RunVar[dict[_Zygote | None, SpawnHelper | bool] | None] = RunVar(
    "mydocker_spawn_helpers", default=None
)
_MOST_BASES = 4


def _zygote_failed(key: _Zygote) -> None:
    """If the helper of ``key`` died because it could not load the filter or drop
    the bounding set (the kernel refused), do not try it again on this event loop."""
    helpers = _helpers_var.get() or {}
    helper = helpers.get(key)
    if isinstance(helper, SpawnHelper) and helper.broken and helper.exit_code == 71:
        helpers[key] = False
        helper.close()


def get_helper(base: bytes | None = None, bounding: int = _linux.ALL_CAPS) -> SpawnHelper | None:
    """The spawn helper of the running event loop (for the confinement whose base
    seccomp program is ``base`` and whose bounding set is ``bounding``), started on
    first use and again when the last one died; None when no helper can serve that
    confinement (then the child loads the filter whole)."""
    helpers = _helpers_var.get()
    if helpers is None:
        helpers = {}
        _helpers_var.set(helpers)
    key = None if base is None else (base, bounding)
    helper = helpers.get(key)
    if helper is False:
        return None
    if key is not None and helper is None and sum(k is not None for k in helpers) >= _MOST_BASES:
        return None
    if not isinstance(helper, SpawnHelper) or helper.broken:
        if isinstance(helper, SpawnHelper):
            helper.close()
        helper = SpawnHelper(base, bounding)
        helpers[key] = helper
        _close_with_event_loop(helper)
    return helper


def helpers() -> list[SpawnHelper]:
    """The live spawn helpers of the running event loop."""
    return [h for h in (_helpers_var.get() or {}).values() if isinstance(h, SpawnHelper)]


def _close_with_event_loop(helper: SpawnHelper) -> None:
    """Close the helper when the event loop ends (both backends cancel their
    remaining background tasks then), so no helper outlives its loop."""
    import asyncio

    async def closer() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            helper.close()

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio

        trio.lowlevel.spawn_system_task(closer, name="mydocker spawn helper closer")
    else:
        helper._closer_task = loop.create_task(closer())
