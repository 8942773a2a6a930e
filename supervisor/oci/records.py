"""The runtime's state directory (``--root``, default ``/run/mydocker-runc``): one
directory per container, which every command of the runtime reads.

    <root>/<id>/state.json    the record: pid and its start time, bundle, cgroup, ...
               /config.json   the config as ``create`` read it (later edits to the
                              bundle's file must not change the container)
               /exec.fifo     while the container is created and not yet started

A directory is made by ``create`` with ``mkdir`` (an id is taken once) and held
with an exclusive ``flock`` while a command changes the container; ``state.json``
is written whole to a temporary name and renamed (a reader sees the old record or
the new one, never half of one). A directory without ``state.json`` whose lock
nobody holds is what a ``create`` killed half way left: the next ``create`` of that
id or ``delete --force`` removes it.

The status is never stored, it is looked at: the pid with the start time recorded
(``/proc/PID/stat`` field 22, so a reused pid is not mistaken for the container),
alive and not a zombie: ``created`` while the exec fifo exists, ``paused`` while the
cgroup is frozen, else ``running``; anything else is ``stopped``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterator

from .._fs import DIR_FLAGS, remove_tree
from .._named import NamedTuple
from ..errors import MydockerError, SpecError

#: the default ``--root``
DEFAULT_ROOT = "/run/mydocker-runc"
STATE = "state.json"
CONFIG = "config.json"
FIFO = "exec.fifo"
_VERSION = 1


class NotFoundError(MydockerError):
    """No container of that id under the root."""


class Record(NamedTuple):
    """What the runtime keeps of one container."""

    id: str
    bundle: str
    rootfs: str
    pid: int
    #: the process's start time, in clock ticks after boot (``/proc/PID/stat`` field 22)
    start_time: int
    #: when it was created, RFC 3339 (UTC)
    created: str
    owner: str = ""
    annotations: dict[str, str] = {}
    #: ``cgroup.OciCgroup.to_json()``
    cgroup: dict[str, object] = {}
    #: the CLONE_NEW* namespaces an exec joins (the container's own and joined ones)
    join: int = 0
    #: the container has a user namespace of its own
    user_namespace: bool = False
    oci_version: str = ""

    def to_json(self) -> str:
        """The record as ``state.json`` holds it."""
        return json.dumps({"version": _VERSION, **dict(zip(self._fields, self, strict=True))}, indent=1)

    @classmethod
    def from_json(cls, text: str, where: str) -> Record:
        """Parse ``state.json``.

        Raises:
            MydockerError: not a record of this runtime.
        """
        try:
            data = json.loads(text)
            if data.pop("version", None) != _VERSION:
                raise ValueError("another version of the record")
            return cls(**data)
        except (ValueError, TypeError) as e:
            raise MydockerError(f"{where}: not a record of mydocker-runc ({e})") from None


def check_root(root: str) -> str:
    """The root as an absolute path.

    Raises:
        SpecError: empty, or with a NUL.
    """
    if not root or "\0" in root:
        raise SpecError(f"invalid --root {root!r}")
    return os.path.abspath(root)


def container_dir(root: str, container_id: str) -> str:
    """Where a container's directory is."""
    return os.path.join(root, container_id)


def start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks after boot), or None when there
    is no such process or it is a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def alive(record: Record) -> bool:
    """Whether the container's process is the one recorded and still runs."""
    return record.pid > 0 and start_time(record.pid) == record.start_time


def pidfd(record: Record) -> int:
    """A pidfd of the container's process, checked to be the recorded one.

    Raises:
        ProcessLookupError: it has exited.
    """
    fd = os.pidfd_open(record.pid)
    if not alive(record):  # checked after the open: the pidfd now pins the process
        os.close(fd)
        raise ProcessLookupError(errno.ESRCH, f"container {record.id} is not running")
    return fd


def status(root: str, record: Record) -> str:
    """created, running, paused or stopped (see the module's docstring)."""
    if not alive(record):
        return "stopped"
    if os.path.lexists(os.path.join(container_dir(root, record.id), FIFO)):
        return "created"
    from .cgroup import OciCgroup

    if OciCgroup.from_json(record.cgroup).frozen():
        return "paused"
    return "running"


def load(root: str, container_id: str) -> Record:
    """The record of a container.

    Raises:
        NotFoundError: no such container (or one still being created).
    """
    path = os.path.join(container_dir(root, container_id), STATE)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (FileNotFoundError, NotADirectoryError):
        raise NotFoundError(f"container {container_id} does not exist") from None
    except OSError as e:
        raise MydockerError(f"cannot read {path}: {e.strerror}") from None
    return Record.from_json(text, path)


def save(root: str, record: Record) -> None:
    """Write the record whole: a temporary file renamed over the old one, so a reader
    sees one or the other (no fsync: the state is as volatile as the processes it
    describes, and lives on a tmpfs in /run)."""
    d = container_dir(root, record.id)
    tmp = os.path.join(d, f".{STATE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        with open(fd, "w", encoding="utf-8", closefd=False) as f:
            f.write(record.to_json())
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(d, STATE))


def write_file_atomically(path: str, data: bytes, mode: int = 0o644) -> None:
    """A file (a pid file) written whole or not at all, as runc writes them."""
    d, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(d, f".{name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class Slot:
    """A container's directory, held (``flock``) by this process."""

    def __init__(self, root: str, container_id: str, fd: int) -> None:
        self.root = root
        self.id = container_id
        self.dir = container_dir(root, container_id)
        self._fd = fd

    def release(self) -> None:
        """Give up the lock (the directory stays)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        """Remove the directory and all in it, then give up the lock."""
        with contextlib.suppress(OSError):
            rfd = os.open(self.root, DIR_FLAGS)
            try:
                remove_tree(rfd, self.id)
            finally:
                os.close(rfd)
        self.release()


def _lock(path: str, blocking: bool = True) -> int:
    fd = os.open(path, DIR_FLAGS)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BaseException:
        os.close(fd)
        raise
    return fd


def reserve(root: str, container_id: str) -> Slot:
    """Take ``container_id``: make its directory and hold it.

    Raises:
        SpecError: a container of that id exists.
        MydockerError: the root cannot be made or written.
    """
    try:
        os.makedirs(root, mode=0o711, exist_ok=True)
    except OSError as e:
        raise MydockerError(f"cannot make the state directory {root}: {e.strerror}") from None
    d = container_dir(root, container_id)
    for _attempt in range(3):
        try:
            os.mkdir(d, 0o711)
        except FileExistsError:
            if not _abandoned(root, container_id):
                raise SpecError(f"container with id {container_id} already exists") from None
            Slot(root, container_id, -1).remove()
            continue
        except OSError as e:
            raise MydockerError(f"cannot make {d}: {e.strerror}") from None
        try:
            return Slot(root, container_id, _lock(d))
        except OSError as e:
            raise MydockerError(f"cannot lock {d}: {e.strerror}") from None
    raise SpecError(f"container with id {container_id} already exists")


def _abandoned(root: str, container_id: str) -> bool:
    """A directory that a killed ``create`` left: no record, and nobody holds it."""
    d = container_dir(root, container_id)
    if os.path.exists(os.path.join(d, STATE)):
        return False
    try:
        fd = _lock(d, blocking=False)
    except OSError:
        return False
    os.close(fd)
    return not os.path.exists(os.path.join(d, STATE))


@contextlib.contextmanager
def held(root: str, container_id: str) -> Iterator[tuple[Slot, Record]]:
    """Hold a container's directory (waiting for another command that holds it) and
    read its record.

    Raises:
        NotFoundError: no such container.
    """
    d = container_dir(root, container_id)
    try:
        fd = _lock(d)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFoundError(f"container {container_id} does not exist") from None
    slot = Slot(root, container_id, fd)
    try:
        yield slot, load(root, container_id)
    finally:
        slot.release()


def remove_abandoned(root: str, container_id: str) -> bool:
    """``delete --force`` of an id without a record: remove what a killed create
    left; True if there was such a directory."""
    if not os.path.isdir(container_dir(root, container_id)) or not _abandoned(root, container_id):
        return False
    Slot(root, container_id, -1).remove()
    return True


def ids(root: str) -> list[str]:
    """The ids of every container with a record, sorted."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return sorted(n for n in names if os.path.exists(os.path.join(root, n, STATE)))
