"""Linux capabilities of a container: docker's defaults and its rules for
``--cap-add``, ``--cap-drop`` and ``--privileged``.

A container gets docker's 14 default capabilities as its bounding, permitted and
effective sets (``CapEff: 00000000a80425fb`` in its ``/proc/1/status``), with empty
inheritable and ambient sets. A non-root user keeps the bounding set but gets empty
permitted and effective sets, which is what execve gives a non-root program.

This module runs in the supervisor: it turns flags into a set of names, and names
into the masks that the child applies with ``_linux.identity_calls_before_seccomp``
and ``identity_calls_after_seccomp`` (where the order of the calls is explained).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from . import _linux
from .errors import SpecError

#: capability numbers, <linux/capability.h> (Linux 5.9: CAP_CHECKPOINT_RESTORE = 40)
CAPABILITIES: dict[str, int] = {
    name: number
    for number, name in enumerate(
        (
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_DAC_READ_SEARCH",
            "CAP_FOWNER",
            "CAP_FSETID",
            "CAP_KILL",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETPCAP",
            "CAP_LINUX_IMMUTABLE",
            "CAP_NET_BIND_SERVICE",
            "CAP_NET_BROADCAST",
            "CAP_NET_ADMIN",
            "CAP_NET_RAW",
            "CAP_IPC_LOCK",
            "CAP_IPC_OWNER",
            "CAP_SYS_MODULE",
            "CAP_SYS_RAWIO",
            "CAP_SYS_CHROOT",
            "CAP_SYS_PTRACE",
            "CAP_SYS_PACCT",
            "CAP_SYS_ADMIN",
            "CAP_SYS_BOOT",
            "CAP_SYS_NICE",
            "CAP_SYS_RESOURCE",
            "CAP_SYS_TIME",
            "CAP_SYS_TTY_CONFIG",
            "CAP_MKNOD",
            "CAP_LEASE",
            "CAP_AUDIT_WRITE",
            "CAP_AUDIT_CONTROL",
            "CAP_SETFCAP",
            "CAP_MAC_OVERRIDE",
            "CAP_MAC_ADMIN",
            "CAP_SYSLOG",
            "CAP_WAKE_ALARM",
            "CAP_BLOCK_SUSPEND",
            "CAP_AUDIT_READ",
            "CAP_PERFMON",
            "CAP_BPF",
            "CAP_CHECKPOINT_RESTORE",
        )
    )
}
#: the names by number
CAP_NAMES: tuple[str, ...] = tuple(CAPABILITIES)
#: the last capability this table names
LAST_KNOWN_CAP = len(CAP_NAMES) - 1

#: docker's default capabilities (moby oci/caps/defaults.go)
DEFAULT_CAPS: frozenset[str] = frozenset(
    {
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    }
)

_ALL = "ALL"
_last_cap: int | None = None
_bounding: frozenset[str] | None = None


def last_cap() -> int:
    """The last capability the running kernel knows (``/proc/sys/kernel/cap_last_cap``),
    read once."""
    global _last_cap
    if _last_cap is None:
        _last_cap = _linux.cap_last_cap()
    return _last_cap


def kernel_caps() -> frozenset[str]:
    """The capabilities both this table and the running kernel know."""
    return _known_up_to(min(last_cap(), LAST_KNOWN_CAP))


@functools.lru_cache(maxsize=4)
def _known_up_to(cap: int) -> frozenset[str]:
    return frozenset(CAP_NAMES[: cap + 1])


def caller_bounding_set() -> frozenset[str]:
    """The capabilities this process may pass on: its own bounding set, read once.

    These are what ``--privileged`` and ``--cap-add ALL`` give, and the only ones
    ``--cap-add`` accepts (docker goes by its daemon's effective set; for root
    without file capabilities the two are the same).
    """
    global _bounding
    if _bounding is None:
        _bounding = read_sets().bounding_names
    return _bounding


def mask(caps: Iterable[str]) -> int:
    """The 64-bit mask of a set of ``CAP_X`` names (bit N = capability N).

    Raises:
        SpecError: a name not in ``CAPABILITIES``.
    """
    bits = 0
    for name in caps:
        try:
            bits |= 1 << CAPABILITIES[name]
        except KeyError:
            raise SpecError(f"unknown capability {name!r}") from None
    return bits


def names(bits: int) -> frozenset[str]:
    """The names of the capabilities in a mask; bits this table has no name for are
    left out."""
    return frozenset(name for number, name in enumerate(CAP_NAMES) if bits >> number & 1)


def normalize(name: str, flag: str = "--cap-add") -> str:
    """``net_admin``, ``NET_ADMIN``, ``cap_net_admin`` → ``CAP_NET_ADMIN``; ``all`` → ``ALL``.

    Raises:
        SpecError: a name that is no capability (``flag`` says where it was given).
    """
    upper = name.upper()
    if upper == _ALL:
        return _ALL
    if not upper.startswith("CAP_"):
        upper = "CAP_" + upper
    if upper not in CAPABILITIES:
        raise SpecError(f"unknown capability {upper!r} in {flag} (see capabilities(7))")
    return upper


def parse_caps(
    add: Iterable[str] = (),
    drop: Iterable[str] = (),
    privileged: bool = False,
    *,
    available: frozenset[str] | None = None,
) -> frozenset[str]:
    """The container's capabilities from docker's flags, by docker's rules
    (moby ``oci/caps`` TweakCapabilities):

    - ``privileged``: every available capability; ``add`` and ``drop`` are ignored
      (not even checked, as docker does);
    - ``ALL`` in ``add``: every available capability except those in ``drop``
      (a ``drop`` of ``ALL`` is then ignored);
    - else ``ALL`` in ``drop``: exactly ``add``;
    - else the defaults minus ``drop``, plus ``add``: a capability both added and
      dropped is *added* (the drop applies to the defaults, the add after it).

    Names are taken with or without ``CAP_``, in any case.

    Args:
        available: what ``privileged`` and ``ALL`` mean and what ``add`` may
            name; default ``caller_bounding_set()``.

    Returns:
        ``CAP_X`` names, only ones the running kernel knows.

    Raises:
        SpecError: an unknown name, or one added that is not available (not in the
            kernel, or not in this process's bounding set), in one line. A default
            that is not available is left out rather than refused.
    """
    if available is None:
        available = caller_bounding_set()
    return _parse_caps(tuple(add), tuple(drop), privileged, frozenset(available) & kernel_caps())


@functools.lru_cache(maxsize=64)
def _parse_caps(
    add: tuple[str, ...], drop: tuple[str, ...], privileged: bool, available: frozenset[str]
) -> frozenset[str]:
    # every ContainerSpec asks (its check, its confinement): ~20 us a time otherwise
    if privileged:
        return available
    drops = {normalize(c, "--cap-drop") for c in drop}
    adds = {normalize(c, "--cap-add") for c in add}
    # A drop of something unavailable is accepted (docker refuses it): it asks for
    # nothing the container could have.
    missing = sorted(adds - {_ALL} - available)
    if missing:
        raise SpecError(
            f"capability not available: {', '.join(missing)} (not known to the kernel, "
            "or not in mydocker's own bounding set)"
        )
    if _ALL in adds:
        return available - drops
    if _ALL in drops:
        return frozenset(adds)
    # A default the supervisor does not hold itself (mydocker run inside a container
    # without, say, CAP_MKNOD) is left out: docker would fail every start with EPERM.
    return ((DEFAULT_CAPS & available) - drops) | adds


@dataclass(frozen=True)
class CapSets:
    """The five capability sets of a process, as 64-bit masks."""

    inheritable: int = 0
    permitted: int = 0
    effective: int = 0
    bounding: int = 0
    ambient: int = 0

    @property
    def bounding_names(self) -> frozenset[str]:
        """The bounding set as names."""
        return names(self.bounding)


def container_sets(caps: frozenset[str], uid: int) -> CapSets:
    """The sets a container's process gets for ``caps`` (``parse_caps``) and user.

    As docker: root gets ``caps`` as bounding, permitted and effective sets; any
    other uid only as its bounding set (moby ``oci.SetCapabilities``: "to match
    what execve does"). Inheritable and ambient are empty for both.

    Raises:
        SpecError: a name not in ``CAPABILITIES``.
    """
    bits = mask(caps)
    if uid == 0:
        return CapSets(permitted=bits, effective=bits, bounding=bits)
    return CapSets(bounding=bits)


_STATUS_FIELDS = {
    "CapInh": "inheritable",
    "CapPrm": "permitted",
    "CapEff": "effective",
    "CapBnd": "bounding",
    "CapAmb": "ambient",
}


def parse_status(text: str) -> CapSets:
    """The capability sets in the text of a ``/proc/PID/status`` file.

    Raises:
        ValueError: a field is missing or is not hexadecimal.
    """
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key in _STATUS_FIELDS:
            found[_STATUS_FIELDS[key]] = int(value.strip(), 16)
    missing = set(_STATUS_FIELDS.values()) - set(found)
    if missing:
        raise ValueError(f"no {', '.join(sorted(missing))} set in the status text")
    return CapSets(**found)


def read_sets(pid: int | str = "self") -> CapSets:
    """The capability sets of process ``pid`` (default: this one), from
    ``/proc/PID/status``.

    Raises:
        OSError: the process is gone or cannot be read.
    """
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        return parse_status(f.read())
