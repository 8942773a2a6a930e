"""Detached containers and their lifecycle (issue 13), as docker users use them:
``run -d``, ``ps``, ``logs``, ``exec``, ``stop``, ``kill``, ``wait``, ``rm``,
``inspect``, ``commit`` and ``cp``, against a real daemon in a state directory of the
test's own (stopped, and reaped, at the end of each test)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.busybox import build
from tests.conftest import mydocker_cmd

pytestmark = pytest.mark.root


class World:
    """One state directory, its daemon, and the CLI run against them."""

    def __init__(self, sdir: Path, backend: str = "asyncio") -> None:
        self.sdir = sdir
        self.env = {
            **os.environ,
            "MYDOCKER_STATE_DIR": str(sdir),
            "MYDOCKER_DAEMON_IDLE": "60",
            "MYDOCKER_BACKEND": backend,
        }

    def run(
        self, *args: str, input: bytes | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*mydocker_cmd(), *args],
            input=input,
            capture_output=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
            env=self.env,
        )

    def ok(self, *args: str, input: bytes | None = None) -> str:
        r = self.run(*args, input=input)
        assert r.returncode == 0, (args, r.returncode, r.stderr)
        return r.stdout.decode()

    def detach(self, *args: str) -> str:
        cid = self.ok("run", "-d", *args).strip()
        assert re.fullmatch(r"[0-9a-f]{64}", cid), cid
        return cid

    def daemon_pid(self) -> int | None:
        try:
            return int((self.sdir / "daemon.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop_daemon(self) -> None:
        pid = self.daemon_pid()
        self.run("daemon", "--stop")
        if pid is not None:
            # re-parented to pytest (a subreaper) when the CLI that started it exited
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

    def ps(self, *args: str) -> list[dict[str, str]]:
        lines = self.ok("ps", *args).splitlines()
        header = lines[0]
        starts = [
            header.index(col)
            for col in ("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES")
        ]
        rows = []
        for line in lines[1:]:
            cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
            rows.append(
                dict(
                    zip(("id", "image", "command", "created", "status", "ports", "names"), cells, strict=True)
                )
            )
        return rows

    def inspect(self, name: str) -> dict[str, object]:
        data = json.loads(self.ok("inspect", name))
        assert isinstance(data, list) and len(data) == 1
        return data[0]  # type: ignore[no-any-return]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "state")
    try:
        yield w
    finally:
        w.stop_daemon()


def wait_until(check: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------- run -d, ps, logs


def test_run_d_prints_the_id_and_returns_with_its_stdout_closed(world: World) -> None:
    # the shell's $(...) must not wait for the container: its stdout is not ours
    md = " ".join(mydocker_cmd())
    r = subprocess.run(
        ["sh", "-c", f'cid=$({md} run -d sleep 100); echo "[$cid]"'],
        capture_output=True,
        timeout=30,
        env=world.env,
    )
    assert r.returncode == 0, r.stderr
    cid = r.stdout.decode().strip()[1:-1]
    assert re.fullmatch(r"[0-9a-f]{64}", cid)
    rows = world.ps()
    assert [row["id"] for row in rows] == [cid[:12]]
    assert rows[0]["status"].startswith("Up")
    assert rows[0]["command"] == '"sleep 100"'
    assert re.fullmatch(r"[a-z]+_[a-z]+", rows[0]["names"])  # docker's made-up names
    world.ok("rm", "-f", cid[:12])
    assert world.ps("-a") == []


def test_a_detached_container_outlives_its_cli_and_ps_shows_its_exit(world: World) -> None:
    world.detach("--name", "quick", "sh", "-c", "sleep 2; exit 3")
    assert [r["names"] for r in world.ps()] == ["quick"]
    assert wait_until(lambda: not world.ps())  # exited by itself, nobody waiting
    (row,) = world.ps("-a")
    assert row["names"] == "quick" and re.fullmatch(r"Exited \(3\) .* ago", row["status"]), row
    assert world.ok("wait", "quick").strip() == "3"  # the exit code of a container nobody waited for
    state = world.inspect("quick")["State"]
    assert isinstance(state, dict)
    assert (state["Status"], state["Running"], state["ExitCode"], state["Pid"]) == ("exited", False, 3, 0)
    world.ok("rm", "quick")


def test_ps_quiet_no_trunc_and_rm_f_of_everything(world: World) -> None:
    ids = [world.detach("sleep", "100") for _ in range(3)]
    world.detach("true")
    assert wait_until(lambda: len(world.ps()) == 3)
    assert sorted(world.ok("ps", "-q").split()) == sorted(i[:12] for i in ids)
    assert len(world.ok("ps", "-aq").split()) == 4
    assert world.ok("ps", "-q", "--no-trunc").split()[0] in ids
    everything = world.ok("ps", "-aq").split()
    assert world.ok("rm", "-f", *everything).split() == everything  # names echoed, as docker
    assert world.ps("-a") == []


def test_logs_keep_the_streams_apart_and_outlive_the_container(world: World) -> None:
    world.detach(
        "--name", "talk", "sh", "-c", "echo out1; echo err1 >&2; printf 'no newline'; echo; echo out2"
    )
    world.ok("wait", "talk")
    r = world.run("logs", "talk")
    assert r.returncode == 0
    assert r.stdout == b"out1\nno newline\nout2\n"
    assert r.stderr == b"err1\n"
    # --tail counts the lines of both streams, in the order they were read
    world.detach("--name", "lines", "sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done")
    world.ok("wait", "lines")
    assert world.run("logs", "--tail", "2", "lines").stdout == b"line 4\nline 5\n"
    assert world.run("logs", "--tail", "0", "lines").stdout == b""
    world.ok("rm", "lines")
    stamped = world.ok("logs", "-t", "talk").splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ", line) for line in stamped), stamped
    world.ok("rm", "talk")


def test_logs_of_containers_writing_at_once_are_whole_and_in_order(world: World) -> None:
    """One task of the daemon reads every container's output (daemon/pumps.py):
    three containers writing ~1.3 MB each on both streams at once, more than a pipe
    holds and more than one read takes, each log whole, in order, streams apart."""
    script = "i=0; while [ $i -lt 40000 ]; do echo out $i; echo err $i >&2; i=$((i+1)); done"
    names = [f"loud{k}" for k in range(3)]
    for name in names:
        world.detach("--name", name, "sh", "-c", script)
    for name in names:
        assert world.ok("wait", name).strip() == "0"
    expected_out = "".join(f"out {i}\n" for i in range(40000)).encode()
    expected_err = "".join(f"err {i}\n" for i in range(40000)).encode()
    for name in names:
        r = world.run("logs", name, timeout=120)
        assert r.returncode == 0
        assert r.stdout == expected_out, (name, len(r.stdout))
        assert r.stderr == expected_err, (name, len(r.stderr))
        world.ok("rm", name)


def test_logs_follow_until_the_container_exits(world: World) -> None:
    world.detach("--name", "ticker", "sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 0.3; done")
    r = world.run("logs", "-f", "ticker", timeout=30)
    assert r.returncode == 0
    assert r.stdout == b"tick 1\ntick 2\ntick 3\n"
    world.ok("rm", "ticker")


def test_binary_output_is_logged_exactly(world: World) -> None:
    world.detach("--name", "bin", sys.executable, "-c", "import os; os.write(1, bytes(range(256)) * 3)")
    world.ok("wait", "bin")
    assert world.run("logs", "bin").stdout == bytes(range(256)) * 3
    world.ok("rm", "bin")


# ---------------------------------------------------------------- stop, kill, wait, rm


def test_stop_sends_term_then_kill_after_the_timeout(world: World) -> None:
    world.detach(
        "--name", "polite", "sh", "-c", "trap 'echo got TERM; exit 7' TERM; while :; do sleep 0.1; done"
    )
    world.detach("--name", "stubborn", "sh", "-c", "trap 'echo not now' TERM; while :; do sleep 0.1; done")
    assert world.ok("stop", "polite").strip() == "polite"
    assert world.inspect("polite")["State"]["ExitCode"] == 7  # type: ignore[index]
    assert world.run("logs", "polite").stdout == b"got TERM\n"
    t0 = time.monotonic()
    assert world.ok("stop", "-t", "1", "stubborn").strip() == "stubborn"
    assert time.monotonic() - t0 >= 1.0
    assert world.inspect("stubborn")["State"]["ExitCode"] == 137  # type: ignore[index]
    # stopping an exited container: docker says its name and does nothing
    assert world.ok("stop", "stubborn").strip() == "stubborn"
    world.ok("rm", "polite", "stubborn")


def test_stop_of_a_pid_1_without_a_term_handler_is_at_once(world: World) -> None:
    world.detach("--name", "sleeper", "sleep", "100")
    r = world.run("stop", "sleeper", timeout=8)  # a 10 s grace would be pointless: it never sees TERM
    assert r.returncode == 0
    assert world.inspect("sleeper")["State"]["ExitCode"] == 137  # type: ignore[index]
    world.ok("rm", "sleeper")


def test_kill_with_a_signal_by_name_or_number(world: World) -> None:
    world.detach(
        "--name", "k", "sh", "-c", "trap 'exit 10' USR1; trap 'exit 11' HUP; while :; do sleep 0.1; done"
    )
    assert world.ok("kill", "-s", "USR1", "k").strip() == "k"
    assert world.ok("wait", "k").strip() == "10"
    world.ok("rm", "k")
    world.detach("--name", "k", "sh", "-c", "trap 'exit 11' HUP; while :; do sleep 0.1; done")
    world.ok("kill", "--signal", str(int(signal.SIGHUP)), "k")
    assert world.ok("wait", "k").strip() == "11"
    r = world.run("kill", "k")
    assert r.returncode != 0 and b"not running" in r.stderr and len(r.stderr.splitlines()) == 1
    r = world.run("kill", "-s", "NOPE", "k")
    assert r.returncode == 125 and r.stderr.strip() == b"mydocker: invalid signal: 'NOPE'"
    world.ok("rm", "k")


def test_rm_of_a_running_container_needs_force(world: World) -> None:
    world.detach("--name", "busy", "sleep", "100")
    r = world.run("rm", "busy")
    assert r.returncode == 1 and b"running" in r.stderr and len(r.stderr.splitlines()) == 1
    assert [row["names"] for row in world.ps()] == ["busy"]
    assert world.ok("rm", "-f", "busy").strip() == "busy"
    r = world.run("rm", "busy")  # a second rm
    assert r.returncode == 1 and r.stderr.strip() == b"mydocker: no such container: busy"


def test_run_d_rm_removes_it_when_it_exits_and_wait_still_gets_its_code(world: World) -> None:
    cid = world.detach("--rm", "sh", "-c", "sleep 0.5; exit 4")
    assert world.ok("wait", cid[:12]).strip() == "4"
    assert wait_until(lambda: world.ps("-a") == [])


# ---------------------------------------------------------------- names, ids, bad input


def test_a_name_in_use_is_refused_foreground_or_detached(world: World) -> None:
    world.detach("--name", "taken", "sleep", "100")
    for args in (("run", "-d", "--name", "taken", "true"), ("run", "--name", "taken", "true")):
        r = world.run(*args)
        assert r.returncode == 125, r.stderr
        assert b"already in use" in r.stderr and len(r.stderr.splitlines()) == 1
    assert len(world.ps("-a")) == 1
    world.ok("rm", "-f", "taken")
    world.detach("--name", "taken", "true")  # free again
    world.ok("wait", "taken")
    world.ok("rm", "taken")


def test_unknown_and_ambiguous_references(world: World) -> None:
    ids = {world.detach("sleep", "100") for _ in range(12)}
    for cmd in ("logs", "stop", "inspect", "rm", "wait", "kill"):
        r = world.run(cmd, "nosuchthing")
        assert r.returncode == 1, (cmd, r.stderr)
        assert r.stderr.strip().endswith(b"no such container: nosuchthing"), (cmd, r.stderr)
    # with 12 ids some first hex digit repeats: that prefix is ambiguous
    firsts = [i[0] for i in ids]
    dup = next(c for c in firsts if firsts.count(c) > 1)
    r = world.run("inspect", dup)
    assert r.returncode == 1 and b"give more of it" in r.stderr
    one = next(iter(ids))
    assert world.inspect(one[:5])["Id"] == one  # a unique prefix
    world.ok("rm", "-f", *world.ok("ps", "-aq").split())


def test_run_d_failures_leave_nothing_behind(world: World, tmp_path: Path) -> None:
    r = world.run("run", "-d", "no-such-command")
    assert r.returncode == 127 and len(r.stderr.splitlines()) == 1, r.stderr
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    r = world.run("run", "-d", str(script))
    assert r.returncode == 126 and len(r.stderr.splitlines()) == 1, r.stderr
    r = world.run("run", "-d", "--memory", "lots", "true")
    assert r.returncode == 125 and len(r.stderr.splitlines()) == 1, r.stderr
    r = world.run("run", "-d", "--name", "bad/name", "true")
    assert r.returncode == 125 and b"invalid container name" in r.stderr
    assert world.ps("-a") == []  # not even a "Created" entry
    assert not [n for n in os.listdir(world.sdir / "containers") if not n.startswith(".")]


def test_a_corrupt_record_is_one_line_and_the_others_still_work(world: World) -> None:
    world.detach("--name", "good", "true")
    bad = world.detach("--name", "bad", "true")
    world.ok("wait", "good", "bad")
    (world.sdir / "containers" / bad / "state.json").write_text("{not json")
    r = world.run("inspect", "bad")
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1 and b"cannot be read" in r.stderr
    assert [row["names"] for row in world.ps("-a")] == ["good"]  # listed without the bad one
    (world.sdir / "containers" / bad / "state.json").write_text(json.dumps({"Version": 99}))
    r = world.run("inspect", "bad")
    assert r.returncode == 1 and b"another version" in r.stderr and b"Traceback" not in r.stderr
    world.ok("rm", "good")


# ---------------------------------------------------------------- exec


def test_exec_joins_the_container(world: World) -> None:
    world.detach("--name", "host1", "--hostname", "boxy", "-e", "FROM_RUN=1", "sleep", "100")
    out = world.ok(
        "exec", "host1", "sh", "-c", "hostname; echo $FROM_RUN; cat /proc/1/cmdline | tr '\\0' ' '"
    )
    assert out.splitlines() == ["boxy", "1", "sleep 100 "]
    assert world.ok("exec", "-e", "X=y", "-w", "/tmp", "host1", "sh", "-c", "echo $X; pwd").split() == [
        "y",
        "/tmp",
    ]
    assert world.ok("exec", "-i", "host1", "cat", input=b"piped in").strip() == "piped in"
    assert world.run("exec", "host1", "sh", "-c", "exit 9").returncode == 9
    r = world.run("exec", "host1", "no-such-command")
    assert r.returncode == 127 and len(r.stderr.splitlines()) == 1
    caps = world.ok("exec", "host1", "grep", "CapEff", "/proc/self/status").split()[1]
    assert (
        caps == world.ok("exec", "host1", "grep", "CapEff", "/proc/1/status").split()[1]
    )  # PID 1's confinement
    world.ok("rm", "-f", "host1")
    r = world.run("exec", "host1", "true")
    assert r.returncode != 0 and len(r.stderr.splitlines()) == 1


def test_exec_into_an_exited_container_is_one_line(world: World) -> None:
    world.detach("--name", "gone", "true")
    world.ok("wait", "gone")
    r = world.run("exec", "gone", "true")
    assert r.returncode != 0 and r.stderr.strip() == b"mydocker: container gone is not running"
    world.ok("rm", "gone")


def test_a_foreground_container_is_listed_and_reachable_by_exec(world: World) -> None:
    fg = subprocess.Popen(
        [*mydocker_cmd(), "run", "--name", "fg", "sleep", "100"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env=world.env,
    )
    try:
        assert wait_until(lambda: [r["names"] for r in world.ps()] == ["fg"])
        assert world.ok("exec", "fg", "echo", "from exec").strip() == "from exec"
        world.ok("stop", "fg")
        assert fg.wait(timeout=30) == 137
    finally:
        if fg.poll() is None:
            fg.kill()
            fg.wait()
        assert fg.stdout is not None
        fg.stdout.close()
    assert world.ps("-a") == []  # a foreground container is registered only while it runs


def test_exec_t_into_an_interactive_container(world: World) -> None:
    pexpect = pytest.importorskip("pexpect")
    cmd = mydocker_cmd()
    shell = pexpect.spawn(cmd[0], [*cmd[1:], "run", "-ti", "--name", "tty1", "sh"], env=world.env, timeout=20)
    try:
        shell.sendline("echo ready-$((6*7))")
        shell.expect("ready-42")
        second = pexpect.spawn(cmd[0], [*cmd[1:], "exec", "-ti", "tty1", "sh"], env=world.env, timeout=20)
        second.sendline("tty; echo second-$((5*5))")
        second.expect("second-25")
        second.sendline("exit 3")
        second.expect(pexpect.EOF)
        second.close()
        assert second.exitstatus == 3
        shell.sendline("exit 0")
        shell.expect(pexpect.EOF)
    finally:
        shell.close(force=True)


# ---------------------------------------------------------------- the daemon


@pytest.mark.orphans
def test_a_sigkilled_daemon_takes_its_containers_and_the_next_records_them(world: World) -> None:
    world.detach("--name", "a", "sleep", "100")
    world.detach("--name", "b", "--memory", "64m", "sleep", "100")
    pids = [int(world.inspect(n)["State"]["Pid"]) for n in ("a", "b")]  # type: ignore[index]
    fds = [os.pidfd_open(p) for p in pids]
    daemon = world.daemon_pid()
    assert daemon is not None
    try:
        os.kill(daemon, signal.SIGKILL)
        os.waitpid(daemon, 0)  # ours: pytest is a subreaper
        import select

        for fd in fds:
            assert select.select([fd], [], [], 30)[0], "a container outlived its daemon"
    finally:
        for fd in fds:
            os.close(fd)
    rows = world.ps("-a")
    assert sorted(r["names"] for r in rows) == ["a", "b"]
    assert all(r["status"].startswith("Exited (137)") for r in rows), rows
    assert "died" in str(world.inspect("a")["State"]["Error"])  # type: ignore[index]
    world.ok("rm", "a", "b")
    assert world.ps("-a") == []
    world.detach("--name", "after", "true")  # a new daemon
    world.ok("wait", "after")
    world.ok("rm", "after")


def test_two_clis_racing_start_one_daemon(world: World) -> None:
    procs = [
        subprocess.Popen(
            [*mydocker_cmd(), "run", "-d", "sleep", "100"], stdout=subprocess.PIPE, env=world.env
        )
        for _ in range(4)
    ]
    for p in procs:
        assert p.wait(timeout=60) == 0
        assert p.stdout is not None
        p.stdout.close()
    assert len(world.ps()) == 4
    daemons = [
        pid
        for pid in os.listdir("/proc")
        if pid.isdigit() and f" daemon --state-dir {world.sdir} --ready-fd " in _cmdline(int(pid))
    ]
    assert daemons == [str(world.daemon_pid())]
    world.ok("rm", "-f", *world.ok("ps", "-q").split())


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_the_daemon_exits_when_idle(tmp_path: Path) -> None:
    w = World(tmp_path / "state")
    w.env["MYDOCKER_DAEMON_IDLE"] = "0.5"
    try:
        w.detach("--rm", "true")
        pid = w.daemon_pid()
        assert pid is not None
        os.waitpid(pid, 0)  # it left by itself
        assert not (w.sdir / "daemon.sock").exists()
    finally:
        w.stop_daemon()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_daemon_on_both_event_loops(tmp_path: Path, backend: str) -> None:
    w = World(tmp_path / "state", backend)
    try:
        w.detach("--name", "x", "sh", "-c", "echo hello")
        assert w.ok("wait", "x").strip() == "0"
        assert w.ok("logs", "x") == "hello\n"
        w.ok("rm", "x")
    finally:
        w.stop_daemon()


# ---------------------------------------------------------------- root filesystems: cp, commit


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory)[0]


def test_cp_both_ways_running_and_exited(world: World, busybox: Path, tmp_path: Path) -> None:
    world.detach(
        "--name", "files", "--rootfs", str(busybox), "sh", "-c",
        "mkdir -p /data/sub; echo one > /data/a; echo two > /data/sub/b; "
        "ln -s /etc/shadow /data/evil; sleep 100",
    )  # fmt: skip
    assert wait_until(lambda: world.run("exec", "files", "test", "-L", "/data/evil").returncode == 0)
    out = tmp_path / "out"
    out.mkdir()
    world.ok("cp", "files:/data", str(out))  # into an existing directory: out/data
    assert (out / "data" / "a").read_text() == "one\n"
    assert (out / "data" / "sub" / "b").read_text() == "two\n"
    assert os.readlink(out / "data" / "evil") == "/etc/shadow"  # a symlink copied as one, not followed
    world.ok("cp", "files:/data/.", str(out / "contents"))  # the contents, into a new directory
    assert sorted(os.listdir(out / "contents")) == ["a", "evil", "sub"]
    world.ok("cp", "files:/data/a", str(out / "renamed"))
    assert (out / "renamed").read_text() == "one\n"
    tree = tmp_path / "tree"
    (tree / "deep").mkdir(parents=True)
    (tree / "deep" / "f").write_text("host file\n")
    world.ok("cp", str(tree), "files:/data/")
    assert world.ok("exec", "files", "cat", "/data/tree/deep/f") == "host file\n"
    world.ok("stop", "files")
    # exited: through its layers
    world.ok("cp", "files:/data/tree", str(out / "tree-back"))
    assert (out / "tree-back" / "deep" / "f").read_text() == "host file\n"
    (tmp_path / "late").write_text("after exit\n")
    world.ok("cp", str(tmp_path / "late"), "files:/data/late")
    with tarfile.open(
        fileobj=__import__("io").BytesIO(world.run("cp", "files:/data/late", "-").stdout)
    ) as tf:
        member = tf.extractfile("late")
        assert member is not None and member.read() == b"after exit\n"
    world.ok("rm", "files")


def test_cp_resolves_symlinks_inside_the_container(world: World, busybox: Path, tmp_path: Path) -> None:
    world.detach(
        "--name", "trap", "--rootfs", str(busybox), "sh", "-c",
        "ln -s /etc/passwd /tmp/abs; ln -s ../../../../../../etc/passwd /tmp/rel; "
        "ln -s ../../../../../etc /tmp/reldir; ln -s / /tmp/root; sleep 100",
    )  # fmt: skip
    assert wait_until(lambda: world.run("exec", "trap", "test", "-L", "/tmp/root").returncode == 0)
    container_passwd = world.ok("exec", "trap", "cat", "/etc/passwd").encode()
    assert container_passwd != Path("/etc/passwd").read_bytes()
    for link in ("abs", "rel"):  # copied as the symlinks they are
        world.ok("cp", f"trap:/tmp/{link}", str(tmp_path / link))
        assert os.path.islink(tmp_path / link)
    # a path through them is resolved in the container's root: its passwd, never the host's
    for path in ("/tmp/root/etc/passwd", "/tmp/reldir/passwd", "/tmp/root/../../../etc/passwd"):
        world.ok("cp", f"trap:{path}", str(tmp_path / "got"))
        assert (tmp_path / "got").read_bytes() == container_passwd, path
    marker = tmp_path / "host-only"
    marker.write_text("host")
    r = world.run("cp", f"trap:/tmp/root{marker}", str(tmp_path / "x"))
    assert r.returncode != 0 and not (tmp_path / "x").exists()  # the host's file is not in the container
    (tmp_path / "payload").write_text("payload")
    world.ok("cp", str(tmp_path / "payload"), "trap:/tmp/root/tmp/")  # lands in the container's /tmp
    assert world.ok("exec", "trap", "cat", "/tmp/payload") == "payload"
    assert not Path("/tmp/payload").exists() or Path("/tmp/payload").read_text() != "payload"
    world.ok("rm", "-f", "trap")


def test_cp_out_strips_set_id_bits_and_gives_files_to_the_caller(
    world: World, busybox: Path, tmp_path: Path
) -> None:
    world.detach("--name", "suid", "--rootfs", str(busybox), "--cap-add", "ALL", "sh", "-c",
                 "cp /bin/busybox /tmp/s; chown 1234:1234 /tmp/s; chmod 6755 /tmp/s; sleep 100")  # fmt: skip
    assert wait_until(lambda: world.run("exec", "suid", "test", "-u", "/tmp/s").returncode == 0)
    world.ok("cp", "suid:/tmp/s", str(tmp_path / "s"))
    st = (tmp_path / "s").stat()
    assert st.st_mode & 0o7777 == 0o755 and (st.st_uid, st.st_gid) == (0, 0)
    world.ok("rm", "-f", "suid")


def test_cp_bad_paths_are_one_line(world: World, busybox: Path, tmp_path: Path) -> None:
    world.detach("--name", "c", "--rootfs", str(busybox), "sleep", "100")
    cases = [
        ("c:/no/such", str(tmp_path / "x")),
        (str(tmp_path / "no-such"), "c:/tmp/"),
        ("c:/etc", str(tmp_path / "file-not-dir")),
        (str(tmp_path), "c:/etc/passwd"),
        ("c:/etc/passwd", "c:/tmp"),
        (str(tmp_path), str(tmp_path)),
    ]
    (tmp_path / "file-not-dir").write_text("")
    for src, dest in cases:
        r = world.run("cp", src, dest)
        assert r.returncode != 0 and len(r.stderr.splitlines()) == 1 and b"Traceback" not in r.stderr, (
            src,
            dest,
            r.stderr,
        )
    world.ok("rm", "-f", "c")


def test_commit_makes_an_image_with_the_changes(world: World, busybox: Path) -> None:
    world.detach(
        "--name", "base", "--rootfs", str(busybox), "sh", "-c", "echo changed > /etc/motd; rm /bin/ls"
    )
    world.ok("wait", "base")
    assert world.ok("commit", "base", "snap").strip() == "snap"
    out = world.ok("run", "--image", "snap", "sh", "-c", "cat /etc/motd; test -e /bin/ls || echo ls-gone")
    assert out.split() == ["changed", "ls-gone"]
    r = world.run("commit", "base", "snap")
    assert r.returncode == 125 and b"already exists" in r.stderr
    world.ok("rm", "base")
    world.ok("image", "rm", "snap")


def test_stats_no_stream_shows_what_the_cgroups_say(world: World) -> None:
    world.detach("--name", "spin", "-m", "64m", "sh", "-c", "while :; do :; done")
    world.detach("--name", "rest", "sleep", "100")
    lines = world.ok("stats", "--no-stream").splitlines()
    assert lines[0].split()[:4] == ["CONTAINER", "ID", "NAME", "CPU"]
    rows = {line.split()[1]: line for line in lines[1:]}
    assert set(rows) == {"spin", "rest"}
    assert "/ 64.00MiB" in rows["spin"]
    spin_cpu = float(rows["spin"].split()[2].rstrip("%"))
    assert spin_cpu > 0  # a busy loop, measured over half a second
    only = world.ok("stats", "--no-stream", "rest").splitlines()
    assert len(only) == 2 and only[1].split()[1] == "rest"
    world.ok("rm", "-f", "spin", "rest")


def test_run_dit_then_attach_detach_and_attach_again(world: World) -> None:
    pexpect = pytest.importorskip("pexpect")
    world.detach("-it", "--name", "shell", "sh")
    cmd = mydocker_cmd()
    first = pexpect.spawn(cmd[0], [*cmd[1:], "attach", "shell"], env=world.env, timeout=20)
    first.sendline("echo attached-$((6*7))")
    first.expect("attached-42")
    first.send("\x10\x11")  # Ctrl-P Ctrl-Q: detach, the container goes on
    first.expect(pexpect.EOF)
    first.close()
    assert first.exitstatus == 0
    assert [r["names"] for r in world.ps()] == ["shell"]
    second = pexpect.spawn(cmd[0], [*cmd[1:], "attach", "shell"], env=world.env, timeout=20)
    second.sendline("exit 5")
    second.expect(pexpect.EOF)
    second.close()
    assert second.exitstatus == 5  # the container's status
    assert world.ok("wait", "shell").strip() == "5"
    world.ok("rm", "shell")


def test_attach_without_a_tty_streams_both_outputs_until_the_exit(world: World) -> None:
    world.detach("--name", "talker", "sh", "-c", "sleep 1; echo out; echo err >&2; exit 2")
    r = world.run("attach", "--no-stdin", "talker", timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (2, b"out\n", b"err\n")
    r = world.run("attach", "talker")
    assert r.returncode == 125 and b"not running" in r.stderr
    world.ok("rm", "talker")


# ---------------------------------------------------------------- what a review tried


def test_cp_closes_its_pipe_when_the_container_is_gone_before_the_copy(
    world: World, busybox: Path, tmp_path: Path
) -> None:
    # `cp` checks the path (kind), then copies it through a pipe read by another thread:
    # a container that exits (or removes the path) in between must fail the copy, not
    # leave the reader waiting for ever on a pipe nobody closes
    from supervisor import records
    from supervisor.cli.exec import _Container
    from supervisor.errors import MydockerError

    world.detach("--name", "gone", "--rootfs", str(busybox), "sleep", "100")
    ctr = _Container(records.find(str(world.sdir), "gone"))
    try:
        assert ctr.kind("/etc/passwd") == "file"
        world.ok("kill", "gone")
        world.ok("wait", "gone")
        r, w = os.pipe()
        with pytest.raises(MydockerError):
            ctr.get("/etc/passwd", w)
        with pytest.raises(OSError):
            os.close(w)  # closed by get
        assert os.read(r, 1) == b""  # and the reader sees the end at once
        os.close(r)
        r, w = os.pipe()
        with pytest.raises(MydockerError):
            ctr.put("/tmp", r)
        with pytest.raises(BrokenPipeError):  # the writer is not left blocked
            os.write(w, b"x" * 65536 * 4)
        os.close(w)
    finally:
        ctr.close()
    world.ok("rm", "gone")


def test_a_malformed_request_is_refused_and_the_daemon_and_its_containers_go_on(world: World) -> None:
    # a request of the daemon's own user with a field of the wrong type (or one that
    # breaks anything else) is one error reply, not the end of the daemon: that would
    # take every detached container with it
    import socket

    from supervisor.daemon import protocol
    from supervisor.spec import ContainerSpec

    world.detach("--name", "bystander", "sleep", "100")
    spec = protocol.pack(ContainerSpec(("sleep", "100"), state_dir=str(world.sdir)))
    odd = ContainerSpec(("sleep", "100"), state_dir=str(world.sdir))
    object.__setattr__(odd, "command", ())  # what no check of this version lets through
    bad = [
        {"op": "run", "spec": spec, "grace": "soon"},
        {"op": "run", "spec": spec, "grace": float("nan")},
        {"op": "run", "spec": spec, "log_max_size": "big"},
        {"op": "run", "spec": spec, "log_max_size": -1},
        {"op": "run", "spec": protocol.pack(odd)},
    ]
    for request in bad:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(str(world.sdir / "daemon.sock"))
            sock.sendall(protocol.encode({"v": protocol.VERSION, **request}))
            reply = protocol.decode(sock.makefile("rb").readline())
        assert reply["ok"] is False and reply["error"]["message"], (request, reply)
    assert [row["names"] for row in world.ps()] == ["bystander"]
    assert world.inspect("bystander")["State"]["Running"] is True  # type: ignore[index]
    assert [row["names"] for row in world.ps("-a")] == ["bystander"]  # nothing half made
    world.ok("rm", "-f", "bystander")


class _Planted:
    """What another user's pickle can do when loaded: here, create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (str(self.marker), "w"))


def test_another_users_state_dir_runs_none_of_their_code(world: World, tmp_path: Path) -> None:
    # a state directory another user made (a predictable path under /tmp, say): the
    # pickles in it would run their code as whoever loads them; root's cp, exec and
    # commit must refuse them, one line each
    import pickle

    from supervisor import records

    marker = tmp_path / "ran-their-code"
    cid = "ab" * 32
    d = world.sdir / "containers" / cid
    d.mkdir(parents=True)
    (d / "record.json").write_text(json.dumps({"Version": 1, "Id": cid, "Name": "", "Created": ""}))
    (d / "state.json").write_text(json.dumps({"Version": 1, "Status": "exited", "ExitCode": 0}))
    for name in ("spec.pickle", "identity.pickle"):
        (d / name).write_bytes(pickle.dumps((records.VERSION, _Planted(marker))))
    for p in [world.sdir, world.sdir / "containers", d, *d.iterdir()]:
        os.chown(p, 1000, 1000)
    for args in (
        ["cp", "abab:/etc/passwd", str(tmp_path / "out")],
        ["exec", "abab", "true"],
        ["commit", "abab", "x"],
    ):
        r = world.run(*args)
        assert r.returncode != 0 and len(r.stderr.splitlines()) == 1, (args, r.stderr)
        assert not marker.exists(), args
    # a pickle of our own that others may write is refused too
    for p in [world.sdir, world.sdir / "containers", d, *d.iterdir()]:
        os.chown(p, 0, 0)
    os.chmod(d / "spec.pickle", 0o666)
    os.chmod(d / "identity.pickle", 0o666)
    r = world.run("cp", "abab:/etc/passwd", str(tmp_path / "out"))
    assert r.returncode != 0 and not marker.exists(), r.stderr


def test_cp_and_commit_import_nothing_from_the_current_directory(
    world: World, busybox: Path, tmp_path: Path
) -> None:
    # an exited container's files are reached by a child Python (layers.py); run with
    # -c it would import first from the current directory, where `cp CTR:/supervisor .`
    # just put the container's own `supervisor` package: its code would run as root
    world.detach(
        "--name", "planter", "--rootfs", str(busybox), "sh", "-c",
        "mkdir /supervisor; echo 'open(\"/proc/self/cwd/ran-container-code\", \"w\")' "
        "> /supervisor/__init__.py",
    )  # fmt: skip
    world.ok("wait", "planter")
    work = tmp_path / "work"
    work.mkdir()

    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*mydocker_cmd(), *args], cwd=work, env=world.env, capture_output=True, stdin=subprocess.DEVNULL
        )

    assert cli("cp", "planter:/supervisor", ".").returncode == 0
    assert (work / "supervisor" / "__init__.py").exists()
    r = cli("cp", "planter:/etc/passwd", "passwd")
    assert r.returncode == 0, r.stderr
    r = cli("commit", "planter", "planted")
    assert r.returncode == 0, r.stderr
    assert not (work / "ran-container-code").exists()
    world.ok("rm", "planter")
    world.ok("image", "rm", "planted")


@pytest.mark.parametrize(
    "file, text",
    [
        ("record.json", "[]"),
        ("record.json", '{"Version": 1, "Args": 5}'),
        ("state.json", '{"ExitCode": "x"}'),
        ("state.json", '{"OOMKilled": 1, "Status": "exited"}'),
    ],
)
def test_a_record_of_the_wrong_shape_spoils_nothing_else_and_rm_removes_it(
    world: World, file: str, text: str
) -> None:
    world.detach("--name", "fine", "true")
    broken = world.detach("--name", "broken", "true")
    world.ok("wait", "fine", "broken")
    (world.sdir / "containers" / broken / file).write_text(text)
    assert [r["names"] for r in world.ps("-a")] == ["fine"]
    r = world.run("inspect", "broken")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and b"Traceback" not in r.stderr
    assert world.ok("rm", "broken").strip() == "broken"  # by its name, its record unread
    assert not (world.sdir / "containers" / broken).exists()
    world.ok("rm", "fine")


def test_commit_of_a_running_container_pauses_it_only_meanwhile(world: World, busybox: Path) -> None:
    world.detach("--name", "live", "--rootfs", str(busybox), "sh", "-c", "echo v1 > /state; sleep 100")
    assert wait_until(lambda: world.run("exec", "live", "cat", "/state").stdout == b"v1\n")
    world.ok("commit", "live", "live-snap")
    # thawed: it goes on (an exec runs, and it still runs)
    assert world.ok("exec", "live", "sh", "-c", "echo v2 > /state; cat /state") == "v2\n"
    assert world.inspect("live")["State"]["Status"] == "running"  # type: ignore[index]
    assert world.ok("run", "--image", "live-snap", "cat", "/state") == "v1\n"
    world.ok("rm", "-f", "live")
    world.ok("image", "rm", "live-snap")
