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

import errno
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace

from . import _linux, rootfs
from .spec import ContainerSpec

#: exit status of a child that failed before exec (the supervisor reports the
#: error from the pipe; the status only matters if nobody reads it)
EXIT_SETUP_FAILED = 125


@dataclass(frozen=True)
class ChildPlan:
    """What the child needs besides the spec: fd numbers valid in the child."""

    spec: ContainerSpec
    stdin: int
    stdout: int
    stderr: int
    errpipe: int
    #: v1 cgroups: the child blocks reading this until the supervisor placed it
    sync: int = -1
    #: signals to reset to SIG_DFL (``signals_to_reset()`` taken before the clone);
    #: None: work it out in the child (slower: ~0.3 ms of copy-on-write faults)
    reset_signals: tuple[int, ...] | None = None
    #: ``-t`` with a root filesystem: a socket to send the pty master back on; the
    #: child opens the pty in its own devpts and ignores stdin/stdout/stderr
    console: int = -1
    #: a network namespace the spawn helper made ahead of time (lo already up): the
    #: child joins it instead of having clone3 create one
    netns: int = -1


class _StepFailed(Exception):
    def __init__(self, step: str, err: int, detail: str = "") -> None:
        super().__init__(step)
        self.step = step
        self.err = err
        self.detail = detail


def _report(fd: int, step: str, err: int, detail: str) -> None:
    msg = f"{step}\0{err}\0{detail}".encode(errors="surrogateescape")
    try:
        os.write(fd, msg[:4000])
    except OSError:
        pass


def _call(name: str, fn: Callable[..., int], *args: object) -> int:
    """``_step`` for a step with a result."""
    try:
        return fn(*args)
    except OSError as e:
        raise _StepFailed(name, e.errno or 0, str(e)) from None


def _step(name: str, fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as e:
        raise _StepFailed(name, e.errno or 0, str(e)) from None


#: every signal a handler can be set for, worked out once before any clone
_CATCHABLE = tuple(sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}))


def signals_to_reset() -> tuple[int, ...]:
    """The signals whose disposition is not the default: ignored (the helper ignores
    terminal signals, Python ignores SIGPIPE and SIGXFSZ) or with a Python handler
    (which would run in the child until exec). Call it in the parent, before the clone."""
    getsignal, default = signal.getsignal, signal.SIG_DFL
    return tuple(sig for sig in _CATCHABLE if getsignal(sig) != default)


def _reset_signals(sigs: tuple[int, ...] | None) -> None:
    # execve keeps ignored signals ignored and the mask as it is: give the command a
    # clean slate, as a shell would. Only the few signals that are not at the default
    # are touched: resetting all 62 cost ~0.4 ms per container, a tenth of a spawn.
    for sig in signals_to_reset() if sigs is None else sigs:
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    if signal.pthread_sigmask(signal.SIG_BLOCK, ()):
        signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _setup_namespaces(spec: ContainerSpec, net_ready: bool = False) -> None:
    ns = spec.namespaces
    if "mount" in ns:
        # First of all: nothing we mount may propagate back to the host.
        _step("make / private", _linux.mount, None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
        if spec.rootfs is not None:
            # overlay root, /proc, /dev, /sys, volumes, masks, pivot_root (rootfs.py)
            for op in rootfs.child_ops(spec):
                _step(op.step, op.run)
        elif "pid" in ns:
            flags = _linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC
            _step("mount /proc", _linux.mount, "proc", "/proc", "proc", flags)
    if "uts" in ns:
        _step("sethostname", _sethostname, spec.effective_hostname)
    if "net" in ns and not net_ready:
        _step("bring up lo", _linux.loopback_up)


def _sethostname(name: str) -> None:
    import socket

    socket.sethostname(name)


def _setup_stdio(plan: ChildPlan) -> None:
    # A session of our own: the container must not share the supervisor's terminal
    # job control, and with a tty the pty becomes the session's controlling terminal.
    os.setsid()
    if plan.spec.tty:
        _step("set controlling terminal", _linux.set_controlling_tty, plan.stdin)
    for target, fd in ((0, plan.stdin), (1, plan.stdout), (2, plan.stderr)):
        if fd != target:
            _step(f"dup2 stdio {target}", os.dup2, fd, target)
        else:
            os.set_inheritable(fd, True)
    _step("close_range", _linux.close_range_cloexec, 3)


def _exec(argv: tuple[str, ...], env: dict[str, str]) -> None:
    """execvpe with the container's PATH; never returns."""
    prog = argv[0]
    if "/" in prog:
        candidates = [prog]
    else:
        path = env.get("PATH", "") or os.defpath
        candidates = [os.path.join(d or ".", prog) for d in path.split(":")]
    saw_eacces = False
    for cand in candidates:
        try:
            os.execve(cand, list(argv), env)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR) and len(candidates) > 1:
                continue
            if e.errno == errno.EACCES and len(candidates) > 1:
                saw_eacces = True
                continue
            raise _StepFailed("exec", e.errno or 0, prog) from None
    raise _StepFailed("exec", errno.EACCES if saw_eacces else errno.ENOENT, prog)


def _run_as_init(plan: ChildPlan, env: dict[str, str]) -> None:
    """``--init``: stay PID 1, run the command as our child, forward and reap.

    PID 1 of a namespace ignores every signal it has no handler for, and orphans are
    re-parented to it: this loop gives the command ordinary signal semantics and keeps
    zombies from piling up. It exits with the command's status (128+N if killed).
    """
    everything = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}
    signal.pthread_sigmask(signal.SIG_BLOCK, everything)
    pid = os.fork()
    if pid == 0:
        try:
            if plan.spec.tty:
                # The command gets a process group of its own and the terminal's
                # foreground: a typed Ctrl-C then reaches only the command, not also
                # init (which would pass it on a second time). tcsetpgrp from what is
                # now a background group is allowed because SIGTTOU is still blocked.
                _step("setpgid", os.setpgid, 0, 0)
                _step("tcsetpgrp", os.tcsetpgrp, 0, os.getpgrp())
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            _exec(plan.spec.command, env)
        except _StepFailed as e:
            _report(plan.errpipe, e.step, e.err, e.detail)
        os._exit(127)
    os.close(plan.errpipe)
    # init never execs, so close-on-exec does not clean up for it: drop every fd it
    # inherited from the process it was cloned from (the pty master, cgroup and
    # event-loop fds of the supervisor) so the container cannot reach them.
    os.closerange(3, 0x7FFFFFFF)
    while True:
        info = signal.sigwaitinfo(everything)
        if info.si_signo != signal.SIGCHLD:
            try:
                os.kill(pid, info.si_signo)
            except ProcessLookupError:
                pass
            continue
        while True:
            try:
                reaped, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                os._exit(EXIT_SETUP_FAILED)
            if reaped == 0:
                break
            if reaped == pid:
                code = os.waitstatus_to_exitcode(status)
                os._exit(128 - code if code < 0 else code)


def run(plan: ChildPlan) -> None:
    """Execute the plan in the freshly cloned child. Never returns."""
    try:
        _reset_signals(plan.reset_signals)
        # If the supervisor dies, so do we (the parent is the supervisor, thanks to
        # CLONE_PARENT); cgroups clean up whatever escapes.
        _step("prctl(PR_SET_PDEATHSIG)", _linux.set_pdeathsig, signal.SIGKILL)
        if plan.sync >= 0:
            # Wait until the supervisor has put us into our cgroups (v1): we must not
            # run the command outside its limits. EOF without a byte means: give up.
            if os.read(plan.sync, 1) != b"1":
                os._exit(EXIT_SETUP_FAILED)
            os.close(plan.sync)
        if plan.netns >= 0:
            # Before anything that looks at the network namespace (a sysfs mount of a
            # root filesystem shows the mounter's): made ready by the helper while idle,
            # it takes the ~0.5 ms of creating one off the container's start.
            _step("join the network namespace", _linux.setns, plan.netns, _linux.CLONE_NEWNET)
            os.close(plan.netns)
        _setup_namespaces(plan.spec, net_ready=plan.netns >= 0)
        if plan.console >= 0:
            slave = _call("open the container's terminal", rootfs.open_console, plan.console)
            plan = replace(plan, stdin=slave, stdout=slave, stderr=slave)
        _setup_stdio(plan)
        env = plan.spec.full_env()
        if plan.spec.cwd:
            _step(f"chdir {plan.spec.cwd}", os.chdir, plan.spec.cwd)
        if plan.spec.init:
            _run_as_init(plan, env)
        _exec(plan.spec.command, env)
    except _StepFailed as e:
        _report(plan.errpipe, e.step, e.err, e.detail)
    except BaseException as e:  # noqa: BLE001 - the child must never unwind into the helper
        _report(plan.errpipe, "init", 0, f"{type(e).__name__}: {e}")
    os._exit(EXIT_SETUP_FAILED)
