"""Faults an attacker (or plain bad luck) found, one test each, so they stay fixed.

Each of these failed on the code before its fix (the commit that fixed it is named
in the test's docstring): a state-directory sweep that followed a symlinked
``containers/`` and deleted what it could not prove was its own; a hostname of
bytes that are not UTF-8; a malformed request that killed the spawn helper; a spawn
helper that, once killed, took the next container with it; a CPU range expanded
before it was checked; ``--pid host`` processes that outlived a SIGKILLed CLI; and
cgroup owners told apart by pids, which mean nothing in another PID namespace.
"""

from __future__ import annotations

import errno
import marshal
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from supervisor import SpecError, StartError, cgroups, init, run_container, spawn, state, wire
from supervisor import spec as spec_module
from supervisor.spec import ContainerSpec, Limits

from . import busybox as bb
from .busybox import snapshot
from .conftest import mydocker_cmd, run_cli

pytestmark = pytest.mark.anyio

HANG = 30.0  # seconds after which a wait is a hang, not slowness (never asserted as speed)


@pytest.fixture(scope="session")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bb.build(tmp_path_factory)[0]


def one_line(res: subprocess.CompletedProcess[bytes]) -> str:
    """The CLI's one-line error (no traceback), checked."""
    err = res.stderr.decode(errors="replace")
    assert res.returncode == 125, (res.returncode, err)
    assert err.count("\n") == 1 and err.startswith("mydocker: ") and "Traceback" not in err, err
    return err


def token() -> str:
    """Digits that make a command line unique on this host (sleep takes 1000.<token>)."""
    return f"{os.getpid()}{int.from_bytes(os.urandom(4), 'big')}"


def pids_with(marker: str) -> list[int]:
    """Processes of this PID namespace whose command line contains ``marker``."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    out.append(int(pid))
        except OSError:
            continue
    return out


def argv_of(pid: int) -> list[bytes]:
    """A process's argv ([b""] once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[:-1] or [b""]
    except OSError:
        return [b""]


def wait_dead(pidfds: list[int], timeout: float = HANG) -> list[int]:
    """Wait until every process is gone; returns the pidfds still running after
    ``timeout`` (a hang detector)."""
    pending = list(pidfds)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        ready, _, _ = select.select(pending, [], [], max(0.0, deadline - time.monotonic()))
        pending = [fd for fd in pending if fd not in ready]
    return pending


def alive(pidfd: int) -> bool:
    return not select.select([pidfd], [], [], 0)[0]


def kill_marked(marker: str) -> bool:
    """SIGKILL whatever still runs with ``marker`` (unique to one test) in its command
    line, after a test that failed half way; True if there was any."""
    found = False
    for pid in pids_with(marker):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            found = True
        except OSError:
            pass
        finally:
            os.close(fd)
    return found


# ---------------------------------------------------------------- 4. the state-dir sweep

CID = "c0ffee" + "0" * 58  # named like a container


def _old(path: Path) -> None:
    """Make everything at and below ``path`` look a day old."""
    day_ago = time.time() - 86400
    for p in [*path.rglob("*"), path]:
        os.utime(p, (day_ago, day_ago), follow_symlinks=False)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory outside any state directory, holding what looks like an abandoned
    container directory: old files, no lock held, no config.json."""
    v = tmp_path / "victim"
    (v / CID / "upper").mkdir(parents=True)
    (v / CID / "precious").write_text("not mydocker's\n")
    (v / CID / "lock").write_text("")
    (v / ("a" * 64)).mkdir()
    _old(v)
    return v


def test_the_sweep_never_follows_a_symlinked_containers_dir(tmp_path: Path, victim: Path) -> None:
    """Fixed in 63dc943 (the sweep used to list and rmtree through the symlink)."""
    sdir = tmp_path / "state"
    sdir.mkdir()
    (sdir / "containers").symlink_to(victim)
    before = snapshot(victim)
    assert state.sweep_dead(str(sdir)) == []
    assert snapshot(victim) == before


@pytest.mark.root
def test_a_run_with_a_symlinked_containers_dir_deletes_nothing_and_says_why(
    tmp_path: Path, victim: Path, busybox: Path
) -> None:
    """Fixed in 63dc943 (deletion); the message in this branch (it blamed the state
    directory, "Not a directory": O_DIRECTORY|O_NOFOLLOW gives ENOTDIR, not ELOOP)."""
    sdir = tmp_path / "state"
    sdir.mkdir()
    (sdir / "containers").symlink_to(victim)
    before = snapshot(victim)
    res = run_cli("run", "--state-dir", str(sdir), "--rootfs", str(busybox), "true")
    err = one_line(res)
    assert f"{sdir}/containers" in err and "symlink" in err, err
    assert snapshot(victim) == before
    assert (sdir / "containers").is_symlink()


class LockHolder:
    """Another process holding ``flock`` on a lock file until it is ended."""

    def __init__(self, path: Path) -> None:
        code = (
            "import fcntl, os, sys\n"
            f"fd = os.open({str(path)!r}, os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == b"locked\n"

    def end(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            assert f is not None
            f.close()


@pytest.fixture
def holders() -> Iterator[list[LockHolder]]:
    held: list[LockHolder] = []
    yield held
    for h in held:
        h.end()


def _container_dir(where: Path, with_lock: bool = True) -> Path:
    (where / "upper" / "etc").mkdir(parents=True)
    (where / "upper" / "etc" / "file").write_text("x")
    (where / "config.json").write_text("{}")
    if with_lock:
        (where / "lock").write_text("")
    _old(where)
    return where


def test_the_sweep_removes_only_what_a_dead_owner_left(tmp_path: Path, holders: list[LockHolder]) -> None:
    """Fixed in 63dc943: owners known by a lock nobody else can hold, not by a pid,
    an age or the presence of config.json."""
    sdir = tmp_path / "state"
    containers = sdir / "containers"
    containers.mkdir(parents=True)
    dead, live, lockless, new_live, new_dead = (format(n, "x") * 64 for n in range(1, 6))
    _container_dir(containers / dead)
    _container_dir(containers / live)
    holders.append(LockHolder(containers / live / "lock"))
    _container_dir(containers / lockless, with_lock=False)
    _container_dir(containers / f".new-{new_live}")
    holders.append(LockHolder(containers / f".new-{new_live}" / "lock"))
    _container_dir(containers / f".new-{new_dead}")  # its maker died half way
    # a symlink named like a container, to a directory whose lock nobody holds
    target = _container_dir(tmp_path / "elsewhere")
    (containers / ("f" * 64)).symlink_to(target)
    # named like nothing of ours, with a lock nobody holds
    _container_dir(containers / "not-a-container")
    outside = snapshot(target)

    removed = state.sweep_dead(str(sdir))

    assert sorted(removed) == sorted([dead, f".new-{new_dead}"])
    assert sorted(os.listdir(containers)) == sorted(
        [live, lockless, f".new-{new_live}", "f" * 64, "not-a-container"]
    )
    assert (containers / live / "upper" / "etc" / "file").read_text() == "x"
    assert (containers / ("f" * 64)).is_symlink() and snapshot(target) == outside
    # once its owner is gone, the live one is a dead one's
    holders.pop(0).end()
    assert state.sweep_dead(str(sdir)) == [live]


# ---------------------------------------------------------------- 5. bad input, bad requests


@pytest.mark.root
def test_a_hostname_that_is_not_utf8_is_one_line_and_125() -> None:
    """Fixed in 6f8ac5c (it was a UnicodeEncodeError traceback)."""
    res = run_cli("run", "--hostname", os.fsdecode(b"box\xff"), "true")
    assert "invalid hostname" in one_line(res)


def test_a_hostname_that_is_not_utf8_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="invalid hostname"):
        ContainerSpec(("true",), hostname="box\udcff")


@pytest.mark.root
async def test_run_container_refuses_a_hostname_that_is_not_utf8(anyio_backend: str) -> None:
    with pytest.raises(SpecError, match="invalid hostname"):
        await run_container(["true"], hostname="box\udcff")


def _request_fds(stack: list[int]) -> dict[str, int]:
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    r, w = os.pipe2(os.O_CLOEXEC)
    stack += [null, r, w]
    return {"stdin": null, "stdout": null, "stderr": null, "errpipe": w}


@pytest.mark.root
async def test_the_spawn_helper_answers_a_request_it_cannot_serve(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fixed in 63dc943 (a request of another shape ended the helper, and every
    request in flight with it); for cgroup parents of another shape in this branch."""
    # a plain tuple goes to wire.encode_request as it is: a child of another version
    to_wire = spawn.child_to_wire
    monkeypatch.setattr(spawn, "child_to_wire", lambda c: c if type(c) is tuple else to_wire(c))
    helper = spawn.get_helper(None)  # the one of containers without a split filter
    assert helper is not None
    fds: list[int] = []
    results: dict[str, object] = {}

    async def bad(name: str, child: tuple[object, ...], parents: object = ()) -> None:
        try:
            await helper.spawn(child, 0, _request_fds(fds), parents)  # type: ignore[arg-type]
        except StartError as e:
            results[name] = e

    async def good() -> None:
        # unconfined: no split seccomp filter, so the plain helper clones it
        results["good"] = await run_container(["echo", "still here"], seccomp="unconfined")

    valid = init.child_spec(ContainerSpec(("true",)))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(good)
            tg.start_soon(bad, "short", ("a", None))  # a ChildSpec of another version
            tg.start_soon(bad, "parents", valid, 5)  # cgroup parents that are no list
            tg.start_soon(bad, "unhashable parents", valid, ([1],))
    finally:
        for fd in fds:
            os.close(fd)
    for name in ("short", "parents", "unhashable parents"):
        e = results[name]
        assert isinstance(e, StartError) and e.errno == errno.EINVAL, (name, e)
        assert "spawn helper cannot" in str(e), (name, e)
    assert results["good"].stdout == b"still here\n"  # type: ignore[attr-defined]
    assert spawn.get_helper(None) is helper and helper.exit_code is None


@pytest.mark.root
@pytest.mark.parametrize(
    "junk",
    [
        b"I\x29\x05",  # marshal cut short: no id to answer
        b"?what",  # no kind this version knows
        b"I" + marshal.dumps(("id", ("a",), (), 0, ())),  # an id that is no number
        b"I" + marshal.dumps((1 << 70, ("a",), (), 0, ())),  # one no reply can carry
    ],
    ids=["cut short", "unknown kind", "id not a number", "id too big"],
)
async def test_the_spawn_helper_survives_a_request_it_cannot_even_answer(
    anyio_backend: str, junk: bytes
) -> None:
    """Fixed for the numbers in this branch (a request id the reply cannot carry
    raised struct.error in the helper, which died)."""
    await run_container(["true"], seccomp="unconfined")
    helper = spawn.get_helper(None)
    assert helper is not None
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        # straight onto the helper's socket: SpawnHelper.spawn would never send it
        wire.send_fds(helper._sock, junk, [r, w])
    finally:
        os.close(r)
        os.close(w)
    # twice: the second request goes out after the helper has dealt with the junk
    for word in (b"served", b"and again"):
        res = await run_container(["echo", word.decode()], seccomp="unconfined")
        assert res.stdout == word + b"\n"
    assert spawn.get_helper(None) is helper and helper.exit_code is None


# ---------------------------------------------------------------- 6. a killed spawn helper


@pytest.mark.root
async def test_the_container_after_the_spawn_helper_was_killed_runs(anyio_backend: str) -> None:
    """Fixed in 63dc943 (a dead helper was used again: every later container of the
    event loop failed)."""
    await run_container(["true"])
    await run_container(["true"], seccomp="unconfined")
    killed = spawn.helpers()
    assert len(killed) >= 2  # the plain one and the one of docker's seccomp profile
    pidfds = [os.pidfd_open(h.pid) for h in killed]
    try:
        for fd in pidfds:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        assert not wait_dead(pidfds)
    finally:
        for fd in pidfds:
            os.close(fd)
    res = await run_container(["echo", "again"])
    assert res.stdout == b"again\n"
    res = await run_container(["echo", "and again"], seccomp="unconfined")
    assert res.stdout == b"and again\n"
    now = spawn.helpers()
    assert not {h.pid for h in now} & {h.pid for h in killed}


# ---------------------------------------------------------------- 7. a CPU range


@pytest.mark.parametrize("cpus", ["0-3000000", "0-300000000", "7,0-300000000", "300000000"])
def test_a_cpu_list_beyond_any_host_is_refused_before_it_is_expanded(
    monkeypatch: pytest.MonkeyPatch, cpus: str
) -> None:
    """Fixed in 6f8ac5c (cpu_list built the whole range first: 0-300000000 is a set
    of 300 million ints)."""
    asked: list[int] = []

    def counting_range(*args: int) -> range:
        r = range(*args)
        asked.append(len(r))
        assert len(r) <= spec_module.MAX_CPU, f"a range of {len(r)} CPUs was built"
        return r

    monkeypatch.setattr(spec_module, "range", counting_range, raising=False)
    with pytest.raises(SpecError, match="beyond any host's CPUs"):
        spec_module.cpu_list(cpus)
    with pytest.raises(SpecError, match="beyond any host's CPUs"):
        Limits(cpuset_cpus=cpus)
    assert spec_module.cpu_list("0-3,5") == {0, 1, 2, 3, 5}  # the counting range works


@pytest.mark.root
@pytest.mark.parametrize("cpus", ["0-3000000", "0-300000000"])
def test_a_cpuset_beyond_any_host_is_one_line_and_125(cpus: str) -> None:
    err = one_line(run_cli("run", "--cpuset-cpus", cpus, "true"))
    assert "beyond any host's CPUs" in err, err


# ---------------------------------------------------------------- 8. --pid host after a SIGKILL


@pytest.mark.root
@pytest.mark.orphans
def test_pid_host_processes_die_soon_after_a_sigkilled_cli() -> None:
    """Fixed in 63dc943: the CLI clones a container without a PID namespace of its
    own through the spawn helper, which outlives it and kills what is left in its
    cgroups (before, they ran until some later mydocker swept them)."""
    mark = token()
    script = f"setsid sleep 1000.{mark} & sleep 1001.{mark} & echo ready; wait"
    proc = subprocess.Popen(
        [*mydocker_cmd(), "run", "--pid", "host", "--init", "sh", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    pidfds: list[int] = []
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        # tini, sh and the two sleeps (one in a session of its own), once both exec'd
        deadline = time.monotonic() + HANG
        while True:
            found = sorted(set(pids_with(f".{mark}")) - {proc.pid})
            names = sorted(os.path.basename(argv_of(p)[0]).decode() for p in found)
            if names.count("sleep") == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert names.count("sleep") == 2 and "sh" in names and len(names) == 4, names  # and the init
        pidfds = [os.pidfd_open(p) for p in found]
        proc.kill()
        proc.wait()
        # no later mydocker run: the helper alone must end them
        assert not wait_dead(pidfds), f"still running after the CLI was killed: {found}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        for fd in pidfds:
            os.close(fd)
        if kill_marked(f".{mark}"):
            run_cli("run", "true")  # sweeps the dead CLI's cgroups


# ---------------------------------------------------------------- 9. owners in another PID namespace


def _cgroup_dir(pid: int) -> str:
    layout = cgroups.current_layout()
    assert layout.v2 is not None
    with open(f"/proc/{pid}/cgroup") as f:
        path = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
    where = layout.v2.dir_of(path)
    assert where is not None
    return where


@pytest.mark.root
def test_an_owner_in_another_pid_namespace_is_told_alive_or_dead_by_its_lock() -> None:
    """Fixed in 63dc943: the owner was the pid in the cgroup's name, which from here
    names some other process (pid 2, say: kthreadd, always alive), so a killed
    owner's cgroups were never swept; another pid could get a live owner's swept."""
    if cgroups.current_layout().v2 is None:
        pytest.skip("no cgroup v2 hierarchy")
    mark = token()
    inner = f"{' '.join(mydocker_cmd())} run sh -c 'echo ready; exec sleep 1000.{mark}'; echo done"
    other = subprocess.Popen(
        # --kill-child: if this test fails half way, ending unshare ends it all
        ["unshare", "--pid", "--kill-child", "--mount-proc", "sh", "-c", inner],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    pidfds: dict[str, int] = {}
    try:
        assert other.stdout is not None
        assert other.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + HANG
        while True:  # until the container's sh has exec'd the sleep
            procs = {p: argv_of(p) for p in pids_with(f"1000.{mark}")}
            sleeps = [p for p, argv in procs.items() if argv[0] == b"sleep"]
            if sleeps or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        cli = next(p for p, argv in procs.items() if any(os.path.basename(a) == b"mydocker" for a in argv))
        (sleep,) = sleeps
        pidfds = {"cli": os.pidfd_open(cli), "sleep": os.pidfd_open(sleep)}
        assert not os.readlink(f"/proc/{cli}/ns/pid") == os.readlink("/proc/self/ns/pid")
        container_cg = _cgroup_dir(sleep)
        parent, name = os.path.split(container_cg)
        marker = f"{parent}/mydocker-owner-{name.rsplit('-', 1)[1]}"

        # a mydocker of ours sweeps this parent on its first container
        res = run_cli("run", "true")
        assert res.returncode == 0, res.stderr
        assert os.path.isdir(container_cg) and alive(pidfds["sleep"]), "a live owner's container was swept"

        signal.pidfd_send_signal(pidfds["cli"], signal.SIGKILL)
        assert not wait_dead([pidfds["cli"], pidfds["sleep"]])
        assert other.wait(timeout=HANG) == 0
        # nobody removed them (the CLI clones a container with a PID namespace of its
        # own in-process: no helper outlives it)
        assert os.path.isdir(container_cg)
        marker_left = os.path.isdir(marker)
        res = run_cli("run", "true")
        assert res.returncode == 0, res.stderr
        assert not os.path.exists(container_cg), "a dead owner's cgroup was not swept"
        assert marker_left and not os.path.exists(marker), "a dead owner's marker was not swept"
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
        if other.stdout is not None:
            other.stdout.close()
        for fd in pidfds.values():
            os.close(fd)
        if kill_marked(f".{mark}"):
            run_cli("run", "true")  # sweeps the dead CLI's cgroups
