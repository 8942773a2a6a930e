"""Many containers at once: correctness and hygiene at scale, on asyncio and trio.

1000 containers at concurrency 64 must all succeed with exactly their own output and
leave no zombie, fd, mount or extra helper behind; and containers must keep starting
while other threads of the supervisor hammer the allocator and zlib (a fork of a
multi-threaded process could deadlock on a lock held at the instant of the clone: the
spawn helper is why it cannot happen). No test here asserts a duration: the only
timeouts are generous hang detectors.
"""

from __future__ import annotations

import os
import threading
import zlib

import anyio
import pytest

from supervisor import DEVNULL, open_container, run_container

from .test_api import _helper_pids, _zombie_children

pytestmark = [pytest.mark.anyio, pytest.mark.root, pytest.mark.slow]


def _mount_table() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(" ".join(line.split()[3:5]) for line in f)


async def test_a_thousand_containers_at_concurrency_64() -> None:
    await run_container(["true"])  # the helper and first-use allocations, before the baseline
    fds = set(os.listdir("/proc/self/fd"))
    mounts = _mount_table()
    helpers = _helper_pids()
    assert len(helpers) == 1
    total, concurrency = 1000, 64
    outputs: dict[int, bytes] = {}
    next_index = 0
    most_helpers = 0

    async def worker() -> None:
        nonlocal next_index, most_helpers
        while next_index < total:
            i = next_index
            next_index += 1
            r = await run_container(["echo", str(i)], stderr=DEVNULL)
            outputs[i] = r.stdout
            if i % 100 == 0:
                most_helpers = max(most_helpers, len(_helper_pids()))

    with anyio.fail_after(600):  # a hang detector, not a speed requirement
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
    assert outputs == {i: f"{i}\n".encode() for i in range(total)}  # nobody's output crossed
    assert most_helpers == 1, "a second spawn helper appeared"
    assert _helper_pids() == helpers
    assert not _zombie_children()
    assert set(os.listdir("/proc/self/fd")) == fds, "fds grew"
    assert _mount_table() == mounts, "mounts grew"


def _churn(stop: threading.Event, counter: list[int]) -> None:
    blob = os.urandom(1 << 16)
    while not stop.is_set():
        packed = zlib.compress(blob * 4, 6)  # releases the GIL while compressing
        assert zlib.decompress(packed) == blob * 4
        junk = [bytearray(4096) for _ in range(64)]  # malloc/free traffic
        del junk
        counter[0] += 1


async def test_spawning_while_threads_churn_the_allocator_and_zlib() -> None:
    stop = threading.Event()
    counter = [0]
    threads = [threading.Thread(target=_churn, args=(stop, counter), daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        done = 0
        with anyio.fail_after(600):  # a hang detector only

            async def worker(n: int) -> None:
                nonlocal done
                for _ in range(n):
                    r = await run_container(["sh", "-c", "echo ok"])
                    assert r.stdout == b"ok\n"
                    done += 1

            async with anyio.create_task_group() as tg:
                for _ in range(16):
                    tg.start_soon(worker, 20)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert done == 320
    assert counter[0] > 0, "the churning threads never ran"
    assert not _zombie_children()


async def test_a_running_container_costs_one_fd_and_no_thread() -> None:
    # A service with the common 1024-fd limit must be able to hold hundreds of
    # containers: without pipes, a running container keeps only its pidfd.
    await run_container(["true"])
    fds = len(os.listdir("/proc/self/fd"))
    threads = threading.active_count()
    tasks = len(os.listdir("/proc/self/task"))
    containers = []
    try:
        for _ in range(50):
            containers.append(
                await open_container(["sleep", "60"], stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL)
            )
        assert len(os.listdir("/proc/self/fd")) - fds == 50
        assert threading.active_count() == threads
        assert len(os.listdir("/proc/self/task")) == tasks
    finally:
        async with anyio.create_task_group() as tg:
            for c in containers:
                tg.start_soon(c.aclose)
    assert all(c.returncode == 137 for c in containers)


async def test_the_spawn_helper_stays_small() -> None:
    # Every clone copies the helper's page tables and every exec tears them down, so
    # the helper must not grow what it maps: no pickle, array, select or math
    # extension (it uses marshal and the C cores of socket and signal), no thread.
    # (A size in bytes would depend on the Python build; what is mapped does not.)
    from supervisor import spawn

    await run_container(["true"])  # the helper of docker's default confinement
    await run_container(["true"], privileged=True)  # the plain helper
    helpers = [h.pid for h in spawn.helpers()]
    assert len(helpers) == 2
    for helper in helpers:
        with open(f"/proc/{helper}/maps") as f:
            mapped = {line.split()[-1].rsplit("/", 1)[-1].split(".", 1)[0] for line in f if "/" in line}
        assert not mapped & {"_pickle", "array", "select", "math", "_json", "_hashlib", "_ssl"}
        assert {"_ctypes", "_socket"} <= mapped  # what it does need, to make sure we look right
        assert os.listdir(f"/proc/{helper}/task") == [str(helper)]
