"""The host's state directory: where mydocker keeps images and containers' files.

    <state dir>/images/<name>/...             imported images (images.py)
    <state dir>/containers/<id>/config.json   the spec (for ps / rm / commit)
                                /lock         held (flock) by the owner while it lives
                                /upper /work  the overlay's writable layer
                                /rootfs       mount point of the merged root (empty on the host)
                                /keep         the directory outlives its owner (records.py)

A registered container's directory (``records.py``: ``run -d``, the CLI's foreground
runs) also holds its record, state and log, and exists without a root filesystem too.

Runs in the supervisor only (the CLI, a service, later the daemon).

Who owns a container's directory: the process holding an exclusive ``flock`` on its
``lock`` file. The kernel drops the lock when that process dies, however it dies, so
a sweeper that can take the lock knows the owner is gone, whatever PID namespace
either of them is in and however pids were reused since. A directory is made under
a temporary name (``.new-<id>``), lock taken and ``config.json`` written, and only
then renamed into place: a directory named like a container always has a lock file.
The sweep removes only what it can prove mydocker made and its owner left: an entry
named like a container (or a temporary one), a real directory (never a symlink,
never followed), with a lock file it can take. A directory with a ``keep`` file
(a detached container's, kept for ``ps -a``, ``logs`` and ``commit`` until ``rm``) is
never swept. Everything is done relative to directory fds opened with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ._fs import DIR_FLAGS as _DIR_FLAGS
from ._fs import remove_tree
from .errors import MydockerError
from .spec import ContainerSpec

#: environment variable that overrides the default state directory
STATE_DIR_ENV = "MYDOCKER_STATE_DIR"
DEFAULT_STATE_DIR = "/var/lib/mydocker"

#: a container's directory, and one being made
_CONTAINER_NAME = re.compile(r"(\.new-)?[0-9a-f]{64}")
_NEW = ".new-"
#: a container's directory being removed: renamed first, so that a removal cut short
#: leaves a name that says it is garbage (the lock file may be gone already)
_TRASH = re.compile(r"\.rm-[0-9a-f]{64}")
_NEW_FILE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def state_dir(explicit: str | None = None) -> str:
    """The state directory: ``explicit``, else ``$MYDOCKER_STATE_DIR``, else for root
    /var/lib/mydocker, for anyone else ``$XDG_DATA_HOME/mydocker`` (by default
    ``~/.local/share/mydocker``): images and containers' layers, as podman keeps them."""
    chosen = explicit or os.environ.get(STATE_DIR_ENV)
    if not chosen:
        if os.geteuid() == 0:
            chosen = DEFAULT_STATE_DIR
        else:
            data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
            chosen = os.path.join(data, "mydocker")
    return os.path.abspath(chosen)


def containers_dir(sdir: str) -> str:
    """Where the containers' directories live."""
    return os.path.join(sdir, "containers")


@dataclass(frozen=True)
class ContainerDir:
    """Where one container's files live under the state directory."""

    dir: str

    @classmethod
    def of(cls, spec: ContainerSpec) -> ContainerDir:
        """The directory of a resolved spec (``state_dir`` filled in)."""
        return cls(os.path.join(containers_dir(state_dir(spec.state_dir)), spec.id))

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


def spec_json(spec: ContainerSpec) -> str:
    """The spec as JSON (what ``config.json`` holds)."""
    import dataclasses
    import json

    def default(o: object) -> object:
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        return str(o)

    return json.dumps({"version": 2, "spec": dataclasses.asdict(spec)}, default=default, indent=1)


def _open_containers(sdir: str, create: bool) -> int:
    """An fd of ``<sdir>/containers``, which must be a real directory (a symlink there
    is refused: ELOOP)."""
    path = containers_dir(sdir)
    if create:
        with contextlib.suppress(FileExistsError):
            os.makedirs(path, mode=0o711)
    try:
        return os.open(path, _DIR_FLAGS)
    except NotADirectoryError:
        # O_DIRECTORY | O_NOFOLLOW on a symlink fails with ENOTDIR, not ELOOP
        if os.path.islink(path):
            raise OSError(errno.ELOOP, f"{path} is a symlink", path) from None
        raise


#: the file whose presence keeps a container's directory after its owner is gone
KEEP = "keep"


class OwnedDir:
    """A container's directory made by ``make``, and the lock that says we own it."""

    def __init__(
        self, where: ContainerDir, lock_fd: int, on_remove: Callable[[], None] | None = None
    ) -> None:
        self.where = where
        self._lock_fd = lock_fd
        self._kept = False
        self._on_remove = on_remove

    @classmethod
    def make(
        cls,
        spec: ContainerSpec,
        files: Mapping[str, bytes] | None = None,
        claim: Callable[[], Callable[[], None]] | None = None,
    ) -> OwnedDir:
        """Make the directory of a resolved spec: locked, ``config.json`` and
        ``files`` written, ``upper``, ``work`` and ``rootfs`` made (with a root
        filesystem), under a temporary name, then ``claim()`` called (it returns what
        undoes it, called when the directory is removed), then renamed into place.
        Nothing is left on failure.

        Raises:
            FileExistsError: a container with this id already has a directory.
            OSError: the state directory cannot be written (or ``containers`` is a
                symlink: ELOOP).
        """
        sdir = state_dir(spec.state_dir)
        cfd = _open_containers(sdir, create=True)
        tmp = _NEW + spec.id
        lock_fd = -1
        try:
            os.mkdir(tmp, 0o700, dir_fd=cfd)
            try:
                dfd = os.open(tmp, _DIR_FLAGS, dir_fd=cfd)
                try:
                    lock_fd = os.open(
                        "lock", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dfd
                    )
                    fcntl.flock(lock_fd, fcntl.LOCK_EX)
                    fd = os.open(
                        "config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dfd
                    )
                    with open(fd, "w") as f:
                        f.write(spec_json(spec))
                    for name, data in (files or {}).items():
                        write_new(dfd, name, data)
                    if spec.rootfs is not None:
                        for d in ("upper", "work", "rootfs"):
                            os.mkdir(d, 0o755, dir_fd=dfd)
                finally:
                    os.close(dfd)
                if os.path.lexists(os.path.join(containers_dir(sdir), spec.id)):
                    raise FileExistsError(errno.EEXIST, f"container {spec.short_id} already exists")
                undo = claim() if claim is not None else None
                try:
                    os.rename(tmp, spec.id, src_dir_fd=cfd, dst_dir_fd=cfd)
                except BaseException:
                    if undo is not None:
                        undo()
                    raise
            except BaseException:
                _remove_entry(cfd, tmp)
                raise
        except BaseException:
            if lock_fd >= 0:
                os.close(lock_fd)
            raise
        finally:
            os.close(cfd)
        return cls(ContainerDir.of(spec), lock_fd, undo)

    def keep(self) -> None:
        """From now on the directory outlives its owner: ``remove`` only gives up
        the lock, the sweep leaves it, and ``remove_kept`` removes it (``rm``)."""
        fd = os.open(self.where.dir, _DIR_FLAGS)
        try:
            write_new(fd, KEEP, b"")
        finally:
            os.close(fd)
        self._kept = True

    def remove(self) -> None:
        """Remove the directory (best effort, never raises), then give up the lock;
        a kept one is only unlocked."""
        if self._lock_fd < 0:
            return
        if self._kept:
            os.close(self._lock_fd)
            self._lock_fd = -1
            return
        try:
            cfd = os.open(os.path.dirname(self.where.dir), _DIR_FLAGS)
        except OSError:
            pass
        else:
            try:
                name = os.path.basename(self.where.dir)
                trash = f".rm-{name}"
                try:
                    os.rename(name, trash, src_dir_fd=cfd, dst_dir_fd=cfd)
                except OSError:
                    trash = name
                _remove_entry(cfd, trash)
            finally:
                os.close(cfd)
        if self._on_remove is not None:
            with contextlib.suppress(OSError):
                self._on_remove()
        os.close(self._lock_fd)
        self._lock_fd = -1


def write_new(dir_fd: int, name: str, data: bytes, mode: int = 0o600) -> None:
    """Create file ``name`` in ``dir_fd`` (it must not exist) holding ``data``."""
    fd = os.open(name, _NEW_FILE, mode, dir_fd=dir_fd)
    with open(fd, "wb") as f:
        f.write(data)


def replace_file(dir_fd: int, name: str, data: bytes, *, durable: bool = True) -> None:
    """Replace file ``name`` in ``dir_fd`` atomically: a reader sees the old
    contents or the new, whole (written to a temporary file, fsync'd when
    ``durable``, renamed over it)."""
    tmp = f".{name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)
    fd = os.open(tmp, _NEW_FILE, 0o600, dir_fd=dir_fd)
    try:
        with open(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def lock_container(sdir: str, container_id: str, *, wait: bool = False) -> tuple[int, int] | None:
    """Take the lock of a container's directory: ``(its directory's fd, the lock's fd)``
    (close both to give it up), or None while its owner holds it (``wait``: block
    until it does not; a signal interrupts the wait).

    Raises:
        FileNotFoundError: no such container directory.
    """
    cfd = _open_containers(sdir, create=False)
    try:
        dfd = os.open(container_id, _DIR_FLAGS, dir_fd=cfd)
    finally:
        os.close(cfd)
    try:
        lock = os.open("lock", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    except BaseException:
        os.close(dfd)
        raise
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(lock)
        os.close(dfd)
        return None
    except BaseException:
        os.close(lock)
        os.close(dfd)
        raise
    return dfd, lock


def remove_container_dir(sdir: str, container_id: str) -> None:
    """Remove a container's directory whose lock the caller holds (``lock_container``):
    renamed out of the way first, then removed whole."""
    cfd = _open_containers(sdir, create=False)
    try:
        trash = f".rm-{container_id}"
        os.rename(container_id, trash, src_dir_fd=cfd, dst_dir_fd=cfd)
        _remove_entry(cfd, trash)
    finally:
        os.close(cfd)


def _remove_entry(dir_fd: int, name: str) -> None:
    """Remove ``name`` below ``dir_fd`` whole, never following a symlink and however
    deep a container nested its upper layer (best effort: overlayfs leaves work/work
    with mode 000, which root removes anyway). Without root, what a container's
    processes made as ids of the user's subordinate range is removed as the root of
    a user namespace with that range."""
    try:
        remove_tree(dir_fd, name)
    except PermissionError:
        if os.geteuid() == 0:
            return
        from .userns import call_in_userns, rootless_mapping

        mapping = rootless_mapping()
        if mapping.helpers:
            with contextlib.suppress(MydockerError):
                call_in_userns(mapping, "supervisor._fs:remove_path", f"/proc/self/fd/{dir_fd}/{name}")
    except OSError:
        pass


def _owner_gone(dir_fd: int, name: str) -> bool:
    """Whether ``name`` is a container directory whose lock nobody holds (and which
    is not kept)."""
    try:
        dfd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return False  # not a directory, a symlink, gone: not ours to judge
    try:
        if _exists(dfd, KEEP):
            return False
        lock = os.open("lock", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    except OSError:
        return False  # no lock file: mydocker did not make it (or is making it right now)
    finally:
        os.close(dfd)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: its owner lives
    finally:
        os.close(lock)  # drops our lock too
    return True


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def sweep_dead(sdir: str) -> list[str]:
    """Remove the container directories whose owner died without removing them (it
    was SIGKILLed: its containers died with it). Returns the names removed."""
    try:
        cfd = _open_containers(sdir, create=False)
    except OSError:
        return []  # none yet, or not a real directory: nothing we may touch
    removed = []
    try:
        for name in os.listdir(cfd):
            if (_CONTAINER_NAME.fullmatch(name) and _owner_gone(cfd, name)) or _TRASH.fullmatch(name):
                _remove_entry(cfd, name)
                removed.append(name)
    finally:
        os.close(cfd)
    return removed


def container_configs(sdir: str) -> list[tuple[str, dict[str, object]]]:
    """``(id, config.json's spec)`` of every container directory (unreadable ones
    are left out)."""
    import json

    try:
        cfd = _open_containers(sdir, create=False)
    except OSError:
        return []
    out = []
    try:
        for name in os.listdir(cfd):
            if not _CONTAINER_NAME.fullmatch(name) or name.startswith(_NEW):
                continue
            try:
                dfd = os.open(name, _DIR_FLAGS, dir_fd=cfd)
                try:
                    fd = os.open("config.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                finally:
                    os.close(dfd)
                with open(fd) as f:
                    out.append((name, json.load(f)["spec"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
    finally:
        os.close(cfd)
    return out
