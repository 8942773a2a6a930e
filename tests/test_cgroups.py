"""Resource limits on real cgroups: memory (OOM → 137), pids, CPU quota, cpuset, the
kill-all at the end, and no cgroup directory left behind after any kind of end.

These use the host's real cgroups (root only). The conftest leak check also fails
any test after which a ``mydocker-*`` cgroup of ours remains.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import anyio
import pytest

from supervisor import (
    ContainerFailedError,
    Limits,
    SpecError,
    StartError,
    cgroups,
    open_container,
    run_container,
)

from .conftest import mydocker_cmd, run_cli

pytestmark = pytest.mark.root

PY = sys.executable
MEMORY_HOG = "b = []\nwhile True: b.append(b'x' * (1 << 20))"


def our_dirs() -> list[str]:
    """The container cgroups of this process below our own cgroups."""
    layout = cgroups.current_layout()
    token = cgroups.owner().token
    return [
        f"{parent}/{name}"
        for parent in cgroups.parents_of(layout)
        for name in os.listdir(parent)
        if name.startswith("mydocker-") and name.endswith(f"-{token}")
    ]


def other_dirs() -> list[str]:
    """The container cgroups of other mydocker processes (live or dead) below ours."""
    layout = cgroups.current_layout()
    token = cgroups.owner().token
    return [
        f"{parent}/{name}"
        for parent in cgroups.parents_of(layout)
        for name in os.listdir(parent)
        if name.startswith("mydocker-")
        and not name.startswith("mydocker-owner-")
        and not name.endswith(token)
    ]


def gone_or_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_until(check: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return bool(check())  # type: ignore[operator]


# ---------------------------------------------------------------- CLI


def test_memory_hog_is_oom_killed_137_and_said_so() -> None:
    r = run_cli("run", "-m", "32m", PY, "-c", MEMORY_HOG)
    assert r.returncode == 137, r.stderr
    assert b"out of memory" in r.stderr


def test_fork_loop_stays_under_pids_limit() -> None:
    # PID 1 tries to fork 40 sleepers; with --pids-limit 16 at most 15 can join it.
    script = (
        "import os, time\n"
        "ok = 0\n"
        "for _ in range(40):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        continue\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    ok += 1\n"
        "print(ok, len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
    )
    r = run_cli("run", "--pids-limit", "16", PY, "-c", script)
    assert r.returncode == 0, r.stderr
    forked, visible = map(int, r.stdout.split())
    assert 0 < forked <= 15
    assert visible <= 16


def test_cpus_quarter_gets_about_a_quarter_of_a_cpu() -> None:
    # CPU time over wall time of a busy loop: a ratio, no absolute duration.
    script = (
        "import time\n"
        "w0, c0 = time.monotonic(), time.process_time()\n"
        "while time.monotonic() - w0 < 2.0:\n"
        "    pass\n"
        "print((time.process_time() - c0) / (time.monotonic() - w0))\n"
    )
    r = run_cli("run", "--cpus", "0.25", PY, "-c", script)
    assert r.returncode == 0, r.stderr
    ratio = float(r.stdout)
    assert 0.05 < ratio < 0.45, ratio


@pytest.mark.parametrize("cpu", ["0", "1"])
def test_cpuset_pins(cpu: str) -> None:
    r = run_cli("run", "--cpuset-cpus", cpu, "grep", "Cpus_allowed_list", "/proc/self/status")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1].decode() == cpu


def test_limits_land_in_the_containers_own_cgroups() -> None:
    r = run_cli(
        "run",
        "--cgroupns",
        "host",  # the host's view of the paths (a cgroup namespace shows its own root as /)
        "-m",
        "64m",
        "--cpus",
        "0.5",
        "--cpu-shares",
        "512",
        "--pids-limit",
        "20",
        "cat",
        "/proc/self/cgroup",
    )
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(":", 2)[1:] for line in r.stdout.decode().splitlines())
    for key in ("", "memory", "pids"):
        assert "/mydocker-" in lines[key]
    cpu_key = next(k for k in lines if "cpu" in k.split(",") and "cpuset" not in k)
    assert "/mydocker-" in lines[cpu_key]
    assert "/mydocker-" not in lines.get("cpuset", "/")  # no hierarchy without a limit in it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "0"], "minimum is 6m"),
        (["-m", "12q"], "invalid memory limit"),
        (["--memory-swap", "1g"], "needs --memory"),
        (["--cpus", "-1"], "--cpus"),
        (["--cpus", "1000"], "CPU(s)"),
        (["--cpuset-cpus", "99"], "CPU 99 is not available"),
        (["--cpu-shares", "1"], "--cpu-shares"),
        (["--pids-limit", "0"], "--pids-limit"),
        (["--cgroup-parent", "/no/such/parent"], "does not exist"),
        (["--cgroup-parent", "../up"], "invalid cgroup parent"),
    ],
)
def test_bad_limits_are_one_line_125_before_anything_starts(args: list[str], message: str) -> None:
    r = run_cli("run", *args, "sh", "-c", "echo started")
    assert r.returncode == 125
    assert r.stdout == b""  # the command never ran
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mydocker: ") and message in lines[0], r.stderr


def test_failed_exec_with_limits_is_127_and_leaves_no_cgroup() -> None:
    # The conftest leak check fails this test if a cgroup of the dead CLI remains.
    r = run_cli("run", "-m", "32m", "--memory-swap", "-1", "--pids-limit", "8", "/nonexistent")
    assert r.returncode == 127, r.stderr


def test_daemon_that_escaped_pid_1_dies_with_the_container() -> None:
    # With the host's PID namespace nothing kills a double-forked daemon when PID 1
    # exits, except the container's cgroup (cgroup.kill): even without limits.
    r = run_cli("run", "--pid", "host", "sh", "-c", "(setsid sleep 1000 >/dev/null 2>&1 & echo $!)")
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout)
    try:
        assert wait_until(lambda: gone_or_zombie(pid))
    finally:
        if not gone_or_zombie(pid):
            os.kill(pid, signal.SIGKILL)


def test_leftovers_of_a_killed_mydocker_are_cleaned_by_the_next_run() -> None:
    # mydocker SIGKILLed: PID 1 dies with it (PR_SET_PDEATHSIG) but a --pid host
    # daemon lives on in the container's cgroups, which nobody removed.
    proc = subprocess.Popen(
        [
            *mydocker_cmd(),
            "run",
            "--pid",
            "host",
            "-m",
            "64m",
            "sh",
            "-c",
            "setsid sleep 1000 & echo $!; sleep 1000",
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    daemon = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    proc.stdout.close()
    try:
        left = other_dirs()
        assert left and any("/memory/" in d for d in left)  # v2 and the v1 memory cgroup
        assert not gone_or_zombie(daemon)
        r = run_cli("run", "true")
        assert r.returncode == 0, r.stderr
        assert not [d for d in left if os.path.exists(d)]
        assert wait_until(lambda: gone_or_zombie(daemon))
    finally:
        if not gone_or_zombie(daemon):
            os.kill(daemon, signal.SIGKILL)


def test_cgroup_parent_places_the_container_below_it() -> None:
    layout = cgroups.current_layout()
    made = []
    try:
        for h in [layout.v2, layout.v1_for("pids")]:
            if h is None:
                continue
            parent = h.parent_dir("mydocker-test-parent")
            assert parent is not None
            os.mkdir(parent)
            made.append(parent)
        r = run_cli(
            "run",
            "--cgroupns",
            "host",
            "--cgroup-parent",
            "mydocker-test-parent",
            "--pids-limit",
            "8",
            "cat",
            "/proc/self/cgroup",
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.count(b"/mydocker-test-parent/mydocker-") == len(made)
        for parent in made:
            assert [n for n in os.listdir(parent) if n.startswith("mydocker-")] == []
    finally:
        for parent in made:
            os.rmdir(parent)


# ---------------------------------------------------------------- API (both backends)


@pytest.mark.anyio
async def test_api_reports_oom(anyio_backend: str) -> None:
    result = await run_container([PY, "-c", MEMORY_HOG], check=False, limits=Limits(memory=32 << 20))
    assert (result.returncode, result.oom_killed) == (137, True)
    with pytest.raises(ContainerFailedError, match="out of memory") as err:
        await run_container([PY, "-c", MEMORY_HOG], limits={"memory": "32m"})
    assert err.value.oom_killed
    fine = await run_container(["true"], limits=Limits(memory=32 << 20))
    assert not fine.oom_killed


@pytest.mark.anyio
async def test_api_cancelled_container_leaves_no_cgroup(anyio_backend: str) -> None:
    limits = Limits(memory=64 << 20, pids=32, cpus=1)
    with anyio.CancelScope() as scope:
        async with await open_container(["sleep", "100"], limits=limits, grace=0.1) as c:
            dirs = c.cgroup.dirs
            assert len(dirs) >= 3 and all(os.path.isdir(d) for d in dirs)
            scope.cancel()
            await c.wait()
    assert c.returncode == 128 + signal.SIGKILL
    assert not [d for d in dirs if os.path.exists(d)]


@pytest.mark.anyio
async def test_api_daemon_escaping_pid_1_is_killed(anyio_backend: str) -> None:
    result = await run_container(
        ["sh", "-c", "(setsid sleep 1000 >/dev/null 2>&1 & echo $!)"],
        namespaces={"mount", "uts", "ipc", "net"},
    )
    pid = int(result.stdout)
    try:
        assert wait_until(lambda: gone_or_zombie(pid))
    finally:
        if not gone_or_zombie(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.anyio
async def test_api_failed_placement_is_a_start_error_leaving_nothing(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: the child cannot join its v1 cgroup (it writes itself into
    # cgroup.procs as its first step). It must never run the command.
    real = cgroups.ContainerCgroup.join_files

    def missing(self: cgroups.ContainerCgroup) -> tuple[str, ...]:
        return tuple(f"{path}.missing" for path in real(self))

    monkeypatch.setattr(cgroups.ContainerCgroup, "join_files", missing)
    before = our_dirs()
    with pytest.raises(StartError, match="enter its cgroups") as err:
        await run_container(["sh", "-c", "echo ran > /dev/stderr"], limits=Limits(pids=10))
    assert err.value.errno == errno.ENOENT
    assert our_dirs() == before


@pytest.mark.anyio
async def test_api_bad_limits_raise_before_anything(anyio_backend: str) -> None:
    with pytest.raises(SpecError, match="CPU 99"):
        await run_container(["true"], limits=Limits(cpuset_cpus="99"))
    with pytest.raises(SpecError, match="minimum"):
        await run_container(["true"], limits={"memory": 1})


@pytest.mark.anyio
async def test_api_writes_only_inside_the_containers_own_cgroups(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[str] = []
    real_write = cgroups.CgroupFS.write

    def record(self: cgroups.CgroupFS, path: str, value: str) -> None:
        written.append(path)
        real_write(self, path, value)

    monkeypatch.setattr(cgroups.CgroupFS, "write", record)
    limits = Limits(memory=64 << 20, cpus=0.5, cpu_shares=512, cpuset_cpus="0", pids=16)
    async with await open_container(["sleep", "100"], limits=limits, grace=0) as c:
        dirs = c.cgroup.dirs
        c.kill()
    assert written and len(dirs) == 5  # v2 + memory, cpu, cpuset, pids
    for path in written:
        assert os.path.dirname(path) in dirs, path
        assert os.path.basename(os.path.dirname(path)).startswith("mydocker-")


@pytest.mark.anyio
async def test_api_cancelled_while_starting_leaves_no_cgroup(anyio_backend: str) -> None:
    before = our_dirs()
    for _ in range(5):
        with anyio.CancelScope() as scope:
            scope.cancel()  # cancelled at the first checkpoint inside the start
            await run_container(["sleep", "100"], limits=Limits(memory=64 << 20, pids=8))
        assert our_dirs() == before


def test_spawn_helper_removes_the_cgroups_of_a_sigkilled_service() -> None:
    # A service embedding the library is SIGKILLed: its containers die with it, and
    # its spawn helper, on the way out, kills what escaped and removes the cgroups.
    code = (
        "import anyio, sys\n"
        "from supervisor import open_container, DEVNULL\n"
        "async def main():\n"
        "    c = await open_container(['sh', '-c', 'setsid sleep 1000 & echo $!; sleep 1000'],\n"
        "        stdin=DEVNULL, namespaces={'mount', 'uts', 'ipc', 'net'}, limits={'memory': '64m'})\n"
        "    sys.stdout.write((await c.stdout.receive()).decode())\n"
        "    sys.stdout.flush()\n"
        "    await anyio.sleep_forever()\n"
        "anyio.run(main)\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, cwd=repo)
    assert proc.stdout is not None
    daemon = int(proc.stdout.readline())
    try:
        left = other_dirs()
        assert len(left) == 2  # v2 and the v1 memory cgroup
        proc.kill()
        proc.wait()
        assert wait_until(lambda: not [d for d in left if os.path.exists(d)])
        assert wait_until(lambda: gone_or_zombie(daemon))
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if not gone_or_zombie(daemon):
            os.kill(daemon, signal.SIGKILL)
