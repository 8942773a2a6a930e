"""Records of registered containers: what ``ps``, ``logs``, ``inspect``, ``exec``,
``stop``, ``rm``, ``cp`` and ``commit`` read, with or without a daemon running.

A container is registered when the CLI runs it (``run -d`` through the daemon, a
foreground ``run`` in the CLI's own process); the library's containers are not,
unless asked (``register=``), so that ``run_container`` costs what it did. A
registered container's directory (``state.py``'s, made even without a root
filesystem) holds, besides its layers::

    record.json      written once, before the clone: docker's Config and HostConfig
    spec.pickle      the resolved ContainerSpec, to exec into it, copy from it, commit it
    state.json       replaced atomically: running (pid, its start time, the boot id,
                     its cgroups), then exited (code, signal, OOM, usage, when)
    identity.pickle  who its processes are (user, id maps): what an exec must be too
    container.log    its output in docker's json-file format (``logs.py``), with .1
    keep             it outlives its container until ``rm`` (``run -d`` without ``--rm``)
    wait             ``wait`` commands hold a shared lock on it (``lifecycle.wait_exit``)

and ``<state dir>/names/<name>`` is a symlink to the id of the container holding that
name (claimed atomically under ``names/.lock``).

Who says whether it runs: its directory's ``lock``, held by the process that owns
the container (the daemon, or the CLI that runs it in the foreground) until the
exit is recorded. A state that says ``running`` with the lock free is a container
whose owner died (SIGKILL, OOM): its processes died with it (``PR_SET_PDEATHSIG``),
so it reads as exited, and the next daemon writes that down (``recover``). A pid
is never trusted alone: a pidfd is opened, then the process's start time and the
boot id are compared with the recorded ones.

The pickles are read only by the user who wrote them, from a 0700 directory: anyone
who could change them could run code as that user already.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from . import state
from ._fs import DIR_FLAGS
from .errors import ContainerNotRunningError, MydockerError, SpecError

if TYPE_CHECKING:
    from .confine import Identity
    from .spec import ContainerSpec

#: the record format; a state directory of another version is refused, not misread
VERSION = 1
RECORD, SPEC, STATE = "record.json", "spec.pickle", "state.json"
IDENTITY, LOG, WAIT = "identity.pickle", "container.log", "wait"
#: how long an owner removing a container waits for ``wait`` commands to read its exit
_WAITERS_GRACE = 2.0
_ID = re.compile(r"[0-9a-f]{64}")
#: docker's rule for container names
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class NoSuchContainerError(MydockerError):
    """No registered container has that name or id (prefix)."""

    exit_code = 1


class AmbiguousContainerError(NoSuchContainerError):
    """An id prefix that more than one container's id starts with."""


class ContainerConflictError(MydockerError):
    """The name is taken, or the container is in the wrong state for the request
    (``rm`` of a running one without ``-f``)."""


class StateFileError(MydockerError):
    """A record that cannot be read (corrupt, or of another mydocker version)."""


class Registration(NamedTuple):
    """How the CLI registers a container it starts."""

    #: started with ``run -d`` (through the daemon)
    detached: bool = False
    #: removed when it exits (``--rm``; a foreground run always is)
    autoremove: bool = True


def now_iso(t: float | None = None) -> str:
    """A time as docker prints it: RFC 3339 in UTC with nanoseconds."""
    t = time.time() if t is None else t
    whole = int(t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((t - whole) * 1e9):09d}Z"


def boot_id() -> str:
    """This boot's id: a pid recorded in another boot names nothing."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks after boot), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _names_dir(sdir: str) -> str:
    return os.path.join(sdir, "names")


@contextlib.contextmanager
def _names_locked(sdir: str) -> Iterator[int]:
    path = _names_dir(sdir)
    with contextlib.suppress(FileExistsError):
        os.makedirs(path, mode=0o700)
    nfd = os.open(path, DIR_FLAGS)
    try:
        lock = os.open(".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=nfd)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield nfd
        finally:
            os.close(lock)
    finally:
        os.close(nfd)


def claim_name(sdir: str, name: str, container_id: str) -> None:
    """Make ``name`` the name of ``container_id``.

    Raises:
        ContainerConflictError: a container that still exists holds it.
    """
    with _names_locked(sdir) as nfd:
        try:
            holder = os.readlink(name, dir_fd=nfd)
        except FileNotFoundError:
            holder = None
        if holder is not None:
            if _ID.fullmatch(holder) and os.path.isdir(os.path.join(state.containers_dir(sdir), holder)):
                raise ContainerConflictError(
                    f"the container name {name!r} is already in use by container {holder[:12]}: "
                    "remove that container or choose another name"
                )
            os.unlink(name, dir_fd=nfd)  # its container is gone (its owner was killed)
        os.symlink(container_id, name, dir_fd=nfd)


def release_name(sdir: str, name: str, container_id: str) -> None:
    """Give up ``name`` if ``container_id`` still holds it."""
    with _names_locked(sdir) as nfd:
        with contextlib.suppress(OSError):
            if os.readlink(name, dir_fd=nfd) == container_id:
                os.unlink(name, dir_fd=nfd)


def _name_of(sdir: str, name: str) -> str | None:
    try:
        holder = os.readlink(os.path.join(_names_dir(sdir), name))
    except OSError:
        return None
    return holder if _ID.fullmatch(holder) else None


def record_files(spec: ContainerSpec, reg: Registration, image: str | None) -> dict[str, bytes]:
    """The files a registered container's directory is made with."""
    record = {
        "Version": VERSION,
        "Id": spec.id,
        "Name": spec.name or "",
        "Created": now_iso(),
        "Image": image or spec.image or "",
        "Path": spec.command[0],
        "Args": list(spec.command[1:]),
        "Config": {
            "Cmd": list(spec.command),
            "Env": [f"{k}={v}" for k, v in spec.full_env().items()],
            "Hostname": spec.effective_hostname,
            "Image": image or spec.image or "",
            "User": spec.user or "",
            "WorkingDir": spec.cwd or "",
            "Tty": spec.tty,
        },
        "HostConfig": {
            "AutoRemove": reg.autoremove,
            "Privileged": spec.privileged,
            "ReadonlyRootfs": spec.read_only,
            "CapAdd": list(spec.cap_add),
            "CapDrop": list(spec.cap_drop),
            "NetworkMode": spec.network or ("none" if "net" in spec.namespaces else "host"),
            "Memory": spec.limits.memory or 0,
            "MemorySwap": spec.limits.memory_swap or 0,
            "NanoCpus": int((spec.limits.cpus or 0) * 1e9),
            "CpuShares": spec.limits.cpu_shares or 0,
            "CpusetCpus": spec.limits.cpuset_cpus or "",
            "PidsLimit": spec.limits.pids or 0,
            "CgroupParent": spec.cgroup_parent or "",
            "Rootfs": spec.rootfs or "",
        },
        "Detached": reg.detached,
    }
    return {
        RECORD: json.dumps(record, indent=1).encode(),
        SPEC: pickle.dumps((VERSION, spec)),
        WAIT: b"",
    }


class Record:
    """The owner's side of a registered container: made with its directory
    (``state.OwnedDir``), told when it runs and when it exited."""

    def __init__(self, owned: state.OwnedDir, spec: ContainerSpec, reg: Registration) -> None:
        self.owned = owned
        self.spec = spec
        self.reg = reg
        self._state: dict[str, Any] = {}

    def _write(self, name: str, data: bytes) -> None:
        fd = os.open(self.owned.where.dir, DIR_FLAGS)
        try:
            state.replace_file(fd, name, data, durable=not self.reg.autoremove)
        finally:
            os.close(fd)

    @property
    def log_path(self) -> str:
        """Where its output is logged."""
        return os.path.join(self.owned.where.dir, LOG)

    def running(self, pid: int, cgroup_dirs: list[str], identity: Identity | None) -> None:
        """Its command runs as ``pid`` (kept from now on, unless removed on exit: a
        start that failed leaves nothing, not even a "created" entry)."""
        if not self.reg.autoremove:
            self.owned.keep()
        self._write(IDENTITY, pickle.dumps((VERSION, identity)))
        self._state = {
            "Version": VERSION,
            "Status": "running",
            "Pid": pid,
            "PidStartTime": start_time(pid),
            "BootId": boot_id(),
            "StartedAt": now_iso(),
            "Cgroups": list(cgroup_dirs),
            "Owner": os.getpid(),
        }
        self._write(STATE, json.dumps(self._state).encode())

    def exited(
        self, code: int, signal: int | None, oom_killed: bool, usage: dict[str, Any] | None, error: str = ""
    ) -> None:
        """It exited (its final state, before its directory is kept or removed)."""
        self._state.update(
            Status="exited",
            ExitCode=code,
            Signal=signal,
            OOMKilled=oom_killed,
            FinishedAt=now_iso(),
            Usage=usage,
            Error=error,
        )
        with contextlib.suppress(OSError):
            self._write(STATE, json.dumps(self._state).encode())

    async def let_waiters_read(self) -> None:
        """Before the removal of a container removed on exit: give ``wait`` commands
        (each holds a shared lock on ``wait``) a moment to read its final state.
        Without a waiter this returns at once; it never waits long for one that
        hangs (``_WAITERS_GRACE``)."""
        if not self.reg.autoremove:
            return
        import anyio

        try:
            fd = os.open(os.path.join(self.owned.where.dir, WAIT), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            with anyio.move_on_after(_WAITERS_GRACE):
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        return
                    except BlockingIOError:
                        await anyio.sleep(0.005)
        finally:
            os.close(fd)


# -- the readers' side ------------------------------------------------------------


@dataclass
class Entry:
    """A registered container as found on disk."""

    id: str
    dir: str
    record: dict[str, Any]
    state: dict[str, Any]
    #: its owner holds its lock: it is starting, running, or its exit is being recorded
    owned: bool

    @property
    def name(self) -> str:
        """Its name ('' for none)."""
        return str(self.record.get("Name") or "")

    @property
    def short_id(self) -> str:
        """The first 12 digits of the id."""
        return self.id[:12]

    @property
    def status(self) -> str:
        """``created``, ``running`` or ``exited``."""
        recorded = self.state.get("Status", "created")
        if recorded == "running" and not self.owned:
            return "exited"  # its owner died, and its processes with it
        if recorded == "created" and not self.owned:
            return "exited"
        return str(recorded)

    @property
    def running(self) -> bool:
        """Whether it runs."""
        return self.status == "running"

    @property
    def exit_code(self) -> int:
        """Its exit status (137 when its owner died without recording it)."""
        if self.state.get("Status") == "exited":
            return int(self.state.get("ExitCode", 0))
        return 0 if self.running else 137

    @property
    def error(self) -> str:
        """Why it ended, when not by itself."""
        if self.state.get("Status") != "exited" and not self.owned:
            return "its supervisor died (the daemon or the CLI that ran it was killed)"
        return str(self.state.get("Error") or "")

    def spec(self) -> ContainerSpec:
        """Its resolved spec.

        Raises:
            StateFileError: unreadable, or of another version.
        """
        return _load_pickle(self.dir, SPEC, self.id)  # type: ignore[return-value]

    def identity(self) -> Identity | None:
        """Who its processes are (None if it never ran)."""
        try:
            return _load_pickle(self.dir, IDENTITY, self.id)  # type: ignore[return-value]
        except StateFileError:
            if not os.path.exists(os.path.join(self.dir, IDENTITY)):
                return None
            raise

    def open_pidfd(self) -> int:
        """A pidfd of its running PID 1, proven to be the recorded process.

        Raises:
            ContainerNotRunningError: it is not running (any more).
        """
        not_running = ContainerNotRunningError(f"container {self.name or self.short_id} is not running")
        if self.state.get("Status") != "running" or self.state.get("BootId") != boot_id():
            raise not_running
        pid = int(self.state["Pid"])
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise not_running from None
        if start_time(pid) != self.state.get("PidStartTime") or not is_owned(self.dir):
            os.close(pidfd)  # that pid names another process now
            raise not_running
        return pidfd


def _load_pickle(d: str, name: str, cid: str) -> object:
    """A pickle of a container's directory, if we (or root) wrote it: loading one runs
    whatever code it names, so one of another user's (a state directory they made,
    say under /tmp) is refused, never loaded."""
    try:
        fd = os.open(os.path.join(d, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise StateFileError(f"container {cid[:12]}: its {name} is missing") from None
    except OSError as e:
        raise StateFileError(f"container {cid[:12]}: its {name} cannot be read ({e.strerror})") from None
    try:
        with open(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid not in (os.geteuid(), 0) or st.st_mode & 0o022:
                raise StateFileError(
                    f"container {cid[:12]}: its {name} belongs to uid {st.st_uid} or others may "
                    "write it: not read (is this state directory another user's?)"
                )
            version, value = pickle.load(f)
    except StateFileError:
        raise
    except Exception as e:  # noqa: BLE001  # a corrupt pickle raises almost anything
        raise StateFileError(
            f"container {cid[:12]}: its {name} cannot be read ({type(e).__name__})"
        ) from None
    if version != VERSION:
        raise StateFileError(
            f"container {cid[:12]} was made by another version of mydocker (record version {version})"
        )
    return value


def is_owned(d: str) -> bool:
    """Whether a container directory's lock is held (by its owner)."""
    try:
        fd = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _read_json(d: str, name: str, cid: str, required: bool) -> dict[str, Any]:
    try:
        with open(os.path.join(d, name), "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        if required:
            raise StateFileError(f"container {cid[:12]}: its {name} is missing") from None
        return {}
    except (OSError, ValueError) as e:
        raise StateFileError(f"container {cid[:12]}: its {name} cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise StateFileError(f"container {cid[:12]}: its {name} is not a record")
    if data.get("Version", VERSION) != VERSION:
        raise StateFileError(
            f"container {cid[:12]} was made by another version of mydocker "
            f"(record version {data.get('Version')!r}, this one reads {VERSION})"
        )
    for key, kinds in _FIELDS.items():
        value = data.get(key)
        # (JSON's true and false are ints to isinstance)
        if key in data and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            raise StateFileError(f"container {cid[:12]}: its {name} has a bad {key!r}")
    if not all(isinstance(a, str) for a in data.get("Args", [])):
        raise StateFileError(f"container {cid[:12]}: its {name} has a bad 'Args'")
    return data


#: the fields of record.json and state.json that readers use, and their JSON types
_FIELDS: dict[str, tuple[type, ...]] = {
    "Name": (str,),
    "Created": (str,),
    "Image": (str,),
    "Path": (str,),
    "Args": (list,),
    "Config": (dict,),
    "HostConfig": (dict,),
    "Status": (str,),
    "Pid": (int,),
    "PidStartTime": (int, type(None)),
    "BootId": (str,),
    "StartedAt": (str,),
    "FinishedAt": (str,),
    "ExitCode": (int,),
    "Signal": (int, type(None)),
    "OOMKilled": (bool,),
    "Cgroups": (list,),
    "Error": (str,),
    "Usage": (dict, type(None)),
}


def load(sdir: str, cid: str) -> Entry:
    """The record of container ``cid`` (a full id).

    Raises:
        NoSuchContainerError: no such registered container.
        StateFileError: its record cannot be read.
    """
    d = os.path.join(state.containers_dir(sdir), cid)
    if not os.path.exists(os.path.join(d, RECORD)):
        raise NoSuchContainerError(f"no such container: {cid}")
    owned = is_owned(d)
    # the state after the lock: a container seen unowned has its final state written
    return Entry(cid, d, _read_json(d, RECORD, cid, True), _read_json(d, STATE, cid, False), owned)


def ids(sdir: str) -> list[str]:
    """The ids of the registered containers (their directories have a record)."""
    try:
        names = os.listdir(state.containers_dir(sdir))
    except OSError:
        return []
    top = state.containers_dir(sdir)
    return [n for n in names if _ID.fullmatch(n) and os.path.exists(os.path.join(top, n, RECORD))]


def entries(sdir: str) -> list[Entry]:
    """Every registered container that can be read, newest first (unreadable records
    are left out: ``find`` names them)."""
    out = []
    for cid in ids(sdir):
        with contextlib.suppress(MydockerError):
            out.append(load(sdir, cid))
    out.sort(key=lambda e: str(e.record.get("Created", "")), reverse=True)
    return out


def find(sdir: str, ref: str) -> Entry:
    """The container ``ref`` names: a name, a full id, or a unique id prefix (as docker).

    Raises:
        NoSuchContainerError, AmbiguousContainerError, StateFileError.
    """
    if not ref or "/" in ref or "\0" in ref:
        raise NoSuchContainerError(f"no such container: {ref!r}")
    ref = ref.removeprefix("/")
    if _ID.fullmatch(ref):
        return load(sdir, ref)
    by_name = _name_of(sdir, ref) if NAME.fullmatch(ref) else None
    if by_name is not None:
        with contextlib.suppress(NoSuchContainerError):
            return load(sdir, by_name)
    if re.fullmatch(r"[0-9a-f]+", ref):
        matches = [cid for cid in ids(sdir) if cid.startswith(ref)]
        if len(matches) > 1:
            raise AmbiguousContainerError(
                f"{ref!r} is the beginning of {len(matches)} container ids: give more of it"
            )
        if matches:
            return load(sdir, matches[0])
    raise NoSuchContainerError(f"no such container: {ref}")


def find_id(sdir: str, ref: str) -> str:
    """The id ``ref`` names (a name, an id, a unique id prefix) without reading its
    record: what ``rm`` of a container whose record is broken goes by.

    Raises:
        NoSuchContainerError, AmbiguousContainerError.
    """
    ref = ref.removeprefix("/")
    if not ref or "/" in ref or "\0" in ref:
        raise NoSuchContainerError(f"no such container: {ref!r}")
    by_name = _name_of(sdir, ref) if NAME.fullmatch(ref) else None
    candidates = ids(sdir)
    if by_name in candidates:
        return by_name
    matches = [cid for cid in candidates if cid.startswith(ref)] if re.fullmatch(r"[0-9a-f]+", ref) else []
    if len(matches) > 1:
        raise AmbiguousContainerError(
            f"{ref!r} is the beginning of {len(matches)} container ids: give more of it"
        )
    if not matches:
        raise NoSuchContainerError(f"no such container: {ref}")
    return matches[0]


def remove_broken(sdir: str, cid: str) -> None:
    """Remove a container whose record cannot be read, if its owner is gone (nothing
    of it can be signalled without a record: a running one is left to its owner).

    Raises:
        ContainerConflictError: its owner holds it.
    """
    entry = Entry(cid, os.path.join(state.containers_dir(sdir), cid), {}, {}, False)
    with contextlib.suppress(OSError):
        for name in os.listdir(_names_dir(sdir)):
            if _name_of(sdir, name) == cid:
                entry.record = {"Name": name}
    remove(sdir, entry)


def remove(sdir: str, entry: Entry) -> None:
    """Remove a container that does not run (its directory, layers, log and name).

    Raises:
        ContainerConflictError: it runs (or its owner still records its exit).
        NoSuchContainerError: it was removed meanwhile.
    """
    try:
        taken = state.lock_container(sdir, entry.id)
    except FileNotFoundError:
        raise NoSuchContainerError(f"no such container: {entry.name or entry.id}") from None
    if taken is None:
        raise ContainerConflictError(
            f"container {entry.name or entry.short_id} is running (or a cp or commit of it is): "
            "stop it first, or use rm -f"
        )
    dfd, lock = taken
    try:
        try:
            state.remove_container_dir(sdir, entry.id)
        except FileNotFoundError:
            raise NoSuchContainerError(f"no such container: {entry.name or entry.id}") from None
        if entry.name:
            release_name(sdir, entry.name, entry.id)
    finally:
        os.close(lock)
        os.close(dfd)


def recover(sdir: str) -> list[str]:
    """Write down the exit of containers whose owner died (and remove those that
    were to be removed on exit); return their ids. The daemon does it when it starts."""
    done = []
    for cid in ids(sdir):
        try:
            taken = state.lock_container(sdir, cid)
        except OSError:
            continue
        if taken is None:
            continue  # owned: alive
        dfd, lock = taken
        try:
            try:
                entry = Entry(cid, os.path.join(state.containers_dir(sdir), cid), {}, {}, False)
                entry.record = _read_json(entry.dir, RECORD, cid, True)
                entry.state = _read_json(entry.dir, STATE, cid, False)
            except MydockerError:
                continue
            if entry.state.get("Status") == "exited":
                continue
            if not entry.record.get("HostConfig", {}).get("AutoRemove", True):
                new = dict(
                    entry.state, Status="exited", ExitCode=137, FinishedAt=now_iso(), Error=entry.error
                )
                state.replace_file(dfd, STATE, json.dumps(new).encode())
            else:
                state.remove_container_dir(sdir, cid)
                if entry.name:
                    release_name(sdir, entry.name, cid)
            done.append(cid)
        finally:
            os.close(lock)
            os.close(dfd)
    return done


_ADJECTIVES = (
    "admiring adoring agitated amazing angry awesome beautiful blissful bold boring brave busy charming "
    "clever compassionate competent condescending confident cool cranky crazy dazzling determined "
    "distracted dreamy eager ecstatic elastic elated elegant eloquent epic exciting fervent festive "
    "flamboyant focused friendly frosty funny gallant gifted goofy gracious great happy hardcore "
    "heuristic hopeful hungry infallible inspiring intelligent interesting jolly jovial keen kind "
    "laughing loving lucid magical modest musing mystifying naughty nervous nice nifty nostalgic "
    "objective optimistic peaceful pedantic pensive practical priceless quirky quizzical recursing "
    "relaxed reverent romantic sad serene sharp silly sleepy stoic strange stupefied suspicious sweet "
    "tender thirsty trusting unruffled upbeat vibrant vigilant vigorous wizardly wonderful xenodochial "
    "youthful zealous zen"
).split()
_SCIENTISTS = (
    "agnesi albattani allen almeida archimedes ardinghelli aryabhata austin babbage banach bardeen "
    "bartik bassi bell benz bhabha bhaskara blackwell bohr booth borg bose boyd brahmagupta brattain "
    "brown buck burnell cannon carson cartwright cerf chandrasekhar chaplygin chatelet chatterjee "
    "chebyshev clarke cohen colden cori cray curie darwin davinci dewdney dhawan diffie dijkstra dirac "
    "driscoll dubinsky easley edison einstein elbakyan elgamal elion ellis engelbart euclid euler "
    "faraday feistel fermat fermi feynman franklin gagarin galileo galois ganguly gates gauss germain "
    "goldberg goldstine goldwasser golick goodall gould greider grothendieck haibt hamilton hawking "
    "heisenberg hellman hermann herschel hertz heyrovsky hodgkin hofstadter hoover hopper hugle hypatia "
    "jackson jang jennings jepsen johnson joliot jones kalam kapitsa kare keldysh keller kepler khayyam "
    "khorana kilby kirch knuth kowalevski lalande lamarr lamport leakey leavitt lederberg lehmann lewin "
    "lichterman liskov lovelace lumiere mahavira margulis matsumoto maxwell mayer mccarthy mcclintock "
    "mclaren mclean mcnulty meitner mendel mendeleev meninsky merkle mestorf mirzakhani moore morse "
    "moser murdock napier nash neumann newton nightingale nobel noether northcutt noyce panini pare "
    "pascal pasteur payne perlman pike poincare poitras proskuriakova ptolemy raman ramanujan ride "
    "ritchie robinson roentgen rosalind rubin saha sammet sanderson satoshi shamir shannon shaw shirley "
    "shockley shtern sinoussi snyder solomon spence stonebraker sutherland swanson swartz swirles "
    "taussig tesla tharp thompson torvalds tu turing varahamihira vaughan villani visvesvaraya volhard "
    "wescoff wilbur wiles williams williamson wilson wing wozniak wright wu yalow yonath zhukovsky"
).split()


def random_name() -> str:
    """A name for a container given none: an adjective and a scientist, as docker's."""
    import secrets

    return f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_SCIENTISTS)}"


def check_name(name: str) -> None:
    """Refuse a container name docker would refuse.

    Raises:
        SpecError: the name.
    """
    if not NAME.fullmatch(name):
        raise SpecError(
            f"invalid container name {name!r}: letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
