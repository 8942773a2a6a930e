"""Removing what mydocker made on the host, safely: fd-relative, never through a symlink.

Runs in the supervisor. Used for image trees (``images.py``) and containers'
directories (``state.py``): both can hold whatever an archive or a container put
there, so nothing here follows a symlink or recurses on the Python stack.
"""

from __future__ import annotations

import contextlib
import errno
import os

#: how every directory on the way is opened: never through a symlink
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = DIR_FLAGS


def same_inode(dfd: int, name: str, st: os.stat_result) -> bool:
    """Whether ``name`` in ``dfd`` is (still) the inode ``st`` describes."""
    try:
        now = os.lstat(name, dir_fd=dfd)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def remove_tree(dfd: int, name: str, expect: os.stat_result | None = None) -> None:
    """Delete directory ``name`` of ``dfd`` and everything below it.

    Never follows a symlink (every step down is ``O_NOFOLLOW``; a symlink is unlinked
    like a file). Iterative, holding two or three fds whatever the depth: an archive
    can nest 2000 directories, which ``shutil.rmtree`` meets with RecursionError. Going
    back up uses ``..``, checked against the inode the step down opened. ``expect``:
    the directory must be this inode.

    Raises:
        OSError: a step failed, or the tree changed under us (ESTALE).
    """
    top = _open_dir(dfd, name)
    try:
        top_st = os.fstat(top)
        if expect is not None and (top_st.st_dev, top_st.st_ino) != (expect.st_dev, expect.st_ino):
            raise OSError(errno.ESTALE, "replaced while being removed", name)
        cur = top
        # one frame per directory we stand in below top: (its name, its stat, the
        # subdirectories of its parent still to remove)
        frames: list[tuple[str, os.stat_result, list[str]]] = []
        pending = _empty_of_files(cur)
        try:
            while True:
                if pending:
                    sub = pending.pop()
                    try:
                        nfd = _open_dir(cur, sub)
                    except FileNotFoundError:
                        continue
                    frames.append((sub, os.fstat(nfd), pending))
                    if cur != top:
                        os.close(cur)
                    cur = nfd
                    pending = _empty_of_files(cur)
                    continue
                if not frames:
                    break
                sub, st, pending = frames.pop()
                up = os.open("..", _DIR_FLAGS, dir_fd=cur)
                os.close(cur)
                cur = up
                if not same_inode(cur, sub, st):
                    raise OSError(errno.ESTALE, "moved while being removed", sub)
                os.rmdir(sub, dir_fd=cur)
        finally:
            if cur != top:
                os.close(cur)
        if not same_inode(dfd, name, top_st):
            raise OSError(errno.ESTALE, "replaced while being removed", name)
        os.rmdir(name, dir_fd=dfd)
    finally:
        os.close(top)


def _open_dir(dfd: int, name: str) -> int:
    """Open a directory to empty it; one of ours we cannot read (overlayfs leaves its
    work/work with mode 000, which only root reads regardless) is made readable
    first, through an O_PATH fd: never a symlink's target."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dfd)
    except PermissionError:
        path_fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            if os.fstat(path_fd).st_uid != os.geteuid():
                raise
            os.chmod(f"/proc/self/fd/{path_fd}", 0o700)
        finally:
            os.close(path_fd)
        return os.open(name, _DIR_FLAGS, dir_fd=dfd)


def _empty_of_files(fd: int) -> list[str]:
    """Unlink every non-directory in directory ``fd``; return its subdirectories."""
    subdirs = []
    with os.scandir(fd) as it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.name, dir_fd=fd)
    return subdirs


def remove_path(path: str) -> None:
    """``remove_tree`` of a path (its last component is not followed if a symlink)."""
    parent, name = os.path.split(os.path.normpath(path))
    fd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        remove_tree(fd, name)
    finally:
        os.close(fd)
