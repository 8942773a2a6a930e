"""The child's filesystem: the ordered mount operations of a container with a root filesystem.

Inside the child (``init.py``, after ``/`` was made recursively private) the root
filesystem is set up by an ordered list of small operations, bubblewrap-style:
``child_ops(spec, dirs)`` *builds* the list from the spec (pure, testable without
root) and init *runs* it, reporting the name of a failing step over the error pipe:

    overlay(image, upper, work) at the container's mount point
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

Built in the supervisor, run in the child: the spawn helper loads this module before
the clone (after ``pivot_root`` the child can import nothing), so it imports only
what the child needs, and nothing of the host's stores (``state``, ``images``,
``rootfs``): where the container's directories are comes in as ``ContainerDirs``.
Every call that touches the kernel goes through ``SYSCALLS`` (tests record them).
"""

from __future__ import annotations

import errno
import os
import stat

from . import _linux, wire
from ._named import NamedTuple

# What typing.TYPE_CHECKING is, without importing typing (helper.py: what the spawn
# helper may load; it loads this module, not spec or dataclasses).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .spec import ContainerSpec, Mount
    from .userns import Mapping

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

#: where ``--init`` finds its init inside a root filesystem (docker's path for tini)
INIT_PATH = "/sbin/docker-init"

#: docker's read-only paths
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


_NOSUID_NODEV_NOEXEC = _linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC
#: the per-mount flags a read-only remount must keep (statvfs f_flag bits equal MS_*)
_KEEP_FLAGS = _NOSUID_NODEV_NOEXEC | 1024 | 2048 | 4096  # | MS_NOATIME | MS_NODIRATIME | MS_RELATIME


class ContainerDirs(NamedTuple):
    """The host paths a container's root filesystem is made of."""

    #: the image: the overlay's read-only lower layer
    lower: str
    #: the overlay's writable layer and its work directory
    upper: str
    work: str
    #: where the merged root is mounted (in the child's namespace only)
    mountpoint: str


# ------------------------------------------------------------------ the calls


class Kernel:
    """Every call the filesystem steps make that reaches the kernel.

    Tests replace ``KERNEL`` with a recording fake (youki's ``TestHelperSyscall``
    idea), so the steps' logic is checked without root.
    """

    def mount(
        self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None
    ) -> None:
        """mount(2)."""
        _linux.mount(source, target, fstype, flags, data)

    def umount(self, target: str, flags: int) -> None:
        """umount2(2)."""
        _linux.umount(target, flags)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        """pivot_root(2)."""
        _linux.pivot_root(new_root, put_old)

    def chdir(self, path: str) -> None:
        """chdir(2)."""
        os.chdir(path)

    def fchdir(self, fd: int) -> None:
        """fchdir(2)."""
        os.fchdir(fd)

    def open(self, path: str, flags: int) -> int:
        """open(2) of a host path (close-on-exec)."""
        return os.open(path, flags | os.O_CLOEXEC)

    def open_in(self, root_fd: int, path: str, flags: int) -> int:
        """openat2(2) of ``path`` inside the directory ``root_fd`` as if it were ``/``:
        symlinks, absolute ones too, and ``..`` never leave it; no magic links
        (``_linux.openat2`` tries again when a rename raced with the lookup)."""
        resolve = _linux.RESOLVE_IN_ROOT | _linux.RESOLVE_NO_MAGICLINKS
        return _linux.openat2(root_fd, path, flags | os.O_CLOEXEC, resolve=resolve)

    def open_existing_in(self, root_fd: int, path: str, flags: int) -> int:
        """``open_in``, or -1 when ``path`` does not exist (a masked path this kernel
        does not have: no exception made in the child for it)."""
        resolve = _linux.RESOLVE_IN_ROOT | _linux.RESOLVE_NO_MAGICLINKS
        return _linux.openat2(root_fd, path, flags | os.O_CLOEXEC, resolve=resolve, missing_ok=True)

    def mkdir_at(self, dir_fd: int, name: str) -> None:
        """mkdirat(2), mode 0755."""
        os.mkdir(name, 0o755, dir_fd=dir_fd)

    def create_at(self, dir_fd: int, name: str) -> None:
        """An empty file (a mount point for a file), never through a symlink."""
        os.close(
            os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
                dir_fd=dir_fd,
            )
        )

    def readlink_at(self, dir_fd: int, name: str) -> str:
        """readlinkat(2)."""
        return os.readlink(name, dir_fd=dir_fd)

    def symlink_at(self, target: str, dir_fd: int, name: str) -> None:
        """symlinkat(2)."""
        os.symlink(target, name, dir_fd=dir_fd)

    def is_dir(self, fd: int) -> bool:
        """Whether the open ``fd`` is a directory."""
        return stat.S_ISDIR(os.fstat(fd).st_mode)

    def mount_flags(self, fd: int) -> int:
        """The mount flags (statvfs f_flag, which equal MS_*) of the mount ``fd`` is on."""
        return os.fstatvfs(fd).f_flag

    def make_read_only(self, fd: int, recursive: bool) -> None:
        """mount_setattr(2) MOUNT_ATTR_RDONLY on the mount ``fd`` is the root of."""
        _linux.mount_setattr_rdonly_fd(fd, recursive)

    def close(self, fd: int) -> None:
        """close(2)."""
        os.close(fd)

    def openpty(self) -> tuple[int, int]:
        """A pty pair (through the ``/dev/ptmx`` of the current root)."""
        return os.openpty()

    def ttyname(self, fd: int) -> str:
        """The path of the terminal on ``fd``."""
        return os.ttyname(fd)

    def mknod_at(self, dir_fd: int, name: str, mode: int, device: int) -> None:
        """mknodat(2)."""
        os.mknod(name, mode, device, dir_fd=dir_fd)

    def set_owner(self, dir_fd: int, name: str, mode: int, uid: int, gid: int) -> None:
        """chmod and chown of ``name`` (never through a symlink)."""
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.chmod(fd_path(fd), mode)  # an O_PATH fd: through its magic link
            os.chown(fd_path(fd), uid, gid)
        finally:
            os.close(fd)

    def write(self, path: str, data: bytes) -> None:
        """Write ``data`` to an existing file in one write(2) (a sysctl)."""
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def chroot(self, path: str) -> None:
        """chroot(2)."""
        os.chroot(path)


#: the calls the steps make (tests swap in a fake)
KERNEL = Kernel()


# ------------------------------------------------------------------ paths in the root


def fd_path(fd: int) -> str:
    """The magic link of an open fd: mounting onto it mounts onto exactly the file or
    directory that was opened, whatever has happened to its path since (runc's
    answer to CVE-2021-30465, a symlink swapped in between a check and a mount)."""
    return f"/proc/self/fd/{fd}"


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def _in_root(path: str) -> str:
    """``path`` relative to the root it is looked up in ("." for the root itself)."""
    return "/".join(_parts(path)) or "."


def open_target(root: str, path: str, *, directory: bool = True, create: bool = True) -> int:
    """An ``O_PATH`` fd of ``path`` inside ``root``, resolved as if ``root`` were
    ``/`` (openat2 ``RESOLVE_IN_ROOT``), creating what is missing when ``create``
    (directories, and the last component as a directory or an empty file; a
    dangling symlink on the way is followed, inside the root, and its target made).

    Every component is looked up again from the root after each creation, so a path
    that a symlink leads through stays inside the root, and what is created is
    created in a directory held open, never by a host path.

    Raises:
        OSError: ENOENT (not ``create``), ENOTDIR (a component exists and is not a
            directory), ELOOP (too many symlinks).
    """
    k = KERNEL
    root_fd = k.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        parts = _parts(path)
        # Nearly every target exists: one lookup of the whole path, the very call the
        # walk below ends with. The walk, a lookup per component, only when that
        # fails: to make what is missing, or to say which component is not a directory.
        try:
            return k.open_in(root_fd, _in_root(path), os.O_PATH | (os.O_DIRECTORY if directory else 0))
        except FileNotFoundError:
            if not create:
                raise
        except OSError:
            pass
        links = 0
        i = 0
        while True:
            last = i == len(parts)
            flags = os.O_PATH | (os.O_DIRECTORY if directory or not last else 0)
            where = "/".join(parts[:i]) or "."
            try:
                fd = k.open_in(root_fd, where, flags)
            except FileNotFoundError:
                if not create or i == 0:
                    raise
                parent = k.open_in(root_fd, "/".join(parts[: i - 1]) or ".", os.O_PATH | os.O_DIRECTORY)
                try:
                    if last and not directory:
                        k.create_at(parent, parts[i - 1])
                    else:
                        k.mkdir_at(parent, parts[i - 1])
                except FileExistsError:
                    # A dangling symlink: make what it points to, inside the root.
                    links += 1
                    if links > 40:
                        raise OSError(
                            errno.ELOOP, f"too many symlinks resolving {path!r} in {root!r}"
                        ) from None
                    target = k.readlink_at(parent, parts[i - 1])
                    base = [] if target.startswith("/") else parts[: i - 1]
                    parts = [*base, *_parts(target), *parts[i:]]
                    i = 0
                    continue
                finally:
                    k.close(parent)
                fd = k.open_in(root_fd, where, flags)
            except NotADirectoryError:
                raise OSError(errno.ENOTDIR, f"{path!r} in {root!r}: {where!r} is not a directory") from None
            if last:
                return fd
            k.close(fd)
            i += 1
    finally:
        k.close(root_fd)


# ------------------------------------------------------------------ child operations


class Op(NamedTuple):
    """One step of the child's filesystem setup: ``fn(*args)``, reported as ``step``."""

    step: str
    fn: Callable[..., None]
    args: tuple[object, ...] = ()

    def run(self) -> None:
        """Execute the step (raises OSError on failure)."""
        self.fn(*self.args)


def _overlay(lower: str, upper: str, work: str, target: str, userxattr: bool = False) -> None:
    # host paths mydocker made (in its own state directory): no resolving needed.
    # userxattr: in a user namespace overlayfs keeps its own data in user.* xattrs
    # (trusted.* needs the host's CAP_SYS_ADMIN).
    data = f"lowerdir={lower},upperdir={upper},workdir={work}" + (",userxattr" if userxattr else "")
    KERNEL.mount("overlay", target, "overlay", 0, data)


def _mount_in(root: str, path: str, fstype: str, flags: int, data: str | None) -> None:
    fd = open_target(root, path)
    try:
        KERNEL.mount(fstype, fd_path(fd), fstype, flags, data)
    finally:
        KERNEL.close(fd)


def _bind_in(root: str, source: str, path: str, read_only: bool = False) -> None:
    k = KERNEL
    # The source is a host path the user named (a volume) or a device node: what it
    # is now is what gets mounted, even if its path changes meanwhile.
    src = k.open(source, os.O_PATH)
    try:
        is_dir = k.is_dir(src)
        fd = open_target(root, path, directory=is_dir)
        try:
            k.mount(fd_path(src), fd_path(fd), None, _linux.MS_BIND | _linux.MS_REC, None)
        finally:
            k.close(fd)
    finally:
        k.close(src)
    if read_only:
        _make_read_only(root, path, recursive=is_dir)


def _make_read_only(root: str, path: str, recursive: bool = False) -> None:
    # Opened again: the fd of a mount point taken before the mount names what is
    # under the mount, not the mount.
    k = KERNEL
    fd = open_target(root, path, directory=False, create=False)
    try:
        if recursive:
            try:
                # one call for the mount and every submount under it (Linux 5.12)
                k.make_read_only(fd, recursive=True)
                return
            except OSError as e:
                if e.errno not in (errno.ENOSYS, errno.EINVAL):
                    raise
        keep = k.mount_flags(fd) & _KEEP_FLAGS
        k.mount(None, fd_path(fd), None, _linux.MS_REMOUNT | _linux.MS_BIND | _linux.MS_RDONLY | keep, None)
    finally:
        k.close(fd)


# Masked and read-only paths: a dozen and a half per container with a root
# filesystem, which --privileged has none of. A container of mydocker's has them all
# done by one step from one root fd (``_hide_and_protect``); an OCI bundle's, one
# step each. Each path is one lookup from the root (never a walk: nothing is made),
# and one this kernel lacks costs no exception.


def _mask_at(k: Kernel, root_fd: int, path: str) -> None:
    fd = k.open_existing_in(root_fd, path, os.O_PATH)
    if fd < 0:
        return  # not on this kernel: nothing to hide
    try:
        if k.is_dir(fd):
            flags = _linux.MS_RDONLY | _NOSUID_NODEV_NOEXEC
            k.mount("tmpfs", fd_path(fd), "tmpfs", flags, "size=0,mode=755")
        else:
            k.mount("/dev/null", fd_path(fd), None, _linux.MS_BIND, None)
    finally:
        k.close(fd)


def _read_only_at(k: Kernel, root_fd: int, path: str, bound: bool = False) -> None:
    # bound: the bind is made already, only the remount is left
    if not bound:
        fd = k.open_existing_in(root_fd, path, os.O_PATH)
        if fd < 0:
            return
        try:
            k.mount(fd_path(fd), fd_path(fd), None, _linux.MS_BIND | _linux.MS_REC, None)
        finally:
            k.close(fd)
    # Looked up again: the new mount, not what is under it.
    fd = k.open_in(root_fd, path, os.O_PATH)
    try:
        keep = k.mount_flags(fd) & _KEEP_FLAGS
        k.mount(None, fd_path(fd), None, _linux.MS_REMOUNT | _linux.MS_BIND | _linux.MS_RDONLY | keep, None)
    finally:
        k.close(fd)


def _hide_and_protect(root: str, masked: tuple[str, ...], read_only: tuple[str, ...]) -> None:
    """Hide ``masked`` (a file behind /dev/null, a directory behind an empty
    read-only tmpfs), then bind each of ``read_only`` onto itself read-only."""
    if type(KERNEL) is Kernel:
        _hide_and_protect_raw(root, masked, read_only)
        return
    k = KERNEL
    root_fd = k.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        for path in masked:
            _mask_at(k, root_fd, path)
        for path in read_only:
            _read_only_at(k, root_fd, path)
    finally:
        k.close(root_fd)


_DEV_NULL = b"/dev/null"
_MASK_FLAGS = _linux.MS_RDONLY | _NOSUID_NODEV_NOEXEC


def _same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _hide_and_protect_raw(root: str, masked: tuple[str, ...], read_only: tuple[str, ...]) -> None:
    # What the steps above do through ``Kernel``, in raw calls: a container's child
    # runs this for every container with a root filesystem, and every Python object it
    # touches costs a copy-on-write fault (_linux's "raw calls"). The same mounts,
    # the same lookups (tests/test_mounts.py compares the two in a mount namespace);
    # a directory is told from a file by opening it as one, not by a stat.
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for path in masked:
            name = os.fsencode(path)
            fd = _linux.raw_open_in_root(root_fd, name, True)
            is_dir = fd >= 0
            if fd == -errno.ENOTDIR:
                fd = _linux.raw_open_in_root(root_fd, name, False)
            if fd == -errno.ENOENT:
                continue  # not on this kernel: nothing to hide
            if fd < 0:
                raise _linux.os_error(f"openat2({path!r} in {root!r})", -fd)
            target = b"/proc/self/fd/%d" % fd
            if is_dir:
                rc = _linux.raw_mount(b"tmpfs", target, b"tmpfs", _MASK_FLAGS, b"size=0,mode=755")
            else:
                rc = _linux.raw_mount(_DEV_NULL, target, None, _linux.MS_BIND, None)
            err = _linux.errno_now() if rc != 0 else 0
            _linux.raw_close(fd)
            if err:
                raise _linux.os_error(f"mask {path!r}: mount", err)
        for path in read_only:
            name = os.fsencode(path)
            fd = _linux.raw_open_in_root(root_fd, name, False)
            if fd == -errno.ENOENT:
                continue
            if fd < 0:
                raise _linux.os_error(f"openat2({path!r} in {root!r})", -fd)
            if _same_file(fd, root_fd):
                # The root itself ("/", or a symlink to it): a lookup from root_fd
                # never lands on a mount stacked on the root, so a bind there would be
                # made and the mount under it made read-only. The root's own mount
                # is made read-only instead, as root.readonly does.
                _linux.raw_close(fd)
                _make_read_only(root, "/")
                continue
            target = b"/proc/self/fd/%d" % fd
            rc = _linux.raw_mount(target, target, None, _linux.MS_BIND | _linux.MS_REC, None)
            err = _linux.errno_now() if rc != 0 else 0
            _linux.raw_close(fd)
            if err:
                raise _linux.os_error(f"bind {path!r} onto itself", err)
            # Looked up again: the new mount, not what is under it.
            fd = _linux.raw_open_in_root(root_fd, name, False)
            if fd < 0:
                raise _linux.os_error(f"openat2({path!r} in {root!r})", -fd)
            err = -_linux.raw_make_read_only(fd)
            _linux.raw_close(fd)
            if err:  # before Linux 5.12, or refused (a seccomp filter): a remount
                _read_only_at(KERNEL, root_fd, path, bound=True)
    finally:
        os.close(root_fd)


def _mask(root: str, path: str) -> None:
    _hide_and_protect(root, (_in_root(path),), ())


def _read_only_path(root: str, path: str) -> None:
    _hide_and_protect(root, (), (_in_root(path),))


def _symlink_in(root: str, link_target: str, path: str, exist_ok: bool = False) -> None:
    parts = _parts(path)
    parent = open_target(root, "/".join(parts[:-1]))
    try:
        KERNEL.symlink_at(link_target, parent, parts[-1])
    except FileExistsError:
        if not exist_ok:
            raise
    finally:
        KERNEL.close(parent)


# The steps of an OCI bundle's root (``oci/fs.py`` builds their list): its root used
# as it is (no overlay), any filesystem type, bind mounts with flags and propagation,
# device nodes, sysctls, a pause for the runtime's hooks, a chroot without a mount
# namespace of its own.


def _bind_root(root: str) -> None:
    # The bundle's root bound onto itself: pivot_root wants a mount, and a read-only
    # root is a remount of it.
    fd = KERNEL.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        KERNEL.mount(fd_path(fd), fd_path(fd), None, _linux.MS_BIND | _linux.MS_REC, None)
    finally:
        KERNEL.close(fd)


def _propagate(root: str, path: str, flags: int) -> None:
    # MS_SHARED, MS_SLAVE, MS_PRIVATE or MS_UNBINDABLE (| MS_REC) of the mount at path
    if root == "/" and not _parts(path):  # the root after pivot_root: no /proc needed
        KERNEL.mount(None, "/", None, flags, None)
        return
    fd = open_target(root, path, directory=False, create=False)
    try:
        KERNEL.mount(None, fd_path(fd), None, flags, None)
    finally:
        KERNEL.close(fd)


def _mount_fs(
    root: str, path: str, source: str, fstype: str, flags: int, data: str | None, propagation: tuple[int, ...]
) -> None:
    fd = open_target(root, path)
    try:
        KERNEL.mount(source, fd_path(fd), fstype, flags, data)
    finally:
        KERNEL.close(fd)
    for prop in propagation:
        _propagate(root, path, prop)


def _bind_mount(
    root: str,
    source: str,
    path: str,
    recursive: bool,
    flags: int,
    propagation: tuple[int, ...],
    recursive_ro: bool,
) -> None:
    k = KERNEL
    src = k.open(source, os.O_PATH)  # what it is now is what gets mounted (see _bind_in)
    try:
        fd = open_target(root, path, directory=k.is_dir(src))
        bind = _linux.MS_BIND | (_linux.MS_REC if recursive else 0)
        try:
            k.mount(fd_path(src), fd_path(fd), None, bind, None)
        finally:
            k.close(fd)
    finally:
        k.close(src)
    if flags:  # a bind takes no flags but by a remount of it
        fd = open_target(root, path, directory=False, create=False)
        try:
            remount = _linux.MS_REMOUNT | _linux.MS_BIND | flags
            try:
                k.mount(None, fd_path(fd), None, remount, None)
            except PermissionError:
                # the source's nosuid/nodev/noexec/atime flags are locked in a user
                # namespace that does not own its mount: keep them
                k.mount(None, fd_path(fd), None, remount | (k.mount_flags(fd) & _KEEP_FLAGS), None)
        finally:
            k.close(fd)
    if recursive_ro:
        _make_read_only(root, path, recursive=True)
    for prop in propagation:
        _propagate(root, path, prop)


def _mknod_in(root: str, path: str, mode: int, device: int, uid: int, gid: int) -> None:
    # An existing node is kept, as runc keeps it.
    parts = _parts(path)
    parent = open_target(root, "/".join(parts[:-1]))
    try:
        try:
            KERNEL.mknod_at(parent, parts[-1], mode, device)
        except FileExistsError:
            return
        KERNEL.set_owner(parent, parts[-1], stat.S_IMODE(mode), uid, gid)
    finally:
        KERNEL.close(parent)


def _write_in(root: str, path: str, data: bytes) -> None:
    # a sysctl: /proc/sys/... of the container's own /proc
    fd = open_target(root, path, directory=False, create=False)
    try:
        KERNEL.write(fd_path(fd), data)
    finally:
        KERNEL.close(fd)


def _make_dir(root: str, path: str) -> None:
    KERNEL.close(open_target(root, path))


def _chroot(root: str) -> None:
    # A container without a mount namespace of its own: no mount is made (it would be
    # the host's), the process only gets the bundle's root as its root.
    k = KERNEL
    k.chdir(root)
    k.chroot(".")
    k.chdir("/")


def _chroot_fd(root_fd: int) -> None:
    # An exec into a container without a mount namespace of its own: its root (an
    # O_PATH fd of /proc/PID/root taken by the runtime) becomes ours.
    k = KERNEL
    k.fchdir(root_fd)
    k.chroot(".")
    k.chdir("/")


def _pause_for_hooks(errpipe: int, hooks: int) -> None:
    wire.ask_for_hooks(errpipe, hooks)


def _pivot_root(new_root: str) -> None:
    # pivot_root(".", ".") stacks the old root on top of the new one, so no put_old
    # directory is needed (the root may be read-only); detaching it then leaves no
    # host path reachable. runc does the same.
    k = KERNEL
    k.chdir(new_root)
    k.pivot_root(".", ".")
    k.umount(".", _linux.MNT_DETACH)
    k.chdir("/")


def open_console(sock_fd: int, console: bool = True) -> int:
    """In the child, after ``pivot_root``: make the container's terminal, the docker way.

    The pty is opened in the container's own devpts (so ``tty`` names a path that
    exists inside, ``/dev/pts/0``), its slave is bound onto ``/dev/console``, and the
    master is sent to the supervisor over ``sock_fd`` (``wire.send_console``), which
    sizes the terminal before the child goes on. Returns the slave fd (to become
    stdin/out/err).

    Raises:
        OSError: the pty cannot be made, or the supervisor went away.
    """
    k = KERNEL
    master, slave = k.openpty()  # /dev/ptmx -> pts/ptmx: the new devpts instance
    try:
        if console:  # PID 1's; an exec's terminal is only its own
            _bind_in("/", k.ttyname(slave), "/dev/console")
        wire.send_console(sock_fd, master)
    except BaseException:
        k.close(slave)
        raise
    finally:
        k.close(master)
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
        _hide_and_protect,
        _symlink_in,
        _pivot_root,
        _bind_root,
        _propagate,
        _mount_fs,
        _bind_mount,
        _mknod_in,
        _write_in,
        _make_dir,
        _chroot,
        _chroot_fd,
        _pause_for_hooks,
    )
}


def _depth(m: Mount) -> int:
    return len([p for p in os.path.normpath(m.target).split("/") if p])


def child_ops(
    spec: ContainerSpec,
    dirs: ContainerDirs,
    init: str | None = None,
    *,
    rootless: bool = False,
    mapping: Mapping | None = None,
) -> list[Op]:
    """The ordered filesystem operations of a container with a root filesystem made
    of ``dirs``; ``init`` is the host path of the init bound read-only at
    ``INIT_PATH``. The terminal of ``-t`` comes after them: ``open_console``.

    ``--privileged`` leaves /sys and /sys/fs/cgroup writable and nothing masked.
    ``rootless``: the mounts are made in the container's own user namespace, which
    may mount sysfs only in a network namespace it owns, cgroup2 only in a cgroup
    namespace it owns, and give devpts a group only if it is mapped (``mapping``)."""
    root = dirs.mountpoint
    privileged = spec.privileged
    ns = spec.namespaces
    ops = [
        Op(f"mount overlay of {dirs.lower}", _overlay, (dirs.lower, dirs.upper, dirs.work, root, rootless)),
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
                # group tty, as docker's, when the user namespace maps it
                "newinstance,ptmxmode=0666,mode=0620"
                + (",gid=5" if not rootless or mapping is None or mapping.maps_gid(5) else ""),
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
    ro = 0 if privileged else _linux.MS_RDONLY
    if rootless and "net" not in ns:
        # sysfs shows the mounter's network namespace: one it does not own is not
        # its to mount (--network host): the host's /sys then, read-only
        ops.append(Op("bind /sys", _bind_in, (root, "/sys", "/sys", True)))
    else:
        ops.append(Op("mount /sys", _mount_in, (root, "/sys", "sysfs", ro | _NOSUID_NODEV_NOEXEC, None)))
    if not rootless or "cgroup" in ns:
        # The container's own cgroup (with a cgroup namespace), read-only: a cgroup
        # it could write would be a way to the host (release_agent on v1, CVE-2022-0492).
        cgroup_flags = ro | _NOSUID_NODEV_NOEXEC
        ops.append(
            Op("mount /sys/fs/cgroup", _mount_in, (root, "/sys/fs/cgroup", "cgroup2", cgroup_flags, None))
        )
    if init is not None:
        ops.append(Op(f"bind the init {init}", _bind_in, (root, init, INIT_PATH, True)))
    for m in sorted(spec.mounts, key=_depth):  # parents before children
        if m.type == "tmpfs":
            flags, data = m.tmpfs_flags()
            ops.append(Op(f"mount tmpfs {m.target}", _mount_in, (root, m.target, "tmpfs", flags, data)))
        else:
            ops.append(
                Op(f"mount volume {m.source}:{m.target}", _bind_in, (root, m.source, m.target, m.read_only))
            )
    if not privileged:
        masked = tuple(_in_root(p) for p in MASKED_PATHS)
        read_only = tuple(_in_root(p) for p in READONLY_PATHS)
        ops.append(
            Op(
                "mask and make read-only paths of /proc and /sys",
                _hide_and_protect,
                (root, masked, read_only),
            )
        )
    if spec.read_only:
        ops.append(Op("make the root filesystem read-only", _make_read_only, (root, "/")))
    ops.append(Op("pivot_root", _pivot_root, (root,)))
    return ops
