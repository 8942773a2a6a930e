"""Shared fixtures: both anyio backends, root gating, and a host-leak check that
runs around every test (mounts, fds, child processes, zombies)."""

from __future__ import annotations

import os
import shutil
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


def _children() -> set[int]:
    out: set[int] = set()
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
            out.add(int(pid))
    return out


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


@pytest.fixture(autouse=True)
def host_unchanged() -> Iterator[None]:
    """Fail a test that leaves a mount, an fd, a child process (zombie or not), a
    container cgroup, an interface or nftables table of mydocker's, a changed
    ip_forward or a named network namespace."""
    network = _network_state()
    mounts, fds, cgroups = _mounts(), _fds(), _cgroup_leftovers()
    yield
    _settle(lambda: not _children() and _fds() - _owner_fds() <= fds and not _cgroup_leftovers() - cgroups)
    leftover = _cgroup_leftovers() - cgroups
    assert not leftover, f"cgroups left behind: {sorted(leftover)}"
    _settle(lambda: _network_state() == network)
    assert _network_state() == network, f"network state changed: {network} -> {_network_state()}"
    assert _mounts() == mounts, "the host's mount table changed"
    leaked = _fds() - _owner_fds() - fds
    assert not leaked, f"fds leaked: {[_describe_fd(fd) for fd in leaked]}"
    assert not _children(), f"child processes left behind: {_children()}"
    assert os.path.exists("/proc/1/status"), "the host's /proc is broken"
