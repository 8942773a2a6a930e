"""`mydocker run`: namespaces, the container's view, stdio, exit statuses, bad input.

These run the real CLI as a subprocess against real namespaces (root only)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from .conftest import child_processes, describe_process, mydocker_cmd, processes_with_argv, run_cli

pytestmark = pytest.mark.root

NAMESPACES = ("pid", "mnt", "uts", "ipc", "net")


def sh(script: str, *opts: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return run_cli("run", *opts, "/bin/sh", "-c", script, **kw)


def test_namespaces_differ_from_the_hosts() -> None:
    script = "; ".join(f"readlink /proc/self/ns/{ns}" for ns in NAMESPACES)
    r = sh(script)
    assert r.returncode == 0, r.stderr
    inside = r.stdout.decode().split()
    for ns, link in zip(NAMESPACES, inside, strict=True):
        assert link != os.readlink(f"/proc/self/ns/{ns}"), f"{ns} namespace is the host's"


def test_network_host_shares_the_network_namespace() -> None:
    r = run_cli("run", "--network", "host", "readlink", "/proc/self/ns/net")
    assert r.stdout.decode().strip() == os.readlink("/proc/self/ns/net")


@pytest.mark.parametrize("ns", ["uts", "ipc"])
def test_uts_and_ipc_host_share_that_namespace_only(ns: str) -> None:
    script = "; ".join(f"readlink /proc/self/ns/{n}" for n in NAMESPACES)
    r = sh(script, f"--{ns}", "host")
    assert r.returncode == 0, r.stderr
    inside = dict(zip(NAMESPACES, r.stdout.decode().split(), strict=True))
    for n, link in inside.items():
        shared = link == os.readlink(f"/proc/self/ns/{n}")
        assert shared == (n == ns), f"--{ns} host: the {n} namespace is {'' if shared else 'not '}the host's"


def test_uts_host_shows_the_hosts_hostname_and_leaves_it_alone() -> None:
    host = os.uname().nodename
    r = run_cli("run", "--uts", "host", "sh", "-c", "hostname; echo $HOSTNAME")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == [host, host]  # lines: a host may have an empty name
    assert os.uname().nodename == host


def test_command_is_pid_1_and_proc_shows_only_the_container() -> None:
    r = sh("echo $$; ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '")
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "1"
    pids = lines[1].split()
    # sh (1), and ls and grep/sort/tr of the pipeline: all small numbers, none of the host's
    assert "1" in pids and all(int(p) < 20 for p in pids), pids


def test_only_loopback_and_it_is_up() -> None:
    r = sh("cat /proc/net/dev; cat /sys/class/net/lo/operstate /sys/class/net/lo/flags")
    text = r.stdout.decode()
    ifaces = re.findall(r"^\s*([\w.-]+):", text, re.M)
    assert ifaces == ["lo"]
    flags = int(text.split()[-1], 16)
    assert flags & 1, "lo is not up"


def test_hostname_defaults_to_short_id_and_can_be_set() -> None:
    r = run_cli("run", "hostname")
    assert re.fullmatch(rb"[0-9a-f]{12}\n", r.stdout), r.stdout
    r = run_cli("run", "--hostname", "box", "sh", "-c", "hostname; echo $HOSTNAME")
    assert r.stdout == b"box\nbox\n"
    assert os.uname().nodename != "box"


def test_environment_is_dockers_not_the_hosts() -> None:
    env = {**os.environ, "SECRET_HOST_VAR": "leak", "PASSED": "from-host"}
    r = run_cli("run", "-e", "FOO=bar", "-e", "PASSED", "-e", "ABSENT", "env", env=env)
    got = dict(line.split("=", 1) for line in r.stdout.decode().splitlines())
    assert got["FOO"] == "bar"
    assert got["PASSED"] == "from-host"
    assert "ABSENT" not in got and "SECRET_HOST_VAR" not in got
    assert got["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert got["HOME"] == "/root" and len(got["HOSTNAME"]) == 12
    assert "TERM" not in got


def test_workdir() -> None:
    assert run_cli("run", "-w", "/usr/share", "pwd").stdout == b"/usr/share\n"
    r = run_cli("run", "-w", "/nonexistent-dir", "pwd")
    assert r.returncode == 125
    assert b"/nonexistent-dir" in r.stderr and len(r.stderr.splitlines()) == 1


def test_command_options_pass_through_untouched() -> None:
    assert run_cli("run", "/bin/sh", "-c", "echo hi").stdout == b"hi\n"
    assert run_cli("run", "--", "echo", "--help", "-t").stdout == b"--help -t\n"
    assert run_cli("run", "-e", "X=1", "--", "sh", "-c", "echo $X").stdout == b"1\n"


def test_stdout_and_stderr_are_separate_and_byte_exact() -> None:
    r = sh("printf 'out\\377\\000x'; printf 'err\\n' >&2")
    assert r.stdout == b"out\xff\x00x"
    assert r.stderr == b"err\n"


def test_stdin_is_eof_without_i_and_attached_with_i() -> None:
    r = run_cli("run", "cat", input=b"ignored")
    assert r.returncode == 0 and r.stdout == b""
    r = run_cli("run", "-i", "sort", "-r", input=b"a\nb\n")
    assert r.stdout == b"b\na\n"


def test_stdin_from_a_regular_file(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "in.txt")
    with open(path, "wb") as f:
        f.write(b"from a file\n")
    with open(path, "rb") as f:
        r = subprocess.run([*mydocker_cmd(), "run", "-i", "cat"], stdin=f, capture_output=True, timeout=30)
    assert r.stdout == b"from a file\n"


@pytest.mark.parametrize("code", [0, 1, 3, 42, 255])
def test_exit_status_is_the_containers(code: int) -> None:
    assert sh(f"exit {code}").returncode == code


def test_killed_by_signal_gives_128_plus_n() -> None:
    # PID 1 cannot be killed from inside its namespace; its child can, and sh
    # reports that child's fate; so kill from outside: --pid host makes it visible.
    r = sh("kill -TERM $$; sleep 5", "--pid", "host")
    assert r.returncode == 128 + signal.SIGTERM
    r = sh("kill -KILL $$", "--pid", "host")
    assert r.returncode == 137


def test_command_not_found_is_127() -> None:
    r = run_cli("run", "/nonexistent")
    assert r.returncode == 127
    assert r.stderr == b"mydocker: /nonexistent: command not found\n"
    r = run_cli("run", "no-such-command-anywhere")
    assert r.returncode == 127
    assert r.stderr.startswith(b"mydocker: no-such-command-anywhere: command not found")


def test_not_executable_is_126(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "script")
    with open(path, "w") as f:
        f.write("#!/bin/sh\necho no\n")
    for target in (path, "/etc", "/etc/hostname"):
        r = run_cli("run", target)
        assert r.returncode == 126, (target, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and b"Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--no-such-flag", "true"],
        ["run"],
        ["run", "--network", "bogus", "true"],
        ["run", "-w", "relative/dir", "true"],
        ["run", "-e", "=x", "true"],
        ["run", "--hostname", "x" * 100, "true"],
        ["frobnicate"],
    ],
)
def test_bad_input_is_one_line_and_125(args: list[str]) -> None:
    r = run_cli(*args)
    assert r.returncode == 125, r
    assert r.stderr.startswith(b"mydocker: ") and r.stderr.count(b"\n") == 1, r.stderr
    assert b"Traceback" not in r.stderr


def test_debug_shows_a_traceback() -> None:
    r = run_cli("--debug", "run", "-w", "relative", "true")
    assert r.returncode != 0 and b"Traceback" in r.stderr


def test_help_and_version() -> None:
    r = run_cli("--help")
    assert r.returncode == 0 and b"run" in r.stdout
    r = run_cli("run", "--help")
    assert r.returncode == 0 and b"--tty" in r.stdout and b"--interactive" in r.stdout
    r = run_cli("--version")
    assert r.returncode == 0 and re.match(rb"mydocker, version \d+\.\d+", r.stdout)


def test_no_privileges_is_a_clear_error() -> None:
    # uid 0 but an empty capability bounding set: clone3 itself says EPERM
    r = subprocess.run(
        ["setpriv", "--bounding-set=-all", *mydocker_cmd(), "run", "true"],
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 125
    assert r.stderr.startswith(b"mydocker: ") and b"root" in r.stderr, r.stderr
    assert r.stderr.count(b"\n") == 1


def test_an_ordinary_user_runs_rootless() -> None:
    # uid 1000 (in a user namespace, so that the venv stays readable): no root needed
    # any more, a user namespace of its own does (tests/test_rootless.py: a real one)
    r = subprocess.run(
        ["unshare", "--user", "--map-user=1000", "--map-group=1000", *mydocker_cmd(), "run", "id", "-u"],
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert (r.returncode, r.stdout) == (0, b"0\n"), r.stderr


def _mountinfo() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split()[4] for line in f)


def test_host_mounts_and_proc_untouched() -> None:
    before = _mountinfo()
    r = run_cli(
        "run", "--privileged", "sh", "-c", "mount -t tmpfs none /mnt && touch /mnt/x && mount | grep -c proc"
    )
    assert r.returncode == 0, r.stderr
    assert _mountinfo() == before
    assert os.path.exists(f"/proc/{os.getpid()}/status") and os.path.exists("/proc/1/status")


def test_no_zombie_or_helper_left_by_the_cli(child_subreaper: None) -> None:
    # A command line no other process has (other test runs share this host).
    tag = f"1000.{os.getpid()}{time.monotonic_ns() % 1_000_000:06d}"
    proc = subprocess.Popen(
        [*mydocker_cmd(), "run", "sh", "-c", f"sleep {tag} & sleep 0.1"],
        stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.wait(timeout=30) == 0
    # pytest is a child subreaper (conftest): whatever the CLI left behind (its spawn
    # helper, its container's PID 1, a zombie of either) was re-parented to us when
    # it exited, rather than to the host's init, where nothing here would see it.
    left = [describe_process(pid) for pid in sorted(child_processes())]
    # What the container started died with it, wherever it might have gone.
    survivors = processes_with_argv(["sleep", tag])
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"the CLI left processes behind: {left}"
    assert not survivors, f"the container's background sleep outlived it: {survivors}"
