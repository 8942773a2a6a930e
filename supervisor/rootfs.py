"""Container filesystems: the child's mount operations and the host's state directory.

Inside the child (``init.py``, after ``/`` was made recursively private) the root
filesystem is set up by an ordered list of small operations, bubblewrap-style:
``child_ops(spec)`` *builds* the list from the spec (pure, testable without root)
and init *runs* it, reporting the name of a failing step over the error pipe:

    overlay(image, upper, work) at <container dir>/rootfs
    /proc, /dev (tmpfs + host device nodes + devpts + shm), /sys read-only
    volumes and tmpfs mounts (parents before children)
    masked and read-only /proc and /sys paths
    read-only root (--read-only)
    pivot_root into it, detach the old root
    (with -t, then open_console: a pty in the container's devpts, master sent back)

Every mount happens in the child's own mount namespace, so it disappears with the
container: the host's mount table never changes. Paths inside the container are
resolved with ``resolve_in`` (symlinks are followed as if the image were ``/``), so
an image cannot make a mount or a ``mkdir`` land outside of it.

On the host, the state directory holds one directory per container::

    <state dir>/containers/<id>/config.json   the spec (for ps / rm / commit later)
                                /upper /work  the overlay's writable layer
                                /rootfs       mount point of the merged root (empty on the host)
    <state dir>/images/<name>/rootfs          imported images (see images.py)

``prepare`` makes it and registers its removal in the container's ExitStack, so it
goes away with the container on every path (docker's ``--rm``). ``config.json`` names
its owner (supervisor pid and start time): if the supervisor is SIGKILLed, its
containers die with it and the next mydocker process (its first container, or
``image rm``) sweeps the directories whose owner is gone.

This module is imported by ``init.py`` before the clone: after ``pivot_root`` the
child can no longer import anything, so everything the child needs is imported here
at the top, and host-only modules (json, shutil) are imported inside the host-side
functions.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass

from . import _linux
from .errors import SpecError
from .spec import ContainerSpec, Mount

#: environment variable that overrides the default state directory
STATE_DIR_ENV = "MYDOCKER_STATE_DIR"
DEFAULT_STATE_DIR = "/var/lib/mydocker"

#: host device nodes bind-mounted into the container's /dev (docker's set)
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

#: docker's masked paths: hidden behind /dev/null (files) or an empty read-only tmpfs
MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)

#: docker's read-only paths
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

_NOSUID_NODEV_NOEXEC = _linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC
#: the per-mount flags a read-only remount must keep (statvfs f_flag bits equal MS_*)
_KEEP_FLAGS = _NOSUID_NODEV_NOEXEC | 1024 | 2048 | 4096  # | MS_NOATIME | MS_NODIRATIME | MS_RELATIME


# ------------------------------------------------------------------ state directory


def state_dir(explicit: str | None = None) -> str:
    """The state directory: ``explicit``, else ``$MYDOCKER_STATE_DIR``, else /var/lib/mydocker."""
    return os.path.abspath(explicit or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


@dataclass(frozen=True)
class Layout:
    """Where one container's files live under the state directory."""

    dir: str

    @classmethod
    def of(cls, spec: ContainerSpec) -> Layout:
        """The layout of a resolved spec (``state_dir`` filled in)."""
        return cls(os.path.join(state_dir(spec.state_dir), "containers", spec.id))

    @property
    def config(self) -> str:
        """The container's spec, as JSON."""
        return os.path.join(self.dir, "config.json")

    @property
    def upper(self) -> str:
        """The overlay's upper (writable) layer."""
        return os.path.join(self.dir, "upper")

    @property
    def work(self) -> str:
        """The overlay's work directory."""
        return os.path.join(self.dir, "work")

    @property
    def rootfs(self) -> str:
        """The mount point of the merged root (in the child's namespace only)."""
        return os.path.join(self.dir, "rootfs")


# ------------------------------------------------------------------ host side


def resolve(spec: ContainerSpec) -> ContainerSpec:
    """Fill in ``state_dir`` and, for ``image``, ``rootfs``; check the host side.

    Nothing is created. A spec without a root filesystem is returned unchanged.

    Raises:
        SpecError: unknown image; a missing, non-directory or unreadable rootfs; a
            volume whose host path does not exist; a path overlayfs cannot take.
    """
    if spec.rootfs is None and spec.image is None:
        return spec
    changes: dict[str, object] = {}
    sdir = state_dir(spec.state_dir)
    if spec.state_dir != sdir:
        changes["state_dir"] = sdir
    if spec.image is not None:
        from .images import image_rootfs

        rootfs = image_rootfs(spec.image, sdir)
        if spec.rootfs is not None and os.path.realpath(spec.rootfs) != os.path.realpath(rootfs):
            raise SpecError("give either a root filesystem or an image, not both")
        if spec.rootfs != rootfs:
            changes["rootfs"] = rootfs
    if changes:
        spec = spec.evolve(**changes)
    assert spec.rootfs is not None
    _check_dir(spec.rootfs, "root filesystem")
    real_root, real_state = os.path.realpath(spec.rootfs), os.path.realpath(sdir)
    if os.path.commonpath([real_root, real_state]) == real_root:
        # the container's layers would be written into its own image (and overlayfs
        # does not support an upper layer inside its lower one)
        raise SpecError(
            f"the state directory {sdir} is inside the root filesystem {spec.rootfs} (use --state-dir)"
        )
    for path, what in ((spec.rootfs, "root filesystem"), (sdir, "state directory")):
        # overlayfs options are comma separated and lowerdir is colon separated
        if any(c in path for c in ",:\\"):
            raise SpecError(f"the {what} path cannot contain ',', ':' or '\\': {path!r}")
    for m in spec.mounts:
        if m.type == "bind":
            assert m.source is not None
            try:
                os.stat(m.source)
            except FileNotFoundError:
                raise SpecError(f"volume host path does not exist: {m.source}") from None
            except OSError as e:
                raise SpecError(f"volume host path {m.source}: {e.strerror}") from None
    return spec


def _check_dir(path: str, what: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SpecError(f"{what} does not exist: {path}") from None
    except OSError as e:
        raise SpecError(f"{what} {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SpecError(f"{what} is not a directory: {path}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise SpecError(f"{what} is not readable: {path}")
    try:
        os.listdir(path)
    except OSError as e:
        raise SpecError(f"{what} {path} is not readable: {e.strerror}") from None


def spec_json(spec: ContainerSpec) -> str:
    """The spec as JSON (what ``config.json`` holds)."""
    import dataclasses
    import json

    def default(o: object) -> object:
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        return str(o)

    owner = {"pid": os.getpid(), "start": _start_time(os.getpid())}
    doc = {"version": 1, "owner": owner, "spec": dataclasses.asdict(spec)}
    return json.dumps(doc, default=default, indent=1)


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if it is gone:
    with the pid, it names a process even after the pid was reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


#: state directories already swept by this process
_swept: set[str] = set()
#: a container directory without config.json this old (seconds) was abandoned while
#: being made (its supervisor died within the microseconds before writing it)
ABANDONED_AFTER = 3600.0


def sweep(sdir: str) -> list[str]:
    """Remove the container directories whose supervisor died without removing them
    (it was SIGKILLed: its containers died with it, by PR_SET_PDEATHSIG). A directory
    whose owner still runs is left alone, and so is one without config.json (being
    made right now) unless it is older than ``ABANDONED_AFTER``. Returns the ids
    removed.
    """
    import json
    import time

    containers = os.path.join(sdir, "containers")
    try:
        ids = os.listdir(containers)
    except OSError:
        return []
    removed = []
    for cid in ids:
        cdir = os.path.join(containers, cid)
        try:
            with open(os.path.join(cdir, "config.json")) as f:
                owner = json.load(f)["owner"]
            pid, start = int(owner["pid"]), owner["start"]
        except FileNotFoundError:
            try:
                abandoned = time.time() - os.stat(cdir).st_mtime > ABANDONED_AFTER
            except OSError:
                continue
            if abandoned:
                remove_layout(Layout(cdir))
                removed.append(cid)
            continue
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid == os.getpid() or (start is not None and _start_time(pid) == start):
            continue
        remove_layout(Layout(os.path.join(containers, cid)))
        removed.append(cid)
    return removed


def prepare(spec: ContainerSpec, stack: contextlib.ExitStack) -> Layout | None:
    """Create the container's directory (spec, overlay upper/work, mount point).

    Its removal is registered in ``stack`` before anything is created, so closing
    the stack removes whatever exists on every path. Returns ``None`` (and creates
    nothing) for a container without a root filesystem. ``spec`` must be resolved.

    Raises:
        SpecError: a container with this id already has a directory.
        OSError: the state directory cannot be written.
    """
    if spec.rootfs is None:
        return None
    layout = Layout.of(spec)
    os.makedirs(os.path.dirname(layout.dir), mode=0o711, exist_ok=True)
    sdir = state_dir(spec.state_dir)
    if sdir not in _swept:  # once per process: a CLI run, or a service's first container
        _swept.add(sdir)
        sweep(sdir)
    try:
        os.mkdir(layout.dir, 0o700)
    except FileExistsError:
        raise SpecError(
            f"container {spec.short_id} already exists in {os.path.dirname(layout.dir)}"
        ) from None
    stack.callback(remove_layout, layout)
    # First, and whole or not at all (written aside, then renamed): the owner in
    # config.json is how a later sweep tells a dead supervisor's directory from one
    # being made right now.
    partial = f"{layout.config}.{os.getpid()}.tmp"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "w") as f:
        f.write(spec_json(spec))
    os.rename(partial, layout.config)
    for d in (layout.upper, layout.work, layout.rootfs):
        os.mkdir(d, 0o755)
    return layout


def remove_layout(layout: Layout) -> None:
    """Remove a container's directory (best effort, never raises)."""
    import shutil

    def onerror(func: Callable[..., object], path: str, exc: object) -> None:
        # overlayfs leaves work/work with mode 000: root can still remove it, so a
        # failure here is unexpected; keep going and leave the rest for `rm`.
        pass

    shutil.rmtree(layout.dir, onerror=onerror)


# ------------------------------------------------------------------ path resolution


def resolve_in(root: str, path: str) -> str:
    """Join ``path`` to ``root`` resolving symlinks as if ``root`` were ``/``.

    Absolute symlinks restart at ``root`` and ``..`` never climbs above it, so the
    result always lies inside ``root`` (like openat2's RESOLVE_IN_ROOT). Components
    that do not exist are joined as they are.

    Raises:
        OSError: ELOOP after 40 symlinks.
    """
    todo = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 40:
                raise OSError(errno.ELOOP, f"too many symlinks resolving {path!r} in {root!r}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        done.append(part)
    return os.path.join(root, *done)


def _mkdirs(path: str) -> None:
    # path comes from resolve_in: no existing component is a symlink
    try:
        os.makedirs(path, 0o755, exist_ok=True)
    except FileExistsError:
        raise OSError(errno.ENOTDIR, f"mkdir {path!r}: exists and is not a directory") from None


def _mountpoint(root: str, path: str, directory: bool = True) -> str:
    """Resolve ``path`` inside ``root`` and make sure a directory (or file) is there."""
    target = resolve_in(root, path)
    if directory:
        _mkdirs(target)
        return target
    if not os.path.lexists(target):
        _mkdirs(os.path.dirname(target))
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644))
    return target


# ------------------------------------------------------------------ child operations


@dataclass(frozen=True)
class Op:
    """One step of the child's filesystem setup: ``fn(*args)``, reported as ``step``."""

    step: str
    fn: Callable[..., None]
    args: tuple[object, ...] = ()

    def run(self) -> None:
        """Execute the step (raises OSError on failure)."""
        self.fn(*self.args)


def _overlay(lower: str, upper: str, work: str, target: str) -> None:
    _linux.mount("overlay", target, "overlay", 0, f"lowerdir={lower},upperdir={upper},workdir={work}")


def _mount_in(root: str, path: str, fstype: str, flags: int, data: str | None) -> None:
    _linux.mount(fstype, _mountpoint(root, path), fstype, flags, data)


def _bind_in(root: str, source: str, path: str, read_only: bool = False) -> None:
    is_dir = os.path.isdir(source)
    target = _mountpoint(root, path, directory=is_dir)
    _linux.mount(source, target, None, _linux.MS_BIND | _linux.MS_REC)
    if read_only:
        _make_read_only(target, recursive=is_dir)


def _make_read_only(target: str, recursive: bool = False) -> None:
    if recursive:
        try:
            # one call for the mount and every submount under it (Linux 5.12)
            _linux.mount_setattr_rdonly(target, recursive=True)
            return
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EINVAL):
                raise
    keep = os.statvfs(target).f_flag & _KEEP_FLAGS
    _linux.mount(None, target, None, _linux.MS_REMOUNT | _linux.MS_BIND | _linux.MS_RDONLY | keep)


def _mask(root: str, path: str) -> None:
    target = resolve_in(root, path)
    try:
        st = os.stat(target)
    except OSError:
        return  # not on this kernel: nothing to hide
    if stat.S_ISDIR(st.st_mode):
        _linux.mount("tmpfs", target, "tmpfs", _linux.MS_RDONLY | _NOSUID_NODEV_NOEXEC, "size=0,mode=755")
    else:
        _linux.mount("/dev/null", target, None, _linux.MS_BIND)


def _read_only_path(root: str, path: str) -> None:
    target = resolve_in(root, path)
    if not os.path.exists(target):
        return
    _linux.mount(target, target, None, _linux.MS_BIND | _linux.MS_REC)
    _make_read_only(target)


def _symlink_in(root: str, link_target: str, path: str) -> None:
    os.symlink(link_target, resolve_in(root, path))


def _pivot_root(new_root: str) -> None:
    # pivot_root(".", ".") stacks the old root on top of the new one, so no put_old
    # directory is needed (the root may be read-only); detaching it then leaves no
    # host path reachable. runc does the same.
    os.chdir(new_root)
    _linux.pivot_root(".", ".")
    _linux.umount(".", _linux.MNT_DETACH)
    os.chdir("/")


def open_console(sock_fd: int) -> int:
    """In the child, after ``pivot_root``: make the container's terminal, the docker way.

    The pty is opened in the container's own devpts (so ``tty`` names a path that
    exists inside, ``/dev/pts/0``), its slave is bound onto ``/dev/console``, and the
    master is sent to the supervisor over ``sock_fd`` (SCM_RIGHTS). The child then
    waits for one byte: the supervisor has set the window size, so the command never
    starts with a 0x0 terminal. Returns the slave fd (to become stdin/out/err).

    Raises:
        OSError: the pty cannot be made, or the supervisor went away.
    """
    master, slave = os.openpty()  # /dev/ptmx -> pts/ptmx: the new devpts instance
    try:
        _bind_in("/", os.ttyname(slave), "/dev/console")
        sock = socket.socket(fileno=sock_fd)
        try:
            socket.send_fds(sock, [b"pty"], [master])
            if sock.recv(1) != b"1":
                raise OSError(errno.ECONNRESET, "the supervisor went away before the terminal was ready")
        finally:
            sock.close()
    except BaseException:
        os.close(slave)
        raise
    finally:
        os.close(master)
    return slave


#: the functions a child's filesystem steps may call, by name: a request to the spawn
#: helper names them (it is marshalled, and cannot carry functions)
CHILD_FUNCTIONS: dict[str, Callable[..., None]] = {
    f.__name__: f
    for f in (
        _overlay,
        _mount_in,
        _bind_in,
        _make_read_only,
        _mask,
        _read_only_path,
        _symlink_in,
        _pivot_root,
    )
}


def _depth(m: Mount) -> int:
    return len([p for p in os.path.normpath(m.target).split("/") if p])


def child_ops(spec: ContainerSpec) -> list[Op]:
    """The ordered filesystem operations for a resolved spec with a root filesystem
    (``rootfs`` and ``state_dir`` filled in by ``resolve``). The terminal of ``-t``
    comes after them: ``open_console``."""
    assert spec.rootfs is not None
    layout = Layout.of(spec)
    root = layout.rootfs
    ops = [
        Op(f"mount overlay of {spec.rootfs}", _overlay, (spec.rootfs, layout.upper, layout.work, root)),
        Op("mount /proc", _mount_in, (root, "/proc", "proc", _NOSUID_NODEV_NOEXEC, None)),
        Op(
            "mount /dev",
            _mount_in,
            (root, "/dev", "tmpfs", _linux.MS_NOSUID | _linux.MS_STRICTATIME, "mode=755,size=65536k"),
        ),
    ]
    ops += [Op(f"bind /dev/{d}", _bind_in, (root, f"/dev/{d}", f"/dev/{d}")) for d in DEVICES]
    ops += [
        Op(
            "mount /dev/pts",
            _mount_in,
            (
                root,
                "/dev/pts",
                "devpts",
                _linux.MS_NOSUID | _linux.MS_NOEXEC,
                "newinstance,ptmxmode=0666,mode=0620",
            ),
        ),
        Op("symlink /dev/ptmx", _symlink_in, (root, "pts/ptmx", "/dev/ptmx")),
        Op(
            "mount /dev/shm",
            _mount_in,
            (root, "/dev/shm", "tmpfs", _NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k"),
        ),
    ]
    if "ipc" in spec.namespaces:
        ops.append(
            Op("mount /dev/mqueue", _mount_in, (root, "/dev/mqueue", "mqueue", _NOSUID_NODEV_NOEXEC, None))
        )
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        ops.append(Op(f"symlink /dev/{name}", _symlink_in, (root, target, f"/dev/{name}")))
    ops.append(
        Op("mount /sys", _mount_in, (root, "/sys", "sysfs", _linux.MS_RDONLY | _NOSUID_NODEV_NOEXEC, None))
    )
    for m in sorted(spec.mounts, key=_depth):  # parents before children
        if m.type == "tmpfs":
            flags = _linux.MS_NOSUID | _linux.MS_NODEV | (_linux.MS_RDONLY if m.read_only else 0)
            ops.append(
                Op(
                    f"mount tmpfs {m.target}",
                    _mount_in,
                    (root, m.target, "tmpfs", flags, m.options or "mode=1777"),
                )
            )
        else:
            ops.append(
                Op(f"mount volume {m.source}:{m.target}", _bind_in, (root, m.source, m.target, m.read_only))
            )
    ops += [Op(f"mask {p}", _mask, (root, p)) for p in MASKED_PATHS]
    ops += [Op(f"make {p} read-only", _read_only_path, (root, p)) for p in READONLY_PATHS]
    if spec.read_only:
        ops.append(Op("make the root filesystem read-only", _make_read_only, (root,)))
    ops.append(Op("pivot_root", _pivot_root, (root,)))
    return ops
