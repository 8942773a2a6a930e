"""crun and runc as the benches run them: OCI bundles over a busybox root filesystem,
with each runtime's own default confinement or with docker's, and the mount namespace
they run in on a cgroup-hybrid host.

What differs from a mydocker container with ``--rootfs`` of the same tree, however
the bundle is made (README's performance section says it too):

- the root: crun/runc bind the tree read-only (``root.readonly``, their default);
  mydocker puts a writable overlay layer of the container's own over it (made and
  removed per container);
- cgroups: runc makes one cgroup in each of the host's 9 v1 hierarchies and writes
  its device rules into the devices controller; crun runs with
  ``--cgroup-manager=disabled`` (no cgroup at all): with its cgroupfs manager it
  would put its memory cgroup at the root of that hierarchy, outside the bench's own,
  which this bench must not do; mydocker makes one cgroup v2 directory with a device
  program (the bench's "no cgroup" runner leaves it out, like crun);
- confinement ``"spec"``: what ``crun spec`` / ``runc spec`` write: 3 capabilities,
  ``noNewPrivileges``, no seccomp filter, docker's masked and read-only paths;
  ``"docker"``: docker's 14 capabilities and docker's default seccomp profile (made
  from mydocker's own copy of it, ``supervisor/seccomp.py``), no ``noNewPrivileges``:
  the confinement mydocker gives by default.

Both get the namespaces mydocker makes (pid, mount, uts, ipc, net, cgroup) and their
default mounts (/proc, a tmpfs /dev, devpts, /dev/shm, mqueue, /sys and its cgroup
mount, read-only).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import CommandRunner

from supervisor import _linux

CONFINEMENTS = ("spec", "docker")


class HiddenCgroup2:
    """A mount namespace in which the cgroup2 hierarchy of a cgroup-hybrid host is
    unmounted, entered only while crun/runc run.

    crun refuses a hybrid host ("cgroups in hybrid mode not supported, drop all
    controllers from cgroupv2"), even with its cgroup manager disabled. The bench
    switches into this namespace (setns) for the OCI runtimes' batches and back for
    everything else, so mydocker keeps seeing the host as it is. The host is
    untouched; the namespace goes when ``close`` drops its last fd.
    """

    UNIFIED = "/sys/fs/cgroup/unified"

    def __init__(self) -> None:
        self.fd = -1
        self.note: str | None = None
        with open("/proc/self/mountinfo") as f:
            if not any(line.split()[4] == self.UNIFIED for line in f):
                return
        if len(os.listdir("/proc/self/task")) != 1:
            self.note = "cannot hide cgroup2 from crun: setns needs a single-threaded process"
            return
        home = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        cwd = os.getcwd()
        try:
            _linux.unshare(_linux.CLONE_NEWNS)
            _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
            _linux.umount(self.UNIFIED, _linux.MNT_DETACH)
            self.fd = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            self.note = f"crun and runc run in a mount namespace without {self.UNIFIED} (cgroup-hybrid host)"
        finally:
            _linux.setns(home, _linux.CLONE_NEWNS)
            os.close(home)
            os.chdir(cwd)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        if self.fd < 0:
            yield
            return
        home = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        cwd = os.getcwd()
        _linux.setns(self.fd, _linux.CLONE_NEWNS)
        try:
            yield
        finally:
            _linux.setns(home, _linux.CLONE_NEWNS)
            os.close(home)
            os.chdir(cwd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def docker_seccomp() -> dict[str, Any]:
    """Docker's default seccomp profile for docker's default capabilities on this
    machine, as an OCI ``linux.seccomp`` (the rules mydocker compiles, as data)."""
    from supervisor.capabilities import parse_caps
    from supervisor.seccomp import DEFAULT_PROFILE, effective_rules

    native = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64", "s390x": "SCMP_ARCH_S390X"}
    arch = native.get(os.uname().machine)
    arches = [[main, *subs] for main, subs in DEFAULT_PROFILE.arch_map if main == arch]
    syscalls = []
    for rule in effective_rules(DEFAULT_PROFILE, parse_caps()):
        entry: dict[str, Any] = {"names": list(rule.names), "action": rule.action.value}
        if rule.errno is not None:
            entry["errnoRet"] = rule.errno
        if rule.args:
            entry["args"] = [
                {"index": a.index, "value": a.value, "valueTwo": a.value_two, "op": a.op.value}
                for a in rule.args
            ]
        syscalls.append(entry)
    return {
        "defaultAction": DEFAULT_PROFILE.default_action.value,
        "defaultErrnoRet": DEFAULT_PROFILE.default_errno,
        "architectures": arches[0] if arches else [],
        "syscalls": syscalls,
    }


def make_bundle(runtime: str, where: Path, rootfs: Path, confinement: str) -> Path:
    """An OCI bundle that runs /bin/true in ``rootfs`` (see the module's docstring)."""
    from supervisor.capabilities import parse_caps

    bundle = where / f"{Path(runtime).name}-{confinement}"
    bundle.mkdir(parents=True)
    subprocess.run([runtime, "spec"], cwd=bundle, check=True, capture_output=True)
    config = json.loads((bundle / "config.json").read_text())
    config["root"] = {"path": str(rootfs), "readonly": True}
    process = config["process"]
    process.update(terminal=False, args=["/bin/true"])
    linux = config["linux"]
    if not any(ns["type"] == "cgroup" for ns in linux["namespaces"]):
        linux["namespaces"].append({"type": "cgroup"})
    if confinement == "docker":
        caps = sorted(parse_caps())
        process["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
        process["noNewPrivileges"] = False
        linux["seccomp"] = docker_seccomp()
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    return bundle


def oci_runner(
    runtime: str, confinement: str, tmp: Path, rootfs: Path, hidden: HiddenCgroup2, weight: float
) -> CommandRunner:
    """crun or runc running a bundle with the given confinement, each container with
    an id of its own (the runtimes' state under ``tmp``); probed once."""
    runner = CommandRunner(
        f"{runtime} ({confinement})",
        list,
        weight=weight,
        optional=True,
        namespace=hidden.entered,
    )
    exe = shutil.which(runtime)
    if exe is None:
        runner.available = f"{runtime} is not installed (scripts/debian-deps.sh bench)"
        return runner
    try:
        bundle = make_bundle(exe, tmp, rootfs, confinement)
    except (OSError, subprocess.CalledProcessError) as e:
        runner.available = f"cannot make a bundle: {e}"
        return runner
    ids = itertools.count()
    tag = f"bench{os.getpid()}-{confinement}"
    head = [exe, "--root", str(tmp / f"{runtime}-state")]
    if runtime == "crun":
        head.append("--cgroup-manager=disabled")
    runner.argv = lambda: [*head, "run", "--bundle", str(bundle), f"{tag}-{next(ids)}"]
    return runner.probe()
