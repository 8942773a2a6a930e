"""Confinement: every escape a container with default options had, tried for real.

Each test runs the attack in a real container (real capabilities, seccomp, device
cgroup, keyring) and asserts it fails; where the attack is harmless to the host, the
same test shows it succeeding with ``--privileged`` or ``seccomp=unconfined``, so a
test that could not fail is caught. Syscall-level attacks use the host's Python
inside a container without a root filesystem (confinement is the same there); file-
system ones use the busybox root filesystem. The conftest leak check runs around
each test.
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import shutil
import subprocess
import textwrap
from pathlib import Path

import anyio
import pexpect
import pytest

from supervisor import capabilities, run_container, spawn

from . import busybox as bb
from .conftest import mydocker_cmd, run_cli

pytestmark = pytest.mark.root

#: the Debian interpreter: present on the host and readable inside a container that
#: shares the host's root (the venv's may live in a root-only directory)
HOST_PY = "/usr/bin/python3"


@pytest.fixture(scope="session")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bb.build(tmp_path_factory)[0]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def in_rootfs(
    state: Path, rootfs: Path, script: str, *opts: str, **kw: object
) -> subprocess.CompletedProcess[bytes]:
    return run_cli("run", "--state-dir", str(state), "--rootfs", str(rootfs), *opts, "sh", "-c", script, **kw)


def py(code: str, *opts: str) -> subprocess.CompletedProcess[bytes]:
    """Run Python code in a container that shares the host's root (``--privileged``
    etc. go in ``opts``)."""
    if not os.access(HOST_PY, os.X_OK):
        pytest.skip(f"needs {HOST_PY}")
    return run_cli("run", *opts, HOST_PY, "-c", textwrap.dedent(code))


#: the Python that prints the errno of one libc call (0 when it succeeded)
SYSCALL = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
r = {call}
print(0 if r != -1 else ctypes.get_errno())
"""


def errno_of(call: str, *opts: str) -> int:
    r = py(SYSCALL.format(call=call), *opts)
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def status_of_pid1(*opts: str, rootfs: Path | None = None, state: Path | None = None) -> dict[str, str]:
    args = ["run", *opts]
    if rootfs is not None:
        args += ["--state-dir", str(state), "--rootfs", str(rootfs)]
    r = run_cli(*args, "cat", "/proc/1/status")
    assert r.returncode == 0, r.stderr
    return dict(line.split(":\t", 1) for line in r.stdout.decode().splitlines() if ":\t" in line)


# ---------------------------------------------------------------- capabilities


def test_default_capabilities_are_dockers_14() -> None:
    status = status_of_pid1()
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == "00000000a80425fb"
    assert status["CapInh"] == status["CapAmb"] == "0000000000000000"
    assert status["NoNewPrivs"] == "0" and status["Seccomp"] == "2"


@pytest.mark.parametrize(
    ("opts", "caps"),
    [
        (["--cap-drop", "ALL"], set()),
        (["--cap-drop", "all", "--cap-add", "net_admin"], {"CAP_NET_ADMIN"}),
        (
            ["--cap-add", "CAP_SYS_ADMIN", "--cap-drop", "chown"],
            (capabilities.DEFAULT_CAPS - {"CAP_CHOWN"}) | {"CAP_SYS_ADMIN"},
        ),
    ],
)
def test_cap_add_and_drop(opts: list[str], caps: set[str]) -> None:
    status = status_of_pid1(*opts)
    assert int(status["CapEff"], 16) == capabilities.mask(caps)
    assert status["CapBnd"] == status["CapEff"]


def test_privileged_has_every_capability_and_no_filter() -> None:
    status = status_of_pid1("--privileged")
    assert int(status["CapEff"], 16) == capabilities.mask(capabilities.caller_bounding_set())
    assert status["Seccomp"] == "0"


def test_a_non_root_user_has_no_effective_capabilities() -> None:
    status = status_of_pid1("--user", "1000:1000")
    assert status["CapEff"] == status["CapPrm"] == "0000000000000000"
    assert status["CapBnd"] == "00000000a80425fb"
    assert status["Uid"].split()[:2] == ["1000", "1000"] and status["Gid"].split()[:2] == ["1000", "1000"]


def test_no_new_privileges_and_seccomp_unconfined() -> None:
    assert status_of_pid1("--security-opt", "no-new-privileges")["NoNewPrivs"] == "1"
    assert status_of_pid1("--security-opt", "no-new-privileges:true")["NoNewPrivs"] == "1"
    assert status_of_pid1("--security-opt", "seccomp=unconfined")["Seccomp"] == "0"


# ---------------------------------------------------------------- seccomp


@pytest.mark.parametrize(
    ("call", "unconfined"),
    [
        # the caller's keys: keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)
        ("libc.syscall(250, 0, -3, 0)", True),
        # "shocker": open_by_handle_at(AT_FDCWD, handle, O_RDONLY)
        ("libc.syscall(304, -100, ctypes.create_string_buffer(16), 0)", False),
        # a user namespace, the door to many kernel bugs: unshare(CLONE_NEWUSER)
        ("libc.syscall(272, 0x10000000)", False),
        # the kernel log: syslog(SYSLOG_ACTION_READ_ALL)
        ("libc.syscall(103, 3, ctypes.create_string_buffer(64), 64)", False),
    ],
)
def test_dangerous_syscalls_are_refused(call: str, unconfined: bool) -> None:
    assert errno_of(call) == 1  # EPERM, from the filter
    if unconfined:
        # without the filter the call itself works: the filter is what refused it
        assert errno_of(call, "--security-opt", "seccomp=unconfined") == 0


def test_a_profile_file_that_denies_one_syscall(tmp_path: Path) -> None:
    profile = tmp_path / "deny-mkdir.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
            }
        )
    )
    r = run_cli(
        "run",
        "--security-opt",
        f"seccomp={profile}",
        "sh",
        "-c",
        "mkdir /tmp/md-$$ ; echo $?; ls / >/dev/null; echo $?",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [b"1", b"0"]  # mkdir refused (EACCES from the profile), ls fine
    assert b"Permission denied" in r.stderr


def test_memory_locking_is_bounded_without_cap_ipc_lock() -> None:
    # docker allows mlock and relies on RLIMIT_MEMLOCK without CAP_IPC_LOCK: locking
    # more than the limit fails, as it does for any unprivileged process.
    big = 1 << 30
    code = f"ctypes.CDLL(None, use_errno=True).mlock(ctypes.create_string_buffer({big}), {big})"
    assert errno_of(code) in (11, 12)  # EAGAIN / ENOMEM
    assert errno_of(code, "--cap-add", "IPC_LOCK") == 0


# ---------------------------------------------------------------- keyring


def test_the_callers_session_keyring_is_out_of_reach() -> None:
    # A key in our session keyring; the container (without the filter, to show the
    # keyring itself is not shared) cannot find it.
    libc = ctypes.CDLL(None, use_errno=True)
    serial = libc.syscall(248, b"user", b"mydocker-test-key", b"secret", 6, -3)  # add_key(..., @s)
    if serial < 0:
        pytest.skip(f"add_key: {os.strerror(ctypes.get_errno())}")
    try:
        find = "libc.syscall(250, 10, -3, b'user', b'mydocker-test-key', 0)"  # KEYCTL_SEARCH in @s
        assert errno_of(find, "--security-opt", "seccomp=unconfined") == 126  # ENOKEY
        assert errno_of(find, "--privileged") == 126
    finally:
        libc.syscall(250, 21, serial)  # KEYCTL_INVALIDATE


# ---------------------------------------------------------------- devices, mounts, /proc, /sys


def test_a_block_device_node_can_be_made_but_not_opened(busybox: Path, state: Path) -> None:
    script = (
        "mknod /tmp/d b 7 0 && echo made; head -c1 /tmp/d >/dev/null && echo opened; "
        "mount /tmp/d /mnt && echo mounted; true"
    )
    r = in_rootfs(state, busybox, script)
    assert r.stdout.split() == [b"made"], r.stderr
    r = in_rootfs(state, busybox, "mknod /tmp/d b 7 0 && exec 3</tmp/d && echo opened", "--privileged")
    assert r.stdout.split() == [b"opened"], r.stderr  # the device cgroup was what refused it


def test_read_only_volume_and_root_cannot_be_made_writable(
    busybox: Path, state: Path, tmp_path: Path
) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    script = (
        "mount -o remount,rw,bind /data; mount -o remount,rw /; "
        "touch /data/x 2>/dev/null && echo wrote-volume; touch /x 2>/dev/null && echo wrote-root; echo done"
    )
    r = in_rootfs(state, busybox, script, "--read-only", "-v", f"{vol}:/data:ro")
    assert r.stdout.split() == [b"done"], r.stderr
    assert not (vol / "x").exists()


def test_proc_and_sys_stay_masked_and_read_only(busybox: Path, state: Path) -> None:
    script = (
        "umount /proc/sys; umount /proc/keys; mount -o remount,rw /sys; "
        "echo 1 > /proc/sys/kernel/panic 2>/dev/null && echo wrote-sysctl; "
        "cat /proc/keys | wc -c; grep -c ' /sys sysfs ro' /proc/mounts; "
        "dmesg >/dev/null 2>&1 && echo dmesg; echo done"
    )
    before = Path("/proc/sys/kernel/panic").read_text()
    r = in_rootfs(state, busybox, script)
    out = r.stdout.split()
    assert out == [b"0", b"1", b"done"], (r.stdout, r.stderr)
    assert Path("/proc/sys/kernel/panic").read_text() == before


def test_cgroupfs_inside_is_read_only_and_a_privileged_tree_is_removed(busybox: Path, state: Path) -> None:
    r = in_rootfs(
        state,
        busybox,
        "mkdir /sys/fs/cgroup/x && echo made; mount -t cgroup2 none /mnt && echo mounted; echo done",
    )
    assert r.stdout.split() == [b"done"], r.stderr
    # --privileged may make cgroups below its own: they go with it, at once, deepest first
    r = in_rootfs(state, busybox, "mkdir -p /sys/fs/cgroup/a/b/c && echo made", "--privileged", timeout=25)
    assert (r.returncode, r.stdout.split()) == (0, [b"made"]), r.stderr


# ---------------------------------------------------------------- --init


def test_init_is_tini_not_a_copy_of_the_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "MYDOCKER_SECRET_OF_THE_HOST": "s3cret"}
    r = run_cli(
        "run", "--init", "sh", "-c",
        "readlink /proc/1/exe; tr '\\0' '\\n' < /proc/1/environ | grep -c SECRET_OF_THE_HOST; "
        "grep -c python /proc/1/maps; ls /proc/1/fd | wc -l",
        env=env,
    )  # fmt: skip
    exe, secrets, python_maps, fds = r.stdout.decode().split()
    assert "tini" in exe
    assert (secrets, python_maps) == ("0", "0")
    assert int(fds) <= 3  # stdio only


def test_init_in_a_root_filesystem_is_bound_read_only(busybox: Path, state: Path) -> None:
    r = in_rootfs(state, busybox, "ps -o pid,args | head -2; echo x > /sbin/docker-init || echo ro", "--init")
    assert r.returncode == 0, r.stderr
    assert b"/sbin/docker-init -- sh -c" in r.stdout and r.stdout.split()[-1] == b"ro"


def test_init_with_a_missing_command_is_127_as_without() -> None:
    r = run_cli("run", "--init", "/no/such/command")
    assert r.returncode == 127 and b"command not found" in r.stderr


# ---------------------------------------------------------------- the caller's terminal and files


def test_no_fd_of_the_callers_terminal_or_files_reaches_the_container(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("keep\n")
    with open(log, "a") as f:
        r = subprocess.run(
            [
                *mydocker_cmd(),
                "run",
                "sh",
                "-c",
                "echo x > /proc/self/fd/1; readlink /proc/self/fd/1 /proc/self/fd/2 >&2",
            ],
            stdout=f,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
    assert r.returncode == 0, r.stderr
    assert log.read_text() == "keep\nx\n"  # reopening its stdout reached a pipe, not our file
    assert r.stderr.count(b"pipe:") == 2


def test_tiocsti_cannot_type_into_the_callers_terminal() -> None:
    # mydocker at a terminal, without -t: the container tries to push "id" into the
    # terminal's input queue; the shell that started mydocker must never read it.
    code = "import fcntl, termios\nfor c in b'echo INJECTED\\n': fcntl.ioctl(1, termios.TIOCSTI, bytes([c]))"
    child = pexpect.spawn(
        "/bin/sh",
        [
            "-c",
            f"{shlex.join([*mydocker_cmd(), 'run', HOST_PY, '-c', code])}; "
            "echo rc=$?; read line; echo got=$line",
        ],
        timeout=30,
    )
    try:
        child.expect(r"rc=(\d+)")
        assert child.match.group(1) != b"0"  # ENOTTY: its stdout is a pipe
        child.sendline("nothing")
        child.expect(r"got=(\S*)")
        assert child.match.group(1) == b"nothing"
    finally:
        child.close(force=True)


# ---------------------------------------------------------------- users


@pytest.fixture
def rootfs_with_users(busybox: Path, tmp_path: Path) -> Path:
    root = tmp_path / "users-rootfs"
    shutil.copytree(busybox, root, symlinks=True)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1234:1235:Alice:/home/alice:/bin/sh\n"
    )
    (root / "etc/group").write_text("root:x:0:\nalice:x:1235:\ndevs:x:555:alice,bob\ntty:x:5:\n")
    return root


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("alice", "uid=1234 gid=1235 groups=1235,555 home=/home/alice"),
        ("alice:devs", "uid=1234 gid=555 groups=555 home=/home/alice"),
        ("4321", "uid=4321 gid=0 groups=0 home=/"),
        ("4321:77", "uid=4321 gid=77 groups=77 home=/"),
    ],
)
def test_user_names_are_resolved_in_the_image(
    rootfs_with_users: Path, state: Path, user: str, expected: str
) -> None:
    r = in_rootfs(
        state,
        rootfs_with_users,
        'echo uid=$(id -u) gid=$(id -g) groups=$(id -G | tr " " ,) home=$HOME',
        "--user",
        user,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == expected


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("opts", "words"),
    [
        (["--cap-add", "CAP_FLY"], b"unknown capability 'CAP_FLY'"),
        (["--cap-drop", "nope"], b"unknown capability 'CAP_NOPE'"),
        (["--security-opt", "seccomp=/no/such/profile.json"], b"/no/such/profile.json"),
        (["--security-opt", "apparmor=unconfined"], b"invalid --security-opt"),
        (["--user", "nosuchuser"], b"nosuchuser"),
        (["--user", "0:nosuchgroup"], b"nosuchgroup"),
    ],
)
def test_bad_confinement_options_are_one_line(opts: list[str], words: bytes) -> None:
    r = run_cli("run", *opts, "true")
    assert r.returncode == 125, r.stderr
    assert r.stderr.startswith(b"mydocker: ") and r.stderr.count(b"\n") == 1 and words in r.stderr, r.stderr


def test_a_malformed_profile_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"defaultAction": "SCMP_ACT_FLY"}')
    r = run_cli("run", "--security-opt", f"seccomp={bad}", "true")
    assert r.returncode == 125 and r.stderr.count(b"\n") == 1 and b"bad.json" in r.stderr, r.stderr


# ---------------------------------------------------------------- the library


@pytest.mark.anyio
async def test_the_library_takes_the_same_options(anyio_backend: str) -> None:
    r = await run_container(
        ["grep", "-E", "^(CapEff|NoNewPrivs|Seccomp):", "/proc/self/status"],
        cap_drop=["ALL"],
        cap_add=["NET_RAW"],
        no_new_privileges=True,
        seccomp="unconfined",
    )
    fields = dict(line.split(":\t") for line in r.stdout.decode().splitlines())
    assert int(fields["CapEff"], 16) == capabilities.mask({"CAP_NET_RAW"})
    assert (fields["NoNewPrivs"], fields["Seccomp"]) == ("1", "0")


@pytest.mark.anyio
async def test_library_containers_get_the_same_filter_in_two_parts(anyio_backend: str) -> None:
    # run_container's containers come from a spawn helper that loaded the base of
    # docker's profile once (seccomp.split_programs): each adds only the closing part.
    if not os.access(HOST_PY, os.X_OK):
        pytest.skip(f"needs {HOST_PY}")
    code = SYSCALL.format(call="libc.syscall(250, 0, -3, 0)") + textwrap.dedent(
        """
        print(libc.syscall(272, 0x10000000) == -1 and ctypes.get_errno())  # unshare(CLONE_NEWUSER)
        print(libc.mount(b"none", b"/mnt", b"tmpfs", 0, None) == -1 and ctypes.get_errno())
        print(libc.syscall(435, 0, 0) == -1 and ctypes.get_errno())  # clone3: ENOSYS, as docker
        print(open("/proc/self/status").read().split("Seccomp_filters:")[1].split()[0])
        """
    )
    r = await run_container([HOST_PY, "-c", code])
    assert r.stdout.split() == [b"1", b"1", b"1", b"38", b"2"]
    whole = await run_container([HOST_PY, "-c", code], seccomp=_default_profile_copy())
    assert whole.stdout.split() == [b"1", b"1", b"1", b"38", b"1"]  # a custom profile: loaded whole


@pytest.mark.anyio
async def test_a_helper_for_one_confinement_drops_the_bounding_set_for_its_children(
    anyio_backend: str, busybox: Path, state: Path
) -> None:
    # The helper of a confinement drops its bounding set once (it keeps every
    # capability effective, to clone and set up); its children inherit the set dropped
    # and drop nothing themselves. One helper per bounding set, containers at once.
    script = "grep -E '^Cap(Bnd|Prm|Eff):' /proc/self/status"
    default = capabilities.DEFAULT_CAPS & capabilities.caller_bounding_set()
    cases: list[tuple[dict[str, object], frozenset[str]]] = [
        ({}, default),
        ({"cap_drop": ["CHOWN"]}, default - {"CAP_CHOWN"}),
        ({"cap_add": ["SYS_ADMIN"]}, default | {"CAP_SYS_ADMIN"}),
        ({}, default),
    ]
    seen: list[tuple[frozenset[str], dict[str, str]]] = []

    async def one(opts: dict[str, object], caps: frozenset[str]) -> None:
        r = await run_container(["sh", "-c", script], **opts)  # type: ignore[arg-type]
        seen.append((caps, dict(line.split(":\t") for line in r.stdout.decode().splitlines())))

    async with anyio.create_task_group() as tg:
        for opts, caps in cases * 2:
            tg.start_soon(one, opts, caps)
    for caps, fields in seen:
        assert fields["CapBnd"] == fields["CapPrm"] == fields["CapEff"] == f"{capabilities.mask(caps):016x}"
    zygotes = {}
    for h in spawn.helpers():
        status = dict(line.split(":\t", 1) for line in Path(f"/proc/{h.pid}/status").read_text().splitlines())
        if status["Seccomp"].strip() == "2":
            zygotes[int(status["CapBnd"], 16)] = int(status["CapEff"], 16)
    full = capabilities.mask(capabilities.caller_bounding_set())
    assert zygotes == {capabilities.mask(caps): full for _opts, caps in cases}
    # In a user namespace of its own the child has every capability again, there:
    # it drops them itself, from the same helper.
    r = await run_container(["sh", "-c", script], rootfs=str(busybox), state_dir=str(state), userns="auto")
    fields = dict(line.split(":\t") for line in r.stdout.decode().splitlines())
    assert fields["CapBnd"] == fields["CapEff"] == f"{capabilities.mask(default):016x}"


def _default_profile_copy() -> object:
    import dataclasses

    from supervisor import seccomp

    return dataclasses.replace(seccomp.DEFAULT_PROFILE, source="a copy")
