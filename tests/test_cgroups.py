"""Resource limits on real cgroups: memory (OOM → 137), pids, CPU quota, cpuset, the
kill-all at the end, and no cgroup directory left behind after any kind of end.

These use the host's real cgroups (root only). The conftest leak check also fails
any test after which a ``mydocker-*`` cgroup of ours remains.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

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

from .conftest import mydocker_cmd, processes_with_argv, run_cli

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
        if name.startswith("mydocker-")
        and not name.startswith("mydocker-owner-")  # our marker: there while we live
        and name.endswith(f"-{token}")
    ]


def other_dirs(cgroup_parent: str | None = None) -> list[str]:
    """The container cgroups of other mydocker processes (live or dead) below ours,
    or below ``cgroup_parent``."""
    layout = cgroups.current_layout()
    token = cgroups.owner().token
    return [
        f"{parent}/{name}"
        for parent in cgroups.parents_of(layout, cgroup_parent)
        for name in os.listdir(parent)
        if name.startswith("mydocker-")
        and not name.startswith("mydocker-owner-")
        and not name.endswith(token)
    ]


def hierarchies_for(*controllers: str) -> set[cgroups.Hierarchy]:
    """The hierarchies in which a container whose limits need ``controllers`` gets a
    cgroup, on this host's layout: cgroup v2 where it is mounted, and the v1
    hierarchy of each controller bound to one (without cgroup v2, devices' too)."""
    layout = cgroups.current_layout()
    found = {h for c in controllers if (h := layout.v1_for(c)) is not None}
    if layout.v2 is not None:
        found.add(layout.v2)
    elif (devices := layout.v1_for("devices")) is not None:
        found.add(devices)
    return found


def cgroup_dir(pid: int, controller: str) -> str:
    """The directory of process ``pid``'s cgroup with ``controller``'s files: in the v1
    hierarchy the controller is bound to, else in cgroup v2."""
    layout = cgroups.current_layout()
    with open(f"/proc/{pid}/cgroup") as f:
        v2_path, v1_paths = cgroups.parse_proc_cgroup(f.read())
    h = layout.v1_for(controller)
    if h is not None:
        path = v1_paths[h.controllers]
    else:
        assert layout.v2 is not None and v2_path is not None, f"no cgroup of {pid} has {controller}"
        h, path = layout.v2, v2_path
    d = h.dir_of(path)
    assert d is not None, (h, path)
    return d


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
    layout = cgroups.current_layout()
    v2_path, v1_paths = cgroups.parse_proc_cgroup(r.stdout.decode())
    if layout.v2 is not None:
        assert v2_path is not None and "/mydocker-" in v2_path  # every container has one
    for controller in ("memory", "cpu", "pids"):
        h = layout.v1_for(controller)
        path = v1_paths[h.controllers] if h is not None else v2_path
        assert path is not None and "/mydocker-" in path, (controller, path)
    cpuset = layout.v1_for("cpuset")
    if cpuset is not None:  # no v1 hierarchy without a limit in it
        assert "/mydocker-" not in v1_paths[cpuset.controllers]


def test_the_kernel_holds_the_limits_while_the_container_runs() -> None:
    # Read back, from the cgroup files of this host's layout (the v1 hierarchy a
    # controller is bound to, else cgroup v2), the values the kernel enforces.
    cpu = min(os.sched_getaffinity(0))
    v1 = {
        "memory": {"memory.limit_in_bytes": str(64 << 20)},
        "cpu": {"cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "100000", "cpu.shares": "512"},
        "cpuset": {"cpuset.cpus": str(cpu)},
        "pids": {"pids.max": "20"},
    }
    v2 = {
        "memory": {"memory.max": str(64 << 20)},
        "cpu": {"cpu.max": "50000 100000", "cpu.weight": "20"},  # 512 shares, as runc maps them
        "cpuset": {"cpuset.cpus": str(cpu)},
        "pids": {"pids.max": "20"},
    }
    # with swap accounting (the file exists), swap is limited by default as docker does:
    # memory plus swap twice the memory limit
    swap = {"memory.memsw.limit_in_bytes": str(128 << 20), "memory.swap.max": str(64 << 20)}
    argv = ["sleep", f"1000.{os.getpid()}{time.monotonic_ns() % 1_000_000:06d}"]  # no other process's
    proc = subprocess.Popen(
        [*mydocker_cmd(), "run", "-m", "64m", "--cpus", "0.5", "--cpu-shares", "512",
         "--cpuset-cpus", str(cpu), "--pids-limit", "20", *argv],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    layout = cgroups.current_layout()
    try:
        assert wait_until(lambda: processes_with_argv(argv)), "the container never ran"
        [pid] = processes_with_argv(argv)
        for controller in ("memory", "cpu", "cpuset", "pids"):
            d = cgroup_dir(pid, controller)
            assert os.path.basename(d).startswith("mydocker-"), d
            files = dict((v1 if layout.v1_for(controller) is not None else v2)[controller])
            if controller == "memory":
                files.update((f, v) for f, v in swap.items() if os.path.exists(os.path.join(d, f)))
            got = {}
            for name in files:
                with open(os.path.join(d, name)) as f:
                    got[name] = f.read().strip()
            assert got == files, controller
    finally:
        proc.send_signal(signal.SIGTERM)  # sleep has no handler: killed at once
        status = proc.wait(timeout=30)
        err = proc.stderr.read()
        proc.stderr.close()
    assert status == 128 + signal.SIGKILL, err


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


@pytest.mark.parametrize(
    ("flag", "value", "controller"), [("-m", "64m", "memory"), ("--pids-limit", "8", "pids")]
)
def test_a_limit_pure_v2_cannot_enforce_is_one_line_and_125(flag: str, value: str, controller: str) -> None:
    # In a mount namespace without the v1 hierarchies, a hybrid host looks like a
    # pure cgroup v2 one whose hierarchy lacks the controllers bound to v1: the limit
    # cannot be enforced, and nothing may start without it.
    layout = cgroups.current_layout()
    if layout.v2 is None or layout.v1_for(controller) is None:
        pytest.skip(f"needs a hybrid host, with {controller} bound to a v1 hierarchy")
    umount = "".join(f"umount {shlex.quote(h.mountpoint)} && " for h in layout.v1)
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{umount}exec "$@"', "sh",
         *mydocker_cmd(), "run", flag, value, "sh", "-c", "echo started"],
        capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 125, r.stderr
    assert r.stdout == b""  # the command never ran
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mydocker: "), r.stderr
    assert f"the cgroup v2 '{controller}' controller" in lines[0], lines[0]


def test_failed_exec_with_limits_is_127_and_leaves_no_cgroup() -> None:
    # The conftest leak check fails this test if a cgroup of the dead CLI remains.
    r = run_cli("run", "-m", "32m", "--memory-swap", "-1", "--pids-limit", "8", "/nonexistent")
    assert r.returncode == 127, r.stderr


@pytest.mark.orphans
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


@pytest.mark.orphans
def test_leftovers_of_a_killed_mydocker_are_cleaned_at_once(cgroup_parent: str) -> None:
    # mydocker SIGKILLed: PID 1 dies with it (PR_SET_PDEATHSIG) but a --pid host
    # daemon lives on in the container's cgroups. Such a container is cloned by the
    # spawn helper even for the CLI, and the helper, which outlives the CLI, kills
    # what is left and removes the cgroups: no later run is needed. Below a cgroup
    # of the test's own, so that no other mydocker run on this host sweeps them first.
    proc = subprocess.Popen(
        [
            *mydocker_cmd(),
            "run",
            "--cgroup-parent",
            cgroup_parent,
            "--pid",
            "host",
            "-m",
            "64m",
            "sh",
            "-c",
            "echo $$; setsid sleep 1000 & echo $!; sleep 1000",
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    pid1 = os.pidfd_open(int(proc.stdout.readline()))
    daemon = int(proc.stdout.readline())
    assert other_dirs(cgroup_parent)  # its v2 and v1 memory cgroups
    pidfd = os.pidfd_open(daemon)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    try:
        # PID 1 and the daemon die with mydocker, without a next run (30 s: a hang detector)
        assert select.select([pid1], [], [], 30)[0], "PID 1 outlived the SIGKILLed mydocker"
        assert select.select([pidfd], [], [], 30)[0], "the daemon outlived its mydocker"
        assert wait_until(lambda: not other_dirs(cgroup_parent))
    finally:
        os.close(pidfd)
        if not gone_or_zombie(daemon):
            os.kill(daemon, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pid1, signal.SIGKILL)  # if it lived on
        os.close(pid1)


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
            assert len(dirs) == len(hierarchies_for("memory", "pids", "cpu"))
            assert all(os.path.isdir(d) for d in dirs)
            scope.cancel()
            await c.wait()
    assert c.returncode == 128 + signal.SIGKILL
    assert not [d for d in dirs if os.path.exists(d)]


@pytest.mark.orphans
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


def _waits_on_a_pipe(pid: int) -> bool:
    """Whether ``pid`` sleeps in a pipe read (``pipe_read``, ``anon_pipe_read``)."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return "pipe_read" in f.read()
    except OSError:
        return False


@pytest.mark.anyio
@pytest.mark.skipif(
    cgroups.current_layout().v1_for("pids") is None,
    reason="cgroup v1 only: with cgroup v2 the child is cloned into its cgroup",
)
async def test_api_failed_placement_is_a_start_error_leaving_nothing(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Fault injection: the child cannot join its v1 cgroup (it writes itself into
    # cgroup.procs as its first step). It must never run the command (which would
    # leave a file on the host: without a root filesystem the container sees the host's).
    ran = tmp_path / "ran"
    real = cgroups.ContainerCgroup.join_files

    def missing(self: cgroups.ContainerCgroup) -> tuple[str, ...]:
        return tuple(f"{path}.missing" for path in real(self))

    monkeypatch.setattr(cgroups.ContainerCgroup, "join_files", missing)
    before = our_dirs()
    with pytest.raises(StartError, match="enter its cgroups") as err:
        await run_container(["sh", "-c", f"echo ran > {ran}"], limits=Limits(pids=10))
    assert err.value.errno == errno.ENOENT
    assert not ran.exists(), "the command ran before the container was placed in its cgroups"
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
    assert written and len(dirs) == len(hierarchies_for("memory", "cpu", "cpuset", "pids"))
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


@pytest.mark.orphans
def test_spawn_helper_removes_the_cgroups_of_a_sigkilled_service(cgroup_parent: str) -> None:
    # A service embedding the library is SIGKILLed: its containers die with it, and
    # its spawn helper, on the way out, kills what escaped and removes the cgroups
    # (below a cgroup of the test's own: no other mydocker on this host sweeps there).
    code = (
        "import anyio, sys\n"
        "from supervisor import open_container, DEVNULL\n"
        "async def main():\n"
        "    c = await open_container(['sh', '-c', 'setsid sleep 1000 & echo $!; sleep 1000'],\n"
        "        stdin=DEVNULL, namespaces={'mount', 'uts', 'ipc', 'net'}, limits={'memory': '64m'},\n"
        f"        cgroup_parent={cgroup_parent!r})\n"
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
        left = other_dirs(cgroup_parent)
        assert len(left) == len(hierarchies_for("memory"))
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
