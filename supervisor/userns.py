"""User namespaces: who a container's root is on the host.

Runs in the supervisor. Two cases:

- **rootless**: mydocker runs as an ordinary user. The container's uid 0 is that
  user. When ``/etc/subuid`` and ``/etc/subgid`` give the user a range and
  ``newuidmap``/``newgidmap`` (Debian's ``uidmap``) are installed, the whole range is
  mapped as podman does (0 -> the user, 1..N -> the range), so an image with several
  owners keeps them; otherwise one id is mapped (0 -> the user) and ``setgroups`` is
  denied, as the kernel requires for an unprivileged writer of ``gid_map``.
- **``--userns auto``** (root): each container gets a range of 65536 ids of its own,
  taken from the subordinate ranges of the user ``mydocker`` in ``/etc/subuid`` and
  ``/etc/subgid`` (default: ``AUTO_BASE``, 1879048192 = 0x70000000, which
  ``useradd`` never hands out). A range is held by an ``flock`` on a slot file in
  the state directory for the container's life, so two containers never share one
  and a dead owner's slot is free again.

The child waits on its sync pipe until ``write_maps`` has written its maps (the
kernel takes them once), before its first mount.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass

from .errors import SpecError, StartError

#: the size of a range ``--userns auto`` gives each container
AUTO_SIZE = 65536
#: the user whose subordinate ranges ``--userns auto`` hands out
AUTO_USER = "mydocker"
#: where ``--userns auto`` takes ranges from when /etc/subuid has none for AUTO_USER
AUTO_BASE = 0x70000000
AUTO_SLOTS = 1024


@dataclass(frozen=True)
class IdMap:
    """One line of a uid_map or gid_map: ``inside outside count``."""

    inside: int
    outside: int
    count: int

    def line(self) -> str:
        return f"{self.inside} {self.outside} {self.count}\n"


@dataclass(frozen=True)
class Mapping:
    """A user namespace's uid and gid maps, and how they are written."""

    uids: tuple[IdMap, ...]
    gids: tuple[IdMap, ...]
    #: written through newuidmap/newgidmap (a range beyond our own id needs them)
    helpers: bool
    #: which ``AUTO_SIZE`` slot of ``--userns auto`` it holds, or None
    slot: int | None = None

    @property
    def single(self) -> bool:
        """One id mapped: setgroups is denied in the namespace."""
        return len(self.uids) == 1 and self.uids[0].count == 1

    def maps_uid(self, uid: int) -> bool:
        """Whether ``uid`` (inside) is mapped."""
        return any(m.inside <= uid < m.inside + m.count for m in self.uids)

    def maps_gid(self, gid: int) -> bool:
        """Whether ``gid`` (inside) is mapped."""
        return any(m.inside <= gid < m.inside + m.count for m in self.gids)

    def describe(self) -> str:
        """For messages: the uid map in one line."""
        return ", ".join(f"{m.inside}->{m.outside} ({m.count})" for m in self.uids)


def _ranges(path: str, user: str, uid: int) -> list[tuple[int, int]]:
    """The subordinate ranges ``/etc/subuid``-style file ``path`` gives ``user`` (by
    name or by number)."""
    found = []
    try:
        with open(path) as f:
            lines = f.read(1 << 20).splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (user, str(uid)):
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if start >= 0 and count > 0:
            found.append((start, count))
    return found


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def rootless_mapping(notice: list[str] | None = None) -> Mapping:
    """The mapping of a rootless container: the user's whole subordinate range when
    it has one and newuidmap/newgidmap are installed, else the user alone. A
    fallback for want of newuidmap is said in ``notice`` (one line)."""
    uid, gid = os.geteuid(), os.getegid()
    name = _user_name(uid)
    subuids, subgids = _ranges("/etc/subuid", name, uid), _ranges("/etc/subgid", name, uid)
    single = Mapping((IdMap(0, uid, 1),), (IdMap(0, gid, 1),), helpers=False)
    if not subuids or not subgids:
        return single
    if not (shutil.which("newuidmap") and shutil.which("newgidmap")):
        if notice is not None:
            notice.append(
                f"{name} has subordinate ids in /etc/subuid, but newuidmap/newgidmap are not installed "
                "(Debian: uidmap): mapping only uid 0 to the user"
            )
        return single
    (ustart, ucount), (gstart, gcount) = subuids[0], subgids[0]
    return Mapping(
        (IdMap(0, uid, 1), IdMap(1, ustart, ucount)),
        (IdMap(0, gid, 1), IdMap(1, gstart, gcount)),
        helpers=True,
    )


class AutoSlot:
    """A range of ``--userns auto`` held for one container (an flock on its slot)."""

    def __init__(self, mapping: Mapping, fd: int) -> None:
        self.mapping = mapping
        self._fd = fd

    def release(self) -> None:
        """Give the range back (the kernel does it too when we die)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def auto_mapping(state_dir: str) -> AutoSlot:
    """Take a free ``AUTO_SIZE`` range for a ``--userns auto`` container.

    Raises:
        SpecError: every range is in use.
        OSError: the state directory cannot be written.
    """
    bases = _ranges("/etc/subuid", AUTO_USER, -1)
    gbases = _ranges("/etc/subgid", AUTO_USER, -1)
    ustart, ucount = bases[0] if bases else (AUTO_BASE, AUTO_SIZE * AUTO_SLOTS)
    gstart, gcount = gbases[0] if gbases else (AUTO_BASE, AUTO_SIZE * AUTO_SLOTS)
    slots = min(ucount, gcount) // AUTO_SIZE
    where = os.path.join(state_dir, "userns")
    os.makedirs(where, mode=0o700, exist_ok=True)
    for slot in range(slots):
        fd = os.open(os.path.join(where, f"slot-{slot}"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        mapping = Mapping(
            (IdMap(0, ustart + slot * AUTO_SIZE, AUTO_SIZE),),
            (IdMap(0, gstart + slot * AUTO_SIZE, AUTO_SIZE),),
            helpers=False,
            slot=slot,
        )
        return AutoSlot(mapping, fd)
    raise SpecError(f"--userns auto: all {slots} ranges of {AUTO_SIZE} ids are in use")


def write_maps(pid: int, mapping: Mapping) -> None:
    """Write the uid and gid maps of the user namespace of process ``pid`` (cloned
    with CLONE_NEWUSER, waiting on its sync pipe).

    Raises:
        StartError: the kernel or newuidmap refused (the reason in one line).
    """
    try:
        if mapping.helpers:
            _run_helper("newuidmap", pid, mapping.uids)
            _run_helper("newgidmap", pid, mapping.gids)
            return
        _write(f"/proc/{pid}/uid_map", "".join(m.line() for m in mapping.uids))
        if mapping.single and os.geteuid() != 0:
            # an unprivileged writer of gid_map must first give up setgroups(2)
            _write(f"/proc/{pid}/setgroups", "deny")
        _write(f"/proc/{pid}/gid_map", "".join(m.line() for m in mapping.gids))
    except OSError as e:
        raise StartError("user namespace", e.errno or 0, str(e)) from None


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    except OSError as e:
        raise OSError(e.errno, f"write {text.strip()!r} to {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def _run_helper(tool: str, pid: int, maps: tuple[IdMap, ...]) -> None:
    args = [tool, str(pid)] + [str(x) for m in maps for x in (m.inside, m.outside, m.count)]
    r = subprocess.run(args, capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
    if r.returncode != 0:
        why = r.stderr.decode(errors="replace").strip().splitlines()
        raise OSError(errno.EPERM, f"{tool} failed: {why[-1] if why else f'exit status {r.returncode}'}")


# ---------------------------------------------------------------- work as the namespace's root

#: how ``call_in_userns`` runs a function: a fresh interpreter (the caller may have
#: threads: no fork), which enters a user namespace, waits for its maps, calls
_CHILD = (
    "import sys; from supervisor.userns import _child_main; "
    "sys.exit(_child_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]))"
)


def call_in_userns(mapping: Mapping, function: str, *args: str, pass_fds: tuple[int, ...] = ()) -> None:
    """Call ``function`` ("module:name", of this package) with ``args`` as the root of
    a user namespace with ``mapping``, in a fresh interpreter: what a user without
    root needs to give files to (or take them from) ids of its subordinate range, as
    an image import or the removal of a container's layer. Its stdin is ours.

    Raises:
        SpecError: the function failed with a MydockerError (its message).
        StartError: the namespace could not be made or mapped.
    """
    import sys

    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        proc = subprocess.Popen(  # -P: nothing imported from the current directory
            [sys.executable, "-P", "-c", _CHILD, str(ready_w), str(go_r), function, *args],
            pass_fds=(ready_w, go_r, *pass_fds),
            env=env,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(ready_w)
        os.close(go_r)
    err = b""
    try:
        with os.fdopen(ready_r, "rb") as ready:
            if ready.read(1) == b"1":
                try:
                    write_maps(proc.pid, mapping)
                    os.write(go_w, b"1")
                except StartError:
                    proc.kill()
                    raise
    finally:
        os.close(go_w)
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
        status = proc.wait()
    if status != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise SpecError(lines[-1] if lines else f"{function} failed in a user namespace (status {status})")


def _child_main(ready: int, go: int, function: str, args: list[str]) -> int:
    """In ``call_in_userns``'s interpreter."""
    import importlib

    from . import _linux
    from .errors import MydockerError

    try:
        _linux.unshare(_linux.CLONE_NEWUSER)
    except OSError as e:
        print(f"cannot make a user namespace: {e}", file=__import__("sys").stderr)
        return 125
    os.write(ready, b"1")
    os.close(ready)
    if os.read(go, 1) != b"1":
        return 125
    os.close(go)
    module, _, name = function.partition(":")
    try:
        getattr(importlib.import_module(module), name)(*args)
    except (MydockerError, OSError) as e:
        print(str(e), file=__import__("sys").stderr)
        return 125
    return 0
