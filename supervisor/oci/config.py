"""An OCI bundle's ``config.json``, checked and turned into a ``ContainerSpec``.

``load(bundle, container_id)`` reads the file, ``parse(data, bundle, container_id)``
checks every field the runtime spec (1.0 to 1.3) defines and returns a
``ContainerSpec`` whose ``oci`` is an ``OciSettings``: the fields docker's flags
have an equivalent for are the spec's own (command, hostname, cwd, tty, the new
namespaces, root, read-only root, seccomp profile, no_new_privs, user), the rest is
OCI data as the engine needs it (masks for capabilities, MS_* flags for mounts,
resource numbers for cgroups).

What mydocker cannot do is refused, never ignored: a field that asks for something
(an AppArmor profile, an Intel RDT class, a block I/O weight, a time namespace, ...)
is one ``SpecError`` line naming the field. Keys the spec does not define are
ignored, as Go's decoder in runc ignores them. Everything here is pure (no root, no
file but ``config.json`` itself), so it is unit-tested field by field.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from typing import Any

from .. import capabilities
from .._named import NamedTuple
from ..devices import DeviceRule
from ..errors import SpecError
from ..spec import UNCONFINED, ContainerSpec

#: the runtime spec version this runtime speaks (the state's ``ociVersion``); configs
#: of 1.0.0 up to any 1.3.x are read
OCI_VERSION = "1.3.0"
_NEWEST = (1, 3)

#: runc's rule for container ids (an id names a directory and a cgroup)
_ID = re.compile(r"[\w+.-]+")

# <sys/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_I_VERSION = 1 << 23
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

#: mount(8)'s flag options: (flags it sets, flags it clears)
MOUNT_FLAGS: dict[str, tuple[int, int]] = {
    "defaults": (0, 0),
    "ro": (MS_RDONLY, 0),
    "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0),
    "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0),
    "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0),
    "exec": (0, MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0),
    "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0),
    "mand": (MS_MANDLOCK, 0),
    "nomand": (0, MS_MANDLOCK),
    "noatime": (MS_NOATIME, 0),
    "atime": (0, MS_NOATIME),
    "nodiratime": (MS_NODIRATIME, 0),
    "diratime": (0, MS_NODIRATIME),
    "relatime": (MS_RELATIME, 0),
    "norelatime": (0, MS_RELATIME),
    "strictatime": (MS_STRICTATIME, 0),
    "nostrictatime": (0, MS_STRICTATIME),
    "iversion": (MS_I_VERSION, 0),
    "noiversion": (0, MS_I_VERSION),
    "lazytime": (MS_LAZYTIME, 0),
    "nolazytime": (0, MS_LAZYTIME),
    "silent": (MS_SILENT, 0),
    "loud": (0, MS_SILENT),
    "nosymfollow": (MS_NOSYMFOLLOW, 0),
    "symfollow": (0, MS_NOSYMFOLLOW),
}
#: propagation options, and ``linux.rootfsPropagation``'s values
PROPAGATION: dict[str, int] = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}
#: mount options the runtime spec names that mydocker cannot honour
_REFUSED_OPTIONS = {
    "idmap": "id-mapped mounts",
    "ridmap": "id-mapped mounts",
    "tmpcopyup": "tmpcopyup",
    "remount": "remount",
    "move": "move",
}
#: the recursive flag options (mount_setattr) beyond rro
_RECURSIVE = {"r" + name for name in MOUNT_FLAGS if name != "defaults"} - {"rro"}

#: OCI namespace names -> ContainerSpec's
NAMESPACES = {
    "pid": "pid",
    "network": "net",
    "mount": "mount",
    "ipc": "ipc",
    "uts": "uts",
    "cgroup": "cgroup",
    "user": "user",
    "time": "time",
}

#: setrlimit's resources by OCI name (<sys/resource.h>, x86_64 and arm64 alike)
RLIMITS = {
    "RLIMIT_CPU": 0,
    "RLIMIT_FSIZE": 1,
    "RLIMIT_DATA": 2,
    "RLIMIT_STACK": 3,
    "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5,
    "RLIMIT_NPROC": 6,
    "RLIMIT_NOFILE": 7,
    "RLIMIT_MEMLOCK": 8,
    "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10,
    "RLIMIT_SIGPENDING": 11,
    "RLIMIT_MSGQUEUE": 12,
    "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14,
    "RLIMIT_RTTIME": 15,
}
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1
_I64 = (1 << 63) - 1

#: sysctls by the namespace that makes them the container's own (runc's rule: any
#: other is the host's, and refused)
_IPC_SYSCTLS = frozenset(
    {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax"}
    | {"kernel.shmmni", "kernel.shm_rmid_forced"}
)


# ---------------------------------------------------------------- the data


class Hook(NamedTuple):
    """One hook: a host program run with the container's state on its stdin."""

    path: str
    args: tuple[str, ...] = ()
    #: ``KEY=VALUE`` strings; None: an empty environment
    env: tuple[str, ...] | None = None
    #: seconds; None: no limit
    timeout: int | None = None


class Hooks(NamedTuple):
    """The hooks of each kind, in order (runtime-spec config.md, "POSIX-platform Hooks")."""

    prestart: tuple[Hook, ...] = ()
    create_runtime: tuple[Hook, ...] = ()
    create_container: tuple[Hook, ...] = ()
    start_container: tuple[Hook, ...] = ()
    poststart: tuple[Hook, ...] = ()
    poststop: tuple[Hook, ...] = ()

    @property
    def before_pivot(self) -> bool:
        """Whether the child must pause before pivot_root for hooks."""
        return bool(self.prestart or self.create_runtime or self.create_container)


class OciMount(NamedTuple):
    """One entry of ``mounts``, as the child makes it.

    A bind mount (``bind``/``rbind`` option, or type ``bind``) of ``source`` (a host
    path, made absolute against the bundle) is remounted with ``flags`` when there
    are any; any other type is ``mount(source, destination, type, flags, data)``.
    Then each of ``propagation`` is applied, in order.
    """

    destination: str
    type: str
    source: str
    bind: bool = False
    recursive: bool = False
    flags: int = 0
    data: str = ""
    propagation: tuple[int, ...] = ()
    #: ``rro``: read-only with every submount (mount_setattr)
    recursive_ro: bool = False


class IdMap(NamedTuple):
    """One of ``linux.uidMappings``/``gidMappings`` (``userns.IdMap``'s fields, without
    loading userns for every container)."""

    container_id: int
    host_id: int
    size: int


class Device(NamedTuple):
    """One entry of ``linux.devices``: a node made in the container's /dev."""

    path: str
    #: ``c``, ``b`` or ``p`` (``u`` is read as ``c``)
    type: str
    major: int = 0
    minor: int = 0
    #: permission bits; None: 0666 as runc makes them
    mode: int | None = None
    uid: int = 0
    gid: int = 0


class Rlimit(NamedTuple):
    """One of ``process.rlimits``."""

    name: str
    resource: int
    soft: int
    hard: int


class CapabilitySets(NamedTuple):
    """``process.capabilities``: five sets of ``CAP_X`` names."""

    bounding: frozenset[str] = frozenset()
    effective: frozenset[str] = frozenset()
    inheritable: frozenset[str] = frozenset()
    permitted: frozenset[str] = frozenset()
    ambient: frozenset[str] = frozenset()


class Process(NamedTuple):
    """``process`` (also what ``exec --process`` reads)."""

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    umask: int | None = None
    #: None: not given (runc then changes no capability: root keeps its own)
    capabilities: CapabilitySets | None = None
    rlimits: tuple[Rlimit, ...] = ()
    no_new_privileges: bool = False
    terminal: bool = False
    #: (height, width) of the terminal
    console_size: tuple[int, int] | None = None
    oom_score_adj: int | None = None

    def env_dict(self) -> dict[str, str]:
        """The environment as a dict (a later entry wins, as in runc)."""
        out: dict[str, str] = {}
        for item in self.env:
            key, _, value = item.partition("=")
            out[key] = value
        return out


class Resources(NamedTuple):
    """``linux.resources``: None means "leave it as it is"."""

    memory_limit: int | None = None
    memory_reservation: int | None = None
    memory_swap: int | None = None
    memory_swappiness: int | None = None
    disable_oom_killer: bool = False
    cpu_shares: int | None = None
    cpu_quota: int | None = None
    cpu_period: int | None = None
    cpu_burst: int | None = None
    cpu_rt_runtime: int | None = None
    cpu_rt_period: int | None = None
    cpu_idle: int | None = None
    cpus: str | None = None
    mems: str | None = None
    pids_limit: int | None = None
    #: the device rules, in order (the container's defaults come after them)
    devices: tuple[DeviceRule, ...] = ()
    #: cgroup v2 files to write as they are
    unified: tuple[tuple[str, str], ...] = ()


class OciSettings(NamedTuple):
    """What an OCI config says beyond ``ContainerSpec``'s own fields."""

    bundle: str
    #: the process; None only in a config ``create`` refuses
    process: Process | None
    mounts: tuple[OciMount, ...] = ()
    #: namespaces to join: (OCI type, path)
    namespace_paths: tuple[tuple[str, str], ...] = ()
    #: a user namespace of its own, with these maps
    user_namespace: bool = False
    uid_mappings: tuple[IdMap, ...] = ()
    gid_mappings: tuple[IdMap, ...] = ()
    devices: tuple[Device, ...] = ()
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    sysctl: tuple[tuple[str, str], ...] = ()
    #: MS_* propagation of the root after pivot_root; 0: private (the default)
    rootfs_propagation: int = 0
    cgroups_path: str | None = None
    resources: Resources = Resources()
    hooks: Hooks = Hooks()
    annotations: tuple[tuple[str, str], ...] = ()
    oci_version: str = OCI_VERSION
    #: the hostname to set, also in a UTS namespace joined by path (the spec's
    #: ``hostname`` is set only for one of its own)
    hostname: str | None = None


# ---------------------------------------------------------------- reading JSON


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _empty(value: object) -> bool:
    return value is None or value == "" or value == [] or value == {} or value is False


class _Obj:
    """A JSON object being read, with where it is (for messages)."""

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise SpecError(f"{where or 'config.json'} must be an object, not {_show(value)}")
        self.d: dict[str, Any] = value
        self.where = where

    def at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def has(self, key: str) -> bool:
        return self.d.get(key) is not None

    def refuse(self, key: str, what: str) -> None:
        """A field mydocker cannot honour: refused when it asks for something."""
        if not _empty(self.d.get(key)):
            raise SpecError(f"{self.at(key)}: {what} is not supported by mydocker-runc")

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self.d.get(key)
        if value is None:
            return default
        if not isinstance(value, str) or "\0" in value:
            raise SpecError(f"{self.at(key)} must be a string, not {_show(value)}")
        return value

    def flag(self, key: str) -> bool:
        value = self.d.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise SpecError(f"{self.at(key)} must be true or false, not {_show(value)}")
        return value

    def number(self, key: str, lo: int, hi: int) -> int | None:
        value = self.d.get(key)
        if value is None:
            return None
        return _int(value, self.at(key), lo, hi)

    def child(self, key: str) -> _Obj | None:
        value = self.d.get(key)
        return None if value is None else _Obj(value, self.at(key))

    def items(self, key: str) -> list[Any]:
        value = self.d.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise SpecError(f"{self.at(key)} must be a list, not {_show(value)}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        out = []
        for i, item in enumerate(self.items(key)):
            if not isinstance(item, str) or "\0" in item:
                raise SpecError(f"{self.at(key)}[{i}] must be a string, not {_show(item)}")
            out.append(item)
        return tuple(out)

    def string_map(self, key: str) -> tuple[tuple[str, str], ...]:
        value = self.d.get(key)
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise SpecError(f"{self.at(key)} must be an object, not {_show(value)}")
        for k, v in value.items():
            if not isinstance(v, str) or "\0" in v or "\0" in k:
                raise SpecError(f"{self.at(key)}.{k} must be a string, not {_show(v)}")
        return tuple(value.items())


def _int(value: object, where: str, lo: int, hi: int) -> int:
    # bool is an int to Python, not to JSON; Go's decoder refuses floats for ints
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where} must be an integer, not {_show(value)}")
    if not lo <= value <= hi:
        raise SpecError(f"{where} must be between {lo} and {hi}, not {value}")
    return value


def _absolute(path: str, where: str) -> str:
    if not path.startswith("/"):
        raise SpecError(f"{where} must be an absolute path, not {path!r}")
    return posixpath.normpath(path).replace("//", "/")


# ---------------------------------------------------------------- the sections


def check_id(container_id: str) -> str:
    """A container id as runc takes them (letters, digits, ``_+.-``; not ``.``/``..``).

    Raises:
        SpecError: another id, or none.
    """
    if not container_id:
        raise SpecError("a container id is required")
    if not _ID.fullmatch(container_id) or container_id in (".", "..") or len(container_id) > 1024:
        raise SpecError(f"invalid container id {container_id!r} (letters, digits, '_', '+', '.' and '-')")
    return container_id


def check_version(version: object) -> str:
    """``ociVersion``: any 1.x up to the newest this runtime knows.

    Raises:
        SpecError: missing, malformed, or a version this runtime does not know.
    """
    if not isinstance(version, str) or not version:
        raise SpecError("ociVersion is missing")
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(?:[-+][0-9A-Za-z.+-]*)?", version)
    if m is None:
        raise SpecError(f"ociVersion {version!r} is not a version (expected e.g. {OCI_VERSION})")
    major, minor = int(m.group(1)), int(m.group(2))
    if major != 1 or minor > _NEWEST[1]:
        raise SpecError(
            f"ociVersion {version} is not supported (mydocker-runc reads 1.0.0 to 1.{_NEWEST[1]}.x)"
        )
    return version


def _caps(obj: _Obj | None) -> CapabilitySets | None:
    if obj is None:
        return None
    sets = {}
    for key in ("bounding", "effective", "inheritable", "permitted", "ambient"):
        names = set()
        for i, name in enumerate(obj.strings(key)):
            upper = name.upper()
            if upper not in capabilities.CAPABILITIES:
                raise SpecError(f"{obj.at(key)}[{i}]: unknown capability {name!r} (see capabilities(7))")
            names.add(upper)
        sets[key] = frozenset(names)
    return CapabilitySets(**sets)


def _rlimits(obj: _Obj) -> tuple[Rlimit, ...]:
    out: list[Rlimit] = []
    for i, item in enumerate(obj.items("rlimits")):
        r = _Obj(item, f"{obj.at('rlimits')}[{i}]")
        name = r.text("type")
        if not name:
            raise SpecError(f"{r.where}.type is missing")
        if name not in RLIMITS:
            raise SpecError(f"{r.where}.type: unknown rlimit {name!r} (RLIMIT_NOFILE, RLIMIT_NPROC, ...)")
        if any(x.name == name for x in out):
            raise SpecError(f"{r.where}.type: {name} is given twice")
        soft, hard = r.number("soft", 0, _U64) or 0, r.number("hard", 0, _U64) or 0
        if soft > hard:
            raise SpecError(f"{r.where}: soft limit {soft} is above the hard limit {hard}")
        out.append(Rlimit(name, RLIMITS[name], soft, hard))
    return tuple(out)


def parse_process(data: object, where: str = "process") -> Process:
    """``process`` of a config, or the file of ``exec --process``.

    Raises:
        SpecError: a bad or unsupported field, in one line.
    """
    p = _Obj(data, where)
    args = p.strings("args")
    if not args or not args[0]:
        raise SpecError(f"{p.at('args')} must name a program")
    p.refuse("commandLine", "a Windows command line")
    p.refuse("apparmorProfile", "an AppArmor profile (AppArmor)")
    p.refuse("selinuxLabel", "an SELinux label (SELinux)")
    p.refuse("scheduler", "a scheduler policy")
    p.refuse("ioPriority", "an I/O priority")
    p.refuse("execCPUAffinity", "a CPU affinity for exec")
    env = p.strings("env")
    for i, item in enumerate(env):
        if "=" not in item or item.startswith("="):
            raise SpecError(f"{p.at('env')}[{i}] must be KEY=VALUE, not {item!r}")
    cwd = p.text("cwd") or "/"
    cwd = _absolute(cwd, p.at("cwd"))
    user = p.child("user") or _Obj({}, p.at("user"))
    user.refuse("username", "a user name (Windows)")
    groups = tuple(
        _int(g, f"{user.at('additionalGids')}[{i}]", 0, _U32)
        for i, g in enumerate(user.items("additionalGids"))
    )
    size = p.child("consoleSize")
    console = None
    if size is not None:
        console = (size.number("height", 0, 65535) or 0, size.number("width", 0, 65535) or 0)
    return Process(
        args=args,
        env=env,
        cwd=cwd,
        uid=user.number("uid", 0, _U32) or 0,
        gid=user.number("gid", 0, _U32) or 0,
        additional_gids=groups,
        umask=user.number("umask", 0, 0o777),
        capabilities=_caps(p.child("capabilities")),
        rlimits=_rlimits(p),
        no_new_privileges=p.flag("noNewPrivileges"),
        terminal=p.flag("terminal"),
        console_size=console,
        oom_score_adj=p.number("oomScoreAdj", -1000, 1000),
    )


def parse_mount_options(options: tuple[str, ...], where: str) -> tuple[int, int, str, tuple[int, ...], bool]:
    """``(flags, bind flags, data, propagation, rro)`` of a mount's options: MS_*
    flags set (with what later options clear taken off), MS_BIND|MS_REC for
    ``bind``/``rbind``, the filesystem's own options, the propagation changes in
    order, and whether ``rro`` asks for a recursive read-only mount.

    Raises:
        SpecError: an option mydocker cannot honour (id-mapped mounts, recursive
            flags other than rro, ...).
    """
    flags = bind = 0
    data: list[str] = []
    propagation: list[int] = []
    rro = False
    for opt in options:
        if opt in MOUNT_FLAGS:
            set_, clear = MOUNT_FLAGS[opt]
            flags = (flags | set_) & ~clear
        elif opt == "bind":
            bind |= MS_BIND
        elif opt == "rbind":
            bind |= MS_BIND | MS_REC
        elif opt in PROPAGATION:
            propagation.append(PROPAGATION[opt])
        elif opt == "rro":
            rro = True
        elif opt in _RECURSIVE:
            raise SpecError(f"{where}: the recursive option {opt!r} is not supported (only rro)")
        elif opt.split("=", 1)[0] in _REFUSED_OPTIONS:
            raise SpecError(f"{where}: {_REFUSED_OPTIONS[opt.split('=', 1)[0]]} ({opt!r}) are not supported")
        elif opt.startswith("x-"):
            continue  # mount(8): for userspace programs, never the kernel
        elif not opt or "," in opt:
            raise SpecError(f"{where}: invalid mount option {opt!r}")
        else:
            data.append(opt)
    return flags, bind, ",".join(data), tuple(propagation), rro


def _mounts(config: _Obj, bundle: str) -> tuple[OciMount, ...]:
    out = []
    for i, item in enumerate(config.items("mounts")):
        m = _Obj(item, f"mounts[{i}]")
        dest = m.text("destination")
        if not dest:
            raise SpecError(f"{m.at('destination')} is missing")
        # runc takes a relative destination from /, as the runtime spec now allows
        dest = _absolute(dest if dest.startswith("/") else "/" + dest, m.at("destination"))
        m.refuse("uidMappings", "an id-mapped mount")
        m.refuse("gidMappings", "an id-mapped mount")
        fstype = m.text("type") or ""
        source = m.text("source") or ""
        flags, bind, data, propagation, rro = parse_mount_options(m.strings("options"), m.at("options"))
        is_bind = bool(bind) or fstype in ("bind", "rbind")
        if is_bind:
            if not source:
                raise SpecError(f"{m.at('source')} is missing for a bind mount")
            out.append(
                OciMount(
                    destination=dest,
                    type="bind",
                    source=os.path.normpath(os.path.join(bundle, source)),
                    bind=True,
                    recursive=bool(bind & MS_REC) or fstype == "rbind",
                    flags=flags,
                    propagation=propagation,
                    recursive_ro=rro,
                )
            )
            continue
        if not fstype:
            raise SpecError(f"{m.at('type')} is missing (a filesystem type, or the bind option)")
        if rro:
            raise SpecError(f"{m.at('options')}: rro only goes with a bind mount")
        out.append(OciMount(dest, fstype, source or fstype, flags=flags, data=data, propagation=propagation))
    return tuple(out)


def _namespaces(linux: _Obj) -> tuple[frozenset[str], tuple[tuple[str, str], ...], bool]:
    new: set[str] = set()
    paths: list[tuple[str, str]] = []
    seen: set[str] = set()
    user = False
    for i, item in enumerate(linux.items("namespaces")):
        ns = _Obj(item, f"{linux.at('namespaces')}[{i}]")
        kind = ns.text("type") or ""
        if kind not in NAMESPACES:
            raise SpecError(f"{ns.at('type')}: unknown namespace type {kind!r} ({', '.join(NAMESPACES)})")
        if kind in seen:
            raise SpecError(f"{ns.at('type')}: the {kind} namespace is given twice")
        seen.add(kind)
        path = ns.text("path")
        if kind == "time":
            raise SpecError(f"{ns.at('type')}: time namespaces are not supported by mydocker-runc")
        if path:
            if kind == "user":
                raise SpecError(f"{ns.at('path')}: joining a user namespace by path is not supported")
            paths.append((kind, _absolute(path, ns.at("path"))))
        elif kind == "user":
            user = True
        else:
            new.add(NAMESPACES[kind])
    return frozenset(new), tuple(paths), user


def _id_maps(linux: _Obj, key: str) -> tuple[IdMap, ...]:
    out = []
    for i, item in enumerate(linux.items(key)):
        m = _Obj(item, f"{linux.at(key)}[{i}]")
        size = m.number("size", 1, _U32)
        if size is None:
            raise SpecError(f"{m.at('size')} is missing")
        out.append(IdMap(m.number("containerID", 0, _U32) or 0, m.number("hostID", 0, _U32) or 0, size))
    return tuple(out)


def _devices(linux: _Obj) -> tuple[Device, ...]:
    out = []
    for i, item in enumerate(linux.items("devices")):
        d = _Obj(item, f"{linux.at('devices')}[{i}]")
        path = _absolute(d.text("path") or "", d.at("path"))
        kind = d.text("type") or ""
        if kind not in ("c", "b", "u", "p"):
            raise SpecError(f"{d.at('type')} must be c, b, u or p, not {kind!r}")
        major, minor = d.number("major", 0, (1 << 12) - 1), d.number("minor", 0, (1 << 20) - 1)
        if kind != "p" and (major is None or minor is None):
            raise SpecError(f"{d.where}: a {kind} device needs major and minor")
        out.append(
            Device(
                path,
                "c" if kind == "u" else kind,
                major or 0,
                minor or 0,
                d.number("fileMode", 0, 0o7777),
                d.number("uid", 0, _U32) or 0,
                d.number("gid", 0, _U32) or 0,
            )
        )
    return tuple(out)


def _device_rules(resources: _Obj) -> tuple[DeviceRule, ...]:
    out = []
    for i, item in enumerate(resources.items("devices")):
        d = _Obj(item, f"{resources.at('devices')}[{i}]")
        kind = d.text("type") or "a"
        if kind not in ("a", "b", "c"):
            raise SpecError(f"{d.at('type')} must be a, b or c, not {kind!r}")
        access = d.text("access") or "rwm"
        if not access or set(access) - set("rwm"):
            raise SpecError(f"{d.at('access')} must be letters of rwm, not {access!r}")
        major, minor = d.number("major", -1, (1 << 12) - 1), d.number("minor", -1, (1 << 20) - 1)
        out.append(
            DeviceRule(
                kind,
                None if major is None or major < 0 else major,
                None if minor is None or minor < 0 else minor,
                access,
                d.flag("allow"),
            )
        )
    return tuple(out)


def _resources(linux: _Obj) -> Resources:
    r = linux.child("resources")
    if r is None:
        return Resources()
    for key, what in (
        ("blockIO", "block I/O limits (blockIO)"),
        ("hugepageLimits", "hugepage limits"),
        ("network", "network classes and priorities"),
        ("rdma", "RDMA limits"),
    ):
        r.refuse(key, what)
    mem = r.child("memory") or _Obj({}, r.at("memory"))
    mem.refuse("kernel", "a kernel memory limit (gone from Linux)")
    mem.refuse("kernelTCP", "a kernel TCP memory limit")
    mem.refuse("useHierarchy", "memory.use_hierarchy")
    cpu = r.child("cpu") or _Obj({}, r.at("cpu"))
    pids = r.child("pids") or _Obj({}, r.at("pids"))
    unified = r.string_map("unified")
    for key, _value in unified:
        if not re.fullmatch(r"[a-z_]+\.[a-z_.]+", key):
            raise SpecError(f"{r.at('unified')}: {key!r} is not a cgroup v2 file name")
    limit = mem.number("limit", -1, _I64)
    swap = mem.number("swap", -1, _I64)
    if swap is not None and swap > 0 and limit is not None and 0 < limit and swap < limit:
        raise SpecError(
            f"{mem.at('swap')} ({swap}) is memory plus swap: it cannot be below memory.limit ({limit})"
        )
    return Resources(
        memory_limit=limit,
        memory_reservation=mem.number("reservation", -1, _I64),
        memory_swap=swap,
        memory_swappiness=mem.number("swappiness", 0, 100),
        disable_oom_killer=mem.flag("disableOOMKiller"),
        cpu_shares=cpu.number("shares", 0, _U64),
        cpu_quota=cpu.number("quota", -1, _I64),
        cpu_period=cpu.number("period", 0, _U64),
        cpu_burst=cpu.number("burst", 0, _U64),
        cpu_rt_runtime=cpu.number("realtimeRuntime", -1, _I64),
        cpu_rt_period=cpu.number("realtimePeriod", 0, _U64),
        cpu_idle=cpu.number("idle", 0, 1),
        cpus=cpu.text("cpus") or None,
        mems=cpu.text("mems") or None,
        pids_limit=pids.number("limit", -1, _I64),
        devices=_device_rules(r),
        unified=unified,
    )


def _hooks(config: _Obj) -> Hooks:
    h = config.child("hooks")
    if h is None:
        return Hooks()
    kinds = {}
    for key, name in (
        ("prestart", "prestart"),
        ("createRuntime", "create_runtime"),
        ("createContainer", "create_container"),
        ("startContainer", "start_container"),
        ("poststart", "poststart"),
        ("poststop", "poststop"),
    ):
        hooks = []
        for i, item in enumerate(h.items(key)):
            one = _Obj(item, f"{h.at(key)}[{i}]")
            path = _absolute(one.text("path") or "", one.at("path"))
            env = one.strings("env") if one.has("env") else None
            hooks.append(Hook(path, one.strings("args"), env, one.number("timeout", 1, 1 << 31)))
        kinds[name] = tuple(hooks)
    return Hooks(**kinds)


def parse_resources(data: object) -> Resources:
    """A ``linux.resources`` object on its own (``update --resources``).

    Raises:
        SpecError: a malformed or unsupported field.
    """
    return _resources(_Obj({"resources": data}, "linux"))


def parse_hooks(data: object) -> Hooks:
    """The hooks of a decoded config (``start`` and ``delete`` read only these).

    Raises:
        SpecError: malformed hooks.
    """
    return _hooks(_Obj(data, ""))


def _the_runtimes_own(paths: tuple[tuple[str, str], ...]) -> frozenset[str]:
    """Which of the namespaces joined by path are the one mydocker-runc itself is in
    (runc refuses ``net.*`` sysctls in the host's network namespace the same way). A
    path that cannot be looked at is left to the join, which says so."""
    own = set()
    for kind, path in paths:
        short = NAMESPACES[kind]
        if short not in ("net", "uts", "ipc"):
            continue
        try:
            there, here = os.stat(path), os.stat(f"/proc/self/ns/{short}")
        except OSError:
            continue
        if (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino):
            own.add(short)
    return frozenset(own)


def _sysctl(linux: _Obj, new: frozenset[str], joined: frozenset[str]) -> tuple[tuple[str, str], ...]:
    out = linux.string_map("sysctl")
    for key, _value in out:
        where = f"{linux.at('sysctl')}.{key}"
        if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_*-]+)+", key.replace("/", ".")):
            raise SpecError(f"{where}: not a sysctl name")
        name = key.replace("/", ".")
        if name in _IPC_SYSCTLS or name.startswith("fs.mqueue."):
            needed = "ipc"
        elif name.startswith("net."):
            needed = "net"
        elif name in ("kernel.hostname", "kernel.domainname"):
            needed = "uts"
        else:
            raise SpecError(f"{where}: this sysctl is not in a namespace of the container's own (the host's)")
        if needed not in new and needed not in joined:
            raise SpecError(f"{where}: needs a {needed} namespace of the container's own")
    return out


def parse(data: object, bundle: str, container_id: str) -> ContainerSpec:
    """The ``ContainerSpec`` of a decoded ``config.json`` of the bundle at ``bundle``
    (absolute) for container ``container_id``.

    Raises:
        SpecError: a field that is malformed or asks for what mydocker-runc cannot
            do, in one line naming it.
    """
    config = _Obj(data, "")
    version = check_version(config.d.get("ociVersion"))
    for key, what in (
        ("solaris", "a Solaris section"),
        ("windows", "a Windows section"),
        ("vm", "a virtual-machine section"),
        ("zos", "a z/OS section"),
        ("domainname", "a domain name"),
    ):
        config.refuse(key, what)
    root = config.child("root")
    if root is None or not root.text("path"):
        raise SpecError("root.path is missing")
    rootfs = os.path.normpath(os.path.join(bundle, root.text("path") or ""))
    if config.d.get("process") is None:
        raise SpecError("process is missing (create needs a process to start)")
    process = parse_process(config.d["process"])
    linux = config.child("linux") or _Obj({}, "linux")
    for key, what in (
        ("intelRdt", "Intel RDT"),
        ("personality", "a personality"),
        ("timeOffsets", "time namespace offsets"),
        ("mountLabel", "an SELinux mount label (SELinux)"),
        ("netDevices", "network devices"),
        ("memoryPolicy", "a NUMA memory policy"),
    ):
        linux.refuse(key, what)
    new, paths, user = _namespaces(linux)
    # a namespace joined by path that is the runtime's own is the host's, as far as
    # the container is concerned: its sysctls and hostname are not the container's
    joined = frozenset(NAMESPACES[kind] for kind, _path in paths) - _the_runtimes_own(paths)
    uid_maps, gid_maps = _id_maps(linux, "uidMappings"), _id_maps(linux, "gidMappings")
    if user and (not uid_maps or not gid_maps):
        raise SpecError("a user namespace needs linux.uidMappings and linux.gidMappings")
    if user and any(kind == "mount" for kind, _p in paths):
        raise SpecError(
            "linux.namespaces: a mount namespace joined by path cannot go with a user namespace "
            "of the container's own (its root could not mount there)"
        )
    if (uid_maps or gid_maps) and not user:
        raise SpecError("linux.uidMappings and gidMappings need a user namespace of the container's own")
    seccomp: object = UNCONFINED
    sec = linux.child("seccomp")
    if sec is not None:
        sec.refuse("listenerPath", "a seccomp agent (listenerPath)")
        sec.refuse("listenerMetadata", "a seccomp agent (listenerMetadata)")
        from ..seccomp import parse_profile

        seccomp = parse_profile(sec.d, "linux.seccomp")
    propagation = linux.text("rootfsPropagation") or ""
    if propagation and propagation not in PROPAGATION:
        raise SpecError(f"linux.rootfsPropagation: {propagation!r} is not one of {', '.join(PROPAGATION)}")
    cgroups_path = linux.text("cgroupsPath") or None
    if cgroups_path is not None:
        parts = cgroups_path.split("/")
        if ":" in cgroups_path and not cgroups_path.startswith("/"):
            raise SpecError(
                f"linux.cgroupsPath {cgroups_path!r} is a systemd unit (slice:prefix:name): "
                "mydocker-runc manages cgroupfs paths only"
            )
        if ".." in parts or "\n" in cgroups_path:
            raise SpecError(f"linux.cgroupsPath {cgroups_path!r} must not contain '..'")
    masked = tuple(
        _absolute(p, f"linux.maskedPaths[{i}]") for i, p in enumerate(linux.strings("maskedPaths"))
    )
    readonly = tuple(
        _absolute(p, f"linux.readonlyPaths[{i}]") for i, p in enumerate(linux.strings("readonlyPaths"))
    )
    if (masked or readonly) and "mount" not in new and not any(k == "mount" for k, _ in paths):
        raise SpecError("linux.maskedPaths and readonlyPaths need a mount namespace of the container's own")
    hostname = config.text("hostname") or None
    if hostname is not None and "uts" not in new and "uts" not in joined:
        raise SpecError("hostname needs a uts namespace of the container's own")
    settings = OciSettings(
        bundle=bundle,
        process=process,
        mounts=_mounts(config, bundle),
        namespace_paths=paths,
        user_namespace=user,
        uid_mappings=uid_maps,
        gid_mappings=gid_maps,
        devices=_devices(linux),
        masked_paths=masked,
        readonly_paths=readonly,
        sysctl=_sysctl(linux, new, joined),
        rootfs_propagation=PROPAGATION.get(propagation, 0),
        cgroups_path=cgroups_path,
        resources=_resources(linux),
        hooks=_hooks(config),
        annotations=config.string_map("annotations"),
        oci_version=version,
        hostname=hostname,
    )
    spec_hostname = hostname
    if hostname is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", hostname):
        raise SpecError(f"invalid hostname {hostname!r} (1 to 64 letters, digits, '-', '_' and '.')")
    return ContainerSpec(
        command=process.args,
        hostname=spec_hostname if "uts" in new else None,
        name=container_id,
        cwd=process.cwd,
        tty=process.terminal,
        namespaces=new - {"user"},
        rootfs=rootfs,
        read_only=root.flag("readonly"),
        seccomp=seccomp,
        no_new_privileges=process.no_new_privileges,
        user=f"{process.uid}:{process.gid}",
        oci=settings,
        id=container_id,
    )


def load(bundle: str, container_id: str) -> tuple[ContainerSpec, dict[str, Any]]:
    """Read and check ``<bundle>/config.json``: the spec, and the decoded JSON (the
    runtime keeps a copy: later changes to the file must not affect the container).

    Raises:
        SpecError: no such file, not JSON, or a bad config (one line).
    """
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        raise SpecError(f"{path} does not exist (is {bundle} an OCI bundle?)") from None
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{path} is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (ValueError, RecursionError) as e:
        raise SpecError(f"{path} is not JSON: {e}") from None
    return parse(data, bundle, container_id), data


def settings_of(spec: ContainerSpec) -> OciSettings:
    """``spec.oci`` (the spec must come from ``parse``)."""
    oci = spec.oci
    if not isinstance(oci, OciSettings):
        raise TypeError("not the spec of an OCI bundle")
    return oci
