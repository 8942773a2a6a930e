"""Confinement, worked out in the supervisor: what the child drops before its exec.

A container is a sandbox by default, as docker's are (see SECURITY.md for the escapes
each part answers):

- capabilities: docker's 14 (``capabilities.py``), nothing inheritable or ambient;
- seccomp: docker's default profile (``seccomp.py``), compiled once per distinct
  profile and capability set, loaded by the child as a ready program;
- devices: docker's allowlist, a BPF program on the container's cgroup v2 directory
  (``devices.py``, applied in ``cgroups.py`` before the clone);
- a session keyring of its own, the user of ``--user`` (``users.py``: names resolved
  as text in the container's own files), ``no_new_privs`` on request;
- ``--init``: tini, exec'd as PID 1 (bound read-only into a root filesystem).

``--privileged`` keeps every capability mydocker holds, loads no filter, allows all
devices and leaves /proc and /sys unmasked. The result for the child is an
``init.Confinement`` of plain ints and bytes.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, NamedTuple

from . import capabilities
from .errors import SpecError
from .init import Confinement
from .spec import UNCONFINED, ContainerSpec
from .ulimits import check_hard_limits, child_rlimits
from .userns import Mapping
from .users import User, resolve_user

if TYPE_CHECKING:
    from .seccomp import Profile

#: environment variable naming the init binary to use for ``--init``
INIT_ENV = "MYDOCKER_INIT"
#: where to look for an init, best first: a static tini also runs in an image without
#: a C library (Debian's package tini has both)
_INIT_CANDIDATES = ("tini-static", "docker-init", "tini")

#: the user of a container without ``--user``
ROOT = User(uid=0, gid=0, groups=(), home="/root", name="root")


def init_binary() -> str:
    """The init ``--init`` runs: ``$MYDOCKER_INIT``, else the first of tini-static,
    docker-init and tini on PATH (or in /usr/bin, /usr/libexec/docker).

    Raises:
        SpecError: there is none (one line saying how to get one).
    """
    explicit = os.environ.get(INIT_ENV)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise SpecError(f"--init: {INIT_ENV}={explicit} is not an executable file")
        return os.path.abspath(explicit)
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/libexec/docker"])
    for name in _INIT_CANDIDATES:
        found = shutil.which(name, path=path)
        if found:
            return found
    raise SpecError("--init needs tini, which is not installed (Debian: apt-get install tini)")


def user_of(spec: ContainerSpec) -> User:
    """The container's user: ``spec.user`` resolved in its own files, else root.

    Raises:
        SpecError: an unknown user or group, or unreadable account files.
    """
    if spec.user is None:
        return ROOT
    return resolve_user(spec.user, spec.rootfs)


#: the confinements made so far, by what they are made of (a container without a
#: user namespace of its own): the same few for thousands of containers
_made: dict[tuple[object, ...], Confinement] = {}


def confinement(spec: ContainerSpec, user: User, mapping: Mapping | None = None) -> Confinement:
    """The child's ``Confinement`` for a (resolved) spec, its user, and the maps of
    its user namespace (None: it has none of its own).

    Raises:
        SpecError: a capability that cannot be had, a profile that does not compile,
            a user the user namespace does not map.
    """
    if mapping is not None:
        return _confinement(spec, user, mapping)
    key = (
        spec.cap_add,
        spec.cap_drop,
        spec.privileged,
        spec.seccomp,
        spec.no_new_privileges,
        spec.ulimits,
        user.uid,
        user.gid,
        user.groups,
        os.geteuid(),
    )
    try:
        made = _made.get(key)
    except TypeError:  # something unhashable in there: made anew
        return _confinement(spec, user, None)
    if made is None:
        made = _confinement(spec, user, None)  # ~20-30 us: the capability sets, the programs' lookups
        if len(_made) >= 64:
            _made.clear()
        _made[key] = made
    return made


def _confinement(spec: ContainerSpec, user: User, mapping: Mapping | None) -> Confinement:
    rootless = os.geteuid() != 0
    if mapping is not None and not (mapping.maps_uid(user.uid) and mapping.maps_gid(user.gid)):
        raise SpecError(
            f"user {user.uid}:{user.gid} is not mapped in the container's user namespace "
            f"({mapping.describe()}); for more ids give the user a range in /etc/subuid and "
            "/etc/subgid and install newuidmap (Debian: uidmap)"
        )
    if spec.ulimits:
        check_hard_limits(spec.ulimits, can_raise=not rootless and can_raise_rlimits())
    caps = spec.capabilities
    sets = capabilities.container_sets(caps, user.uid)
    program: bytes | None = None
    split: tuple[bytes, bytes] | None = None
    flags = 0
    profile = seccomp_profile(spec)
    if profile is not None:
        from .seccomp import DEFAULT_PROFILE, compile_profile, split_programs

        program = compile_profile(profile, caps)
        flags = profile.load_flags
        # A custom profile might refuse what a helper needs; and a helper without root
        # could only load the base with no_new_privs, which its children would inherit.
        if profile is DEFAULT_PROFILE and not rootless:
            split = split_programs(profile, caps)
    return Confinement(
        bounding=sets.bounding,
        effective=sets.effective,
        permitted=sets.permitted,
        uid=user.uid,
        gid=user.gid,
        # a user namespace with one id mapped, made without root, refuses setgroups
        groups=None if rootless and mapping is not None and mapping.single else user.groups,
        last_cap=capabilities.last_cap(),
        seccomp=program,
        seccomp_flags=flags,
        no_new_privs=spec.no_new_privileges,
        split=split,
        rlimits=child_rlimits(spec.ulimits),
    )


#: CAP_SYS_RESOURCE, <linux/capability.h>
_CAP_SYS_RESOURCE = 24
_can_raise: bool | None = None


def can_raise_rlimits() -> bool:
    """Whether this process holds CAP_SYS_RESOURCE (read once): the child, which
    sets its rlimits before it drops anything, then holds it too."""
    global _can_raise
    if _can_raise is None:
        _can_raise = bool(capabilities.read_sets().effective >> _CAP_SYS_RESOURCE & 1)
    return _can_raise


def seccomp_profile(spec: ContainerSpec) -> Profile | None:
    """The profile to load: docker's default unless unconfined or privileged."""
    if spec.privileged or spec.seccomp == UNCONFINED:
        return None
    if spec.seccomp is None:
        from .seccomp import DEFAULT_PROFILE

        return DEFAULT_PROFILE
    return spec.seccomp  # type: ignore[return-value]  # a Profile: ContainerSpec checked it


def environment(spec: ContainerSpec, user: User) -> dict[str, str]:
    """The container's environment: ``HOME`` is the user's (docker's rule), unless
    ``-e`` set it."""
    env = spec.full_env()
    if user is not ROOT and not any(k == "HOME" for k, _ in spec.env):
        env["HOME"] = user.home_env
    return env


class Identity(NamedTuple):
    """Who a container's processes are, as an exec into it must be too."""

    user: User
    confinement: Confinement
    #: its user namespace's maps, or None (the host's)
    mapping: Mapping | None
    #: its user namespace was made at the clone (rootless), not after its mounts
    rootless: bool
