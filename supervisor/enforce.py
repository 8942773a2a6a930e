"""Limits the supervisor enforces itself: CPU time, wall time, captured output.

Runs in the supervisor's event loop. No cgroup controller caps a container's total
CPU time, and ``RLIMIT_CPU`` is per process (a fork bomb of busy children would get
the budget once per child). So the supervisor reads the cgroup's own counter
(``Cgroup.cpu_usec``, ``usage.py`` says which file) and kills the whole container
(``Container.kill``: SIGKILL to PID 1 and ``cgroup.kill``) when the budget is gone.

One timer per container, all of an event loop's in one heap served by one task (a
"system" task, started on first use and cancelled with the loop, as the spawn
helper's closer is): no thread, and no task per container. A container costs a heap
entry when it starts; the task wakes for it only when its time comes, or when it is
due before every other.

The timer is adaptive. A container with ``r`` seconds of budget left cannot use it
up in less than ``r / n`` seconds on ``n`` CPUs, so that is when it is checked next:
a busy loop with a 1 s budget on 2 CPUs is checked ~10 times (more on a loaded
machine, where it runs slower), a sleeper every half second, a short run never; a
check reads one file (~20 us). Near the end the checks come every ``MIN_INTERVAL``,
which bounds how far a container can run past its budget (``MIN_INTERVAL`` times
its CPUs, plus the event loop's own lateness); a container that ends on its own
past its budget is still judged ``TO`` (``usage.judge``). Registering a container
and closing its watch cost ~5 us (``bench/judge.py``).
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
from typing import Any, Protocol

import anyio
import anyio.abc
from anyio.lowlevel import RunVar

from .cgroups import Cgroup
from .spec import ContainerSpec
from .usage import CPU_TIME, OUTPUT, WALL_TIME


class Container(Protocol):
    """What the limits need of a ``container.Container``."""

    spec: ContainerSpec
    cgroup: Cgroup | None
    #: the limit that struck (set here), or None
    struck: str | None

    def kill(self) -> None:
        """Kill every process of the container."""

    def exited(self) -> bool:
        """Whether PID 1 has exited."""


#: the shortest time between two checks of one container's CPU time (seconds)
MIN_INTERVAL = 0.005
#: how soon to look again when the counter could not be read (a cgroup being made)
RETRY_INTERVAL = 0.05


def container_cpus(container: Container) -> int:
    """How many CPUs the container's processes can run on at once: this process's
    affinity (which the container inherits), within its cpuset and CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        cpus = os.cpu_count() or 1
    limits = container.spec.limits
    if limits.cpuset_cpus is not None:
        cpus = min(cpus, len(limits.cpuset_cpus.split(",")))
    if limits.cpus is not None:
        cpus = min(cpus, math.ceil(limits.cpus))
    return max(cpus, 1)


class Watch:
    """One container's CPU and wall time limits, checked by its event loop's timers."""

    __slots__ = ("_cpu_budget", "_cpus", "_deadline", "container")

    def __init__(self, container: Container, now: float) -> None:
        limits = container.spec.limits
        self.container: Container | None = container
        self._deadline = now + limits.wall_time if limits.wall_time is not None else math.inf
        self._cpu_budget = round(limits.cpu_time * 1e6) if limits.cpu_time is not None else None
        self._cpus = container_cpus(container)

    def first(self, now: float) -> float:
        """When to look first: as soon as the budget could be gone, or the deadline."""
        if self._cpu_budget is None:
            return self._deadline
        return min(now + max(self._cpu_budget / 1e6 / self._cpus, MIN_INTERVAL), self._deadline)

    def check(self, now: float) -> float | None:
        """Kill the container if a limit is used up; else when to look again (None:
        no more, the container is gone)."""
        c = self.container
        if c is None or c.exited():
            self.container = None
            return None
        if now >= self._deadline:
            self._strike(c, WALL_TIME)
            return None
        if self._cpu_budget is None:
            return self._deadline
        used = c.cgroup.cpu_usec() if c.cgroup is not None else None
        if used is None:
            return now + RETRY_INTERVAL
        left = self._cpu_budget - used
        if left <= 0:
            self._strike(c, CPU_TIME)
            return None
        return min(now + max(left / 1e6 / self._cpus, MIN_INTERVAL), self._deadline)

    def _strike(self, c: Container, limit: str) -> None:
        if c.struck is None:
            c.struck = limit
        c.kill()
        self.container = None

    def close(self) -> None:
        """The container is gone: stop watching it (its heap entry lapses)."""
        self.container = None


class Timers:
    """The timers of one event loop: a heap of ``(when, seq, Watch)`` and the task
    that serves it (``watch()`` makes it)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Watch]] = []
        self._seq = itertools.count()
        self._wake: anyio.Event | None = None
        self._next = math.inf
        self._task: Any = None

    def add(self, watch: Watch, when: float) -> None:
        """Look at ``watch`` at ``when`` (the event loop's clock)."""
        heapq.heappush(self._heap, (when, next(self._seq), watch))
        if when < self._next:
            self._next = when
            if self._wake is not None:
                self._wake.set()  # the task sleeps past it: wake it to sleep less
        if len(self._heap) > 256 and len(self._heap) > 4 * self.live():
            # lapsed entries of gone containers, far in the future: drop them
            self._heap = [e for e in self._heap if e[2].container is not None]
            heapq.heapify(self._heap)

    def live(self) -> int:
        """How many containers are watched."""
        return sum(e[2].container is not None for e in self._heap)

    async def run(self) -> None:
        """Serve the heap until the event loop ends (cancelled then)."""
        while True:
            now = anyio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, _, watch = heapq.heappop(self._heap)
                try:
                    when = watch.check(now)
                except Exception:  # noqa: BLE001 - one bad container must not end the timers
                    when = now + RETRY_INTERVAL if watch.container is not None else None
                if when is not None:
                    heapq.heappush(self._heap, (when, next(self._seq), watch))
            # Entries of containers gone before their time: dropped now, or the task
            # would wake for each of them (at c=64, one wake per short container).
            while self._heap and self._heap[0][2].container is None:
                heapq.heappop(self._heap)
            self._next = self._heap[0][0] if self._heap else math.inf
            self._wake = anyio.Event()
            with anyio.move_on_after(self._next - now):
                await self._wake.wait()


_timers_var: RunVar[Timers | None] = RunVar("mydocker_timers", default=None)


def _start(timers: Timers) -> None:
    """Run ``timers.run`` as a task of the event loop itself, cancelled when it ends."""
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio

        trio.lowlevel.spawn_system_task(timers.run, name="mydocker timers")
    else:
        timers._task = loop.create_task(timers.run(), name="mydocker timers")


def watch(container: Container) -> Watch:
    """Enforce the container's ``cpu_time`` and ``wall_time`` limits from now on;
    ``Watch.close`` when it is gone. Call it in the container's event loop."""
    timers = _timers_var.get()
    if timers is None:
        timers = Timers()
        _timers_var.set(timers)
        _start(timers)
    now = anyio.current_time()
    w = Watch(container, now)
    timers.add(w, w.first(now))
    return w


class OutputCap:
    """At most ``limit`` bytes of a container's captured output (stdout and stderr
    together): what is past it is dropped, and the container is killed."""

    def __init__(self, container: Container, limit: int) -> None:
        self.container = container
        self.left = limit

    @property
    def exceeded(self) -> bool:
        """Whether the container wrote more than the limit."""
        return self.container.struck == OUTPUT

    def take(self, data: bytes) -> bytes:
        """What of ``data`` may be kept; past the limit, kill the container."""
        if len(data) <= self.left:
            self.left -= len(data)
            return data
        kept, self.left = data[: self.left], 0
        if self.container.struck is None:
            self.container.struck = OUTPUT
        self.container.kill()
        return kept

    def wrap(self, stream: anyio.abc.ByteReceiveStream) -> anyio.abc.ByteReceiveStream:
        """``stream``, counted against this cap (ends once the cap is exceeded)."""
        return _Capped(stream, self)


class _Capped(anyio.abc.ByteReceiveStream):
    def __init__(self, stream: anyio.abc.ByteReceiveStream, cap: OutputCap) -> None:
        self._stream = stream
        self._cap = cap

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            if self._cap.exceeded:
                raise anyio.EndOfStream
            data = self._cap.take(await self._stream.receive(max_bytes))
            if data:
                return data

    async def aclose(self) -> None:
        await self._stream.aclose()
