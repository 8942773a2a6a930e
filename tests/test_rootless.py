"""Rootless containers, run by a real unprivileged user (uid 1000, through setpriv),
with and without a subordinate id range; and ``--userns auto`` as root.

The user gets a world-readable copy of mydocker and its dependencies (the checkout
may sit in a root-only directory, as /root on a fresh machine) and Debian's
/usr/bin/python3. Whether the user has a range is set per test in a private mount
namespace: a copy of /etc with its own /etc/subuid and /etc/subgid is bound over
/etc there, so the host's files never change.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest

from . import busybox as bb
from .conftest import mydocker_cmd, run_cli

pytestmark = pytest.mark.root

UID = 1000
SYSTEM_PY = "/usr/bin/python3"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mydocker and its dependencies where uid 1000 can read them."""
    if not os.access(SYSTEM_PY, os.X_OK) or not shutil.which("setpriv"):
        pytest.skip(f"needs {SYSTEM_PY} and setpriv")
    site = tmp_path_factory.mktemp("rootless-code")
    for path in sys.path:
        if path.endswith("site-packages") and os.path.isdir(path):
            for name in os.listdir(path):
                if "mydocker" in name or name.startswith(("__editable__", "_pytest", "pytest", "ruff")):
                    continue  # ours comes from the checkout; the test tools are not needed
                src = os.path.join(path, name)
                if os.path.isdir(src):
                    shutil.copytree(src, site / name, dirs_exist_ok=True)
                else:
                    shutil.copy2(src, site / name)
    shutil.copytree(REPO / "supervisor", site / "supervisor", ignore=shutil.ignore_patterns("__pycache__"))
    bb.reachable(site)
    subprocess.run(["chmod", "-R", "a+rX", str(site)], check=True)
    return site


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A home directory of uid 1000's (its state goes below it)."""
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, UID, UID)
    bb.reachable(tmp_path, 0o711)
    yield home
    # what the user's containers and images left is the user's: removed as the user
    # would (a range's ids need the user's namespace: `mydocker` itself did that)
    subprocess.run(["rm", "-rf", str(home)], check=False)


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox root filesystem uid 1000 can read."""
    return bb.reachable(bb.build(tmp_path_factory)[0])


def as_user(
    code: Path,
    home: Path,
    args: list[str],
    *,
    subuid: str | None = None,
    path: str = "/usr/local/bin:/usr/bin:/bin",
    timeout: float = 60,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """``mydocker ARGS`` as uid 1000; ``subuid``: its /etc/subuid and /etc/subgid line
    (None: no range), in a private mount namespace."""
    env = {
        "HOME": str(home),
        "PATH": path,
        "PYTHONPATH": str(code),
        "LANG": "C.UTF-8",
    }
    user = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "env", "-i"]
    user += [f"{k}={v}" for k, v in env.items()]
    user += [SYSTEM_PY, "-m", "supervisor.cli", *args]
    etc = home.parent / "etc"
    if not etc.exists():
        shutil.copytree("/etc", etc, symlinks=True, ignore_dangling_symlinks=True)
    for name in ("subuid", "subgid"):
        (etc / name).write_text(subuid or "")
        os.chmod(etc / name, 0o644)
    script = f"mount --bind {shlex.quote(str(etc))} /etc && exec {shlex.join(user)}"
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        cwd="/",
    )


def out(r: subprocess.CompletedProcess[bytes]) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


RANGE = f"{UID}:200000:65536\n"


# ---------------------------------------------------------------- the same contract as root


def test_a_rootless_container_is_pid_1_with_its_own_hostname_and_only_lo(code: Path, home: Path) -> None:
    r = as_user(
        code,
        home,
        [
            "run",
            "--hostname",
            "box",
            "sh",
            "-c",
            "echo $$; hostname; tail -n +3 /proc/net/dev | cut -d: -f1; id -u",
        ],
    )
    assert out(r).split() == ["1", "box", "lo", "0"]


def test_exit_statuses_are_the_same_rootless(code: Path, home: Path) -> None:
    assert as_user(code, home, ["run", "sh", "-c", "exit 3"]).returncode == 3
    assert as_user(code, home, ["run", "/etc/passwd"]).returncode == 126
    r = as_user(code, home, ["run", "/no/such/command"])
    assert r.returncode == 127 and b"command not found" in r.stderr


def test_root_inside_is_the_user_outside(code: Path, home: Path) -> None:
    script = "cat /proc/self/uid_map; touch /etc/mydocker-rootless-probe 2>/dev/null && echo wrote; echo done"
    lines = out(as_user(code, home, ["run", "sh", "-c", script])).split("\n")
    assert lines[0].split() == ["0", str(UID), "1"]  # a single-id map: no range
    assert "wrote" not in lines and not os.path.exists("/etc/mydocker-rootless-probe")


def test_a_range_is_mapped_whole(code: Path, home: Path) -> None:
    r = as_user(code, home, ["run", "cat", "/proc/self/uid_map", "/proc/self/gid_map"], subuid=RANGE)
    rows = [line.split() for line in out(r).splitlines()]
    assert rows == [["0", str(UID), "1"], ["1", "200000", "65536"]] * 2


def test_a_range_without_newuidmap_is_one_id_and_said_once(code: Path, home: Path, tmp_path: Path) -> None:
    # PATH without newuidmap: mydocker falls back to mapping the user alone, and says so
    bare = tmp_path / "bin"
    bare.mkdir()
    os.chmod(bare, 0o755)
    r = as_user(code, home, ["run", "cat", "/proc/self/uid_map"], subuid=RANGE, path=str(bare))
    assert out(r).split() == ["0", str(UID), "1"]
    assert r.stderr.count(b"\n") == 1 and b"newuidmap" in r.stderr, r.stderr


def test_a_rootless_rootfs_with_volumes_read_only_and_tmpfs(
    code: Path, home: Path, rootfs: Path, tmp_path: Path
) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    os.chown(vol, UID, UID)
    script = "echo x > /data/f && cat /data/f && echo y > /scratch/g && touch /z 2>/dev/null || echo ro"
    args = [
        "run",
        "--rootfs",
        str(rootfs),
        "--read-only",
        "-v",
        f"{vol}:/data",
        "--tmpfs",
        "/scratch",
        "sh",
        "-c",
        script,
    ]
    assert out(as_user(code, home, args)).split() == ["x", "ro"]
    assert (vol / "f").read_text() == "x\n" and (vol / "f").stat().st_uid == UID
    # the state went to the user's own XDG data directory, and nothing is left there
    assert (home / ".local/share/mydocker/containers").is_dir()
    assert os.listdir(home / ".local/share/mydocker/containers") == []


def test_rootless_copy_on_write_leaves_the_rootfs_alone(
    code: Path, home: Path, rootfs: Path, tmp_path: Path
) -> None:
    mine = tmp_path / "rootfs"  # the user's own: root-owned files would be read-only to it
    shutil.copytree(rootfs, mine, symlinks=True)
    subprocess.run(["chown", "-R", f"{UID}:{UID}", str(mine)], check=True)
    before = bb.snapshot(mine)
    r = as_user(
        code, home, ["run", "--rootfs", str(mine), "sh", "-c", "rm -f /bin/ls; echo new > /etc/hostname"]
    )
    assert r.returncode == 0, r.stderr
    assert bb.snapshot(mine) == before


@pytest.mark.parametrize("subuid", [None, RANGE])
def test_rootless_images(code: Path, home: Path, tmp_path: Path, subuid: str | None) -> None:
    # an image whose files have several owners: kept with a range, squashed without
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    shutil.copy2(shutil.which("busybox") or "/bin/busybox", src / "bin/busybox")
    for tool in ("sh", "ls", "stat"):
        (src / "bin" / tool).symlink_to("busybox")
    (src / "www").mkdir()
    (src / "www/index").write_text("hi\n")
    tar = tmp_path / "img.tar"
    subprocess.run(
        ["tar", "--numeric-owner", "--owner=0", "--group=0", "-cf", str(tar), "-C", str(src), "bin"],
        check=True,
    )
    subprocess.run(
        ["tar", "--numeric-owner", "--owner=33", "--group=33", "-rf", str(tar), "-C", str(src), "www"],
        check=True,
    )
    os.chmod(tmp_path, 0o755)
    os.chmod(tar, 0o644)
    assert out(as_user(code, home, ["image", "import", "img", str(tar)], subuid=subuid)).strip() == "img"
    assert "img" in out(as_user(code, home, ["image", "ls"], subuid=subuid))
    owner = out(
        as_user(code, home, ["run", "--image", "img", "stat", "-c", "%u", "/www/index"], subuid=subuid)
    )
    assert owner.strip() == ("33" if subuid else "0")
    assert out(as_user(code, home, ["image", "rm", "img"], subuid=subuid)).strip() == "img"
    assert os.listdir(home / ".local/share/mydocker/images") == []


def test_a_rootless_tty(code: Path, home: Path) -> None:
    etc = home.parent / "etc"
    shutil.copytree("/etc", etc, symlinks=True, ignore_dangling_symlinks=True)
    env = f"HOME={home} PATH=/usr/bin:/bin PYTHONPATH={code}"
    cmd = (
        f"mount --bind {etc} /etc && exec setpriv --reuid={UID} --regid={UID} --clear-groups "
        f"env -i {env} {SYSTEM_PY} -m supervisor.cli run -ti sh"
    )
    child = pexpect.spawn("unshare", ["-m", "--propagation", "private", "sh", "-c", cmd], timeout=30)
    try:
        child.expect("# ")
        child.sendline("tty; echo $((6*7)); exit 4")
        child.expect("/dev/pts/")
        child.expect("42")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 4


# ---------------------------------------------------------------- what a rootless user cannot have


def test_a_limit_without_a_delegated_cgroup_is_one_line(code: Path, home: Path) -> None:
    r = as_user(code, home, ["run", "-m", "64m", "true"])
    assert r.returncode == 125 and r.stderr.count(b"\n") == 1, r.stderr
    assert b"delegated" in r.stderr


def test_a_state_dir_the_user_cannot_write_is_one_line(code: Path, home: Path, rootfs: Path) -> None:
    r = as_user(
        code, home, ["run", "--state-dir", "/var/lib/mydocker-not-yours", "--rootfs", str(rootfs), "true"]
    )
    assert r.returncode == 125 and r.stderr.count(b"\n") == 1 and b"state directory" in r.stderr, r.stderr


def test_network_host_works_rootless(code: Path, home: Path) -> None:
    host = sorted(os.listdir("/sys/class/net"))
    assert out(as_user(code, home, ["run", "--network", "host", "ls", "/sys/class/net"])).split() == host


def test_no_user_namespace_is_not_permitted_with_the_reason() -> None:
    # A user namespace whose limit leaves none to make below it: the library says so.
    code = textwrap.dedent(
        """
        import anyio
        from supervisor import run_container, NotPermittedError
        try:
            anyio.run(run_container, ["true"])
        except NotPermittedError as e:
            print("NotPermittedError:", e)
        """
    )
    inner = shlex.join(["unshare", "-U", "--map-user=1000", "--map-group=1000", sys.executable, "-c", code])
    r = subprocess.run(
        ["unshare", "-Ur", "sh", "-c", f"echo 1 > /proc/sys/user/max_user_namespaces && exec {inner}"],
        capture_output=True,
        timeout=60,
        cwd=str(REPO),
        stdin=subprocess.DEVNULL,
    )
    assert r.stdout.startswith(b"NotPermittedError:"), r.stderr
    assert b"user namespace" in r.stdout


@pytest.mark.orphans
def test_a_sigkilled_rootless_mydocker_takes_its_container_with_it(code: Path, home: Path) -> None:
    marker = "60.424242"
    etc = home.parent / "etc"
    shutil.copytree("/etc", etc, symlinks=True, ignore_dangling_symlinks=True)
    env = f"HOME={home} PATH=/usr/bin:/bin PYTHONPATH={code}"
    cmd = (
        f"mount --bind {etc} /etc && exec setpriv --reuid={UID} --regid={UID} --clear-groups "
        f"env -i {env} {SYSTEM_PY} -m supervisor.cli run sleep {marker}"
    )
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", cmd], stdin=subprocess.DEVNULL
    )
    try:
        pid = None
        for _ in range(500):
            pid = _find(["sleep", marker])
            if pid:
                break
            time.sleep(0.02)
        assert pid, "the container did not start"
        pidfd = os.pidfd_open(pid)
    finally:
        proc.kill()
        proc.wait()
    try:
        import select

        assert select.select([pidfd], [], [], 30)[0], "the container outlived its mydocker"
    finally:
        os.close(pidfd)


def _find(argv: list[str]) -> int | None:
    want = "\0".join(argv).encode() + b"\0"
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read() == want:
                        return int(pid)
            except OSError:
                continue
    return None


@pytest.mark.parametrize("subuid", [None, RANGE], ids=["one-id", "range"])
def test_cp_into_an_exited_rootless_container_gives_the_files_to_its_root(
    code: Path, home: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, subuid: str | None
) -> None:
    # an exited container's layers are written by the root of a user namespace that
    # maps 0 to the user: what is copied in must belong to 0 there (the container's
    # root, the user on the host), as it does when copied into a running one; not to
    # the user's uid inside (a subordinate id on the host, or with one id: EINVAL)
    def md(*args: str) -> subprocess.CompletedProcess[bytes]:
        return as_user(code, home, list(args), subuid=subuid)

    tar = tmp_path_factory.getbasetemp() / "rootless-busybox.tar"
    if not tar.exists():
        shutil.copy2(bb.build(tmp_path_factory)[1], tar)
        os.chmod(tar, 0o644)
    src = tmp_path / "f"
    src.write_text("late")
    os.chmod(tmp_path, 0o755)
    os.chmod(src, 0o644)
    try:
        out(md("image", "import", "bb", str(tar)))
        out(md("run", "-d", "--name", "gone", "--image", "bb", "true"))
        out(md("wait", "gone"))
        out(md("cp", str(src), "gone:/tmp/f"))
        out(md("commit", "gone", "snap"))
        assert out(md("run", "--rm", "--image", "snap", "stat", "-c", "%u:%g", "/tmp/f")).split() == ["0:0"]
        out(md("rm", "gone"))
        out(md("image", "rm", "snap", "bb"))
    finally:
        _stop_daemon(home, md)


def _stop_daemon(home: Path, md: Callable[..., object]) -> None:
    """Stop the user's daemon (``md``: mydocker as the user) and reap it: it was
    re-parented to pytest, a subreaper, when the CLI that started it exited."""
    pid_file = home / ".local" / "share" / "mydocker" / "daemon.pid"
    pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
    md("daemon", "--stop")
    if pid is not None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


# ---------------------------------------------------------------- --userns auto (root)


@pytest.mark.parametrize("subuid", [None, RANGE], ids=["one-id", "range"])
def test_detached_containers_without_root(
    code: Path, home: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, subuid: str | None
) -> None:
    # the user's own daemon, state below the user's home: run -d, ps, logs, exec, cp,
    # stop, commit, rm, then the daemon stopped (and reaped: pytest is a subreaper)
    def md(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return as_user(code, home, list(args), subuid=subuid, input=input)

    # an image of the user's own: a root filesystem whose files the container's root owns
    tar = tmp_path_factory.getbasetemp() / "rootless-busybox.tar"
    if not tar.exists():
        shutil.copy2(bb.build(tmp_path_factory)[1], tar)
        os.chmod(tar, 0o644)
    try:
        out(md("image", "import", "bb", str(tar)))
        cid = out(md("run", "-d", "--name", "svc", "--image", "bb", "sh", "-c", "echo up; sleep 100")).strip()
        assert len(cid) == 64
        assert "svc" in out(md("ps"))
        deadline = time.monotonic() + 20
        while out(md("logs", "svc")) != "up\n" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert out(md("logs", "svc")) == "up\n"
        assert out(md("exec", "svc", "sh", "-c", "id -u; cat /proc/1/cmdline | tr '\\0' ' '")).split() == [
            "0",
            "sleep",
            "100",
        ]
        assert out(md("exec", "-i", "svc", "sh", "-c", "cat > /tmp/in; cat /tmp/in", input=b"data")) == "data"
        src = tmp_path / "f"
        src.write_text("from host")
        os.chmod(tmp_path, 0o755)
        os.chmod(src, 0o644)
        out(md("cp", str(src), "svc:/tmp/f"))
        assert out(md("exec", "svc", "cat", "/tmp/f")) == "from host"
        assert out(md("stop", "svc")).strip() == "svc"
        assert "Exited (137)" in out(md("ps", "-a"))
        back = home / "back"
        out(md("cp", "svc:/tmp/f", str(back)))  # from the exited container's layers
        assert back.read_text() == "from host"
        out(md("commit", "svc", "snap"))
        assert out(md("run", "--image", "snap", "cat", "/tmp/f")) == "from host"
        assert out(md("rm", "svc")).strip() == "svc"
        assert out(md("ps", "-a")).count("\n") == 1  # the header alone
        out(md("image", "rm", "snap", "bb"))
    finally:
        _stop_daemon(home, md)


def test_userns_auto_gives_each_container_a_range_of_its_own(tmp_path: Path, rootfs: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    os.chmod(vol, 0o1777)
    script = (
        "head -1 /proc/self/uid_map; id -u; touch /data/f$(cat /proc/sys/kernel/random/uuid); "
        "touch /etc/x 2>/dev/null || echo ro; sleep 0.5"  # the two at once
    )
    args = ["run", "--userns", "auto", "--rootfs", str(rootfs), "--state-dir", str(tmp_path / "state")]
    procs = [
        subprocess.Popen(
            [*mydocker_cmd(), *args, "-v", f"{vol}:/data", "sh", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr
        outs.append(stdout.decode().split())
    bases = {o[1] for o in outs}
    assert len(bases) == 2, outs  # two ranges, one each
    for o in outs:
        assert o[0] == "0" and o[2] == "65536" and o[3] == "0" and o[4] == "ro"
    owners = {f.stat().st_uid for f in vol.iterdir()}
    assert owners == {int(b) for b in bases}  # root inside was an unprivileged id outside


def test_userns_host_without_root_is_refused(code: Path, home: Path) -> None:
    r = as_user(code, home, ["run", "--userns", "host", "true"])
    assert r.returncode == 125 and b"needs root" in r.stderr, r.stderr


def test_userns_auto_bad_value() -> None:
    r = run_cli("run", "--userns", "sometimes", "true")
    assert r.returncode == 125 and b"invalid --userns" in r.stderr
