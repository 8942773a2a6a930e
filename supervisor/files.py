"""Files in and out of a running container, never by a path on the host.

Every path is resolved inside the container's root as its PID 1 sees it: the root
is opened as ``/proc/<pid>/root`` (and the pid proven to still be the container's
through its pidfd), then every path below it with openat2 ``RESOLVE_IN_ROOT |
RESOLVE_NO_MAGICLINKS``: an absolute symlink or a ``..`` chain the container planted
lands inside its root, never on the host. Trees are walked through directory fds
with ``O_NOFOLLOW``: a directory the container swaps for a symlink while we copy
(docker cp's CVE-2018-15664) is refused, not followed. Nothing here loads or runs a
file of the container's. Blocking file I/O runs in a worker thread.
"""

from __future__ import annotations

import io
import os
import select
import stat
import tarfile
from collections.abc import AsyncIterable, AsyncIterator
from typing import IO, TYPE_CHECKING

import anyio
import anyio.to_thread

from . import _linux
from .errors import ContainerPathError

if TYPE_CHECKING:
    from .confine import Identity

_IN_ROOT = _linux.RESOLVE_IN_ROOT | _linux.RESOLVE_NO_MAGICLINKS
_CHUNK = 1 << 20


class Root:
    """A container's root directory, open, for as long as the ``with`` lasts: a
    running container's as its PID 1 sees it (``Root(pid, pidfd)``), or any directory
    standing for one (``Root.at(path)``: a stopped container's layers, ``layers.py``)."""

    def __init__(self, pid: int, pidfd: int) -> None:
        try:
            self.fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            self.fd = -1  # its PID 1 exited and was reaped already
        # The pid named the container when we opened its root only if its PID 1 has
        # not exited since (a pidfd becomes readable when its process exits).
        if self.fd < 0 or select.select([pidfd], [], [], 0)[0]:
            if self.fd >= 0:
                os.close(self.fd)
            raise ContainerPathError(3, "the container is not running")  # ESRCH

    @classmethod
    def at(cls, path: str) -> Root:
        """The directory ``path`` as a container's root."""
        root = cls.__new__(cls)
        root.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return root

    def kind(self, path: str) -> str | None:
        """``"dir"``, ``"file"`` (anything else) or None if missing (a final symlink
        is followed, inside the root)."""
        try:
            fd = self.open(path, os.O_PATH)
        except ContainerPathError as e:
            if e.errno == 2:
                return None
            raise
        try:
            return "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        finally:
            os.close(fd)

    def open(self, path: str, flags: int, mode: int = 0) -> int:
        try:
            return _linux.openat2(self.fd, path, flags | os.O_CLOEXEC, mode, resolve=_IN_ROOT)
        except FileNotFoundError:
            raise ContainerPathError(2, f"no such file or directory in the container: {path}") from None
        except NotADirectoryError:
            raise ContainerPathError(20, f"not a directory in the container: {path}") from None
        except IsADirectoryError:
            raise ContainerPathError(21, f"is a directory in the container: {path}") from None

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _owner(identity: Identity | None) -> tuple[int, int] | None:
    """The host ids of the container's root, when we must give files to it (a user
    namespace of its own made by root; rootless, our own ids are its root's)."""
    if identity is None or identity.mapping is None or os.geteuid() != 0:
        return None
    return identity.mapping.uids[0].outside, identity.mapping.gids[0].outside


async def read_file(pid: int, pidfd: int, path: str) -> bytes:
    """The contents of regular file ``path`` in the container.

    Raises:
        ContainerPathError: missing, not a regular file, or the container is gone.
    """

    def read() -> bytes:
        with Root(pid, pidfd) as root:
            fd = root.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not hang us
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise ContainerPathError(22, f"not a regular file in the container: {path}")
                chunks = []
                while chunk := os.read(fd, _CHUNK):
                    chunks.append(chunk)
                return b"".join(chunks)
            finally:
                os.close(fd)

    return await anyio.to_thread.run_sync(read)


async def write_file(
    pid: int, pidfd: int, path: str, data: bytes, mode: int = 0o644, identity: Identity | None = None
) -> None:
    """Write ``data`` to ``path`` in the container (created, or truncated), owned by
    the container's root.

    Raises:
        ContainerPathError: its directory is missing, it is a directory, or the
            container is gone.
    """

    def write() -> None:
        with Root(pid, pidfd) as root:
            fd = root.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK, mode & 0o7777)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise ContainerPathError(22, f"not a regular file in the container: {path}")
                owner = _owner(identity)
                if owner is not None:
                    os.fchown(fd, *owner)
                os.fchmod(fd, mode & 0o7777)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view[:_CHUNK]) :]
            finally:
                os.close(fd)

    await anyio.to_thread.run_sync(write)


async def put_archive(
    pid: int,
    pidfd: int,
    path: str,
    archive: bytes | AsyncIterable[bytes],
    identity: Identity | None = None,
) -> None:
    """Unpack a tar archive into directory ``path`` of the container (docker's
    ``put_archive``), with the safety of an image import: no member is written
    through a symlink or above the directory.

    Raises:
        ContainerPathError: ``path`` is missing or not a directory.
        SpecError, UnsafeArchiveError: a malformed or hostile archive.
    """
    if isinstance(archive, bytes):
        data = archive
    else:
        data = b"".join([chunk async for chunk in archive])

    def put() -> None:
        with Root(pid, pidfd) as root:
            extract_archive(root, path, io.BytesIO(data))

    await anyio.to_thread.run_sync(put)


def extract_archive(root: Root, path: str, archive: IO[bytes]) -> None:
    """Unpack a tar stream into directory ``path`` below ``root`` (what
    ``put_archive`` does, synchronously).

    Raises:
        ContainerPathError: ``path`` is missing or not a directory.
        SpecError, UnsafeArchiveError: a malformed or hostile archive.
    """
    from .images import extract_into

    dfd = root.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        extract_into(dfd, archive, f"archive for {path}")
    finally:
        os.close(dfd)


async def get_archive(pid: int, pidfd: int, path: str) -> AsyncIterator[bytes]:
    """A tar stream of ``path`` in the container, docker's way: a file as itself, a
    directory as itself and everything below it, and ``dir/.`` as what is below it.
    Symlinks are archived as symlinks, never followed.

    Raises:
        ContainerPathError: ``path`` is missing, or the container is gone.
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    root = Root(pid, pidfd)
    try:
        top = open_top(root, path)
    except BaseException:
        root.__exit__()
        os.close(r)
        os.close(w)
        raise

    def produce() -> None:
        try:
            with os.fdopen(w, "wb") as out:
                write_archive(top, path, out)
        except BrokenPipeError:
            pass  # the reader went away
        finally:
            os.close(top)
            root.__exit__()

    from ._streams import FdStream

    stream = FdStream(r)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: anyio.to_thread.run_sync(produce, abandon_on_cancel=False))
            try:
                async for chunk in stream:
                    yield chunk
            finally:
                stream.close()
    finally:
        stream.close()


def open_top(root: Root, path: str) -> int:
    """An O_PATH fd of ``path`` below ``root`` (a final symlink not followed), for
    ``write_archive``.

    Raises:
        ContainerPathError: it is missing.
    """
    return root.open(path, os.O_PATH | os.O_NOFOLLOW)


def write_archive(top: int, path: str, out: IO[bytes]) -> None:
    """Write a tar stream of what ``top`` (``open_top(root, path)``) is, docker's
    way (see ``get_archive``), to ``out``."""
    contents_only = path.rstrip("/").endswith("/.") or path in (".", "/.")
    name = os.path.basename(os.path.normpath(path)) or "."
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        _archive(tf, top, "" if contents_only else name)


def _archive(tf: tarfile.TarFile, fd: int, name: str) -> None:
    """Add what the O_PATH ``fd`` is (a file, a symlink, a directory with all below
    it) as ``name`` (``""``: only what is below a directory)."""
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
        try:
            if name:
                tf.addfile(_info(name, st, tarfile.DIRTYPE))
            for entry in sorted(os.listdir(dfd)):
                try:
                    child = os.open(entry, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                except FileNotFoundError:
                    continue  # gone meanwhile
                try:
                    _archive(tf, child, f"{name}/{entry}" if name else entry)
                finally:
                    os.close(child)
        finally:
            os.close(dfd)
    elif stat.S_ISREG(st.st_mode):
        # through the magic link: exactly the file opened (O_NOFOLLOW) above
        rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            now = os.fstat(rfd)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                return
            info = _info(name, now, tarfile.REGTYPE)
            info.size = now.st_size
            with os.fdopen(rfd, "rb", closefd=False) as f:
                tf.addfile(info, _Exactly(f, now.st_size))
        finally:
            os.close(rfd)
    elif stat.S_ISLNK(st.st_mode):
        info = _info(name, st, tarfile.SYMTYPE)
        info.linkname = os.readlink("", dir_fd=fd)
        tf.addfile(info)
    # devices, FIFOs and sockets are left out (docker cp copies no special files either)


def _info(name: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    return info


class _Exactly(io.RawIOBase):
    """A file read as exactly ``size`` bytes (a file that grows or shrinks while it
    is archived must not break the archive: padded with NULs or cut)."""

    def __init__(self, f: io.BufferedReader, size: int) -> None:
        self._f = f
        self._left = size

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n) or b""
        if len(data) < n and not data:
            data = b"\0" * n
        self._left -= len(data)
        return data
