"""Devices: which device nodes a container may create and open (the device cgroup).

``CAP_MKNOD`` is a default capability, so a container can make any device node, e.g.
``mknod /dev/d b 254 0`` for the host's disk, and mount it. Creating a node stays
allowed (images ship nodes, and some programs mknod their own ``/dev/null``), but the
kernel asks the device cgroup on every ``open`` and ``mknod`` of a device node, and
the container's cgroup answers from an allowlist: docker's, by default.

Rules are data (``DeviceRule``), applied in order to a cgroup that starts out
denying everything, exactly as writes to a v1 ``devices.allow``/``devices.deny``
would be: an allow rule grants its access, a deny rule takes back what an earlier
rule granted for the very same devices, ``a *:* rwm`` starts over from allow-all or
deny-all. ``resolve`` reduces a list to that end state (``DevicePolicy``), from which
both mechanisms are generated, so they cannot disagree:

* cgroup v2 (pure, or the controller-less ``unified`` hierarchy of a hybrid host): a
  ``BPF_PROG_TYPE_CGROUP_DEVICE`` program attached to the container's v2 directory
  (``bpf_program``, ``apply_v2``). The kernel's ``devcgroup_check_permission`` runs
  the programs of the task's *default-hierarchy* cgroup before, and independently
  of, the v1 ``devices`` controller: so on a hybrid host the v2 program confines
  too, even though the v1 devices cgroup of the process allows everything
  (tests/test_devices.py shows both on a real hybrid host).
* cgroup v1 only (no cgroup2 hierarchy at all): ``devices.deny a``, then one
  ``devices.allow`` line per rule (``v1_writes``, ``apply_v1``).

Where v1 semantics would silently ignore a rule (a deny overlapping an earlier allow
that names other devices, e.g. ``c 1:3 m`` after ``c *:* m``: v1 only takes back
exceptions of exactly the same devices), ``resolve`` refuses the list with a
``SpecError`` instead of confining less than it says; a BPF program could express
it, but then the same rules would mean different things on different hosts.
"""

from __future__ import annotations

import errno
import os
import posixpath
import struct
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol

from . import _linux
from .errors import SpecError, StartError

#: the largest major and minor numbers a dev_t holds (<linux/kdev_t.h>: MINORBITS 20)
MAX_MAJOR = (1 << 12) - 1
MAX_MINOR = (1 << 20) - 1

_ACCESS = "rwm"
_SYNTAX = "expected 'TYPE MAJOR:MINOR ACCESS' like 'c 1:3 rwm' (TYPE a, b or c; MAJOR, MINOR a number or *)"


@dataclass(frozen=True)
class DeviceRule:
    """One line of a device allowlist, as docker's ``--device-cgroup-rule`` spells it.

    Attributes:
        type: ``"c"`` (character), ``"b"`` (block) or ``"a"`` (both).
        major: the major number, or None for ``*`` (any).
        minor: the minor number, or None for ``*``.
        access: a non-empty subset of ``"rwm"`` (read, write, mknod), kept in that order.
        allow: True to grant the access, False to take it back.

    Raises:
        SpecError: a field out of range.
    """

    type: str
    major: int | None = None
    minor: int | None = None
    access: str = "rwm"
    allow: bool = True

    def __post_init__(self) -> None:
        if self.type not in ("a", "b", "c"):
            raise SpecError(f"invalid device type {self.type!r} (a, b or c)")
        for what, n, top in (("major", self.major, MAX_MAJOR), ("minor", self.minor, MAX_MINOR)):
            if n is not None and not 0 <= n <= top:
                raise SpecError(f"invalid device {what} {n} (0-{top} or *)")
        if not self.access or set(self.access) - set(_ACCESS):
            raise SpecError(f"invalid device access {self.access!r} (some of r, w, m)")
        # canonical order, so that "mrw" and "rwm" make equal rules
        object.__setattr__(self, "access", "".join(c for c in _ACCESS if c in self.access))

    def __str__(self) -> str:
        return f"{self.type} {_num(self.major)}:{_num(self.minor)} {self.access}"

    @property
    def resets(self) -> bool:
        """Whether this is ``a *:* rwm``: every device, every access (a new default)."""
        return self.type == "a" and self.major is None and self.minor is None and self.access == _ACCESS


def _num(n: int | None) -> str:
    return "*" if n is None else str(n)


def _parse_num(s: str) -> int | None:
    if s == "*":
        return None
    if not s.isascii() or not s.isdigit():
        raise ValueError(f"{s!r} is not a number or *")
    return int(s)


def parse_rule(text: str, allow: bool = True) -> DeviceRule:
    """A rule from docker's ``--device-cgroup-rule`` syntax: ``'c 1:3 rwm'``, ``'b *:* m'``.

    Raises:
        SpecError: one line saying what is wrong with ``text``.
    """
    try:
        parts = text.split()
        if len(parts) != 3 or parts[1].count(":") != 1:
            raise ValueError(_SYNTAX)
        kind, numbers, access = parts
        major, minor = numbers.split(":")
        return DeviceRule(kind, _parse_num(major), _parse_num(minor), access, allow)
    except (ValueError, SpecError) as e:  # SpecError is a ValueError; both say why
        raise SpecError(f"invalid device cgroup rule {text!r}: {e}") from None


def _c(major: int, minor: int | None) -> DeviceRule:
    return DeviceRule("c", major, minor, "rwm")


#: docker's default allowlist: the OCI spec docker writes (null, zero, urandom, random,
#: tty, console) plus what runc and crun add to every container (mknod of any node,
#: full, ptmx, the pts ptys). Not c 10:200 (/dev/net/tun), which runc and crun allow
#: again since 1.2.4/1.20 only because users had come to rely on it; their maintainers
#: call it a mistake. Add ``parse_rule("c 10:200 rwm")`` for docker's exact behaviour.
DEFAULT_RULES: tuple[DeviceRule, ...] = (
    DeviceRule("c", None, None, "m"),
    DeviceRule("b", None, None, "m"),
    _c(1, 3),  # null
    _c(1, 5),  # zero
    _c(1, 7),  # full
    _c(1, 8),  # random
    _c(1, 9),  # urandom
    _c(5, 0),  # tty
    _c(5, 1),  # console
    _c(5, 2),  # ptmx
    _c(136, None),  # pts/*
)

#: every device, every access: ``--privileged``
ALLOW_ALL = DeviceRule("a")


def container_rules(privileged: bool = False, extra: Iterable[DeviceRule] = ()) -> tuple[DeviceRule, ...]:
    """A container's rules: docker's defaults (everything with ``privileged``), then
    ``extra`` (``--device-cgroup-rule``, ``--device``)."""
    return ((ALLOW_ALL,) if privileged else DEFAULT_RULES) + tuple(extra)


# ---------------------------------------------------------------- what the rules come to


@dataclass(frozen=True)
class DevicePolicy:
    """The end state of a rule list: a default and the exceptions to it.

    Every exception has ``allow == not default_allow`` and type ``c`` or ``b``; at
    most one per (type, major, minor), as the kernel's v1 exception list keeps them.
    Order does not matter: with a single verdict for all exceptions, "first match"
    and "any match" are the same.
    """

    default_allow: bool
    exceptions: tuple[DeviceRule, ...]

    def allows(self, type: str, major: int, minor: int, access: str) -> bool:
        """Whether an access (letters of ``rwm``; an open for reading and writing asks
        ``rw`` at once) to device ``type`` (``c``/``b``) major:minor is allowed.

        The kernel's v1 matching, which the BPF program reproduces: on deny-by-default
        one exception must grant *all* of the access; on allow-by-default one
        exception refusing *any* of it refuses.
        """
        want = set(access)
        for ex in self.exceptions:
            if ex.type != type or ex.major not in (None, major) or ex.minor not in (None, minor):
                continue
            if self.default_allow and want & set(ex.access):
                return False
            if not self.default_allow and want <= set(ex.access):
                return True
        return self.default_allow


def _overlap(a: DeviceRule, b: DeviceRule) -> bool:
    """Whether some request is matched by both (the same type, numbers and access meet)."""
    return (
        a.type == b.type
        and (a.major is None or b.major is None or a.major == b.major)
        and (a.minor is None or b.minor is None or a.minor == b.minor)
        and bool(set(a.access) & set(b.access))
    )


def resolve(rules: Iterable[DeviceRule]) -> DevicePolicy:
    """Apply ``rules`` in order to a deny-everything start (see the module docstring).

    Raises:
        SpecError: a rule takes back access from devices that an earlier rule names
            differently (e.g. deny ``c 1:3 m`` after allow ``c *:* m``): cgroup v1
            would ignore it.
    """
    default_allow = False
    exceptions: list[DeviceRule] = []
    for rule in rules:
        if rule.resets:
            default_allow, exceptions = rule.allow, []
            continue
        # v1 reads any line starting with "a" as a reset: "a 1:3 r" is "c 1:3 r" and "b 1:3 r"
        for piece in [rule] if rule.type != "a" else [replace(rule, type="c"), replace(rule, type="b")]:
            if piece.allow != default_allow:
                _add(exceptions, piece)
            else:
                _take_back(exceptions, piece, rule)
    return DevicePolicy(default_allow, tuple(exceptions))


def _find(exceptions: list[DeviceRule], rule: DeviceRule) -> int | None:
    key = (rule.type, rule.major, rule.minor)
    return next((i for i, ex in enumerate(exceptions) if (ex.type, ex.major, ex.minor) == key), None)


def _add(exceptions: list[DeviceRule], rule: DeviceRule) -> None:
    # one exception per devices, as the kernel merges them
    i = _find(exceptions, rule)
    if i is None:
        exceptions.append(rule)
    else:
        exceptions[i] = replace(exceptions[i], access=exceptions[i].access + rule.access)


def _take_back(exceptions: list[DeviceRule], piece: DeviceRule, rule: DeviceRule) -> None:
    i = _find(exceptions, piece)
    for j, ex in enumerate(exceptions):
        if j != i and _overlap(ex, piece):
            raise SpecError(
                f"device rule {'allow' if rule.allow else 'deny'} '{rule}' overlaps the earlier rule "
                f"'{ex}' but names other devices, which cgroup v1 would silently ignore: take back "
                f"exactly the devices of an earlier rule, or narrow that rule"
            )
    if i is not None:
        left = "".join(c for c in exceptions[i].access if c not in piece.access)
        if left:
            exceptions[i] = replace(exceptions[i], access=left)
        else:
            del exceptions[i]


# ---------------------------------------------------------------- cgroup v2: a BPF program

# struct bpf_insn, <linux/bpf.h>: u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm.
# Little-endian (both architectures we run on): dst_reg is the low nibble.
_INSN = struct.Struct("<BBhi")

# <linux/bpf_common.h>, <linux/bpf.h>: instruction classes, sizes, modes, sources, ops
_LDX, _ALU, _JMP, _ALU64 = 0x01, 0x04, 0x05, 0x07
_W, _MEM = 0x00, 0x60
_K, _X = 0x00, 0x08
_AND, _RSH, _MOV = 0x50, 0x70, 0xB0
_JEQ, _JNE, _EXIT = 0x10, 0x50, 0x90

# <linux/bpf.h>: struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; },
# access_type = type | access << 16
BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2
BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4
_DEV_TYPE = {"b": BPF_DEVCG_DEV_BLOCK, "c": BPF_DEVCG_DEV_CHAR}
_ACC_BIT = {"r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE, "m": BPF_DEVCG_ACC_MKNOD}

#: the registers the program keeps the request in
_R_TYPE, _R_ACCESS, _R_MAJOR, _R_MINOR = 2, 3, 4, 5

#: shown by ``bpftool prog``
PROGRAM_NAME = "mydocker_dev"
#: The license only gates GPL-only helpers, and the program calls none: the kernel
#: loads it under any string (checked on 6.18; runc passes "Apache"). Ours is MIT.
LICENSE = "MIT"


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return _INSN.pack(code, dst | src << 4, off, imm)


def _verdict(allow: bool) -> list[bytes]:
    return [_insn(_ALU64 | _MOV | _K, 0, imm=int(allow)), _insn(_JMP | _EXIT)]


def bpf_program(rules: Iterable[DeviceRule]) -> bytes:
    """The ``BPF_PROG_TYPE_CGROUP_DEVICE`` program for ``rules``: 8-byte instructions.

    The request goes into registers once; then one block per exception of the
    policy, each a run of "not this one? jump to the next block" tests and a verdict;
    the default verdict at the end. Only forward jumps, no helpers, no maps.

    Raises:
        SpecError: as ``resolve``.
    """
    policy = resolve(rules)
    if not policy.exceptions:
        return b"".join(_verdict(policy.default_allow))
    prog = [
        _insn(_LDX | _W | _MEM, _R_TYPE, 1, 0),  # the device type: the low 16 bits of access_type
        _insn(_ALU | _AND | _K, _R_TYPE, imm=0xFFFF),
        _insn(_LDX | _W | _MEM, _R_ACCESS, 1, 0),  # access: the high 16 bits
        _insn(_ALU | _RSH | _K, _R_ACCESS, imm=16),
        _insn(_LDX | _W | _MEM, _R_MAJOR, 1, 4),
        _insn(_LDX | _W | _MEM, _R_MINOR, 1, 8),
    ]
    for ex in policy.exceptions:
        # (code, dst, src, imm) of each test; every one jumps to the next block
        block: list[tuple[int, int, int, int]] = [(_JMP | _JNE | _K, _R_TYPE, 0, _DEV_TYPE[ex.type])]
        if ex.access != _ACCESS:  # every request is within rwm: no test needed then
            mask = sum(_ACC_BIT[c] for c in ex.access)
            block.append((_ALU | _MOV | _X, 1, _R_ACCESS, 0))  # r1 = access & mask (r1, the
            block.append((_ALU | _AND | _K, 1, 0, mask))  # context, is read already)
            if ex.allow:  # grants only if it covers all of the request
                block.append((_JMP | _JNE | _X, 1, _R_ACCESS, 0))
            else:  # refuses if it covers any of it
                block.append((_JMP | _JEQ | _K, 1, 0, 0))
        if ex.major is not None:
            block.append((_JMP | _JNE | _K, _R_MAJOR, 0, ex.major))
        if ex.minor is not None:
            block.append((_JMP | _JNE | _K, _R_MINOR, 0, ex.minor))
        end = len(block) + 2  # the verdict's two instructions follow the tests
        for i, (code, dst, src, imm) in enumerate(block):
            is_jump = code & 0x07 == _JMP
            prog.append(_insn(code, dst, src, end - (i + 1) if is_jump else 0, imm))
        prog += _verdict(ex.allow)
    prog += _verdict(policy.default_allow)
    return b"".join(prog)


def _load(code: bytes) -> int:
    return _linux.bpf_prog_load(_linux.BPF_PROG_TYPE_CGROUP_DEVICE, code, LICENSE, PROGRAM_NAME)


def load_program(rules: Iterable[DeviceRule]) -> int:
    """Load ``bpf_program(rules)`` into the kernel (the verifier checks it): its fd,
    close-on-exec. Needs CAP_SYS_ADMIN (or CAP_BPF).

    Raises:
        SpecError: as ``resolve``.
        OSError: the load failed; the message carries the verifier's log.
    """
    return _load(bpf_program(rules))


def attach_program(cgroup_fd: int, prog_fd: int) -> None:
    """Attach a loaded device program to a cgroup v2 directory fd.

    With ``BPF_F_ALLOW_MULTI``: a program a nested runtime attaches below ours runs
    *as well as* ours (with ``BPF_F_ALLOW_OVERRIDE`` it would replace it, widening
    access; with no flag nothing could be attached below). Ancestors' programs keep
    running for our processes if *they* were attached with ALLOW_MULTI; an ancestor
    attached without a flag makes this fail with EPERM.

    Raises:
        OSError: naming the call.
    """
    _linux.bpf_prog_attach(cgroup_fd, prog_fd, _linux.BPF_CGROUP_DEVICE, _linux.BPF_F_ALLOW_MULTI)


#: the program of rules that allow everything: nothing to attach
_ALLOW_EVERYTHING = b"".join(_verdict(True))


class ProgramCache:
    """Loaded device programs, shared by every container with the same rules.

    Measured on a 2-core 6.18 VM, default rules (64 instructions): generating the
    program takes ~37 us, loading it (the verifier, the JIT) ~240 us, attaching a
    loaded one ~4 us; ``apply_v2`` costs ~0.27 ms without a cache, ~13 us with one
    (a dict lookup, opening the directory, the attach). Not shared between threads.

    Owns its fds (close-on-exec, as every bpf fd): ``close()``, or a ``with`` block,
    closes them; attached programs stay alive until their cgroups are removed. The
    process's own cache lives as long as it does (``cgroups.CgroupFS.device_programs``).
    """

    def __init__(self) -> None:
        self._by_rules: dict[tuple[DeviceRule, ...], int | None] = {}
        self._by_code: dict[bytes, int] = {}  # equal programs from different rule lists
        self._by_identity: dict[int, tuple[tuple[DeviceRule, ...], int | None]] = {}

    def program_fd(self, rules: Iterable[DeviceRule]) -> int | None:
        """The fd of the loaded program for ``rules`` (it stays the cache's), or None
        when they allow everything and there is nothing to attach.

        Raises:
            SpecError, OSError: as ``load_program``.
        """
        if isinstance(rules, tuple):
            # the same tuple each time for most containers (``container_rules``): found
            # without hashing its rules again (11 dataclass hashes, ~10 us)
            seen = self._by_identity.get(id(rules))
            if seen is not None and seen[0] is rules:
                return seen[1]
        rules = tuple(rules)
        fd = self._by_rules.get(rules, -1)  # hashing the rules: ~10 us, generating: ~37
        if fd == -1:
            code = bpf_program(rules)
            fd = self._by_code.get(code)
            if fd is None and code != _ALLOW_EVERYTHING:
                fd = self._by_code[code] = _load(code)
            self._by_rules[rules] = fd
        if len(self._by_identity) >= 64:  # fresh tuples each time: no use keeping them
            self._by_identity.clear()
        self._by_identity[id(rules)] = (rules, fd)  # the tuple kept: its id stays its own
        return fd

    def fds(self) -> tuple[int, ...]:
        """The fds of the loaded programs."""
        return tuple(self._by_code.values())

    def __len__(self) -> int:
        """How many programs are loaded."""
        return len(self._by_code)

    def close(self) -> None:
        """Close every program fd (a later ``program_fd`` loads anew)."""
        fds = list(self._by_code.values())
        self._by_code, self._by_rules, self._by_identity = {}, {}, {}
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> ProgramCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _start_error(what: str, e: OSError, hint: str = "") -> StartError:
    detail = f"{what}: {e.strerror or e}"
    if hint and e.errno == errno.EPERM:
        detail += f" ({hint})"
    return StartError("device cgroup", e.errno or 0, detail)


def apply_v2(
    cgroup_dir: str, rules: Iterable[DeviceRule], cache: ProgramCache | None = None, dir_fd: int = -1
) -> None:
    """Confine a cgroup v2 directory to ``rules``: load (or take from ``cache``) the
    program and attach it. Do it before any process enters the directory. ``dir_fd``:
    an fd of the directory (O_PATH will do), else it is opened here.

    Nothing is attached when the rules allow everything (``--privileged``). Without
    a cache the program is loaded for this directory alone and its fd closed at
    once: the attached program lives as long as the directory (rmdir detaches it).

    Raises:
        SpecError: as ``resolve``.
        StartError: opening the directory, loading or attaching failed.
    """
    try:
        if cache is not None:
            prog_fd = cache.program_fd(rules)
        else:
            code = bpf_program(rules)
            prog_fd = None if code == _ALLOW_EVERYTHING else _load(code)
    except OSError as e:
        raise _start_error(f"confine {cgroup_dir}", e) from None
    if prog_fd is None:
        return
    try:
        fd = dir_fd
        if fd < 0:
            try:
                fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                raise _start_error(f"open {cgroup_dir}", e) from None
        try:
            attach_program(fd, prog_fd)
        except OSError as e:
            hint = "a device program on an ancestor cgroup, attached without BPF_F_ALLOW_MULTI, forbids ours"
            raise _start_error(f"confine {cgroup_dir}", e, hint) from None
        finally:
            if fd != dir_fd:
                os.close(fd)
    finally:
        if cache is None:
            os.close(prog_fd)


# ---------------------------------------------------------------- cgroup v1: two files


def v1_writes(rules: Iterable[DeviceRule]) -> list[tuple[str, str]]:
    """The ``(file, value)`` writes that confine a fresh v1 devices cgroup to ``rules``,
    in order: the default (``devices.deny a`` for deny-all), then one line per
    exception.

    Raises:
        SpecError: as ``resolve``.
    """
    policy = resolve(rules)
    if policy.default_allow:
        return [("devices.allow", "a")] + [("devices.deny", str(ex)) for ex in policy.exceptions]
    return [("devices.deny", "a")] + [("devices.allow", str(ex)) for ex in policy.exceptions]


class FileWriter(Protocol):
    """What ``apply_v1`` needs of ``cgroups.CgroupFS``."""

    def write(self, path: str, value: str) -> None: ...


def apply_v1(fs: FileWriter, cgroup_dir: str, rules: Iterable[DeviceRule]) -> None:
    """Confine a v1 devices cgroup directory to ``rules`` (before any process joins it).

    Raises:
        SpecError: as ``resolve``.
        StartError: a write failed (a parent that denies what a rule allows: EPERM).
    """
    for name, value in v1_writes(rules):
        try:
            fs.write(posixpath.join(cgroup_dir, name), value)
        except OSError as e:
            raise _start_error(f"confine {cgroup_dir}", e) from None
