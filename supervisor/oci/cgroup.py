"""An OCI container's cgroup: at the config's ``cgroupsPath``, made by ``create``,
removed by ``delete`` (another process), so it is named by its paths, not owned by a
live process as mydocker's own are (``cgroups.ContainerCgroup``).

Where: ``linux.cgroupsPath`` as the runtime spec says, absolute from the hierarchy's
root (as this process sees it) or relative to this process's own cgroup; without
one, ``mydocker-runc/<id>`` below our own cgroup. Which hierarchies: the cgroup v2
one whenever the host has it (the child is cloned into it, ``cgroup.kill``,
``cgroup.freeze`` for pause, the device program), and a v1 hierarchy only for the
resources that need its controller (cgroups.py says why v1 is used no more than
that). A directory is made only below this process's own cgroup in its hierarchy,
never elsewhere (a path outside is refused in one line); the ones made are
recorded and removed at ``delete``, parents we made included when empty; a
directory that was there before (another runtime's, a pod's) is joined and left.

The resources are written as runc writes them (libcontainer/cgroups/fs and fs2),
with the layout and helpers of ``cgroups.py`` and the device programs of
``devices.py``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import time

from .. import cgroups, devices
from ..errors import SpecError, StartError
from .config import Resources

#: where a container without ``linux.cgroupsPath`` goes, below our own cgroup
DEFAULT_PARENT = "mydocker-runc"

#: the v1 controllers a container gets a directory in even without a limit, where
#: its path allows (containerd reads metrics and OOM events there)
ACCOUNTING = ("memory", "cpu", "cpuacct", "pids")

#: which v1 controller each resource needs
_CONTROLLER = {
    "memory_limit": "memory",
    "memory_reservation": "memory",
    "memory_swap": "memory",
    "memory_swappiness": "memory",
    "disable_oom_killer": "memory",
    "cpu_shares": "cpu",
    "cpu_quota": "cpu",
    "cpu_period": "cpu",
    "cpu_burst": "cpu",
    "cpu_rt_runtime": "cpu",
    "cpu_rt_period": "cpu",
    "cpu_idle": "cpu",
    "cpus": "cpuset",
    "mems": "cpuset",
    "pids_limit": "pids",
}
#: the OCI field of each, for messages
_FIELD = {
    "memory_limit": "memory.limit",
    "memory_reservation": "memory.reservation",
    "memory_swap": "memory.swap",
    "memory_swappiness": "memory.swappiness",
    "disable_oom_killer": "memory.disableOOMKiller",
    "cpu_shares": "cpu.shares",
    "cpu_quota": "cpu.quota",
    "cpu_period": "cpu.period",
    "cpu_burst": "cpu.burst",
    "cpu_rt_runtime": "cpu.realtimeRuntime",
    "cpu_rt_period": "cpu.realtimePeriod",
    "cpu_idle": "cpu.idle",
    "cpus": "cpu.cpus",
    "mems": "cpu.mems",
    "pids_limit": "pids.limit",
}


def _set(res: Resources, attr: str) -> bool:
    value = getattr(res, attr)
    return value is not None and value is not False


def needed_controllers(res: Resources) -> dict[str, str]:
    """``{controller: the first OCI field that needs it}``."""
    out: dict[str, str] = {}
    for attr, controller in _CONTROLLER.items():
        if _set(res, attr):
            out.setdefault(controller, f"linux.resources.{_FIELD[attr]}")
    return out


def _max(value: int) -> str:
    return "max" if value < 0 else str(value)


#: what each resource is written to on cgroup v1, in the order of the writes:
#: (Resources attribute, controller, file); the value as it is, a flag as "1"
_V1_FILES = (
    ("memory_limit", "memory", "memory.limit_in_bytes"),
    ("memory_swap", "memory", "memory.memsw.limit_in_bytes"),
    ("memory_reservation", "memory", "memory.soft_limit_in_bytes"),
    ("memory_swappiness", "memory", "memory.swappiness"),
    ("disable_oom_killer", "memory", "memory.oom_control"),
    ("cpu_shares", "cpu", "cpu.shares"),
    ("cpu_period", "cpu", "cpu.cfs_period_us"),
    ("cpu_quota", "cpu", "cpu.cfs_quota_us"),
    ("cpu_burst", "cpu", "cpu.cfs_burst_us"),
    ("cpu_rt_period", "cpu", "cpu.rt_period_us"),
    ("cpu_rt_runtime", "cpu", "cpu.rt_runtime_us"),
    ("cpu_idle", "cpu", "cpu.idle"),
)


def writes(res: Resources, version: int) -> list[tuple[str, str, str]]:
    """``(controller, file, value)`` for ``res`` on a cgroup of ``version``, in the
    order they must be written.

    Raises:
        SpecError: a resource cgroup v2 has no file for (swappiness, disabling the
            OOM killer, realtime CPU time).
    """
    w: list[tuple[str, str, str]] = []
    mem = "memory"
    if version == 1:
        for attr, controller, name in _V1_FILES:
            value = getattr(res, attr)
            if attr == "disable_oom_killer":
                if value:
                    w.append((controller, name, "1"))
            elif value is not None:
                w.append((controller, name, str(value)))
    else:
        for attr, why in (
            ("memory_swappiness", "memory.swappiness"),
            ("disable_oom_killer", "memory.disableOOMKiller"),
            ("cpu_rt_runtime", "cpu.realtimeRuntime"),
            ("cpu_rt_period", "cpu.realtimePeriod"),
        ):
            if _set(res, attr):
                raise SpecError(f"linux.resources.{why} has no cgroup v2 equivalent")
        if res.memory_limit is not None:
            w.append((mem, "memory.max", _max(res.memory_limit)))
        if res.memory_swap is not None:
            limit = res.memory_limit if res.memory_limit is not None else -1
            swap = -1 if res.memory_swap < 0 or limit < 0 else res.memory_swap - limit
            w.append((mem, "memory.swap.max", _max(swap)))
        if res.memory_reservation is not None:
            w.append((mem, "memory.low", _max(res.memory_reservation)))
        if res.cpu_shares is not None:
            w.append(("cpu", "cpu.weight", str(cgroups.cpu_weight(max(2, min(res.cpu_shares, 262144))))))
        if res.cpu_quota is not None or res.cpu_period is not None:
            quota = res.cpu_quota if res.cpu_quota is not None and res.cpu_quota > 0 else -1
            w.append(("cpu", "cpu.max", f"{_max(quota)} {res.cpu_period or cgroups.CPU_PERIOD}"))
        if res.cpu_burst is not None:
            w.append(("cpu", "cpu.max.burst", str(res.cpu_burst)))
        if res.cpu_idle is not None:
            w.append(("cpu", "cpu.idle", str(res.cpu_idle)))
    if res.cpus is not None:
        w.append(("cpuset", "cpuset.cpus", res.cpus))
    if res.mems is not None:
        w.append(("cpuset", "cpuset.mems", res.mems))
    if res.pids_limit is not None:
        w.append(("pids", "pids.max", _max(res.pids_limit if res.pids_limit > 0 else -1)))
    return w


class OciCgroup:
    """The directories of one OCI container's cgroup, and which of them we made."""

    def __init__(
        self, v2: str | None = None, v1: list[str] | None = None, made: list[str] | None = None
    ) -> None:
        #: the cgroup v2 directory, or None
        self.v2 = v2
        #: one directory per v1 hierarchy used
        self.v1 = v1 or []
        #: what we made (removed at delete), parents before children
        self.made = made or []

    # ---------------------------------------------------------------- records

    def to_json(self) -> dict[str, object]:
        """For the container's record."""
        return {"v2": self.v2, "v1": list(self.v1), "made": list(self.made)}

    @classmethod
    def from_json(cls, data: object) -> OciCgroup:
        """From ``to_json``'s dict (a record written by this runtime)."""
        if not isinstance(data, dict):
            return cls()
        v2 = data.get("v2")
        return cls(
            v2 if isinstance(v2, str) else None,
            [d for d in data.get("v1") or [] if isinstance(d, str)],
            [d for d in data.get("made") or [] if isinstance(d, str)],
        )

    @property
    def dirs(self) -> list[str]:
        """Every directory (v2 first)."""
        return ([self.v2] if self.v2 else []) + self.v1

    # ---------------------------------------------------------------- making

    @classmethod
    def create(
        cls,
        path: str | None,
        container_id: str,
        res: Resources,
        *,
        layout: cgroups.CgroupLayout | None = None,
    ) -> OciCgroup:
        """Make (or join) the cgroup of a container at ``path`` and write ``res``.

        Raises:
            SpecError: a path outside our own cgroup, a controller the host lacks,
                a bad value the kernel refused (nothing is left behind).
            StartError: the kernel refused a directory or a device program.
        """
        layout = cgroups.current_layout() if layout is None else layout
        fs = layout.fs
        wanted = needed_controllers(res)
        rel = path if path else posixpath.join(DEFAULT_PARENT, container_id)
        cg = cls()
        try:
            v2_controllers = {}
            hierarchies: list[cgroups.Hierarchy] = []
            for controller, why in wanted.items():
                h = layout.v1_for(controller)
                if h is not None:
                    if h not in hierarchies:
                        hierarchies.append(h)
                elif layout.v2 is not None:
                    v2_controllers[controller] = why
                else:
                    raise SpecError(f"{why} needs the {controller} cgroup controller, which is not mounted")
            if layout.v2 is None and os.geteuid() == 0 and not layout.v1_for("devices"):
                raise StartError(
                    "cgroups", 0, "no cgroup v2 and no devices controller to confine devices with"
                )
            v1_devices = layout.v1_for("devices")
            if v1_devices is not None and layout.v2 is None:
                hierarchies.append(v1_devices)  # without cgroup v2: the confinement
            # Beside cgroup v2 (a hybrid host), the v1 hierarchies containerd reads a
            # container's metrics and OOM events from, and the device rules (tools
            # read them from devices.list), as runc places its containers: where
            # the path is below our own cgroup there; else the container stays in
            # ours (a limit that needs the controller is refused instead, above).
            optional = [layout.v1_for(c) for c in ACCOUNTING]
            if res.devices and layout.v2 is not None:
                optional.append(v1_devices)
            for h in optional:
                if h is not None and h not in hierarchies and _target(h, rel) is not None:
                    hierarchies.append(h)
            if layout.v2 is not None:
                cg.v2 = cg._make(fs, layout.v2, rel, v2_controllers)
                if v2_controllers:
                    _write_all(fs, cg.v2, writes(res, 2), wanted, only=set(v2_controllers))
                for key, value in res.unified:
                    _write(fs, cg.v2, key, value, f"linux.resources.unified.{key}")
                devices.apply_v2(cg.v2, res.devices + devices.DEFAULT_RULES)
            elif res.unified:
                raise SpecError("linux.resources.unified needs a cgroup v2 hierarchy")
            for h in hierarchies:
                d = cg._make(fs, h, rel, {})
                cg.v1.append(d)
                _write_all(fs, d, writes(res, 1), wanted, only=set(h.controllers))
                if "devices" in h.controllers:
                    devices.apply_v1(fs, d, res.devices + devices.DEFAULT_RULES)
            if cg.pids():
                # another container's (as runc, refused): its delete kills all in it
                raise SpecError(f"linux.cgroupsPath {rel!r}: the cgroup is not empty (it holds processes)")
        except BaseException:
            cg.remove()
            raise
        return cg

    def _make(self, fs: cgroups.CgroupFS, h: cgroups.Hierarchy, rel: str, enable: dict[str, str]) -> str:
        own = h.dir_of(h.own_path)
        target = _target(h, rel)
        if own is None or target is None:
            raise SpecError(
                f"linux.cgroupsPath {rel!r} is outside mydocker-runc's own cgroup "
                f"{h.own_path} in {h.mountpoint}: mydocker-runc makes cgroups only below its own"
            )
        parts = [p for p in posixpath.relpath(target, own).split("/") if p not in (".", "")]
        d = own
        for part in parts:
            parent, d = d, posixpath.join(d, part)
            if enable:
                cgroups._enable_v2_controllers(fs, parent, enable)
            try:
                fs.mkdir(d)
            except FileExistsError:
                continue
            except OSError as e:
                raise StartError("cgroups", e.errno or 0, f"mkdir {d}: {e.strerror}") from None
            self.made.append(d)
            if "cpuset" in h.controllers:
                # a new v1 cpuset has no CPUs and no memory nodes: no task could join
                for name in ("cpuset.cpus", "cpuset.mems"):
                    _write(fs, d, name, fs.read(posixpath.join(parent, name)).strip(), name)
        return d

    # ---------------------------------------------------------------- using

    def open_v2(self) -> int:
        """An O_PATH fd of the v2 directory (CLONE_INTO_CGROUP), or -1."""
        if self.v2 is None:
            return -1
        return os.open(self.v2, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def attach(self, pid: int) -> None:
        """Put ``pid`` into the v1 directories (it was cloned into the v2 one).

        Raises:
            StartError: a write was refused.
        """
        for d in self.v1:
            try:
                with open(posixpath.join(d, "cgroup.procs"), "w") as f:
                    f.write(str(pid))
            except OSError as e:
                raise StartError(
                    "place the container in its cgroup", e.errno or 0, f"{d}: {e.strerror}"
                ) from None

    def pids(self) -> list[int]:
        """Every process in the container's cgroup (v2, else the first v1 one)."""
        for d in self.dirs:
            found: list[int] = []
            for sub, _dirs, _files in os.walk(d):
                try:
                    with open(posixpath.join(sub, "cgroup.procs")) as f:
                        found += [int(p) for p in f.read().split()]
                except (OSError, ValueError):
                    continue
            return sorted(set(found))
        return []

    def kill_all(self) -> None:
        """SIGKILL everything in the cgroup (``cgroups.kill_all``)."""
        fs = cgroups.current_layout().fs
        for d in self.dirs:
            if os.path.isdir(d):
                cgroups.kill_all(fs, d)

    def freeze(self, frozen: bool, timeout: float = 10.0) -> None:
        """Freeze or thaw (cgroup v2 ``cgroup.freeze``), waiting until it is done.

        Raises:
            StartError: no cgroup v2 directory, or it did not happen in ``timeout``.
        """
        if self.v2 is None:
            raise StartError("pause", 0, "the container has no cgroup v2 directory to freeze")
        _write(cgroups.current_layout().fs, self.v2, "cgroup.freeze", "1" if frozen else "0", "cgroup.freeze")
        deadline = time.monotonic() + timeout
        while self.frozen() != frozen:
            if time.monotonic() > deadline:
                raise StartError(
                    "pause", errno.ETIMEDOUT, f"{self.v2} did not {'freeze' if frozen else 'thaw'}"
                )
            time.sleep(0.002)

    def frozen(self) -> bool:
        """Whether the cgroup is frozen."""
        if self.v2 is None:
            return False
        try:
            with open(posixpath.join(self.v2, "cgroup.events")) as f:
                return any(line.strip() == "frozen 1" for line in f)
        except OSError:
            return False

    def update(self, res: Resources) -> None:
        """Write new resources into the existing directories.

        Raises:
            SpecError: a resource whose controller this container's cgroup lacks
                (its hierarchy was not needed at create), or device rules.
        """
        layout = cgroups.current_layout()
        if res.devices:
            raise SpecError("linux.resources.devices cannot be updated (the device rules are set at create)")
        wanted = needed_controllers(res)
        by_controller: dict[str, str] = {}
        for d in self.v1:
            for h in layout.v1:
                if d.startswith(h.mountpoint.rstrip("/") + "/"):
                    by_controller.update({c: d for c in h.controllers})
        for controller, why in wanted.items():
            if controller in by_controller:
                continue
            if layout.v1_for(controller) is None and self.v2 is not None:
                by_controller[controller] = self.v2
                continue
            raise SpecError(
                f"{why}: the container's cgroup has no {controller} controller (none was set at create)"
            )
        for controller, d in by_controller.items():
            version = 2 if d == self.v2 else 1
            _write_all(layout.fs, d, [w for w in writes(res, version) if w[0] == controller], wanted)
        for key, value in res.unified:
            if self.v2 is None:
                raise SpecError("linux.resources.unified needs a cgroup v2 hierarchy")
            _write(layout.fs, self.v2, key, value, f"linux.resources.unified.{key}")

    def stats(self) -> dict[str, object]:
        """runc's ``events --stats`` data: cpu, memory and pids, as far as the
        container's cgroup shows them."""
        out: dict[str, object] = {}
        cpu = self._cpu()
        if cpu is not None:
            out["cpu"] = cpu
        memory = self._memory()
        if memory is not None:
            out["memory"] = memory
        out["pids"] = {"current": len(self.pids()), "limit": self._pids_limit()}
        return out

    def _read(self, name: str) -> str | None:
        for d in self.dirs:
            p = posixpath.join(d, name)
            with contextlib.suppress(OSError):
                with open(p) as f:
                    return f.read()
        return None

    def _cpu(self) -> dict[str, object] | None:
        text = self._read("cpu.stat")
        usage = self._read("cpuacct.usage")
        if usage is not None:
            return {"usage": {"total": int(usage)}}
        if text is None:
            return None
        fields = dict(line.split(None, 1) for line in text.splitlines() if " " in line)
        usec = {k: int(v) for k, v in fields.items() if v.strip().isdigit()}
        if "usage_usec" not in usec:
            return None
        return {
            "usage": {
                "total": usec["usage_usec"] * 1000,
                "user": usec.get("user_usec", 0) * 1000,
                "kernel": usec.get("system_usec", 0) * 1000,
            },
            "throttling": {
                "periods": usec.get("nr_periods", 0),
                "throttled_periods": usec.get("nr_throttled", 0),
                "throttled_time": usec.get("throttled_usec", 0) * 1000,
            },
        }

    def _memory(self) -> dict[str, object] | None:
        for current, limit in (
            ("memory.usage_in_bytes", "memory.limit_in_bytes"),
            ("memory.current", "memory.max"),
        ):
            usage = self._read(current)
            if usage is not None:
                cap = (self._read(limit) or "").strip()
                return {"usage": {"usage": int(usage), "limit": int(cap) if cap.isdigit() else 0}}
        return None

    def _pids_limit(self) -> int:
        text = (self._read("pids.max") or "").strip()
        return int(text) if text.isdigit() else 0

    # ---------------------------------------------------------------- removing

    def remove(self, timeout: float = 10.0) -> list[str]:
        """Kill what is left and remove the directories we made, children first;
        returns those still there (busy after ``timeout``).

        The container's own directories go with whatever cgroups its processes made
        below them; a parent we made goes only when empty (another container may
        have come below it meanwhile: then whoever is last removes it, and the
        default ``mydocker-runc`` parent is always tried)."""
        fs = cgroups.current_layout().fs
        deadline = time.monotonic() + timeout
        left = []
        leaves = set(self.dirs)
        for d in reversed(self.made):
            if d not in leaves:
                with contextlib.suppress(OSError):
                    fs.rmdir(d)
                continue
            while not cgroups.remove_tree(fs, d):
                if time.monotonic() > deadline:
                    left.append(d)
                    break
                cgroups.kill_all(fs, d)
                time.sleep(0.005)
        for d in leaves:
            parent = posixpath.dirname(d)
            if posixpath.basename(parent) == DEFAULT_PARENT and parent not in self.made:
                with contextlib.suppress(OSError):
                    fs.rmdir(parent)
        return left


def _target(h: cgroups.Hierarchy, rel: str) -> str | None:
    """The directory of ``rel`` (absolute: from the hierarchy's root; relative: from
    our own cgroup) in ``h``, or None when it is not below our own cgroup there."""
    own = h.dir_of(h.own_path)
    if own is None:
        return None
    target = h.dir_of(rel) if rel.startswith("/") else posixpath.join(own, rel)
    if target is None:
        return None
    target = posixpath.normpath(target)
    if target != own and not target.startswith(own.rstrip("/") + "/"):
        return None
    return target


def _write(fs: cgroups.CgroupFS, d: str, name: str, value: str, why: str) -> None:
    path = posixpath.join(d, name)
    if not fs.exists(path):
        raise SpecError(f"{why}: this kernel has no {name} in {d}")
    try:
        fs.write(path, value)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ERANGE, errno.EBUSY, errno.ENOSPC):
            raise SpecError(
                f"{why}: the kernel refused {value!r} for {path} ({os.strerror(e.errno or 0)})"
            ) from None
        raise StartError("cgroups", e.errno or 0, str(e)) from None


def _write_all(
    fs: cgroups.CgroupFS,
    d: str,
    items: list[tuple[str, str, str]],
    wanted: dict[str, str],
    only: set[str] | None = None,
) -> None:
    for controller, name, value in items:
        if only is not None and controller not in only:
            continue
        _write(fs, d, name, value, wanted.get(controller, f"linux.resources ({name})"))
