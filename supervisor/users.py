"""``-u/--user NAME|UID[:GROUP|GID]``: the container's uid, gid and groups, as docker
resolves them (runc's and moby's ``user.GetExecUser``), from the container's own
``/etc/passwd`` and ``/etc/group``.

Those files belong to the image, which may be hostile. They are read here, in the
supervisor, as text: never through the host's NSS (``pwd``, ``grp``, getpwnam),
which would load libraries named by the container's files into a root process
(docker cp, CVE-2019-14271). Every path is resolved inside the container's root
with openat2(RESOLVE_IN_ROOT), so a symlink such as ``etc/passwd ->
/etc/shadow`` reads the container's file or nothing, never the host's; the file is
opened with O_PATH first and must be a regular file of at most ``MAX_FILE_SIZE``
bytes before it is opened for reading, so a FIFO, a device node or a 10 GB file
costs nothing.

The rules (docker's, from runc):

- ``NAME``: the first passwd entry with that name (else an error); its gid and home,
  and as supplementary groups every group of /etc/group that lists NAME;
- ``UID``: numeric means a uid, never a name: the first entry with that uid as
  above, else that uid with gid 0, no groups and no home;
- ``USER:GROUP`` / ``USER:GID``: the gid of the first group with that name (else an
  error) or that number; an explicit group means no supplementary groups;
- an empty user part means root (uid 0): ``""`` is what a container without
  ``--user`` runs as, with root's groups from the image.

Lines are parsed as glibc does: blank and ``#`` lines are skipped, and so is a line
whose ids are not numbers (runc would read such a uid as 0).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from . import _linux
from .errors import SpecError

#: the largest uid or gid accepted (runc's: uids are signed 32-bit in places)
MAX_ID = 2**31 - 1
#: the largest /etc/passwd or /etc/group read (a real one is a few KiB)
MAX_FILE_SIZE = 4 * 1024 * 1024
#: the kernel's limit on supplementary groups (<linux/limits.h> NGROUPS_MAX)
NGROUPS_MAX = 65536

_NUMERIC = re.compile(r"[+-]?[0-9]+")  # what Go's strconv.Atoi takes, as runc does
_DIGITS = re.compile(r"[0-9]+")  # what glibc takes in a file's id fields (no sign)

#: reads one of the container's files when it is needed: its text, None if absent
_Reader = Callable[[], "str | None"]


@dataclass(frozen=True)
class User:
    """Who a container's process runs as.

    Attributes:
        uid: the user id.
        gid: the primary group id.
        groups: the supplementary group ids (setgroups), in /etc/group's order.
        home: the home directory of the user's passwd entry; None without one.
        name: the user's name from passwd; None for a uid that has no entry.
    """

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    home: str | None = None
    name: str | None = None

    @property
    def home_env(self) -> str:
        """What ``HOME`` should be unless the user sets it: the passwd home, or ``/``
        when there is none (runc's rule)."""
        return self.home or "/"


class PasswdEntry(NamedTuple):
    """One line of /etc/passwd that glibc would accept."""

    name: str
    uid: int
    gid: int
    home: str


class GroupEntry(NamedTuple):
    """One line of /etc/group that glibc would accept."""

    name: str
    gid: int
    members: tuple[str, ...]


def _file_id(text: str) -> int | None:
    """An id field of passwd or group, or None when glibc would reject the line."""
    if not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def _entries(text: str) -> list[list[str]]:
    """The colon-separated fields of the lines glibc reads: leading blanks skipped,
    empty and comment lines skipped, and NIS ``+``/``-`` lines too (in files mode
    glibc reads ``+::::::`` as a user with uid 0)."""
    out = []
    for raw in text.split("\n"):
        line = raw.strip()
        if line and line[0] not in "#+-":
            out.append(line.split(":"))
    return out


def parse_passwd(text: str) -> list[PasswdEntry]:
    """The valid entries of an /etc/passwd text, in order.

    ``name:password:uid:gid[:gecos[:home[:shell]]]``: a line with fewer than four
    fields, an empty name, or a uid or gid that is not a decimal number in range
    is skipped.
    """
    out = []
    for fields in _entries(text):
        if len(fields) < 4 or not fields[0]:
            continue
        uid, gid = _file_id(fields[2]), _file_id(fields[3])
        if uid is None or gid is None:
            continue
        out.append(PasswdEntry(fields[0], uid, gid, fields[5] if len(fields) > 5 else ""))
    return out


def parse_group(text: str) -> list[GroupEntry]:
    """The valid entries of an /etc/group text, in order.

    ``name:password:gid[:member,member,...]``: a line with fewer than three fields,
    an empty name or a bad gid is skipped; blanks around members are dropped.
    """
    out = []
    for fields in _entries(text):
        if len(fields) < 3 or not fields[0]:
            continue
        gid = _file_id(fields[2])
        if gid is None:
            continue
        members = tuple(m.strip() for m in fields[3].split(",")) if len(fields) > 3 else ()
        out.append(GroupEntry(fields[0], gid, tuple(m for m in members if m)))
    return out


def _parse_id(text: str, what: str, spec: str) -> int | None:
    """A numeric uid or gid of the ``--user`` text, None for a name."""
    if not _NUMERIC.fullmatch(text):
        return None
    value = int(text)
    if not 0 <= value <= MAX_ID:
        raise SpecError(f"invalid user {spec!r}: {what} {value} is out of range (0 to {MAX_ID})")
    return value


def parse_user_spec(spec: str) -> tuple[str, str]:
    """Split ``NAME|UID[:GROUP|GID]`` into its user and group parts (either may be
    empty).

    Raises:
        SpecError: more than one colon, a NUL or a line break, a negative or too
            large id.
    """
    if spec.count(":") > 1 or any(c in spec for c in "\0\n"):
        raise SpecError(f"invalid user {spec!r} (expected NAME|UID[:GROUP|GID])")
    user, _, group = spec.partition(":")
    _parse_id(user, "uid", spec)
    _parse_id(group, "gid", spec)
    return user, group


def lookup(spec: str, passwd: str | None, group: str | None) -> User:
    """Resolve ``--user`` text against passwd and group texts (None: no such file),
    by the rules in the module's docstring.

    Raises:
        SpecError: bad text, a user name not in passwd, a group name not in group,
            or more than NGROUPS_MAX supplementary groups.
    """
    return _resolve(spec, lambda: passwd, lambda: group)


def _resolve(spec: str, read_passwd: _Reader, read_group: _Reader) -> User:
    user_arg, group_arg = parse_user_spec(spec)
    uid_arg = _parse_id(user_arg, "uid", spec)
    gid_arg = _parse_id(group_arg, "gid", spec)

    if not user_arg:
        uid_arg = 0  # the default user: root
    passwd = parse_passwd(read_passwd() or "")
    if uid_arg is None:
        match = next((e for e in passwd if e.name == user_arg), None)
        if match is None:
            raise SpecError(f"unable to find user {user_arg}: no matching entries in passwd file")
    else:
        match = next((e for e in passwd if e.uid == uid_arg), None)
    # A uid without an entry runs with gid 0, no groups and no home (runc's defaults).
    uid, gid, home, name = uid_arg or 0, 0, None, None
    if match is not None:
        uid, gid, home, name = match.uid, match.gid, match.home, match.name

    groups: tuple[int, ...] = ()
    if gid_arg is not None:
        gid = gid_arg  # a number is a gid, in /etc/group or not: no need to read it
    elif group_arg:
        found = next((g for g in parse_group(read_group() or "") if g.name == group_arg), None)
        if found is None:
            raise SpecError(f"unable to find group {group_arg}: no matching entries in group file")
        gid = found.gid
    elif name is not None:
        # Supplementary groups only when the group is not given, as runc does.
        listed = (g.gid for g in parse_group(read_group() or "") if name in g.members)
        groups = tuple(dict.fromkeys(listed))
        if len(groups) > NGROUPS_MAX:
            raise SpecError(f"user {name} is in {len(groups)} groups: at most {NGROUPS_MAX} are allowed")
    return User(uid=uid, gid=gid, groups=groups, home=home, name=name)


def read_in_root(rootfs: str | None, path: str, limit: int = MAX_FILE_SIZE) -> bytes | None:
    """The content of ``path`` inside the root filesystem ``rootfs`` (None: the
    host's ``/``), or None when there is no such file.

    The path and every symlink on the way are resolved inside the root
    (RESOLVE_IN_ROOT: ``/`` and ``..`` stop at it; RESOLVE_NO_MAGICLINKS: no
    ``/proc/PID/root`` jumps). The file is opened O_PATH, which opens nothing (a
    FIFO does not block, a device's open handler does not run), checked to be a
    regular file no larger than ``limit``, and only then reopened for reading,
    through the O_PATH fd so that it is the same file; at most ``limit`` bytes are
    read even if it grows meanwhile.

    Raises:
        SpecError: the root cannot be opened, or the file cannot be resolved or is
            not a regular file of at most ``limit`` bytes.
    """
    where = f"the container's {path}" if rootfs is not None else f"the host's {path}"
    root = rootfs if rootfs is not None else "/"
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise SpecError(f"cannot open the root filesystem {root!r}: {e.strerror}") from None
    try:
        path_fd = _open_in_root(root_fd, path.lstrip("/"), where)
        if path_fd is None:
            return None
        try:
            st = os.fstat(path_fd)
            if not stat.S_ISREG(st.st_mode):
                raise SpecError(f"cannot read {where}: not a regular file")
            if st.st_size > limit:
                raise SpecError(f"cannot read {where}: larger than {limit} bytes ({st.st_size})")
            flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
            fd = os.open(f"/proc/self/fd/{path_fd}", flags)
        finally:
            os.close(path_fd)
        try:
            chunks, size = [], 0
            while size <= limit:
                chunk = os.read(fd, min(65536, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
        if size > limit:
            raise SpecError(f"cannot read {where}: larger than {limit} bytes")
        return b"".join(chunks)
    except OSError as e:
        raise SpecError(f"cannot read {where}: {e.strerror}") from None
    finally:
        os.close(root_fd)


def _open_in_root(root_fd: int, relpath: str, where: str) -> int | None:
    resolve = _linux.RESOLVE_IN_ROOT | _linux.RESOLVE_NO_MAGICLINKS
    try:
        return _linux.openat2(root_fd, relpath, os.O_PATH | os.O_CLOEXEC, 0, resolve)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        if e.errno == errno.EAGAIN:
            raise SpecError(f"cannot read {where}: the path kept changing while it was resolved") from None
        if e.errno == errno.ENOSYS:
            raise SpecError(f"cannot read {where}: openat2 needs Linux 5.6 or later") from None
        if e.errno == errno.ELOOP:
            raise SpecError(f"cannot read {where}: too many symlinks, or a /proc magic link") from None
        raise SpecError(f"cannot read {where}: {e.strerror}") from None


def resolve_user(spec_text: str, rootfs: str | None) -> User:
    """Who ``--user spec_text`` is in the container whose root filesystem is
    ``rootfs`` (None: the host's root, read the same way).

    ``""`` is the default user (root, with root's groups from the image). Only the
    files needed are read: /etc/group only for a group name or the groups of a
    user with a passwd entry.

    Raises:
        SpecError: bad text, an unknown user or group name (one line each), or an
            /etc/passwd or /etc/group that is not a readable regular file of at
            most MAX_FILE_SIZE bytes.
    """

    def reader(path: str) -> _Reader:
        def read() -> str | None:
            data = read_in_root(rootfs, path)
            return None if data is None else data.decode("utf-8", "surrogateescape")

        return read

    return _resolve(spec_text, reader("/etc/passwd"), reader("/etc/group"))
