"""Images, minimal but real: root filesystem tarballs unpacked under the state directory.

    <state dir>/images/<name>/rootfs       the unpacked tree (an overlay's lower layer)
    <state dir>/images/<name>/image.json   name, creation time, source, size

Extraction never trusts the archive. Every path is created relative to a directory
file descriptor, one component at a time, with ``O_NOFOLLOW``: a member can neither
climb out with ``..`` (the import is refused), nor write through a symlink that an
earlier member planted (refused too), nor hard-link to a file outside the image.
Absolute member names are made relative (as GNU tar does). Symlinks are stored as
they are: whatever they point to is resolved later inside the container's root, never
on the host. Device nodes are skipped unless ``allow_devices`` is given. The tree is
built in a temporary directory and renamed into place, so a failed import leaves
nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from .errors import SpecError

#: image names: lowercase letters, digits and ``_.-`` (no ``:`` or ``,``: the image
#: path becomes part of overlayfs mount options)
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,127}")
_CHUNK = 1 << 20


class UnsafeArchiveError(SpecError):
    """The tarball tries to write outside the image directory; nothing was imported."""


@dataclass(frozen=True)
class Image:
    """An imported image."""

    name: str
    path: str
    created: float
    size: int
    source: str = ""
    skipped: int = 0

    @property
    def rootfs(self) -> str:
        """The image's root filesystem directory."""
        return os.path.join(self.path, "rootfs")


def images_dir(state_dir: str) -> str:
    """Where images live under a state directory."""
    return os.path.join(state_dir, "images")


def check_name(name: str) -> None:
    """Raise ``SpecError`` unless ``name`` is a valid image name."""
    if not _NAME.fullmatch(name):
        raise SpecError(f"invalid image name {name!r} (lowercase letters, digits, '_', '.', '-')")


def image_rootfs(name: str, state_dir: str) -> str:
    """The root filesystem directory of image ``name``.

    Raises:
        SpecError: invalid name, or no such image.
    """
    check_name(name)
    path = os.path.join(images_dir(state_dir), name, "rootfs")
    if not os.path.isdir(path):
        raise SpecError(f"no such image: {name} (see 'mydocker image ls')")
    return path


def _load(path: str) -> Image | None:
    try:
        with open(os.path.join(path, "image.json")) as f:
            meta = json.load(f)
        return Image(
            name=meta["name"],
            path=path,
            created=float(meta["created"]),
            size=int(meta["size"]),
            source=meta.get("source", ""),
            skipped=int(meta.get("skipped", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_images(state_dir: str) -> list[Image]:
    """The imported images, sorted by name (half-made imports are not listed)."""
    try:
        names = sorted(os.listdir(images_dir(state_dir)))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if _NAME.fullmatch(name):
            image = _load(os.path.join(images_dir(state_dir), name))
            if image is not None:
                out.append(image)
    return out


def _users(state_dir: str, rootfs: str) -> list[str]:
    """Ids of the containers (in the state directory) whose lower layer is ``rootfs``."""
    from .state import container_configs

    return [cid for cid, spec in container_configs(state_dir) if spec.get("rootfs") == rootfs]


def remove_image(name: str, state_dir: str) -> None:
    """Delete image ``name``.

    Raises:
        SpecError: no such image, or a container still uses it.
    """
    from .state import sweep_dead

    rootfs = image_rootfs(name, state_dir)
    sweep_dead(state_dir)  # containers of a SIGKILLed supervisor do not hold the image
    users = _users(state_dir, rootfs)
    if users:
        raise SpecError(f"image {name} is in use by container {users[0][:12]}")
    path = os.path.dirname(rootfs)
    # rename first: the image disappears at once, even if the removal is interrupted
    trash = os.path.join(images_dir(state_dir), f".rm-{name}-{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash)


def import_image(
    name: str,
    tarball: str | IO[bytes],
    state_dir: str,
    *,
    allow_devices: bool = False,
) -> Image:
    """Unpack a root filesystem tarball (any compression tarfile reads) as image ``name``.

    Args:
        name: the new image's name (must not exist yet).
        tarball: a path, or a binary file object (read as a stream).
        state_dir: mydocker's state directory.
        allow_devices: create character/block device nodes (root only); by
            default they are skipped and counted in ``Image.skipped``.

    Raises:
        SpecError: bad name, image exists, tarball unreadable or not a tar archive.
        UnsafeArchiveError: a member would land outside the image directory.
    """
    check_name(name)
    base = images_dir(state_dir)
    final = os.path.join(base, name)
    if os.path.lexists(final):
        raise SpecError(f"image {name} already exists (remove it first: mydocker image rm {name})")
    os.makedirs(base, mode=0o711, exist_ok=True)
    tmp = os.path.join(base, f".import-{name}-{os.getpid()}-{time.monotonic_ns()}")
    # root only, for good: an image may carry set-uid files, which no host user may
    # reach (the container and overlayfs access the tree as root)
    os.mkdir(tmp, 0o700)
    try:
        root = os.path.join(tmp, "rootfs")
        os.mkdir(root, 0o755)
        source = tarball if isinstance(tarball, str) else getattr(tarball, "name", "<stream>")
        try:
            with _open_tar(tarball) as tf:
                size, skipped = _Extractor(root, allow_devices=allow_devices).run(tf)
        except (tarfile.TarError, EOFError, _zlib_error()) as e:
            raise SpecError(f"{source}: not a readable tar archive ({e})") from None
        meta = {
            "name": name,
            "created": time.time(),
            "size": size,
            "source": os.path.abspath(source) if isinstance(tarball, str) else str(source),
            "skipped": skipped,
        }
        with open(os.path.join(tmp, "image.json"), "w") as f:
            json.dump(meta, f, indent=1)
        try:
            os.rename(tmp, final)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise SpecError(f"image {name} already exists") from None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    image = _load(final)
    assert image is not None
    return image


def _zlib_error() -> type[Exception]:
    """The exception a corrupt gzip stream raises (zlib is optional in Python)."""
    try:
        import zlib

        return zlib.error
    except ImportError:  # pragma: no cover
        return tarfile.TarError


@contextlib.contextmanager
def _open_tar(tarball: str | IO[bytes]) -> Iterator[tarfile.TarFile]:
    if isinstance(tarball, str):
        try:
            f: IO[bytes] = open(tarball, "rb")
        except OSError as e:
            raise SpecError(f"cannot read {tarball}: {e.strerror}") from None
    else:
        f = tarball
    try:
        # stream mode: works for pipes (stdin) and any compression
        with tarfile.open(fileobj=f, mode="r|*") as tf:
            yield tf
    finally:
        if isinstance(tarball, str):
            f.close()


def _parts(name: str, what: str) -> list[str]:
    """The path components of a member name, made relative; refuses ``..``."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"refusing the archive: {what} {name!r} points outside the image (..)")
    return parts


class _Extractor:
    """Writes members below ``root`` through directory fds, never following a symlink."""

    def __init__(self, root: str, *, allow_devices: bool) -> None:
        self.root = root
        self.allow_devices = allow_devices
        self.chown = os.geteuid() == 0
        self.size = 0
        self.skipped = 0
        self.dirs: list[tuple[list[str], tarfile.TarInfo]] = []

    def run(self, tf: tarfile.TarFile) -> tuple[int, int]:
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for member in tf:
                self._member(root_fd, tf, member)
            # directories last: their modes and times would change as members land in them
            for parts, member in reversed(self.dirs):
                fd = self._open_dir(root_fd, parts, create=False, name=member.name)
                try:
                    self._metadata(fd, member)
                finally:
                    if fd != root_fd:
                        os.close(fd)
        finally:
            os.close(root_fd)
        return self.size, self.skipped

    def _open_dir(self, root_fd: int, parts: list[str], *, create: bool, name: str) -> int:
        """An fd of directory ``parts`` below root, walking with O_NOFOLLOW."""
        fd = root_fd
        try:
            for i, part in enumerate(parts):
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                try:
                    nfd = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    nfd = os.open(part, flags, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        where = "/".join(parts[: i + 1])
                        raise UnsafeArchiveError(
                            f"refusing the archive: member {name!r} goes through {where!r}, "
                            "which is a symlink or not a directory"
                        ) from None
                    raise
                if fd != root_fd:
                    os.close(fd)
                fd = nfd
        except BaseException:
            if fd != root_fd:
                os.close(fd)
            raise
        return fd

    def _clear(self, dfd: int, leaf: str, keep_dir: bool = False) -> None:
        """Remove an existing entry so a later member replaces it (as tar does)."""
        try:
            st = os.lstat(leaf, dir_fd=dfd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            raise UnsafeArchiveError(f"refusing the archive: {leaf!r} replaces a directory")
        os.unlink(leaf, dir_fd=dfd)

    def _member(self, root_fd: int, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = _parts(m.name, "member")
        if not parts:  # the archive's "./": the image root itself
            if m.isdir():
                self.dirs.append(([], m))
            return
        dfd = self._open_dir(root_fd, parts[:-1], create=True, name=m.name)
        leaf = parts[-1]
        try:
            if m.isdir():
                self._clear(dfd, leaf, keep_dir=True)
                with contextlib.suppress(FileExistsError):  # only a directory is left
                    os.mkdir(leaf, 0o755, dir_fd=dfd)
                self.dirs.append((parts, m))
            elif m.isreg():
                self._clear(dfd, leaf)
                fd = os.open(
                    leaf,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=dfd,
                )
                try:
                    src = tf.extractfile(m)
                    assert src is not None
                    while chunk := src.read(_CHUNK):
                        _write_all(fd, chunk)
                    self.size += m.size
                    self._metadata(fd, m)
                finally:
                    os.close(fd)
            elif m.issym():
                self._clear(dfd, leaf)
                os.symlink(m.linkname, leaf, dir_fd=dfd)
                self._lmetadata(dfd, leaf, m)
            elif m.islnk():
                self._hardlink(root_fd, dfd, leaf, m)
            elif m.ischr() or m.isblk():
                if not self.allow_devices:
                    self.skipped += 1
                    return
                self._clear(dfd, leaf)
                kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
                os.mknod(leaf, kind | (m.mode & 0o777), os.makedev(m.devmajor, m.devminor), dir_fd=dfd)
                self._lmetadata(dfd, leaf, m)
            elif m.isfifo():
                self._clear(dfd, leaf)
                os.mkfifo(leaf, m.mode & 0o777, dir_fd=dfd)
                self._lmetadata(dfd, leaf, m)
            else:
                self.skipped += 1
        finally:
            if dfd != root_fd:
                os.close(dfd)

    def _hardlink(self, root_fd: int, dfd: int, leaf: str, m: tarfile.TarInfo) -> None:
        target = _parts(m.linkname, "hard link target")
        if not target:
            raise UnsafeArchiveError(f"refusing the archive: hard link {m.name!r} to the image root")
        missing = UnsafeArchiveError(
            f"refusing the archive: hard link {m.name!r} to {m.linkname!r}, which is not in the image"
        )
        try:
            sfd = self._open_dir(root_fd, target[:-1], create=False, name=m.linkname)
        except FileNotFoundError:
            raise missing from None
        try:
            self._clear(dfd, leaf)
            # follow_symlinks=False: linking to a symlink links the symlink itself,
            # never what it points to (which could be a host file)
            os.link(target[-1], leaf, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            raise missing from None
        finally:
            if sfd != root_fd:
                os.close(sfd)

    def _metadata(self, fd: int, m: tarfile.TarInfo) -> None:
        if self.chown:
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, m.mode & 0o7777)  # after chown, which clears set-id bits
        os.utime(fd, (m.mtime, m.mtime))

    def _lmetadata(self, dfd: int, leaf: str, m: tarfile.TarInfo) -> None:
        if self.chown:
            os.chown(leaf, m.uid, m.gid, dir_fd=dfd, follow_symlinks=False)
        if not m.issym():
            os.chmod(leaf, m.mode & 0o7777, dir_fd=dfd)  # not a symlink: nothing to follow
        os.utime(leaf, (m.mtime, m.mtime), dir_fd=dfd, follow_symlinks=False)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
