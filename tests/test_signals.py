"""``mydocker run`` without a tty: stdin attached or not, and signals reaching PID 1
(sig-proxy, the second-Ctrl-C rule, ``--init``), with the CLI on both event loops."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from .conftest import mydocker_cmd, run_cli

pytestmark = pytest.mark.root


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The event loop the CLI runs on (hidden ``MYDOCKER_BACKEND``)."""
    return request.param


def _env(backend: str) -> dict[str, str]:
    return dict(os.environ, MYDOCKER_BACKEND=backend)


@pytest.fixture
def popen(backend: str) -> Iterator[object]:
    """popen(args, **kw) -> a running ``mydocker ARGS``; killed and reaped at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def _popen(*args: str, **kw: object) -> subprocess.Popen[bytes]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen([*mydocker_cmd(), *args], env=_env(backend), **kw)  # type: ignore[call-overload]
        procs.append(proc)
        return proc  # type: ignore[no-any-return]

    yield _popen
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                f.close()


def _read_until(f: object, marker: bytes, timeout: float = 30) -> bytes:
    """Read from a pipe until ``marker`` shows up (the container is ready)."""
    fd = f.fileno()  # type: ignore[attr-defined]
    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"{marker!r} never came; got {got!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            assert chunk, f"EOF before {marker!r}; got {got!r}"
            got += chunk
    return got


# -- stdin --------------------------------------------------------------------------


def test_interactive_stdin_is_a_pipe(backend: str) -> None:
    r = subprocess.run(
        [*mydocker_cmd(), "run", "-i", "cat"], input=b"x", capture_output=True, timeout=60, env=_env(backend)
    )
    assert (r.returncode, r.stdout, r.stderr) == (0, b"x", b"")


def test_eof_on_our_stdin_closes_the_containers_stdin(popen) -> None:
    proc = popen("run", "-i", "sh", "-c", "cat; echo after-eof", stdin=subprocess.PIPE)
    proc.stdin.write(b"line\n")
    proc.stdin.flush()
    assert _read_until(proc.stdout, b"line\n") == b"line\n"
    proc.stdin.close()
    assert _read_until(proc.stdout, b"after-eof\n") == b"after-eof\n"
    assert proc.wait(timeout=30) == 0


def test_without_i_stdin_is_at_eof(popen) -> None:
    # our stdin stays open and silent: the container must not wait on it
    proc = popen("run", "sh", "-c", "cat; echo eof", stdin=subprocess.PIPE)
    assert proc.wait(timeout=30) == 0
    assert proc.stdout.read() == b"eof\n"


# -- signals --------------------------------------------------------------------------

TRAP = "trap 'echo got-{sig}; exit {code}' {sig}; echo ready; sleep 1000 & wait"


def test_sigterm_reaches_a_trapping_pid_1(popen) -> None:
    # a sleep time no other test uses: we look for survivors by command line
    proc = popen("run", "sh", "-c", TRAP.format(sig="TERM", code=5).replace("1000", "987654"))
    _read_until(proc.stdout, b"ready\n")  # the trap is installed
    _wait_for(lambda: bool(_processes_running(b"sleep\x00987654\x00")), "the background sleep runs")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 5
    assert proc.stdout.read() == b"got-TERM\n"
    # PID 1's exit took the rest of its namespace along: no stray process
    assert not _processes_running(b"sleep\x00987654\x00")


@pytest.mark.parametrize("sig", ["USR1", "USR2", "HUP", "INT", "QUIT", "WINCH"])
def test_other_signals_are_forwarded(popen, sig: str) -> None:
    # WINCH too, without a tty: a PID 1 that handles it gets it
    proc = popen("run", "sh", "-c", TRAP.format(sig=sig, code=7))
    _read_until(proc.stdout, b"ready\n")
    proc.send_signal(getattr(signal, f"SIG{sig}"))
    assert proc.wait(timeout=30) == 7
    assert proc.stdout.read() == f"got-{sig}\n".encode()


def test_sigterm_kills_a_pid_1_without_handler(popen) -> None:
    # The kernel drops a SIGTERM that PID 1 has no handler for: mydocker kills it at
    # once instead of waiting out the grace period for nothing. The grace period is
    # long and the hang detector half of it, so that waiting it out fails the test.
    proc = popen("run", "--stop-timeout", "60", "sleep", "1000")
    _wait_for(lambda: any(_comm(p) == "sleep" for p in _children(proc.pid)), "sleep runs as PID 1")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGKILL
    # silently: not "the container did not stop within 60s of SIGTERM: killing it"
    assert proc.stderr.read() == b""


@pytest.mark.parametrize("sig", ["HUP", "QUIT"])
def test_hup_or_quit_kills_a_pid_1_without_handler(popen, sig: str) -> None:
    # Like SIGTERM: the kernel would drop it, so mydocker kills the container, at
    # once (the grace period is only for a SIGTERM that PID 1 handles).
    proc = popen("run", "--stop-timeout", "60", "sleep", "1000")
    _wait_for(lambda: any(_comm(p) == "sleep" for p in _children(proc.pid)), "sleep runs as PID 1")
    proc.send_signal(getattr(signal, f"SIG{sig}"))
    assert proc.wait(timeout=30) == 128 + signal.SIGKILL
    assert proc.stderr.read() == b""


def test_handled_sigterm_that_does_not_stop_it_kills_after_the_grace_period(popen) -> None:
    proc = popen(
        "run", "--stop-timeout", "0.5", "sh", "-c",
        "trap 'echo ignoring' TERM; echo ready; while :; do sleep 0.1; done",
    )  # fmt: skip
    _read_until(proc.stdout, b"ready\n")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGKILL
    assert b"did not stop within 0.5s" in proc.stderr.read()


def test_second_interrupt_kills_a_pid_1_that_ignores_sigint(popen) -> None:
    proc = popen("run", "sleep", "1000")
    _wait_for(lambda: any(_comm(p) == "sleep" for p in _children(proc.pid)), "sleep runs as PID 1")
    proc.send_signal(signal.SIGINT)
    # the first one only warns, naming the window in which a second one kills
    notice = _read_until(proc.stderr, b"(or use --init)\n")
    assert notice == (
        b"mydocker: the container's PID 1 ignores SIGINT; press Ctrl-C again within 3s "
        b"to kill it (or use --init)\n"
    )
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 128 + signal.SIGKILL
    assert b"second interrupt: killing the container" in proc.stderr.read()


def test_a_sigkilled_mydocker_takes_its_container_with_it(popen, cgroup_parent: str) -> None:
    # PID 1 asked for PR_SET_PDEATHSIG: it dies with mydocker, there and then, not
    # when a later mydocker run sweeps the cgroups the dead one left behind (below a
    # cgroup of the test's own, no other run on this host sweeps them meanwhile).
    argv = ["sleep", f"1000.{os.getpid()}{time.monotonic_ns() % 1_000_000:06d}"]  # no other process's
    cmdline = "\0".join(argv).encode() + b"\0"
    proc = popen("run", "--cgroup-parent", cgroup_parent, *argv)
    _wait_for(lambda: bool(_processes_running(cmdline)), "sleep runs as PID 1")
    [pid] = _processes_running(cmdline)
    pidfd = os.pidfd_open(pid)  # immune to pid reuse
    exited = False
    try:
        proc.kill()
        proc.wait()
        # readable once PID 1 has exited; 30 s is a hang detector, not a speed limit
        exited = bool(select.select([pidfd], [], [], 30)[0])
        assert exited, "the container outlived the SIGKILLed mydocker"
    finally:
        if not exited:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        # pytest is a child subreaper (conftest): the orphan is ours to reap
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        os.close(pidfd)
        # the dead mydocker's cgroups: the next run below the same parent removes them
        assert run_cli("run", "--cgroup-parent", cgroup_parent, "true").returncode == 0
    assert info is not None and (info.si_code, info.si_status) == (os.CLD_KILLED, signal.SIGKILL)


def test_init_stops_on_sigint(popen) -> None:
    proc = popen("run", "--init", "sleep", "100")
    # wait until the command runs under init (PID 2 in the container)
    _wait_for(
        lambda: any(_comm(g) == "sleep" for p in _children(proc.pid) for g in _children(p)),
        "sleep runs under init",
    )
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 128 + signal.SIGINT
    assert proc.stderr.read() == b""  # no "press Ctrl-C again": init handles it


@pytest.mark.parametrize("sig", ["USR1", "TERM", "HUP", "WINCH"])
def test_init_passes_other_signals_on_to_the_command(popen, sig: str) -> None:
    # mydocker -> the init (PID 1) -> the command, which handles it
    proc = popen("run", "--init", "sh", "-c", TRAP.format(sig=sig, code=7))
    _read_until(proc.stdout, b"ready\n")
    proc.send_signal(getattr(signal, f"SIG{sig}"))
    assert proc.wait(timeout=30) == 7
    assert proc.stdout.read() == f"got-{sig}\n".encode()


def test_init_is_pid_1_and_reaps_orphans(popen) -> None:
    # the orphaned grandchild is re-parented to init, which must reap it (no <defunct>)
    proc = popen(
        "run", "--init", "sh", "-c",
        "sh -c 'sleep 0.1 &' ; sleep 0.5; echo $$; ps -e -o pid=,stat=,comm=",
    )  # fmt: skip
    assert proc.wait(timeout=30) == 0
    lines = proc.stdout.read().decode().splitlines()
    assert lines[0] == "2"  # the command is init's child
    assert "Z" not in "".join(line.split()[1] for line in lines[1:]), lines


def test_init_reports_a_missing_command(backend: str) -> None:
    r = subprocess.run(
        [*mydocker_cmd(), "run", "--init", "/no/such/cmd"],
        capture_output=True, timeout=60, env=_env(backend), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 127
    assert r.stderr.startswith(b"mydocker: ") and r.stderr.count(b"\n") == 1


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def _processes_running(cmdline: bytes) -> list[int]:
    found = []
    for p in _all_pids():
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if f.read() == cmdline:
                    found.append(p)
        except OSError:
            pass
    return found


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _children(pid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == pid]


def _stat(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            head, tail = f.read().rsplit(")", 1)
    except OSError:
        return []
    return [head.split("(", 1)[1], *tail.split()]


def _comm(pid: int) -> str:
    s = _stat(pid)
    return s[0] if s else ""


def _ppid(pid: int) -> int:
    s = _stat(pid)
    return int(s[2]) if s else 0


@pytest.mark.parametrize("tty", [False, True])
def test_init_keeps_no_fd_of_the_supervisor(backend: str, tty: bool) -> None:
    # init never execs: without care it would keep the pty master, cgroup and
    # event-loop fds it inherited
    r = subprocess.run(
        [*mydocker_cmd(), "run", *(["-t"] if tty else []), "--init", "ls", "/proc/1/fd"],
        capture_output=True, timeout=60, env=_env(backend), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [b"0", b"1", b"2"]
