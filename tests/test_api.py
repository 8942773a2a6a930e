"""The embeddable API: run_container / open_container on asyncio and trio.

Output and exit statuses, stdin streaming, typed start errors, the cancellation
contract (terminate, grace, kill, reap, before the cancellation propagates), use from
threads, and the spawn helper's lifetime (it ends with its event loop, and with a
supervisor that is SIGKILLed). Real namespaces, root only.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import pytest

from supervisor import (
    DEVNULL,
    PIPE,
    STDOUT,
    CommandNotExecutableError,
    CommandNotFoundError,
    CompletedContainer,
    ContainerFailedError,
    MydockerError,
    NotPermittedError,
    SpecError,
    StartError,
    open_container,
    run_container,
)

from .conftest import child_processes

pytestmark = [pytest.mark.anyio, pytest.mark.root]

REPO = Path(__file__).resolve().parent.parent


def _zombie_children() -> list[int]:
    me = str(os.getpid())
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] == "Z":
                out.append(int(pid))
    return out


def _processes_running(argv: list[str]) -> list[int]:
    """PIDs of live (non-zombie) processes whose command line is exactly argv."""
    want = "\0".join(argv).encode() + b"\0"
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read() != want:
                    continue
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(int(pid))
        except OSError:
            continue
    return out


def _helper_pids() -> list[int]:
    """Our spawn helpers: children of this process running helper_main, in our PID
    namespace (a container between clone and exec is a copy of the helper too, but
    already in a PID namespace of its own)."""
    me = str(os.getpid())
    ours = os.readlink("/proc/self/ns/pid")
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            if ppid == me and b"helper_main" in cmd and os.readlink(f"/proc/{pid}/ns/pid") == ours:
                out.append(int(pid))
        except OSError:
            continue
    return out


# ---------------------------------------------------------------- output, status


async def test_output_and_exit_status() -> None:
    r = await run_container(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert isinstance(r, CompletedContainer)
    assert (r.returncode, r.stdout, r.stderr, r.signal) == (3, b"out\n", b"err\n", None)
    assert r.args == ("sh", "-c", "echo out; echo err >&2; exit 3")
    assert len(r.id) == 64


async def test_check_raises_with_the_output() -> None:
    with pytest.raises(ContainerFailedError) as info:
        await run_container(["sh", "-c", "echo partial; exit 42"])
    assert info.value.returncode == 42
    assert info.value.stdout == b"partial\n"
    assert info.value.cmd == ("sh", "-c", "echo partial; exit 42")


async def test_success_and_binary_output_are_exact() -> None:
    data = bytes(range(256)) * 64
    r = await run_container(["cat"], input=data)
    assert r.returncode == 0 and r.stdout == data and r.stderr == b""


async def test_stderr_to_stdout_and_devnull() -> None:
    r = await run_container(["sh", "-c", "echo a; echo b >&2; echo c"], stderr=STDOUT)
    assert r.stdout == b"a\nb\nc\n" and r.stderr is None
    r = await run_container(["sh", "-c", "echo a; echo b >&2"], stdout=DEVNULL)
    assert r.stdout is None and r.stderr == b"b\n"


async def test_stdin_defaults_to_eof() -> None:
    r = await run_container(["cat"])
    assert r.stdout == b""


async def test_options_reach_the_container() -> None:
    r = await run_container(
        ["sh", "-c", 'echo $$; hostname; pwd; echo "$FOO"'],
        env={"FOO": "bar baz"},
        hostname="box",
        cwd="/tmp",
    )
    assert r.stdout.decode().splitlines() == ["1", "box", "/tmp", "bar baz"]


LOOPBACK_WORKS = (
    "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen();"
    " socket.create_connection(s.getsockname()).close(); print('lo up', flush=True)"
)


async def test_each_container_has_its_own_network_namespace_with_lo_up() -> None:
    # Several at once (the helper may hand out namespaces it made ahead of time):
    # all different, none the host's, each with a working loopback and nothing else.
    host = os.readlink("/proc/self/ns/net")
    containers = [
        await open_container([sys.executable, "-c", f"{LOOPBACK_WORKS}; import sys; sys.stdin.read()"])
        for _ in range(6)
    ]
    try:
        seen = {os.readlink(f"/proc/{c.pid}/ns/net") for c in containers}
        assert len(seen) == 6 and host not in seen
        with anyio.fail_after(60):  # a hang detector only
            for c in containers:
                assert c.stdout is not None and c.stdin is not None
                assert await c.stdout.receive() == b"lo up\n"
                await c.stdin.aclose()
                assert await c.wait() == 0
    finally:
        for c in containers:
            await c.aclose()
    r = await run_container(["cat", "/proc/net/dev"])
    assert [line.split(":")[0].strip() for line in r.stdout.decode().splitlines()[2:]] == ["lo"]


async def test_an_init_holds_nothing_of_the_helpers() -> None:
    # --init stays PID 1 and never execs: no fd of the helper's (its socket, the
    # supervisor's pidfd, network namespaces) may survive in it.
    for _ in range(3):
        r = await run_container(["ls", "/proc/1/fd"], init=True)
        assert r.stdout.split() == [b"0", b"1", b"2"]


async def test_network_host_shares_the_hosts_namespace() -> None:
    for _ in range(3):  # also after the helper has made namespaces ahead of time
        r = await run_container(["readlink", "/proc/self/ns/net"], namespaces={"pid", "mount", "uts", "ipc"})
        assert r.stdout.decode().strip() == os.readlink("/proc/self/ns/net")
        await run_container(["true"])


async def test_killed_by_signal_is_128_plus_n() -> None:
    async with await open_container(["sleep", "60"], stdin=DEVNULL) as c:
        assert c.returncode is None and c.pid > 0
        c.kill()
        assert await c.wait() == 128 + signal.SIGKILL
        assert c.signal == signal.SIGKILL
        c.kill()  # after the exit: a no-op, never a stray signal to a reused pid
        assert await c.wait() == 137


async def test_send_signal_reaches_a_handler() -> None:
    script = "trap 'echo usr1; exit 5' USR1; echo ready; sleep 60 & wait"
    async with await open_container(["sh", "-c", script], stdin=DEVNULL) as c:
        assert c.stdout is not None
        assert await c.stdout.receive() == b"ready\n"
        c.send_signal(signal.SIGUSR1)
        assert await c.wait() == 5
        assert await c.stdout.receive() == b"usr1\n"


# ---------------------------------------------------------------- stdin streaming


async def test_stdin_streaming_is_interactive() -> None:
    async with await open_container(["cat"]) as c:
        assert c.stdin is not None and c.stdout is not None
        for line in (b"one\n", b"two\n", b"three\n"):
            await c.stdin.send(line)
            got = b""
            while not got.endswith(b"\n"):
                got += await c.stdout.receive()
            assert got == line  # each answer comes back before the next question
        await c.stdin.aclose()
        with pytest.raises(anyio.EndOfStream):
            await c.stdout.receive()
        assert await c.wait() == 0


async def test_large_stdin_and_stdout_concurrently() -> None:
    data = os.urandom(1 << 20)
    async with await open_container(["cat"]) as c:
        assert c.stdin is not None and c.stdout is not None
        stdin, stdout = c.stdin, c.stdout
        received = bytearray()

        async def feed() -> None:
            await stdin.send(data)
            await stdin.aclose()

        async def drain() -> None:
            async for chunk in stdout:
                received.extend(chunk)

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            tg.start_soon(drain)
        assert bytes(received) == data
        assert await c.wait() == 0


# ---------------------------------------------------------------- start errors


async def test_command_not_found() -> None:
    with pytest.raises(CommandNotFoundError) as info:
        await run_container(["no-such-command-xyz"])
    assert info.value.exit_code == 127
    assert "no-such-command-xyz" in str(info.value)
    with pytest.raises(CommandNotFoundError):
        await run_container(["/no/such/path"])


async def test_command_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    for cmd in (str(script), str(tmp_path)):
        with pytest.raises(CommandNotExecutableError) as info:
            await run_container([cmd])
        assert info.value.exit_code == 126
        assert isinstance(info.value, StartError) and isinstance(info.value, MydockerError)


async def test_a_large_environment_and_one_too_large_for_exec() -> None:
    # A request bigger than a unix socket message goes to the spawn helper in a memfd;
    # what execve itself refuses (one string over 128 kB) is a clean E2BIG, and the
    # helper serves on either way.
    env = {"PATH": "/usr/bin:/bin", **{f"V{i}": str(i) * 100_000 for i in range(6)}}
    result = await run_container(["sh", "-c", 'echo "${#V0} ${#V5}"'], env=env)
    assert result.stdout == b"100000 100000\n"
    helpers = _helper_pids()
    with pytest.raises(StartError) as info:
        await run_container(["true"], env={"BIG": "x" * 300_000})
    assert info.value.errno == errno.E2BIG
    assert "Argument list too long" in str(info.value)
    assert (await run_container(["echo", "ok"])).stdout == b"ok\n"
    assert _helper_pids() == helpers


async def test_failing_init_step_is_a_start_error() -> None:
    with pytest.raises(StartError) as info:
        await run_container(["true"], cwd="/no/such/dir")
    assert "chdir" in info.value.step
    assert not isinstance(info.value, (CommandNotFoundError, CommandNotExecutableError))


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("echo hi", {}),
        ([], {}),
        ([""], {}),
        (["echo", "a\0b"], {}),
        (["true"], {"hostname": ""}),
        (["true"], {"hostname": "x" * 65}),
        (["true"], {"cwd": "relative/dir"}),
        (["true"], {"env": {"A=B": "c"}}),
        (["true"], {"namespaces": {"pid", "bogus"}}),
        (["true"], {"grace": -1}),
        (["cat"], {"input": b"x", "stdin": PIPE}),
    ],
)
async def test_bad_spec_is_a_spec_error_and_starts_nothing(
    command: object, options: dict[str, object]
) -> None:
    with pytest.raises(SpecError):
        await run_container(command, **options)  # type: ignore[arg-type]
    assert not _zombie_children()


def test_not_root_is_not_permitted(tmp_path: Path) -> None:
    # The package in a directory only root can read (as a fresh machine's /root), the
    # effective uid dropped after importing nothing but the package's front: the
    # check must come before anything is created on the host, and before any lazy
    # import (which that uid could not read: ModuleNotFoundError instead).
    private = tmp_path / "private"
    shutil.copytree(Path(REPO) / "supervisor", private / "supervisor")
    os.chmod(tmp_path, 0o700)
    code = textwrap.dedent(
        """
        import os, anyio, anyio._backends._asyncio
        from supervisor import run_container, NotPermittedError
        os.seteuid(65534)
        try:
            anyio.run(run_container, ["true"])
        except NotPermittedError as e:
            print("NotPermittedError", e.exit_code)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(private)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd="/", env=env, timeout=60)
    assert r.stdout.split() == [b"NotPermittedError", b"125"], r.stderr
    assert issubclass(NotPermittedError, MydockerError)


# ---------------------------------------------------------------- cancellation


async def test_timeout_kills_and_reaps() -> None:
    argv = ["sleep", "60.25"]  # an odd duration: findable on the host by its cmdline
    # PID 1 has no SIGTERM handler: killed at once, not after the grace period, which
    # is long here, and twice the hang detector (anything that waits it out fails).
    with anyio.move_on_after(30) as hang:
        with anyio.move_on_after(0.5) as scope:
            await run_container(argv, grace=60)
        await anyio.lowlevel.checkpoint()
    assert not hang.cancelled_caught, "the grace period was waited out"
    assert scope.cancelled_caught
    # Right away, not after some settling: the contract is "reaped before the
    # cancellation propagates".
    assert not _processes_running(argv)
    assert not _zombie_children()


async def test_fail_after_raises_timeout_and_reaps() -> None:
    argv = ["sleep", "60.5"]
    with anyio.move_on_after(30) as hang:  # a hang detector: half the grace period
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.5):
                async with await open_container(argv, stdin=DEVNULL, grace=60) as c:
                    await c.wait()
        await anyio.lowlevel.checkpoint()
    # PID 1 without a TERM handler: killed at once, not after the grace period
    assert not hang.cancelled_caught, "the grace period was waited out"
    assert c.returncode == 128 + signal.SIGKILL
    assert not _processes_running(argv)
    assert not _zombie_children()


async def test_asyncio_task_cancel_kills_and_reaps(anyio_backend: str) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("native asyncio task cancellation")
    argv = ["sleep", "60.75"]
    task = asyncio.ensure_future(run_container(argv))
    while not _processes_running(argv):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _processes_running(argv)
    assert not _zombie_children()


async def test_asyncio_task_cancel_while_the_helper_clones(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A native Task.cancel() gets through anyio's shield: landing after the helper
    # has cloned and before its reply (the child's only handle) was read, it must
    # still end with the child killed and reaped.
    if anyio_backend != "asyncio":
        pytest.skip("native asyncio task cancellation")
    from supervisor import spawn

    await run_container(["true"])  # the helper is up
    sent, await_reply = spawn.SpawnHelper._send, spawn.SpawnHelper._await_reply

    async def send_then_cancel(self: spawn.SpawnHelper, data: bytes, fdlist: list[int]) -> None:
        await sent(self, data, fdlist)
        # Until the helper has answered (it has cloned); a hang detector, not a time.
        assert select.select([self._sock], [], [], 60)[0]
        task.cancel()

    async def cancelled_first(self: spawn.SpawnHelper, waiter: object) -> object:
        await asyncio.sleep(0)  # where the cancellation lands
        return await await_reply(self, waiter)

    monkeypatch.setattr(spawn.SpawnHelper, "_send", send_then_cancel)
    monkeypatch.setattr(spawn.SpawnHelper, "_await_reply", cancelled_first)
    task = asyncio.ensure_future(run_container(["sleep", "60.25"]))
    with pytest.raises(asyncio.CancelledError):
        await task
    # The child is ours (CLONE_PARENT) from the clone on, exec'd or not yet.
    assert child_processes() == set(_helper_pids())


async def test_asyncio_task_cancelled_again_during_the_grace_period(
    anyio_backend: str, tmp_path: Path
) -> None:
    # A second native Task.cancel() (a second Ctrl-C, a timeout around a timeout)
    # lands while stop() waits out the grace period: the container is then killed at
    # once, and still reaped (and its cgroup removed) before the cancellation goes on.
    if anyio_backend != "asyncio":
        pytest.skip("native asyncio task cancellation")
    termed, ready = tmp_path / "termed", tmp_path / "ready"
    argv = ["sh", "-c", f"trap 'touch {termed}' TERM; touch {ready}; while :; do sleep 0.01; done"]
    task = asyncio.ensure_future(run_container(argv, grace=60))
    # The trap is set, and the start is over (a cancellation during the start kills
    # at once, with no grace period): the event loop has run since the exec.
    while not ready.exists():
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    task.cancel()
    while not termed.exists():  # SIGTERM reached the trap: the grace period runs
        await asyncio.sleep(0.01)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _processes_running(argv)
    assert child_processes() == set(_helper_pids())


async def test_cancel_lets_a_trapping_container_exit_within_grace() -> None:
    script = "trap 'exit 7' TERM; echo ready; sleep 60 & wait"
    with anyio.move_on_after(60) as outer:  # a hang detector only
        with anyio.CancelScope() as scope:
            async with await open_container(["sh", "-c", script], stdin=DEVNULL, grace=60) as c:
                assert c.stdout is not None
                assert await c.stdout.receive() == b"ready\n"
                assert c.handles(signal.SIGTERM)
                scope.cancel()
                await c.wait()
    assert not outer.cancelled_caught
    assert c.returncode == 7 and c.signal is None  # it exited on its own: no SIGKILL


async def test_cancel_kills_after_grace_when_term_is_not_enough() -> None:
    r, w = os.pipe()
    try:
        # catches TERM, says so, and carries on: SIGKILL must follow the grace period
        script = "trap 'echo got-term >&2' TERM; echo ready; while :; do sleep 0.05; done"
        with anyio.CancelScope() as scope:
            async with await open_container(["sh", "-c", script], stdin=DEVNULL, stderr=w, grace=0.5) as c:
                assert c.stdout is not None
                assert await c.stdout.receive() == b"ready\n"
                scope.cancel()
                await c.wait()
        assert c.returncode == 128 + signal.SIGKILL
        os.close(w)
        w = -1
        assert os.read(r, 100) == b"got-term\n"  # SIGTERM came first
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


async def test_ignored_term_means_kill() -> None:
    script = "trap '' TERM; echo ready; while :; do sleep 0.05; done"
    with anyio.move_on_after(30) as hang:  # a hang detector: half the grace period
        with anyio.CancelScope() as scope:
            async with await open_container(["sh", "-c", script], stdin=DEVNULL, grace=60) as c:
                assert c.stdout is not None
                assert await c.stdout.receive() == b"ready\n"
                scope.cancel()
                await c.wait()
        await anyio.lowlevel.checkpoint()
    # The kernel drops a signal that PID 1 ignores, so waiting 60 s for it would be
    # pointless: it is killed without the wait.
    assert not hang.cancelled_caught, "the grace period was waited out"
    assert c.returncode == 128 + signal.SIGKILL
    assert not _zombie_children()


async def test_cancelled_while_starting_leaves_nothing() -> None:
    # Deadlines from "at once" to a few milliseconds land in every stage of the
    # start: before the request, during the clone round trip, while the child sets
    # up, just after exec.
    argv = ["sleep", "60.125"]
    outcomes = set()
    for step in range(24):
        with anyio.move_on_after(step * 0.00025) as scope:
            async with await open_container(argv, stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL) as c:
                await c.wait()
        outcomes.add("cancelled" if scope.cancelled_caught else "finished")
        assert not _processes_running(argv)
        assert not _zombie_children()
    assert "cancelled" in outcomes


async def test_stop_and_aclose_are_idempotent() -> None:
    c = await open_container(["sleep", "60"], stdin=DEVNULL)
    assert await c.stop(grace=0) == 137
    await c.aclose()
    await c.aclose()
    assert c.returncode == 137


# ---------------------------------------------------------------- threads, loops


async def test_from_a_worker_thread() -> None:
    def in_thread(i: int) -> bytes:
        r = anyio.from_thread.run(run_container, ["echo", str(i)])
        return r.stdout

    results = {}

    async def one(i: int) -> None:
        results[i] = await anyio.to_thread.run_sync(in_thread, i)

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(one, i)
    assert results == {i: f"{i}\n".encode() for i in range(8)}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_from_a_plain_thread_through_a_blocking_portal(backend: str) -> None:
    out: list[bytes] = []

    def worker() -> None:
        with anyio.from_thread.start_blocking_portal(backend) as portal:
            out.append(portal.call(run_container, ["echo", "portal"]).stdout)

            async def twice() -> bytes:
                async with await open_container(["cat"]) as c:
                    assert c.stdin is not None and c.stdout is not None
                    await c.stdin.send(b"ping")
                    return await c.stdout.receive()

            out.append(portal.call(twice))

    t = threading.Thread(target=worker)
    t.start()
    t.join(60)
    assert not t.is_alive()
    assert out == [b"portal\n", b"ping"]


@pytest.mark.parametrize("runner", ["anyio-asyncio", "anyio-trio", "asyncio.run", "trio.run"])
def test_the_helper_ends_with_its_event_loop(runner: str) -> None:
    seen: list[int] = []

    async def main() -> None:
        await run_container(["true"])
        seen.extend(_helper_pids())

    def run_loop() -> None:
        if runner.startswith("anyio-"):
            anyio.run(main, backend=runner.removeprefix("anyio-"))
        elif runner == "asyncio.run":
            asyncio.run(main())
        else:
            import trio

            trio.run(main)

    run_loop()
    assert len(seen) == 1
    assert not os.path.exists(f"/proc/{seen[0]}"), "the spawn helper outlived its event loop"
    # a second loop gets a helper of its own, and loses it too
    run_loop()
    assert len(seen) == 2 and seen[1] != seen[0]
    assert not _helper_pids()


@pytest.mark.orphans
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_sigkilled_supervisor_takes_helper_and_containers_with_it(backend: str) -> None:
    code = textwrap.dedent(
        f"""
        import os, sys, anyio
        from supervisor import open_container, DEVNULL
        from supervisor.spawn import helpers

        async def main():
            cs = [await open_container(["sleep", "1000"], stdin=DEVNULL, stdout=DEVNULL) for _ in range(3)]
            print(helpers()[0].pid, *[c.pid for c in cs], flush=True)
            await anyio.sleep_forever()

        anyio.run(main, backend={backend!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=REPO)
    pidfds = []
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 4, line
        pidfds = [os.pidfd_open(p) for p in pids]  # immune to pid reuse
        proc.kill()
        proc.wait()
        # pidfds become readable when their process has exited; 30 s is a hang
        # detector, not a speed requirement
        pending = list(pidfds)
        while pending:
            ready, _, _ = select.select(pending, [], [], 30)
            assert ready, f"still running after the supervisor was killed: {pids}"
            pending = [fd for fd in pending if fd not in ready]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for fd in pidfds:
            os.close(fd)


@pytest.mark.root
@pytest.mark.parametrize("bad", [-7, "out.txt", 3.5])
async def test_bad_stdio_argument_is_a_spec_error_and_leaks_nothing(anyio_backend: str, bad: object) -> None:
    # stdin=PIPE is made first: its pipe must be closed again when stdout is refused
    # (host_unchanged checks the fds)
    with pytest.raises(SpecError, match="invalid stdio argument"):
        await open_container(["true"], stdin=PIPE, stdout=bad)
