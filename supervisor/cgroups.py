"""Cgroups: fence each container in, kill all of it at the end, and leave nothing behind.

Every container gets one directory, ``mydocker-<id>-<supervisor pid>``, below the
supervisor's own cgroup (or ``ContainerSpec.cgroup_parent``) in each hierarchy it
needs, and loses it when it is gone:

* The cgroup v2 hierarchy (pure v2, or the controller-less ``unified`` one of a
  hybrid host) is used for *every* container, limits or not: making and removing it
  costs ~0.1 ms of the supervisor's time and ~0.3 ms of a container's start-to-reap
  latency (measured on a 2-core hybrid host: ~4-8 % of the throughput of /bin/true
  containers), and buys what nothing else does.
  The child is born inside it (``CLONE_INTO_CGROUP``: it never runs an instruction
  outside), and ``cgroup.kill`` kills every process of the container at once,
  daemons that double-forked away from PID 1 included (with ``--pid host``). On a
  pure v2 host the limits are written there as well, with the controllers enabled
  through the parent's ``cgroup.subtree_control``.
* A cgroup v1 hierarchy is used only when a limit needs its controller (memory, cpu,
  cpuset, pids). A child cannot be cloned into a v1 cgroup, so it writes itself into
  each ``cgroup.procs`` (``join_files``) as its first step, before anything of the
  container runs; if that fails it reports the step and exits: it never execs
  outside its limits. Not the supervisor: moving a task takes the kernel's
  ``cgroup_threadgroup_rwsem`` for writing, which waits for an RCU grace period
  unless another move came shortly before (~10 ms on the 2-core development host
  for a container started after a pause, ~12 us back to back). The supervisor
  doing it stalled its event loop for that long; the child only delays itself.

The layout is read from ``/proc/self/cgroup`` and ``/proc/self/mountinfo``, never
assumed. Nothing is written outside the directories made here, except, on pure v2,
``+controller`` into the parent's ``cgroup.subtree_control`` when a limit needs a
controller that the parent does not yet pass down.

Leftovers: if the supervisor is SIGKILLed, its containers die with it (their PID 1
has ``PR_SET_PDEATHSIG``), but their directories stay behind, with any process that
escaped PID 1. The name carries the supervisor's pid: the spawn helper, which outlives
its supervisor by a moment, removes them (``clean_up_after``); and the first container
a mydocker process makes below a parent removes those whose owner is dead
(``sweep_leftovers``), killing whatever still runs in them first. So after a killed
``mydocker run`` (no helper there) the next run cleans up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import posixpath
import re
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from . import devices
from .errors import NOT_PERMITTED, SpecError, StartError
from .spec import ContainerSpec, Limits, cpu_list
from .usage import Counters, read_counters, read_cpu

#: every directory we make starts with this (the leak checks look for it)
PREFIX = "mydocker-"

#: the CFS period for --cpus, in microseconds (docker's)
CPU_PERIOD = 100_000

#: seconds ``destroy`` keeps killing and retrying before it gives a directory up
#: (a process stuck in uninterruptible sleep); the next container retries it
DESTROY_TIMEOUT = 30.0

#: which controller each limit needs, and the flag that sets it (for messages)
LIMIT_CONTROLLERS = {
    "memory": ("memory", "--memory"),
    "memory_swap": ("memory", "--memory-swap"),
    "cpus": ("cpu", "--cpus"),
    "cpu_shares": ("cpu", "--cpu-shares"),
    "cpuset_cpus": ("cpuset", "--cpuset-cpus"),
    "pids": ("pids", "--pids-limit"),
}


class CgroupFS:
    """The few file operations made on cgroupfs; unit tests pass a fake tree."""

    #: whether v2 cgroups have ``cgroup.kill`` (Linux 5.14); found out on first use
    has_kill_file: bool | None = None
    _owner: Owner | None = None
    _owner_pid = -1
    _programs: devices.ProgramCache | None = None

    def confine_devices(self, path: str, rules: tuple[devices.DeviceRule, ...], dir_fd: int = -1) -> None:
        """Attach the device program of ``rules`` to cgroup v2 directory ``path``
        (through ``dir_fd``, an fd of it, if given: one open and path walk less).

        Raises:
            StartError: the kernel refused (no CAP_SYS_ADMIN, an ancestor's program).
        """
        devices.apply_v2(path, rules, self.device_programs(), dir_fd)

    def device_programs(self) -> devices.ProgramCache:
        """The device programs loaded by this process, one per distinct rule set
        (loading one costs ~0.25 ms, attaching a loaded one ~4 us); their fds live as
        long as the process (``device_program_fds``)."""
        if self._programs is None:
            self._programs = devices.ProgramCache()
        return self._programs

    def owner(self) -> Owner:
        """This process as an owner of container cgroups on this cgroupfs (made on
        first use; its markers are removed at exit)."""
        if self._owner is None or self._owner_pid != os.getpid():
            import atexit

            self._owner, self._owner_pid = Owner(), os.getpid()
            atexit.register(self._owner.release, self)
        return self._owner

    def mkdir(self, path: str) -> None:
        """Make a cgroup."""
        os.mkdir(path, 0o755)

    def rmdir(self, path: str) -> None:
        """Remove a cgroup (EBUSY while it has processes)."""
        os.rmdir(path)

    def read(self, path: str) -> str:
        """Read a control file."""
        with open(path) as f:
            return f.read()

    def write(self, path: str, value: str) -> None:
        """Write one value to a control file (one write(2): cgroupfs wants that).

        Raises:
            OSError: naming the file and the value.
        """
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise OSError(e.errno, f"write {value!r} to {path}: {e.strerror}") from None

    def exists(self, path: str) -> bool:
        """Whether a control file or cgroup exists."""
        return os.path.exists(path)

    def listdir(self, path: str) -> list[str]:
        """Names in a cgroup directory."""
        return os.listdir(path)

    def subdirs(self, path: str) -> list[str]:
        """The names of the cgroups right below a cgroup directory."""
        with os.scandir(path) as it:
            return [e.name for e in it if e.is_dir(follow_symlinks=False)]

    def open_dir(self, path: str, lockable: bool = False) -> int:
        """An fd of a cgroup directory: O_PATH for CLONE_INTO_CGROUP, or one that
        ``flock`` takes (``lockable``)."""
        mode = os.O_RDONLY if lockable else os.O_PATH
        return os.open(path, mode | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def same_dir(self, fd: int, path: str) -> bool:
        """Whether ``path`` is still the directory open as ``fd``."""
        try:
            a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# ---------------------------------------------------------------- layout


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy and where the supervisor sits in it.

    Attributes:
        version: 1 or 2.
        controllers: v1: the controllers bound to it; v2: empty (which ones a cgroup
            offers is read from its ``cgroup.controllers``).
        mountpoint: where it is mounted.
        mount_root: the cgroup shown at the mountpoint (``/`` unless bind-mounted
            or seen from a cgroup namespace), as ``/proc/self/cgroup`` spells paths.
        own_path: the supervisor's cgroup, as ``/proc/self/cgroup`` spells it.
    """

    version: int
    controllers: frozenset[str]
    mountpoint: str
    mount_root: str
    own_path: str

    def dir_of(self, path: str) -> str | None:
        """The directory of cgroup ``path``, or None if this mount does not show it."""
        rel = posixpath.relpath(posixpath.normpath(path), self.mount_root)
        if rel == ".." or rel.startswith("../"):
            return None
        return posixpath.normpath(posixpath.join(self.mountpoint, rel))

    @functools.lru_cache(maxsize=64)  # noqa: B019 - a few hierarchies, alive all along
    def parent_dir(self, cgroup_parent: str | None) -> str | None:
        """Where a container's cgroup goes: below our own cgroup, or below
        ``cgroup_parent`` (absolute: from the hierarchy's root; relative: from ours)."""
        if cgroup_parent is None:
            path = self.own_path
        else:
            path = posixpath.join(self.own_path, cgroup_parent)  # absolute wins in join
        return self.dir_of(path)


@dataclass(frozen=True)
class CgroupLayout:
    """The cgroup hierarchies of this host, as the supervisor sees them."""

    v2: Hierarchy | None
    v1: tuple[Hierarchy, ...] = ()
    fs: CgroupFS = field(default_factory=CgroupFS, compare=False)

    @property
    def kind(self) -> str:
        """``"v2"``, ``"hybrid"``, ``"v1"`` or ``"none"``."""
        if self.v2 is not None:
            return "hybrid" if self.v1 else "v2"
        return "v1" if self.v1 else "none"

    def v1_for(self, controller: str) -> Hierarchy | None:
        """The v1 hierarchy a controller is bound to, if any."""
        for h in self.v1:
            if controller in h.controllers:
                return h
        return None


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    if "\\" not in s:
        return s
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and s[i + 1 : i + 4].isdigit() and len(s[i + 1 : i + 4]) == 3:
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[tuple[str, str, str, frozenset[str]]]:
    """The cgroup mounts in a mountinfo text: ``(root, mountpoint, fstype, superoptions)``."""
    mounts = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        if not sep:
            continue
        fields, tfields = head.split(), tail.split()
        if len(fields) < 5 or len(tfields) < 3 or tfields[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(
            (_unescape(fields[3]), _unescape(fields[4]), tfields[0], frozenset(tfields[2].split(",")))
        )
    return mounts


def parse_proc_cgroup(text: str) -> tuple[str | None, dict[frozenset[str], str]]:
    """``(v2 path or None, {v1 controller set: path})`` from /proc/self/cgroup.

    Named v1 hierarchies without controllers (``name=systemd``) are left out.
    """
    v2: str | None = None
    v1: dict[frozenset[str], str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, ctrls, path = parts
        if hid == "0" and not ctrls:
            v2 = path
            continue
        names = frozenset(c for c in ctrls.split(",") if c and not c.startswith("name="))
        if names:
            v1[names] = path
    return v2, v1


def detect_layout(proc_cgroup: str, mountinfo: str, fs: CgroupFS | None = None) -> CgroupLayout:
    """The layout described by a /proc/self/cgroup and a /proc/self/mountinfo text."""
    v2_path, v1_paths = parse_proc_cgroup(proc_cgroup)
    mounts = parse_mountinfo(mountinfo)
    v2: Hierarchy | None = None
    if v2_path is not None:
        for root, mp, fstype, _opts in mounts:
            h = Hierarchy(2, frozenset(), mp, root, v2_path)
            if fstype == "cgroup2" and h.dir_of(v2_path) is not None:
                v2 = h
                break
    v1: list[Hierarchy] = []
    for ctrls, path in v1_paths.items():
        for root, mp, fstype, opts in mounts:
            h = Hierarchy(1, ctrls, mp, root, path)
            if fstype == "cgroup" and ctrls <= opts and h.dir_of(path) is not None:
                v1.append(h)
                break
    v1.sort(key=lambda h: h.mountpoint)
    return CgroupLayout(v2, tuple(v1), fs or CgroupFS())


_layout: CgroupLayout | None = None


def current_layout() -> CgroupLayout:
    """This process's layout, read once (we never move ourselves)."""
    global _layout
    if _layout is None:
        with open("/proc/self/cgroup") as f:
            proc_cgroup = f.read()
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
        _layout = detect_layout(proc_cgroup, mountinfo)
    return _layout


# ---------------------------------------------------------------- what to write


def cpu_weight(shares: int) -> int:
    """cgroup v2 ``cpu.weight`` (1-10000) for v1 ``cpu.shares`` (2-262144), as runc maps it."""
    return 1 + ((shares - 2) * 9999) // 262142


@dataclass(frozen=True)
class Write:
    """One value for one control file of the container's cgroup.

    ``optional``: skip it when the kernel lacks the file (swap accounting off and
    no explicit ``--memory-swap``); a missing required file is an error.
    """

    controller: str
    file: str
    value: str
    optional: bool = False
    #: the flag to name when the file is missing (default: the controller's first)
    flag: str = ""


def limit_writes(limits: Limits, version: int) -> list[Write]:
    """The control-file writes that apply ``limits`` on a cgroup of ``version``.

    ``--memory-swap`` follows docker: unset means as much swap as memory, -1 means
    unlimited swap, otherwise it is memory plus swap. Order matters on v1: the memory
    limit before memory+swap, which may never be below it.
    """
    w: list[Write] = []
    mem, swap = limits.memory, limits.memory_swap
    if mem is not None:
        if version == 1:
            w.append(Write("memory", "memory.limit_in_bytes", str(mem)))
            if swap is None:
                w.append(Write("memory", "memory.memsw.limit_in_bytes", str(2 * mem), optional=True))
            elif swap != -1:
                w.append(Write("memory", "memory.memsw.limit_in_bytes", str(swap), flag="--memory-swap"))
        else:
            w.append(Write("memory", "memory.max", str(mem)))
            if swap is None:
                w.append(Write("memory", "memory.swap.max", str(mem), optional=True))
            elif swap != -1:
                w.append(Write("memory", "memory.swap.max", str(swap - mem), flag="--memory-swap"))
    if limits.cpus is not None:
        quota = max(1000, round(limits.cpus * CPU_PERIOD))
        if version == 1:
            w.append(Write("cpu", "cpu.cfs_period_us", str(CPU_PERIOD)))
            w.append(Write("cpu", "cpu.cfs_quota_us", str(quota)))
        else:
            w.append(Write("cpu", "cpu.max", f"{quota} {CPU_PERIOD}"))
    if limits.cpu_shares is not None:
        if version == 1:
            w.append(Write("cpu", "cpu.shares", str(limits.cpu_shares)))
        else:
            w.append(Write("cpu", "cpu.weight", str(cpu_weight(limits.cpu_shares))))
    if limits.cpuset_cpus is not None:
        w.append(Write("cpuset", "cpuset.cpus", limits.cpuset_cpus))
    if limits.pids is not None:
        w.append(Write("pids", "pids.max", str(limits.pids)))
    return w


def needed_controllers(limits: Limits) -> dict[str, str]:
    """``{controller: the first flag that needs it}`` for the limits that are set."""
    out: dict[str, str] = {}
    for attr, (controller, flag) in LIMIT_CONTROLLERS.items():
        if getattr(limits, attr) is not None:
            out.setdefault(controller, flag)
    return out


# ---------------------------------------------------------------- owners

#: a container's cgroup: ``mydocker-<id>-<owner token>``
_CONTAINER_NAME = re.compile(r"mydocker-([0-9A-Za-z_.]+)-([0-9a-f]{16})")
#: an owner's marker: ``mydocker-owner-<owner token>``
_MARKER_PREFIX = f"{PREFIX}owner-"
_MARKER_NAME = re.compile(r"mydocker-owner-([0-9a-f]{16})")


class Owner:
    """This process as the owner of container cgroups, provably alive to others.

    A pid names no process for sure: it is reused, and it means nothing in another
    PID namespace. So each process that makes container cgroups has a random token,
    carried in their names (``mydocker-<id>-<token>``), and holds an exclusive
    ``flock`` on a marker cgroup of its own (``mydocker-owner-<token>``, empty: a
    directory in cgroupfs) in every parent it makes them in. The kernel drops the
    lock when the owner dies however it dies, so anyone who shares the cgroup tree,
    in whatever PID or mount namespace, can tell a live owner from a dead one by
    trying to take it (``sweep_dead``).
    """

    def __init__(self) -> None:
        self.token = os.urandom(8).hex()
        self._markers: dict[str, int] = {}

    def name(self, container_id: str) -> str:
        """The cgroup name of a container of ours."""
        return f"{PREFIX}{container_id}-{self.token}"

    def claim(self, fs: CgroupFS, parent: str) -> None:
        """Hold our marker in ``parent`` (made and locked on first use).

        Raises:
            OSError: the marker cannot be made (the caller's mkdir would fail too).
        """
        if parent in self._markers:
            return
        path = posixpath.join(parent, _MARKER_PREFIX + self.token)
        for _ in range(3):
            with contextlib.suppress(FileExistsError):
                fs.mkdir(path)
            fd = fs.open_dir(path, lockable=True)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # A sweeper may have taken it between our mkdir and our lock, and
                # removed it: then we hold the lock of a directory that is gone.
                if fs.same_dir(fd, path):
                    self._markers[parent] = fd
                    return
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise OSError(errno.EAGAIN, f"cannot hold {path}: it keeps disappearing")

    def release(self, fs: CgroupFS) -> None:
        """Remove our markers (at exit; any left is swept as a dead owner's)."""
        for parent, fd in list(self._markers.items()):
            with contextlib.suppress(OSError):
                fs.rmdir(posixpath.join(parent, _MARKER_PREFIX + self.token))
            os.close(fd)
            del self._markers[parent]

    def marker_fds(self) -> tuple[int, ...]:
        """The fds holding our markers (none may reach a container)."""
        return tuple(self._markers.values())


def owner(fs: CgroupFS | None = None) -> Owner:
    """The ``Owner`` this process is on ``fs`` (default: the host's cgroupfs)."""
    return (current_layout().fs if fs is None else fs).owner()


def _owner_alive(fs: CgroupFS, parent: str, token: str) -> bool:
    """Whether the owner with ``token`` holds its marker in ``parent``. A missing
    marker is a dead owner's (it made the marker before any container)."""
    try:
        fd = fs.open_dir(posixpath.join(parent, _MARKER_PREFIX + token), lockable=True)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: leave it alone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # drops our lock too
    return False


def cgroup_name(spec: ContainerSpec, token: str) -> str:
    """``mydocker-<id>-<owner token>``: the container's cgroup in every hierarchy.

    Raises:
        SpecError: the id would not make a plain directory name.
    """
    ident = spec.id
    # The same test as "every character is alphanumeric, '_' or '.'", in C: a
    # per-character generator cost more than the rest of this function per container.
    rest = ident.replace("_", "").replace(".", "")
    if not ident or (rest and not (rest.isascii() and rest.isalnum())) or ident.startswith("."):
        raise SpecError(f"invalid container id for a cgroup name: {ident!r} (letters, digits, '_' and '.')")
    return f"{PREFIX}{ident}-{token}"


# ---------------------------------------------------------------- killing and removing


def _os_error(step: str, e: OSError) -> StartError:
    detail = e.strerror or str(e)
    if e.filename is not None:
        detail = f"{e.filename}: {detail}"
    return StartError(step, e.errno or 0, detail)


def _procs(fs: CgroupFS, d: str) -> list[int]:
    try:
        return [int(p) for p in fs.read(posixpath.join(d, "cgroup.procs")).split()]
    except (OSError, ValueError):
        return []


def kill_all(fs: CgroupFS, d: str) -> None:
    """SIGKILL every process in cgroup ``d`` and below it.

    cgroup v2's ``cgroup.kill`` does it atomically (a fork bomb cannot outrun it).
    Without it (v1, or a kernel before 5.14) each pid read from ``cgroup.procs`` is
    opened as a pidfd first and signalled only if it is still in the cgroup after
    that: a pid reused by another process between the read and the kill is never
    signalled (the pidfd pins the process; the second read proves membership).
    Callers repeat until the cgroup is empty.
    """
    kill_file = posixpath.join(d, "cgroup.kill")
    if fs.has_kill_file is not False and fs.exists(kill_file):
        try:
            fs.write(kill_file, "1")
            return
        except OSError:
            pass
    for sub in fs.subdirs(d):
        kill_all(fs, posixpath.join(d, sub))
    for pid in _procs(fs, d):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            if pid in _procs(fs, d):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(pidfd)


def remove_tree(fs: CgroupFS, d: str) -> bool:
    """rmdir cgroup ``d`` and every cgroup below it, deepest first (a container with
    CAP_SYS_ADMIN, or a cgroup namespace and a writable cgroupfs, can make some);
    True when ``d`` is gone. EBUSY (processes still in it) leaves the rest.

    The rmdir is tried first: a container's cgroup nearly never has cgroups below
    it, and listing a directory costs more than the rmdir (~25 us a directory)."""
    for attempt in range(2):
        try:
            fs.rmdir(d)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if attempt:
                return False
        try:
            subs = fs.subdirs(d)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if not subs:
            return False  # busy with processes: nothing below to remove first
        for sub in subs:
            remove_tree(fs, posixpath.join(d, sub))
    return False


def _kill_and_remove(fs: CgroupFS, path: str, wait: float = 2.0) -> bool:
    """Best effort for a leftover: kill what runs in it, then remove it and all below
    it; True if gone."""
    deadline = time.monotonic() + wait
    while True:
        if remove_tree(fs, path):
            return True
        if time.monotonic() > deadline:
            return False
        kill_all(fs, path)
        time.sleep(0.002)


# ---------------------------------------------------------------- one container


class Cgroup(Protocol):
    """What ``start_container`` and ``Container`` need of a container's cgroup."""

    @property
    def dirs(self) -> list[str]:
        """Its directories (their parents are where the spawn helper cleans up)."""
        ...

    def child_fds(self) -> dict[str, int]:
        """The fds the clone needs (``wire.ROLES``: "cgroup")."""
        ...

    def join_files(self) -> tuple[str, ...]:
        """The ``cgroup.procs`` files the child writes itself into before its first
        step (v1 directories, which no clone can be born into)."""
        ...

    def open_v2(self) -> int:
        """A new O_PATH fd of the v2 directory (an exec is cloned into it), or -1."""
        ...

    def attach(self, pid: int) -> None:
        """The child ``pid`` is cloned: release what only the clone needed."""
        ...

    def kill(self) -> None:
        """SIGKILL every process of the container."""
        ...

    def oom_killed(self) -> bool:
        """Whether the memory limit's OOM killer struck."""
        ...

    def counters(self) -> Counters:
        """CPU time and memory peak so far; after ``destroy``, the last figures."""
        ...

    def cpu_usec(self) -> int | None:
        """The CPU time of all the container's processes so far (None: unknown)."""
        ...

    def discard(self) -> None:
        """Remove a cgroup that never held a running container (synchronous)."""
        ...

    async def destroy(self) -> None:
        """Kill what is left, wait until empty, remove everything (shielded)."""
        ...


class ContainerCgroup:
    """The cgroup directories of one container (a ``Cgroup``).

    ``ContainerCgroup(spec, layout)`` makes them: the cgroup v2 directory (grouping,
    ``cgroup.kill``, ``CLONE_INTO_CGROUP``; the limits too on pure v2) and one v1
    directory per hierarchy a limit needs; nothing is left if that fails. Then:
    ``child_fds()`` before the clone, ``attach(pid)`` right after it, ``kill()``,
    ``oom_killed()`` and ``await destroy()`` at the end.

    Raises (when made):
        SpecError: a limit impossible on this host (``--cpuset-cpus 99``, more
            ``--cpus`` than CPUs) or a ``cgroup_parent`` that does not exist.
        StartError: a controller a limit needs is not available, or the kernel
            refused a value.
    """

    def __init__(self, spec: ContainerSpec, layout: CgroupLayout) -> None:
        self._fs = fs = layout.fs
        self.name = cgroup_name(spec, fs.owner().token)
        #: the v2 directory (grouping, cgroup.kill, CLONE_INTO_CGROUP; limits on pure v2)
        self.v2_dir: str | None = None
        #: the v1 directories, one per hierarchy a limit needs
        self.v1_dirs: list[str] = []
        self._memory: tuple[int, str] | None = None  # (version, dir) to read OOM kills from
        #: (version, dir) of the CPU time counters (usage.py: v2 cpu.stat, v1 cpuacct)
        self._cpu: tuple[int, str] | None = None
        #: (version, dir) of the memory peak, if the kernel keeps one for us
        self._peak: tuple[int, str] | None = None
        self._final = Counters()
        self._cgroup_fd = -1
        self._oom: bool | None = None
        self._destroyed = False
        plan = _plan(spec, layout)
        try:
            if plan.v2 is not None:
                self._make_v2(spec, plan)
            v1 = dict(plan.v1)
            rules = devices.container_rules(spec.privileged)
            if os.geteuid() != 0:
                # Without root: no device program can be loaded, and none is needed: a
                # user namespace never grants a device (its mounts are nodev, mknod
                # refused), and the host's nodes are bound in, as the user may open.
                pass
            elif self.v2_dir is not None:
                # Before any process is in it: the child is born confined.
                fs.confine_devices(self.v2_dir, rules, self._cgroup_fd)
            elif not spec.privileged:
                # No cgroup v2 to attach a device program to: the v1 devices controller.
                h = layout.v1_for("devices")
                if h is None:
                    raise StartError(
                        "cgroups",
                        0,
                        "cannot confine the container's devices: no cgroup2 and no devices controller",
                    )
                v1.setdefault(h, {})["devices"] = "devices"
                plan.parents.setdefault(h, _parent_in(h, spec, fs))
            for h, ctrls in v1.items():
                self._make_v1(spec, h, plan.parents[h], ctrls, plan.needed)
                if "devices" in ctrls:
                    devices.apply_v1(fs, self.v1_dirs[-1], rules)
            if self._cpu is None and spec.limits.cpu_time is not None:
                raise StartError(
                    "cgroups", 0, "--cpu-time needs the container's cgroup, which cannot be made here"
                )
            self._peak = self._memory
            if self._peak is None and self.v2_dir is not None and layout.v1_for("memory") is None:
                self._peak = (2, self.v2_dir)  # memory.peak, if the parent passes memory down
        except BaseException as e:
            self.discard()
            if isinstance(e, OSError):
                error = _os_error("cgroups", e)
                if e.errno in (errno.EACCES, errno.EPERM):
                    error = StartError("cgroups", e.errno, f"{error.detail} ({NOT_PERMITTED})")
                raise error from None
            raise

    def _make_v2(self, spec: ContainerSpec, plan: _Plan) -> None:
        fs, parent, wanted = self._fs, plan.v2 or "", plan.v2_needed
        if wanted:
            _enable_v2_controllers(fs, parent, wanted)
        d = posixpath.join(parent, self.name)
        try:
            fs.owner().claim(fs, parent)  # first: our marker there says we live
            fs.mkdir(d)
        except OSError as e:
            # A read-only or foreign cgroup2 mount (e.g. inside another container):
            # grouping is a bonus, so a container without v2 limits goes without.
            if wanted or e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            return
        self.v2_dir = d
        self._cpu = (2, d)  # cpu.stat: in every cgroup2 directory, controller or not
        if fs.has_kill_file is None:  # a kernel feature (5.14): asked once per cgroupfs
            fs.has_kill_file = fs.exists(posixpath.join(d, "cgroup.kill"))
        _apply(fs, d, [w for w in limit_writes(spec.limits, 2) if w.controller in wanted], plan.needed)
        if "memory" in wanted:
            self._memory = (2, d)
        self._cgroup_fd = fs.open_dir(d)

    def _make_v1(
        self, spec: ContainerSpec, h: Hierarchy, parent: str, ctrls: dict[str, str], needed: dict[str, str]
    ) -> None:
        fs = self._fs
        d = posixpath.join(parent, self.name)
        fs.owner().claim(fs, parent)
        fs.mkdir(d)
        self.v1_dirs.append(d)
        if "cpuset" in h.controllers:
            # A new v1 cpuset has no CPUs and no memory nodes: no task could join.
            mems = fs.read(posixpath.join(parent, "cpuset.mems")).strip()
            cpus = spec.limits.cpuset_cpus or fs.read(posixpath.join(parent, "cpuset.cpus")).strip()
            fs.write(posixpath.join(d, "cpuset.mems"), mems)
            fs.write(posixpath.join(d, "cpuset.cpus"), cpus)
        writes = [w for w in limit_writes(spec.limits, 1) if w.controller in h.controllers]
        _apply(fs, d, [w for w in writes if w.file != "cpuset.cpus"], needed)
        if "memory" in ctrls:
            self._memory = (1, d)
        if "cpuacct" in ctrls and self._cpu is None:
            self._cpu = (1, d)

    @property
    def dirs(self) -> list[str]:
        """Every directory of this container (v2 first)."""
        return ([self.v2_dir] if self.v2_dir else []) + self.v1_dirs

    def join_files(self) -> tuple[str, ...]:
        """The ``cgroup.procs`` of each v1 directory: the child writes itself there
        as its first step (see the module's docstring for why not the supervisor)."""
        return tuple(posixpath.join(d, "cgroup.procs") for d in self.v1_dirs)

    def open_v2(self) -> int:
        """A new O_PATH fd of the v2 directory (an exec is cloned into it; the
        caller closes it), or -1 without one."""
        return self._fs.open_dir(self.v2_dir) if self.v2_dir is not None and not self._destroyed else -1

    def child_fds(self) -> dict[str, int]:
        """The fds the clone needs: ``"cgroup"``, a v2 directory to clone into. It
        stays ours: ``attach`` or ``destroy`` closes it."""
        return {"cgroup": self._cgroup_fd} if self._cgroup_fd >= 0 else {}

    def _close_child_fds(self) -> None:
        if self._cgroup_fd >= 0:
            fd, self._cgroup_fd = self._cgroup_fd, -1
            os.close(fd)

    def attach(self, pid: int) -> None:
        """The child ``pid`` is cloned (into the v2 directory; it joins the v1 ones
        itself): close the fd the clone needed."""
        self._close_child_fds()

    def populated(self) -> bool:
        """Whether any process (zombies aside) is still in the container's cgroups."""
        if self.v2_dir is not None:
            # One read; the v1 directories hold the very same processes.
            try:
                for line in self._fs.read(posixpath.join(self.v2_dir, "cgroup.events")).splitlines():
                    if line.startswith("populated "):
                        return line.split()[1] != "0"
            except FileNotFoundError:
                pass
        return any(_procs(self._fs, d) for d in self.dirs)

    def kill(self) -> None:
        """SIGKILL every process in the container's cgroups (``kill_all``)."""
        if self._destroyed:
            return
        if self.v2_dir is not None:
            kill_all(self._fs, self.v2_dir)
            if self._fs.has_kill_file:
                return  # cgroup.kill: the v1 directories hold the same processes
        for d in self.v1_dirs:
            kill_all(self._fs, d)

    def _read_oom(self) -> bool:
        if self._memory is None:
            return False
        version, d = self._memory
        name = "memory.oom_control" if version == 1 else "memory.events"
        try:
            for line in self._fs.read(posixpath.join(d, name)).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value) > 0
        except (OSError, ValueError):
            pass
        return False

    def oom_killed(self) -> bool:
        """True if the memory limit's OOM killer killed a process of the container."""
        if self._oom is None:
            return self._read_oom()
        return self._oom

    def counters(self) -> Counters:
        """CPU time and memory peak so far (``usage.py``: where each comes from);
        after ``destroy``, the last figures read before the directories went."""
        if self._destroyed:
            return self._final
        return read_counters(self._fs.read, self._cpu, self._peak)

    def cpu_usec(self) -> int | None:
        """The CPU time of all the container's processes so far, in microseconds
        (None: not known, or the cgroup is gone)."""
        if self._destroyed or self._cpu is None:
            return None
        times = read_cpu(self._fs.read, self._cpu)
        return times[0] if times is not None else None

    def _remove(self) -> list[str]:
        """Remove every directory still there (and whatever appeared below them);
        returns those that are busy."""
        return [d for d in reversed(self.dirs) if not remove_tree(self._fs, d)]

    async def destroy(self) -> None:
        """Kill everything left in the container's cgroups, wait until they are
        empty, remember whether the OOM killer struck, and remove the directories.

        Call it under a shield (``Container.aclose`` does): cancelling it half way
        would leave directories behind. After ``DESTROY_TIMEOUT`` seconds of
        processes that will not die, the directories are given up to a later retry.
        """
        import anyio

        if self._destroyed:
            return
        self._close_child_fds()
        delay, deadline = 0.0005, time.monotonic() + DESTROY_TIMEOUT
        while True:
            # rmdir fails (EBUSY) on a populated cgroup anyway: only look first when
            # the OOM count must be read while the memory cgroup still exists.
            if self._memory is None or not self.populated():
                if self._oom is None:
                    self._oom = self._read_oom()
                # The last figures: read before each try, the directories may go.
                self._final = self._final.merge(self.counters())
                busy = self._remove()
                if not busy:
                    break
            else:
                busy = self.dirs
            if time.monotonic() > deadline:
                _given_up.extend(busy)
                break
            self.kill()
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.05)
        self._destroyed = True

    def discard(self) -> None:
        """Synchronous ``destroy`` for a cgroup whose container never ran: close the
        fds, kill whatever is there (a child whose spawn reply was lost), and remove
        the directories. A no-op after ``destroy``."""
        if self._destroyed:
            return
        self._close_child_fds()
        if self._remove():
            self.kill()
            _given_up.extend(d for d in self._remove() if d not in _given_up)
        self._destroyed = True


#: directories ``destroy`` had to give up; the next ``create_cgroup`` retries them
_given_up: list[str] = []
#: parents already swept for leftovers by this process
_swept: set[str] = set()


class JoinedCgroup:
    """The cgroups of a container someone else started (an exec from the CLI joins
    them): only what an exec needs of a ``Cgroup``; the owner tears them down."""

    def __init__(self, dirs: Iterable[str], fs: CgroupFS | None = None) -> None:
        self._fs = fs or current_layout().fs
        self.v2_dir: str | None = None
        self.v1_dirs: list[str] = []
        for d in dirs:
            if self.v2_dir is None and self._fs.exists(posixpath.join(d, "cgroup.events")):
                self.v2_dir = d  # only cgroup v2 directories have it
            else:
                self.v1_dirs.append(d)

    @property
    def dirs(self) -> list[str]:
        """Its directories (v2 first)."""
        return ([self.v2_dir] if self.v2_dir else []) + self.v1_dirs

    def child_fds(self) -> dict[str, int]:
        """None: an exec gets ``open_v2``'s."""
        return {}

    def join_files(self) -> tuple[str, ...]:
        """The ``cgroup.procs`` of its v1 directories (an exec'd child writes itself
        there first)."""
        return tuple(posixpath.join(d, "cgroup.procs") for d in self.v1_dirs)

    def open_v2(self) -> int:
        """A new O_PATH fd of the v2 directory, or -1."""
        return self._fs.open_dir(self.v2_dir) if self.v2_dir is not None else -1

    def attach(self, pid: int) -> None:
        """Nothing: the child joins the v1 directories itself (``join_files``)."""

    def kill(self) -> None:
        """SIGKILL every process in it."""
        for d in self.dirs[:1] if self._fs.has_kill_file and self.v2_dir else self.dirs:
            kill_all(self._fs, d)

    def oom_killed(self) -> bool:
        """Not known here (its owner records it)."""
        return False

    def counters(self) -> Counters:
        """Not kept here (its owner records them)."""
        return Counters()

    def cpu_usec(self) -> int | None:
        """Not kept here."""
        return None

    def discard(self) -> None:
        """Nothing: not ours."""

    async def destroy(self) -> None:
        """Nothing: not ours."""


def sweep_dead(fs: CgroupFS, parents: Iterable[str]) -> list[str]:
    """Remove what dead owners left below ``parents`` (they were SIGKILLed): their
    containers' cgroups, with whatever still runs there, and their markers. Only our
    own naming is touched, and only where the owner is provably gone (``Owner``).
    Returns the container cgroups removed.
    """
    removed = []
    for parent in parents:
        try:
            names = fs.subdirs(parent)
        except OSError:
            continue
        dead: dict[str, bool] = {}
        for name in names:
            m = _CONTAINER_NAME.fullmatch(name)
            if m is None or _MARKER_NAME.fullmatch(name):
                continue
            token = m.group(2)
            if token not in dead:
                dead[token] = token != fs.owner().token and not _owner_alive(fs, parent, token)
            if dead[token]:
                path = posixpath.join(parent, name)
                if _kill_and_remove(fs, path):
                    removed.append(path)
        for name in names:
            m = _MARKER_NAME.fullmatch(name)
            if m is not None and m.group(1) != fs.owner().token and not _owner_alive(fs, parent, m.group(1)):
                remove_tree(fs, posixpath.join(parent, name))
    return removed


def leftovers(fs: CgroupFS, parents: Iterable[str]) -> list[str]:
    """What nobody will remove below ``parents``: container cgroups of this process
    (a test asks after its containers are gone) or of dead owners, and dead owners'
    markers."""
    found = []
    for parent in parents:
        try:
            names = fs.subdirs(parent)
        except OSError:
            continue
        for name in names:
            m = _CONTAINER_NAME.fullmatch(name)
            marker = _MARKER_NAME.fullmatch(name)
            if marker is not None:
                if marker.group(1) != fs.owner().token and not _owner_alive(fs, parent, marker.group(1)):
                    found.append(posixpath.join(parent, name))
            elif m is not None:
                token = m.group(2)
                if token == fs.owner().token or not _owner_alive(fs, parent, token):
                    found.append(posixpath.join(parent, name))
    return found


def parents_of(layout: CgroupLayout, cgroup_parent: str | None = None) -> list[str]:
    """The directories container cgroups go in, in every hierarchy (v2 first)."""
    hs = ([layout.v2] if layout.v2 else []) + list(layout.v1)
    return [p for p in (h.parent_dir(cgroup_parent) for h in hs) if p is not None]


def clean_up_after(supervisor_pidfd: int, parents: Iterable[str], layout: CgroupLayout | None = None) -> None:
    """Remove the container cgroups of a supervisor that died without tearing down.

    The spawn helper calls this when its supervisor's socket closes, for the parents
    its requests named. If the supervisor was SIGKILLed, its containers' PID 1 died
    with it (``PR_SET_PDEATHSIG``), but processes that left PID 1's namespace
    (``--pid host``) live on, and the directories stay: ``sweep_dead`` kills and
    removes them now, not at some later run. A supervisor that closed the socket
    itself is alive (its markers are held): nothing of its is touched.
    """
    import select

    layout = current_layout() if layout is None else layout
    if not _dying(supervisor_pidfd):
        return
    # Dying is not yet dead: its files (the markers' locks) close on the way out.
    select.select([supervisor_pidfd], [], [], 2.0)
    sweep_dead(layout.fs, parents)


def _dying(pidfd: int) -> bool:
    """Whether the process open as ``pidfd`` has died or is dying: it has, or will
    in a moment, have closed its files (and so dropped its markers' locks)."""
    import select

    if select.select([pidfd], [], [], 0)[0]:
        return True
    try:
        # the pid as our PID namespace sees it, from the pidfd itself: no reuse race
        with open(f"/proc/self/fdinfo/{pidfd}") as f:
            pid = next((int(line.split()[1]) for line in f if line.startswith("Pid:")), -1)
        if pid <= 0:
            return True
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, StopIteration):
        return True
    # state, and flags & PF_EXITING (<linux/sched.h>): set before it closes its files
    return fields[0] in ("Z", "X") or bool(int(fields[6]) & 0x4)


def _available_cpus(fs: CgroupFS, parent: str, version: int) -> frozenset[int] | None:
    """The CPUs a child of ``parent`` may use: its effective cpuset, else the online CPUs."""
    name = "cpuset.effective_cpus" if version == 1 else "cpuset.cpus.effective"
    try:
        text = fs.read(posixpath.join(parent, name)).strip()
    except OSError:
        text = ""
    if not text:
        try:
            with open("/sys/devices/system/cpu/online") as f:
                text = f.read().strip()
        except OSError:
            return None
    return cpu_list(text) if text else None


def _check_host(limits: Limits, fs: CgroupFS, cpuset_parent: tuple[int, str] | None) -> None:
    """Limits that are well-formed but impossible on this host: SpecError."""
    # os.cpu_count() reads /sys on every call: only when there is a --cpus to check
    if limits.cpus is not None and limits.cpus > (ncpu := os.cpu_count() or 1):
        raise SpecError(f"invalid --cpus {limits.cpus:g}: this host has only {ncpu} CPU(s)")
    if limits.cpuset_cpus is not None and cpuset_parent is not None:
        version, parent = cpuset_parent
        avail = _available_cpus(fs, parent, version)
        if avail is not None:
            missing = sorted(cpu_list(limits.cpuset_cpus) - avail)
            if missing:
                have = ",".join(str(c) for c in sorted(avail))
                raise SpecError(
                    f"invalid --cpuset-cpus {limits.cpuset_cpus}: CPU {missing[0]} is not available "
                    f"(available: {have})"
                )


def _enable_v2_controllers(fs: CgroupFS, parent: str, wanted: dict[str, str]) -> None:
    try:
        offered = set(fs.read(posixpath.join(parent, "cgroup.controllers")).split())
        enabled = set(fs.read(posixpath.join(parent, "cgroup.subtree_control")).split())
    except OSError as e:
        raise _os_error(f"read the controllers of {parent}", e) from None
    for controller, flag in wanted.items():
        if controller not in offered:
            raise StartError(
                "cgroups",
                0,
                f"{flag} needs the cgroup v2 '{controller}' controller, which {parent} does not offer "
                f"(offered: {' '.join(sorted(offered)) or 'none'})",
            )
    missing = [c for c in wanted if c not in enabled]
    if not missing:
        return
    try:
        fs.write(posixpath.join(parent, "cgroup.subtree_control"), " ".join(f"+{c}" for c in missing))
    except OSError as e:
        hint = ""
        if e.errno == errno.EBUSY:
            hint = (
                f" ({parent} holds processes, and cgroup v2 does not pass controllers down from such "
                "a cgroup: run mydocker in a cgroup of its own, or pass --cgroup-parent)"
            )
        raise StartError(
            "cgroups", e.errno or 0, f"cannot enable {', '.join(missing)} in {parent}{hint}"
        ) from None


def _apply(fs: CgroupFS, d: str, writes: list[Write], flags: dict[str, str]) -> None:
    for w in writes:
        path = posixpath.join(d, w.file)
        if not fs.exists(path):
            if w.optional:
                continue
            raise StartError(
                "cgroups",
                errno.ENOENT,
                f"{w.flag or flags.get(w.controller, w.controller)}: this kernel has no {w.file} "
                f"(the limit is not supported here)",
            )
        fs.write(path, w.value)


class _Plan(NamedTuple):
    """Where a container's cgroups go, worked out (and checked) before any is made."""

    #: the flag that first needs each controller
    needed: dict[str, str]
    #: the parent directory in each hierarchy used
    parents: dict[Hierarchy, str]
    #: the v2 parent, or None without cgroup v2
    v2: str | None
    v2_needed: dict[str, str]
    #: the v1 hierarchies used, with the controllers each is needed for
    v1: dict[Hierarchy, dict[str, str]]


def _parent_in(h: Hierarchy, spec: ContainerSpec, fs: CgroupFS) -> str:
    parent = h.parent_dir(spec.cgroup_parent)
    # Our own cgroup exists (we are in it): only a given parent needs looking at.
    if parent is None or (spec.cgroup_parent is not None and not fs.exists(parent)):
        where = spec.cgroup_parent or h.own_path
        raise SpecError(f"cgroup parent {where!r} does not exist in {h.mountpoint}")
    return parent


def _plan(spec: ContainerSpec, layout: CgroupLayout) -> _Plan:
    fs = layout.fs
    limits = spec.limits
    needed = needed_controllers(limits)
    # Which hierarchy each needed controller lives in: a v1 one if it is bound there
    # (then v2 cannot have it), else v2.
    v1_needed: dict[Hierarchy, dict[str, str]] = {}
    v2_needed: dict[str, str] = {}
    for controller, flag in needed.items():
        h = layout.v1_for(controller)
        if h is not None:
            v1_needed.setdefault(h, {})[controller] = flag
        elif layout.v2 is not None:
            v2_needed[controller] = flag
        else:
            raise StartError(
                "cgroups", 0, f"{flag} needs the '{controller}' cgroup controller, which is not mounted"
            )
    if limits.cpu_time is not None and layout.v2 is None:
        # No cgroup2 directory to read cpu.stat from: a v1 cpuacct one (usage.py).
        h = layout.v1_for("cpuacct")
        if h is None:
            raise StartError("cgroups", 0, "--cpu-time needs cgroup2 or the v1 'cpuacct' controller")
        needed.setdefault("cpuacct", "--cpu-time")
        v1_needed.setdefault(h, {})["cpuacct"] = "--cpu-time"
    parents = {
        h: _parent_in(h, spec, fs) for h in ([layout.v2] if layout.v2 is not None else []) + list(v1_needed)
    }
    cpuset_h = layout.v1_for("cpuset") or layout.v2
    _check_host(
        limits,
        fs,
        (cpuset_h.version, parents[cpuset_h]) if limits.cpuset_cpus and cpuset_h in parents else None,
    )
    v2 = parents[layout.v2] if layout.v2 is not None else None
    return _Plan(needed, parents, v2, v2_needed, v1_needed)


def _delegated(spec: ContainerSpec, layout: CgroupLayout) -> bool:
    """Without root: whether the cgroup v2 parent is ours to write (a subtree systemd
    delegated to us, ``Delegate=yes``). Without one a container has no cgroup: it
    still dies whole with its PID 1 (its PID namespace), but limits cannot be had.

    Raises:
        SpecError: a limit was asked for, and cannot be enforced (one line: why).
    """
    parent = layout.v2.parent_dir(spec.cgroup_parent) if layout.v2 is not None else None
    writable = parent is not None and os.access(parent, os.W_OK | os.X_OK)
    needed = needed_controllers(spec.limits)
    # --cpu-time needs no controller, but a cgroup of its own to read cpu.stat from
    flags = [*needed.values(), *(["--cpu-time"] if spec.limits.cpu_time is not None else [])]
    if flags and not writable:
        flag = flags[0]
        where = parent or "no cgroup v2 hierarchy"
        raise SpecError(
            f"{flag} needs a cgroup v2 subtree delegated to uid {os.geteuid()} (systemd: Delegate=yes); "
            f"{where} is not writable"
        )
    v1 = [c for c in needed if layout.v1_for(c) is not None]
    if v1:
        raise SpecError(f"{needed[v1[0]]} needs the '{v1[0]}' controller, which is in cgroup v1: root only")
    return writable


def create_cgroup(spec: ContainerSpec, layout: CgroupLayout | None = None) -> ContainerCgroup | None:
    """Make the cgroup directories of a container (the default cgroup factory of
    ``start_container``; see ``ContainerCgroup``).

    Returns None when the host offers nothing to make one with (no cgroup v2 and no
    limits, or a read-only cgroup v2 and no limits). The first time a parent is used
    in this process, what dead owners left there is swept.

    Raises:
        SpecError, StartError: as ``ContainerCgroup``; nothing is left behind.
    """
    layout = current_layout() if layout is None else layout
    fs = layout.fs
    if os.geteuid() != 0 and not _delegated(spec, layout):
        return None
    if _given_up:
        _given_up[:] = [d for d in _given_up if not _kill_and_remove(fs, d, wait=0)]
    parents = parents_of(layout, spec.cgroup_parent)
    if parents and parents[0] not in _swept:
        # Leftovers may sit in any hierarchy, not only those this container needs.
        _swept.add(parents[0])
        sweep_dead(fs, parents)
    cg = ContainerCgroup(spec, layout)
    return cg if cg.dirs else None
