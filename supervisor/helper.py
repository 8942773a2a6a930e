"""The spawn helper process: a small single-threaded server that clones containers.

Runs in its own process (``python -I -S``, started by ``spawn.SpawnHelper`` once per
event loop), never in the supervisor. Why a helper at all: cloning a Python process
fork-style from a multi-threaded host (every asyncio or trio service has worker
threads) can deadlock the child on a lock that another thread held at the instant
of the clone, and copies the host's page tables, which gets dearer the bigger the
host is. The helper is a clean exec, never runs a second thread, and stays small.

It clones with ``CLONE_PIDFD | CLONE_PARENT``: the container is the *supervisor's*
child (which reaps it through the pidfd with ``waitid(P_PIDFD)``), and
``exit_signal`` is 0, as the kernel requires for CLONE_PARENT: no SIGCHLD ever
reaches the host. Requests and replies: ``wire.py``. The helper answers requests
strictly in order, so the supervisor can keep many in flight; one it cannot serve
gets an error reply, never the end of the helper. It exits when the supervisor
closes its end of the socket or dies, and then removes the cgroups a dead
supervisor left (``cgroups.clean_up_after``).

**What the helper may load.** Every page the helper maps is copied into each clone's
page tables and torn down by each exec: every MB it maps costs every container
~40-50 us (measured at c=64 on 2 cores). So the helper loads only ``helper``,
``wire``, ``init``, ``_linux`` and the C cores they use (``_socket``, ``_signal``,
``_struct``, ``marshal``; not socket.py, signal.py, typing, collections, pickle or
anyio): 3.5 MB of anonymous memory, down from 7.3 MB. ``mounts`` (and through it
``spec``) is loaded the first time a container with a root filesystem comes. Every
page the helper *writes* while a fresh child still shares it costs a copy-on-write
fault (~2 us): hence the batches below, and ``init.warm_up``.
``tests/test_scale.py::test_the_spawn_helper_stays_small`` holds this rule.
"""

from __future__ import annotations

import _signal
import _socket
import errno
import gc
import os

from . import _linux, wire
from ._named import NamedTuple
from .init import (
    NET_PLUGGED,
    ChildSpec,
    Prepared,
    child_from_wire,
    child_plan,
    prepare,
    run_prepared,
    signals_to_reset,
    warm_up,
)


class _Job(NamedTuple):
    """One request of a batch, ready to clone."""

    rid: int
    flags: int
    clone_args: bytes
    #: where clone3 writes the child's pidfd (a ctypes.c_int)
    pidfd: object
    prepared: Prepared
    #: a network namespace fd of the pool, or -1
    netns: int
    #: an exec: the pidfd of the container's PID 1, whose PID namespace the helper
    #: enters for this one clone (the child cannot enter it itself), or -1
    pidns: int = -1


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
            msg, fds = wire.recv_fds(sock, wire.INLINE_MAX + 1, len(wire.ROLES) + 1, flags)
        except BlockingIOError:
            return batch, False
        except OSError:  # ConnectionResetError included
            return batch, True
        if not msg:
            for f in fds:  # none is expected with EOF; none may leak either
                os.close(f)
            return batch, True
        batch.append((msg, fds))
        flags = _socket.MSG_DONTWAIT
    return batch, False


class _Refused(NamedTuple):
    """A request the helper cannot serve: answered with an error, never cloned."""

    rid: int
    err: int
    detail: str


def _parse(
    msg: bytes, fds: list[int], pool: _NetnsPool, parents: set[str]
) -> tuple[int, ChildSpec, int, dict[str, int]] | _Refused | None:
    """A request's (rid, child, flags, {role: fd}), or why it is refused; None for
    one without even a readable id (nobody waits for an answer to it). The cgroup
    parents it names are added to ``parents``."""
    try:
        rid, child_tuple, byrole, flags, cgroup_parents = wire.decode_request(msg, fds)
    except (ValueError, OSError):
        return None
    try:
        if not isinstance(cgroup_parents, tuple) or not all(isinstance(p, str) for p in cgroup_parents):
            raise ValueError("cgroup parents that are not paths")
        for p in cgroup_parents:
            if p not in parents:  # not even a reference count written when known
                parents.add(p)
        child = child_from_wire(child_tuple)
        if not isinstance(flags, int):
            raise ValueError("a request of another version of mydocker")
    except Exception as e:  # noqa: BLE001 - one bad request must not end the helper
        return _Refused(rid, errno.EINVAL, f"the spawn helper cannot serve this request: {e}")
    # A pool namespace belongs to the helper's user namespace: a child in one of its
    # own (rootless) could not use it, and must own the one it gets. A child the
    # supervisor plugs into a network must have its namespace from the clone on.
    pooled = flags & _linux.CLONE_NEWNET and not flags & _linux.CLONE_NEWUSER and child.net != NET_PLUGGED
    netns = pool.take() if pooled else -1
    if netns >= 0:
        flags &= ~_linux.CLONE_NEWNET
        byrole["netns"] = netns
    return rid, child, flags, byrole


def _serve_batch(
    sock: _socket.socket,
    batch: list[tuple[bytes, list[int]]],
    reset: tuple[int, ...],
    pool: _NetnsPool,
    private: tuple[int, ...],
    parents: set[str],
) -> None:
    """Clone one container per request, back to back, then answer them all
    (``private``: the helper's socket and the supervisor's pidfd).

    Why in batches: after each clone every page of the helper is shared with the
    child, so each page the helper then writes costs it a fault and a copy. Serving
    one request at a time, it wrote ~180 pages between two clones (unpacking,
    preparing, replying, receiving). Under load the requests queue up: all of them
    are unpacked and prepared first, the clones then follow each other with next to
    nothing in between, and the replies go out at the end. With one request waiting
    (no load) this is exactly the one-at-a-time path.
    """
    parsed = []
    refused: list[_Refused] = []
    for msg, fds in batch:
        request = _parse(msg, fds, pool, parents)
        if isinstance(request, _Refused):
            refused.append(request)
        elif request is not None:
            parsed.append(request)
    # A child that may wait before its exec (the user namespace sync) first drops every fd
    # of the other requests and the helper's own: it must not hold another
    # container's pipes meanwhile. Any other child marks every inherited fd
    # close-on-exec (its last step but one), which is enough.
    batch_fds = {f for _msg, fds in batch for f in fds}
    sock_fd, supervisor_fd = private
    helpers_own = (sock_fd, *pool.private_fds())  # the supervisor's pidfd stays: see init
    jobs: list[_Job] = []
    for rid, child, flags, byrole in parsed:
        try:
            byrole["supervisor"] = supervisor_fd
            plan = child_plan(child, byrole, reset)
            drop: tuple[int, ...] = ()
            if plan.sync >= 0:
                drop = (*helpers_own, *batch_fds.difference(byrole.values()))
            clone_args, pidfd = _linux.clone3_args(flags, 0, byrole.get("cgroup", -1))
            pidns = plan.target if child.join & _linux.CLONE_NEWPID else -1
            jobs.append(
                _Job(
                    rid, flags, clone_args, pidfd, prepare(plan, drop, flags), byrole.get("netns", -1), pidns
                )
            )
        except Exception as e:  # noqa: BLE001 - one bad request must not end the helper
            refused.append(_Refused(rid, errno.EINVAL, f"the spawn helper cannot prepare the container: {e}"))
            if byrole.get("netns", -1) >= 0:
                os.close(byrole["netns"])
    # The clones, back to back: between two of them the helper writes as little as
    # it can (each page it writes while a fresh child shares it is copied, and the
    # C stack of every Python call in between counts): the clone3 call inlined,
    # which took a third of the helper's faults off. Whatever happens, every child
    # made is answered for: only its pidfd lets it be reaped.
    pids: list[int] = []
    extras: dict[int, list[int]] = {}  # intermediates' pidfds (``_clone_through_userns``)
    try:
        syscall, nr, size = _linux.raw_syscall, _linux.NR_CLONE3, _linux.CLONE_ARGS_SIZE
        for job in jobs:
            if job.pidns >= 0:
                through: list[int] = []
                pid = clone_in_pid_namespace(job.pidns, job.clone_args, job.prepared, (job.pidfd, through))
                extras[job.rid] = through
            else:
                pid = syscall(nr, job.clone_args, size)
                if pid == 0:
                    run_prepared(job.prepared)  # never returns
            pids.append(pid if pid > 0 else -_linux.errno_now())
    finally:
        for job in jobs:
            if job.netns >= 0:
                os.close(job.netns)
        made = zip(jobs, pids, strict=False)  # all of them, unless something raised
        results = [(job.rid, job.flags, job.pidfd.value, pid) for job, pid in made]  # type: ignore[attr-defined]
        _reply_batch(sock, results, refused, extras)


#: this process's own PID namespace, to come back to after an exec's clone
_own_pid_ns = -1


def clone_in_pid_namespace(
    target: int, clone_args: bytes, prepared: Prepared, through: tuple[object, list[int]] | None = None
) -> int:
    """clone3 a child into the PID namespace of process ``target`` (a pidfd): setns
    makes it the namespace of our next children, and we come back to our own right
    after. The pid, or -1 with errno set. Used by the helper and the CLI's direct
    clone (single-threaded, both).

    Without root the setns is refused (it needs CAP_SYS_ADMIN in our own user
    namespace too); ``through`` (the helper's: the clone's pidfd box, and a list for
    the intermediate's pidfd) then clones by way of ``_clone_through_userns``."""
    global _own_pid_ns
    if _own_pid_ns < 0:
        _own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    syscall, nr = _linux.raw_syscall, _linux.NR["setns"]
    if syscall(nr, target, _linux.CLONE_NEWPID) != 0:
        if through is not None and _linux.errno_now() == errno.EPERM:
            return _clone_through_userns(target, clone_args, prepared, *through)
        return -1
    pid = syscall(_linux.NR_CLONE3, clone_args, _linux.CLONE_ARGS_SIZE)
    if pid == 0:
        run_prepared(prepared)  # never returns
    err = _linux.errno_now()
    if syscall(nr, _own_pid_ns, _linux.CLONE_NEWPID) != 0:
        os._exit(70)  # never clone another container into this one: the supervisor starts a new helper
    if pid < 0:
        _linux.set_errno(err)
    return pid


def _clone_through_userns(
    target: int, clone_args: bytes, prepared: Prepared, box: object, extra: list[int]
) -> int:
    """An exec's clone without root: an intermediate process (cloned like the exec'd
    one, CLONE_PARENT: the supervisor's child) joins the container's user namespace,
    where it may join its PID namespace, which a process cannot leave again (the
    helper could not come back); it clones the exec'd process there (CLONE_PARENT
    again: the supervisor's child too), says its pid, and exits. The pidfd of the
    exec'd process goes into ``box``, the intermediate's into ``extra``: the
    supervisor reaps it. The pid, or -1 with errno set."""
    syscall, setns, nr, size = (
        _linux.raw_syscall,
        _linux.NR["setns"],
        _linux.NR_CLONE3,
        _linux.CLONE_ARGS_SIZE,
    )
    r, w = os.pipe2(os.O_CLOEXEC)
    mid = syscall(nr, clone_args, size)
    if mid == 0:
        pid = -1
        if (
            syscall(setns, target, _linux.CLONE_NEWUSER) == 0
            and syscall(setns, target, _linux.CLONE_NEWPID) == 0
        ):
            pid = syscall(nr, clone_args, size)
            if pid == 0:
                run_prepared(prepared)  # never returns
        said = pid if pid > 0 else -_linux.errno_now()
        os.write(w, said.to_bytes(8, "little", signed=True))
        os._exit(0)
    err = _linux.errno_now()
    os.close(w)
    try:
        if mid < 0:
            _linux.set_errno(err)
            return -1
        extra.append(box.value)  # type: ignore[attr-defined]
        said = int.from_bytes(os.read(r, 8).ljust(8, b"\xff"), "little", signed=True)
    finally:
        os.close(r)
    if said <= 0:
        _linux.set_errno(-said if said < -1 else errno.EIO)
        return -1
    try:
        # the supervisor's child, which only the supervisor reaps: the pid stays its
        box.value = os.pidfd_open(said)  # type: ignore[attr-defined]
    except OSError as e:
        _linux.set_errno(e.errno or errno.EIO)
        return -1
    return said


def _reply_batch(
    sock: _socket.socket,
    results: list[tuple[int, int, int, int]],
    refused: list[_Refused],
    extras: dict[int, list[int]] | None = None,
) -> None:
    """Answer each (request id, clone flags, pidfd, pid or -errno), and each refused
    request; close the pidfds. ``extras``: pidfds of processes the supervisor must
    reap besides (intermediates), sent after the child's own."""
    extras = extras or {}
    try:
        for rid, flags, pidfd, pid in results:
            more = extras.get(rid, [])
            if pid < 0:
                wire.send_fds(sock, wire.encode_reply(rid, 0, -pid, wire.clone_failed(flags, -pid)), more)
            else:
                wire.send_fds(sock, wire.encode_reply(rid, pid), [pidfd, *more])
        for r in refused:
            wire.send_fds(sock, wire.encode_reply(r.rid, 0, r.err, r.detail), [])
    finally:
        for _rid, _flags, pidfd, pid in results:
            if pid > 0:
                os.close(pidfd)
        for more in extras.values():
            for fd in more:
                os.close(fd)


def _load_base_filter(fd: int) -> None:
    """Load the base seccomp program (``seccomp.split_programs``) from a memfd: every
    child inherits it, and adds only the closing part (ours stays, for our lifetime)."""
    program = os.pread(fd, os.fstat(fd).st_size, 0)
    os.close(fd)
    call, args, _text = _linux.seccomp_filter_call(program)
    if call(*args) != 0:
        os._exit(71)  # the supervisor sees the helper gone and clones without one


def helper_main(fd: int, base_filter: int = -1, bounding: int = -1) -> None:
    """Entry point of the spawn helper process; serves until EOF on ``fd``. With a
    ``base_filter`` memfd and a ``bounding`` set (a mask), a helper for one
    confinement (``spawn.get_helper``): its children start with both in place."""
    # Every signal at its default, so that the children have none to reset (execve
    # resets handled signals, but keeps ignored ones ignored): Python ignores SIGPIPE
    # (the replies go with MSG_NOSIGNAL instead) and SIGXFSZ, and handles SIGINT. The
    # helper has a session of its own, so no terminal sends it signals.
    for sig in (_signal.SIGINT, _signal.SIGPIPE, _signal.SIGXFSZ):
        _signal.signal(sig, _signal.SIG_DFL)
    sock = _socket.socket(fileno=fd)
    if base_filter >= 0:
        _load_base_filter(base_filter)
    if bounding >= 0:
        try:
            _linux.drop_bounding(bounding)
        except OSError:
            os._exit(71)  # as for the filter: the supervisor clones without us
    # To tell, at EOF, a supervisor that closed us from one that was killed.
    supervisor_fd = os.pidfd_open(os.getppid())
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
    parents: set[str] = set()  # where the supervisor's containers have cgroups
    while not eof:
        if pool.wants_more() and _idle(sock):
            pool.fill_one()
            continue
        batch, eof = _receive_batch(sock)
        try:
            _serve_batch(sock, batch, reset, pool, (sock.fileno(), supervisor_fd), parents)
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

        clean_up_after(supervisor_fd, parents)
    except Exception:  # noqa: BLE001 - best effort on the way out; the next run sweeps
        pass
