"""What ``stop``, ``kill``, ``wait``, ``rm`` and ``exec`` do to a registered container,
from its record (``records.py``), without asking its owner.

A signal goes through a pidfd proven to be the recorded PID 1 (``Entry.open_pidfd``),
never to a bare pid. The owner (the daemon, or the CLI running it in the foreground)
sees its PID 1 exit, records the exit and tears it down; these functions wait for
that by watching the owner's lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import time
from typing import TYPE_CHECKING

from . import records
from .errors import ContainerNotRunningError, MydockerError
from .process import catches

if TYPE_CHECKING:
    from .exec import Target

#: how long ``stop``/``rm -f`` wait for the owner to record an exit, after PID 1 died
_RECORD_TIMEOUT = 30.0


def parse_signal(text: str) -> int:
    """A signal by name (``KILL``, ``SIGKILL``, any case) or number.

    Raises:
        MydockerError: no such signal.
    """
    t = text.strip().upper()
    if t.isdigit():
        number = int(t)
        if 0 < number < signal.NSIG:
            return number
    else:
        name = t if t.startswith("SIG") else f"SIG{t}"
        found = getattr(signal.Signals, name, None) if name.isidentifier() else None
        if isinstance(found, signal.Signals):
            return int(found)
    raise MydockerError(f"invalid signal: {text!r}")


def send_signal(entry: records.Entry, sig: int) -> None:
    """Send ``sig`` to the container's PID 1.

    Raises:
        ContainerNotRunningError: it does not run.
    """
    pidfd = entry.open_pidfd()
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        raise ContainerNotRunningError(f"container {entry.name or entry.short_id} is not running") from None
    finally:
        os.close(pidfd)


def wait_recorded(entry: records.Entry, timeout: float = _RECORD_TIMEOUT) -> bool:
    """Wait until the container's owner has recorded its exit (let go of its lock);
    whether it did within ``timeout``."""
    deadline = time.monotonic() + timeout
    while records.is_owned(entry.dir):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def stop(entry: records.Entry, timeout: float) -> None:
    """``docker stop``: SIGTERM, then SIGKILL after ``timeout`` seconds (at once if
    its PID 1 has no SIGTERM handler: a namespace's init would never see it), then
    wait until its exit is recorded. A container that does not run is left as is."""
    try:
        pidfd = entry.open_pidfd()
    except ContainerNotRunningError:
        wait_recorded(entry)
        return
    try:
        pid = int(entry.state["Pid"])
        with contextlib.suppress(ProcessLookupError):
            if timeout > 0 and catches(pid, signal.SIGTERM):
                signal.pidfd_send_signal(pidfd, signal.SIGTERM)
                select.select([pidfd], [], [], timeout)
            if not select.select([pidfd], [], [], 0)[0]:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        select.select([pidfd], [], [], _RECORD_TIMEOUT)
    finally:
        os.close(pidfd)
    wait_recorded(entry)


def wait_exit(entry: records.Entry) -> int:
    """``docker wait``: block until the container exits; its exit status.

    While waiting, a shared lock on its ``wait`` file asks an owner that removes it
    on exit (``--rm``) to leave its final state readable a moment
    (``records.Record.exited``).

    Raises:
        MydockerError: it was removed before its exit status could be read.
    """
    try:
        dfd = os.open(entry.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise records.NoSuchContainerError(f"no such container: {entry.name or entry.id}") from None
    try:
        with contextlib.suppress(OSError):
            waiter = os.open(records.WAIT, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            fcntl.flock(waiter, fcntl.LOCK_SH)
        while True:
            found = _final_state(dfd)
            if found is not None:
                return found
            if not records.is_owned(entry.dir):
                found = _final_state(dfd)
                return found if found is not None else 137  # its owner died with it
            time.sleep(0.05)
    finally:
        os.close(dfd)  # and the waiter's lock with it, if taken (closed with the process)


def _final_state(dfd: int) -> int | None:
    try:
        fd = os.open(records.STATE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        return None
    try:
        with open(fd, "rb") as f:
            data = json.load(f)
    except ValueError:
        return None
    if isinstance(data, dict) and data.get("Status") == "exited":
        return int(data.get("ExitCode", 0))
    return None


def remove_ref(sdir: str, ref: str, force: bool) -> None:
    """``docker rm [-f] REF``; a container whose record cannot be read is removed too,
    unless its owner still holds it (``records.remove_broken``).

    Raises:
        as ``remove``, and ``NoSuchContainerError`` / ``AmbiguousContainerError``.
    """
    try:
        entry = records.find(sdir, ref)
    except records.StateFileError:
        records.remove_broken(sdir, records.find_id(sdir, ref))
        return
    remove(sdir, entry, force)


def remove(sdir: str, entry: records.Entry, force: bool) -> None:
    """``docker rm [-f]``: remove a container that does not run (``force``: kill it
    first).

    Raises:
        ContainerConflictError: it runs and ``force`` is not given.
        NoSuchContainerError: it is gone already.
    """
    if force and entry.running:
        with contextlib.suppress(ContainerNotRunningError):
            send_signal(entry, signal.SIGKILL)
        wait_recorded(entry)
        if not os.path.exists(entry.dir):
            return  # removed by its owner (--rm, or a foreground run)
    records.remove(sdir, entry)


def exec_target(entry: records.Entry) -> Target:
    """What an exec into the running container needs (``exec.Target``); its pidfd is
    the caller's to close.

    Raises:
        ContainerNotRunningError: it does not run.
        StateFileError: its record cannot be read.
    """
    from .cgroups import JoinedCgroup
    from .exec import Target

    spec = entry.spec()
    identity = entry.identity()
    pidfd = entry.open_pidfd()
    try:
        dirs = entry.state.get("Cgroups") or []
        cgroup = JoinedCgroup(dirs) if dirs else None
    except BaseException:
        os.close(pidfd)
        raise
    return Target(spec, int(entry.state["Pid"]), pidfd, cgroup, identity)


class Sample:
    """What a running container uses at one moment, from its cgroups (``stats``):
    CPU time so far (µs), memory in use and its limit (bytes), processes; None for
    what this host's cgroups do not say."""

    def __init__(self, dirs: list[str]) -> None:
        from .usage import read_cpu

        self.taken = time.monotonic()
        v2 = [d for d in dirs if os.path.exists(os.path.join(d, "cgroup.events"))]
        v1 = [d for d in dirs if d not in v2]
        self.cpu_usec: int | None = None
        for version, d in [(2, d) for d in v2] + [(1, d) for d in v1 if "cpuacct" in d]:
            times = read_cpu(_read, (version, d))
            if times is not None:
                self.cpu_usec = times[0]
                break
        self.memory: int | None = None
        self.memory_limit: int | None = None
        for d in v1:
            if self.memory is None:
                self.memory = _int(d, "memory.usage_in_bytes")
                limit = _int(d, "memory.limit_in_bytes")
                self.memory_limit = limit if limit is not None and limit < 1 << 62 else None
        for d in v2:
            if self.memory is None:
                self.memory = _int(d, "memory.current")
                self.memory_limit = _int(d, "memory.max")
        self.pids: int | None = None
        for d in v2 + v1:
            self.pids = _int(d, "pids.current")
            if self.pids is not None:
                break
        if self.pids is None and dirs:
            try:
                self.pids = len(_read(os.path.join(dirs[0], "cgroup.procs")).split())
            except OSError:
                pass


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _int(d: str, name: str) -> int | None:
    try:
        return int(_read(os.path.join(d, name)).strip())
    except (OSError, ValueError):
        return None  # "max", or not there


def sample(entry: records.Entry) -> Sample:
    """A ``Sample`` of a running container (empty when it has no cgroup)."""
    return Sample(list(entry.state.get("Cgroups") or []))
