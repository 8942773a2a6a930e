"""daemon/pumps.py: one task reading many streams and watching many pidfds, with
real pipes and real child processes (no root needed), on both event loops."""

from __future__ import annotations

import os
import subprocess

import anyio
import pytest

from supervisor.daemon.pumps import CHUNK, Pumps

pytestmark = pytest.mark.anyio


def _pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    os.set_blocking(w, True)
    return r, w


async def test_many_streams_each_whole_and_in_order(anyio_backend: str) -> None:
    got: dict[tuple[str, str], bytearray] = {}
    pumps = Pumps(
        lambda cid, name, data: got.setdefault((cid, name), bytearray()).extend(data), lambda cid: None
    )
    pipes = {}
    for cid in ("a", "b", "c"):
        for name in ("stdout", "stderr"):
            r, w = _pipe()
            pipes[cid, name] = (r, w)
            pumps.add(cid, name, r)
    payload = {key: (f"{key[0]}-{key[1]}-".encode() * 50_000) for key in pipes}  # ~0.6 MB: many chunks

    def write_all() -> None:
        # round robin, so that every stream is written while the others fill up
        views = {key: memoryview(data) for key, data in payload.items()}
        while views:
            for key in list(views):
                n = os.write(pipes[key][1], views[key][:CHUNK])
                views[key] = views[key][n:]
                if not views[key]:
                    os.close(pipes[key][1])
                    del views[key]

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pumps.run)
            await anyio.to_thread.run_sync(write_all)
            with anyio.fail_after(30):
                while any(pumps.open_streams(cid) for cid in ("a", "b", "c")):
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    finally:
        pumps.close()
        for r, _w in pipes.values():
            os.close(r)
    assert {key: bytes(data) for key, data in got.items()} == payload


async def test_an_exit_is_told_once_and_forget_stops_watching(anyio_backend: str) -> None:
    exits: list[str] = []
    pumps = Pumps(lambda cid, name, data: None, exits.append)
    quick = subprocess.Popen(["true"])
    slow = subprocess.Popen(["sleep", "30"])
    quick_fd, slow_fd = os.pidfd_open(quick.pid), os.pidfd_open(slow.pid)
    r, w = _pipe()
    try:
        pumps.watch_exit("quick", quick_fd)
        pumps.watch_exit("slow", slow_fd)
        pumps.add("slow", "stdout", r)
        async with anyio.create_task_group() as tg:
            tg.start_soon(pumps.run)
            with anyio.fail_after(30):
                while not exits:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.1)  # a readable pidfd is not told twice
            assert exits == ["quick"]
            pumps.forget("slow")
            assert pumps.open_streams("slow") == 0
            slow.kill()
            slow.wait()
            os.write(w, b"after forget")
            await anyio.sleep(0.1)
            assert exits == ["quick"]  # nothing is watched for "slow" any more
            tg.cancel_scope.cancel()
    finally:
        pumps.close()
        for fd in (quick_fd, slow_fd, r, w):
            os.close(fd)
        quick.wait()
        if slow.poll() is None:
            slow.kill()
            slow.wait()
