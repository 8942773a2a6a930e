"""``mydocker run -t``: driven through real pseudo-terminals (pexpect), as a user would,
with the CLI on both event loops (hidden ``MYDOCKER_BACKEND``)."""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import signal
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import mydocker_cmd

pexpect = pytest.importorskip("pexpect", reason="pexpect is needed for the terminal tests")

PROMPT = "ctr> "
SH = ["run", "-ti", "-e", f"PS1={PROMPT}", "sh"]


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The event loop the CLI runs on."""
    return request.param


def _env(backend: str) -> dict[str, str]:
    return dict(os.environ, MYDOCKER_BACKEND=backend, TERM="xterm")


@pytest.fixture
def spawn(backend: str) -> Iterator[object]:
    """spawn(args, dimensions=...) -> a pexpect child running ``mydocker ARGS``;
    every child is closed (and so reaped) at the end of the test."""
    children = []

    def _spawn(args: list[str], dimensions: tuple[int, int] = (24, 80), shell: str | None = None) -> object:
        if shell is not None:
            # a wrapper shell: `mydocker` in it stands for the real command line
            cmd = " ".join(shlex.quote(a) for a in mydocker_cmd())
            child = pexpect.spawn(
                "/bin/sh", ["-c", shell.replace("MYDOCKER", cmd)], env=_env(backend),
                dimensions=dimensions, timeout=30,
            )  # fmt: skip
        else:
            exe, *rest = mydocker_cmd()
            child = pexpect.spawn(exe, [*rest, *args], env=_env(backend), dimensions=dimensions, timeout=30)
        children.append(child)
        return child

    yield _spawn
    for child in children:
        child.close(force=True)


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, comm) of every process below ``pid``."""
    parent: dict[int, int] = {}
    comm: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                head, tail = f.read().rsplit(")", 1)
        except OSError:
            continue
        parent[int(entry)] = int(tail.split()[1])
        comm[int(entry)] = head.split("(", 1)[1]
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for child, ppid in parent.items():
            if ppid == p:
                out.append((child, comm[child]))
                todo.append(child)
    return out


def _wait_for_descendant(pid: int, name: str) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for p, comm in _descendants(pid):
            if comm == name:
                return p
        time.sleep(0.02)
    raise AssertionError(f"no {name!r} process appeared below {pid}")


def _wait_raw(child: object, raw: bool = True) -> None:
    """Wait until the outer terminal is (or is no longer) in raw mode."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        # TCGETS on a pty master reads the slave's settings: the outer terminal
        if bool(termios.tcgetattr(child.child_fd)[3] & termios.ICANON) != raw:  # type: ignore[attr-defined]
            return
        time.sleep(0.02)
    raise AssertionError("the terminal mode did not change")


def _wait_inner_raw(pid: int) -> None:
    """Wait until process ``pid`` (in the container) has put its terminal in raw mode."""
    fd = os.open(f"/proc/{pid}/fd/0", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not termios.tcgetattr(fd)[3] & termios.ICANON:
                return
            time.sleep(0.02)
    finally:
        os.close(fd)
    raise AssertionError(f"process {pid} did not put its terminal in raw mode")


def _finish(child: object) -> int:
    child.expect(pexpect.EOF)  # type: ignore[attr-defined]
    child.close()  # type: ignore[attr-defined]
    assert child.signalstatus is None  # type: ignore[attr-defined]
    return child.exitstatus  # type: ignore[attr-defined,no-any-return]


# -- a shell as a user drives it -----------------------------------------------------


@pytest.mark.root
def test_shell_is_pid_1_on_a_pts_and_exit_status_is_kept(spawn) -> None:
    child = spawn(SH)
    child.expect_exact(PROMPT)
    child.sendline("echo pid=$$")
    child.expect(r"pid=(\d+)\r\n")
    assert child.match.group(1) == b"1"
    child.sendline("tty")
    child.expect(r"\r\n(/dev/\S+)\r\n")
    assert re.fullmatch(rb"/dev/pts/\d+", child.match.group(1))
    child.sendline("ps -o pid=,tty=,comm= -p 1")
    child.expect(r"\r\n\s*1 (pts/\d+) +sh\r\n")
    child.expect_exact(PROMPT)
    child.sendline("exit 3")
    assert _finish(child) == 3


@pytest.mark.root
def test_ctrl_d_ends_the_shell(spawn) -> None:
    child = spawn(SH)
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    assert _finish(child) == 0


@pytest.mark.root
def test_window_size_is_the_callers_and_follows_resizes(spawn) -> None:
    child = spawn(SH, dimensions=(31, 97))
    child.expect_exact(PROMPT)
    child.sendline("stty size")
    child.expect(r"\r\n(\d+ \d+)\r\n")
    assert child.match.group(1) == b"31 97"
    child.expect_exact(PROMPT)
    # the resize raises SIGWINCH in mydocker; it may be handled after the next
    # command's bytes arrive, so ask until the new size shows (or give up)
    child.setwinsize(45, 132)
    for _ in range(50):
        child.sendline("stty size")
        child.expect(r"\r\n(\d+ \d+)\r\n")
        size = child.match.group(1)
        child.expect_exact(PROMPT)
        if size == b"45 132":
            break
        time.sleep(0.05)
    assert size == b"45 132"
    child.sendline("exit")
    assert _finish(child) == 0


@pytest.mark.root
def test_ctrl_c_interrupts_the_command_inside_and_the_shell_survives(spawn) -> None:
    child = spawn(SH)
    child.expect_exact(PROMPT)
    child.sendline("sleep 100")
    _wait_for_descendant(child.pid, "sleep")
    child.sendcontrol("c")
    child.expect_exact(PROMPT)
    child.sendline("echo status=$?")
    child.expect(r"status=(\d+)")
    assert child.match.group(1) == b"130"
    child.expect_exact(PROMPT)
    # the shell ignores SIGQUIT on purpose: a typed Ctrl-\ must not end the container
    child.sendcontrol("\\")
    child.sendline("echo still-here")
    child.expect(r"\r\nstill-here\r\n")
    child.sendline("exit 0")
    assert _finish(child) == 0


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.root
def test_ctrl_z_stops_the_command_inside_and_not_mydocker(spawn) -> None:
    # Ctrl-Z is a byte for the container's terminal: its shell stops the foreground
    # job. Were it a signal for mydocker instead, mydocker would stop and relay
    # nothing more.
    child = spawn(SH)
    child.expect_exact(PROMPT)
    _wait_raw(child)
    child.sendline("sleep 100")
    sleep = _wait_for_descendant(child.pid, "sleep")
    child.sendcontrol("z")
    child.expect(r"Stopped +sleep 100")
    child.expect_exact(PROMPT)
    assert _state(sleep) == "T"
    child.sendline("fg")
    deadline = time.monotonic() + 20
    while _state(sleep) == "T":  # SIGCONT from the shell's fg
        assert time.monotonic() < deadline, "fg did not resume the job"
        time.sleep(0.02)
    child.sendcontrol("c")
    child.expect_exact(PROMPT)
    child.sendline("echo status=$?")
    child.expect(r"status=(\d+)")
    assert child.match.group(1) == b"130"
    child.sendline("exit 0")
    assert _finish(child) == 0


@pytest.mark.root
def test_top_runs(spawn) -> None:
    child = spawn(SH, dimensions=(30, 100))
    child.expect_exact(PROMPT)
    child.sendline("top -b -n1 | head -12")
    child.expect(r"load average")
    child.expect(r"PID USER")
    child.expect_exact(PROMPT)
    # full-screen mode: cursor addressing on the container's terminal, then back
    child.sendline("top -n1")
    child.expect(r"\x1b\[(\d+;\d+)?H")  # cursor addressing
    child.expect(r"load average")
    child.expect_exact(PROMPT)
    child.sendline("exit 0")
    assert _finish(child) == 0


@pytest.mark.root
@pytest.mark.skipif(
    not Path("/usr/bin/vi").exists(), reason="no /usr/bin/vi (Debian package vim-tiny or vim)"
)
def test_vi_draws_and_quits(spawn) -> None:
    child = spawn(SH, dimensions=(30, 100))
    child.expect_exact(PROMPT)
    child.sendline("vi -n")  # -n: no swap file (the container shares the host /tmp)
    child.expect(r"\x1b\[")  # vi draws its screen
    vi = _wait_for_descendant(child.pid, "vi")
    # typed too early, ":q!" could be flushed when vi switches its terminal to raw
    _wait_inner_raw(vi)
    child.send(":q!\r")
    child.expect_exact(PROMPT)
    child.sendline("exit 0")
    assert _finish(child) == 0


# -- the outer terminal is always restored --------------------------------------------

WRAPPED = "stty -g; MYDOCKER run -ti {args}; echo rc=$?; stty -g"


def _stty_before(child: object) -> bytes:
    child.expect(r"([0-9a-f]+(?::[0-9a-f]+)+)\r\n")  # type: ignore[attr-defined]
    return child.match.group(1)  # type: ignore[attr-defined,no-any-return]


def _stty_after(child: object) -> tuple[int, bytes]:
    child.expect(r"rc=(\d+)\r\n([0-9a-f]+(?::[0-9a-f]+)+)\r\n")  # type: ignore[attr-defined]
    rc, after = child.match.groups()  # type: ignore[attr-defined]
    child.expect(pexpect.EOF)  # type: ignore[attr-defined]
    return int(rc), after


@pytest.mark.root
def test_terminal_restored_after_normal_exit(spawn) -> None:
    child = spawn([], shell=WRAPPED.format(args=f"-e 'PS1={PROMPT}' sh"))
    before = _stty_before(child)
    child.expect_exact(PROMPT)
    _wait_raw(child)
    child.sendline("exit 7")
    rc, after = _stty_after(child)
    assert (rc, after) == (7, before)


@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_terminal_restored_when_mydocker_gets_sigterm_or_sighup(spawn, sig: int) -> None:
    child = spawn([], shell=WRAPPED.format(args=f"-e 'PS1={PROMPT}' sh"))
    before = _stty_before(child)
    child.expect_exact(PROMPT)
    _wait_raw(child)
    mydocker = next(p for p, comm in _descendants(child.pid) if comm.startswith("mydocker"))
    os.kill(mydocker, sig)
    rc, after = _stty_after(child)
    # an interactive sh does not act on SIGTERM/SIGHUP, so mydocker kills the container
    assert (rc, after) == (128 + signal.SIGKILL, before)


@pytest.mark.root
def test_tty_without_i_leaves_ctrl_c_to_mydocker(spawn) -> None:
    # no -i: the terminal stays cooked, Ctrl-C is a SIGINT to mydocker, forwarded
    child = spawn(["run", "-t", "sleep", "100"])
    _wait_for_descendant(child.pid, "sleep")
    assert termios.tcgetattr(child.child_fd)[3] & termios.ICANON
    child.sendcontrol("c")
    child.expect("press Ctrl-C again")
    child.sendcontrol("c")
    child.expect("second interrupt")
    assert _finish(child) == 128 + signal.SIGKILL


@pytest.mark.root
def test_ctrl_c_with_the_host_pid_namespace_is_an_ordinary_interrupt(spawn) -> None:
    child = spawn(["run", "-ti", "--pid", "host", "sleep", "100"])
    _wait_for_descendant(child.pid, "sleep")
    _wait_raw(child)
    child.sendcontrol("c")
    child.expect(pexpect.EOF)
    assert b"press Ctrl-C" not in child.before
    child.close()
    assert child.exitstatus == 128 + signal.SIGINT


@pytest.mark.root
def test_terminal_restored_after_an_exec_error(spawn) -> None:
    child = spawn([], shell=WRAPPED.format(args="/no/such/program"))
    before = _stty_before(child)
    child.expect("not found")
    rc, after = _stty_after(child)
    assert (rc, after) == (127, before)


@pytest.mark.root
def test_ctrl_backslash_kills_a_pid_1_without_handlers(spawn) -> None:
    child = spawn([], shell=WRAPPED.format(args="sleep 100"))
    before = _stty_before(child)
    _wait_for_descendant(child.pid, "sleep")
    _wait_raw(child)
    child.sendcontrol("\\")
    rc, after = _stty_after(child)
    assert (rc, after) == (128 + signal.SIGKILL, before)


@pytest.mark.root
def test_second_ctrl_c_kills_a_pid_1_without_handlers(spawn) -> None:
    child = spawn([], shell=WRAPPED.format(args="sleep 100"))
    before = _stty_before(child)
    _wait_for_descendant(child.pid, "sleep")
    _wait_raw(child)
    child.sendcontrol("c")
    child.expect("press Ctrl-C again")
    child.sendcontrol("c")
    child.expect("second interrupt")
    rc, after = _stty_after(child)
    assert (rc, after) == (128 + signal.SIGKILL, before)


# -- --init with a terminal -------------------------------------------------------------


@pytest.mark.root
def test_init_gives_the_command_the_terminal(spawn) -> None:
    child = spawn(["run", "-ti", "--init", "-e", f"PS1={PROMPT}", "sh"])
    child.expect_exact(PROMPT)
    child.sendline("echo pid=$$; ps -o pid=,comm= -p 1")
    child.expect(r"pid=(\d+)\r\n\s*1 (\S+)\r\n")
    assert child.match.group(1) != b"1"  # the shell is not PID 1: init is
    # job control works under init (a shell outside the foreground group would stop)
    child.sendline("sleep 100")
    _wait_for_descendant(child.pid, "sleep")
    child.sendcontrol("c")
    child.expect_exact(PROMPT)
    child.sendline("exit 4")
    assert _finish(child) == 4


@pytest.mark.root
def test_init_passes_ctrl_c_to_the_command(spawn) -> None:
    child = spawn(["run", "-ti", "--init", "sleep", "100"])
    _wait_for_descendant(child.pid, "sleep")
    _wait_raw(child)
    child.sendcontrol("c")
    assert _finish(child) == 128 + signal.SIGINT


# -- -t without a terminal on our side (CI) -------------------------------------------------


def _run(
    backend: str, *args: str, stdin: object = subprocess.DEVNULL, **kw: object
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*mydocker_cmd(), *args], stdin=stdin, capture_output=True, timeout=60, env=_env(backend), **kw
    )  # type: ignore[call-overload,no-any-return]


@pytest.mark.root
def test_tty_without_a_terminal_here(backend: str) -> None:
    r = _run(backend, "run", "-t", "sh", "-c", "tty; stty size; echo done")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split(b"\r\n")
    assert re.fullmatch(rb"/dev/pts/\d+", lines[0])
    assert lines[1] == b"24 80"  # the default size
    assert lines[2] == b"done"
    assert r.stderr == b""


@pytest.mark.root
def test_term_is_set_with_a_tty_and_absent_without(backend: str) -> None:
    # docker's TERM=xterm with -t; without it, none (not even the caller's: _env sets one)
    script = 'echo "TERM=${TERM-unset}"'
    r = _run(backend, "run", "-t", "sh", "-c", script)
    assert (r.returncode, r.stdout) == (0, b"TERM=xterm\r\n"), r.stderr
    r = _run(backend, "run", "sh", "-c", script)
    assert (r.returncode, r.stdout) == (0, b"TERM=unset\n"), r.stderr


@pytest.mark.root
def test_all_output_is_drained_before_mydocker_exits(backend: str) -> None:
    r = _run(backend, "run", "-t", "sh", "-c", "seq 1 30000; exit 9")
    assert r.returncode == 9
    assert r.stdout.split(b"\r\n")[-2:] == [b"30000", b""]
    assert len(r.stdout.split(b"\r\n")) == 30001


@pytest.mark.root
def test_piped_input_to_a_tty_ends_with_eof(backend: str) -> None:
    r = _run(backend, "run", "-ti", "sh", stdin=None, input=b"echo hi-$((1+2))\nexit 4\n")
    assert r.returncode == 4
    assert b"hi-3\r\n" in r.stdout  # the typed line echoes as "hi-$((1+2))"
    # without an explicit exit, end of input is a Ctrl-D (even after a partial line)
    r = _run(backend, "run", "-ti", "cat", stdin=None, input=b"abc\ndef")
    assert r.returncode == 0
    assert r.stdout.count(b"abc") == 2  # echoed by the pty, then by cat


@pytest.mark.root
def test_tty_stdin_from_a_regular_file_and_dev_null(backend: str, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes(b"from-a-file\n")
    with open(src, "rb") as f:
        r = _run(backend, "run", "-ti", "cat", stdin=f)
    assert r.returncode == 0
    assert r.stdout.count(b"from-a-file") == 2
    r = _run(backend, "run", "-ti", "cat", stdin=subprocess.DEVNULL)
    assert r.returncode == 0


@pytest.mark.root
def test_tty_output_to_a_regular_file(backend: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with open(out, "wb") as f:
        r = subprocess.run(
            [*mydocker_cmd(), "run", "-t", "sh", "-c", "seq 1 5000"],
            stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.PIPE, timeout=60, env=_env(backend),
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert out.read_bytes().split(b"\r\n")[-2] == b"5000"


@pytest.mark.root
def test_shared_pipes_are_left_blocking(backend: str) -> None:
    """mydocker must not leave O_NONBLOCK on stdin/stdout it shares with its caller."""
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    try:
        proc = subprocess.Popen(
            [*mydocker_cmd(), "run", "-ti", "cat"], stdin=r_in, stdout=w_out, stderr=subprocess.DEVNULL,
            env=_env(backend),
        )  # fmt: skip
        os.close(r_in)
        os.close(w_out)
        os.write(w_in, b"ping\n")
        got = b""
        while b"ping\r\nping\r\n" not in got:
            chunk = os.read(r_out, 4096)
            assert chunk, got
            got += chunk
        # while mydocker runs, our ends of the same pipes are still blocking
        assert not fcntl.fcntl(w_in, fcntl.F_GETFL) & os.O_NONBLOCK
        assert not fcntl.fcntl(r_out, fcntl.F_GETFL) & os.O_NONBLOCK
        os.close(w_in)
        w_in = -1
        assert proc.wait(timeout=30) == 0
    finally:
        for fd in (w_in, r_out):
            if fd >= 0:
                os.close(fd)


@pytest.mark.root
def test_output_to_a_closed_pipe_ends_the_container(backend: str) -> None:
    # `mydocker run -t yes | head -1`: `yes` would run for ever; mydocker kills it
    # once nobody reads its output, and says nothing about the broken pipe.
    mydocker = subprocess.Popen(
        [*mydocker_cmd(), "run", "-t", "yes"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(backend),
    )  # fmt: skip
    assert mydocker.stdout is not None and mydocker.stderr is not None
    try:
        head = subprocess.run(["head", "-1"], stdin=mydocker.stdout, capture_output=True, timeout=60)
        mydocker.stdout.close()  # head has gone: now nobody reads
        status = mydocker.wait(timeout=30)
        err = mydocker.stderr.read()
    finally:
        if mydocker.poll() is None:
            mydocker.kill()
            mydocker.wait()
        mydocker.stdout.close()
        mydocker.stderr.close()
    assert head.stdout == b"y\r\n"
    assert (status, err) == (128 + signal.SIGKILL, b"")


# -- the pieces, without a container ------------------------------------------------------


def test_raw_mode_is_restored_after_an_exception() -> None:
    from supervisor.cli.tty import raw_mode

    master, slave = os.openpty()
    try:
        saved = termios.tcgetattr(slave)
        with pytest.raises(RuntimeError), raw_mode(slave) as raw:
            assert raw
            lflag = termios.tcgetattr(slave)[3]
            assert not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)
            assert not termios.tcgetattr(slave)[1] & termios.OPOST
            raise RuntimeError
        assert termios.tcgetattr(slave) == saved
    finally:
        os.close(master)
        os.close(slave)


def test_raw_mode_on_something_that_is_not_a_terminal_does_nothing() -> None:
    from supervisor.cli.tty import raw_mode

    r, w = os.pipe()
    try:
        with raw_mode(r) as raw:
            assert not raw
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.anyio
async def test_raw_mode_is_restored_on_cancellation(anyio_backend: str) -> None:
    import anyio

    from supervisor.cli.tty import raw_mode

    master, slave = os.openpty()
    try:
        saved = termios.tcgetattr(slave)
        with anyio.move_on_after(0.05):
            with raw_mode(slave):
                await anyio.sleep_forever()
        assert termios.tcgetattr(slave) == saved
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.anyio
async def test_stdin_reader_handles_every_kind_of_stdin(anyio_backend: str, tmp_path: Path) -> None:
    from supervisor.cli.tty import StdinReader

    async def read_all(fd: int) -> tuple[str, bytes]:
        reader, got = StdinReader(fd), b""
        while chunk := await reader.read():
            got += chunk
        return reader.kind, got

    src = tmp_path / "f"
    src.write_bytes(b"file data")
    for path, expected in ((src, b"file data"), (Path(os.devnull), b"")):
        fd = os.open(path, os.O_RDONLY)
        try:
            assert await read_all(fd) == ("file", expected)  # not pollable: a worker thread
        finally:
            os.close(fd)
    r, w = os.pipe()
    os.write(w, b"piped")
    os.close(w)
    try:
        assert await read_all(r) == ("fifo", b"piped")
        assert os.get_blocking(r)  # the shared fd was never made non-blocking
    finally:
        os.close(r)
    assert await read_all(r) == ("closed", b"")  # a closed stdin is end of input


@pytest.mark.anyio
async def test_stdout_writer_leaves_a_shared_pipe_blocking(anyio_backend: str) -> None:
    import anyio

    from supervisor.cli.tty import StdoutWriter

    r, w = os.pipe()
    data = os.urandom(1 << 20)  # far more than a pipe holds: the writer must wait
    try:
        writer = StdoutWriter(w)
        assert writer.kind == "fifo"
        received = bytearray()

        def drain() -> None:
            while len(received) < len(data):
                received.extend(os.read(r, 65536))

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, drain)
            await writer.write(data)
        assert bytes(received) == data
        assert os.get_blocking(w)
        writer.close()
        os.close(r)
        r = -1
        writer = StdoutWriter(w)
        with pytest.raises(BrokenPipeError):
            await writer.write(b"nobody reads this")
        writer.close()
    finally:
        os.close(w)
        if r >= 0:
            os.close(r)


@pytest.mark.root
def test_tty_over_a_socket(backend: str) -> None:
    """A socket as stdin/stdout cannot be re-opened: it is polled, then written in small chunks."""
    import socket

    ours, theirs = socket.socketpair()
    with ours:
        with theirs:
            proc = subprocess.Popen(
                [*mydocker_cmd(), "run", "-ti", "sh", "-c", "read x; echo got-$x; seq 1 20000 | tail -1"],
                stdin=theirs, stdout=theirs, env=_env(backend),
            )  # fmt: skip
        ours.sendall(b"hello\n")
        out = b""
        while chunk := ours.recv(65536):
            out += chunk
        assert proc.wait(timeout=30) == 0
    assert out.endswith(b"got-hello\r\n20000\r\n")


@pytest.mark.root
@pytest.mark.anyio
async def test_run_tty_in_process_leaks_nothing(anyio_backend: str) -> None:
    """The tty path on this very event loop, with stdout a pipe (re-opened privately);
    host_unchanged checks that no fd or child is left behind."""
    from supervisor.cli.tty import run_tty
    from supervisor.container import start_container
    from supervisor.spec import ContainerSpec

    spec = ContainerSpec(command=("sh", "-c", "echo in-process; exit 6"), tty=True)

    def start(stdin: object, stdout: object, stderr: object, winsize: tuple[int, int] | None) -> object:
        return start_container(spec, stdin=stdin, winsize=winsize, grace=1)  # type: ignore[arg-type]

    r, w = os.pipe()
    saved = os.dup(1)
    try:
        os.dup2(w, 1)
        status = await run_tty(start, interactive=False)  # type: ignore[arg-type]
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(w)
    try:
        # not read to EOF: a spawn helper started meanwhile inherited fd 1 too
        os.set_blocking(r, False)
        out = os.read(r, 4096)
    finally:
        os.close(r)
    assert (status, out) == (6, b"in-process\r\n")


@pytest.mark.root
@pytest.mark.parametrize("tty", ["-ti", "-i"])
def test_closed_stdin_and_stdout_are_like_dev_null(backend: str, tty: str) -> None:
    # a closed fd 0/1 must not be taken over by one of mydocker's own fds (the
    # event loop's, the pty) and handed to the container as its stdio
    md = shlex.join(mydocker_cmd())
    r = subprocess.run(
        ["sh", "-c", f"{md} run {tty} sh -c 'cat; echo out; echo err >&2' <&- ; echo rc=$?"],
        capture_output=True, timeout=60, env=_env(backend),
    )  # fmt: skip
    assert r.stdout.replace(b"\r", b"").splitlines() == [b"out", *([b"err"] if tty == "-ti" else []), b"rc=0"]
    r = subprocess.run(
        ["sh", "-c", f"{md} run {tty} sh -c 'echo out; exit 3' >&- ; echo rc=$? >&2"],
        capture_output=True, timeout=60, env=_env(backend), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert (r.stdout, r.stderr) == (b"", b"rc=3\n")
