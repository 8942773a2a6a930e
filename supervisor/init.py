"""The synchronous stage inside the new namespaces, between clone3 and execve.

This code runs in the child that the spawn helper made with clone3: a copy of a
single-threaded interpreter, already inside its new PID, mount, UTS, IPC and network
namespaces. It is deliberately tiny and boring: no event loop, no threads, no logging,
no imports beyond what the helper already loaded. Each step runs in order; the first
one that fails writes ``step NUL errno NUL detail`` to the error pipe (close-on-exec)
and ``_exit``s. When execve succeeds the kernel closes the pipe, so the supervisor
reads EOF with no data: that is how it knows the command really started.
"""

from __future__ import annotations

import _signal  # signal's C core: signal.py loads enum (see TYPE_CHECKING below)
import errno
import os

from . import _linux, wire
from ._named import NamedTuple

# What typing.TYPE_CHECKING is, without importing typing (typing is ~1 MB; helper.py
# says what the spawn helper may load).
TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable

    from .spec import ContainerSpec

    #: one step of the child: (name reported on failure, callable, its arguments, and
    #: for a raw C call, which returns -1 and leaves errno on failure, the call as text
    #: for the message; None for a call that raises OSError itself)
    Step = tuple[str, Callable[..., object], tuple[object, ...], "str | None"]

# mounts (and through it spec and dataclasses) is imported only where a root
# filesystem is used (helper.py: what the helper may load). A container with a root
# filesystem has it loaded in the helper by the time it is cloned: ``prepare``
# imports it for its CHILD_FUNCTIONS.

#: ``ChildSpec.net``: a network namespace of its own; one the supervisor plugs into a network
NET_OWN, NET_PLUGGED = 1, 2

#: exit status of a child that failed before exec (the supervisor reports the
#: error from the pipe; the status only matters if nobody reads it)
EXIT_SETUP_FAILED = 125


#: how the child execs: (candidate paths, argv, environment as ``NAME=value``, program
#: name), bytes all the way, so that execve has nothing left to encode
ExecArgs = tuple[tuple[bytes, ...], tuple[bytes, ...], tuple[bytes, ...], str]
#: ``ExecArgs`` with argv and the environment as the C arrays of a raw execve
#: (made by ``prepare`` in the parent)
ExecCall = tuple[tuple[bytes, ...], object, object, str]

#: a filesystem step of a root filesystem (mounts.child_ops) as it travels to the
#: spawn helper: (name, the function's name in ``mounts.CHILD_FUNCTIONS``, args)
FsOpRef = tuple[str, str, tuple[object, ...]]


class Confinement(NamedTuple):
    """What confines the child, worked out by the supervisor (``confine.py``): plain
    ints and bytes, applied between the mounts and the exec (``_confine_steps``)."""

    #: capability masks (bit N = capability N)
    bounding: int
    effective: int
    permitted: int
    uid: int
    gid: int
    #: the supplementary groups; None in a user namespace that refuses setgroups
    groups: tuple[int, ...] | None
    #: the kernel's last capability (every one up to it not in ``bounding`` is dropped)
    last_cap: int
    #: the compiled seccomp program (``seccomp.compile_profile``), or None
    seccomp: bytes | None
    seccomp_flags: int
    no_new_privs: bool
    #: the same filter in two parts (``seccomp.split_programs``): a base a spawn
    #: helper loads once, and what each of its children adds; None: whole only. The
    #: supervisor picks one before the request leaves it; the child never sees this.
    split: tuple[bytes, bytes] | None = None
    #: rlimits to set, ``(docker's name, resource, soft, hard)`` (``ulimits.child_rlimits``)
    rlimits: tuple[tuple[str, int, int, int], ...] = ()
    #: the inheritable and ambient capability masks (an OCI config may ask for them;
    #: mydocker's own containers have none)
    inheritable: int = 0
    ambient: int = 0


class ChildSpec(NamedTuple):
    """What the child needs of a ``ContainerSpec``, worked out by the supervisor.

    Why not the spec itself: the spawn helper forks for every container, and every
    page it writes between two clones costs it a copy-on-write fault. Unpacking a
    spec (dataclasses, a frozenset, the limits) and deriving the environment, the PATH
    search and the mount list from it touched a few dozen pages per container; this
    digest is plain tuples and bytes (marshal-able: it travels to the helper as a
    tuple), made where forking does not make work dearer.
    """

    #: make / private (a mount namespace of its own)
    mount: bool
    #: mount a fresh /proc (a PID namespace and the host's root)
    mount_proc: bool
    #: the root filesystem's steps, () without one
    fs_ops: tuple[FsOpRef, ...]
    #: the hostname to set (a UTS namespace of its own), else None
    hostname: str | None
    #: 0: the host's network namespace; ``NET_OWN``: one of its own (bring up lo
    #: unless the helper did); ``NET_PLUGGED``: one of its own made at the clone,
    #: which the supervisor plugs into a network (``network/``) while the child
    #: waits on its sync pipe (never one of the helper's pool: the supervisor must
    #: reach the child's namespace through /proc/PID/ns/net at that wait)
    net: int
    tty: bool
    cwd: str | None
    #: the ``cgroup.procs`` of its cgroup v1 directories: the child writes itself
    #: there before anything else (no clone can be born into a v1 cgroup)
    placement: tuple[bytes, ...]
    #: 0: no user namespace of its own; 1: cloned into one (rootless: the supervisor
    #: writes its maps before the child's first step); 2: enters one after its mounts
    #: (``--userns auto``: its mounts are made as the host's root)
    userns: int
    #: the init to exec as PID 1 (``--init``: tini, the path in the container), else None
    init: bytes | None
    #: the init's own arguments before ``--`` (``-s`` when it is not PID 1)
    init_args: tuple[bytes, ...]
    exec: ExecArgs
    #: an exec into a running container: the namespaces (CLONE_NEW* flags) to join
    #: through its PID 1's pidfd (the "target" fd); its PID namespace is joined by the
    #: process that clones (setns for its children), before the clone. 0: a new one
    join: int
    #: None: nothing is dropped (for tests of the bare clone path only)
    confine: Confinement | None


def child_to_wire(child: ChildSpec) -> tuple[object, ...]:
    """A ``ChildSpec`` as plain tuples (marshal takes no tuple subclass)."""
    conf = child.confine
    return (*child[:-1], tuple(conf) if conf is not None else None)


def child_from_wire(data: tuple[object, ...]) -> ChildSpec:
    """``child_to_wire``'s tuples back as a ``ChildSpec``.

    Raises:
        TypeError, ValueError: a tuple of another shape (another mydocker version).
    """
    if len(data) != len(ChildSpec._fields):
        raise ValueError(f"a child of {len(data)} fields, not {len(ChildSpec._fields)}")
    conf = data[-1]
    if conf is not None:
        if not isinstance(conf, tuple) or len(conf) != len(Confinement._fields):
            raise ValueError("a confinement of another shape")
        conf = Confinement._make(conf)
    return ChildSpec._make((*data[:-1], conf))


_candidates_cache: dict[tuple[str, str], tuple[bytes, ...]] = {}


def _exec_args(argv: tuple[str, ...], env: dict[str, str]) -> ExecArgs:
    """execvpe's PATH search, worked out before the clone: the candidate paths."""
    prog = argv[0]
    path = env.get("PATH", "") or os.defpath
    candidates = _candidates_cache.get((prog, path))
    if candidates is None:
        if "/" in prog:
            candidates = (os.fsencode(prog),)
        else:
            candidates = tuple(os.fsencode(os.path.join(d or ".", prog)) for d in path.split(":"))
        if len(_candidates_cache) >= 256:  # a bound: commands are few, but not always
            _candidates_cache.clear()
        _candidates_cache[prog, path] = candidates
    fse = os.fsencode
    return candidates, tuple(map(fse, argv)), tuple(fse(f"{k}={v}") for k, v in env.items()), prog


def child_spec(
    spec: ContainerSpec,
    fs_ops: tuple[FsOpRef, ...] = (),
    confine: Confinement | None = None,
    env: dict[str, str] | None = None,
    init: str | None = None,
    *,
    placement: tuple[str, ...] = (),
    userns: int = 0,
) -> ChildSpec:
    """Digest a (resolved) spec for the child (see ``ChildSpec``): ``fs_ops`` are its
    root filesystem's steps (``mounts.child_ops``), in the form they travel in;
    ``confine`` its confinement; ``env`` its environment (default
    ``spec.full_env()``); ``init`` the path of the init it execs as PID 1."""
    ns = spec.namespaces
    mount = "mount" in ns
    return ChildSpec(
        mount=mount,
        mount_proc=mount and spec.rootfs is None and "pid" in ns,
        fs_ops=fs_ops,
        hostname=spec.effective_hostname if "uts" in ns else None,
        net=(NET_PLUGGED if spec.network is not None else NET_OWN) if "net" in ns else 0,
        tty=spec.tty,
        cwd=spec.cwd,
        placement=tuple(map(os.fsencode, placement)),
        userns=userns,
        init=os.fsencode(init) if init is not None else None,
        init_args=() if "pid" in ns else (b"-s",),  # a subreaper, when it is not PID 1
        exec=_exec_args(spec.command, spec.full_env() if env is None else env),
        join=0,
        confine=confine,
    )


def exec_child_spec(
    argv: tuple[str, ...],
    env: dict[str, str],
    cwd: str,
    tty: bool,
    join: int,
    confine: Confinement | None,
    *,
    placement: tuple[str, ...] = (),
) -> ChildSpec:
    """The child of an exec into a running container: it writes itself into the
    ``cgroup.procs`` files of ``placement`` (the container's v1 cgroups), joins the
    namespaces in ``join`` (CLONE_NEW* flags, the user namespace first), takes the
    container's confinement, and execs ``argv`` in ``cwd`` with ``env``."""
    return ChildSpec(
        mount=False,
        mount_proc=False,
        fs_ops=(),
        hostname=None,
        net=False,
        tty=tty,
        cwd=cwd,
        placement=tuple(map(os.fsencode, placement)),
        userns=0,
        init=None,
        init_args=(),
        exec=_exec_args(argv, env),
        join=join,
        confine=confine,
    )


class ChildPlan(NamedTuple):
    """What the child needs besides its ``ChildSpec``: fd numbers valid in the child.

    A NamedTuple, not a frozen dataclass: the helper makes one per container, and a
    frozen dataclass's ``__init__`` runs a Python-level ``__setattr__`` per field."""

    child: ChildSpec
    stdin: int
    stdout: int
    stderr: int
    errpipe: int
    #: a user namespace: the child blocks reading this until the supervisor mapped it
    sync: int = -1
    #: wait on ``sync`` before the first step whatever else (an OCI container: its
    #: runtime places it in its v1 cgroups and sets its limits meanwhile)
    hold: bool = False
    #: signals to reset to SIG_DFL (``signals_to_reset()`` taken before the clone);
    #: None: work it out in the child (slower: ~0.3 ms of copy-on-write faults)
    reset_signals: tuple[int, ...] | None = None
    #: ``-t`` with a root filesystem: a socket to send the pty master back on; the
    #: child opens the pty in its own devpts and ignores stdin/stdout/stderr
    console: int = -1
    #: a network namespace the spawn helper made ahead of time (lo already up): the
    #: child joins it instead of having clone3 create one
    netns: int = -1
    #: a pidfd of the process PR_SET_PDEATHSIG watches: if it died before the child
    #: asked for the signal, nothing would ever send it
    supervisor: int = -1
    #: an exec: the pidfd of the container's PID 1, whose namespaces it joins
    target: int = -1
    #: an OCI container (``oci/``): no parent death signal, since its creator exits
    #: and leaves it to the caller's subreaper until ``delete``
    detached: bool = False
    #: an OCI container's exec fifo (an O_PATH fd): once set up, the child says so on
    #: its error pipe (``wire.report_created``) and blocks opening the fifo for
    #: writing until ``start`` opens it for reading; only then does it exec
    start_fifo: int = -1
    #: the host's /proc (O_PATH) through which the fifo is reopened: the container
    #: may have no /proc of its own (an OCI container without a mount namespace is
    #: only chrooted); closed before the exec, as every fd (close-on-exec)
    start_proc: int = -1
    #: namespaces to join first, as (fd, CLONE_NEW* type): an OCI config's paths
    join_fds: tuple[tuple[int, int], ...] = ()


def child_plan(child: ChildSpec, fds: dict[str, int], reset: tuple[int, ...] | None) -> ChildPlan:
    """The plan of a child whose fds (by ``wire.ROLES``, plus the helper's own
    "netns") are numbered as in the process that clones it."""
    return ChildPlan(
        child=child,
        stdin=fds["stdin"],
        stdout=fds["stdout"],
        stderr=fds["stderr"],
        errpipe=fds["errpipe"],
        sync=fds.get("sync", -1),
        reset_signals=reset,
        console=fds.get("console", -1),
        netns=fds.get("netns", -1),
        supervisor=fds.get("supervisor", -1),
        target=fds.get("target", -1),
    )


class _StepFailed(Exception):
    def __init__(self, step: str, err: int, detail: str = "") -> None:
        super().__init__(step)
        self.step = step
        self.err = err
        self.detail = detail


def _call(name: str, fn: Callable[..., int], *args: object) -> int:
    """``_step`` for a step with a result."""
    try:
        return fn(*args)
    except OSError as e:
        raise _StepFailed(name, e.errno or 0, str(e)) from None


#: every signal a handler can be set for, worked out once before any clone
_CATCHABLE = tuple(sorted(_signal.valid_signals() - {_signal.SIGKILL, _signal.SIGSTOP}))


def signals_to_reset() -> tuple[int, ...]:
    """The signals whose disposition is not the default: ignored (Python ignores
    SIGPIPE and SIGXFSZ, a CLI may ignore more) or with a Python handler (which would
    run in the child until exec). Call it in the parent, before the clone."""
    getsignal, default = _signal.getsignal, _signal.SIG_DFL
    return tuple(sig for sig in _CATCHABLE if getsignal(sig) != default)


# Steps that are the same for every container, built once in the parent: raw calls
# (see _linux) with plain int and bytes arguments, which ctypes passes as they are.
_ROOT_PRIVATE_FLAGS = _linux.MS_REC | _linux.MS_PRIVATE
_MAKE_ROOT_PRIVATE: Step = (
    "make / private",
    _linux.raw_mount,
    (None, b"/", None, _ROOT_PRIVATE_FLAGS, None),
    f"mount(None, '/', None, {_ROOT_PRIVATE_FLAGS:#x}, None)",
)
_PROC_FLAGS = _linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC
_MOUNT_PROC: Step = (
    "mount /proc",
    _linux.raw_mount,
    (b"proc", b"/proc", b"proc", _PROC_FLAGS, None),
    f"mount('proc', '/proc', 'proc', {_PROC_FLAGS:#x}, None)",
)
_PDEATHSIG: Step = (
    "prctl(PR_SET_PDEATHSIG)",
    _linux.raw_prctl,
    (_linux.PR_SET_PDEATHSIG, _signal.SIGKILL, 0, 0, 0),
    f"prctl({_linux.PR_SET_PDEATHSIG}, {_signal.SIGKILL})",
)
_CLOSE_RANGE: Step = ("close_range", *_linux.close_range_cloexec_call(3))
_UNDUMPABLE: Step = (
    "prctl(PR_SET_DUMPABLE)",
    _linux.raw_prctl,
    (_linux.PR_SET_DUMPABLE, 0, 0, 0, 0),
    f"prctl({_linux.PR_SET_DUMPABLE}, 0)",
)
_BRING_UP_LO: Step = ("bring up lo", _linux.raw_loopback_up, (), "socket(AF_INET), ioctl(SIOCSIFFLAGS, 'lo')")
_SETSID: Step = ("setsid", _linux.raw_setsid, (), "setsid()")
_STDIO_NAMES = ("dup2 stdio 0", "dup2 stdio 1", "dup2 stdio 2")
_F_GETFD, _F_SETFD = 1, 2  # <fcntl.h>; F_SETFD 0: clear FD_CLOEXEC
_SIG_DFL = _signal.SIG_DFL


def _namespace_steps(child: ChildSpec, net_ready: bool) -> list[Step]:
    steps: list[Step] = []
    if child.mount:
        # First of all: nothing we mount may propagate back to the host.
        steps.append(_MAKE_ROOT_PRIVATE)
    if child.fs_ops:  # without a mount namespace: only an OCI container's chroot
        from .mounts import CHILD_FUNCTIONS  # loaded in the parent, before the clone

        steps += [(name, CHILD_FUNCTIONS[fn], args, None) for name, fn, args in child.fs_ops]
    if child.mount and child.mount_proc:
        steps.append(_MOUNT_PROC)
    if child.hostname is not None:
        name = child.hostname.encode()
        text = f"sethostname({child.hostname!r})"
        steps.append(("sethostname", _linux.raw_sethostname, (name, len(name)), text))
    if child.net and not net_ready:
        steps.append(_BRING_UP_LO)
    return steps


def _stdio_steps(plan: ChildPlan) -> list[Step]:
    # A session of our own: the container must not share the supervisor's terminal
    # job control, and with a tty the pty becomes the session's controlling terminal.
    steps = [_SETSID]
    if plan.child.tty:
        ctty = (plan.stdin, _linux.TIOCSCTTY, 0)
        steps.append(("set controlling terminal", _linux.raw_ioctl, ctty, f"ioctl({plan.stdin}, TIOCSCTTY)"))
    for target, fd in ((0, plan.stdin), (1, plan.stdout), (2, plan.stderr)):
        if fd != target:
            steps.append((_STDIO_NAMES[target], _linux.raw_dup2, (fd, target), f"dup2({fd}, {target})"))
        else:  # inherited as it is, close-on-exec cleared
            text = f"fcntl({fd}, F_SETFD, 0)"
            steps.append((_STDIO_NAMES[target], _linux.raw_fcntl, (fd, _F_SETFD, 0), text))
    steps.append(_CLOSE_RANGE)
    return steps


def _console_stdio(plan: ChildPlan) -> None:
    """With ``-t`` and a root filesystem: the pty is made in the child, after
    pivot_root, so its stdio steps cannot be worked out before the clone."""
    from . import mounts  # loaded already (see the imports): no import runs in the child

    slave = _call("open the container's terminal", mounts.open_console, plan.console, not plan.child.join)
    _run_steps(_stdio_steps(plan._replace(stdin=slave, stdout=slave, stderr=slave)))


def _run_steps(steps: list[Step]) -> None:
    for name, fn, args, raw in steps:
        try:
            if fn(*args) == -1 and raw is not None:
                err = _linux.errno_now()
                raise _StepFailed(name, err, str(OSError(err, f"{raw} failed: {os.strerror(err)}")))
        except OSError as e:
            raise _StepFailed(name, e.errno or 0, str(e)) from None


def _exec(how: ExecCall) -> None:
    """execvpe with the container's PATH; never returns."""
    candidates, argv, envp, prog = how
    several = len(candidates) > 1
    saw_eacces = False
    for cand in candidates:
        _linux.raw_execve(cand, argv, envp)
        err = _linux.errno_now()
        if err in (errno.ENOENT, errno.ENOTDIR) and several:
            continue
        if err == errno.EACCES and several:
            saw_eacces = True
            continue
        raise _StepFailed("exec", err, prog)
    raise _StepFailed("exec", errno.EACCES if saw_eacces else errno.ENOENT, prog)


def _exec_init(how: ExecCall, init: tuple[bytes, object, object]) -> None:
    """``--init``: check that the command can be found and run (the same PATH search
    as ``_exec``, with access(2)), so that a missing command is the same typed error
    as without an init, then exec the init with the command as its arguments. Never
    returns."""
    candidates, _argv, _envp, prog = how
    path, init_argv, envp = init
    _check_command(candidates, prog)
    _linux.raw_execve(path, init_argv, envp)
    raise _StepFailed("exec", _linux.errno_now(), f"{path.decode(errors='replace')} (--init)")


_X_OK = 1  # <unistd.h>


def _check_command(candidates: tuple[bytes, ...], prog: str) -> None:
    """The PATH search of ``_exec`` with access(2): raise the error the exec would
    meet (a command not found or not executable) without exec'ing."""
    found = errno.ENOENT
    for cand in candidates:
        if _linux.raw_access(cand, _X_OK) == 0:
            found = 0
            break
        err = _linux.errno_now()
        if err == errno.EACCES:
            found = errno.EACCES
        elif err not in (errno.ENOENT, errno.ENOTDIR) or len(candidates) == 1:
            found = err
    if found:
        raise _StepFailed("exec", found, prog)


def _supervisor_gone(pollfd: object) -> None:
    # PR_SET_PDEATHSIG only covers a parent that dies after it was asked for: one that
    # died in between (its pidfd readable) must not leave us to run on unwatched.
    if _linux.raw_poll(pollfd, 1, 0) > 0:
        os._exit(EXIT_SETUP_FAILED)


def _join_cgroup(procs: bytes) -> None:
    # "0": the writer itself (cgroups.py says why the child, not the supervisor)
    fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)


def _wait_until_placed(sync: int, close: bool = True) -> None:
    # EOF without a byte means: give up (the supervisor could not do its part).
    if not wire.wait_released(sync, close):
        os._exit(EXIT_SETUP_FAILED)


def _enter_userns(errpipe: int, sync: int) -> None:
    """``--userns auto``: after the mounts, which root made, a user namespace of our
    own; the supervisor writes its maps when told, on the error pipe."""
    if _linux.raw_syscall(_linux.NR["unshare"], _linux.CLONE_NEWUSER) != 0:
        err = _linux.errno_now()
        raise OSError(err, f"unshare(CLONE_NEWUSER) failed: {os.strerror(err)}")
    wire.ask_for_maps(errpipe)
    _wait_until_placed(sync)


def _wait_for_start(
    errpipe: int, fifo: int, proc: int, path: bytes, candidates: tuple[bytes, ...], prog: str
) -> None:
    """An OCI container, set up and confined: check that its command can be exec'd
    (an error of create, as runc makes it), tell the creator (who then exits), and
    block until ``start`` opens the exec fifo (runc's exec.fifo, reopened through
    /proc/self/fd as runc does: the fd is O_PATH, its path outside our root)."""
    _check_command(candidates, prog)
    wire.report_created(errpipe)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)
        os.close(fifo)
        os.close(proc)


class Prepared(NamedTuple):
    """Everything the child does, worked out before the clone by ``prepare``."""

    #: fds to close first (the helper's own, other requests')
    drop_fds: tuple[int, ...]
    #: signals to reset to their default
    reset: tuple[int, ...]
    #: whether the signal mask needs clearing
    masked: bool
    steps: list[Step]
    exec: ExecCall
    #: ``--init``: (the init's path, its argv and the environment as C arrays), or None
    init: tuple[bytes, object, object] | None
    errpipe: int


def prepare(plan: ChildPlan, drop_fds: tuple[int, ...] = (), clone_flags: int = 0) -> Prepared:
    """Work out, in the parent and before the clone, every step of the child.

    Why: the child is a copy-on-write copy of the parent, so every page it writes,
    and touching a Python object writes its reference count, costs a page fault and
    a page copy (~1.5 us each; a few hundred per container when the child built its
    own argv, environment, mount arguments and error messages). Here the child gets
    flat lists of ready calls with encoded arguments and only has to make them.
    ``drop_fds`` are closed first thing in the child: fds it must not keep (the
    helper's own, other requests', or the whole CLI's), as one that waits before
    its exec (the user namespace sync) may wait long. ``clone_flags``: those it will
    be cloned with (a user namespace made by the clone gives it every capability
    there, whatever ``child.userns`` says).
    """
    child = plan.child
    reset = signals_to_reset() if plan.reset_signals is None else plan.reset_signals
    # execve keeps the signal mask: the command must start with nothing blocked. The
    # parent is single-threaded, so its mask now is the child's at the clone.
    masked = bool(_signal.pthread_sigmask(_signal.SIG_BLOCK, ()))
    # If the supervisor dies, so do we (the parent is the supervisor, thanks to
    # CLONE_PARENT); cgroups clean up whatever escapes. Not an OCI container: its
    # creator exits by design.
    steps: list[Step] = [] if plan.detached else [_PDEATHSIG]
    if plan.supervisor >= 0:
        pollfd = _linux.pollfd_in(plan.supervisor)
        steps.append(("check the supervisor", _supervisor_gone, (pollfd,), None))
    late = child.userns == 2
    # Before anything else: into its cgroups (it must not run outside its limits)...
    steps += [("enter its cgroups", _join_cgroup, (procs,), None) for procs in child.placement]
    if plan.sync >= 0 and (child.userns == 1 or child.net == NET_PLUGGED or plan.hold):
        # ... with a user namespace of its own, its uid and gid maps written, and on
        # a network, its eth0 configured (nothing runs before it is there).
        steps.append(("wait for the supervisor", _wait_until_placed, (plan.sync, not late), None))
    if child.userns == 1:
        # Root of the new user namespace, now that its maps are written: the ids we
        # were cloned with are the parent's, which the maps of an OCI config need not
        # map (then nothing we create could be owned). A rootless parent mapped its
        # own ids to 0: no change, and no parent death signal lost.
        steps += [("become root in the user namespace", *_linux.setresgid_call(0))]
        steps += [("become root in the user namespace", *_linux.setresuid_call(0))]
        if not plan.detached:
            steps.append(_PDEATHSIG)  # an id change clears it
    if plan.detached or child.join:
        # Until its exec the child is a copy of our interpreter: a process of the
        # container (an OCI container waits "created" for as long as its caller
        # likes; an exec joins a running one) must not reach it through
        # /proc/PID/exe or /proc/PID/mem (runc CVE-2019-5736). Not dumpable, only
        # CAP_SYS_PTRACE of the host's user namespace opens those; the exec of the
        # command makes it dumpable again. After the maps: a rootless supervisor
        # writes them through /proc/PID.
        steps.append(_UNDUMPABLE)
    if child.join:
        # An exec: into the container's namespaces (setns through a pidfd joins them
        # all at once, the user namespace first); the PID one the cloner joined.
        join = child.join & ~_linux.CLONE_NEWPID
        if os.geteuid() != 0:
            # without root the cloner joined the user namespace already: it had to, to
            # enter the PID one (helper._clone_through_userns); a second join is EINVAL
            join &= ~_linux.CLONE_NEWUSER
        steps.append(("join the container", *_linux.setns_call(plan.target, join)))
    for fd, nstype in sorted(plan.join_fds, key=lambda j: j[1] != _linux.CLONE_NEWUSER):
        steps.append(("join the namespace", *_linux.setns_call(fd, nstype)))
    if plan.netns >= 0:
        # Before anything that looks at the network namespace (a sysfs mount of a
        # root filesystem shows the mounter's): made ready by the helper while idle,
        # it takes the ~0.5 ms of creating one off the container's start.
        steps.append(("join the network namespace", *_linux.setns_call(plan.netns, _linux.CLONE_NEWNET)))
        steps.append(("join the network namespace", _linux.raw_close, (plan.netns,), f"close({plan.netns})"))
    steps += _namespace_steps(child, net_ready=plan.netns >= 0)
    if plan.console >= 0:
        steps.append(("open the container's terminal", _console_stdio, (plan,), None))
    else:
        steps += _stdio_steps(plan)
    if child.confine is not None and child.confine.rlimits:
        # After the mounts and the stdio (a low nofile would fail their opens), before
        # a user namespace of its own and the confinement take CAP_SYS_RESOURCE, which
        # raising a hard limit needs.
        steps += rlimit_steps(child.confine.rlimits)
    if late:
        steps.append(("enter a user namespace", _enter_userns, (plan.errpipe, plan.sync), None))
    if child.confine is not None:
        steps += confine_steps(
            child.confine, rearm=not plan.detached, held=_bounding_at_confinement(plan, clone_flags)
        )
    if child.cwd:
        # after the uid change: the directory is entered as the container's user
        cwd = os.fsencode(child.cwd)
        steps.append((f"chdir {child.cwd}", _linux.raw_chdir, (cwd,), f"chdir({child.cwd!r})"))
    candidates, argv, envp, prog = child.exec
    if plan.start_fifo >= 0:
        fifo = b"self/fd/%d" % plan.start_fifo
        wait = (plan.errpipe, plan.start_fifo, plan.start_proc, fifo, candidates, prog)
        steps.append(("wait for start", _wait_for_start, wait, None))
    envp_array = _linux.c_string_array(envp)
    how = (candidates, _linux.c_string_array(argv), envp_array, prog)
    init = None
    if child.init is not None:
        init_argv = _linux.c_string_array((child.init, *child.init_args, b"--", *argv))
        init = (child.init, init_argv, envp_array)
    return Prepared(drop_fds, reset, masked, steps, how, init, plan.errpipe)


def _bounding_at_confinement(plan: ChildPlan, clone_flags: int) -> int:
    """The bounding set the child has when its confinement starts: its cloner's (a
    spawn helper for one confinement dropped it already: ``_linux.drop_bounding``),
    unless a user namespace comes first, created or joined, where it has every
    capability again."""
    child = plan.child
    if (
        child.userns
        or (clone_flags | child.join) & _linux.CLONE_NEWUSER
        or any(nstype == _linux.CLONE_NEWUSER for _fd, nstype in plan.join_fds)
    ):
        return _linux.ALL_CAPS
    return _linux.bounding_set()


#: the rlimit steps of each distinct set of rlimits, built once per process (their
#: ctypes buffers and texts would otherwise be made for every container)
_rlimit_cache: dict[tuple[tuple[str, int, int, int], ...], list[Step]] = {}


def rlimit_steps(rlimits: tuple[tuple[str, int, int, int], ...]) -> list[Step]:
    """One raw ``prlimit64`` per ``(name, resource, soft, hard)``."""
    steps = _rlimit_cache.get(rlimits)
    if steps is None:
        steps = [(f"set the {name} rlimit", *_linux.prlimit_call(*r)) for name, *r in rlimits]
        if len(_rlimit_cache) >= 64:
            _rlimit_cache.clear()
        _rlimit_cache[rlimits] = steps
    return steps


#: the steps of each distinct confinement, built once per process: a few dozen raw
#: calls whose arguments (error texts, ctypes buffers) would otherwise be made again
#: for every container, between two clones of the spawn helper
_confine_cache: dict[tuple[Confinement, bool, int], list[Step]] = {}
_KEYRING: Step = (
    "join a new session keyring",
    _linux.raw_syscall,
    (_linux.NR["keyctl"], _linux.KEYCTL_JOIN_SESSION_KEYRING, None),
    "keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)",
)


def confine_steps(conf: Confinement, rearm: bool = True, held: int = _linux.ALL_CAPS) -> list[Step]:
    """The child's confinement, in runc's order (``_linux.identity_calls_after_seccomp``
    says why this order): a session keyring of its own (the session keyring is not
    namespaced: the caller's keys would be reachable), the bounding set, then the
    seccomp filter while CAP_SYS_ADMIN is still effective (the kernel wants it, or
    no_new_privs), then groups, gid, uid and the capability sets. With
    ``no_new_privs`` the filter comes last instead, right before the exec. ``rearm``:
    set the parent death signal again after the uid change (which clears it);
    ``held``: the child's bounding set by then, of which only what the container
    must not have is dropped."""
    steps = _confine_cache.get((conf, rearm, held))
    if steps is not None:
        return steps
    steps = [_KEYRING]
    steps += [
        ("drop capabilities", *c)
        for c in _linux.identity_calls_before_seccomp(conf.bounding, conf.last_cap, held)
    ]
    load: list[Step] = []
    if conf.seccomp is not None:
        load = [("load the seccomp filter", *_linux.seccomp_filter_call(conf.seccomp, conf.seccomp_flags))]
    if not conf.no_new_privs:
        steps += load
    after = _linux.identity_calls_after_seccomp(
        conf.effective,
        conf.permitted,
        conf.uid,
        conf.gid,
        conf.groups,
        pdeathsig=_signal.SIGKILL if rearm else 0,
        inheritable=conf.inheritable,
        ambient=conf.ambient,
    )
    steps += [("set the user and capabilities", *c) for c in after]
    if conf.no_new_privs:
        steps.append(("set no_new_privs", *_linux.no_new_privs_call()))
        steps += load
    if len(_confine_cache) >= 64:
        _confine_cache.clear()
    _confine_cache[conf, rearm, held] = steps
    return steps


def run_prepared(prepared: Prepared) -> None:
    """Execute a ``prepare``d plan in the freshly cloned child. Never returns."""
    failure = _child(prepared)
    if isinstance(failure, _StepFailed):
        wire.report_failure(prepared.errpipe, failure.step, failure.err, failure.detail)
    else:
        wire.report_failure(prepared.errpipe, "init", 0, f"{type(failure).__name__}: {failure}")
    os._exit(EXIT_SETUP_FAILED)


def _child(prepared: Prepared) -> BaseException:
    """The child's work, up to exec: returns only when it failed, with why. A few
    frames and C calls (see ``prepare``), warmed up in the parent (``warm_up``)."""
    drop_fds, reset, masked, steps, how, init, _errpipe = prepared
    try:
        for fd in drop_fds:
            try:
                os.close(fd)
            except OSError:  # e.g. the fd that listed /proc/self/fd, gone already
                pass
        # execve keeps ignored signals ignored and the mask as it is: give the command
        # a clean slate, as a shell would. Only the few signals that are not at the
        # default are touched: resetting all 62 cost ~0.4 ms per container.
        for sig in reset:
            try:
                _signal.signal(sig, _SIG_DFL)
            except (OSError, ValueError):
                pass
        if masked:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
        _run_steps(steps)
        if init is not None:
            _exec_init(how, init)
        _exec(how)
    except BaseException as e:  # noqa: BLE001 - the child must never unwind into the helper
        return e
    return _StepFailed("exec", 0, "returned")  # not reached: _exec raises or execs


#: how often ``warm_up`` runs the child's code: past the interpreter's warm-up delay
#: (8 calls on 3.11) and its specializing instructions' counters
_WARM_UP_ROUNDS = 32


def warm_up() -> None:
    """Run the child's code in this (parent) process with harmless calls.

    The interpreter writes into a code object while it warms up: a call counter,
    then the quickened and specialized bytecode. Run for the first time in a child,
    that is a copy-on-write fault per code object page, in every child; run here a
    few dozen times, it is done once. The calls made are ``fcntl(0, F_GETFD)`` and
    execve of the empty path (always ENOENT: nothing can be made to run there).
    """
    harmless: list[Step] = [("warm up", _linux.raw_fcntl, (0, _F_GETFD, 0), "fcntl(0, F_GETFD)")] * 3
    how = ((b"", b""), _linux.c_string_array((b"warm-up",)), _linux.c_string_array(()), "warm-up")
    for _ in range(_WARM_UP_ROUNDS):
        _child(Prepared((), (), False, harmless, how, None, -1))
