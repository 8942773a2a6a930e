"""What a container used, and the verdict a judge reads: one implementation for the
report (``mydocker run --report``), ``CompletedContainer`` and ``inspect``.

Runs in the supervisor. The figures come from the container's cgroup, where the
kernel keeps them for every process of the container together, and from the
``waitid`` that reaps PID 1 where the cgroup has none:

- CPU time: ``cpu.stat`` of the container's cgroup v2 directory (``usage_usec``,
  ``user_usec``, ``system_usec``). The kernel keeps these in *every* cgroup2
  directory, with or without the cpu controller (cgroup core's base stats, since
  4.20): on a hybrid host the controller-less ``unified`` directory that every
  container has anyway is enough, and no v1 ``cpuacct`` hierarchy is needed (one
  would cost each container a directory, and a placement before its exec). On a
  host without cgroup2: ``cpuacct.usage_user`` / ``cpuacct.usage_sys`` of a v1
  ``cpuacct`` directory, made only for a ``cpu_time`` limit. Without either: PID 1's
  rusage, which counts the descendants it reaped.
- memory peak: ``memory.peak`` (cgroup v2 with the memory controller, Linux 5.19),
  else ``memory.max_usage_in_bytes`` (a v1 memory cgroup: a memory limit), else the
  largest resident set of PID 1 and the descendants it reaped (rusage
  ``ru_maxrss``): one process's peak, not the container's sum.
- wall time: from just after the clone to the reap, on the monotonic clock.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

#: the report's statuses (isolate's): what ended the container
OK, RE, SG, TO, ML, OL, XX = "OK", "RE", "SG", "TO", "ML", "OL", "XX"
STATUSES = (OK, RE, SG, TO, ML, OL, XX)

#: the limits that can strike, as the report's ``limit`` names them
CPU_TIME, WALL_TIME, MEMORY, OUTPUT = "cpu_time", "wall_time", "memory", "output"


class Counters(NamedTuple):
    """What the container's cgroup says at one moment (None: it does not say)."""

    cpu_usec: int | None = None
    user_usec: int | None = None
    system_usec: int | None = None
    memory_peak: int | None = None

    def merge(self, later: Counters) -> Counters:
        """``later``'s figures, where it has them (a directory already removed has
        none), and the larger of the two peaks."""
        peaks = [p for p in (self.memory_peak, later.memory_peak) if p is not None]
        return Counters(
            later.cpu_usec if later.cpu_usec is not None else self.cpu_usec,
            later.user_usec if later.user_usec is not None else self.user_usec,
            later.system_usec if later.system_usec is not None else self.system_usec,
            max(peaks) if peaks else None,
        )


def _keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def read_cpu(read: Callable[[str], str], cpu: tuple[int, str]) -> tuple[int, int, int] | None:
    """``(usage, user, system)`` in microseconds from a cgroup ``(version, dir)``:
    v2 ``cpu.stat``, v1 ``cpuacct.usage_user`` and ``cpuacct.usage_sys``. None when
    the files are gone or unreadable."""
    version, d = cpu
    try:
        if version == 2:
            stat = _keyed(read(posixpath.join(d, "cpu.stat")))
            return stat["usage_usec"], stat.get("user_usec", 0), stat.get("system_usec", 0)
        user = int(read(posixpath.join(d, "cpuacct.usage_user"))) // 1000
        system = int(read(posixpath.join(d, "cpuacct.usage_sys"))) // 1000
        return user + system, user, system
    except (OSError, ValueError, KeyError):
        return None


def read_memory_peak(read: Callable[[str], str], memory: tuple[int, str]) -> int | None:
    """The memory peak in bytes of a cgroup ``(version, dir)``, if the kernel keeps one."""
    version, d = memory
    try:
        return int(read(posixpath.join(d, "memory.peak" if version == 2 else "memory.max_usage_in_bytes")))
    except (OSError, ValueError):
        return None


def read_counters(
    read: Callable[[str], str], cpu: tuple[int, str] | None, memory: tuple[int, str] | None
) -> Counters:
    """Both, from the directories that have them."""
    times = read_cpu(read, cpu) if cpu is not None else None
    peak = read_memory_peak(read, memory) if memory is not None else None
    if times is None:
        return Counters(memory_peak=peak)
    return Counters(times[0], times[1], times[2], peak)


class Rusage(NamedTuple):
    """What ``waitid`` says of PID 1 and the descendants it reaped."""

    user: float
    system: float
    #: bytes
    maxrss: int


@dataclass(frozen=True)
class Usage:
    """What a container used (the report's figures; ``inspect``'s too).

    Attributes:
        cpu_time: seconds of CPU, user + system, every process of the container.
        cpu_user, cpu_system: its two parts.
        wall_time: seconds from the start to the end (to now while it runs).
        memory_peak: bytes: the cgroup's peak where the kernel keeps one, else the
            largest resident set seen; None when neither is known yet.
        oom_killed: the memory limit's OOM killer struck.
    """

    cpu_time: float
    cpu_user: float
    cpu_system: float
    wall_time: float
    memory_peak: int | None
    oom_killed: bool

    @classmethod
    def of(
        cls, counters: Counters | None, rusage: Rusage | None, wall_time: float, oom_killed: bool
    ) -> Usage:
        """From the cgroup's counters where they are, else PID 1's rusage."""
        c = counters or Counters()
        if c.cpu_usec is not None:
            total, user, system = c.cpu_usec / 1e6, (c.user_usec or 0) / 1e6, (c.system_usec or 0) / 1e6
        elif rusage is not None:
            total, user, system = rusage.user + rusage.system, rusage.user, rusage.system
        else:
            total = user = system = 0.0
        peak = c.memory_peak
        if peak is None and rusage is not None:
            peak = rusage.maxrss
        return cls(total, user, system, wall_time, peak, oom_killed)


@dataclass(frozen=True)
class Verdict:
    """How a container ended, as a judge says it.

    Attributes:
        status: ``OK``; ``RE`` a non-zero exit; ``SG`` killed by a signal that no
            limit sent; ``TO`` a CPU or wall time limit; ``ML`` the memory limit's
            OOM killer; ``OL`` the output limit; ``XX`` mydocker's own failure.
        limit: the limit that struck (``cpu_time``, ``wall_time``, ``memory``,
            ``output``), or None.
        message: one line for a person.
    """

    status: str
    limit: str | None
    message: str


def _seconds(x: float) -> str:
    return f"{x:g} s"


def _signal_name(sig: int) -> str:
    import signal as _signal

    try:
        return _signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def judge(
    returncode: int,
    sig: int | None,
    usage: Usage,
    *,
    cpu_time: float | None = None,
    wall_time: float | None = None,
    struck: str | None = None,
) -> Verdict:
    """The verdict on a container that ran (isolate's rules).

    ``struck``: the limit mydocker killed it for (``enforce.py``). A time limit also
    counts when the container ended on its own but used more than its budget (a
    check comes every few milliseconds, not at every instant). The first that
    applies: the limit that struck, the memory limit's OOM killer, a time used up,
    a signal, a non-zero status.
    """
    if struck is None:
        if usage.oom_killed:
            struck = MEMORY
        elif cpu_time is not None and usage.cpu_time > cpu_time:
            struck = CPU_TIME
        elif wall_time is not None and usage.wall_time > wall_time:
            struck = WALL_TIME
    if struck == CPU_TIME:
        used = f"{usage.cpu_time:.3f} s used"
        return Verdict(TO, struck, f"CPU time limit of {_seconds(cpu_time or 0)} exceeded ({used})")
    if struck == WALL_TIME:
        used = f"{usage.wall_time:.3f} s"
        return Verdict(TO, struck, f"wall time limit of {_seconds(wall_time or 0)} exceeded ({used})")
    if struck == OUTPUT:
        return Verdict(OL, struck, "output limit exceeded")
    if struck == MEMORY:
        return Verdict(ML, struck, "memory limit exceeded (killed by the OOM killer)")
    if sig is not None:
        return Verdict(SG, None, f"caught fatal signal {sig} ({_signal_name(sig)})")
    if returncode:
        return Verdict(RE, None, f"exited with error status {returncode}")
    return Verdict(OK, None, "OK")


def report(returncode: int | None, sig: int | None, usage: Usage | None, verdict: Verdict) -> dict[str, Any]:
    """The report's JSON object (``mydocker run --report``), fields in a fixed order."""
    figures = asdict(usage) if usage is not None else asdict(Usage(0.0, 0.0, 0.0, 0.0, None, False))
    out: dict[str, Any] = {"status": verdict.status, "exit_code": returncode, "signal": sig}
    out.update((k, round(v, 6) if isinstance(v, float) else v) for k, v in figures.items())
    out.update(limit=verdict.limit, message=verdict.message)
    return out


def failure_report(exit_code: int, message: str) -> dict[str, Any]:
    """The report of a container that mydocker could not run (``XX``)."""
    return report(exit_code, None, None, Verdict(XX, None, message))


class ReportFile:
    """The report's file, opened (and so checked) before the container starts and
    written once when it is gone.

    Raises (when made):
        SpecError: the file cannot be opened for writing (one line: why).
    """

    def __init__(self, path: str) -> None:
        from .errors import SpecError

        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise SpecError(f"cannot write the report {path}: {e.strerror or e}") from None
        self.path = path

    def write(self, data: dict[str, Any]) -> None:
        """Replace the file's content by ``data`` as one line of JSON, and close it."""
        import json

        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            os.ftruncate(fd, 0)
            view = memoryview((json.dumps(data) + "\n").encode())
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close without writing (the file stays as it was, or empty if it was new)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
