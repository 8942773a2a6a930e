"""Resource limits of the container's processes (``--ulimit``): docker's names and syntax.

Data only, worked out in the supervisor: ``ContainerSpec.ulimits`` holds ``Ulimit``
values, ``child_rlimits`` turns them (with mydocker's defaults) into the
``(name, resource, soft, hard)`` tuples the child sets with raw ``prlimit64`` calls
before its exec (``init.prepare``). Standard library only, and none of it is loaded
unless a container has ulimits of its own.

Defaults: a container keeps mydocker's own limits, as a docker container keeps the
daemon's, except ``core``, which is ``0:0``. A core dump is written through the
host's ``core_pattern``: often a pipe to a helper that runs on the host as root
(systemd-coredump, apport) and writes outside the container's limits; and a judge's
crashing solution would spend its time limit writing it. ``--ulimit core=-1`` gives
dumps back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import SpecError

#: docker's names (go-units ``ulimit.go``) and their numbers, <asm-generic/resource.h>
#: (x86_64 and aarch64 share them)
RESOURCES = {
    "cpu": 0,
    "fsize": 1,
    "data": 2,
    "stack": 3,
    "core": 4,
    "rss": 5,
    "nproc": 6,
    "nofile": 7,
    "memlock": 8,
    "as": 9,
    "locks": 10,
    "sigpending": 11,
    "msgqueue": 12,
    "nice": 13,
    "rtprio": 14,
    "rttime": 15,
}

#: a limit's "unlimited" (RLIM_INFINITY) as a ``Ulimit`` spells it
UNLIMITED = -1
#: RLIM64_INFINITY, what ``prlimit64`` takes for it
RLIM_INFINITY = (1 << 64) - 1


@dataclass(frozen=True)
class Ulimit:
    """One limit: ``name`` (docker's: ``nofile``, ``nproc``, ``fsize``, ...), the soft
    and the hard value (``-1``: unlimited). Units are the kernel's: bytes for sizes,
    seconds for ``cpu``, microseconds for ``rttime``, a count for the rest."""

    name: str
    soft: int
    hard: int

    @property
    def resource(self) -> int:
        """The ``RLIMIT_*`` number."""
        return RESOURCES[self.name]

    def __str__(self) -> str:
        return f"{self.name}={self.soft}:{self.hard}"


#: what a container gets unless ``--ulimit`` says otherwise (the module docstring says why)
DEFAULTS = (Ulimit("core", 0, 0),)


def _value(text: object, name: str, what: str) -> int:
    if isinstance(text, bool):
        text = str(text)
    if isinstance(text, int):
        value = text
    else:
        s = str(text).strip()
        if s in ("unlimited", "-1"):
            return UNLIMITED
        if not (s.isascii() and s.isdigit()):
            raise SpecError(
                f"invalid --ulimit {name}: {what} limit {text!r} is not a whole number (or -1: unlimited)"
            )
        value = int(s)
    if value < UNLIMITED or value >= RLIM_INFINITY:
        raise SpecError(f"invalid --ulimit {name}: {what} limit {value} (0 or more, or -1: unlimited)")
    return value


def make(name: str, value: object) -> Ulimit:
    """One ``Ulimit`` from a name and a value: ``"SOFT[:HARD]"``, a number, or a
    ``(soft, hard)`` pair. A soft limit alone sets both, as docker does.

    Raises:
        SpecError: an unknown name, a value that is no whole number (or -1), a soft
            limit above the hard one.
    """
    if not isinstance(name, str) or name not in RESOURCES:
        known = ", ".join(sorted(RESOURCES))
        raise SpecError(f"invalid --ulimit: unknown limit {name!r} (one of {known})")
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise SpecError(f"invalid --ulimit {name}: {value!r} (a soft and a hard limit)")
        soft_text, hard_text = value
    elif isinstance(value, str) and ":" in value:
        soft_text, _, hard_text = value.partition(":")
    else:
        soft_text = hard_text = value
    soft, hard = _value(soft_text, name, "soft"), _value(hard_text, name, "hard")
    if hard != UNLIMITED and (soft == UNLIMITED or soft > hard):
        raise SpecError(f"invalid --ulimit {name}: the soft limit {soft} is above the hard limit {hard}")
    return Ulimit(name, soft, hard)


def parse(text: str) -> Ulimit:
    """docker's ``--ulimit TYPE=SOFT[:HARD]``.

    Raises:
        SpecError: as ``make``, or text of another shape.
    """
    name, sep, value = text.partition("=")
    if not sep or not value:
        raise SpecError(f"invalid --ulimit {text!r} (TYPE=SOFT[:HARD], e.g. nofile=1024:2048)")
    return make(name.strip(), value)


def normalize(ulimits: object) -> tuple[Ulimit, ...]:
    """``ContainerSpec.ulimits`` in any of its accepted forms, as ``Ulimit`` values
    in name order, one per name (a later one wins): a mapping ``{"nofile": 64,
    "nproc": (32, 64), "core": "0:0"}``, or an iterable of ``Ulimit`` values and
    ``"TYPE=SOFT[:HARD]"`` strings.

    Raises:
        SpecError: a bad name or value, or another kind of object.
    """
    items: Iterable[object]
    if isinstance(ulimits, Mapping):
        items = [make(name, value) for name, value in ulimits.items()]
    elif isinstance(ulimits, str | bytes):
        raise SpecError("ulimits must be a mapping or a sequence of 'TYPE=SOFT[:HARD]', not a single string")
    else:
        try:
            items = list(ulimits)  # type: ignore[call-overload]
        except TypeError:
            kind = type(ulimits).__name__
            raise SpecError(f"ulimits must be a mapping or a sequence, not {kind}") from None
    out: dict[str, Ulimit] = {}
    for item in items:
        if isinstance(item, str):
            item = parse(item)
        elif isinstance(item, Ulimit):
            item = make(item.name, (item.soft, item.hard))  # checked again: built by hand
        else:
            raise SpecError(f"invalid ulimit {item!r} (a Ulimit or 'TYPE=SOFT[:HARD]')")
        out[item.name] = item
    return tuple(out[name] for name in sorted(out))


def check_hard_limits(ulimits: tuple[Ulimit, ...], can_raise: bool) -> None:
    """Refuse, before anything starts, a hard limit the child could not set: above
    this process's own without CAP_SYS_RESOURCE (``can_raise``: the capability in
    the initial user namespace; never without root), or ``nofile`` above the
    kernel's ``fs.nr_open``.

    Raises:
        SpecError: one line naming the limit and why.
    """
    import resource

    for u in ulimits:
        want = RLIM_INFINITY if u.hard == UNLIMITED else u.hard
        if u.name == "nofile" and want > _nr_open():
            raise SpecError(
                f"invalid --ulimit nofile: the hard limit {u.hard} is above fs.nr_open ({_nr_open()})"
            )
        _, ours = resource.getrlimit(u.resource)
        own = RLIM_INFINITY if ours == resource.RLIM_INFINITY else ours
        if want > own and not can_raise:
            raise SpecError(
                f"invalid --ulimit {u.name}: the hard limit {u.hard} is above mydocker's own "
                f"({'unlimited' if own == RLIM_INFINITY else own}); raising it needs CAP_SYS_RESOURCE"
            )


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20  # the kernel's default


def child_rlimits(ulimits: tuple[Ulimit, ...]) -> tuple[tuple[str, int, int, int], ...]:
    """``(name, resource, soft, hard)`` for the child's ``prlimit64`` calls: ``DEFAULTS``
    overridden by ``ulimits``, unlimited as ``RLIM_INFINITY``."""
    if not ulimits:  # nearly every container: worked out once
        return _DEFAULT_RLIMITS
    chosen = {u.name: u for u in DEFAULTS}
    chosen.update((u.name, u) for u in ulimits)

    def raw(v: int) -> int:
        return RLIM_INFINITY if v == UNLIMITED else v

    return tuple((u.name, u.resource, raw(u.soft), raw(u.hard)) for _, u in sorted(chosen.items()))


_DEFAULT_RLIMITS: tuple[tuple[str, int, int, int], ...] = ()
_DEFAULT_RLIMITS = child_rlimits(DEFAULTS)
