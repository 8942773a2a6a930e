"""Cgroup logic without root: limit parsing, layout detection from /proc texts, the
control-file writes, and the pure cgroup v2 driver against a fake cgroupfs tree.

The fake tree (a tmpdir) keeps the cgroupfs rules the driver depends on: mkdir
fills a cgroup with the interface files of the controllers its parent passes down,
control files cannot be created by writing, ``cgroup.subtree_control`` refuses a
controller the cgroup is not offered and refuses anything while the cgroup holds
processes (the no-internal-process rule), rmdir is EBUSY while populated, and
``cgroup.kill`` empties the cgroup.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from supervisor import cgroups, devices
from supervisor.errors import SpecError, StartError
from supervisor.spec import ContainerSpec, Limits, cpu_list, parse_size

# ---------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("64m", 64 << 20),
        ("64M", 64 << 20),
        ("1.5g", 3 << 29),
        ("512k", 512 << 10),
        ("100", 100),
        ("2gb", 2 << 30),
    ],
)
def test_parse_size_speaks_dockers_units(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["12q", "", "m", "1..2m", "-5m", "1e3", "nan", "64 mm"])
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(SpecError, match="invalid size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory": "0"}, "minimum is 6m"),
        ({"memory": "12q"}, "invalid memory limit '12q'"),
        ({"memory_swap": "64m"}, "needs --memory"),
        ({"memory": "64m", "memory_swap": "32m"}, "at least the memory limit"),
        ({"cpus": "-1"}, "at least 0.01"),
        ({"cpus": "inf"}, "at least 0.01"),
        ({"cpus": "lots"}, "expected a number"),
        ({"cpu_shares": "1"}, "from 2 to 262144"),
        ({"cpuset_cpus": "1-0"}, "invalid CPU list"),
        ({"cpuset_cpus": "a"}, "invalid CPU list"),
        ({"pids": "0"}, "at least 1"),
    ],
)
def test_bad_limits_are_one_sentence(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        Limits.parse(**kwargs)


def test_limits_normalise_and_api_accepts_a_mapping() -> None:
    lim = Limits.parse(memory="64m", memory_swap="-1", cpus="0.5", cpuset_cpus="1,0", pids="-1")
    assert (lim.memory, lim.memory_swap, lim.cpus, lim.cpuset_cpus, lim.pids) == (
        64 << 20,
        -1,
        0.5,
        "0,1",
        None,
    )
    spec = ContainerSpec(["true"], limits={"memory": "32m", "pids": 16})
    assert spec.limits == Limits(memory=32 << 20, pids=16)
    assert cpu_list("0-2,5") == {0, 1, 2, 5}


@pytest.mark.parametrize("parent", ["", "/", "a/../b", "x\0y"])
def test_bad_cgroup_parent(parent: str) -> None:
    with pytest.raises(SpecError, match="invalid cgroup parent"):
        ContainerSpec(["true"], cgroup_parent=parent)


# ---------------------------------------------------------------- layout

HYBRID_CGROUP = """9:name=systemd:/
8:pids:/
4:memory:/process_api/abc
3:cpuset:/
1:cpu,cpuacct:/
0::/
"""
HYBRID_MOUNTINFO = """31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_hybrid_layout_is_read_from_proc() -> None:
    layout = cgroups.detect_layout(HYBRID_CGROUP, HYBRID_MOUNTINFO)
    assert layout.kind == "hybrid"
    assert layout.v2 is not None and layout.v2.parent_dir(None) == "/sys/fs/cgroup/unified"
    mem = layout.v1_for("memory")
    assert mem is not None and mem.parent_dir(None) == "/sys/fs/cgroup/memory/process_api/abc"
    cpu = layout.v1_for("cpu")
    assert cpu is not None and cpu.controllers == {"cpu", "cpuacct"}
    assert layout.v1_for("blkio") is None  # not mounted here
    assert cpu.parent_dir("jobs") == "/sys/fs/cgroup/cpu,cpuacct/jobs"
    assert mem.parent_dir("/jobs") == "/sys/fs/cgroup/memory/jobs"


def test_pure_v2_layout_with_escapes_and_a_namespaced_root() -> None:
    # A cgroup namespace / bind mount shows /kubepods/pod1 at the mountpoint, whose
    # path has a space (escaped as \\040 in mountinfo).
    mi = "50 1 0:40 /kubepods/pod1 /run/my\\040cg rw - cgroup2 cgroup2 rw,nsdelegate\n"
    layout = cgroups.detect_layout("0::/kubepods/pod1/app\n", mi)
    assert layout.kind == "v2"
    assert layout.v2 is not None and layout.v2.parent_dir(None) == "/run/my cg/app"
    assert layout.v2.parent_dir("/elsewhere") is None  # not visible through this mount


def test_no_cgroups_at_all() -> None:
    layout = cgroups.detect_layout("", "")
    assert layout.kind == "none"
    # nothing to confine its devices with: only a privileged container may run
    with pytest.raises(StartError, match="cannot confine the container's devices"):
        cgroups.create_cgroup(ContainerSpec(["true"]), layout)
    assert cgroups.create_cgroup(ContainerSpec(["true"], privileged=True), layout) is None
    with pytest.raises(StartError, match="--memory needs the 'memory' cgroup controller"):
        cgroups.create_cgroup(ContainerSpec(["true"], limits=Limits(memory=64 << 20)), layout)


# ---------------------------------------------------------------- writes


def writes(limits: Limits, version: int) -> list[tuple[str, str, bool]]:
    return [(w.file, w.value, w.optional) for w in cgroups.limit_writes(limits, version)]


def test_v1_writes_follow_dockers_swap_rules() -> None:
    m = 64 << 20
    assert writes(Limits(memory=m), 1) == [
        ("memory.limit_in_bytes", str(m), False),
        ("memory.memsw.limit_in_bytes", str(2 * m), True),
    ]
    assert writes(Limits(memory=m, memory_swap=-1), 1) == [("memory.limit_in_bytes", str(m), False)]
    assert writes(Limits(memory=m, memory_swap=m), 1)[1] == ("memory.memsw.limit_in_bytes", str(m), False)
    assert writes(Limits(cpus=0.25, cpu_shares=512, pids=16), 1) == [
        ("cpu.cfs_period_us", "100000", False),
        ("cpu.cfs_quota_us", "25000", False),
        ("cpu.shares", "512", False),
        ("pids.max", "16", False),
    ]


def test_v2_writes() -> None:
    m = 64 << 20
    assert writes(Limits(memory=m, memory_swap=3 * m, cpus=1.5, cpu_shares=1024, cpuset_cpus="0-1"), 2) == [
        ("memory.max", str(m), False),
        ("memory.swap.max", str(2 * m), False),
        ("cpu.max", "150000 100000", False),
        ("cpu.weight", "39", False),
        ("cpuset.cpus", "0,1", False),
    ]
    assert writes(Limits(memory=m), 2)[1] == ("memory.swap.max", str(m), True)
    assert cgroups.cpu_weight(2) == 1 and cgroups.cpu_weight(262144) == 10000


# ---------------------------------------------------------------- fake cgroupfs (pure v2)

V2_FILES = {
    "memory": {
        "memory.max": "max\n",
        "memory.swap.max": "max\n",
        "memory.events": "oom 0\noom_kill 0\n",
        "memory.peak": "0\n",
    },
    "cpu": {"cpu.max": "max 100000\n", "cpu.weight": "100\n"},
    "cpuset": {"cpuset.cpus": "\n", "cpuset.cpus.effective": "0-3\n"},
    "pids": {"pids.max": "max\n"},
}


class FakeCgroupFS(cgroups.CgroupFS):
    """A cgroup v2 tree in a tmpdir, with the kernel's rules the driver relies on."""

    made: list[FakeCgroupFS] = []

    def __init__(self, root: Path, controllers: str = "cpuset cpu memory pids", swap: bool = True) -> None:
        self.root = root
        self.swap = swap
        self.kills: list[str] = []
        self.device_rules: dict[str, tuple[devices.DeviceRule, ...]] = {}
        self._fill(root, controllers)
        FakeCgroupFS.made.append(self)

    def _fill(self, d: Path, controllers: str) -> None:
        files = {
            "cgroup.procs": "",
            "cgroup.events": "populated 0\nfrozen 0\n",
            "cgroup.kill": "",
            "cgroup.controllers": controllers + "\n",
            "cgroup.subtree_control": "\n",
            # cgroup core's base stats: in every cgroup2 directory, controller or not
            "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
        }
        for c in controllers.split():
            files.update(V2_FILES.get(c, {}))
        if not self.swap:
            files.pop("memory.swap.max", None)
        for name, text in files.items():
            (d / name).write_text(text)

    def confine_devices(self, path: str, rules: tuple[devices.DeviceRule, ...], dir_fd: int = -1) -> None:
        self.device_rules[path] = rules

    def mkdir(self, path: str) -> None:
        os.mkdir(path)
        self._fill(Path(path), Path(path).parent.joinpath("cgroup.subtree_control").read_text().strip())

    def rmdir(self, path: str) -> None:
        p = Path(path)
        # busy while it holds processes or has cgroups below it, as the kernel says
        if p.joinpath("cgroup.procs").read_text().strip() or any(f.is_dir() for f in p.iterdir()):
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        for f in p.iterdir():
            f.unlink()
        p.rmdir()

    def write(self, path: str, value: str) -> None:
        p = Path(path)
        if not p.exists():
            raise OSError(errno.ENOENT, f"write {value!r} to {path}: No such file or directory")
        d = p.parent
        if p.name == "cgroup.subtree_control":
            offered = d.joinpath("cgroup.controllers").read_text().split()
            enabled = set(p.read_text().split())
            for item in value.split():
                if item[1:] not in offered:
                    raise OSError(errno.EINVAL, f"write {value!r} to {path}: Invalid argument")
                if d.joinpath("cgroup.procs").read_text().strip() and d != self.root:
                    raise OSError(errno.EBUSY, f"write {value!r} to {path}: Device or resource busy")
                enabled.add(item[1:])
            p.write_text(" ".join(sorted(enabled)) + "\n")
        elif p.name == "cgroup.kill":
            self.kills.append(str(d))
            self.set_procs(d, [])
        elif p.name == "cgroup.procs":
            self.set_procs(d, [*d.joinpath("cgroup.procs").read_text().split(), value])
        else:
            p.write_text(value + "\n")

    def set_procs(self, d: Path, pids: list[str]) -> None:
        d.joinpath("cgroup.procs").write_text("".join(f"{x}\n" for x in pids))
        d.joinpath("cgroup.events").write_text(f"populated {int(bool(pids))}\nfrozen 0\n")


@pytest.fixture(autouse=True)
def _release_fake_owners() -> Iterator[None]:
    """Each fake cgroupfs's owner markers go at the end of the test (a real process's
    go at its exit)."""
    yield
    while FakeCgroupFS.made:
        fs = FakeCgroupFS.made.pop()
        fs.owner().release(fs)


def cgroups_in(d: Path) -> list[str]:
    """The cgroups right below ``d``, our owner's marker left out."""
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("mydocker-owner-"))


def v2_layout(tmp_path: Path, own: str = "/", **kw: object) -> tuple[cgroups.CgroupLayout, FakeCgroupFS]:
    root = tmp_path / "cg"
    root.mkdir()
    fs = FakeCgroupFS(root, **kw)  # type: ignore[arg-type]
    for part in [p for p in own.split("/") if p]:
        fs.write(
            str(root / "cgroup.subtree_control"), " ".join(f"+{c}" for c in "cpuset cpu memory pids".split())
        )
        fs.mkdir(str(root / part))
        root = root / part
    mountinfo = f"60 1 0:50 / {tmp_path / 'cg'} rw - cgroup2 cgroup2 rw\n"
    return cgroups.detect_layout(f"0::{own}\n", mountinfo, fs), fs


@pytest.mark.anyio
async def test_v2_limits_are_written_and_everything_removed(tmp_path: Path, anyio_backend: str) -> None:
    layout, fs = v2_layout(tmp_path, own="/svc")
    svc = tmp_path / "cg" / "svc"
    fs.write(str(svc / "cgroup.subtree_control"), "+cpuset +cpu +memory +pids")
    parent = svc / "ctrs"
    fs.mkdir(str(parent))
    limits = Limits(memory=64 << 20, cpus=0.5, cpu_shares=512, cpuset_cpus="1", pids=32)
    spec = ContainerSpec(["true"], limits=limits, cgroup_parent="ctrs")
    cg = cgroups.create_cgroup(spec, layout)
    assert cg is not None
    d = parent / cgroups.cgroup_name(spec, fs.owner().token)
    assert cg.dirs == [str(d)] and not cg.v1_dirs
    assert (parent / "cgroup.subtree_control").read_text().split() == ["cpu", "cpuset", "memory", "pids"]
    assert (d / "memory.max").read_text() == f"{64 << 20}\n"
    assert (d / "memory.swap.max").read_text() == f"{64 << 20}\n"
    assert (d / "cpu.max").read_text() == "50000 100000\n"
    assert (d / "cpu.weight").read_text() == f"{cgroups.cpu_weight(512)}\n"
    assert (d / "cpuset.cpus").read_text() == "1\n"
    assert (d / "pids.max").read_text() == "32\n"
    assert fs.device_rules == {str(d): devices.container_rules()}  # before the clone
    fds = cg.child_fds()
    assert set(fds) == {"cgroup"}  # born inside it: no sync pipe on v2
    assert os.path.samefile(f"/proc/self/fd/{fds['cgroup']}", d)
    cg.attach(4242)  # nothing to place on pure v2; closes the clone's fd
    with pytest.raises(OSError):
        os.fstat(fds["cgroup"])
    fs.set_procs(d, ["4242", "4343"])  # a daemon escaped PID 1
    (d / "memory.events").write_text("oom 1\noom_kill 1\n")
    assert cg.populated() and cg.oom_killed()
    await cg.destroy()
    assert fs.kills == [str(d)]  # cgroup.kill, not one signal per pid
    assert not d.exists()
    assert cg.oom_killed()  # remembered after the directory is gone


@pytest.mark.anyio
async def test_v2_without_limits_groups_only(tmp_path: Path, anyio_backend: str) -> None:
    layout, _ = v2_layout(tmp_path, own="/svc")
    svc = tmp_path / "cg" / "svc"
    cg = cgroups.create_cgroup(ContainerSpec(["true"]), layout)
    assert cg is not None and cg.v2_dir is not None
    assert (svc / "cgroup.subtree_control").read_text().strip() == ""  # untouched
    assert not cg.oom_killed()
    await cg.destroy()
    assert not os.path.exists(cg.v2_dir)


@pytest.mark.anyio
async def test_v2_usage_is_read_from_the_container_directory_and_kept(
    tmp_path: Path, anyio_backend: str
) -> None:
    layout, fs = v2_layout(tmp_path, own="/svc")
    svc = tmp_path / "cg" / "svc"
    fs.write(str(svc / "cgroup.subtree_control"), "+memory")
    spec = ContainerSpec(["true"], limits={"cpu_time": 1, "memory": "64m"})
    cg = cgroups.create_cgroup(spec, layout)
    assert cg is not None and cg.v2_dir is not None
    d = Path(cg.v2_dir)
    (d / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\nnice_usec 0\n")
    (d / "memory.peak").write_text(f"{5 << 20}\n")
    assert cg.cpu_usec() == 1_500_000
    assert cg.counters() == (1_500_000, 1_000_000, 500_000, 5 << 20)
    await cg.destroy()
    assert not d.exists()
    assert cg.counters() == (1_500_000, 1_000_000, 500_000, 5 << 20)  # the last figures, kept
    assert cg.cpu_usec() is None  # the watchdog stops: nothing to read


@pytest.mark.anyio
async def test_v2_without_the_memory_controller_has_cpu_but_no_peak(
    tmp_path: Path, anyio_backend: str
) -> None:
    layout, _ = v2_layout(tmp_path, own="/svc")
    cg = cgroups.create_cgroup(ContainerSpec(["true"]), layout)
    assert cg is not None
    assert cg.counters() == (0, 0, 0, None)
    await cg.destroy()


def test_cpu_time_without_cgroup2_takes_a_v1_cpuacct_directory() -> None:
    # A pure v1 host: no cpu.stat anywhere but in v1 cpuacct.
    proc = "4:memory:/\n2:cpu,cpuacct:/\n1:devices:/\n"
    mi = (
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "36 31 0:33 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices\n"
    )
    layout = cgroups.detect_layout(proc, mi)
    plan = cgroups._plan(ContainerSpec(["true"], limits={"cpu_time": 2}), layout)
    cpuacct = layout.v1_for("cpuacct")
    assert cpuacct is not None and plan.v1 == {cpuacct: {"cpuacct": "--cpu-time"}}
    none = cgroups.detect_layout("4:memory:/\n", mi.splitlines(keepends=True)[1])
    with pytest.raises(StartError, match="--cpu-time needs cgroup2 or the v1 'cpuacct' controller"):
        cgroups._plan(ContainerSpec(["true"], limits={"cpu_time": 2}), none)
    # with cgroup2 (hybrid too), cpu.stat is there: no v1 hierarchy for --cpu-time
    hybrid = cgroups.detect_layout(HYBRID_CGROUP, HYBRID_MOUNTINFO)
    assert cgroups._plan(ContainerSpec(["true"], limits={"cpu_time": 2}), hybrid).v1 == {}


def test_v2_no_internal_process_rule_is_explained(tmp_path: Path) -> None:
    layout, fs = v2_layout(tmp_path, own="/svc")
    svc = tmp_path / "cg" / "svc"
    fs.set_procs(svc, [str(os.getpid())])  # the supervisor itself lives there
    with pytest.raises(StartError, match=r"holds processes.*--cgroup-parent"):
        cgroups.create_cgroup(ContainerSpec(["true"], limits=Limits(pids=10)), layout)
    assert cgroups_in(svc) == []


def test_v2_missing_controller_or_swap_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    layout, _ = v2_layout(tmp_path, own="/", controllers="cpu memory", swap=False)
    root = tmp_path / "cg"
    with pytest.raises(StartError, match="--pids-limit needs the cgroup v2 'pids' controller"):
        cgroups.create_cgroup(ContainerSpec(["true"], limits=Limits(pids=10)), layout)
    # swap accounting off: the implicit swap limit is skipped, an explicit one refused
    ok = cgroups.create_cgroup(ContainerSpec(["true"], limits=Limits(memory=64 << 20)), layout)
    assert ok is not None
    ok.discard()
    with pytest.raises(StartError, match=r"--memory-swap: this kernel has no memory\.swap\.max"):
        cgroups.create_cgroup(
            ContainerSpec(["true"], limits=Limits(memory=64 << 20, memory_swap=1 << 30)), layout
        )
    assert cgroups_in(root) == []


def test_cpuset_outside_the_parents_cpus_is_a_spec_error(tmp_path: Path) -> None:
    layout, _ = v2_layout(tmp_path, own="/svc")  # effective CPUs: 0-3
    with pytest.raises(SpecError, match="CPU 7 is not available"):
        cgroups.create_cgroup(ContainerSpec(["true"], limits=Limits(cpuset_cpus="2,7")), layout)
    with pytest.raises(SpecError, match="does not exist"):
        cgroups.create_cgroup(ContainerSpec(["true"], cgroup_parent="/nope"), layout)


def test_leftovers_of_a_dead_owner_are_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    _, fs = v2_layout(tmp_path, own="/")
    root = str(tmp_path / "cg")
    live, dead = cgroups.Owner(), cgroups.Owner()
    live.claim(fs, root)  # another mydocker, in whatever PID namespace: it holds its lock
    dead.claim(fs, root)
    names = {
        "live": cgroups.cgroup_name(ContainerSpec(["true"], id="a" * 64), live.token),
        "dead": cgroups.cgroup_name(ContainerSpec(["true"], id="b" * 64), dead.token),
        "no marker": f"mydocker-{'c' * 64}-{'0' * 16}",  # its owner's marker is gone: dead too
        "ours": cgroups.cgroup_name(ContainerSpec(["true"], id="d" * 64), fs.owner().token),
    }
    for name in names.values():
        fs.mkdir(f"{root}/{name}")
    fs.mkdir(f"{root}/{names['dead']}/made-inside")  # a cgroup the container made below its own
    fs.set_procs(Path(root) / names["dead"], ["99999999"])  # an escaped daemon
    for odd in ("mydocker-x-99999999999999999999", "mydocker-x-\u00b2", "mydocker-", "other"):
        fs.mkdir(f"{root}/{odd}")  # not our naming: never touched, never a traceback
    os.close(dead.marker_fds()[0])  # the dead owner was SIGKILLed: the kernel dropped its lock
    removed = cgroups.sweep_dead(fs, [root])
    assert sorted(removed) == sorted([f"{root}/{names['dead']}", f"{root}/{names['no marker']}"])
    assert f"{root}/{names['dead']}" in fs.kills
    left = cgroups_in(Path(root))
    assert names["live"] in left and names["ours"] in left
    assert f"mydocker-owner-{dead.token}" not in os.listdir(root)  # its marker went too
    assert {"mydocker-x-99999999999999999999", "mydocker-x-\u00b2", "mydocker-", "other"} <= set(left)
    live.release(fs)
    assert cgroups.sweep_dead(fs, [root]) == [f"{root}/{names['live']}"]  # now it is gone too
    fs.rmdir(f"{root}/{names['ours']}")


@pytest.mark.anyio
async def test_destroy_removes_cgroups_made_below_the_container_deepest_first(
    tmp_path: Path, anyio_backend: str
) -> None:
    layout, fs = v2_layout(tmp_path, own="/")
    cg = cgroups.create_cgroup(ContainerSpec(["true"]), layout)
    assert cg is not None and cg.v2_dir is not None
    fs.mkdir(f"{cg.v2_dir}/a")
    fs.mkdir(f"{cg.v2_dir}/a/b")
    with anyio.fail_after(cgroups.DESTROY_TIMEOUT / 2):  # a hang detector, not a time
        await cg.destroy()
    assert not os.path.exists(cg.v2_dir)
    assert cgroups._given_up == []
