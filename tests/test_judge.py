"""Judges and CI sandboxes: CPU and wall time limits, ulimits, output caps, the report.

Unit tests (no root) for the input, the verdicts and the adaptive timer; root tests
with real containers on both anyio backends and through the CLI. Bounds on times
are generous (the machine may be loaded): a test tells a shared budget from one per
process, never a precise time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from supervisor import ContainerSpec, SpecError, Ulimit, open_container, run_container, ulimits, usage
from supervisor.enforce import MIN_INTERVAL, Watch
from supervisor.spec import Limits

from . import busybox as bb
from .conftest import run_cli

root = pytest.mark.root
PY = sys.executable
BUSY = "while :; do :; done"
MEMORY_HOG = "b = []\nwhile True: b.append(b'x' * (1 << 20))"


# ---------------------------------------------------------------- input (unit)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"nofile": 64}, [Ulimit("nofile", 64, 64)]),
        ({"nofile": "64:128"}, [Ulimit("nofile", 64, 128)]),
        ({"nproc": (32, 64)}, [Ulimit("nproc", 32, 64)]),
        ({"core": -1}, [Ulimit("core", -1, -1)]),
        ({"stack": "8388608:unlimited"}, [Ulimit("stack", 8388608, -1)]),
        (["nofile=10:20", "fsize=1024"], [Ulimit("fsize", 1024, 1024), Ulimit("nofile", 10, 20)]),
        (["nofile=10", "nofile=20"], [Ulimit("nofile", 20, 20)]),  # the later wins
    ],
)
def test_ulimits_take_dockers_syntax(given: object, expected: list[Ulimit]) -> None:
    assert ContainerSpec(["true"], ulimits=given).ulimits == tuple(expected)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"files": 10}, "unknown limit 'files'"),
        ({"nofile": "20:10"}, "soft limit 20 is above the hard limit 10"),
        ({"nofile": "-1:10"}, "above the hard limit"),
        ({"nofile": "ten"}, "not a whole number"),
        ({"nofile": -5}, "0 or more, or -1"),
        ({"nofile": 1.5}, "not a whole number"),
        (["nofile"], "TYPE=SOFT"),
        ("nofile=1", "not a single string"),
    ],
)
def test_bad_ulimits_are_one_sentence(given: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        ContainerSpec(["true"], ulimits=given)  # type: ignore[arg-type]


def test_the_child_gets_core_0_unless_told_otherwise() -> None:
    assert ulimits.child_rlimits(()) == (("core", 4, 0, 0),)
    mine = ContainerSpec(["true"], ulimits={"core": -1, "nofile": "1:2"}).ulimits
    assert ulimits.child_rlimits(mine) == (
        ("core", 4, ulimits.RLIM_INFINITY, ulimits.RLIM_INFINITY),
        ("nofile", 7, 1, 2),
    )


@pytest.mark.parametrize("name", ["cpu_time", "wall_time"])
@pytest.mark.parametrize("value", [-1, 0, "0", "abc", "inf", "nan", True, None])
def test_bad_times_are_spec_errors(name: str, value: object) -> None:
    if value is None:
        assert getattr(Limits(**{name: value}), name) is None  # unset
        return
    with pytest.raises(SpecError, match=f"invalid --{name.replace('_', '-')}"):
        ContainerSpec(["true"], limits={name: value})


def test_times_are_seconds() -> None:
    limits = ContainerSpec(["true"], limits={"cpu_time": "1.5", "wall_time": 2}).limits
    assert (limits.cpu_time, limits.wall_time) == (1.5, 2.0)
    assert limits.timed and not Limits().timed


def test_an_unwritable_report_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot write the report"):
        usage.ReportFile(str(tmp_path / "no" / "such" / "dir.json"))


# ---------------------------------------------------------------- verdicts (unit)


def figures(**kw: Any) -> usage.Usage:
    base: dict[str, Any] = {
        "cpu_time": 0.1,
        "cpu_user": 0.1,
        "cpu_system": 0.0,
        "wall_time": 0.2,
        "memory_peak": 1 << 20,
        "oom_killed": False,
    }
    return usage.Usage(**{**base, **kw})


@pytest.mark.parametrize(
    ("returncode", "sig", "kw", "struck", "status", "limit"),
    [
        (0, None, {}, None, "OK", None),
        (3, None, {}, None, "RE", None),
        (139, 11, {}, None, "SG", None),
        (137, 9, {}, "cpu_time", "TO", "cpu_time"),
        (137, 9, {}, "wall_time", "TO", "wall_time"),
        (137, 9, {}, "output", "OL", "output"),
        (137, 9, {"oom_killed": True}, None, "ML", "memory"),
        # ended on its own, but past its budget: a check comes every few ms
        (0, None, {"cpu_time": 1.2}, None, "TO", "cpu_time"),
        (0, None, {"wall_time": 9.0}, None, "TO", "wall_time"),
        # the limit that struck first wins over what followed
        (137, 9, {"oom_killed": True}, "cpu_time", "TO", "cpu_time"),
    ],
)
def test_verdicts_are_isolates(
    returncode: int, sig: int | None, kw: dict[str, Any], struck: str | None, status: str, limit: str | None
) -> None:
    v = usage.judge(returncode, sig, figures(**kw), cpu_time=1.0, wall_time=5.0, struck=struck)
    assert (v.status, v.limit) == (status, limit)
    assert v.message and "\n" not in v.message


#: the report's fields, in the order it writes them
REPORT_FIELDS = [
    "status",
    "exit_code",
    "signal",
    "cpu_time",
    "cpu_user",
    "cpu_system",
    "wall_time",
    "memory_peak",
    "oom_killed",
    "limit",
    "message",
]


def test_the_report_has_every_field_in_order() -> None:
    v = usage.judge(137, 9, figures(cpu_time=1.01), cpu_time=1.0, struck="cpu_time")
    data = json.loads(json.dumps(usage.report(137, 9, figures(cpu_time=1.01), v)))
    assert list(data) == REPORT_FIELDS
    assert data["status"] == "TO" and data["limit"] == "cpu_time" and data["cpu_time"] == 1.01
    assert usage.failure_report(127, "x: command not found")["status"] == "XX"


def test_counters_merge_keeps_the_last_times_and_the_highest_peak() -> None:
    first = usage.Counters(10, 6, 4, 300)
    assert first.merge(usage.Counters(20, 12, 8, None)) == usage.Counters(20, 12, 8, 300)
    assert first.merge(usage.Counters()) == first
    assert usage.Counters().merge(usage.Counters(None, None, None, 5)).memory_peak == 5


def test_usage_falls_back_to_pid_1s_rusage() -> None:
    u = usage.Usage.of(None, usage.Rusage(0.5, 0.25, 4096), 1.0, False)
    assert (u.cpu_time, u.cpu_user, u.cpu_system, u.memory_peak) == (0.75, 0.5, 0.25, 4096)
    u = usage.Usage.of(
        usage.Counters(2_000_000, 1_500_000, 500_000, None), usage.Rusage(9, 9, 4096), 3.0, True
    )
    assert (u.cpu_time, u.cpu_user, u.cpu_system, u.memory_peak, u.oom_killed) == (2.0, 1.5, 0.5, 4096, True)


# ---------------------------------------------------------------- the adaptive timer (unit)


class FakeContainer:
    """What a Watch needs of a container; the cgroup says what ``used`` holds."""

    def __init__(self, cpus: int = 2, **limits: Any) -> None:
        self.spec = ContainerSpec(["true"], limits={"cpuset_cpus": ",".join(map(str, range(cpus))), **limits})
        self.used: int | None = 0
        self.cgroup = SimpleNamespace(cpu_usec=lambda: self.used)
        self.struck: str | None = None
        self.kills = 0
        self.gone = False

    def kill(self) -> None:
        self.kills += 1

    def exited(self) -> bool:
        return self.gone


def test_the_timer_checks_when_the_budget_could_first_be_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    c = FakeContainer(cpus=2, cpu_time=1)
    w = Watch(c, now=100.0)  # type: ignore[arg-type]
    assert w.first(100.0) == pytest.approx(100.5)  # 1 s on 2 CPUs: not before 0.5 s
    c.used = 600_000
    assert w.check(100.5) == pytest.approx(100.7)  # 0.4 s left: 0.2 s
    c.used = 999_000
    assert w.check(100.7) == pytest.approx(100.7 + MIN_INTERVAL)  # never closer than this
    c.used = 1_000_001
    assert w.check(100.71) is None
    assert (c.struck, c.kills) == ("cpu_time", 1)
    assert w.container is None  # nothing held once it struck


def test_the_timer_keeps_the_wall_deadline_and_stops_with_the_container() -> None:
    c = FakeContainer(cpus=1, cpu_time=10, wall_time=1)
    w = Watch(c, now=0.0)  # type: ignore[arg-type]
    assert w.first(0.0) == 1.0  # the deadline comes before the budget could go
    assert w.check(1.0) is None and (c.struck, c.kills) == ("wall_time", 1)
    c2 = FakeContainer(cpus=1, wall_time=1)
    w2 = Watch(c2, now=0.0)  # type: ignore[arg-type]
    c2.gone = True
    assert w2.check(1.0) is None and (c2.struck, c2.kills) == (None, 0)  # ended on its own


def test_the_timer_waits_for_a_counter_it_cannot_read() -> None:
    c = FakeContainer(cpus=1, cpu_time=1)
    c.used = None
    w = Watch(c, now=0.0)  # type: ignore[arg-type]
    nxt = w.check(1.0)
    assert nxt is not None and 1.0 < nxt < 2.0 and c.kills == 0


# ---------------------------------------------------------------- the library (root)


@root
@pytest.mark.anyio
async def test_a_busy_loop_is_killed_at_its_cpu_time() -> None:
    r = await run_container(["sh", "-c", BUSY], limits={"cpu_time": 1}, check=False)
    assert (r.returncode, r.signal, r.status, r.limit) == (137, signal.SIGKILL, "TO", "cpu_time")
    assert r.usage is not None
    assert 1.0 <= r.usage.cpu_time < 1.8, r.usage
    assert r.usage.cpu_user + r.usage.cpu_system == pytest.approx(r.usage.cpu_time, abs=0.01)
    assert r.usage.wall_time >= r.usage.cpu_time * 0.9


@root
@pytest.mark.anyio
async def test_busy_children_share_one_budget() -> None:
    # RLIMIT_CPU would give each process the whole budget: four of them, 4 s.
    script = f"for i in 1 2 3 4; do sh -c '{BUSY}' & done; wait"
    r = await run_container(["sh", "-c", script], limits={"cpu_time": 1}, check=False)
    assert (r.status, r.limit, r.returncode) == ("TO", "cpu_time", 137)
    assert r.usage is not None
    assert 1.0 <= r.usage.cpu_time < 1.8, r.usage


@root
@pytest.mark.anyio
async def test_a_sleeper_is_killed_at_its_wall_time() -> None:
    r = await run_container(["sleep", "30"], limits={"wall_time": 0.5, "cpu_time": 5}, check=False)
    assert (r.status, r.limit, r.returncode) == ("TO", "wall_time", 137)
    assert r.usage is not None
    assert 0.5 <= r.usage.wall_time < 20 and r.usage.cpu_time < 0.5


@root
@pytest.mark.anyio
async def test_within_its_limits_a_container_is_ok_and_left_alone() -> None:
    r = await run_container(["sh", "-c", "echo hi"], limits={"cpu_time": 5, "wall_time": 30, "memory": "64m"})
    assert (r.status, r.limit, r.returncode, r.stdout) == ("OK", None, 0, b"hi\n")
    assert r.usage is not None and 0 <= r.usage.cpu_time < 5 and r.usage.memory_peak


@root
@pytest.mark.anyio
async def test_max_output_stops_yes_and_keeps_what_was_allowed() -> None:
    r = await run_container(["yes"], max_output=100_000, check=False)
    assert (r.status, r.limit, r.returncode) == ("OL", "output", 137)
    assert r.stdout == b"y\n" * 50_000


@root
@pytest.mark.anyio
async def test_max_output_counts_stdout_and_stderr_together() -> None:
    r = await run_container(
        ["sh", "-c", "echo 1234; sleep 0.2; echo 5678 >&2; sleep 30"], max_output=7, check=False
    )
    assert (r.status, r.returncode) == ("OL", 137)
    assert (r.stdout, r.stderr) == (b"1234\n", b"56")
    ok = await run_container(["sh", "-c", "echo 1234"], max_output=5)
    assert (ok.status, ok.stdout) == ("OK", b"1234\n")


@root
@pytest.mark.anyio
async def test_an_oom_kill_is_ml_with_the_peak_from_the_cgroup() -> None:
    r = await run_container([PY, "-c", MEMORY_HOG], limits={"memory": "32m"}, check=False)
    assert (r.status, r.limit, r.returncode) == ("ML", "memory", 137)
    assert r.usage is not None and r.usage.oom_killed
    assert r.usage.memory_peak is not None and 16 << 20 <= r.usage.memory_peak <= 32 << 20


@root
@pytest.mark.anyio
async def test_a_signal_no_limit_sent_is_sg() -> None:
    async with await open_container(["sleep", "30"]) as c:
        c.kill()
        await c.wait()
    assert c.verdict is not None and (c.verdict.status, c.verdict.limit) == ("SG", None)
    segv = await run_container([PY, "-c", "import ctypes; ctypes.string_at(0)"], check=False)
    assert (segv.status, segv.signal) == ("SG", signal.SIGSEGV)


@root
@pytest.mark.anyio
async def test_usage_so_far_while_it_runs() -> None:
    async with await open_container(["sh", "-c", BUSY], limits={"wall_time": 30}) as c:
        with anyio.fail_after(20):
            while c.usage.cpu_time < 0.05:
                await anyio.sleep(0.02)
        assert c.verdict is None  # still running
    assert c.usage.cpu_time >= 0.05 and c.usage is c.usage  # final, and kept


@root
@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"limits": {"cpu_time": -1}}, "invalid --cpu-time"),
        ({"limits": {"wall_time": "soon"}}, "invalid --wall-time"),
        ({"ulimits": {"nofiles": 1}}, "unknown limit"),
        ({"ulimits": {"nofile": "9:8"}}, "above the hard limit"),
        ({"max_output": -1}, "max_output"),
    ],
)
async def test_bad_input_to_the_api_is_a_spec_error(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        await run_container(["true"], **kw)


# ---------------------------------------------------------------- ulimits seen from inside (root)


def proc_limits(text: str) -> dict[str, tuple[str, str]]:
    """/proc/self/limits: {"Max open files": (soft, hard)}."""
    out = {}
    for line in text.splitlines()[1:]:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        out[name] = (soft, hard)
    return out


LIMIT_NAMES = {
    "cpu": "Max cpu time",
    "fsize": "Max file size",
    "data": "Max data size",
    "stack": "Max stack size",
    "core": "Max core file size",
    "rss": "Max resident set",
    "nproc": "Max processes",
    "nofile": "Max open files",
    "memlock": "Max locked memory",
    "as": "Max address space",
    "locks": "Max file locks",
    "sigpending": "Max pending signals",
    "msgqueue": "Max msgqueue size",
    "nice": "Max nice priority",
    "rtprio": "Max realtime priority",
    "rttime": "Max realtime timeout",
}


def own_hard(name: str) -> int:
    """This process's hard limit (-1: unlimited): without CAP_SYS_RESOURCE the most a
    container may get."""
    import resource

    return resource.getrlimit(ulimits.RESOURCES[name])[1]


@root
@pytest.mark.anyio
async def test_every_ulimit_is_seen_from_inside() -> None:
    assert set(LIMIT_NAMES) == set(ulimits.RESOURCES)
    given: dict[str, tuple[int, int]] = {}
    for i, name in enumerate(sorted(LIMIT_NAMES)):
        hard = 1000 + i if own_hard(name) == -1 else min(1000 + i, own_hard(name))
        given[name] = (min(7 + i, hard), hard)
    # an address space, a data segment or a stack this small would fail the exec
    given["as"] = (own_hard("as"), own_hard("as"))
    given["data"] = (256 << 20, 512 << 20) if own_hard("data") == -1 else (own_hard("data"),) * 2
    given["stack"] = (8 << 20, own_hard("stack"))
    r = await run_container(["cat", "/proc/self/limits"], ulimits=given)
    seen = proc_limits(r.stdout.decode())
    for name, pair in given.items():
        assert seen[LIMIT_NAMES[name]] == tuple("unlimited" if v == -1 else str(v) for v in pair), name


@root
@pytest.mark.anyio
async def test_core_dumps_are_off_by_default_and_the_rest_is_mydockers() -> None:
    r = await run_container(["cat", "/proc/self/limits"])
    seen = proc_limits(r.stdout.decode())
    assert seen["Max core file size"] == ("0", "0")
    with open("/proc/self/limits") as f:
        ours = proc_limits(f.read())
    assert seen["Max open files"] == ours["Max open files"]
    r = await run_container(["cat", "/proc/self/limits"], ulimits={"core": -1})
    assert proc_limits(r.stdout.decode())["Max core file size"] == ("unlimited", "unlimited")


@root
@pytest.mark.anyio
async def test_nofile_and_fsize_bite(tmp_path: Path) -> None:
    opener = "import os\ntry:\n    [os.open('/dev/null', 0) for _ in range(99)]\nexcept OSError as e:\n"
    opener += "    print(e.errno)"
    r = await run_container([PY, "-c", opener], ulimits={"nofile": 32})
    assert r.stdout.strip() == b"24"  # EMFILE
    big = tmp_path / "big"
    script = f"dd if=/dev/zero of={big} bs=1024 count=64 2>/dev/null; echo $?"
    r = await run_container(["sh", "-c", script], ulimits={"fsize": 4096})
    assert r.stdout.strip() != b"0"  # SIGXFSZ (its default: the writer dies) or EFBIG
    assert big.stat().st_size <= 4096


@root
@pytest.mark.anyio
async def test_a_hard_limit_above_mydockers_own_needs_cap_sys_resource() -> None:
    from supervisor.confine import can_raise_rlimits

    with open("/proc/sys/fs/nr_open") as f:
        nr_open = int(f.read())
    hard = own_hard("nofile")
    if hard == -1 or hard >= nr_open:
        pytest.skip("mydocker's own nofile hard limit is at the kernel's ceiling already")
    above = {"nofile": f"64:{hard + 1}"}
    if can_raise_rlimits():
        r = await run_container(["cat", "/proc/self/limits"], ulimits=above)
        assert proc_limits(r.stdout.decode())["Max open files"] == ("64", str(hard + 1))
    else:  # this host's root lacks it: refused before anything starts
        with pytest.raises(SpecError, match=r"above mydocker's own .* needs CAP_SYS_RESOURCE"):
            await run_container(["true"], ulimits=above)
    with pytest.raises(SpecError, match=r"above fs\.nr_open"):
        await run_container(["true"], ulimits={"nofile": f"64:{nr_open + 1}"})


# ---------------------------------------------------------------- the CLI and its report (root)


def cli_report(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[bytes], dict[str, Any]]:
    path = tmp_path / "report.json"
    res = run_cli("run", "--report", str(path), *args)
    return res, json.loads(path.read_text())


@root
@pytest.mark.parametrize(
    ("args", "status", "exit_code", "limit"),
    [
        (("true",), "OK", 0, None),
        (("sh", "-c", "exit 3"), "RE", 3, None),
        ((PY, "-c", "import ctypes; ctypes.string_at(0)"), "SG", 139, None),
        (("--cpu-time", "0.5", "sh", "-c", BUSY), "TO", 137, "cpu_time"),
        (("--wall-time", "0.5", "sleep", "30"), "TO", 137, "wall_time"),
        (("-m", "32m", PY, "-c", MEMORY_HOG), "ML", 137, "memory"),
        (("--max-output", "10", "yes"), "OL", 137, "output"),
        (("/nonexistent",), "XX", 127, None),
    ],
)
def test_the_report_says_how_it_ended(
    tmp_path: Path, args: tuple[str, ...], status: str, exit_code: int, limit: str | None
) -> None:
    res, data = cli_report(tmp_path, *args)
    assert res.returncode == exit_code, res.stderr
    assert (data["status"], data["exit_code"], data["limit"]) == (status, exit_code, limit)
    assert set(data) == set(REPORT_FIELDS)
    assert data["oom_killed"] is (status == "ML")
    if status == "XX":
        assert data["message"] == "/nonexistent: command not found"
        return
    assert data["signal"] == (exit_code - 128 if exit_code > 128 else None)
    assert data["wall_time"] > 0 and data["cpu_time"] >= 0 and data["memory_peak"] > 0
    if limit == "cpu_time":
        assert 0.5 <= data["cpu_time"] < 1.5
        assert b"CPU time limit of 0.5 s exceeded" in res.stderr
    if limit == "wall_time":
        assert 0.5 <= data["wall_time"] < 20
        assert b"wall time limit of 0.5 s exceeded" in res.stderr
    if limit == "output":
        assert res.stdout == b"y\n" * 5


@root
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--cpu-time", "-1"), "invalid --cpu-time '-1'"),
        (("--wall-time", "soon"), "invalid --wall-time 'soon'"),
        (("--ulimit", "nofiles=1"), "unknown limit 'nofiles'"),
        (("--ulimit", "nofile=2:1"), "soft limit 2 is above the hard limit 1"),
        (("--ulimit", "nofile"), "TYPE=SOFT[:HARD]"),
        (("--report", "/nonexistent/dir/report.json"), "cannot write the report"),
        (("--max-output", "lots"), "invalid --max-output"),
    ],
)
def test_bad_judge_flags_are_one_line_and_125(args: tuple[str, ...], message: str) -> None:
    res = run_cli("run", *args, "true")
    assert res.returncode == 125
    lines = res.stderr.decode().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


@root
def test_a_bad_flag_after_a_good_report_path_is_reported_xx(tmp_path: Path) -> None:
    res, data = cli_report(tmp_path, "--cpu-time", "-1", "true")
    assert res.returncode == 125
    assert (data["status"], data["exit_code"]) == ("XX", 125)
    assert "invalid --cpu-time" in data["message"]


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bb.build(tmp_path_factory)[0]


@root
def test_a_full_tmpfs_is_enospc_not_a_stall(busybox: Path, tmp_path: Path) -> None:
    # A judge's scratch space: the root read-only, a small tmpfs, a memory limit.
    script = "dd if=/dev/zero of=/tmp/x bs=65536 count=64; echo dd=$?; echo more > /tmp/y; echo echo=$?"
    res, data = cli_report(
        tmp_path,
        *("--state-dir", str(tmp_path / "state"), "--rootfs", str(busybox), "--read-only"),
        *("--tmpfs", "/tmp:size=1m", "-m", "64m", "--wall-time", "20", "sh", "-c", script),
    )
    out = res.stdout.decode()
    assert b"No space left on device" in res.stderr
    assert "dd=1" in out and "echo=1" in out
    assert data["status"] == "OK" and data["wall_time"] < 20  # ENOSPC, not a stall
