"""The lifecycle of an OCI container: create, start, kill, delete, run, exec, state.

``create`` clones the container's process here, in this short-lived single-threaded
process, with the engine's own pieces: ``init.child_spec`` and ``init.prepare`` make
the child's steps (the bundle's mounts from ``fs.py``, the confinement from the
config's capabilities and seccomp profile), ``_linux.clone3`` makes it, directly in
its cgroup v2 directory, and the child runs ``init.run_prepared``. Without
CLONE_PARENT and without a parent death signal: when ``create`` exits, the kernel
gives the container to the caller's nearest subreaper (containerd's shim is one),
as runc's containers are given; nothing of ours lives on.

The handshakes, all blocking (the child waits for each):

    create:  clone -> place it (v1 cgroups, user namespace maps, rlimits,
             oom_score_adj), release it (sync pipe) -> [hooks: the child stops
             before pivot_root, ``wire.ASK_FOR_HOOKS`` on the error pipe; prestart
             and createRuntime run here, createContainer in its namespaces; release]
             -> [terminal: the pty master from its devpts, handed to the caller's
             console socket] -> ``wire.CREATED`` on the error pipe: it is set up,
             confined, and blocks opening its exec fifo -> record, pid file, exit
    start:   startContainer hooks -> open the fifo for reading (the child's open
             returns, it writes one byte, execs) -> poststart hooks

A failure anywhere kills and reaps the child and removes its cgroup and directory:
never a half-made container.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

from .. import _linux, capabilities, init, wire
from .._named import NamedTuple
from ..errors import (
    CommandNotExecutableError,
    CommandNotFoundError,
    MydockerError,
    NotPermittedError,
    SpecError,
    StartError,
)
from ..helper import clone_in_pid_namespace
from ..spec import ContainerSpec
from . import config as oci_config
from . import hooks, records
from .cgroup import OciCgroup
from .config import OciSettings, Process
from .fs import child_ops, wire_ops

TYPE_CHECKING = False  # typing's, without importing it here
if TYPE_CHECKING:
    import socket

#: CLONE_NEW* of each namespace, by ContainerSpec's and OCI's names
NAMESPACE_FLAGS = {
    "pid": _linux.CLONE_NEWPID,
    "net": _linux.CLONE_NEWNET,
    "network": _linux.CLONE_NEWNET,
    "mount": _linux.CLONE_NEWNS,
    "ipc": _linux.CLONE_NEWIPC,
    "uts": _linux.CLONE_NEWUTS,
    "cgroup": _linux.CLONE_NEWCGROUP,
    "user": _linux.CLONE_NEWUSER,
    "time": _linux.CLONE_NEWTIME,
}
_NAMES = {flag: name for name, flag in NAMESPACE_FLAGS.items() if name != "net"}

#: a warning sink (the CLI logs them)
Warn = Callable[[str], None]


class ContainerStateError(MydockerError):
    """The container is not in a state the command can act on."""


def _require_root() -> None:
    if os.geteuid() != 0:
        raise NotPermittedError("mydocker-runc needs root (rootless OCI containers are not supported)")


def now() -> str:
    """This instant in RFC 3339 (UTC, microseconds), as runc's state has it."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


# ---------------------------------------------------------------- what the child gets


def confinement(process: Process, seccomp: object) -> init.Confinement:
    """The child's ``init.Confinement`` for an OCI process: its five capability sets
    (none given: every capability this process holds, as runc changes none), its
    user and groups, no_new_privs, and the seccomp profile compiled for it.

    Raises:
        SpecError: a capability this process does not hold itself (the kernel would
            refuse it with EPERM at the last step), or a profile that does not compile.
    """
    last = capabilities.last_cap()
    known = (1 << (min(last, capabilities.LAST_KNOWN_CAP) + 1)) - 1
    ours = capabilities.mask(capabilities.caller_bounding_set())
    caps = process.capabilities
    if caps is None:
        full = ours & known
        sets = {"bounding": full, "effective": full, "permitted": full, "inheritable": 0, "ambient": 0}
    else:
        sets = {
            name: capabilities.mask(getattr(caps, name)) & known
            for name in ("bounding", "effective", "permitted", "inheritable", "ambient")
        }
        for name in ("effective", "permitted", "inheritable", "ambient"):
            missing = sets[name] & ~ours
            if missing:
                which = ", ".join(sorted(capabilities.names(missing)))
                raise SpecError(
                    f"process.capabilities.{name}: {which} cannot be given (mydocker-runc does not hold it)"
                )
    program, flags = None, 0
    from ..seccomp import Profile

    if isinstance(seccomp, Profile):
        from ..seccomp import compile_profile

        program = compile_profile(seccomp, capabilities.names(sets["bounding"]))
        flags = seccomp.load_flags
    return init.Confinement(
        bounding=sets["bounding"],
        effective=sets["effective"],
        permitted=sets["permitted"],
        uid=process.uid,
        gid=process.gid,
        groups=process.additional_gids,
        last_cap=last,
        seccomp=program,
        seccomp_flags=flags,
        no_new_privs=process.no_new_privileges,
        inheritable=sets["inheritable"],
        ambient=sets["ambient"],
    )


def environment(process: Process, rootfs: str | None) -> dict[str, str]:
    """The process's environment: the config's, and HOME from the container's own
    /etc/passwd when the config has none (as runc), else ``/``."""
    env = process.env_dict()
    if "HOME" not in env:
        env["HOME"] = "/"
        from ..users import parse_passwd, read_in_root

        with contextlib.suppress(OSError, SpecError, ValueError):
            text = read_in_root(rootfs, "/etc/passwd")
            for entry in parse_passwd(text.decode(errors="replace") if text else ""):
                if entry.uid == process.uid:
                    env["HOME"] = entry.home or "/"
                    break
    return env


def _start_error(report: bytes) -> StartError:
    step, err, detail = wire.decode_failure(report)
    if step == "exec":
        if err in (errno.ENOENT, errno.ENOTDIR):
            return CommandNotFoundError(detail, err, "executable file not found in the container")
        if err in (errno.EACCES, errno.ENOEXEC, errno.EISDIR, errno.EPERM):
            return CommandNotExecutableError(detail, err, f"not executable ({os.strerror(err).lower()})")
    return StartError(step, err, detail)


class _Events:
    """What the child writes on its error pipe: markers, or a failure report."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""

    def next(self) -> bytes:
        """The next marker (``wire.CREATED``, ``wire.ASK_FOR_HOOKS``).

        Raises:
            StartError: the child failed (its report), or died without one.
        """
        data = self._buffer or os.read(self.fd, 4096)
        self._buffer = b""
        marker, rest = wire.split_marker(data)
        if marker is not None:
            self._buffer = rest
            return marker
        chunks = [rest]
        while chunk := os.read(self.fd, 4096):
            chunks.append(chunk)
        report = b"".join(chunks)
        if not report:
            raise StartError("create", 0, "the container's process died during its set-up")
        raise _start_error(report)

    def exec_done(self) -> None:
        """EOF: the child exec'd (an exec's child has no fifo).

        Raises:
            StartError: its failure report.
        """
        chunks = [self._buffer]
        while chunk := os.read(self.fd, 4096):
            chunks.append(chunk)
        report = b"".join(chunks)
        if report:
            raise _start_error(report)


def _clone(
    child: init.ChildSpec,
    flags: int,
    fds: dict[str, int],
    *,
    keep: tuple[int, ...] = (),
    pidns: int = -1,
    inherit: tuple[tuple[int, int], ...] = (),
    **plan: Any,
) -> tuple[int, int]:
    """Clone the child here, as ``spawn.DirectSpawner`` does for the CLI (without
    CLONE_PARENT: the child is ours until we exit); ``pidns``: a PID namespace (a
    namespace fd or a pidfd) to clone into; ``inherit``: (fd, type) namespaces this
    process enters for the clone and leaves right after, so that the child is born
    in them, before a user namespace of its own would forbid joining them (runc's
    order: paths first, then the new namespaces). Returns (pid, pidfd)."""
    if len(os.listdir("/proc/self/task")) != 1:  # never: this process starts no thread
        raise StartError("clone3", 0, "mydocker-runc must be single-threaded to clone")
    wanted = {0, 1, 2, *fds.values(), *keep}
    drop = tuple(fd for fd in map(int, os.listdir("/proc/self/fd")) if fd not in wanted)
    prepared = init.prepare(init.child_plan(child, fds, None)._replace(**plan), drop, flags)
    clone_args, pidfd = _linux.clone3_args(flags & ~_linux.CLONE_PARENT, 0, fds.get("cgroup", -1))
    with _inside(inherit):
        if pidns >= 0:
            pid = clone_in_pid_namespace(pidns, clone_args, prepared)
        else:
            pid = _linux.raw_clone3(clone_args)
            if pid == 0:
                init.run_prepared(prepared)  # never returns
        err = _linux.errno_now()
    if pid < 0:
        raise StartError("clone3", err, wire.clone_failed(flags, err))
    return pid, pidfd.value


@contextlib.contextmanager
def _inside(namespaces: tuple[tuple[int, int], ...]) -> Iterator[None]:
    """This process in ``namespaces`` (fd, type) for a moment, then back in its own."""
    own = []
    try:
        for fd, nstype in namespaces:
            own.append((os.open(f"/proc/self/ns/{_PROC_NS[nstype]}", os.O_RDONLY | os.O_CLOEXEC), nstype))
            try:
                _linux.setns(fd, nstype)
            except OSError as e:
                raise StartError("join a namespace", e.errno or 0, str(e)) from None
        yield
    finally:
        for fd, nstype in own:
            try:
                _linux.setns(fd, nstype)
            finally:
                os.close(fd)


#: the /proc/self/ns name of each namespace type this process may enter for a clone
_PROC_NS = {
    _linux.CLONE_NEWNET: "net",
    _linux.CLONE_NEWIPC: "ipc",
    _linux.CLONE_NEWUTS: "uts",
    _linux.CLONE_NEWCGROUP: "cgroup",
}


def _kill_and_reap(pid: int, pidfd: int) -> None:
    with contextlib.suppress(OSError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED | _linux.WALL)
    os.close(pidfd)


def _set_limits(pid: int, process: Process) -> None:
    """rlimits and oom_score_adj of a child waiting on its sync pipe."""
    import resource

    for r in process.rlimits:
        soft = resource.RLIM_INFINITY if r.soft >= 1 << 63 else r.soft
        hard = resource.RLIM_INFINITY if r.hard >= 1 << 63 else r.hard
        try:
            resource.prlimit(pid, r.resource, (soft, hard))
        except (OSError, ValueError) as e:
            raise StartError(
                f"set {r.name}", getattr(e, "errno", 0) or 0, f"prlimit({soft}, {hard}): {e}"
            ) from None
    if process.oom_score_adj is not None:
        try:
            with open(f"/proc/{pid}/oom_score_adj", "w") as f:
                f.write(str(process.oom_score_adj))
        except OSError as e:
            raise StartError("set oom_score_adj", e.errno or 0, str(e)) from None


def _child_pipes(
    ours: contextlib.ExitStack, child_side: contextlib.ExitStack, fds: dict[str, int]
) -> tuple[int, int]:
    """The child's error pipe and sync pipe: their child ends in ``fds`` (``errpipe``,
    ``sync``), closed with ``child_side``; ours, (error read end, sync write end),
    closed with ``ours``."""
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    ours.callback(os.close, err_r)
    child_side.callback(os.close, err_w)
    sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
    child_side.callback(os.close, sync_r)
    ours.callback(os.close, sync_w)
    fds.update(errpipe=err_w, sync=sync_r)
    return err_r, sync_w


def _open_namespaces(oci: OciSettings) -> tuple[list[tuple[int, int]], int]:
    """``linux.namespaces`` paths opened and checked: ((fd, type) to join in the
    child, the PID namespace's fd or -1)."""
    joins: list[tuple[int, int]] = []
    pidns = -1
    try:
        for kind, path in oci.namespace_paths:
            want = NAMESPACE_FLAGS[kind]
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise SpecError(f"linux.namespaces: cannot open {path}: {e.strerror}") from None
            try:
                got = fcntl.ioctl(fd, _linux.NS_GET_NSTYPE)
            except OSError:
                os.close(fd)
                raise SpecError(f"linux.namespaces: {path} is not a namespace") from None
            if got != want:
                os.close(fd)
                raise SpecError(
                    f"linux.namespaces: {path} is a {_NAMES.get(got, hex(got))} namespace, not a {kind} one"
                )
            if kind == "pid":
                pidns = fd
            else:
                joins.append((fd, want))
    except BaseException:
        for fd, _kind in joins:
            os.close(fd)
        if pidns >= 0:
            os.close(pidns)
        raise
    return joins, pidns


def _send_console(path: str, master: int) -> None:
    """Hand the pty master to the caller's console socket (SCM_RIGHTS), as runc."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
            sock.sendmsg([b"/dev/ptmx"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", master))])
        except OSError as e:
            raise StartError("console socket", e.errno or 0, f"{path}: {e.strerror or e}") from None


# ---------------------------------------------------------------- create


class Created(NamedTuple):
    """A container created by this process (the child is ours until we exit)."""

    record: records.Record
    pidfd: int
    spec: ContainerSpec
    #: with a terminal and no console socket (``run`` in the foreground): the master
    master: int = -1


def create(
    root: str,
    container_id: str,
    bundle: str,
    *,
    pid_file: str | None = None,
    console_socket: str | None = None,
    detached: bool = True,
    warn: Warn | None = None,
) -> Created:
    """Create a container (OCI "create"): set up, confined, waiting before its program.

    Args:
        root: the state directory.
        container_id: its id.
        bundle: the bundle's directory (``config.json``, the root).
        pid_file: where to write its pid.
        console_socket: a unix socket to send the terminal's master to.
        detached: the container outlives this process (``create``, ``run -d``);
            else it dies with it (``run`` in the foreground).

    Raises:
        SpecError: a bad config or arguments (nothing was made).
        StartError, CommandNotFoundError, ...: the set-up failed (nothing is left).
    """
    _require_root()
    oci_config.check_id(container_id)
    root = records.check_root(root)
    bundle = os.path.abspath(bundle)
    spec, data = oci_config.load(bundle, container_id)
    oci = oci_config.settings_of(spec)
    process = oci.process
    assert process is not None and spec.rootfs is not None
    if process.terminal and console_socket is None and detached:
        raise SpecError("process.terminal needs --console-socket (where the terminal is handed over)")
    if console_socket is not None and not process.terminal:
        raise SpecError("--console-socket is given but process.terminal is false")
    if not os.path.isdir(spec.rootfs):
        raise SpecError(f"root.path {spec.rootfs} is not a directory")
    slot = records.reserve(root, container_id)
    try:
        with open(os.path.join(slot.dir, records.CONFIG), "w", encoding="utf-8") as f:
            json.dump(data, f)
        return _create(slot, spec, oci, process, pid_file, console_socket, detached, warn)
    except BaseException:
        slot.remove()
        raise


def _create(
    slot: records.Slot,
    spec: ContainerSpec,
    oci: OciSettings,
    process: Process,
    pid_file: str | None,
    console_socket: str | None,
    detached: bool,
    warn: Warn | None,
) -> Created:
    assert spec.rootfs is not None
    ours = contextlib.ExitStack()  # closed when create returns
    undo = contextlib.ExitStack()  # only on failure
    child_side = contextlib.ExitStack()  # the child's fds: closed after the clone
    with ours:
        try:
            fifo = os.path.join(slot.dir, records.FIFO)
            os.mkfifo(fifo, 0o622)
            os.chmod(fifo, 0o622)  # whatever our umask: the container's user opens it
            fifo_fd = os.open(fifo, os.O_PATH | os.O_CLOEXEC)
            child_side.callback(os.close, fifo_fd)
            proc_fd = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            child_side.callback(os.close, proc_fd)
            joins, pidns = _open_namespaces(oci)
            for fd, _t in joins:
                child_side.callback(os.close, fd)
            if pidns >= 0:
                child_side.callback(os.close, pidns)
            cgroup = OciCgroup.create(oci.cgroups_path, spec.id, oci.resources)
            undo.callback(cgroup.remove)
            fds: dict[str, int] = {"stdin": 0, "stdout": 1, "stderr": 2}
            cg_fd = cgroup.open_v2()
            if cg_fd >= 0:
                child_side.callback(os.close, cg_fd)
                fds["cgroup"] = cg_fd
            err_r, sync_w = _child_pipes(ours, child_side, fds)
            keep: list[int] = [fifo_fd, proc_fd, *(fd for fd, _t in joins)]
            pause = None
            hooks_w = -1
            if oci.hooks.before_pivot:
                hooks_r, hooks_w = os.pipe2(os.O_CLOEXEC)
                child_side.callback(os.close, hooks_r)
                ours.callback(os.close, hooks_w)
                keep.append(hooks_r)
                pause = (fds["errpipe"], hooks_r)
            console = None
            if process.terminal:
                import socket

                console, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                ours.callback(console.close)
                child_side.callback(theirs.close)
                fds.update(stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=theirs.fileno())
                fds["console"] = theirs.fileno()
            joined = {kind for kind, _p in oci.namespace_paths}
            mount_ns = "mount" in spec.namespaces or "mount" in joined
            ops = child_ops(spec, oci, mount_namespace=mount_ns, hooks_pause=pause)
            child = init.child_spec(
                spec,
                wire_ops(ops),
                confinement(process, spec.seccomp),
                environment(process, spec.rootfs),
                None,
                userns=1 if oci.user_namespace else 0,
            )._replace(hostname=oci.hostname, mount=mount_ns)
            flags = 0
            for name in spec.namespaces:
                flags |= NAMESPACE_FLAGS[name]
            if oci.user_namespace:
                flags |= _linux.CLONE_NEWUSER
            # the joined mount namespace is entered by the child (this process keeps
            # its own view of the paths it uses); the others by the clone
            in_child = tuple(j for j in joins if j[1] == _linux.CLONE_NEWNS)
            plan: dict[str, Any] = {
                "detached": detached,
                "hold": True,
                "start_fifo": fifo_fd,
                "start_proc": proc_fd,
                "join_fds": in_child,
                "inherit": tuple(j for j in joins if j not in in_child),
            }
            if not detached:
                me = os.pidfd_open(os.getpid())
                ours.callback(os.close, me)
                plan["supervisor"] = me
                keep.append(me)
            old_umask = os.umask(0o022 if process.umask is None else process.umask)
            try:
                pid, pidfd = _clone(child, flags, fds, keep=tuple(keep), pidns=pidns, **plan)
            finally:
                os.umask(old_umask)
                child_side.close()
            undo.callback(_kill_and_reap, pid, pidfd)
            # placed, mapped, limited, then let go
            cgroup.attach(pid)
            if oci.user_namespace:
                from .. import userns

                uids = tuple(userns.IdMap(*m) for m in oci.uid_mappings)
                gids = tuple(userns.IdMap(*m) for m in oci.gid_mappings)
                userns.write_maps(pid, userns.Mapping(uids, gids, helpers=False))
            _set_limits(pid, process)
            wire.release(sync_w)
            events = _Events(err_r)
            annotations = dict(oci.annotations)
            join = flags | sum(NAMESPACE_FLAGS[kind] for kind in joined)
            if pause is not None:
                if events.next() != wire.ASK_FOR_HOOKS:
                    raise StartError("create", 0, "the container's process did not stop for its hooks")
                state = hooks.state_json(spec.id, "created", pid, oci.bundle, annotations)
                hooks.run("prestart", oci.hooks.prestart, state)
                hooks.run("createRuntime", oci.hooks.create_runtime, state)
                hooks.run("createContainer", oci.hooks.create_container, state, pidfd=pidfd, namespaces=join)
                wire.release(hooks_w)
            master = -1
            if console is not None:
                master = _take_console(console, events, process, console_socket)
                if master >= 0:
                    undo.callback(os.close, master)
            if events.next() != wire.CREATED:
                raise StartError("create", 0, "the container's process did not report its set-up")
            started = records.start_time(pid)
            if started is None:
                raise StartError("create", errno.ESRCH, "the container's process died after its set-up")
            record = records.Record(
                id=spec.id,
                bundle=oci.bundle,
                rootfs=spec.rootfs,
                pid=pid,
                start_time=started,
                created=now(),
                owner="root",
                annotations=annotations,
                cgroup=cgroup.to_json(),
                join=join,
                user_namespace=oci.user_namespace,
                oci_version=oci.oci_version,
            )
            records.save(slot.root, record)
            if pid_file:
                records.write_file_atomically(pid_file, str(pid).encode())
        except BaseException:
            child_side.close()
            undo.close()
            raise
        undo.pop_all()
        slot.release()
        return Created(record, pidfd, spec, master)


def _take_console(console: socket.socket, events: _Events, process: Process, path: str | None) -> int:
    """The child's pty master: sized, handed to the console socket at ``path`` (then
    -1 is returned), or kept (``run`` in the foreground proxies it)."""
    master = wire.receive_console(console)
    if master is None:
        events.next()  # its failure report
        raise StartError("create", 0, "the container's process did not open its terminal")
    try:
        if process.console_size is not None:
            _linux.set_winsize(master, *process.console_size)
        elif path is None:
            size = _linux.get_winsize(0)
            if size is not None:
                _linux.set_winsize(master, *size)
        if path is not None:
            _send_console(path, master)
        wire.console_ready(console)
    except BaseException:
        os.close(master)
        raise
    if path is not None:
        os.close(master)
        return -1
    return master


# ---------------------------------------------------------------- start, state, kill, delete


def saved_config(root: str, container_id: str) -> dict[str, Any]:
    """The config as ``create`` read it."""
    path = os.path.join(records.container_dir(root, container_id), records.CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise MydockerError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise MydockerError(f"{path}: not a config")
    return data


def start(root: str, container_id: str, *, warn: Warn | None = None) -> records.Record:
    """Start a created container: its program is exec'd (OCI "start").

    Raises:
        NotFoundError: no such container.
        ContainerStateError: it is not created (running, or stopped).
        StartError: a startContainer hook failed, or it died before starting.
    """
    root = records.check_root(root)
    with records.held(root, container_id) as (slot, rec):
        status = records.status(root, rec)
        if status != "created":
            raise ContainerStateError(f"cannot start container {container_id}: it is {status}, not created")
        hook_set = oci_config.parse_hooks(saved_config(root, container_id))
        pidfd = records.pidfd(rec)
        try:
            if hook_set.start_container:
                state = hooks.state_json(rec.id, "created", rec.pid, rec.bundle, rec.annotations)
                spec, _data = _saved_spec(root, container_id)
                hooks.run(
                    "startContainer",
                    hook_set.start_container,
                    state,
                    runner=lambda hook, data: _run_start_hook(rec, spec, hook, data),
                )
            _open_fifo(os.path.join(slot.dir, records.FIFO), pidfd, container_id)
        finally:
            os.close(pidfd)
        if hook_set.poststart:
            state = hooks.state_json(rec.id, "running", rec.pid, rec.bundle, rec.annotations)
            hooks.run("poststart", hook_set.poststart, state, warn=warn or (lambda _m: None))
        return rec


def _open_fifo(path: str, pidfd: int, container_id: str) -> None:
    """Open the exec fifo for reading: the child's open for writing returns, it writes
    one byte and execs. Then the fifo goes (the container is running)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        while True:
            ready = dict(poller.poll())
            if fd in ready:
                try:
                    data = os.read(fd, 16)
                except BlockingIOError:
                    data = b""
                if data:
                    break
                if ready[fd] & select.POLLHUP:
                    raise StartError(
                        "start", 0, f"container {container_id} closed its exec fifo without starting"
                    )
            if pidfd in ready:
                raise StartError("start", errno.ESRCH, f"container {container_id} exited before it started")
    finally:
        os.close(fd)
    os.unlink(path)


def state(root: str, container_id: str) -> dict[str, object]:
    """The state of a container (runtime-spec runtime.md "State", and runc's fields
    ``rootfs``, ``created`` and ``owner``).

    Raises:
        NotFoundError: no such container.
    """
    root = records.check_root(root)
    rec = records.load(root, container_id)
    return state_of(root, rec)


def state_of(root: str, rec: records.Record) -> dict[str, object]:
    """``state``'s answer for a loaded record."""
    status = records.status(root, rec)
    return {
        "ociVersion": oci_config.OCI_VERSION,
        "id": rec.id,
        "pid": rec.pid if status != "stopped" else 0,
        "status": status,
        "bundle": rec.bundle,
        "rootfs": rec.rootfs,
        "created": rec.created,
        "owner": rec.owner,
        "annotations": rec.annotations,
    }


def parse_signal(text: str) -> int:
    """``KILL``, ``SIGKILL``, ``kill`` or ``9``.

    Raises:
        SpecError: no such signal.
    """
    name = text.upper()
    if name.isdigit():
        number = int(name)
        if 0 < number < signal.NSIG:
            return number
    else:
        name = name if name.startswith("SIG") else "SIG" + name
        found = getattr(signal.Signals, name, None) if name.isidentifier() else None
        if found is not None:
            return int(found)
    raise SpecError(f"unknown signal {text!r}")


def kill(root: str, container_id: str, sig: int, *, all_processes: bool = False) -> None:
    """Send ``sig`` to the container's process (``all_processes``: to every process
    in its cgroup).

    Raises:
        NotFoundError: no such container.
        ContainerStateError: it is stopped.
    """
    root = records.check_root(root)
    rec = records.load(root, container_id)
    try:
        fd = records.pidfd(rec)
    except ProcessLookupError:
        raise ContainerStateError(f"container {container_id} is not running") from None
    try:
        if all_processes:
            for pid in OciCgroup.from_json(rec.cgroup).pids():
                _signal_pid(pid, sig)
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        raise ContainerStateError(f"container {container_id} is not running") from None
    finally:
        os.close(fd)


def _signal_pid(pid: int, sig: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        signal.pidfd_send_signal(fd, sig)
    except OSError:
        pass
    finally:
        os.close(fd)


def _wait_gone(pidfd: int, timeout: float | None) -> bool:
    return bool(select.select([pidfd], [], [], timeout)[0])


def delete(root: str, container_id: str, *, force: bool = False, warn: Warn | None = None) -> None:
    """Delete a container (OCI "delete"): its processes killed, its cgroup and its
    directory removed, then its poststop hooks run. A created container is deleted
    as runc deletes it (killed); a running or paused one only with ``force``.

    Raises:
        NotFoundError: no such container (not with ``force``).
        ContainerStateError: it runs and ``force`` is not given.
    """
    root = records.check_root(root)
    try:
        with records.held(root, container_id) as (slot, rec):
            hook_set = _delete(root, container_id, slot, rec, force, warn)
    except records.NotFoundError:
        if force:
            records.remove_abandoned(root, container_id)
            return
        raise
    if hook_set is not None and hook_set.poststop:
        state = hooks.state_json(rec.id, "stopped", 0, rec.bundle, rec.annotations)
        hooks.run("poststop", hook_set.poststop, state, warn=warn or (lambda _m: None))


def _delete(
    root: str, container_id: str, slot: records.Slot, rec: records.Record, force: bool, warn: Warn | None
) -> oci_config.Hooks | None:
    """``delete`` with the container held: its hooks (read before its directory goes)."""
    status = records.status(root, rec)
    if status in ("running", "paused") and not force:
        raise ContainerStateError(f"cannot delete container {container_id}: it is {status} (use --force)")
    cgroup = OciCgroup.from_json(rec.cgroup)
    if status != "stopped":
        try:
            fd = records.pidfd(rec)
        except ProcessLookupError:
            fd = -1
        if fd >= 0:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                if status == "paused":
                    with contextlib.suppress(MydockerError):
                        cgroup.freeze(False, timeout=1)
                _wait_gone(fd, 10)
            finally:
                os.close(fd)
    busy = cgroup.remove()
    if busy and warn is not None:
        warn(f"cgroup {', '.join(busy)} of container {container_id} still holds processes: left")
    hook_set = None
    with contextlib.suppress(MydockerError, SpecError):
        hook_set = oci_config.parse_hooks(saved_config(root, container_id))
    slot.remove()
    return hook_set


# ---------------------------------------------------------------- run and wait


def wait(pid: int, pidfd: int, master: int = -1) -> int:
    """Wait for our child ``pid`` to exit, forwarding the signals we get to it (and,
    with a terminal ``master``, copying between it and our stdio). Its exit status
    (128+N when killed by signal N)."""
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

    def forward(sig: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, sig)

    old = {sig: signal.signal(sig, forward) for sig in forwarded}
    try:
        if master >= 0:
            _proxy(master, pidfd)
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | _linux.WALL)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    assert info is not None
    if info.si_code == os.CLD_EXITED:
        return info.si_status
    return 128 + info.si_status


def _proxy(master: int, pidfd: int) -> None:
    """Our stdin to the terminal, the terminal to our stdout, until it closes."""
    import termios
    import tty

    saved = None
    if os.isatty(0):
        saved = termios.tcgetattr(0)
        tty.setraw(0)
    try:
        watch = [master, pidfd, 0]
        while True:
            readable = select.select(watch, [], [])[0]
            if master in readable:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    data = b""
                if not data:
                    return
                os.write(1, data)
            if 0 in readable:
                data = os.read(0, 65536)
                if data:
                    os.write(master, data)
                else:
                    watch.remove(0)
            if pidfd in readable and master not in readable:
                return
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        os.close(master)


def run(
    root: str,
    container_id: str,
    bundle: str,
    *,
    detach: bool = False,
    pid_file: str | None = None,
    console_socket: str | None = None,
    keep: bool = False,
    warn: Warn | None = None,
) -> int:
    """Create and start a container; in the foreground, wait for it, delete it and
    return its exit status (``detach``: return 0 once it runs).

    Raises:
        the errors of ``create`` and ``start``.
    """
    made = create(
        root,
        container_id,
        bundle,
        pid_file=pid_file,
        console_socket=console_socket,
        detached=detach,
        warn=warn,
    )
    try:
        start(root, container_id, warn=warn)
    except BaseException:
        _kill_and_reap(made.record.pid, made.pidfd)  # ours: not a zombie for the caller
        with contextlib.suppress(MydockerError):
            delete(root, container_id, force=True, warn=warn)
        raise
    if detach:
        os.close(made.pidfd)
        return 0
    try:
        status = wait(made.record.pid, made.pidfd, made.master)
    finally:
        os.close(made.pidfd)
        if not keep:
            with contextlib.suppress(records.NotFoundError):
                delete(root, container_id, force=True, warn=warn)
    return status


# ---------------------------------------------------------------- exec


def exec_process(
    root: str,
    container_id: str,
    process: Process,
    *,
    detach: bool = False,
    pid_file: str | None = None,
    console_socket: str | None = None,
    warn: Warn | None = None,
) -> int:
    """Run ``process`` in a running container: it joins the container's namespaces
    (its PID namespace by a clone into it) and cgroup, takes the container's
    seccomp profile and the process's own capabilities and user. In the foreground:
    wait for it and return its status; ``detach``: return 0 once it runs (it is left
    to the caller's subreaper, as ``create`` leaves a container).

    Raises:
        NotFoundError, ContainerStateError: no such running container.
        SpecError, StartError, CommandNotFoundError, ...: it could not start.
    """
    _require_root()
    root = records.check_root(root)
    rec = records.load(root, container_id)
    status = records.status(root, rec)
    if status not in ("created", "running"):
        raise ContainerStateError(f"cannot exec in container {container_id}: it is {status}")
    if process.terminal and console_socket is None and detach:
        raise SpecError("a terminal needs --console-socket with --detach")
    spec, _data = _saved_spec(root, container_id)
    env = environment(process, f"/proc/{rec.pid}/root")
    pid, pidfd, master = _spawn_in(rec, spec, process, env, detach=detach, console_socket=console_socket)
    try:
        if pid_file:
            records.write_file_atomically(pid_file, str(pid).encode())
    except BaseException:
        _kill_and_reap(pid, pidfd)
        if master >= 0:
            os.close(master)
        raise
    if detach:
        os.close(pidfd)
        return 0
    try:
        return wait(pid, pidfd, master)
    finally:
        os.close(pidfd)


def _spawn_in(
    rec: records.Record,
    spec: ContainerSpec,
    process: Process,
    env: dict[str, str],
    *,
    detach: bool = False,
    console_socket: str | None = None,
    stdio: tuple[int, int, int] = (0, 1, 2),
    executable: str | None = None,
) -> tuple[int, int, int]:
    """Start ``process`` in the container of ``rec`` (see ``exec_process``) with
    ``env`` and ``stdio``; ``executable``: the program to exec (else ``process.args[0]``
    searched in the PATH of ``env``). Returns (pid, pidfd, the terminal's master or -1)
    once it has exec'd.

    Raises:
        ContainerStateError: the container's process is gone.
        SpecError, StartError, CommandNotFoundError, ...: it could not start.
    """
    try:
        target = records.pidfd(rec)
    except ProcessLookupError:
        raise ContainerStateError(f"container {rec.id} is not running") from None
    with contextlib.ExitStack() as ours:
        ours.callback(os.close, target)
        child_side = contextlib.ExitStack()
        try:
            cgroup = OciCgroup.from_json(rec.cgroup)
            fds: dict[str, int] = {
                "stdin": stdio[0],
                "stdout": stdio[1],
                "stderr": stdio[2],
                "target": target,
            }
            cg_fd = cgroup.open_v2() if cgroup.v2 and os.path.isdir(cgroup.v2) else -1
            if cg_fd >= 0:
                child_side.callback(os.close, cg_fd)
                fds["cgroup"] = cg_fd
            err_r, sync_w = _child_pipes(ours, child_side, fds)
            console = None
            if process.terminal:
                import socket

                console, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                ours.callback(console.close)
                child_side.callback(theirs.close)
                fds.update(stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=theirs.fileno())
                fds["console"] = theirs.fileno()
            child = init.exec_child_spec(
                process.args,
                env,
                process.cwd,
                process.terminal,
                rec.join,
                confinement(process, spec.seccomp),
            )
            if executable is not None:
                _candidates, argv, envp, _prog = child.exec
                child = child._replace(exec=((os.fsencode(executable),), argv, envp, executable))
            keep: tuple[int, ...] = ()
            if not rec.join & _linux.CLONE_NEWNS:
                # no mount namespace to join (the container is only chrooted): its
                # root, or the process would run in the host's
                root_fd = os.open(f"/proc/{rec.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                child_side.callback(os.close, root_fd)
                if not records.alive(rec):  # the pid was not reused before the open
                    raise ContainerStateError(f"container {rec.id} is not running")
                child = child._replace(fs_ops=(("enter the container's root", "_chroot_fd", (root_fd,)),))
                keep = (root_fd,)
            plan: dict[str, Any] = {"detached": detach, "hold": True}
            pidns = target if rec.join & _linux.CLONE_NEWPID else -1
            old_umask = os.umask(0o022 if process.umask is None else process.umask)
            try:
                pid, pidfd = _clone(child, 0, fds, keep=keep, pidns=pidns, **plan)
            finally:
                os.umask(old_umask)
                child_side.close()
        except BaseException:
            child_side.close()
            raise
        try:
            cgroup.attach(pid)
            _set_limits(pid, process)
            wire.release(sync_w)
            events = _Events(err_r)
            master = -1
            if console is not None:
                master = _take_console(console, events, process, console_socket)
            try:
                events.exec_done()
            except BaseException:
                if master >= 0:
                    os.close(master)
                raise
        except BaseException:
            _kill_and_reap(pid, pidfd)
            raise
        return pid, pidfd, master


def _run_start_hook(rec: records.Record, spec: ContainerSpec, hook: oci_config.Hook, stdin: bytes) -> None:
    """A startContainer hook: a program of the container's (its path resolves in the
    container), run as its process runs (runc runs it in the container's init, after
    its confinement): in its namespaces and cgroup, as its user, with its capability
    sets and seccomp profile, with ``stdin`` (the state) on its stdin.

    Raises:
        StartError: it could not start, failed, or ran past its timeout (killed).
    """
    process = oci_config.settings_of(spec).process
    assert process is not None
    process = process._replace(
        args=tuple(hook.args) or (hook.path,), env=tuple(hook.env or ()), cwd="/", terminal=False
    )
    env = {k: v for k, _, v in (item.partition("=") for item in process.env)}
    with contextlib.ExitStack() as stack:
        data = os.memfd_create("state", os.MFD_CLOEXEC)
        stack.callback(os.close, data)
        os.write(data, stdin)
        os.lseek(data, 0, os.SEEK_SET)
        out = os.memfd_create("output", os.MFD_CLOEXEC)
        stack.callback(os.close, out)
        try:
            _pid, pidfd, _master = _spawn_in(
                rec, spec, process, env, stdio=(data, out, out), executable=hook.path
            )
        except StartError as e:
            raise StartError("hook", e.errno, f"{hook.path}: {e.detail}") from None
        stack.callback(os.close, pidfd)
        if not _wait_gone(pidfd, hook.timeout if hook.timeout is not None else None):
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitid(os.P_PIDFD, pidfd, os.WEXITED | _linux.WALL)
            raise StartError("hook", 0, f"{hook.path} did not finish in {hook.timeout} s (killed)")
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | _linux.WALL)
        assert info is not None
        if info.si_code == os.CLD_EXITED and info.si_status == 0:
            return
        os.lseek(out, 0, os.SEEK_SET)
        said = os.read(out, 65536).decode(errors="replace").strip().splitlines()
        how = (
            f"exit status {info.si_status}"
            if info.si_code == os.CLD_EXITED
            else f"killed by signal {info.si_status}"
        )
        raise StartError("hook", 0, f"{hook.path}: {how}" + (f": {said[-1]}" if said else ""))


def _saved_spec(root: str, container_id: str) -> tuple[ContainerSpec, dict[str, Any]]:
    rec = records.load(root, container_id)  # first: no such container is NotFoundError
    data = saved_config(root, container_id)
    return oci_config.parse(data, rec.bundle, container_id), data


def exec_defaults(root: str, container_id: str) -> Process:
    """The container's own process (for ``exec ARGS``: its user, env, cwd,
    capabilities), from the config ``create`` read."""
    spec, _data = _saved_spec(root, container_id)
    process = oci_config.settings_of(spec).process
    assert process is not None
    return process
