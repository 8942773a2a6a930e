"""A container is data: the frozen description that the CLI and the API build.

``ContainerSpec`` is built once, validated once (``SpecError`` on bad input, before
anything is created on the host) and then only read: the supervisor uses it to prepare
the host side, ``init.child_spec`` digests it into the plain data the spawn helper
receives and ``init.py`` executes in the child. This module imports only the standard
library.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from .errors import SpecError

# What typing.TYPE_CHECKING is, without importing typing (the spawn helper loads this
# module with a root filesystem: helper.py says what it may load).
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any

    from .ulimits import Ulimit

#: stdio arguments of the library (``subprocess``'s values): a pipe to the container,
#: /dev/null, and stderr into stdout
PIPE = -1
STDOUT = -2
DEVNULL = -3

#: seconds between SIGTERM and SIGKILL when a container is stopped or cancelled
#: (docker's ``stop`` timeout)
DEFAULT_GRACE = 10.0

#: docker's default PATH inside a container
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: a hostname the kernel takes (64 bytes) and resolvers do not choke on (RFC 1123
#: labels, plus '_' as docker's own ids and many hostnames have)
_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

#: the namespaces a container gets unless told otherwise (docker's, with a cgroup
#: namespace as on a cgroup v2 host)
DEFAULT_NAMESPACES: frozenset[str] = frozenset({"pid", "mount", "uts", "ipc", "net", "cgroup"})

#: ``ContainerSpec.seccomp`` for no filter at all
UNCONFINED = "unconfined"
KNOWN_NAMESPACES: frozenset[str] = frozenset({"pid", "mount", "uts", "ipc", "net", "cgroup"})


def new_id() -> str:
    """A fresh container id: 64 hex digits, like docker's."""
    # os.urandom is what secrets.token_hex uses; importing secrets would load hashlib
    # and OpenSSL into the spawn helper, whose size every clone pays for.
    return os.urandom(32).hex()


def parse_env(items: Iterable[str], host_env: Mapping[str, str] | None = None) -> tuple[tuple[str, str], ...]:
    """Turn docker-style ``KEY=VALUE`` / ``KEY`` items into pairs.

    ``KEY`` alone takes the host's value, and is dropped when the host has none
    (docker does the same).

    Raises:
        SpecError: on an empty key or a key containing ``=`` or NUL.
    """
    host_env = os.environ if host_env is None else host_env
    out: list[tuple[str, str]] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not key or "\0" in item:
            raise SpecError(f"invalid environment variable: {item!r}")
        if not sep:
            if key not in host_env:
                continue
            value = host_env[key]
        out.append((key, value))
    return tuple(out)


#: docker's smallest memory limit: below it a container cannot even start its init
MIN_MEMORY = 6 * 1024 * 1024

_SIZE_UNITS = {"": 1, "b": 1}
for _i, _u in enumerate("kmgtp", 1):
    _SIZE_UNITS.update({_u: 1024**_i, _u + "b": 1024**_i, _u + "ib": 1024**_i})


def parse_size(value: str | int, what: str = "size") -> int:
    """A byte count in docker's spelling: ``"64m"`` → 67108864.

    A number (decimals allowed) with an optional binary unit ``b``, ``k``, ``m``,
    ``g``, ``t`` or ``p`` (also ``kb``/``kib``, any case). ``-1`` is passed through
    (it means "unlimited" where a flag allows it).

    Raises:
        SpecError: anything else, e.g. ``"12q"``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == "-1":
        return -1
    num = text.rstrip("bikmgtp")
    unit = text[len(num) :]
    if not num or unit not in _SIZE_UNITS or num.count(".") > 1 or not num.replace(".", "").isdigit():
        raise SpecError(f"invalid {what} {value!r} (expected a size such as 64m: a number and b, k, m or g)")
    return int(float(num) * _SIZE_UNITS[unit])


#: no CPU number is this high on any kernel (CONFIG_NR_CPUS is at most 8192 today):
#: checked before a range is expanded, so ``0-300000000`` costs nothing
MAX_CPU = 1 << 16


def _number(text: str) -> int | None:
    # isdigit() is also true of '²' and other digits int() refuses
    return int(text) if text.isascii() and text.isdigit() else None


def cpu_list(text: str) -> frozenset[int]:
    """The CPUs of a cpuset list such as ``"0-2,5"``.

    Raises:
        SpecError: a malformed list, or a CPU number no host has.
    """
    cpus: set[int] = set()
    for part in text.strip().split(","):
        lo_s, sep, hi_s = part.strip().partition("-")
        lo, hi = _number(lo_s), _number(hi_s) if sep else _number(lo_s)
        if lo is None or hi is None or hi < lo:
            raise SpecError(f"invalid CPU list {text!r} (expected e.g. 0-1,3)")
        if hi >= MAX_CPU:
            raise SpecError(f"invalid CPU list {text!r}: CPU {hi} is beyond any host's CPUs")
        cpus.update(range(lo, hi + 1))
    return frozenset(cpus)


def _whole(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SpecError(f"invalid {what} {value!r} (expected a whole number)")
    try:
        return int(value)
    except ValueError:
        raise SpecError(f"invalid {what} {value!r} (expected a whole number)") from None


def _seconds(value: object, flag: str) -> float:
    """A positive, finite number of seconds (``"1.5"`` or 1.5).

    Raises:
        SpecError: anything else (a negative, zero, infinite or non-numeric time).
    """
    if isinstance(value, bool):
        value = str(value)
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SpecError(f"invalid {flag} {value!r} (expected a number of seconds such as 1.5)") from None
    if not 0 < seconds < float("inf"):
        raise SpecError(f"invalid {flag} {value!r}: it must be a positive number of seconds")
    return seconds


@dataclass(frozen=True)
class Limits:
    """Resource limits of one container (cgroups). ``None`` means unlimited.

    Attributes:
        memory: bytes (``"64m"`` is accepted and converted); at least 6 MiB.
        memory_swap: memory plus swap in bytes, at least ``memory``; -1 for
            unlimited swap; unset: as much swap as memory (docker's rules).
        cpus: how many CPUs' worth of time, e.g. 0.5 (at least 0.01).
        cpu_shares: relative CPU weight, 2 to 262144 (the default is 1024).
        cpuset_cpus: the CPUs the container may run on, e.g. ``"0-1,3"``.
        pids: the most processes (and threads) the container may have at once.
        cpu_time: seconds of CPU time (user + system, every process of the
            container together, from its cgroup); used up, the container is killed
            (``enforce.py``).
        wall_time: seconds of real time from the start; then the container is killed.

    Raises:
        SpecError: a malformed or out-of-range value (checked when made; whether
            the host can honour it is checked when the container starts).
    """

    memory: int | None = None
    memory_swap: int | None = None
    cpus: float | None = None
    cpu_shares: int | None = None
    cpuset_cpus: str | None = None
    pids: int | None = None
    cpu_time: float | None = None
    wall_time: float | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        for name, flag in (("cpu_time", "--cpu-time"), ("wall_time", "--wall-time")):
            if getattr(self, name) is not None:
                put(name, _seconds(getattr(self, name), flag))

        if self.memory is not None:
            put("memory", parse_size(self.memory, "memory limit"))
            if self.memory < MIN_MEMORY:
                raise SpecError(f"invalid memory limit {self.memory}: the minimum is 6m")
        if self.memory_swap is not None:
            put("memory_swap", parse_size(self.memory_swap, "memory+swap limit"))
            if self.memory is None:
                raise SpecError("--memory-swap needs --memory as well")
            if self.memory_swap != -1 and self.memory_swap < self.memory:
                raise SpecError(
                    f"invalid memory+swap limit {self.memory_swap}: it must be at least the memory limit "
                    f"({self.memory}), or -1 for unlimited swap"
                )
        if self.cpus is not None:
            try:
                cpus = float(self.cpus)
            except (TypeError, ValueError):
                raise SpecError(f"invalid --cpus {self.cpus!r} (expected a number such as 0.5)") from None
            if not 0.01 <= cpus < float("inf"):
                raise SpecError(f"invalid --cpus {self.cpus!r}: it must be at least 0.01")
            put("cpus", cpus)
        if self.cpu_shares is not None:
            put("cpu_shares", _whole(self.cpu_shares, "--cpu-shares"))
            if not 2 <= self.cpu_shares <= 262144:
                raise SpecError(f"invalid --cpu-shares {self.cpu_shares}: it must be from 2 to 262144")
        if self.cpuset_cpus is not None:
            cpus_set = cpu_list(str(self.cpuset_cpus))
            put("cpuset_cpus", ",".join(str(c) for c in sorted(cpus_set)))
        if self.pids is not None:
            put("pids", _whole(self.pids, "--pids-limit"))
            if self.pids < 1:
                raise SpecError(f"invalid --pids-limit {self.pids}: it must be at least 1 (or -1: unlimited)")

    @property
    def timed(self) -> bool:
        """Whether a CPU or wall time limit is set (enforced from the supervisor)."""
        return self.cpu_time is not None or self.wall_time is not None

    def any(self) -> bool:
        """True when at least one limit is set."""
        return any(v is not None for v in vars(self).values())

    @classmethod
    def parse(
        cls,
        *,
        memory: str | None = None,
        memory_swap: str | None = None,
        cpus: str | None = None,
        cpu_shares: str | None = None,
        cpuset_cpus: str | None = None,
        pids: str | None = None,
        cpu_time: str | None = None,
        wall_time: str | None = None,
    ) -> Limits:
        """Limits from docker-style flag strings; ``pids="-1"`` means unlimited.

        Raises:
            SpecError: a bad value, in one sentence.
        """
        if pids is not None and pids.strip() == "-1":
            pids = None
        return cls(
            memory=parse_size(memory, "memory limit") if memory is not None else None,
            memory_swap=parse_size(memory_swap, "memory+swap limit") if memory_swap is not None else None,
            cpus=cpus,  # type: ignore[arg-type]
            cpu_shares=cpu_shares,  # type: ignore[arg-type]
            cpuset_cpus=cpuset_cpus,
            pids=pids,  # type: ignore[arg-type]
            cpu_time=cpu_time,  # type: ignore[arg-type]
            wall_time=wall_time,  # type: ignore[arg-type]
        )


#: a network's name: what ``mydocker network create`` takes (its bridge is ``myd-NAME``,
#: and a Linux interface name has at most 15 bytes)
NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,10}")
#: ``ContainerSpec.network`` values that name no network: a namespace with only
#: ``lo`` (the default), and the host's namespace
NETWORK_MODES = ("none", "host")
#: a container name that may stand in a hosts file (docker's rule for names)
_CONTAINER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True)
class Port:
    """A published port: ``host_ip:host_port`` on the host forwards to
    ``container_port`` of the container (docker's ``-p``).

    Attributes:
        container_port: the port inside the container (1-65535).
        host_port: the port on the host; 0: one the kernel picks (``-p 80``).
        host_ip: the host address it is published on; ``0.0.0.0``: all of them.
        protocol: ``"tcp"`` or ``"udp"``.
    """

    container_port: int
    host_port: int = 0
    host_ip: str = "0.0.0.0"
    protocol: str = "tcp"

    def __post_init__(self) -> None:
        import ipaddress

        for what in ("container_port", "host_port"):
            value = getattr(self, what)
            lowest = 1 if what == "container_port" else 0
            if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= 65535:
                raise SpecError(f"invalid port {value!r} (1 to 65535)")
        if self.protocol not in ("tcp", "udp"):
            raise SpecError(f"invalid protocol {self.protocol!r} (tcp or udp)")
        try:
            ip = ipaddress.IPv4Address(self.host_ip)
        except ValueError:
            raise SpecError(f"invalid host address {self.host_ip!r} (an IPv4 address)") from None
        object.__setattr__(self, "host_ip", str(ip))

    @classmethod
    def parse(cls, text: str) -> Port:
        """Parse docker's ``-p [IP:][HOSTPORT:]CONTAINERPORT[/tcp|/udp]``.

        Raises:
            SpecError: when the text does not have that shape.
        """
        address, _, proto = text.partition("/")
        parts = address.split(":")
        numbers = parts[-2:] if len(parts) > 1 else parts
        if len(parts) > 3 or not parts[-1] or not all(n.isascii() and n.isdigit() for n in numbers if n):
            raise SpecError(f"invalid port {text!r} (use [IP:][HOSTPORT:]CONTAINERPORT[/tcp|/udp])")
        host_ip = parts[0] if len(parts) == 3 and parts[0] else "0.0.0.0"
        host_port = int(parts[-2] or 0) if len(parts) > 1 else 0
        return cls(int(parts[-1]), host_port, host_ip, proto or "tcp")

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}->{self.container_port}/{self.protocol}"


#: the kinds of ``Mount``
MOUNT_TYPES = ("bind", "tmpfs")
# <sys/mount.h>: what the tmpfs options turn into (spec imports nothing of _linux)
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_TMPFS_FLAGS = {
    "exec": 0,
    "noexec": _MS_NOEXEC,
    "suid": 0,
    "nosuid": _MS_NOSUID,
    "dev": 0,
    "nodev": _MS_NODEV,
}


@dataclass(frozen=True)
class Mount:
    """One mount on top of the container's root filesystem (needs ``rootfs``).

    Attributes:
        target: absolute path inside the container; created there when missing
            (in the container's writable layer, never in the image).
        source: the host path of a bind mount (a file or a directory, which is
            bound recursively); ``None`` for a tmpfs.
        type: ``"bind"`` (docker's ``-v HOST:CONTAINER``) or ``"tmpfs"``
            (``--tmpfs PATH``).
        read_only: mount it read-only (a directory with all its submounts).
        options: tmpfs only: comma-separated ``size=``, ``mode=`` and ``exec``,
            ``suid``, ``dev`` (or their ``no`` forms; docker's default is
            ``noexec,nosuid,nodev``).
    """

    target: str
    source: str | None = None
    type: str = "bind"
    read_only: bool = False
    options: str = ""

    @classmethod
    def parse_volume(cls, text: str) -> Mount:
        """Parse docker's ``-v HOST:CONTAINER[:ro|rw]``.

        Raises:
            SpecError: when the text does not have that shape.
        """
        parts = text.split(":")
        mode = "rw"
        if len(parts) == 3:
            mode = parts.pop()
        if len(parts) != 2 or mode not in ("ro", "rw") or not parts[0] or not parts[1]:
            raise SpecError(f"invalid volume {text!r} (use HOST:CONTAINER[:ro])")
        return cls(target=parts[1], source=parts[0], read_only=mode == "ro")

    @classmethod
    def parse_tmpfs(cls, text: str) -> Mount:
        """Parse docker's ``--tmpfs PATH[:OPTIONS]``: ``ro``/``rw``, ``exec``/``noexec``,
        ``suid``/``nosuid``, ``dev``/``nodev``, ``size=``, ``mode=`` (docker's
        defaults: ``noexec,nosuid,nodev``).

        Raises:
            SpecError: on an unknown option.
        """
        target, _, opts = text.partition(":")
        read_only = False
        data = []
        for opt in filter(None, opts.split(",")):
            if opt in ("ro", "rw"):
                read_only = opt == "ro"
            elif opt in _TMPFS_FLAGS or (opt.split("=", 1)[0] in ("size", "mode") and "=" in opt):
                data.append(opt)
            else:
                raise SpecError(
                    f"invalid --tmpfs option {opt!r} in {text!r} "
                    "(ro, rw, exec, noexec, suid, nosuid, dev, nodev, size=, mode=)"
                )
        return cls(target=target, type="tmpfs", read_only=read_only, options=",".join(data))

    def tmpfs_flags(self) -> tuple[int, str]:
        """A tmpfs's mount flags (``MS_*``: docker's ``noexec,nosuid,nodev`` unless
        the options say otherwise; ``MS_RDONLY`` when read-only) and its data
        (``size=``, ``mode=``; ``mode=1777`` by default)."""
        flags = {"exec": _MS_NOEXEC, "suid": _MS_NOSUID, "dev": _MS_NODEV}
        data = []
        for opt in filter(None, self.options.split(",")):
            if opt in flags:
                flags[opt] = 0
            elif opt.startswith("no") and opt[2:] in flags:
                flags[opt[2:]] = _TMPFS_FLAGS[opt]
            else:
                data.append(opt)
        if not any(d.startswith("mode=") for d in data):
            data.append("mode=1777")
        return sum(flags.values()) | (_MS_RDONLY if self.read_only else 0), ",".join(data)

    def validate(self) -> None:
        """Raise ``SpecError`` if the mount is malformed (host paths are checked at start)."""
        if self.type not in MOUNT_TYPES:
            raise SpecError(f"unknown mount type {self.type!r} (bind or tmpfs)")
        if not self.target or "\0" in self.target or not os.path.isabs(self.target):
            raise SpecError(f"the container path of a mount must be absolute: {self.target!r}")
        if not os.path.normpath(self.target).strip("/"):  # "/", "//", "/.."
            raise SpecError("cannot mount over the container's root '/'")
        if self.type == "bind":
            if not self.source or "\0" in self.source or not os.path.isabs(self.source):
                raise SpecError(f"the host path of a volume must be absolute: {self.source!r}")
        elif self.source is not None:
            raise SpecError("a tmpfs mount has no source")
        if "\0" in self.options:
            raise SpecError(f"invalid mount options: {self.options!r}")


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to start one container.

    Attributes:
        command: the program and its arguments; the program is looked up on the
            container's ``PATH`` unless it contains a ``/``.
        env: extra environment as ``(key, value)`` pairs, applied over docker's
            defaults (``PATH``, ``HOSTNAME``, ``HOME``, ``TERM`` with a tty).
        hostname: the UTS hostname; defaults to the first 12 digits of the id.
        name: a human name; defaults to the id.
        cwd: working directory inside the container (absolute).
        tty: give the container a pseudo-terminal as stdin/stdout/stderr.
        namespaces: which namespaces are new (the rest are shared with the host).
        init: run an init (tini, as docker's ``--init``) as PID 1, which forwards
            signals to the command and reaps orphans.
        limits: resource limits: cgroups, and CPU and wall time (a ``Limits``, or a
            dict such as ``{"memory": "256m", "pids": 64, "cpu_time": 2}``).
        ulimits: the processes' rlimits (``ulimits.Ulimit`` values; given as a
            mapping ``{"nofile": 64, "nproc": (32, 64)}`` or ``"TYPE=SOFT[:HARD]"``
            strings); the rest are mydocker's own, except ``core`` (0:0,
            ``ulimits.py`` says why).
        cgroup_parent: cgroup below which the container's cgroup is made (default:
            the supervisor's own cgroup).
        rootfs: a directory to use as the container's root filesystem (the read-only
            lower layer of an overlay; the container writes to a layer of its own).
            ``None``: the host's root, with private mounts.
        image: the name of an imported image (``mydocker image import``): its root
            filesystem becomes ``rootfs`` when the container starts.
        read_only: make the container's root filesystem read-only.
        mounts: volumes and tmpfs mounts on top of the root filesystem.
        state_dir: where mydocker keeps images and per-container layers (default:
            ``$MYDOCKER_STATE_DIR`` or ``/var/lib/mydocker``).
        cap_add, cap_drop: capabilities to add to or drop from docker's 14
            defaults (names with or without ``CAP_``, any case, or ``ALL``).
        privileged: every capability mydocker holds, no seccomp filter, no masked
            or read-only paths, all devices (docker's ``--privileged``).
        seccomp: the seccomp profile: None for docker's default, ``"unconfined"``
            for none, a path to a docker/OCI profile (JSON), or a
            ``seccomp.Profile``.
        no_new_privileges: ``PR_SET_NO_NEW_PRIVS``: no set-uid bit or file
            capability grants anything (``--security-opt no-new-privileges``).
        user: ``NAME|UID[:GROUP|GID]``, resolved in the container's own
            ``/etc/passwd`` and ``/etc/group`` (docker's ``--user``); None: root.
        userns: ``"auto"``: a user namespace with a range of ids of its own, so
            that the container's root is an unprivileged id on the host (root
            only; ``userns.py``). None: the host's user namespace for root, and
            for anyone else the rootless one (always).
        network: the name of a network (``mydocker network create``; ``"bridge"``
            is made on first use): the container gets ``eth0`` on it. ``None`` or
            ``"none"``: a network namespace with only ``lo``; ``"host"``: the
            host's (``"net"`` leaves ``namespaces``).
        ports: published ports (``Port``), on a network only.
        oci: for a container described by an OCI bundle (``mydocker-runc``), an
            ``oci.config.OciSettings`` with what ``config.json`` says beyond the
            fields above; then ``rootfs`` is used as it is (OCI's ``root.path``, no
            overlay), the environment is exactly the config's, and the
            capabilities, mounts, devices and cgroup are those of ``oci``. None for
            mydocker's own containers.
        id: the container id (generated).
    """

    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    hostname: str | None = None
    name: str | None = None
    cwd: str | None = None
    tty: bool = False
    namespaces: frozenset[str] = DEFAULT_NAMESPACES
    init: bool = False
    limits: Limits = field(default_factory=Limits)
    ulimits: tuple[Ulimit, ...] = ()
    cgroup_parent: str | None = None
    rootfs: str | None = None
    image: str | None = None
    read_only: bool = False
    mounts: tuple[Mount, ...] = ()
    state_dir: str | None = None
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    seccomp: object = None
    no_new_privileges: bool = False
    user: str | None = None
    userns: str | None = None
    network: str | None = None
    ports: tuple[Port, ...] = ()
    oci: object = None
    id: str = field(default_factory=new_id)

    def __post_init__(self) -> None:
        if isinstance(self.command, (str, bytes)):
            raise SpecError("command must be a sequence of strings, not a single string")
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "namespaces", frozenset(self.namespaces))
        object.__setattr__(self, "mounts", tuple(self.mounts))
        object.__setattr__(self, "ports", tuple(self.ports))
        if self.network == "none":
            object.__setattr__(self, "network", None)
        elif self.network == "host":
            object.__setattr__(self, "network", None)
            object.__setattr__(self, "namespaces", self.namespaces - {"net"})
        for name in ("cap_add", "cap_drop"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise SpecError(f"{name} must be a sequence of capability names, not a single string")
            object.__setattr__(self, name, tuple(value))
        if self.seccomp in ("builtin", "default"):
            object.__setattr__(self, "seccomp", None)
        if isinstance(self.seccomp, str) and self.seccomp != UNCONFINED:
            from .seccomp import load_profile  # its file read now: bad input before anything starts

            object.__setattr__(self, "seccomp", load_profile(self.seccomp))
        if isinstance(self.limits, Mapping):  # run_container(..., limits={"memory": "64m"})
            object.__setattr__(self, "limits", Limits(**self.limits))
        if self.ulimits:
            from .ulimits import normalize  # loaded only by containers that have some

            object.__setattr__(self, "ulimits", normalize(self.ulimits))
        if isinstance(self.env, Mapping):
            object.__setattr__(self, "env", tuple(self.env.items()))
        else:
            object.__setattr__(self, "env", tuple((str(k), str(v)) for k, v in self.env))
        self.validate()

    def validate(self) -> None:
        """Check the spec; raise ``SpecError`` with one clear sentence if it is bad."""
        if not self.command or not self.command[0]:
            raise SpecError("no command given (usage: mydocker run [OPTIONS] COMMAND [ARG...])")
        for arg in self.command:
            if not isinstance(arg, str) or "\0" in arg:
                raise SpecError(f"invalid command argument: {arg!r}")
        unknown = self.namespaces - KNOWN_NAMESPACES
        if unknown:
            raise SpecError(f"unknown namespace(s): {', '.join(sorted(unknown))}")
        if self.hostname is not None:
            if not _HOSTNAME.fullmatch(self.hostname):
                raise SpecError(
                    f"invalid hostname: {self.hostname!r} (1 to 64 letters, digits, '-', '_' and '.', "
                    "starting with a letter or digit)"
                )
            if "uts" not in self.namespaces:
                raise SpecError("--hostname needs a UTS namespace of its own (not --uts host)")
        if self.cwd is not None and not os.path.isabs(self.cwd):
            raise SpecError(f"the working directory must be an absolute path: {self.cwd!r}")
        for key, value in self.env:
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise SpecError(f"invalid environment variable: {key!r}")
        self._validate_filesystem()
        self._validate_cgroups()
        self._validate_confinement()
        self._validate_network()

    def _validate_network(self) -> None:
        if self.network is not None:
            if not isinstance(self.network, str) or not NETWORK_NAME.fullmatch(self.network):
                raise SpecError(f"invalid network name {self.network!r} (see 'mydocker network create')")
            if "net" not in self.namespaces:
                raise SpecError("a network needs a network namespace of the container's own")
            if self.name is not None and not _CONTAINER_NAME.fullmatch(self.name):
                raise SpecError(
                    f"invalid container name {self.name!r} on a network (letters, digits, '_', '.' and '-', "
                    "starting with a letter or digit): other containers find it by that name"
                )
        for port in self.ports:
            if not isinstance(port, Port):
                raise SpecError(f"ports must be Port objects, not {type(port).__name__}")
        if self.ports and self.network is None:
            raise SpecError("publishing a port needs a network (--network NAME, e.g. bridge)")
        seen: set[tuple[str, int, str]] = set()
        for port in self.ports:
            key = (port.host_ip, port.host_port, port.protocol)
            if port.host_port and key in seen:
                raise SpecError(
                    f"host port {port.host_ip}:{port.host_port}/{port.protocol} is published twice"
                )
            seen.add(key)

    def _validate_confinement(self) -> None:
        from .capabilities import parse_caps  # not in the spawn helper (helper.py)

        parse_caps(self.cap_add, self.cap_drop, self.privileged)  # SpecError for a bad name
        if self.seccomp is not None and not isinstance(self.seccomp, str):
            from .seccomp import Profile

            if not isinstance(self.seccomp, Profile):
                raise SpecError(f"seccomp must be a path, 'unconfined' or a Profile, not {self.seccomp!r}")
        if self.userns not in (None, "auto", "host"):
            raise SpecError(f"invalid --userns {self.userns!r} (auto, or host)")
        if self.user is not None:
            from .users import parse_user_spec

            parse_user_spec(self.user)  # the text; names are resolved in the image at start

    @property
    def capabilities(self) -> frozenset[str]:
        """The container's capabilities (docker's defaults, ``cap_add``, ``cap_drop``,
        ``privileged``), as ``CAP_X`` names."""
        from .capabilities import parse_caps

        return parse_caps(self.cap_add, self.cap_drop, self.privileged)

    def _validate_cgroups(self) -> None:
        if not isinstance(self.limits, Limits):
            raise SpecError(f"limits must be a Limits object, not {type(self.limits).__name__}")
        parent = self.cgroup_parent
        if parent is not None and (
            not parent.strip("/") or "\0" in parent or ".." in parent.split("/") or "\n" in parent
        ):
            raise SpecError(f"invalid cgroup parent {parent!r} (a cgroup path such as /mydocker or jobs)")

    def _validate_filesystem(self) -> None:
        for name in ("rootfs", "state_dir"):
            path = getattr(self, name)
            if path is not None and (not path or "\0" in path or not os.path.isabs(path)):
                raise SpecError(f"{name} must be an absolute path: {path!r}")
        if self.image is not None and (not self.image or "/" in self.image or "\0" in self.image):
            raise SpecError(f"invalid image name: {self.image!r}")
        if self.rootfs is None and self.image is None:
            if self.read_only or self.mounts:
                raise SpecError("--read-only, volumes and tmpfs mounts need --rootfs or --image")
        elif "mount" not in self.namespaces and self.oci is None:  # an OCI one is chrooted
            raise SpecError("a root filesystem needs a mount namespace of its own")
        for m in self.mounts:
            if not isinstance(m, Mount):
                raise SpecError(f"mounts must be Mount objects, not {type(m).__name__}")
            m.validate()

    @property
    def short_id(self) -> str:
        """The first 12 digits of the id, as docker prints it."""
        return self.id[:12]

    @property
    def effective_hostname(self) -> str:
        """The hostname the container will see (the host's with ``--uts host``)."""
        if "uts" not in self.namespaces:
            return os.uname().nodename
        return self.hostname or self.short_id

    def full_env(self) -> dict[str, str]:
        """The container's whole environment: docker's defaults, then ``env``."""
        env = {"PATH": DEFAULT_PATH, "HOSTNAME": self.effective_hostname, "HOME": "/root"}
        if self.tty:
            env["TERM"] = "xterm"
        env.update(self.env)
        return env

    def evolve(self, **changes: object) -> ContainerSpec:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def stdin_for(input: bytes | None, stdin: Any) -> Any:
    """The stdin of ``run_container`` / ``run_exec``: ``PIPE`` to feed ``input``,
    else ``stdin``, else ``DEVNULL`` (it reads EOF, like ``docker run`` without ``-i``).

    Raises:
        SpecError: both ``input`` and ``stdin``.
    """
    if input is not None:
        if stdin is not None:
            raise SpecError("pass either input or stdin, not both")
        return PIPE
    return DEVNULL if stdin is None else stdin
