"""Images, minimal but real: root filesystem tarballs unpacked under the state directory.

    <state dir>/images/<name>/rootfs       the unpacked tree (an overlay's lower layer)
    <state dir>/images/<name>/image.json   name, creation time, source, size

Extraction never trusts the archive. Every path is created relative to a directory
file descriptor, one component at a time, with ``O_NOFOLLOW``: a member can neither
climb out with ``..`` (the import is refused), nor write through a symlink that an
earlier member planted (refused too), nor hard-link to a file outside the image.
Absolute member names are made relative (as GNU tar does). Symlinks are stored as
they are: whatever they point to is resolved later inside the container's root, never
on the host. Device nodes are skipped unless ``allow_devices`` is given. Every field a
member carries (names, ids, times, sizes, device numbers, sparse maps) is checked
before it reaches a system call, so a malformed header is a ``SpecError`` naming the
member, never a traceback. What an archive may cost is bounded while it streams in,
before the disk or memory pays for it (see ``import_image``); sparse members stay
sparse.

The tree is built in ``.import-<name>-<random>`` and renamed into place; removal
renames the image to ``.rm-<name>-<random>`` before deleting it. A process working in
such a directory holds an ``flock`` on it until it is done, so a directory whose lock
is free was left by a process that died: the kernel drops the lock with its last
holder, whatever PID namespace it ran in and whichever process reuses its PID.
``sweep_images`` removes those, on every import, ``image ls`` and ``image rm``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, NamedTuple, Self, cast

from ._fs import DIR_FLAGS as _DIR_FLAGS
from ._fs import remove_tree, same_inode
from .errors import SpecError

if TYPE_CHECKING:
    from .userns import Mapping

#: image names: lowercase letters, digits and ``_.-`` (no ``:`` or ``,``: the image
#: path becomes part of overlayfs mount options)
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,127}")
_CHUNK = 1 << 20

#: the default of ``import_image(max_size=)`` and ``image import --max-size``
DEFAULT_MAX_SIZE = 10 << 30
#: the default of ``import_image(max_members=)`` and ``image import --max-members``
DEFAULT_MAX_MEMBERS = 1_000_000
#: the most header bytes (pax records, GNU long names, sparse maps) one member may
#: have: tarfile holds a member's headers in memory whole
_MAX_HEADER = 1 << 20
#: header bytes allowed per member on average, beyond one _MAX_HEADER: a ustar block,
#: a pax block with its records, and padding take 1.5 KiB
_HEADER_PER_MEMBER = 4 << 10
#: a name this long cannot be opened by absolute path inside the container (PATH_MAX)
_PATH_MAX = 4096
#: Linux's dev_t holds a 12-bit major and a 20-bit minor: beyond, mknod fails with
#: EINVAL and os.makedev overflows (tested); checked first to name the member
_MAX_MAJOR, _MAX_MINOR = 1 << 12, 1 << 20
#: uid_t is 32 bits and (uid_t)-1 means "leave unchanged" to chown
_MAX_ID = (1 << 32) - 2
#: times os.utime can take as a 64-bit time_t, with room for float rounding
_MAX_TIME = float(1 << 62)

_IMPORT_PREFIX, _RM_PREFIX = ".import-", ".rm-"


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


def _not_a_directory(path: str) -> SpecError:
    what = "a symlink" if os.path.islink(path) else "not a directory"
    return SpecError(f"{path} is {what}; mydocker keeps its images in a directory there (move it away)")


def image_rootfs(name: str, state_dir: str) -> str:
    """The root filesystem directory of image ``name``.

    Raises:
        SpecError: invalid name, no such image, or ``<state dir>/images`` is not a
            directory of its own (a symlink or a file).
    """
    check_name(name)
    base = images_dir(state_dir)
    if os.path.lexists(base) and not stat.S_ISDIR(os.lstat(base).st_mode):
        raise _not_a_directory(base)
    path = os.path.join(base, name, "rootfs")
    if os.path.islink(os.path.dirname(path)) or not os.path.isdir(path):
        raise SpecError(f"no such image: {name} (see 'mydocker image ls')")
    return path


@contextlib.contextmanager
def _images_fd(state_dir: str, *, create: bool) -> Iterator[int | None]:
    """An fd of ``<state dir>/images``, never through a symlink; ``None`` if it does
    not exist and ``create`` is false."""
    base = images_dir(state_dir)
    if create:
        try:
            os.makedirs(state_dir, mode=0o711, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(base, 0o711)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTDIR):
                raise _not_a_directory(state_dir if not os.path.isdir(state_dir) else base) from None
            raise SpecError(f"cannot create {base}: {e.strerror}") from None
    fd: int | None = None
    try:
        fd = os.open(base, _DIR_FLAGS)
    except FileNotFoundError:
        if create:
            raise SpecError(f"cannot open {base}: it vanished while being created") from None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _not_a_directory(base) from None
        raise SpecError(f"cannot open {base}: {e.strerror}") from None
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


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
    """The imported images, sorted by name (half-made imports are not listed).

    Sweeps what dead imports and removals left behind first (``sweep_images``).

    Raises:
        SpecError: ``<state dir>/images`` is a symlink or a file.
    """
    with _images_fd(state_dir, create=False) as ifd:
        if ifd is None:
            return []
        _sweep(ifd)
        with os.scandir(ifd) as it:
            names = sorted(e.name for e in it if _NAME.fullmatch(e.name) and e.is_dir(follow_symlinks=False))
    out = []
    for name in names:
        image = _load(os.path.join(images_dir(state_dir), name))
        if image is not None:
            out.append(image)
    return out


def sweep_images(state_dir: str) -> list[str]:
    """Remove the ``.import-*`` and ``.rm-*`` directories of ``<state dir>/images``
    that no live process holds; return their names.

    An import holds an ``flock`` on its ``.import-*`` directory from before it writes
    anything until it has renamed it into place or removed it, so one that can be
    locked belongs to a dead import. A ``.rm-*`` directory is garbage whoever made it:
    only ``remove_image`` gives that name, after checking that no container uses the
    image, and the rename is what removes the image; its lock only keeps two processes
    from deleting the same tree at once. Entries that are not directories (mydocker
    makes none) are left alone, and nothing is followed through a symlink.

    Raises:
        SpecError: ``<state dir>/images`` is a symlink or a file.
    """
    with _images_fd(state_dir, create=False) as ifd:
        return [] if ifd is None else _sweep(ifd)


def _sweep(ifd: int) -> list[str]:
    removed = []
    with os.scandir(ifd) as it:
        names = [e.name for e in it if e.name.startswith((_IMPORT_PREFIX, _RM_PREFIX))]
    for name in names:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=ifd)
        except OSError:  # gone meanwhile, or a symlink or file: not ours
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # removed while we held the lock, so no owner can start using it meanwhile
            remove_tree(ifd, name, os.fstat(fd))
            removed.append(name)
        except OSError:  # locked by a live owner (EWOULDBLOCK), or not removable: later
            continue
        finally:
            os.close(fd)
    return removed


def _locked_new_dir(ifd: int, prefix: str) -> tuple[str, int]:
    """Create directory ``<prefix><random>`` in ``ifd`` and return its name and an fd
    holding an exclusive ``flock`` on it.

    Between mkdir and flock a sweeper may find the directory unlocked and delete it;
    it deletes only while holding the lock, so once we hold it the directory is ours
    if it is still linked under its name. Otherwise we try a new name.
    """
    for _ in range(8):
        name = prefix + secrets.token_hex(8)
        os.mkdir(name, 0o700, dir_fd=ifd)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=ifd)
        except FileNotFoundError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        st = os.fstat(fd)
        if st.st_nlink > 0 and same_inode(ifd, name, st):
            return name, fd
        os.close(fd)
    raise SpecError("cannot create a work directory in the images directory: it is removed as soon as made")


def _users(state_dir: str, rootfs: str) -> list[str]:
    """Ids of the containers (in the state directory) whose lower layer is ``rootfs``."""
    from .state import container_configs

    return [cid for cid, spec in container_configs(state_dir) if spec.get("rootfs") == rootfs]


def remove_image(name: str, state_dir: str) -> None:
    """Delete image ``name``.

    The image is renamed away first (it disappears at once, even if the removal is
    interrupted; ``sweep_images`` finishes an interrupted one).

    Raises:
        SpecError: no such image, a container still uses it, or ``<state dir>/images``
            is a symlink or a file.
    """
    from .state import sweep_dead

    check_name(name)
    mapping = _rootless_range()
    if mapping is not None:
        # its files may belong to ids of the user's range, which only the root of a
        # user namespace with that range may remove
        from .userns import call_in_userns

        call_in_userns(mapping, "supervisor.images:remove_image", name, state_dir)
        return
    missing = SpecError(f"no such image: {name} (see 'mydocker image ls')")
    with _images_fd(state_dir, create=False) as ifd:
        if ifd is None:
            raise missing
        _sweep(ifd)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=ifd)
        except FileNotFoundError:
            raise missing from None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                path = os.path.join(images_dir(state_dir), name)
                raise SpecError(f"{path} is not an image (a symlink or a file); remove it by hand") from None
            raise
        try:
            # waits for another removal of the same image, which leaves nothing to do
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            if not same_inode(ifd, name, st) or not stat.S_ISDIR(_lstat_mode(fd, "rootfs")):
                raise missing
            rootfs = os.path.join(images_dir(state_dir), name, "rootfs")
            sweep_dead(state_dir)  # containers of a SIGKILLed supervisor do not hold the image
            users = _users(state_dir, rootfs)
            if users:
                raise SpecError(f"image {name} is in use by container {users[0][:12]}")
            trash = f"{_RM_PREFIX}{name}-{secrets.token_hex(8)}"
            os.rename(name, trash, src_dir_fd=ifd, dst_dir_fd=ifd)
            remove_tree(ifd, trash, st)
        finally:
            os.close(fd)


def _lstat_mode(dfd: int, name: str) -> int:
    try:
        return os.lstat(name, dir_fd=dfd).st_mode
    except FileNotFoundError:
        return 0


def _rootless_range() -> Mapping | None:
    """Without root, and with a subordinate range to map: the user namespace in
    which images are made and removed, so that their files keep several owners (as
    podman's). Without one, files are the user's, whatever the archive says."""
    if os.geteuid() == 0:
        return None
    from .userns import rootless_mapping

    mapping = rootless_mapping()
    return mapping if mapping.helpers else None


def _import_in_userns(
    mapping: Mapping,
    name: str,
    tarball: str | IO[bytes],
    state_dir: str,
    allow_devices: bool,
    max_size: int,
    max_members: int,
) -> Image:
    from .userns import call_in_userns

    fds: tuple[int, ...] = ()
    if isinstance(tarball, str):
        source = os.path.abspath(tarball)
    else:
        fd = tarball.fileno()
        source, fds = f"fd:{fd}", (fd,)
    args = (name, source, state_dir, str(int(allow_devices)), str(max_size), str(max_members))
    call_in_userns(mapping, "supervisor.images:_import_here", *args, pass_fds=fds)
    image = _load(os.path.join(images_dir(state_dir), name))
    if image is None:
        raise SpecError(f"image {name} was not imported")
    return image


def _import_here(
    name: str, source: str, state_dir: str, allow_devices: str, max_size: str, max_members: str
) -> None:
    """``import_image`` from ``_import_in_userns``'s arguments (in its namespace)."""
    tarball: str | IO[bytes] = source
    if source.startswith("fd:"):
        tarball = os.fdopen(int(source[3:]), "rb", closefd=False)
    import_image(
        name,
        tarball,
        state_dir,
        allow_devices=allow_devices == "1",
        max_size=int(max_size),
        max_members=int(max_members),
    )


def import_image(
    name: str,
    tarball: str | IO[bytes],
    state_dir: str,
    *,
    allow_devices: bool = False,
    max_size: int = DEFAULT_MAX_SIZE,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> Image:
    """Unpack a root filesystem tarball (plain, gzip, bzip2 or xz) as image ``name``.

    The archive is read as a stream, once; the limits are checked member by member
    as it comes in, so a hostile stream is stopped before it costs more than they
    allow, and a refused import leaves nothing behind.

    Args:
        name: the new image's name (must not exist yet).
        tarball: a path, or a binary file object (read as a stream).
        state_dir: mydocker's state directory.
        allow_devices: create character/block device nodes (root only); by
            default they are skipped and counted in ``Image.skipped``.
        max_size: the most bytes the archive's files may add up to, at their
            apparent size (a sparse file counts its holes: they may be filled in a
            container's upper layer without limit otherwise). The default,
            ``DEFAULT_MAX_SIZE`` (10 GiB), is docker's default root filesystem size
            with devicemapper. A fixed figure rather than the filesystem's free
            space: whether an import succeeds should not depend on what else is on
            the disk at the time, and free space measured once protects nothing
            from a second import running alongside. The files of an image never
            take more than this (ENOSPC still ends an import cleanly).
        max_members: the most members the archive may have (each costs an inode,
            a header, and memory for a directory's metadata until the end). The
            default, ``DEFAULT_MAX_MEMBERS``, a million, is several times the files
            of a full desktop distribution. Headers (pax records, long names,
            sparse maps) may take 1 MiB for one member and 4 KiB per member on
            average.

    Raises:
        SpecError: bad name or limit, image exists, the images directory is a
            symlink or a file, tarball unreadable, not a tar archive, malformed
            member, or a limit exceeded.
        UnsafeArchiveError: a member would land outside the image directory.
    """
    check_name(name)
    if max_size <= 0 or max_members <= 0:
        raise SpecError(
            f"invalid import limits: size {max_size}, members {max_members} (both must be positive)"
        )
    mapping = _rootless_range()
    if mapping is not None:
        return _import_in_userns(mapping, name, tarball, state_dir, allow_devices, max_size, max_members)
    source = tarball if isinstance(tarball, str) else str(getattr(tarball, "name", "<stream>"))
    with _images_fd(state_dir, create=True) as ifd:
        assert ifd is not None
        _sweep(ifd)
        if _lstat_mode(ifd, name):
            raise SpecError(f"image {name} already exists (remove it first: mydocker image rm {name})")
        tmp, tfd = _locked_new_dir(ifd, f"{_IMPORT_PREFIX}{name}-")
        try:
            try:
                size, skipped = _unpack(tfd, tarball, source, allow_devices, max_size, max_members)
                meta = {
                    "name": name,
                    "created": time.time(),
                    "size": size,
                    "source": os.path.abspath(source) if isinstance(tarball, str) else source,
                    "skipped": skipped,
                }
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                with open(os.open("image.json", flags, 0o644, dir_fd=tfd), "w") as f:
                    json.dump(meta, f, indent=1)
                try:
                    os.rename(tmp, name, src_dir_fd=ifd, dst_dir_fd=ifd)
                except OSError as e:
                    if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                        raise SpecError(f"image {name} already exists") from None
                    raise
            except BaseException:
                # still locked: no sweeper touches it; if this fails, a later sweep will
                with contextlib.suppress(OSError):
                    remove_tree(ifd, tmp, os.fstat(tfd))
                raise
        finally:
            os.close(tfd)
    image = _load(os.path.join(images_dir(state_dir), name))
    assert image is not None
    return image


def _unpack(
    tfd: int,
    tarball: str | IO[bytes],
    source: str,
    allow_devices: bool,
    max_size: int,
    max_members: int,
) -> tuple[int, int]:
    """Extract into ``rootfs`` of the work directory ``tfd``; (size, skipped)."""
    os.mkdir("rootfs", 0o755, dir_fd=tfd)
    root_fd = os.open("rootfs", _DIR_FLAGS, dir_fd=tfd)
    try:
        return extract_into(root_fd, tarball, source, allow_devices, max_size, max_members)
    finally:
        os.close(root_fd)


def extract_into(
    root_fd: int,
    tarball: str | IO[bytes],
    source: str,
    allow_devices: bool = False,
    max_size: int = DEFAULT_MAX_SIZE,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> tuple[int, int]:
    """Extract a tar archive below the directory ``root_fd`` with every safety of an
    image import (nothing written through a symlink, no ``..``, the limits);
    (size, skipped). Also what ``files.put_archive`` unpacks into a container with.

    Raises:
        SpecError, UnsafeArchiveError: as ``import_image``.
    """
    with _open_source(tarball, source) as meter:
        extractor = _Extractor(
            root_fd,
            meter,
            source,
            allow_devices=allow_devices,
            max_size=max_size,
            max_members=max_members,
        )
        try:
            # stream mode: works for pipes (stdin); the decompression is ours
            with tarfile.open(fileobj=meter, mode="r|", tarinfo=_Whole) as tf:  # type: ignore[call-overload]
                extractor.run(tf)
        except SpecError:
            raise
        except (tarfile.TarError, ValueError, OverflowError, EOFError) as e:
            # tarfile's own parsing of a malformed header (it calls int() on
            # pax values such as GNU.sparse.size without a guard)
            raise SpecError(f"{source}: not a readable tar archive ({e})") from None
    return extractor.size, extractor.skipped


# ------------------------------------------------------------------ the stream


class _Whole(tarfile.TarInfo):
    """Headers as tarfile reads them, except that an archive must be whole.

    After the first member, tarfile ends an archive without a word where it finds a
    header cut short, no header at all, or a header with a bad checksum: an archive
    cut off in transfer would be imported in part (GNU tar 1.34 lists such a cut
    archive with status 0, too). Only the zero block that ends every archive GNU
    tar, bsdtar, busybox, Python and Go write ends one here.
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        if len(buf) < tarfile.BLOCKSIZE:
            raise tarfile.ReadError("cut short: it ends without the zero blocks that end an archive")
        if buf.count(0) == tarfile.BLOCKSIZE:
            return super().frombuf(buf, encoding, errors)  # the end: tarfile stops there
        try:
            return super().frombuf(buf, encoding, errors)
        except tarfile.HeaderError as e:
            raise tarfile.ReadError(f"a member header is corrupt ({e})") from None


class _Prefixed:
    """A file's bytes after the few already read to sniff its format."""

    def __init__(self, head: bytes, f: IO[bytes], source: str) -> None:
        self.head, self.f, self.source = head, f, source

    def read(self, size: int = -1) -> bytes:
        if self.head:
            data, self.head = (self.head, b"") if size < 0 else (self.head[:size], self.head[size:])
            return data
        try:
            return self.f.read(size)
        except OSError as e:
            raise SpecError(f"cannot read {self.source}: {e.strerror or e}") from None


def _compression_errors() -> tuple[type[Exception], ...]:
    """What a corrupt compressed stream raises (zlib and lzma are optional in Python)."""
    errors: list[type[Exception]] = [OSError, EOFError]
    with contextlib.suppress(ImportError):
        import zlib

        errors.append(zlib.error)
    with contextlib.suppress(ImportError):
        import lzma

        errors.append(lzma.LZMAError)
    return tuple(errors)


@contextlib.contextmanager
def _open_source(tarball: str | IO[bytes], source: str) -> Iterator[_Meter]:
    """The uncompressed tar stream of ``tarball``, metered."""
    if isinstance(tarball, str):
        try:
            f: IO[bytes] = open(tarball, "rb")
        except OSError as e:
            raise SpecError(f"cannot read {tarball}: {e.strerror}") from None
    else:
        f = tarball
    try:
        raw = _Prefixed(b"", f, source)
        head = b""
        while len(head) < 10 and (more := raw.read(10 - len(head))):  # a pipe may give less
            head += more
        if not head:
            raise SpecError(f"{source}: not a readable tar archive (empty file)")
        raw.head = head
        read: Callable[[int], bytes] = raw.read
        kind = "tar"
        try:
            # the magic numbers tarfile's "r|*" knows, as strictly as it checks them
            if head.startswith(b"\x1f\x8b\x08"):
                import gzip

                kind, read = "gzip", gzip.GzipFile(fileobj=cast(IO[bytes], raw), mode="rb").read
            elif head[:3] == b"BZh" and head[4:10] == b"1AY&SY":
                import bz2

                kind, read = "bzip2", bz2.BZ2File(cast(IO[bytes], raw)).read
            elif head.startswith((b"\xfd7zXZ\x00", b"\x5d\x00\x00\x80")):
                import lzma

                kind, read = "xz", lzma.LZMAFile(cast(IO[bytes], raw)).read
        except ImportError:
            raise SpecError(f"{source}: this Python cannot decompress {kind} data") from None
        yield _Meter(read, source, kind)
    finally:
        if isinstance(tarball, str):
            f.close()


class _Meter:
    """The uncompressed tar stream as tarfile reads it, counted and bounded.

    The extractor admits each member (``admit``) after checking its size, so every
    byte of member data the stream holds was allowed for before it is read. What is
    left is headers, which this bounds as they are read: ``_MAX_HEADER`` bytes past
    the end of the last admitted member's data (tarfile reads a member's headers
    into memory whole), and ``_HEADER_PER_MEMBER`` per member on average.
    """

    def __init__(self, read: Callable[[int], bytes], source: str, kind: str) -> None:
        self._read = read
        self._errors = _compression_errors()
        self.source, self.kind = source, kind
        self.total = 0  # bytes handed to tarfile
        self.data = 0  # bytes of admitted member data
        self.data_end = 0  # where the last admitted member's data ends
        self.members = 0

    def admit(self, data_end: int, stored: int) -> None:
        """A member whose data (``stored`` bytes) ends at ``data_end`` was allowed."""
        self.members += 1
        self.data += stored
        self.data_end = data_end

    def read(self, size: int = -1) -> bytes:
        try:
            chunk = self._read(size)
        except SpecError:
            raise
        except self._errors as e:
            raise SpecError(f"{self.source}: corrupt {self.kind} data ({e})") from None
        self.total += len(chunk)
        if self.total - self.data_end > _MAX_HEADER + tarfile.RECORDSIZE:
            raise SpecError(
                f"refusing the archive {self.source}: the headers of member {self.members + 1} "
                f"exceed {_human(_MAX_HEADER)}"
            )
        headers = self.total - self.data
        if headers > _MAX_HEADER + tarfile.RECORDSIZE + _HEADER_PER_MEMBER * self.members:
            raise SpecError(
                f"refusing the archive {self.source}: its headers take {_human(headers)} "
                f"for {self.members} members (at most {_human(_HEADER_PER_MEMBER)} a member)"
            )
        return chunk


def _block(n: int) -> int:
    """``n`` rounded up to whole tar blocks."""
    return -(-n // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _human(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {unit}"
    return f"{n} bytes"


# ------------------------------------------------------------------ members


class _Meta(NamedTuple):
    """What ``_metadata`` applies, kept for directories until the end."""

    mode: int
    uid: int
    gid: int
    mtime: float


def _parts(name: str, what: str) -> list[str]:
    """The path components of a member name, made relative; refuses ``..``."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"refusing the archive: {what} {name!r} points outside the image (..)")
    return parts


def _check_fields(m: tarfile.TarInfo) -> _Meta:
    """Refuse a member whose fields no system call would take as they are."""

    def bad(why: str) -> SpecError:
        return SpecError(f"refusing the archive: member {m.name!r} {why}")

    for what, text in (("name", m.name), ("link target", m.linkname)):
        if "\0" in text:
            raise bad(f"has a NUL byte in its {what}")
        try:
            length = len(os.fsencode(text))
        except UnicodeEncodeError:
            raise bad(f"has a {what} that is not a file name") from None
        if length >= _PATH_MAX:
            raise bad(f"has a {what} of {length} bytes (PATH_MAX is {_PATH_MAX})")
    if m.size < 0:
        raise bad(f"has a negative size ({m.size})")
    for what, value in (("uid", m.uid), ("gid", m.gid)):
        if not 0 <= value <= _MAX_ID:
            raise bad(f"has {what} {value}, not a 32-bit id")
    if not -_MAX_TIME < m.mtime < _MAX_TIME:  # also false for NaN
        raise bad(f"has an impossible modification time ({m.mtime})")
    return _Meta(m.mode & 0o7777, m.uid, m.gid, m.mtime)


def _segments(m: tarfile.TarInfo, stored: int) -> list[tuple[int, int]]:
    """The (offset, length) data segments of a regular member, checked: in order,
    not overlapping, within its size, and no more data than the archive stores."""
    if m.sparse is None:
        return [(0, m.size)]
    # typeshed says bytes; tarfile makes a list. Empty segments carry no data: the
    # old GNU format leaves unused slots of its header as (0, 0)
    sparse = [(o, n) for o, n in cast(list[tuple[int, int]], m.sparse) if n != 0]
    end = total = 0
    for offset, length in sparse:
        if offset < end or length < 0 or offset + length > m.size:
            raise SpecError(
                f"refusing the archive: member {m.name!r} has a malformed sparse map "
                f"(segment {offset}+{length} after {end}, size {m.size})"
            )
        end, total = offset + length, total + length
    if total > stored:
        raise SpecError(
            f"refusing the archive: member {m.name!r}'s sparse map holds {total} bytes, the archive {stored}"
        )
    return sparse


class _Extractor:
    """Writes members below ``root_fd`` through directory fds, never following a
    symlink, within the limits of ``import_image``."""

    def __init__(
        self,
        root_fd: int,
        meter: _Meter,
        source: str,
        *,
        allow_devices: bool,
        max_size: int,
        max_members: int,
    ) -> None:
        self.root_fd = root_fd
        self.meter = meter
        self.source = source
        self.allow_devices = allow_devices
        self.max_size = max_size
        self.max_members = max_members
        self.chown = os.geteuid() == 0
        self.size = 0  # apparent size of the regular files (image.json's "size")
        self.counted = 0  # what max_size limits: that, plus data of members we skip
        self.skipped = 0
        # skipped members (devices...), so that a hard link to one is skipped too
        self.skipped_paths: set[str] = set()
        self.dirs: list[tuple[list[str], _Meta]] = []

    def run(self, tf: tarfile.TarFile) -> None:
        while (m := tf.next()) is not None:
            # stream mode keeps every member it read, for random access we never do:
            # memory would grow with the member count
            tf.members.clear()  # type: ignore[attr-defined]
            meta = _check_fields(m)
            self._admit(tf, m)
            with self._explained(m.name):
                self._member(tf, m, meta)
        # directories last: their modes and times would change as members land in them
        for parts, meta in reversed(self.dirs):
            with self._explained("/".join(parts) or "."):
                fd = self._open_dir(parts, create=False, name="/".join(parts))
                try:
                    self._metadata(fd, meta)
                finally:
                    if fd != self.root_fd:
                        os.close(fd)

    @contextlib.contextmanager
    def _explained(self, name: str) -> Iterator[None]:
        """A system call's failure on member ``name`` as one ``SpecError`` naming it
        (ENOSPC, ENAMETOOLONG for a 256-byte component, EPERM for mknod without root).
        ValueError and OverflowError too: the checks above should leave none, and a
        traceback is the wrong answer to an archive we failed to anticipate."""
        try:
            yield
        except SpecError:
            raise
        except (OSError, ValueError, OverflowError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise SpecError(f"{self.source}: cannot extract {name!r}: {why}") from None

    def _admit(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        """Check the limits before anything of ``m`` is written or its data read."""
        if self.meter.members >= self.max_members:
            raise SpecError(
                f"refusing the archive {self.source}: more than {self.max_members} members "
                "(see --max-members)"
            )
        # tarfile has worked out where the next header starts (tf.offset): the bytes
        # between here and there are this member's data as the archive stores it
        stored = tf.offset - m.offset_data
        if not 0 <= stored <= _block(m.size):
            raise SpecError(f"refusing the archive: member {m.name!r} has an inconsistent size ({m.size})")
        if m.isreg() or stored:
            self.counted += m.size
            if self.counted > self.max_size:
                raise SpecError(
                    f"refusing the archive {self.source}: its files add up to more than "
                    f"{_human(self.max_size)} (at {m.name!r}; see --max-size)"
                )
        self.meter.admit(tf.offset, stored)

    def _open_dir(self, parts: list[str], *, create: bool, name: str) -> int:
        """An fd of directory ``parts`` below root, walking with O_NOFOLLOW."""
        fd = self.root_fd
        try:
            for i, part in enumerate(parts):
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        where = "/".join(parts[: i + 1])
                        raise UnsafeArchiveError(
                            f"refusing the archive: member {name!r} goes through {where!r}, "
                            "which is a symlink or not a directory"
                        ) from None
                    raise
                if fd != self.root_fd:
                    os.close(fd)
                fd = nfd
        except BaseException:
            if fd != self.root_fd:
                os.close(fd)
            raise
        return fd

    def _clear(self, dfd: int, leaf: str, name: str, keep_dir: bool = False) -> None:
        """Remove an existing entry so a later member replaces it (as tar does)."""
        mode = _lstat_mode(dfd, leaf)
        if not mode:
            return
        if stat.S_ISDIR(mode):
            if keep_dir:
                return
            raise SpecError(f"refusing the archive: member {name!r} would replace a directory")
        os.unlink(leaf, dir_fd=dfd)

    def _member(self, tf: tarfile.TarFile, m: tarfile.TarInfo, meta: _Meta) -> None:
        parts = _parts(m.name, "member")
        if not parts:  # the archive's "./": the image root itself
            if not m.isdir():
                raise SpecError(
                    f"refusing the archive: member {m.name!r} names the image root but is not a directory"
                )
            self.dirs.append(([], meta))
            return
        key = "/".join(parts)
        if not (m.isdir() or m.isreg() or m.issym() or m.islnk() or m.isfifo()) and not (
            self.allow_devices and (m.ischr() or m.isblk())
        ):
            self.skipped += 1
            self.skipped_paths.add(key)
            return
        dfd = self._open_dir(parts[:-1], create=True, name=m.name)
        leaf = parts[-1]
        try:
            if m.isdir():
                self._clear(dfd, leaf, m.name, keep_dir=True)
                with contextlib.suppress(FileExistsError):  # only a directory is left
                    os.mkdir(leaf, 0o755, dir_fd=dfd)
                self.dirs.append((parts, meta))
            elif m.isreg():
                segments = _segments(m, tf.offset - m.offset_data)
                self._clear(dfd, leaf, m.name)
                fd = os.open(
                    leaf,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=dfd,
                )
                try:
                    self._copy(tf, m, fd, segments)
                    self.size += m.size
                    self._metadata(fd, meta)
                finally:
                    os.close(fd)
            elif m.issym():
                if not m.linkname:
                    raise SpecError(f"refusing the archive: symlink {m.name!r} has an empty target")
                self._clear(dfd, leaf, m.name)
                os.symlink(m.linkname, leaf, dir_fd=dfd)
                self._lmetadata(dfd, leaf, meta, symlink=True)
            elif m.islnk():
                if not self._hardlink(dfd, leaf, parts, m):
                    self.skipped_paths.add(key)
                    return
            elif m.ischr() or m.isblk():
                if not (0 <= m.devmajor < _MAX_MAJOR and 0 <= m.devminor < _MAX_MINOR):
                    raise SpecError(
                        f"refusing the archive: device {m.name!r} has number {m.devmajor}:{m.devminor}, "
                        f"beyond Linux's {_MAX_MAJOR - 1}:{_MAX_MINOR - 1}"
                    )
                self._clear(dfd, leaf, m.name)
                kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
                os.mknod(leaf, kind | (m.mode & 0o777), os.makedev(m.devmajor, m.devminor), dir_fd=dfd)
                self._lmetadata(dfd, leaf, meta)
            else:  # a FIFO
                self._clear(dfd, leaf, m.name)
                os.mkfifo(leaf, m.mode & 0o777, dir_fd=dfd)
                self._lmetadata(dfd, leaf, meta)
            self.skipped_paths.discard(key)
        finally:
            if dfd != self.root_fd:
                os.close(dfd)

    def _copy(
        self, tf: tarfile.TarFile, m: tarfile.TarInfo, fd: int, segments: list[tuple[int, int]]
    ) -> None:
        """Write a regular member's data: each stored segment at its offset, then the
        size, so the holes of a sparse member stay holes.

        The segments lie back to back in the archive from ``m.offset_data``; reading
        them from tarfile's stream directly spares generating the holes' zeros.
        """
        stream = tf.fileobj
        assert stream is not None
        stream.seek(m.offset_data)  # forward only: we are at it already
        for offset, length in segments:
            while length:
                chunk = stream.read(min(length, _CHUNK))
                if not chunk:
                    raise SpecError(f"{self.source}: the archive ends inside member {m.name!r}")
                view = memoryview(chunk)
                while view:
                    n = os.pwrite(fd, view, offset)
                    view, offset, length = view[n:], offset + n, length - n
        os.ftruncate(fd, m.size)

    def _hardlink(self, dfd: int, leaf: str, parts: list[str], m: tarfile.TarInfo) -> bool:
        """Link ``leaf`` to the member named by ``m.linkname``; False if that member
        was skipped (so is the link)."""
        target = _parts(m.linkname, "hard link target")
        if not target:
            raise UnsafeArchiveError(f"refusing the archive: hard link {m.name!r} to the image root")
        if target == parts:
            raise SpecError(f"refusing the archive: hard link {m.name!r} to itself")
        if "/".join(target) in self.skipped_paths:
            self.skipped += 1
            return False
        missing = UnsafeArchiveError(
            f"refusing the archive: hard link {m.name!r} to {m.linkname!r}, which is not in the image"
        )
        try:
            sfd = self._open_dir(target[:-1], create=False, name=m.linkname)
        except FileNotFoundError:
            raise missing from None
        try:
            mode = _lstat_mode(sfd, target[-1])
            if not mode:
                raise missing
            if stat.S_ISDIR(mode):
                raise SpecError(f"refusing the archive: hard link {m.name!r} to directory {m.linkname!r}")
            self._clear(dfd, leaf, m.name)
            # follow_symlinks=False: linking to a symlink links the symlink itself,
            # never what it points to (which could be a host file)
            os.link(target[-1], leaf, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
        finally:
            if sfd != self.root_fd:
                os.close(sfd)
        return True

    def _metadata(self, fd: int, meta: _Meta) -> None:
        if self.chown:
            os.fchown(fd, meta.uid, meta.gid)
        os.fchmod(fd, meta.mode)  # after chown, which clears set-id bits
        os.utime(fd, (meta.mtime, meta.mtime))

    def _lmetadata(self, dfd: int, leaf: str, meta: _Meta, symlink: bool = False) -> None:
        if self.chown:
            os.chown(leaf, meta.uid, meta.gid, dir_fd=dfd, follow_symlinks=False)
        if not symlink:
            os.chmod(leaf, meta.mode, dir_fd=dfd)  # not a symlink: nothing to follow
        os.utime(leaf, (meta.mtime, meta.mtime), dir_fd=dfd, follow_symlinks=False)
