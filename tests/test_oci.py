"""mydocker-runc, the OCI runtime: config.json to ContainerSpec (every field, and the
refusals), the child's filesystem steps, the cgroup writes, and, as root, the
lifecycle with real namespaces through the command line, as containerd's shim
calls it.

The root tests make this process a subreaper while they run, as containerd's shim
is one: ``create`` exits and leaves its container to us, which the leak check then
sees as our child until the test has deleted and reaped it. Every container has
its id prefixed with ``conftest.OCI_ID_PREFIX`` and its state under a temporary
``--root``; the leak check looks for their cgroups, this file for their records.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import wire
from supervisor.errors import SpecError
from supervisor.oci import config, fs, records
from supervisor.oci.cgroup import needed_controllers, writes
from supervisor.oci.config import MS_NODEV, MS_NOSUID, MS_RDONLY, MS_REC, MS_SHARED, MS_SLAVE
from supervisor.oci.runtime import default_spec, features

from . import busybox as bb
from .conftest import OCI_ID_PREFIX, ROOT

# ------------------------------------------------------------------ config.json -> ContainerSpec


def base_config(**changes: Any) -> dict[str, Any]:
    """A small valid config; ``changes`` replace top-level keys."""
    data: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]},
    }
    data.update(changes)
    return data


def parse(data: dict[str, Any]) -> Any:
    return config.parse(data, "/bundle", "c1")


def with_linux(**linux: Any) -> dict[str, Any]:
    data = base_config()
    data["linux"].update(linux)
    return data


def with_process(**process: Any) -> dict[str, Any]:
    data = base_config()
    data["process"].update(process)
    return data


def test_the_spec_fields_docker_has_too() -> None:
    data = base_config(hostname="box")
    data["root"] = {"path": "rootfs", "readonly": True}
    data["process"].update(terminal=True, noNewPrivileges=True, cwd="/work", user={"uid": 10, "gid": 20})
    data["linux"]["namespaces"] += [{"type": "uts"}, {"type": "network"}, {"type": "ipc"}, {"type": "cgroup"}]
    spec = parse(data)
    assert spec.command == ("sh",)
    assert spec.id == spec.name == "c1"
    assert spec.hostname == "box"
    assert spec.rootfs == "/bundle/rootfs" and spec.read_only
    assert spec.tty and spec.no_new_privileges and spec.cwd == "/work" and spec.user == "10:20"
    assert spec.namespaces == {"pid", "mount", "uts", "net", "ipc", "cgroup"}
    assert spec.seccomp == "unconfined"  # no linux.seccomp: none (docker's default is mydocker's)
    oci = config.settings_of(spec)
    assert oci.bundle == "/bundle" and oci.hostname == "box"


def test_process_fields() -> None:
    data = with_process(
        args=["/bin/app", "-x"],
        env=["PATH=/bin", "A=1", "A=2", "EMPTY="],
        user={"uid": 1000, "gid": 1000, "additionalGids": [5, 27], "umask": 0o027},
        capabilities={
            "bounding": ["CAP_KILL", "CAP_CHOWN"],
            "effective": ["CAP_KILL"],
            "inheritable": ["cap_chown"],
            "permitted": ["CAP_KILL"],
            "ambient": ["CAP_KILL"],
        },
        rlimits=[
            {"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200},
            {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
        ],
        consoleSize={"height": 40, "width": 120},
        oomScoreAdj=-500,
    )
    p = config.settings_of(parse(data)).process
    assert p.args == ("/bin/app", "-x")
    assert p.env_dict() == {"PATH": "/bin", "A": "2", "EMPTY": ""}
    assert (p.uid, p.gid, p.additional_gids, p.umask) == (1000, 1000, (5, 27), 0o027)
    assert p.capabilities.bounding == {"CAP_KILL", "CAP_CHOWN"}
    assert p.capabilities.inheritable == {"CAP_CHOWN"} and p.capabilities.ambient == {"CAP_KILL"}
    assert [(r.name, r.resource, r.soft, r.hard) for r in p.rlimits] == [
        ("RLIMIT_NOFILE", 7, 100, 200),
        ("RLIMIT_CORE", 4, 0, 0),
    ]
    assert p.console_size == (40, 120) and p.oom_score_adj == -500


def test_mounts_types_options_binds_and_propagation() -> None:
    data = base_config(
        mounts=[
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "nodev"]},
            {
                "destination": "/tmp/t",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["size=1k", "mode=755", "ro"],
            },
            {"destination": "/data", "source": "data", "options": ["bind", "ro", "rw", "nosuid", "shared"]},
            {"destination": "/etc", "type": "bind", "source": "/etc", "options": ["rbind", "rslave", "rro"]},
            {"destination": "rel", "type": "tmpfs", "source": "x", "options": ["x-systemd.automount"]},
        ]
    )
    m = config.settings_of(parse(data)).mounts
    assert (m[0].type, m[0].source, m[0].flags, m[0].data, m[0].bind) == (
        "proc",
        "proc",
        MS_NOSUID | MS_NODEV,
        "",
        False,
    )
    assert m[1].flags == MS_RDONLY and m[1].data == "size=1k,mode=755"
    # a bind's source is taken from the bundle; rw after ro clears it
    assert (m[2].source, m[2].bind, m[2].recursive, m[2].flags) == ("/bundle/data", True, False, MS_NOSUID)
    assert m[2].propagation == (MS_SHARED,)
    assert (m[3].recursive, m[3].recursive_ro, m[3].propagation) == (True, True, (MS_SLAVE | MS_REC,))
    assert m[4].destination == "/rel" and m[4].data == ""  # x- options are userspace's


def test_namespaces_new_and_joined_and_id_maps() -> None:
    spec = parse(
        with_linux(
            namespaces=[
                {"type": "pid"},
                {"type": "network", "path": "/proc/1/ns/net"},
                {"type": "mount"},
                {"type": "user"},
            ],
            uidMappings=[{"containerID": 0, "hostID": 100000, "size": 65536}],
            gidMappings=[{"containerID": 0, "hostID": 200000, "size": 10}],
        )
    )
    oci = config.settings_of(spec)
    assert spec.namespaces == {"pid", "mount"}
    assert oci.namespace_paths == (("network", "/proc/1/ns/net"),)
    assert oci.user_namespace
    assert oci.uid_mappings == ((0, 100000, 65536),)
    assert oci.gid_mappings == ((0, 200000, 10),)


def test_linux_fields() -> None:
    data = with_linux(
        namespaces=[{"type": "pid"}, {"type": "mount"}, {"type": "network"}, {"type": "ipc"}],
        devices=[
            {
                "path": "/dev/fuse",
                "type": "c",
                "major": 10,
                "minor": 229,
                "fileMode": 0o660,
                "uid": 0,
                "gid": 5,
            },
            {"path": "/dev/pipe", "type": "p"},
            {"path": "/dev/u", "type": "u", "major": 1, "minor": 3},
        ],
        maskedPaths=["/proc/kcore", "/proc//keys/"],
        readonlyPaths=["/proc/sys"],
        sysctl={"net.ipv4.ip_forward": "1", "kernel.shmmax": "4096", "net/ipv4/conf/all/forwarding": "1"},
        rootfsPropagation="rshared",
        cgroupsPath="/kubepods/pod1/c1",
        seccomp={
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}],
        },
    )
    spec = parse(data)
    oci = config.settings_of(spec)
    assert [(d.path, d.type, d.major, d.minor, d.mode, d.gid) for d in oci.devices] == [
        ("/dev/fuse", "c", 10, 229, 0o660, 5),
        ("/dev/pipe", "p", 0, 0, None, 0),
        ("/dev/u", "c", 1, 3, None, 0),
    ]
    assert oci.masked_paths == ("/proc/kcore", "/proc/keys") and oci.readonly_paths == ("/proc/sys",)
    assert dict(oci.sysctl)["kernel.shmmax"] == "4096"
    assert oci.rootfs_propagation == MS_SHARED | MS_REC
    assert oci.cgroups_path == "/kubepods/pod1/c1"
    from supervisor.seccomp import Profile

    assert isinstance(spec.seccomp, Profile) and spec.seccomp.syscalls[0].names == ("read",)


def test_resources() -> None:
    res = config.settings_of(
        parse(
            with_linux(
                resources={
                    "memory": {
                        "limit": 64 << 20,
                        "reservation": 32 << 20,
                        "swap": 128 << 20,
                        "swappiness": 10,
                    },
                    "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
                    "pids": {"limit": 64},
                    "devices": [
                        {"allow": False, "access": "rwm"},
                        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"},
                        {"allow": True, "type": "b", "major": 8, "access": "r"},
                    ],
                    "unified": {"memory.high": "50000000"},
                }
            )
        )
    ).resources
    assert (res.memory_limit, res.memory_reservation, res.memory_swap, res.memory_swappiness) == (
        64 << 20,
        32 << 20,
        128 << 20,
        10,
    )
    assert (res.cpu_shares, res.cpu_quota, res.cpu_period, res.cpus, res.mems) == (
        512,
        50000,
        100000,
        "0",
        "0",
    )
    assert res.pids_limit == 64
    assert [str(r) for r in res.devices] == ["a *:* rwm", "c 10:229 rw", "b 8:* r"]
    assert [r.allow for r in res.devices] == [False, True, True]
    assert res.unified == (("memory.high", "50000000"),)
    assert needed_controllers(res) == {
        "memory": "linux.resources.memory.limit",
        "cpu": "linux.resources.cpu.shares",
        "cpuset": "linux.resources.cpu.cpus",
        "pids": "linux.resources.pids.limit",
    }


def test_hooks_and_annotations() -> None:
    hook = {"path": "/usr/bin/hook", "args": ["hook", "x"], "env": ["A=1"], "timeout": 5}
    data = base_config(
        hooks={
            "prestart": [hook],
            "createRuntime": [hook],
            "createContainer": [hook],
            "startContainer": [{"path": "/bin/true"}],
            "poststart": [hook, hook],
            "poststop": [hook],
        },
        annotations={"org.example/key": "value"},
    )
    oci = config.settings_of(parse(data))
    h = oci.hooks
    assert h.prestart[0] == config.Hook("/usr/bin/hook", ("hook", "x"), ("A=1",), 5)
    assert len(h.poststart) == 2 and h.start_container[0].env is None and h.before_pivot
    assert dict(oci.annotations) == {"org.example/key": "value"}
    assert config.parse_hooks(data) == h


def test_version_and_ids() -> None:
    for version in ("1.0.0", "1.0.2-dev", "1.2.1", "1.3.0"):
        parse(base_config(ociVersion=version))
    for version, why in (("2.0.0", "not supported"), ("1.4.0", "not supported"), ("latest", "not a version")):
        with pytest.raises(SpecError, match=why):
            parse(base_config(ociVersion=version))
    assert config.check_id("a-b_c.d+1") == "a-b_c.d+1"
    for bad in ("", ".", "..", "a/b", "a b"):
        with pytest.raises(SpecError):
            config.check_id(bad)


def _set(data: dict[str, Any], dotted: str, value: object) -> dict[str, Any]:
    where = data
    *path, last = dotted.split(".")
    for key in path:
        where = where.setdefault(key, {})
    where[last] = value
    return data


REFUSED = [
    ("process.apparmorProfile", "docker-default", "process.apparmorProfile: an AppArmor profile"),
    ("process.selinuxLabel", "system_u:system_r:container_t", "SELinux"),
    ("process.ioPriority", {"class": "IOPRIO_CLASS_RT"}, "process.ioPriority"),
    ("process.scheduler", {"policy": "SCHED_FIFO"}, "scheduler"),
    ("process.capabilities", {"bounding": ["CAP_TEST"]}, "unknown capability 'CAP_TEST'"),
    ("process.rlimits", [{"type": "RLIMIT_TEST", "soft": 1, "hard": 1}], "unknown rlimit 'RLIMIT_TEST'"),
    ("process.rlimits", [{"type": "RLIMIT_NOFILE", "soft": 2, "hard": 1}], "above the hard limit"),
    ("process.args", [], "must name a program"),
    ("process.env", ["NOEQUALS"], "must be KEY=VALUE"),
    ("process.user.uid", -1, "between 0 and"),
    ("process.user.uid", 1.5, "must be an integer"),
    ("linux.intelRdt", {"closID": "x"}, "Intel RDT"),
    ("linux.personality", {"domain": "LINUX32"}, "personality"),
    ("linux.mountLabel", "x", "SELinux"),
    ("linux.resources.blockIO", {"weight": 10}, "block I/O"),
    ("linux.resources.hugepageLimits", [{"pageSize": "2MB", "limit": 1}], "hugepage"),
    ("linux.resources.memory.kernel", 1 << 20, "kernel memory"),
    (
        "linux.seccomp",
        {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"},
        "seccomp agent",
    ),
    ("linux.seccomp", {"defaultAction": "SCMP_ACT_NOTIFY"}, "SCMP_ACT_NOTIFY"),
    ("linux.namespaces", [{"type": "time"}], "time namespaces"),
    ("linux.namespaces", [{"type": "user", "path": "/proc/1/ns/user"}], "joining a user namespace"),
    ("linux.namespaces", [{"type": "pid"}, {"type": "pid"}], "given twice"),
    ("linux.namespaces", [{"type": "bogus"}], "unknown namespace type"),
    ("linux.uidMappings", [{"containerID": 0, "hostID": 1, "size": 1}], "need a user namespace"),
    ("linux.sysctl", {"kernel.panic": "1"}, "not in a namespace of the container's own"),
    ("linux.sysctl", {"net.ipv4.ip_forward": "1"}, "needs a net namespace"),
    ("linux.maskedPaths", ["proc/kcore"], "must be an absolute path"),
    ("linux.rootfsPropagation", "sideways", "not one of"),
    ("linux.cgroupsPath", "system.slice:docker:c1", "systemd"),
    ("linux.cgroupsPath", "a/../../b", "'..'"),
    ("linux.devices", [{"path": "/dev/x", "type": "c"}], "needs major and minor"),
    ("linux.resources.devices", [{"allow": True, "access": "rwx"}], "letters of rwm"),
    ("mounts", [{"destination": "/x", "source": "/y", "options": ["bind", "idmap"]}], "id-mapped"),
    ("mounts", [{"destination": "/x", "source": "/y", "options": ["bind", "rnosuid"]}], "only rro"),
    ("mounts", [{"destination": "/x", "source": "x"}], "type is missing"),
    ("hostname", "box", "needs a uts namespace"),
    ("domainname", "example.org", "domain name"),
    ("hooks.prestart", [{"path": "relative/hook"}], "must be an absolute path"),
    ("root", {"path": ""}, "root.path is missing"),
    ("windows", {"layerFolders": ["x"]}, "Windows"),
]


@pytest.mark.parametrize(
    ("field", "value", "message"), REFUSED, ids=[f"{r[0]}-{i}" for i, r in enumerate(REFUSED)]
)
def test_refused_in_one_line_naming_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        parse(_set(base_config(), field, value))
    assert "\n" not in str(e.value)


def test_sysctls_and_hostname_of_a_joined_namespace_that_is_the_runtimes_own_are_refused() -> None:
    """Joining the runtime's own (the host's) network or UTS namespace by path: a
    sysctl or hostname set there would be the host's (runc refuses net.* there)."""
    data = base_config()
    linux = data["linux"]
    kinds = [n for n in linux["namespaces"] if n["type"] not in ("network", "uts")]
    linux["namespaces"] = [*kinds, {"type": "network", "path": "/proc/self/ns/net"}]
    linux["sysctl"] = {"net.ipv4.ip_forward": "1"}
    with pytest.raises(SpecError, match="needs a net namespace of the container's own"):
        parse(data)
    del linux["sysctl"]
    linux["namespaces"] = [*kinds, {"type": "uts", "path": "/proc/self/ns/uts"}]
    data["hostname"] = "box"
    with pytest.raises(SpecError, match="hostname needs a uts namespace of the container's own"):
        parse(data)
    # another process's namespace that is not ours is the container's to set
    linux["namespaces"] = [*kinds, {"type": "uts", "path": "/nonexistent/ns/uts"}]
    assert parse(data).oci is not None


def test_start_container_refuses_an_oci_spec() -> None:
    from supervisor import rootfs

    with pytest.raises(SpecError, match="run it with mydocker-runc"):
        rootfs.resolve(parse(base_config()))


def test_missing_process_and_unknown_keys() -> None:
    data = base_config()
    del data["process"]
    with pytest.raises(SpecError, match="process is missing"):
        parse(data)
    # keys the spec does not define are ignored, as runc ignores them
    parse(base_config(somethingNew={"x": 1}))


def test_load_reads_the_bundle(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        config.load(str(tmp_path), "c1")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SpecError, match="is not JSON"):
        config.load(str(tmp_path), "c1")
    (tmp_path / "config.json").write_text(json.dumps(base_config()))
    spec, data = config.load(str(tmp_path), "c1")
    assert spec.rootfs == f"{tmp_path}/rootfs" and data["ociVersion"] == "1.0.2"


def test_the_default_spec_parses() -> None:
    spec = parse(default_spec())
    oci = config.settings_of(spec)
    assert spec.read_only and spec.tty and oci.masked_paths and oci.process.capabilities.bounding
    f = features()
    assert f["ociVersionMax"] == config.OCI_VERSION and "rro" in f["mountOptions"]  # type: ignore[operator]


# ------------------------------------------------------------------ the command line's grammar


def test_the_shims_command_lines_parse() -> None:
    from supervisor.oci.args import parse

    a = parse(
        "--root /r --log /b/log.json --log-format json create --bundle /b --pid-file /b/init.pid "
        "--console-socket /s c1".split()
    )
    assert (a.root, a.log, a.log_format, a.command) == ("/r", "/b/log.json", "json", "create")
    assert (a.bundle, a.pid_file, a.console_socket, a.container_id) == ("/b", "/b/init.pid", "/s", "c1")
    a = parse("--root=/r exec --process /p.json --detach --pid-file /p c1".split())
    assert (a.root, a.process, a.detach, a.pid_file, a.container_id, a.args) == (
        "/r",
        "/p.json",
        True,
        "/p",
        "c1",
        [],
    )
    a = parse(["exec", "-t", "-e", "A=1", "-e", "B=2", "c1", "sh", "-c", "echo --help"])
    assert (a.tty, a.env, a.container_id, a.args) == (True, ["A=1", "B=2"], "c1", ["sh", "-c", "echo --help"])
    a = parse(["create", "-bundle", "/b", "--no-new-keyring", "c1"])  # Go-style -bundle
    assert (a.bundle, a.no_new_keyring) == ("/b", True)
    assert parse(["kill", "c1", "KILL"]).signal == "KILL" and parse(["kill", "c1"]).signal == "SIGTERM"
    assert parse(["delete", "-f", "c1"]).force and parse(["--version"]).version
    assert parse(["ps", "-f", "json", "c1", "--", "-ef"]).ps_args == ["--", "-ef"]
    assert "usage:" in parse(["create", "--help"]).help and parse([]).command is None


# ------------------------------------------------------------------ the child's filesystem steps


def test_child_ops_order() -> None:
    hook = {"path": "/bin/true"}
    data = base_config(
        hooks={"prestart": [hook]},
        mounts=[
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["ro"]},
            {"destination": "/data", "source": "/srv", "options": ["rbind", "ro"]},
        ],
    )
    data["process"]["cwd"] = "/work"
    data["root"]["readonly"] = True
    data["linux"].update(
        namespaces=[{"type": "pid"}, {"type": "mount"}, {"type": "network"}],
        devices=[{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
        sysctl={"net.core.somaxconn": "100"},
        maskedPaths=["/proc/kcore"],
        readonlyPaths=["/proc/sys"],
        rootfsPropagation="shared",
    )
    spec = parse(data)
    ops = fs.child_ops(spec, config.settings_of(spec), mount_namespace=True, hooks_pause=(7, 8))
    steps = [op.step for op in ops]
    assert steps[:4] == [
        "bind the root /bundle/rootfs",
        "mount proc on /proc",
        "mount tmpfs on /dev",
        "bind /srv on /data",
    ]
    assert steps[4:11] == [
        f"make the device /dev/{d}" for d in ("null", "zero", "full", "random", "urandom", "tty", "fuse")
    ]
    assert steps[11:16] == [
        f"symlink {p}" for p in ("/dev/ptmx", "/dev/fd", "/dev/stdin", "/dev/stdout", "/dev/stderr")
    ]
    assert steps[16:] == [
        "sysctl net.core.somaxconn=100",
        "make the working directory /work",
        "run the hooks",
        "make /proc/sys read-only",
        "mask /proc/kcore",
        "make /dev read-only",  # the read-only tmpfs, once its nodes are made
        "make the root filesystem read-only",
        "pivot_root",
        "set the root's propagation",
    ]
    dev = ops[2]
    assert dev.args[4] & MS_RDONLY == 0  # mounted writable, made read-only later
    assert ops[3].args[3:5] == (True, MS_RDONLY)  # recursive, remounted read-only
    assert ops[-1].args == ("/", "/", MS_SHARED)
    assert ops[16].args[1:] == ("/proc/sys/net/core/somaxconn", b"100")
    # each step travels by name to the child's table
    from supervisor.mounts import CHILD_FUNCTIONS

    assert all(name in CHILD_FUNCTIONS for _s, name, _a in fs.wire_ops(ops))


def test_child_ops_without_a_mount_namespace_or_with_dev_bound() -> None:
    spec = parse(with_linux(namespaces=[{"type": "pid"}]))
    assert [op.step for op in fs.child_ops(spec, config.settings_of(spec), mount_namespace=False)] == [
        "chroot into /bundle/rootfs"
    ]
    spec = parse(base_config(mounts=[{"destination": "/dev", "source": "/dev", "options": ["rbind"]}]))
    steps = [op.step for op in fs.child_ops(spec, config.settings_of(spec), mount_namespace=True)]
    assert not any("device" in s or "symlink" in s for s in steps)
    spec = parse(with_linux(namespaces=[{"type": "pid"}, {"type": "mount"}, {"type": "user"}], **_maps()))
    ops = fs.child_ops(spec, config.settings_of(spec), mount_namespace=True)
    # a user namespace may not make device nodes: the host's are bound
    assert "bind the device /dev/null" in [op.step for op in ops]


def _maps() -> dict[str, Any]:
    m = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    return {"uidMappings": m, "gidMappings": m}


# ------------------------------------------------------------------ cgroup writes


def test_cgroup_writes_v1_and_v2() -> None:
    res = config.Resources(
        memory_limit=64 << 20,
        memory_swap=96 << 20,
        cpu_shares=1024,
        cpu_quota=50000,
        cpu_period=100000,
        pids_limit=0,
    )
    assert writes(res, 1) == [
        ("memory", "memory.limit_in_bytes", str(64 << 20)),
        ("memory", "memory.memsw.limit_in_bytes", str(96 << 20)),
        ("cpu", "cpu.shares", "1024"),
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "50000"),
        ("pids", "pids.max", "max"),
    ]
    assert writes(res, 2) == [
        ("memory", "memory.max", str(64 << 20)),
        ("memory", "memory.swap.max", str(32 << 20)),
        ("cpu", "cpu.weight", "39"),
        ("cpu", "cpu.max", "50000 100000"),
        ("pids", "pids.max", "max"),
    ]
    with pytest.raises(SpecError, match="no cgroup v2 equivalent"):
        writes(config.Resources(memory_swappiness=10), 2)
    every = config.Resources(
        memory_limit=1,
        memory_swap=2,
        memory_reservation=3,
        memory_swappiness=4,
        disable_oom_killer=True,
        cpu_shares=5,
        cpu_period=6,
        cpu_quota=7,
        cpu_burst=8,
        cpu_rt_period=9,
        cpu_rt_runtime=10,
        cpu_idle=11,
    )
    assert writes(every, 1) == [
        ("memory", "memory.limit_in_bytes", "1"),
        ("memory", "memory.memsw.limit_in_bytes", "2"),
        ("memory", "memory.soft_limit_in_bytes", "3"),
        ("memory", "memory.swappiness", "4"),
        ("memory", "memory.oom_control", "1"),
        ("cpu", "cpu.shares", "5"),
        ("cpu", "cpu.cfs_period_us", "6"),
        ("cpu", "cpu.cfs_quota_us", "7"),
        ("cpu", "cpu.cfs_burst_us", "8"),
        ("cpu", "cpu.rt_period_us", "9"),
        ("cpu", "cpu.rt_runtime_us", "10"),
        ("cpu", "cpu.idle", "11"),
    ]
    assert ("memory", "memory.oom_control", "1") not in writes(config.Resources(disable_oom_killer=False), 1)


# ------------------------------------------------------------------ the wire


def test_the_childs_markers_over_a_pipe() -> None:
    r, w = os.pipe()
    try:
        wire.report_created(w)
        os.write(w, wire.encode_failure("exec", 2, "sh"))
        data = os.read(r, 4096)
    finally:
        os.close(r)
        os.close(w)
    marker, rest = wire.split_marker(data)
    assert marker == wire.CREATED
    assert wire.split_marker(rest) == (None, rest) and wire.decode_failure(rest) == ("exec", 2, "sh")
    hooks_r, hooks_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        wire.release(hooks_w)
        wire.ask_for_hooks(err_w, hooks_r)  # returns once released
        assert wire.split_marker(os.read(err_r, 64))[0] == wire.ASK_FOR_HOOKS
    finally:
        for fd in (hooks_w, err_r, err_w):
            os.close(fd)


def test_records_round_trip(tmp_path: Path) -> None:
    root = str(tmp_path)
    slot = records.reserve(root, "c1")
    with pytest.raises(SpecError, match="already exists"):
        records.reserve(root, "c1")
    rec = records.Record("c1", "/b", "/b/rootfs", 1, 0, "2026-01-01T00:00:00.000000Z", annotations={"a": "b"})
    records.save(root, rec)
    assert records.load(root, "c1") == rec and records.ids(root) == ["c1"]
    assert records.status(root, rec) == "stopped"  # pid 1 did not start at tick 0
    slot.remove()
    with pytest.raises(records.NotFoundError):
        records.load(root, "c1")
    # what a killed create leaves (no record, nobody holds it) is taken over
    os.mkdir(tmp_path / "c2")
    records.reserve(root, "c2").remove()
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ root: the command line


RUNC = str(Path(sys.executable).with_name("mydocker-runc"))
_ids = itertools.count()

pytestmark_root = pytest.mark.root


@pytest.fixture(scope="session")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox root filesystem (containers get it read-only: it is shared)."""
    return bb.build(tmp_path_factory)[0]


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A state directory that every test must leave empty."""
    path = tmp_path / "state"
    yield path
    left = os.listdir(path) if path.exists() else []
    assert not left, f"containers left under --root: {left}"


@pytest.fixture
def subreaper() -> Iterator[None]:
    """This process as containerd's shim is: the subreaper that create leaves its
    container to. conftest makes pytest one for the whole session (its leak check
    sees every orphan); this says so, and checks it."""
    libc = ctypes.CDLL(None, use_errno=True)
    flag = ctypes.c_int(0)
    pr_get_child_subreaper = 37
    assert libc.prctl(pr_get_child_subreaper, ctypes.byref(flag), 0, 0, 0) == 0
    assert flag.value == 1, "conftest's child_subreaper fixture should have made pytest a subreaper"
    yield


def new_id() -> str:
    return f"{OCI_ID_PREFIX}{next(_ids)}"


def make_bundle(path: Path, rootfs: Path, args: list[str], **changes: Any) -> Path:
    """A bundle at ``path`` whose root is ``rootfs`` (read-only), running ``args``."""
    data = default_spec()
    data["root"] = {"path": str(rootfs), "readonly": True}
    process: dict[str, Any] = data["process"]  # type: ignore[assignment]
    process.update(terminal=False, args=args)
    for key, value in changes.items():
        if key == "process":
            process.update(value)
        elif key == "linux":
            data["linux"].update(value)  # type: ignore[attr-defined]
        else:
            data[key] = value
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(data))
    return path


def runc(
    root: Path, *args: str, check: bool = True, timeout: float = 60, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """``mydocker-runc --root ROOT ARGS``. Its output goes to files, not pipes: a
    container inherits create's stdio (as runc's do), and would hold a pipe open."""
    text = kw.pop("input_text", None)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as inp:
        if text is not None:
            inp.write(text.encode())
            inp.seek(0)
        res = subprocess.run(
            [RUNC, "--root", str(root), *args],
            stdout=out,
            stderr=err,
            timeout=timeout,
            stdin=inp if text is not None else subprocess.DEVNULL,
            **kw,
        )
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(res.args, res.returncode, out.read().decode(), err.read().decode())
    if check:
        assert done.returncode == 0, f"mydocker-runc {' '.join(args)}: {done.stderr}"
    return done


def state(root: Path, cid: str) -> dict[str, Any]:
    return json.loads(runc(root, "state", cid).stdout)  # type: ignore[no-any-return]


def wait_status(root: Path, cid: str, status: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        s = state(root, cid)
        if s["status"] == status or time.monotonic() > deadline:
            return s
        time.sleep(0.02)


def reap(pid: int, timeout: float = 10) -> int:
    """Reap a container left to us (we are its subreaper)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        assert time.monotonic() < deadline, f"process {pid} did not exit"
        time.sleep(0.01)


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def cleanup(root: Path, cid: str, pids: list[int]) -> None:
    runc(root, "delete", "--force", cid, check=False)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            reap(pid)


@pytest.mark.root
def test_create_start_state_kill_delete(root: Path, busybox: Path, tmp_path: Path, subreaper: None) -> None:
    cid = new_id()
    bundle = make_bundle(tmp_path / "b", busybox, ["sleep", "100"])
    pid_file = tmp_path / "init.pid"
    log = tmp_path / "log.json"
    # containerd's shim's exact form
    runc(
        root,
        "--log",
        str(log),
        "--log-format",
        "json",
        "create",
        "--bundle",
        str(bundle),
        "--pid-file",
        str(pid_file),
        cid,
    )
    s = state(root, cid)
    pid = s["pid"]
    try:
        assert s["status"] == "created" and s["id"] == cid and s["bundle"] == str(bundle)
        assert int(pid_file.read_text()) == pid
        assert parent_of(pid) == os.getpid()  # left to its caller's subreaper, no daemon
        assert os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
        assert b"sleep" not in Path(f"/proc/{pid}/cmdline").read_bytes()  # waiting before its program
        assert json.loads(runc(root, "list", "--format", "json").stdout)[0]["status"] == "created"
        # what waits there is the runtime's interpreter: nothing in the container may
        # reach it (runc CVE-2019-5736)
        res = runc(root, "exec", cid, "sh", "-c", "readlink /proc/1/exe || echo refused", check=False)
        assert res.stdout.strip() == "refused", res
        runc(root, "start", cid)
        s = wait_status(root, cid, "running")
        assert s["status"] == "running" and s["pid"] == pid
        assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x00100\x00"
        res = runc(root, "start", cid, check=False)
        assert res.returncode == 1 and "it is running" in res.stderr
        assert json.loads(runc(root, "ps", "--format", "json", cid).stdout) == [pid]
        runc(root, "pause", cid)
        assert state(root, cid)["status"] == "paused"
        runc(root, "resume", cid)
        stats = json.loads(runc(root, "events", "--stats", cid).stdout)
        assert stats["type"] == "stats" and stats["data"]["pids"]["current"] == 1
        res = runc(root, "delete", cid, check=False)
        assert res.returncode == 1 and "use --force" in res.stderr
        runc(root, "kill", cid, "KILL")
        assert wait_status(root, cid, "stopped")["pid"] == 0
        res = runc(root, "kill", cid, "TERM", check=False)
        assert res.returncode == 1 and "not running" in res.stderr
        runc(root, "delete", cid)
        assert os.WTERMSIG(reap(pid)) == signal.SIGKILL
        res = runc(root, "state", cid, check=False)
        assert res.returncode == 1 and res.stderr.strip() == f"mydocker-runc: container {cid} does not exist"
        assert not log.exists() or "error" not in log.read_text()
    finally:
        cleanup(root, cid, [pid])


@pytest.mark.root
def test_run_in_the_foreground(root: Path, busybox: Path, tmp_path: Path) -> None:
    cid = new_id()
    args = ["sh", "-c", "echo out; echo err >&2; cat /proc/self/status | grep CapEff; hostname; exit 3"]
    bundle = make_bundle(tmp_path / "b", busybox, args)
    res = runc(root, "run", "--bundle", str(bundle), cid, check=False)
    assert res.returncode == 3, res.stderr
    assert res.stdout.split("\n")[0] == "out" and res.stderr == "err\n"
    assert "CapEff:\t00000000a80425fb" in res.stdout and "mydocker\n" in res.stdout
    assert not (root / cid).exists()


@pytest.mark.root
def test_hooks_get_the_state_on_stdin(root: Path, busybox: Path, tmp_path: Path, subreaper: None) -> None:
    cid = new_id()
    out = tmp_path / "out"
    out.mkdir()

    def hook(kind: str, where: str = str(out)) -> dict[str, Any]:
        return {"path": "/bin/sh", "args": ["sh", "-c", f"cat > {where}/{kind}"], "timeout": 10}

    hooks = {
        "prestart": [hook("prestart")],
        "createRuntime": [hook("createRuntime")],
        "createContainer": [hook("createContainer")],
        # in the container, after pivot_root: its /bin/sh and /out
        "startContainer": [hook("startContainer", "/out")],
        "poststart": [hook("poststart")],
        "poststop": [hook("poststop")],
    }
    mounts = default_spec()["mounts"] + [{"destination": "/out", "source": str(out), "options": ["bind"]}]  # type: ignore[operator]
    bundle = make_bundle(
        tmp_path / "b", busybox, ["sleep", "100"], hooks=hooks, mounts=mounts, annotations={"k": "v"}
    )
    runc(root, "create", "--bundle", str(bundle), cid)
    pid = state(root, cid)["pid"]
    try:
        assert sorted(os.listdir(out)) == ["createContainer", "createRuntime", "prestart"]
        runc(root, "start", cid)
        runc(root, "kill", cid, "KILL")
        wait_status(root, cid, "stopped")
        runc(root, "delete", cid)
        reap(pid)
    finally:
        cleanup(root, cid, [pid])
    want = {"prestart": "created", "createRuntime": "created", "createContainer": "created"}
    want.update(startContainer="created", poststart="running", poststop="stopped")
    for kind, status in want.items():
        got = json.loads((out / kind).read_text())
        assert got["id"] == cid and got["status"] == status, kind
        assert got["bundle"] == str(bundle) and got["annotations"] == {"k": "v"}, kind
        assert got.get("pid", 0) == (0 if kind == "poststop" else pid), kind


@pytest.mark.root
def test_a_failing_hook_leaves_nothing(root: Path, busybox: Path, tmp_path: Path) -> None:
    cid = new_id()
    bundle = make_bundle(tmp_path / "b", busybox, ["true"], hooks={"prestart": [{"path": "/bin/false"}]})
    res = runc(root, "create", "--bundle", str(bundle), cid, check=False)
    assert res.returncode == 1
    assert res.stderr == "mydocker-runc: prestart hook: /bin/false: exit status 1\n"
    assert runc(root, "state", cid, check=False).returncode == 1


def _receive_fd(listener: socket.socket) -> tuple[bytes, int]:
    conn, _ = listener.accept()
    with conn:
        fds = array.array("i")
        msg, ancdata, _flags, _addr = conn.recvmsg(256, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    assert len(fds) == 1
    return msg, fds[0]


@pytest.mark.root
def test_console_socket_gets_a_real_pty(root: Path, busybox: Path, tmp_path: Path, subreaper: None) -> None:
    cid = new_id()
    args = ["sh", "-c", "tty; stty size; echo ready; read line; echo got:$line"]
    bundle = make_bundle(
        tmp_path / "b", busybox, args, process={"terminal": True, "consoleSize": {"height": 30, "width": 100}}
    )
    sock_path = str(tmp_path / "console.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(1)
    listener.settimeout(30)
    err_file = tmp_path / "create.err"
    create = subprocess.Popen(
        [RUNC, "--root", str(root), "create", "--bundle", str(bundle), "--console-socket", sock_path, cid],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=err_file.open("w"),
    )
    pid = 0
    master = -1
    try:
        with listener:
            _msg, master = _receive_fd(listener)
        assert create.wait(timeout=30) == 0, err_file.read_text()
        pid = state(root, cid)["pid"]
        termios.tcgetattr(master)  # a terminal: the master of the container's pty
        runc(root, "start", cid)
        seen = b""
        while b"ready" not in seen:
            seen += os.read(master, 1024)
        os.write(master, b"hello\n")
        while b"got:hello" not in seen:
            seen += os.read(master, 1024)
        text = seen.decode()
        assert "/dev/pts/0" in text and "30 100" in text  # its own devpts, the config's size
        wait_status(root, cid, "stopped")
        runc(root, "delete", cid)
        reap(pid)
    finally:
        if create.poll() is None:
            create.kill()
            create.wait()
        if master >= 0:
            os.close(master)
        cleanup(root, cid, [pid] if pid else [])


@pytest.mark.root
def test_exec_as_the_shim_calls_it(root: Path, busybox: Path, tmp_path: Path, subreaper: None) -> None:
    cid = new_id()
    bundle = make_bundle(
        tmp_path / "b", busybox, ["sleep", "100"], process={"env": ["PATH=/bin", "WHO=init"]}
    )
    runc(root, "run", "--detach", "--bundle", str(bundle), cid)
    pid = state(root, cid)["pid"]
    pids = [pid]
    try:
        process = {
            "args": ["sh", "-c", "echo $WHO $(id -u) $(pwd) > /dev/shm/x; sleep 100"],
            "env": ["PATH=/bin", "WHO=exec"],
            "cwd": "/tmp",
            "user": {"uid": 65534, "gid": 65534},
        }
        (tmp_path / "process.json").write_text(json.dumps(process))
        pid_file = tmp_path / "exec.pid"
        runc(
            root,
            "exec",
            "--process",
            str(tmp_path / "process.json"),
            "--detach",
            "--pid-file",
            str(pid_file),
            cid,
        )
        exec_pid = int(pid_file.read_text())
        pids.append(exec_pid)
        assert parent_of(exec_pid) == os.getpid()
        assert os.readlink(f"/proc/{exec_pid}/ns/pid") == os.readlink(f"/proc/{pid}/ns/pid")
        deadline = time.monotonic() + 10
        while True:  # written by the exec'd process, read by a second exec in the foreground
            res = runc(root, "exec", cid, "cat", "/dev/shm/x", check=False)
            if res.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert res.stdout == "exec 65534 /tmp\n"
        assert runc(root, "exec", cid, "sh", "-c", "exit 7", check=False).returncode == 7
        res = runc(root, "exec", cid, "nonexistent", check=False)
        assert res.returncode == 1 and "nonexistent" in res.stderr and "\n" not in res.stderr.strip()
        assert sorted(json.loads(runc(root, "ps", "-f", "json", cid).stdout)) == sorted(pids)
        runc(root, "kill", "--all", cid, "KILL")
        # the PID 1 of a namespace finishes dying only once every process of it is
        # reaped: the exec'd one is ours (the shim reaps whatever it is left)
        reap(exec_pid)
        assert wait_status(root, cid, "stopped")["status"] == "stopped"
        runc(root, "delete", cid)
        reap(pid)
    finally:
        cleanup(root, cid, pids)


@pytest.mark.root
def test_joined_namespace_user_namespace_and_limits(
    root: Path, busybox: Path, tmp_path: Path, subreaper: None
) -> None:
    first, second = new_id(), new_id()
    # the container's root is host uid 100000: it must be able to reach its root
    # filesystem, all the way down from pytest's 0700 base directory
    bb.reachable(busybox)
    runc(root, "run", "-d", "--bundle", str(make_bundle(tmp_path / "a", busybox, ["sleep", "100"])), first)
    pid = state(root, first)["pid"]
    pids = [pid]
    try:
        m = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        linux = default_spec()["linux"]
        linux["namespaces"] = [  # type: ignore[index]
            {"type": "pid"},
            {"type": "mount"},
            {"type": "user"},
            {"type": "ipc"},
            {"type": "uts"},
            {"type": "network", "path": f"/proc/{pid}/ns/net"},
        ]
        linux.update(uidMappings=m, gidMappings=m, resources={"pids": {"limit": 20}, "devices": []})  # type: ignore[attr-defined]
        args = ["sh", "-c", "cat /proc/self/uid_map; id -u; ulimit -n; cat /proc/self/oom_score_adj"]
        process = {"rlimits": [{"type": "RLIMIT_NOFILE", "soft": 99, "hard": 99}], "oomScoreAdj": 123}
        # sysfs shows the network namespace of its mounter, which a user namespace
        # may mount only in a network namespace it owns (not one joined): no /sys
        mounts = [m for m in default_spec()["mounts"] if not m["destination"].startswith("/sys")]  # type: ignore[attr-defined]
        bundle = make_bundle(tmp_path / "b", busybox, args, linux=linux, process=process, mounts=mounts)
        runc(root, "create", "--bundle", str(bundle), second)
        pid2 = state(root, second)["pid"]
        pids.append(pid2)
        assert os.readlink(f"/proc/{pid2}/ns/net") == os.readlink(f"/proc/{pid}/ns/net")
        assert os.readlink(f"/proc/{pid2}/ns/user") != os.readlink("/proc/self/ns/user")
        out = tmp_path / "out"
        with open(out, "w") as f:
            # start's output is the container's: it inherited create's stdio (none here),
            # so look at what it is from outside instead
            f.write(Path(f"/proc/{pid2}/uid_map").read_text())
        assert out.read_text().split() == ["0", "100000", "65536"]
        assert Path(f"/proc/{pid2}/oom_score_adj").read_text().strip() == "123"
        assert "Max open files            99                   99" in Path(f"/proc/{pid2}/limits").read_text()
        # a process exec'd into the created container cannot reach the runtime's
        # interpreter that waits there as its PID 1 (runc CVE-2019-5736)
        res = runc(root, "exec", second, "sh", "-c", "readlink /proc/1/exe || echo refused", check=False)
        assert res.stdout.strip() == "refused", res
        runc(root, "delete", second)  # created, not started: deleted as runc deletes it
        reap(pid2)
        runc(root, "delete", "--force", first)
        reap(pid)
    finally:
        cleanup(root, second, [])
        cleanup(root, first, pids)


@pytest.mark.root
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"process": {"apparmorProfile": "docker-default"}}, "process.apparmorProfile: an AppArmor profile"),
        ({"process": {"args": ["/no/such/program"]}}, "/no/such/program"),
        ({"process": {"capabilities": {"bounding": ["CAP_TEST"]}}}, "unknown capability 'CAP_TEST'"),
        ({"linux": {"cgroupsPath": "/../x"}}, "'..'"),
        ({"mounts": [{"destination": "/x", "source": "/no/such/dir", "options": ["bind"]}]}, "/no/such/dir"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(
    root: Path, busybox: Path, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    cid = new_id()
    bundle = make_bundle(tmp_path / "b", busybox, ["true"], **change)
    log = tmp_path / "log.json"
    res = runc(
        root, "--log", str(log), "--log-format", "json", "create", "--bundle", str(bundle), cid, check=False
    )
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mydocker-runc: ") and message in lines[0], res.stderr
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and message in entry["msg"] and entry["time"].endswith("Z")
    assert runc(root, "state", cid, check=False).returncode == 1


def test_usage_errors(tmp_path: Path) -> None:
    root = tmp_path / "state"
    for args, message in (
        (["state"], "state needs a container id"),
        (["bogus"], "unknown command 'bogus'"),
        (["delete", "--frce", "x"], "unknown option '--frce'"),
        (["create", "--bundle"], "--bundle needs a value"),
        (["--systemd-cgroup", "state", "x"], "--systemd-cgroup is not supported"),
        (["kill", "x", "SIGNOPE"], "unknown signal 'SIGNOPE'"),
        (["kill", "x", "KILL"], "container x does not exist"),
        (["create", "a/b"], "invalid container id"),
    ):
        res = runc(root, *args, check=False)
        assert res.returncode == 1 and len(res.stderr.splitlines()) == 1 and message in res.stderr, (
            args,
            res.stderr,
        )
    res = runc(root, "--version")
    assert res.stdout.startswith("mydocker-runc version ") and f"spec: {config.OCI_VERSION}" in res.stdout
    runc(root, "spec", "--bundle", str(tmp_path))
    assert config.parse(json.loads((tmp_path / "config.json").read_text()), str(tmp_path), "x")
    assert runc(root, "spec", "--bundle", str(tmp_path), check=False).returncode == 1
    assert json.loads(runc(root, "list", "-f", "json").stdout) == []
    if not ROOT:
        res = runc(root, "create", "--bundle", str(tmp_path), "x", check=False)
        assert res.returncode == 1 and "needs root" in res.stderr


DEMO = Path(__file__).resolve().parent.parent / "scripts" / "containerd-demo.sh"


@pytest.mark.root
@pytest.mark.skipif(
    not (shutil.which("containerd") and shutil.which("ctr")),
    reason="containerd is not installed (scripts/debian-deps.sh test installs it)",
)
@pytest.mark.orphans  # containerd's shims, re-parented to pytest (a subreaper) when they exit
def test_containerd_runs_busybox_with_mydocker_runc(tmp_path: Path) -> None:
    """``ctr run --runc-binary mydocker-runc`` of a busybox image imported from an
    OCI archive (scripts/containerd-demo.sh: a private containerd, in a mount
    namespace of its own, its state in a temporary directory)."""
    before = _demo_cgroups()
    env = {**os.environ, "MYDOCKER_RUNC": RUNC, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    res = subprocess.run(
        [str(DEMO), "sh", "-c", "echo pid $$; cat /proc/self/status | grep CapEff; exit 5"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 5, res.stderr
    assert res.stdout.splitlines()[:2] == ["pid 1", "CapEff:\t00000000a80425fb"], res.stdout
    assert _demo_cgroups() == before


def _demo_cgroups() -> set[str]:
    """Every directory at and below ``mydocker-demo`` in each of our hierarchies: a
    parent a killed run left must not hide a container's directory below it."""
    from supervisor import cgroups

    found = set()
    for parent in cgroups.parents_of(cgroups.current_layout()):
        for top, dirs, _files in os.walk(os.path.join(parent, "mydocker-demo")):
            found.add(top)
            found.update(os.path.join(top, d) for d in dirs)
    return found


@pytest.mark.root
def test_update_list_ps_and_events(root: Path, busybox: Path, tmp_path: Path, subreaper: None) -> None:
    cid = new_id()
    linux = {"resources": {"devices": [{"allow": False, "access": "rwm"}], "pids": {"limit": 50}}}
    bundle = make_bundle(tmp_path / "b", busybox, ["sleep", "100"], linux=linux)
    runc(root, "run", "--detach", "--bundle", str(bundle), cid)
    pid = state(root, cid)["pid"]
    try:
        from supervisor.oci.cgroup import OciCgroup

        cg = OciCgroup.from_json(records.load(str(root), cid).cgroup)
        pids_dir = next(d for d in cg.dirs if d.startswith("/sys/fs/cgroup/pids/")) if cg.v1 else cg.v2
        assert pids_dir is not None and Path(pids_dir, "pids.max").read_text().strip() == "50"
        runc(root, "update", "--pids-limit", "70", cid)
        assert Path(pids_dir, "pids.max").read_text().strip() == "70"
        runc(root, "update", "--resources", "-", cid, input_text='{"pids": {"limit": 80}}')
        assert Path(pids_dir, "pids.max").read_text().strip() == "80"
        res = runc(
            root, "update", "--resources", "-", cid, input_text='{"blockIO": {"weight": 10}}', check=False
        )
        assert res.returncode == 1 and "block I/O" in res.stderr
        table = runc(root, "list").stdout.splitlines()
        assert table[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
        assert table[1].split()[:3] == [cid, str(pid), "running"]
        assert runc(root, "list", "-q").stdout.split() == [cid]
        ps = runc(root, "ps", cid).stdout.splitlines()
        assert "PID" in ps[0].split() and len(ps) == 2 and str(pid) in ps[1].split()
        data = json.loads(runc(root, "events", "--stats", cid).stdout)["data"]
        assert data["pids"] == {"current": 1, "limit": 80} and data["cpu"]["usage"]["total"] >= 0
        runc(root, "delete", "--force", cid)
        reap(pid)
    finally:
        cleanup(root, cid, [pid])


@pytest.mark.root
def test_run_in_the_foreground_with_a_terminal(root: Path, busybox: Path, tmp_path: Path) -> None:
    import pexpect

    cid = new_id()
    bundle = make_bundle(tmp_path / "b", busybox, ["sh"], process={"terminal": True})
    child = pexpect.spawn(RUNC, ["--root", str(root), "run", "--bundle", str(bundle), cid], timeout=30)
    try:
        child.setwinsize(33, 91)
        child.expect("# ")
        child.sendline("tty; stty size; exit 4")
        child.expect("/dev/pts/0")
        child.expect("33 91")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 4


@pytest.mark.root
def test_the_default_cgroup_parent_goes_with_the_last_container(
    root: Path, busybox: Path, tmp_path: Path, subreaper: None
) -> None:
    from supervisor import cgroups

    parents = [os.path.join(p, "mydocker-runc") for p in cgroups.parents_of(cgroups.current_layout())]
    before = {p for p in parents if os.path.exists(p)}
    first, second = new_id(), new_id()
    bundle = make_bundle(tmp_path / "b", busybox, ["sleep", "100"])
    pids = []
    try:
        for cid in (first, second):
            runc(root, "run", "-d", "--bundle", str(bundle), cid)
            pids.append(state(root, cid)["pid"])
        for cid, pid in zip((first, second), pids, strict=True):
            runc(root, "delete", "--force", cid)
            reap(pid)
    finally:
        cleanup(root, first, [])
        cleanup(root, second, [])
    assert {p for p in parents if os.path.exists(p)} == before


@pytest.mark.root
def test_start_container_hooks_run_confined_as_the_container(
    root: Path, busybox: Path, tmp_path: Path, subreaper: None
) -> None:
    # a startContainer hook's path resolves in the container: its program is the
    # image's, so it runs as runc runs it (in the container's init, confined), never
    # as the host's root with every capability and outside the container's cgroup
    cid = new_id()
    out = tmp_path / "out"
    out.mkdir()
    script = "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status > /out/hook; cat > /out/state"
    hooks = {"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", script]}]}
    mounts = default_spec()["mounts"] + [{"destination": "/out", "source": str(out), "options": ["bind"]}]  # type: ignore[operator]
    bundle = make_bundle(tmp_path / "b", busybox, ["sleep", "100"], hooks=hooks, mounts=mounts)
    runc(root, "create", "--bundle", str(bundle), cid)
    pid = state(root, cid)["pid"]
    try:
        runc(root, "start", cid)
        assert (out / "hook").read_text() == "CapEff:\t00000000a80425fb\nNoNewPrivs:\t1\n"
        assert json.loads((out / "state").read_text())["status"] == "created"
        runc(root, "delete", "--force", cid)
        reap(pid)
    finally:
        cleanup(root, cid, [pid])
    hooks = {"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "echo no >&2; exit 3"]}]}
    bundle = make_bundle(tmp_path / "c", busybox, ["sleep", "100"], hooks=hooks)
    res = runc(root, "run", "--bundle", str(bundle), cid, check=False)
    assert (
        res.returncode == 1
        and res.stderr == "mydocker-runc: startContainer hook: /bin/sh: exit status 3: no\n"
    )


@pytest.mark.root
def test_exec_without_a_mount_namespace_stays_in_the_containers_root(
    root: Path, busybox: Path, tmp_path: Path, subreaper: None
) -> None:
    # the container is only chrooted: an exec has no mount namespace to join, and
    # must be chrooted too, not run in the host's root
    cid = new_id()
    linux = {"namespaces": [{"type": "pid"}, {"type": "ipc"}], "maskedPaths": [], "readonlyPaths": []}
    bundle = make_bundle(tmp_path / "b", busybox, ["sleep", "100"], mounts=[], linux=linux, hostname=None)
    runc(root, "run", "-d", "--bundle", str(bundle), cid)
    pid = state(root, cid)["pid"]
    try:
        res = runc(root, "exec", "--cwd", "/etc", cid, "sh", "-c", "pwd; ls /")
        assert res.stdout.split() == ["/etc", *sorted(os.listdir(busybox))]
        runc(root, "delete", "--force", cid)
        reap(pid)
    finally:
        cleanup(root, cid, [pid])


@pytest.mark.root
def test_a_cgroup_that_holds_processes_is_refused(
    root: Path, busybox: Path, tmp_path: Path, subreaper: None
) -> None:
    # a second container in the first's cgroup would be killed by the first's delete
    # (which empties its cgroup): refused, as runc refuses it
    first, second = new_id(), new_id()
    linux = {"cgroupsPath": f"mydocker-runc/{first}"}
    bundle = make_bundle(tmp_path / "b", busybox, ["sleep", "100"], linux=linux)
    runc(root, "run", "-d", "--bundle", str(bundle), first)
    pid = state(root, first)["pid"]
    try:
        res = runc(root, "run", "-d", "--bundle", str(bundle), second, check=False)
        assert res.returncode == 1 and "the cgroup is not empty" in res.stderr, res.stderr
        assert runc(root, "state", second, check=False).returncode == 1
        assert state(root, first)["status"] == "running"
        res = runc(root, "exec", second, "true", check=False)
        assert res.stderr == f"mydocker-runc: container {second} does not exist\n"
        runc(root, "delete", "--force", first)
        reap(pid)
    finally:
        cleanup(root, second, [])
        cleanup(root, first, [pid])
