"""A container is data: the frozen description that the CLI and the API build.

``ContainerSpec`` is built once, validated once (``SpecError`` on bad input, before
anything is created on the host) and then only read: the supervisor uses it to prepare
the host side, the spawn helper receives it pickled, and ``init.py`` executes it in the
child. This module imports only the standard library, because the spawn helper imports
it and must start fast.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from .errors import SpecError

#: docker's default PATH inside a container
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: the namespaces a container gets unless told otherwise
DEFAULT_NAMESPACES: frozenset[str] = frozenset({"pid", "mount", "uts", "ipc", "net"})
KNOWN_NAMESPACES: frozenset[str] = frozenset({"pid", "mount", "uts", "ipc", "net", "cgroup"})


def new_id() -> str:
    """A fresh container id: 64 hex digits, like docker's."""
    return secrets.token_hex(32)


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


@dataclass(frozen=True)
class Limits:
    """Resource limits of one container (cgroups). ``None`` means unlimited."""

    memory: int | None = None
    memory_swap: int | None = None
    cpus: float | None = None
    cpu_shares: int | None = None
    cpuset_cpus: str | None = None
    pids: int | None = None

    def any(self) -> bool:
        """True when at least one limit is set."""
        return any(v is not None for v in vars(self).values())


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
        init: run mydocker's minimal init as PID 1, which forwards signals and
            reaps orphans (docker's ``--init``).
        limits: cgroup resource limits.
        cgroup_parent: cgroup below which the container's cgroup is made (default:
            the supervisor's own cgroup).
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
    cgroup_parent: str | None = None
    id: str = field(default_factory=new_id)

    def __post_init__(self) -> None:
        if isinstance(self.command, (str, bytes)):
            raise SpecError("command must be a sequence of strings, not a single string")
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "namespaces", frozenset(self.namespaces))
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
            if not self.hostname or len(self.hostname) > 64 or "\0" in self.hostname:
                raise SpecError(f"invalid hostname: {self.hostname!r} (1 to 64 characters)")
            if "uts" not in self.namespaces:
                raise SpecError("--hostname needs a UTS namespace of its own (not --uts host)")
        if self.cwd is not None and not os.path.isabs(self.cwd):
            raise SpecError(f"the working directory must be an absolute path: {self.cwd!r}")
        for key, value in self.env:
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise SpecError(f"invalid environment variable: {key!r}")

    @property
    def short_id(self) -> str:
        """The first 12 digits of the id, as docker prints it."""
        return self.id[:12]

    @property
    def effective_hostname(self) -> str:
        """The hostname the container will see."""
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
