"""exec and files in a running container (the library), on both anyio backends.

Real containers with the busybox root filesystem; every escape attempt the issue
names is tried: an absolute symlink, a ``..`` chain, a symlink swapped in while a
copy runs. The conftest leak check runs around each test.
"""

from __future__ import annotations

import io
import os
import tarfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from supervisor import (
    DEVNULL,
    CommandNotFoundError,
    ContainerNotRunningError,
    ContainerPathError,
    open_container,
)

from . import busybox as bb

pytestmark = [pytest.mark.root, pytest.mark.anyio]


@pytest.fixture(scope="session")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bb.build(tmp_path_factory)[0]


@pytest.fixture
async def box(busybox: Path, tmp_path: Path) -> AsyncIterator[object]:
    """A long-lived container: a sandbox to exec into."""
    async with await open_container(
        ["sleep", "600"],
        stdin=DEVNULL,
        stdout=DEVNULL,
        stderr=DEVNULL,
        rootfs=str(busybox),
        state_dir=str(tmp_path / "state"),
        hostname="sandbox",
        limits={"pids": 50},
        grace=0,
    ) as c:
        yield c


async def test_exec_runs_inside_the_container(anyio_backend: str, box: object) -> None:
    c = box  # type: ignore[assignment]
    r = await c.exec(  # type: ignore[attr-defined]
        ["sh", "-c", "echo $$; hostname; cat /proc/1/cmdline; echo; ls /proc/self/fd; cat /proc/self/cgroup"],
        cwd="/tmp",
    )
    lines = r.stdout.decode().splitlines()
    assert r.returncode == 0
    assert lines[0] != "1" and lines[1] == "sandbox" and lines[2].startswith("sleep")
    fds = lines[3:7]
    assert fds[:3] == ["0", "1", "2"] and len([f for f in lines[3:] if f.isdigit()]) <= 4  # 0-2 and ls's own
    caps = await c.exec(["grep", "-E", "^(CapEff|Seccomp):", "/proc/self/status"])  # type: ignore[attr-defined]
    assert caps.stdout.split() == [b"CapEff:", b"00000000a80425fb", b"Seccomp:", b"2"]


async def test_exec_input_env_cwd_user_and_status(anyio_backend: str, box: object) -> None:
    c = box  # type: ignore[assignment]
    r = await c.exec(
        ["sh", "-c", 'read x; echo "$x $GREETING $(pwd) $(id -u)"; exit 3'],
        input=b"hi\n",
        env={"GREETING": "hello"},
        cwd="/etc",
        user="nobody",
    )  # type: ignore[attr-defined]
    assert (r.returncode, r.stdout) == (3, b"hi hello /etc 65534\n")
    with pytest.raises(CommandNotFoundError):
        await c.exec(["/no/such/thing"])  # type: ignore[attr-defined]


async def test_exec_shares_the_containers_limits(anyio_backend: str, box: object) -> None:
    # pids.max 50 counts the exec'd processes with the container's: a fork bomb in an
    # exec stops at the container's limit
    c = box  # type: ignore[assignment]
    script = "for i in $(seq 80); do sleep 2 & done"
    r = await c.exec(["sh", "-c", script])  # type: ignore[attr-defined]
    # the 50 pids the container may have were used up before the 80th: the exec is
    # counted with the container (on the host there is no such limit)
    assert b"can't fork" in r.stderr, r


async def test_many_execs_at_once(anyio_backend: str, box: object) -> None:
    c = box  # type: ignore[assignment]
    results: list[bytes] = []

    async def one(i: int) -> None:
        r = await c.exec(["sh", "-c", f"echo {i}"])  # type: ignore[attr-defined]
        results.append(r.stdout)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    assert sorted(results) == sorted(f"{i}\n".encode() for i in range(20))


async def test_cancelling_an_exec_kills_it_not_the_container(anyio_backend: str, box: object) -> None:
    c = box  # type: ignore[assignment]
    with anyio.move_on_after(0.5) as scope:
        await c.exec(["sleep", "60"])  # type: ignore[attr-defined]
    assert scope.cancelled_caught
    r = await c.exec(["pidof", "sleep"])  # type: ignore[attr-defined]
    assert r.stdout.strip() == b"1"  # only PID 1's sleep is left
    assert c.returncode is None  # type: ignore[attr-defined]


async def test_open_exec_streams_and_signals(anyio_backend: str, box: object) -> None:
    c = box  # type: ignore[assignment]
    async with await c.open_exec(
        ["sh", "-c", "trap 'echo term; exit 5' TERM; echo ready; while :; do sleep 0.1; done"]
    ) as p:  # type: ignore[attr-defined]
        assert await p.stdout.receive() == b"ready\n"
        p.terminate()
        assert await p.wait() == 5
        assert await p.stdout.receive() == b"term\n"


async def test_exec_with_a_tty(anyio_backend: str, box: object) -> None:
    c = box  # type: ignore[assignment]
    r = await c.exec(["sh", "-c", "tty; [ -t 0 ] && echo isatty"], tty=True)  # type: ignore[attr-defined]
    out = r.stdout.replace(b"\r", b"").split()
    assert out[0].startswith(b"/dev/pts/") and out[1] == b"isatty"


async def test_the_container_ending_ends_its_execs(anyio_backend: str, busybox: Path, tmp_path: Path) -> None:
    async with await open_container(
        ["sleep", "600"], stdin=DEVNULL, rootfs=str(busybox), state_dir=str(tmp_path / "s"), grace=0
    ) as c:
        p = await c.open_exec(["sleep", "600"])
        c.kill()
        await c.wait()
        with anyio.fail_after(30):  # a hang detector
            assert await p.wait() == 137
        await p.aclose()
        with pytest.raises(ContainerNotRunningError):
            await c.exec(["true"])


# ---------------------------------------------------------------- files


async def test_write_read_and_archives_round_trip(anyio_backend: str, box: object) -> None:
    c = box  # type: ignore[assignment]
    await c.write_file("/tmp/a", b"hello\n", mode=0o600)  # type: ignore[attr-defined]
    assert await c.read_file("/tmp/a") == b"hello\n"  # type: ignore[attr-defined]
    assert (await c.exec(["stat", "-c", "%a %u", "/tmp/a"])).stdout == b"600 0\n"  # type: ignore[attr-defined]
    big = os.urandom(3 << 20)
    await c.write_file("/tmp/big", big)  # type: ignore[attr-defined]
    assert await c.read_file("/tmp/big") == big  # type: ignore[attr-defined]
    await c.exec(["sh", "-c", "mkdir -p /srv/t/sub && echo 1 > /srv/t/sub/f && ln -s /etc/passwd /srv/t/l"])  # type: ignore[attr-defined]
    data = b"".join([chunk async for chunk in c.get_archive("/srv/t")])  # type: ignore[attr-defined]
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = sorted(tf.getnames())
        assert names == ["t", "t/l", "t/sub", "t/sub/f"]
        assert tf.getmember("t/l").issym() and tf.getmember("t/l").linkname == "/etc/passwd"
    inner = b"".join([chunk async for chunk in c.get_archive("/srv/t/.")])  # type: ignore[attr-defined]
    with tarfile.open(fileobj=io.BytesIO(inner)) as tf:
        assert sorted(tf.getnames()) == ["l", "sub", "sub/f"]
    await c.put_archive("/tmp", data)  # type: ignore[attr-defined]
    assert (await c.exec(["cat", "/tmp/t/sub/f"])).stdout == b"1\n"  # type: ignore[attr-defined]


async def test_files_never_leave_the_container(anyio_backend: str, box: object, tmp_path: Path) -> None:
    c = box  # type: ignore[assignment]
    secret = Path(f"/tmp/mydocker-host-secret-{uuid.uuid4().hex}")
    secret.write_text("host secret\n")
    try:
        # an absolute symlink, and a .. chain, planted by the container
        script = f"ln -s {secret} /tmp/abs; ln -s ../../../../../../../../{secret} /tmp/up; mkdir /tmp/dir"
        await c.exec(["sh", "-c", script])  # type: ignore[attr-defined]
        for path in ("/tmp/abs", "/tmp/up", f"/../../..{secret}"):
            with pytest.raises(ContainerPathError):
                await c.read_file(path)  # type: ignore[attr-defined]
        # writing through them lands inside the container, never on the host
        await c.write_file("/tmp/abs", b"written\n")  # type: ignore[attr-defined]
        assert secret.read_text() == "host secret\n"
        inside = await c.exec(["cat", str(secret)])  # type: ignore[attr-defined]
        assert inside.stdout == b"written\n"  # the symlink's target, in the container's own root
        archive = b"".join([ch async for ch in c.get_archive("/tmp")])  # type: ignore[attr-defined]
        assert b"host secret" not in archive
        with pytest.raises(ContainerPathError):
            await c.put_archive("/tmp/nosuchdir", b"")  # type: ignore[attr-defined]
    finally:
        secret.unlink()


async def test_a_symlink_swapped_in_during_a_copy_is_not_followed(anyio_backend: str, box: object) -> None:
    # docker cp's CVE-2018-15664: the container swaps a directory and a symlink to /
    # while the copy walks the tree. Whatever wins each race, the archive holds only
    # the container's files: never the host's.
    c = box  # type: ignore[assignment]
    marker = f"/tmp/mydocker-host-only-{uuid.uuid4().hex}"
    Path(marker).write_text("host only\n")
    try:
        setup = "mkdir -p /w/d && i=0; while [ $i -lt 50 ]; do echo x > /w/d/f$i; i=$((i+1)); done"
        await c.exec(["sh", "-c", setup])  # type: ignore[attr-defined]
        swapper = await c.open_exec(  # type: ignore[attr-defined]
            ["sh", "-c", "while :; do mv /w/d /w/real; ln -s /tmp /w/d; rm /w/d; mv /w/real /w/d; done"],
            stdout=DEVNULL,
            stderr=DEVNULL,
        )
        try:
            for _ in range(20):
                try:
                    data = b"".join([ch async for ch in c.get_archive("/w")])  # type: ignore[attr-defined]
                except ContainerPathError:
                    continue
                assert b"host only" not in data
        finally:
            await swapper.aclose()
    finally:
        os.unlink(marker)


async def test_a_hostile_archive_is_refused(anyio_backend: str, box: object) -> None:
    c = box  # type: ignore[assignment]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("../../escape")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    from supervisor.images import UnsafeArchiveError

    with pytest.raises(UnsafeArchiveError):
        await c.put_archive("/tmp", buf.getvalue())  # type: ignore[attr-defined]
