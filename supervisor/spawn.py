"""The raw clone path: a small single-threaded spawn helper that calls clone3.

Why a helper: cloning a Python process fork-style from a multi-threaded host (every
asyncio or trio service has worker threads) can deadlock the child on a lock that
another thread held at the instant of the clone, and copies the host's page tables,
which gets slower the bigger the host is. The helper is started once per event loop
with a clean exec, never runs a second thread, and stays small; it does the clone.

Protocol (a SOCK_SEQPACKET unix socket, one message per request/reply):

    request:  b"I" + marshal((rid, child, roles, clone_flags)) + fds by SCM_RIGHTS;
              roles is ((role, i), ...): the role's fd is fds[i] (an fd serving
              several roles, as /dev/null for stdin, stdout and stderr, travels once).
              Over 32 kB (a big environment; a message is at most the socket's send
              buffer): b"F", and the marshalled request is in a memfd, fds[0]
    reply:    struct (rid, pid, errno) + detail (utf-8) + the pidfd (when pid > 0)

``child`` is ``init.child_spec(spec)`` as a plain tuple: the spec digested by the
supervisor into the plain data the child needs (bytes, strings, ints; functions by
name), so the helper does as little as it can between clones. marshal, not pickle:
the helper loads nothing for it (``_pickle`` alone is ~0.6 MB of the helper's memory).

The helper answers requests strictly in order, so the supervisor can keep many in
flight (pipelining) and match answers by ``rid``. It clones with
``CLONE_PIDFD | CLONE_PARENT``: the container is the *supervisor's* child (so the
supervisor reaps it through the pidfd with ``waitid(P_PIDFD)``), and ``exit_signal``
is 0, as the kernel requires for CLONE_PARENT: no SIGCHLD ever reaches the host.

The helper exits when the supervisor closes its end of the socket (or dies).
"""

from __future__ import annotations

# The helper imports this module: every module it loads adds pages whose page tables
# each of its clones copies and each exec tears down. Hence the C cores (_socket,
# _signal, _struct: socket.py and signal.py load enum, collections, selectors, ...),
# marshal, and the supervisor's own needs (subprocess, weakref, anyio) imported where
# they are used.
import _signal
import _socket
import _struct
import errno
import gc
import marshal
import os
import sys

from . import _linux
from .errors import NotPermittedError, StartError
from .init import ChildPlan, ChildSpec, child_spec, prepare, run_prepared, signals_to_reset, warm_up

# What typing.TYPE_CHECKING is, without importing typing.
TYPE_CHECKING = False

if TYPE_CHECKING:
    import socket
    import subprocess
    from typing import Any

    import anyio

    from .init import Prepared
    from .spec import ContainerSpec


NAMESPACE_FLAGS = {
    "pid": _linux.CLONE_NEWPID,
    "mount": _linux.CLONE_NEWNS,
    "uts": _linux.CLONE_NEWUTS,
    "ipc": _linux.CLONE_NEWIPC,
    "net": _linux.CLONE_NEWNET,
    "cgroup": _linux.CLONE_NEWCGROUP,
}

#: fd roles a request may carry; "cgroup" is a cgroup2 directory for CLONE_INTO_CGROUP,
#: "console" a socket on which a child with a rootfs sends back the master of its pty
ROLES = ("stdin", "stdout", "stderr", "errpipe", "sync", "cgroup", "console")
#: the largest request that travels in the message itself (a unix socket takes at
#: most its send buffer, ~200 kB by default); a larger one (a big environment) goes
#: in a memfd passed along with the message
_INLINE_MAX = 32 << 10
#: the first byte of a request: the request follows, or it is in the first fd
_INLINE, _IN_MEMFD = b"I", b"F"
#: the head of a reply: request id, pid (0: the clone failed), errno
_REPLY = _struct.Struct("=qqi")
_SOL_SOCKET, _SCM_RIGHTS = _socket.SOL_SOCKET, _socket.SCM_RIGHTS


def _send_fds(sock: socket.socket | _socket.socket, data: bytes, fds: list[int]) -> None:
    """One message with fds (SCM_RIGHTS); never raises SIGPIPE."""
    ancillary = [(_SOL_SOCKET, _SCM_RIGHTS, _struct.pack(f"{len(fds)}i", *fds))] if fds else []
    sock.sendmsg([data], ancillary, _socket.MSG_NOSIGNAL)


def _recv_fds(
    sock: socket.socket | _socket.socket, bufsize: int, maxfds: int, flags: int = 0
) -> tuple[bytes, list[int]]:
    """One message and the fds that came with it, close-on-exec (at most maxfds: the
    kernel closes any beyond what fits)."""
    msg, ancillary, _flags, _addr = sock.recvmsg(
        bufsize, _socket.CMSG_SPACE(maxfds * 4), flags | _socket.MSG_CMSG_CLOEXEC
    )
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            fds += _struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4])
    return msg, fds


def _request_message(data: bytes, fds: list[int]) -> tuple[bytes, list[int], int]:
    """(message, fds, memfd or -1) for a marshalled request: inline when it is small,
    else in a memfd that goes first in the fds (the caller closes it once sent)."""
    if len(data) <= _INLINE_MAX:
        return _INLINE + data, fds, -1
    memfd = os.memfd_create("mydocker-request", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(memfd, view) :]
    except BaseException:
        os.close(memfd)
        raise
    return _IN_MEMFD, [memfd, *fds], memfd


def _read_request(msg: bytes, fds: list[int]) -> tuple[bytes, list[int]]:
    """The marshalled request and the container's fds, from ``_request_message``'s."""
    if msg[:1] == _INLINE:
        return msg[1:], fds
    memfd, fds = fds[0], fds[1:]
    try:
        size = os.fstat(memfd).st_size
        return os.pread(memfd, size, 0), fds
    finally:
        os.close(memfd)


def clone_flags(spec: ContainerSpec) -> int:
    """The clone3 flags for a spec's namespaces (plus CLONE_PARENT)."""
    flags = _linux.CLONE_PARENT
    for ns in spec.namespaces:
        flags |= NAMESPACE_FLAGS[ns]
    return flags


# ---------------------------------------------------------------- helper side


def _child_plan(child: ChildSpec, byrole: dict[str, int], reset: tuple[int, ...] | None) -> ChildPlan:
    # byrole also holds "netns" (not a ROLE: the helper's own, from its _NetnsPool)
    return ChildPlan(
        child=child,
        stdin=byrole["stdin"],
        stdout=byrole["stdout"],
        stderr=byrole["stderr"],
        errpipe=byrole["errpipe"],
        sync=byrole.get("sync", -1),
        reset_signals=reset,
        console=byrole.get("console", -1),
        netns=byrole.get("netns", -1),
    )


def _clone_prepared(prepared: Prepared, clone_args: bytes) -> int:
    """clone3 (``_linux.raw_clone3``); in the child, run the init stage that
    ``init.prepare`` worked out before the clone (it never returns there). Returns
    the pid, or -1 with errno set."""
    pid = _linux.raw_clone3(clone_args)
    if pid == 0:
        run_prepared(prepared)
    return pid


class _NetnsPool:
    """Network namespaces with ``lo`` up, made by the helper while it is idle.

    Creating a network namespace is the dearest part of a container's clone (~0.5 ms
    of kernel work: sysctl tables, proc entries, the loopback device). Made between
    requests, it is off the container's start; the child joins one with setns. The
    pool is small (an idle namespace holds some kernel memory) and drains under load,
    when requests queue up: then clone3 makes the namespace as before.
    """

    SIZE = 4

    def __init__(self) -> None:
        self.fds: list[int] = []
        try:
            self._home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._home = -1

    def wants_more(self) -> bool:
        return self._home >= 0 and len(self.fds) < self.SIZE

    def fill_one(self) -> None:
        """Make one namespace; on any failure stop pooling (clones still work)."""
        home = self._home
        try:
            _linux.unshare(_linux.CLONE_NEWNET)
        except OSError:
            self._stop()
            return
        made = False
        try:
            _linux.loopback_up()
            self.fds.append(os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
            made = True
        except OSError:
            pass
        finally:
            try:
                _linux.setns(home, _linux.CLONE_NEWNET)
            except OSError:
                # Never clone a "--network host" container into a foreign namespace:
                # die, and the supervisor starts a fresh helper.
                os._exit(70)
        if not made:
            self._stop()

    def _stop(self) -> None:
        os.close(self._home)
        self._home = -1

    def take(self) -> int:
        return self.fds.pop() if self.fds else -1

    def private_fds(self) -> tuple[int, ...]:
        """The pool's fds, none of which a container may keep (one is the host's
        network namespace)."""
        return (*self.fds, self._home) if self._home >= 0 else tuple(self.fds)


def _idle(sock: _socket.socket) -> bool:
    """No request is waiting on the socket (nor EOF)."""
    try:
        sock.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        pass
    return False


#: the most queued requests the helper takes at once (see _serve_batch)
_BATCH = 16


def _receive_batch(sock: _socket.socket) -> tuple[list[tuple[bytes, list[int]]], bool]:
    """The next request (waiting for it) and whatever more is queued behind it, up to
    ``_BATCH``; and whether the supervisor has closed its end (EOF or a socket error)."""
    batch: list[tuple[bytes, list[int]]] = []
    flags = 0
    while len(batch) < _BATCH:
        try:
            msg, fds = _recv_fds(sock, _INLINE_MAX + 1, len(ROLES) + 1, flags)
        except BlockingIOError:
            return batch, False
        except OSError:  # ConnectionResetError included
            return batch, True
        if not msg:
            for f in fds:  # none is expected with EOF; none may leak either
                os.close(f)
            return batch, True
        batch.append(_read_request(msg, fds))
        flags = _socket.MSG_DONTWAIT
    return batch, False


def _serve_batch(
    sock: _socket.socket,
    batch: list[tuple[bytes, list[int]]],
    reset: tuple[int, ...],
    pool: _NetnsPool,
    private: tuple[int, ...],
) -> None:
    """Clone one container per request, back to back, then answer them all.

    Why in batches: after each clone every page of the helper is shared with the
    child, so each page the helper then writes costs it a fault and a copy. Serving
    one request at a time, it wrote ~180 pages between two clones (unpacking,
    preparing, replying, receiving). Under load the requests queue up: all of them
    are unpacked and prepared first, the clones then follow each other with next to
    nothing in between, and the replies go out at the end. With one request waiting
    (no load) this is exactly the one-at-a-time path.
    """
    parsed = []
    for msg, fds in batch:
        rid, child, roles, flags = marshal.loads(msg)
        child = ChildSpec._make(child)
        byrole = {role: fds[i] for role, i in roles}
        netns = pool.take() if flags & _linux.CLONE_NEWNET else -1
        if netns >= 0:
            flags &= ~_linux.CLONE_NEWNET
            byrole["netns"] = netns
        parsed.append((rid, child, flags, byrole, netns))
    # A child that never execs (--init) or may wait before it does (the v1 cgroup
    # sync) first drops every fd of the other requests and the helper's own: it must
    # not hold another container's pipes. Any other child marks every inherited fd
    # close-on-exec (its last step but one), which is enough.
    batch_fds = {f for _rid, _child, _flags, byrole, _netns in parsed for f in byrole.values()}
    helpers_own = (*private, *pool.private_fds())
    jobs = []
    for rid, child, flags, byrole, netns in parsed:
        plan = _child_plan(child, byrole, reset)
        drop: tuple[int, ...] = ()
        if child.init or plan.sync >= 0:
            drop = (*helpers_own, *batch_fds.difference(byrole.values()))
        clone_args, pidfd = _linux.clone3_args(flags, 0, byrole.get("cgroup", -1))
        jobs.append((rid, flags, clone_args, pidfd, prepare(plan, drop), netns))
    # The clones, back to back: between two of them the helper writes as little as
    # it can (each page it writes while a fresh child shares it is copied, and the
    # C stack of every Python call in between counts): _clone_prepared inlined,
    # which took a third of the helper's faults off. Whatever happens, every child
    # made is answered for: only its pidfd lets it be reaped.
    pids: list[int] = []
    try:
        syscall, nr, size = _linux.raw_syscall, _linux.NR_CLONE3, _linux.CLONE_ARGS_SIZE
        for job in jobs:
            pid = syscall(nr, job[2], size)
            if pid == 0:
                run_prepared(job[4])  # never returns
            pids.append(pid if pid > 0 else -_linux.errno_now())
    finally:
        for job in jobs:
            if job[5] >= 0:
                os.close(job[5])
        made = zip(jobs, pids, strict=False)  # all of them, unless something raised
        _reply_batch(sock, [(job[0], job[1], job[3].value, pid) for job, pid in made])


def _reply_batch(sock: _socket.socket, results: list[tuple[int, int, int, int]]) -> None:
    """Answer each (request id, clone flags, pidfd, pid or -errno); close the pidfds."""
    try:
        for rid, flags, pidfd, pid in results:
            if pid < 0:
                _send_fds(sock, _REPLY.pack(rid, 0, -pid) + _clone_failed(flags, -pid).encode(), [])
            else:
                _send_fds(sock, _REPLY.pack(rid, pid, 0), [pidfd])
    finally:
        for _rid, _flags, pidfd, pid in results:
            if pid > 0:
                os.close(pidfd)


def helper_main(fd: int) -> None:
    """Entry point of the spawn helper process; serves until EOF on ``fd``."""
    # Every signal at its default, so that the children have none to reset (execve
    # resets handled signals, but keeps ignored ones ignored): Python ignores SIGPIPE
    # (the replies go with MSG_NOSIGNAL instead) and SIGXFSZ, and handles SIGINT. The
    # helper has a session of its own, so no terminal sends it signals.
    for sig in (_signal.SIGINT, _signal.SIGPIPE, _signal.SIGXFSZ):
        _signal.signal(sig, _signal.SIG_DFL)
    sock = _socket.socket(fileno=fd)
    # To tell, at EOF, a supervisor that closed us from one that was killed.
    supervisor_pid = os.getppid()
    supervisor_fd = os.pidfd_open(supervisor_pid)
    # The helper's signal dispositions are fixed from here on: work out once which
    # ones every child must reset.
    reset = signals_to_reset()

    pool = _NetnsPool()
    # Fewer copy-on-write faults in every child: the child's code warmed up here, and
    # no collector walking the heap.
    warm_up()
    gc.collect()
    gc.freeze()
    gc.disable()
    served = 0
    eof = False
    while not eof:
        if pool.wants_more() and _idle(sock):
            pool.fill_one()
            continue
        batch, eof = _receive_batch(sock)
        try:
            _serve_batch(sock, batch, reset, pool, (sock.fileno(), supervisor_fd))
        finally:
            for _msg, fds in batch:
                for f in fds:
                    os.close(f)
        served += len(batch)
        if served >= 4096:
            served = 0
            gc.collect()
    try:
        from supervisor.cgroups import clean_up_after

        clean_up_after(supervisor_pid, supervisor_fd)
    except Exception:  # noqa: BLE001 - best effort on the way out; the next run sweeps
        pass


# ---------------------------------------------------------------- supervisor side


def _close_helper(sock: socket.socket, proc: subprocess.Popen[bytes]) -> None:
    import subprocess

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
        self.reply: tuple[tuple[Any, ...], list[int]] | None = None


class SpawnHelper:
    """The supervisor's handle on one spawn helper process (one per event loop).

    ``spawn()`` may be called from many tasks at once: requests are pipelined over
    the socket, and whichever waiting task finds nobody reading takes the reader role
    and hands every reply to its owner.
    """

    def __init__(self) -> None:
        # Imported here, not at the top: the helper imports this module too, and
        # every module it loads makes each of its clones dearer.
        import itertools
        import socket
        import subprocess
        import weakref

        import anyio

        self._anyio = anyio
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        # The package's __init__ is not run in the helper: it loads the public API
        # (spec, dataclasses), which the helper does not need and every clone would
        # pay for. An empty package module with the right __path__ stands in for it.
        pkg_dir = os.path.join(pkg_parent, "supervisor")
        code = (
            f"import sys; pkg = type(sys)('supervisor'); pkg.__path__ = [{pkg_dir!r}]; "
            "sys.modules['supervisor'] = pkg; "
            f"from supervisor.spawn import helper_main; helper_main({theirs.fileno()})"
        )
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", code],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            theirs.close()
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
    def broken(self) -> bool:
        """True once the helper died or the socket failed; make a new one."""
        return self._broken is not None

    def close(self) -> None:
        """Close the socket and reap the helper (it exits on EOF)."""
        self._finalizer()

    async def spawn(self, spec: ContainerSpec, fds: dict[str, int]) -> tuple[int, int]:
        """Clone a container child running ``spec``; returns ``(pid, pidfd)``.

        The round trip is shielded from cancellation: once the request is sent, a
        child may exist, and only the reply tells us its pidfd, without which it
        could not be reaped. It takes well under a millisecond. A native asyncio
        ``Task.cancel()``, which an anyio shield does not hold off, is held back
        until the reply is in; the child is then killed and reaped, and the
        cancellation goes on.

        Raises:
            StartError: clone3 failed (errno says why) or the helper is gone.
        """
        from ._cancel import to_the_end  # not at the top: the helper imports this module

        anyio = self._anyio
        unique = list(dict.fromkeys(fds[r] for r in ROLES if r in fds))
        roles = tuple((r, unique.index(fds[r])) for r in ROLES if r in fds)
        rid = next(self._ids)
        data = marshal.dumps((rid, tuple(child_spec(spec)), roles, clone_flags(spec)))  # type: ignore[arg-type]
        message, fdlist, memfd = _request_message(data, unique)
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
        if pid <= 0:
            for f in rfds:
                os.close(f)
            if cancelled is not None:
                raise cancelled
            raise _clone_error(err, detail)
        if cancelled is not None:
            await self._kill_and_reap(rfds[0])
            raise cancelled
        return pid, rfds[0]

    async def _kill_and_reap(self, pidfd: int) -> None:
        """SIGKILL a child we will not hand out, and reap it (through native
        cancellations, as above)."""
        from ._cancel import to_the_end

        try:
            _signal.pidfd_send_signal(pidfd, _signal.SIGKILL)
            await to_the_end(lambda: self._anyio.wait_readable(pidfd))
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED | _linux.WALL)
        finally:
            os.close(pidfd)

    async def _send(self, data: bytes, fdlist: list[int]) -> None:
        while True:
            if self._broken:
                raise StartError("spawn helper", 0, self._broken)
            try:
                _send_fds(self._sock, data, fdlist)
                return
            except BlockingIOError:
                await self._anyio.wait_writable(self._sock)
            except OSError as e:
                self._fail(f"spawn helper socket: {e}")

    def _fail(self, why: str) -> None:
        self._broken = why
        for w in self._waiters.values():
            if w.event is not None:
                w.event.set()

    async def _await_reply(self, waiter: _Waiter) -> tuple[tuple[Any, ...], list[int]]:
        anyio = self._anyio
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
                msg, rfds = _recv_fds(self._sock, 4096, 1)  # a head and an error message
            except BlockingIOError:
                await self._anyio.wait_readable(self._sock)
                continue
            except OSError as e:
                self._fail(f"spawn helper socket: {e}")
                return
            if not msg:
                self._fail(f"the spawn helper (pid {self._proc.pid}) exited")
                return
            rid, pid, err = _REPLY.unpack_from(msg)
            reply = (rid, pid, err, msg[_REPLY.size :].decode(errors="replace"))
            owner = self._waiters.get(rid)
            if owner is None:  # cannot happen: every request waits, shielded
                for f in rfds:
                    os.close(f)
                continue
            owner.reply = (reply, rfds)
            if owner.event is not None:
                owner.event.set()


def _clone_failed(flags: int, err: int) -> str:
    """What a failed clone3 says (the helper sends it, the direct clone raises it)."""
    return f"clone3(flags={flags:#x}) failed: {os.strerror(err)}"


def _clone_error(err: int, detail: str) -> StartError | NotPermittedError:
    if err == errno.EPERM:
        return NotPermittedError(
            "cannot create the container's namespaces: operation not permitted "
            "(mydocker must run as root, with CAP_SYS_ADMIN)"
        )
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

    async def spawn(self, spec: ContainerSpec, fds: dict[str, int]) -> tuple[int, int]:
        """Same contract as ``SpawnHelper.spawn``."""
        if not _single_threaded():
            return await get_helper().spawn(spec, fds)
        # The child is a copy of this whole process: it must not keep our side of its
        # pipes (the cgroup sync pipe's write end above all, or it would never see
        # EOF if we die or fail to place it). The helper's children have only the
        # fds of their request; give ours the same.
        keep = {0, 1, 2, *fds.values()}
        drop = tuple(fd for fd in map(int, os.listdir("/proc/self/fd")) if fd not in keep)
        # Worked out before the clone, as the helper does: fewer copy-on-write faults.
        prepared = prepare(_child_plan(child_spec(spec), fds, None), drop)
        flags = clone_flags(spec) & ~_linux.CLONE_PARENT
        clone_args, pidfd = _linux.clone3_args(flags, 0, fds.get("cgroup", -1))
        pid = _clone_prepared(prepared, clone_args)
        if pid < 0:
            err = _linux.errno_now()
            raise _clone_error(err, _clone_failed(flags, err))
        return pid, pidfd.value


_direct: DirectSpawner | None = None


def prefer_direct_clone(enabled: bool = True) -> None:
    """Let ``get_spawner`` clone in-process while the process is single-threaded.

    Only for programs that stay single-threaded and small, like the CLI; services
    should keep the default (the helper), whose cost does not grow with their size.
    """
    global _direct
    _direct = DirectSpawner() if enabled else None


def get_spawner() -> SpawnHelper | DirectSpawner:
    """The spawner ``start_container`` uses: the helper, or in-process for the CLI."""
    return _direct if _direct is not None else get_helper()


_helper_var: Any = None


def get_helper() -> SpawnHelper:
    """The spawn helper of the running event loop, started on first use."""
    global _helper_var
    from anyio.lowlevel import RunVar

    if _helper_var is None:
        _helper_var = RunVar("mydocker_spawn_helper", default=None)
    helper: SpawnHelper | None = _helper_var.get()
    if helper is None or helper.broken:
        if helper is not None:
            helper.close()
        helper = SpawnHelper()
        _helper_var.set(helper)
        _close_with_event_loop(helper)
    return helper


def _close_with_event_loop(helper: SpawnHelper) -> None:
    """Close the helper when the event loop ends (both backends cancel their
    remaining background tasks then), so no helper outlives its loop."""
    import asyncio

    async def closer() -> None:
        try:
            await anyio_sleep_forever()
        finally:
            helper.close()

    from anyio import sleep_forever as anyio_sleep_forever

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio

        trio.lowlevel.spawn_system_task(closer, name="mydocker spawn helper closer")
    else:
        helper._closer_task = loop.create_task(closer())


if __name__ == "__main__":  # pragma: no cover - started by SpawnHelper
    helper_main(int(sys.argv[1]))
