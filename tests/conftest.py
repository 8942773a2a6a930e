"""Shared fixtures: both anyio backends, root gating, and a host-leak check that
runs around every test (mounts, fds, child processes and orphans, zombies)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = os.geteuid() == 0


def mydocker_cmd() -> list[str]:
    """How tests start the CLI: the installed console script next to this Python."""
    exe = Path(sys.executable).with_name("mydocker")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "supervisor.cli"]


def run_cli(
    *args: str, input: bytes | None = None, timeout: float = 60, **kw: object
) -> subprocess.CompletedProcess[bytes]:
    """Run ``mydocker ARGS`` to completion, capturing output."""
    return subprocess.run(
        [*mydocker_cmd(), *args],
        input=input,
        capture_output=True,
        timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ROOT and shutil.which("unshare"):
        return
    skip = pytest.mark.skip(reason="needs root and namespaces (run as root: sudo make test)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def _mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        # mount ids change on remount; compare what is mounted where
        return sorted(" ".join(line.split()[3:5]) + " " + line.split(" - ")[1].split()[0] for line in f)


def _fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


def _describe_fd(fd: int) -> str:
    try:
        return f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}"
    except OSError:
        return str(fd)


#: <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture(autouse=True, scope="session")
def child_subreaper() -> Iterator[None]:
    """Make pytest a child subreaper for the whole session.

    A container that ``mydocker run`` starts is a grandchild of the test (pytest ->
    mydocker -> container), and so is a spawn helper: were one to outlive mydocker,
    it would be re-parented to the host's init, out of ``host_unchanged``'s sight. As
    a subreaper, pytest inherits every orphan of the processes a test starts, so "no
    child left behind" covers them too.
    """
    from supervisor import _linux

    _linux.prctl(PR_SET_CHILD_SUBREAPER, 1)
    yield
    _linux.prctl(PR_SET_CHILD_SUBREAPER, 0)


def _child_stats() -> dict[int, list[str]]:
    """Our child processes (zombies too): pid -> the /proc/PID/stat fields after the name."""
    out: dict[int, list[str]] = {}
    me = str(os.getpid())
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            out[int(pid)] = fields
    return out


def child_processes() -> set[int]:
    """Our child processes, zombies and orphans re-parented to us included."""
    return set(_child_stats())


def processes_with_argv(argv: list[str]) -> list[int]:
    """Live processes anywhere on the host (zombies too) whose command line is
    exactly ``argv``."""
    want = "\0".join(argv).encode() + b"\0"
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read() == want:
                    found.append(int(pid))
        except (OSError, ValueError):
            continue
    return found


def _reap_zombies() -> None:
    """Reap our zombie children, as init would have reaped these orphans."""
    for pid, fields in _child_stats().items():
        if fields[0] == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def describe_process(pid: int) -> str:
    """``pid (name) state: argv`` (a zombie has no argv left)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            head, tail = f.read().rsplit(")", 1)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return f"{pid} (gone)"
    state = tail.split()[0]
    return f"{pid} ({head.split('(', 1)[1]}) {'zombie' if state == 'Z' else state}: {argv or '-'}"


def _kill_and_reap_children() -> None:
    """SIGKILL and reap every child of ours (a child's pid is not reused until it is
    reaped), and the orphans that their deaths hand down to us in turn."""
    for _ in range(10):
        pids = child_processes()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _no_child_left(orphans_expected: bool) -> bool:
    if orphans_expected:
        _reap_zombies()
    return not child_processes()


def _settle(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.02)


def _cgroup_leftovers() -> set[str]:
    """Container cgroups below ours (every hierarchy) that nobody will remove: made by
    this process, or by a mydocker that is gone (and their owners' markers). Others'
    (live) ones are not ours."""
    from supervisor import cgroups

    layout = cgroups.current_layout()
    return set(cgroups.leftovers(layout.fs, cgroups.parents_of(layout))) | _oci_cgroups(layout)


#: the ids of the OCI containers the tests make start with this (tests/test_oci.py)
OCI_ID_PREFIX = f"pytest-{os.getpid()}-"


def _oci_cgroups(layout: object) -> set[str]:
    """The cgroups of this test process's OCI containers (mydocker-runc puts a
    container without a cgroupsPath in ``mydocker-runc/<id>`` below its own cgroup,
    which is this process's: the tests start it), in every hierarchy."""
    from supervisor import cgroups

    found = set()
    for parent in cgroups.parents_of(layout):  # type: ignore[arg-type]
        d = os.path.join(parent, "mydocker-runc")
        try:
            found |= {os.path.join(d, n) for n in os.listdir(d) if n.startswith(OCI_ID_PREFIX)}
        except OSError:
            continue
    return found


def _owner_fds() -> set[int]:
    """The fds this process keeps for its lifetime: its cgroup owner markers, the
    device programs it loaded (one per distinct rule set) and libnftables' socket."""
    from supervisor import _linux, cgroups

    fs = cgroups.current_layout().fs
    return set(cgroups.owner().marker_fds()) | set(fs.device_programs().fds()) | set(_linux.nft_fds())


def _network_state() -> tuple[set[str], set[str], str, set[str]]:
    """mydocker's interfaces (``myd*``), nftables tables named after it, the IPv4
    forwarding switch and the named network namespaces."""
    links = {name for name in os.listdir("/sys/class/net") if name.startswith("myd")}
    tables: set[str] = set()
    if ROOT:
        from supervisor import _linux

        if _linux.nft_available():
            from supervisor.network import nft

            tables = {f"{family} {name}" for family, name in nft.tables() if "mydocker" in name}
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        forward = f.read().strip()
    netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    return links, tables, forward, netns


@pytest.fixture
def cgroup_parent() -> Iterator[str]:
    """A cgroup of the test's own, in every hierarchy, to pass as ``--cgroup-parent``.

    The first container a mydocker makes below a parent kills and removes what a
    killed mydocker left there. Below pytest's own cgroup, any mydocker run on this
    host (another test session's) may do that at any moment, and so hide whether
    the killed one's container died with it. Below this cgroup only the test's own
    runs sweep. It must be empty again at the end.
    """
    from supervisor import cgroups

    layout = cgroups.current_layout()
    name = f"test-parent-{os.getpid()}"
    made: list[str] = []
    try:
        for h in ([layout.v2] if layout.v2 is not None else []) + list(layout.v1):
            parent = h.parent_dir(name)
            assert parent is not None
            os.mkdir(parent)
            made.append(parent)
        yield name
    finally:
        for parent in reversed(made):
            os.rmdir(parent)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "orphans: the test makes processes that outlive their parent (it SIGKILLs a "
        "supervisor, or a daemon escapes PID 1); those that died once re-parented to "
        "pytest are reaped as init would, not reported as left behind",
    )


@pytest.fixture(autouse=True)
def host_unchanged(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a mount, an fd, a child process (zombie or not), a
    container cgroup, an interface or nftables table of mydocker's, a changed
    ip_forward or a named network namespace.

    Children include the orphans of every process the test started: pytest is a
    child subreaper (``child_subreaper``). Whatever is left is killed and reaped, so
    that the next test starts clean.
    """
    orphans_expected = request.node.get_closest_marker("orphans") is not None
    network = _network_state()
    mounts, fds, cgroups = _mounts(), _fds(), _cgroup_leftovers()
    yield
    _settle(
        lambda: (
            _no_child_left(orphans_expected)
            and _fds() - _owner_fds() <= fds
            and not _cgroup_leftovers() - cgroups
        )
    )
    left = sorted(child_processes())
    described = [describe_process(pid) for pid in left]
    _kill_and_reap_children()
    leftover = _cgroup_leftovers() - cgroups
    assert not leftover, f"cgroups left behind: {sorted(leftover)}"
    _settle(lambda: _network_state() == network)
    assert _network_state() == network, f"network state changed: {network} -> {_network_state()}"
    assert _mounts() == mounts, "the host's mount table changed"
    leaked = _fds() - _owner_fds() - fds
    assert not leaked, f"fds leaked: {[_describe_fd(fd) for fd in leaked]}"
    assert not left, f"child processes (or orphans of the test's) left behind: {described}"
    assert os.path.exists("/proc/1/status"), "the host's /proc is broken"
