"""Seccomp profiles: docker's default, docker/OCI JSON files, compiled once to BPF.

A ``Profile`` is immutable data: docker's default (``DEFAULT_PROFILE``, written here
in our own form), or a docker/OCI profile parsed by ``load_profile`` (a file) or
``parse_profile`` (a dict, e.g. an OCI ``linux.seccomp``). ``compile_profile`` turns
a profile and the container's capabilities into the BPF program the kernel runs (an
array of ``struct sock_filter``), once per distinct (profile, capabilities) in a
process. The child between clone and exec only loads those bytes, with the raw call
``_linux.seccomp_filter_call`` as its last step.

The compiler is libseccomp 2 through a minimal ctypes binding of our own (``_Lib``),
not a binding from PyPI:

* ``mephi42-seccomp`` ships wheels for CPython 3.12+ only and no sdist: it does not
  install on the Python 3.11 this project supports.
* ``pyseccomp`` (0.1.2, last release 2021) installs and works, but finds the library
  with ``ctypes.util.find_library``, which runs ``ldconfig -p`` in a subprocess: its
  import costs 20-60 ms here, our dlopen of ``libseccomp.so.2`` by its soname 0.1 ms.
  Compiling costs the same through either (the time is libseccomp's): a
  dependency would buy nothing.

The binding lives here rather than in ``_linux``: only the supervisor compiles, and
the spawn helper, which loads ``_linux``, stays small (see spawn.py). Its eleven
calls are libseccomp's stable API (``seccomp.h``, all present since 2.3).

Measured on the 2-core development machine (x86_64, kernel 6.18, libseccomp 2.5.4),
docker's default profile for docker's default capabilities, with its three ABIs
(x86_64, i386, x32): compiling costs ~16 ms of CPU the first time (~3 ms for x86_64
alone; the time is libseccomp's, adding rules and generating the program) and ~0.3 us
from the cache. The program has 1258 instructions with SCMP_FLTATR_CTL_OPTIMIZE 2
(libseccomp's binary tree of syscall numbers), of which a syscall runs 20 on average
(29 at most), against 1013 instructions as libseccomp's default list, where a syscall
runs 164 on average and up to 617 (personality, socket and clone come last): the
tree. A getppid() costs ~210 ns from Python without a filter and ~50-80 ns more with
it (seccomp's BPF is JIT-compiled; the tree and the list do not differ measurably for
a syscall early in the list).

Docker's semantics kept here: EPERM for what is not allowed; a rule whose action is
the default action is dropped (libseccomp refuses it); a syscall name this libseccomp
does not know is skipped; several conditions on the same argument become separate
rules (OR), as runc does; ``includes``/``excludes`` are matched against the
container's capabilities, the native architecture (docker's names: ``amd64``,
``arm64``, ...) and the running kernel; and, as runc does, a syscall newer than every
syscall the profile names gets ENOSYS instead of the default action, so that a C
library falls back to an older call (``clone3`` → ``clone``) instead of failing.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import errno as _errno
import functools
import json
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import MydockerError, SpecError

__all__ = [
    "DEFAULT_PROFILE",
    "Action",
    "ArgRule",
    "Compare",
    "Profile",
    "SeccompUnavailableError",
    "SyscallRule",
    "When",
    "compile_profile",
    "effective_rules",
    "load_profile",
    "parse_profile",
    "profile_from_option",
]


class SeccompUnavailableError(MydockerError):
    """libseccomp (``libseccomp.so.2``) cannot be loaded: nothing can be compiled."""


class Action(enum.Enum):
    """What the filter does with a syscall (the names of docker and the OCI spec)."""

    ALLOW = "SCMP_ACT_ALLOW"
    ERRNO = "SCMP_ACT_ERRNO"
    KILL = "SCMP_ACT_KILL"
    KILL_PROCESS = "SCMP_ACT_KILL_PROCESS"
    KILL_THREAD = "SCMP_ACT_KILL_THREAD"
    TRAP = "SCMP_ACT_TRAP"
    TRACE = "SCMP_ACT_TRACE"
    LOG = "SCMP_ACT_LOG"


class Compare(enum.Enum):
    """How a syscall argument is compared (``MASKED_EQ``: ``arg & value == value_two``)."""

    NE = "SCMP_CMP_NE"
    LT = "SCMP_CMP_LT"
    LE = "SCMP_CMP_LE"
    EQ = "SCMP_CMP_EQ"
    GE = "SCMP_CMP_GE"
    GT = "SCMP_CMP_GT"
    MASKED_EQ = "SCMP_CMP_MASKED_EQ"


@dataclass(frozen=True)
class ArgRule:
    """A condition on argument ``index`` (0-5) of a syscall."""

    index: int
    op: Compare
    value: int
    value_two: int = 0


@dataclass(frozen=True)
class When:
    """A rule's ``includes`` or ``excludes``: capabilities (all of them for
    ``includes``, any for ``excludes``), native architectures in docker's names
    (``amd64``, ``arm64``, ``x86``, ...), and a kernel version (major, minor)."""

    caps: frozenset[str] = frozenset()
    arches: frozenset[str] = frozenset()
    min_kernel: tuple[int, int] | None = None

    def __bool__(self) -> bool:
        return bool(self.caps or self.arches or self.min_kernel)


@dataclass(frozen=True)
class SyscallRule:
    """One ``syscalls`` entry: what happens to the named syscalls (when ``args``
    hold, all of them), if ``includes`` holds and ``excludes`` does not."""

    names: tuple[str, ...]
    action: Action
    #: the errno of an ERRNO action (or the data of a TRACE one); None: EPERM
    errno: int | None = None
    args: tuple[ArgRule, ...] = ()
    includes: When = When()
    excludes: When = When()


@dataclass(frozen=True)
class Profile:
    """A seccomp profile: immutable and hashable, so that it can key the compile cache.

    ``architectures`` is the OCI form (every listed architecture is filtered);
    ``arch_map`` docker's (the native architecture's entry and its sub-architectures).
    ``flags`` are the OCI ``SECCOMP_FILTER_FLAG_*`` names, for the load (``load_flags``).
    ``source`` names the profile in error messages and takes no part in equality.
    """

    default_action: Action
    default_errno: int | None = None
    architectures: tuple[str, ...] = ()
    arch_map: tuple[tuple[str, tuple[str, ...]], ...] = ()
    syscalls: tuple[SyscallRule, ...] = ()
    flags: frozenset[str] = frozenset()
    source: str = field(default="seccomp profile", compare=False)

    def __hash__(self) -> int:
        return self._hash

    @functools.cached_property
    def _hash(self) -> int:
        # Kept: hashing the default profile's few hundred names and enums costs
        # ~70 us, and compile_profile looks a profile up in its cache for every container.
        return hash(
            (
                self.default_action,
                self.default_errno,
                self.architectures,
                self.arch_map,
                self.syscalls,
                self.flags,
            )
        )

    @property
    def load_flags(self) -> int:
        """The flags for seccomp(SECCOMP_SET_MODE_FILTER) (``_linux.seccomp_filter_call``)."""
        flags = 0
        for name in self.flags:
            flags |= _FILTER_FLAGS[name]
        return flags


# ---------------------------------------------------------------- docker's default
#
# Docker's default profile (moby/profiles seccomp, 2026), as our own data: what it
# allows every container, grouped by what the calls are for, then the calls it allows
# only with a capability, and its argument rules. Names are of every architecture
# docker supports; those that do not exist here, or that this libseccomp does not
# know, are skipped when compiling.
_ALLOWED_FOR_EVERYONE = {
    "paths and inodes": """
        access chdir chmod chown chown32 creat faccessat faccessat2 fchdir fchmod
        fchmodat fchmodat2 fchown fchown32 fchownat fstat fstat64 fstatat64 fstatfs
        fstatfs64 futimesat getcwd getdents getdents64 lchown lchown32 link linkat
        listmount lstat lstat64 mkdir mkdirat mknod mknodat name_to_handle_at newfstatat
        open openat openat2 readlink readlinkat rename renameat renameat2 rmdir stat
        stat64 statfs statfs64 statmount statx symlink symlinkat truncate truncate64
        umask unlink unlinkat utime utimensat utimensat_time64 utimes
    """,
    "extended attributes": """
        fgetxattr flistxattr fremovexattr fsetxattr getxattr getxattrat lgetxattr
        listxattr listxattrat llistxattr lremovexattr lsetxattr removexattr
        removexattrat setxattr setxattrat
    """,
    "reading and writing fds": """
        cachestat close close_range copy_file_range dup dup2 dup3 fadvise64
        fadvise64_64 fallocate fcntl fcntl64 fdatasync flock fsync ftruncate
        ftruncate64 ioctl _llseek lseek memfd_create pipe pipe2 pread64 preadv preadv2
        pwrite64 pwritev pwritev2 read readahead readv sendfile sendfile64 splice sync
        sync_file_range syncfs tee vmsplice write writev
    """,
    "waiting for events": """
        epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2
        epoll_wait epoll_wait_old eventfd eventfd2 fanotify_mark inotify_add_watch
        inotify_init inotify_init1 inotify_rm_watch _newselect poll ppoll ppoll_time64
        pselect6 pselect6_time64 select signalfd signalfd4 timerfd_create
        timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64
    """,
    "asynchronous I/O (not io_uring)": """
        io_cancel io_destroy io_getevents io_pgetevents io_pgetevents_time64 io_setup
        io_submit
    """,
    # mlock* stay allowed, as in docker: RLIMIT_MEMLOCK bounds them, and going past it
    # needs CAP_IPC_LOCK, which no container has by default.
    "memory": """
        brk madvise map_shadow_stack membarrier memfd_secret mincore mlock mlock2
        mlockall mmap mmap2 mprotect mremap mseal msync munlock munlockall munmap
        pkey_alloc pkey_free pkey_mprotect remap_file_pages
    """,
    "processes and threads": """
        capget capset execve execveat exit exit_group fork get_robust_list
        get_thread_area getcpu getpgid getpgrp getpid getppid getpriority getrandom
        getrlimit getrusage getsid gettid ioprio_get ioprio_set kill
        landlock_add_rule landlock_create_ruleset landlock_restrict_self pidfd_open
        pidfd_send_signal prctl prlimit64 process_mrelease restart_syscall
        riscv_hwprobe rseq seccomp set_robust_list set_thread_area set_tid_address
        setpgid setpriority setrlimit setsid sysinfo tgkill times tkill ugetrlimit
        uname uretprobe vfork wait4 waitid waitpid
    """,
    "scheduling": """
        sched_get_priority_max sched_get_priority_min sched_getaffinity sched_getattr
        sched_getparam sched_getscheduler sched_rr_get_interval
        sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
        sched_setscheduler sched_yield
    """,
    "user and group ids": """
        getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32
        getresgid getresgid32 getresuid getresuid32 getuid getuid32 setfsgid
        setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setregid
        setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32
        setuid setuid32
    """,
    "signals": """
        alarm pause rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo
        rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
        rt_tgsigqueueinfo sigaltstack sigprocmask sigreturn
    """,
    # Reading clocks and timers; setting the system clock needs CAP_SYS_TIME (below).
    # adjtimex and clock_adjtime only read unless the caller has CAP_SYS_TIME.
    "clocks and timers": """
        adjtimex clock_adjtime clock_adjtime64 clock_getres clock_getres_time64
        clock_gettime clock_gettime64 clock_nanosleep clock_nanosleep_time64 getitimer
        gettimeofday nanosleep setitimer time timer_create timer_delete
        timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64
    """,
    "futexes": "futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake",
    # socket itself is allowed by an argument rule (below). socketcall (i386's
    # multiplexer) cannot be filtered by argument: docker allows it (since 2026,
    # relying on an LSM for the address families it refuses to socket).
    "sockets": """
        accept accept4 bind connect getpeername getsockname getsockopt listen recv
        recvfrom recvmmsg recvmmsg_time64 recvmsg send sendmmsg sendmsg sendto
        setsockopt shutdown socketcall socketpair
    """,
    "System V and POSIX IPC": """
        ipc mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64
        mq_timedsend mq_timedsend_time64 mq_unlink msgctl msgget msgrcv msgsnd semctl
        semget semop semtimedop semtimedop_time64 shmat shmctl shmdt shmget
    """,
}

#: Calls allowed only to a container whose capabilities include the key. Mostly the
#: calls the capability is checked for anyway: refusing them up front also closes
#: kernel attack surface the container has no use for.
_ALLOWED_WITH_CAPABILITY = {
    # open_by_handle_at opens any file of a mounted filesystem by its handle,
    # escaping the container's root ("shocker", 2014).
    "CAP_DAC_READ_SEARCH": "open_by_handle_at",
    # Namespaces, mounts and the other administrative calls; clone and clone3 have
    # restricted forms for everyone else (below).
    "CAP_SYS_ADMIN": """
        bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie
        lsm_get_self_attr lsm_list_modules lsm_set_self_attr mount mount_setattr
        move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname
        sethostname setns syslog umount umount2 unshare
    """,
    "CAP_SYS_BOOT": "reboot",
    "CAP_SYS_CHROOT": "chroot",
    "CAP_SYS_MODULE": "delete_module init_module finit_module",
    "CAP_SYS_PACCT": "acct",
    "CAP_SYS_PTRACE": "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace",
    "CAP_SYS_RAWIO": "iopl ioperm",
    "CAP_SYS_TIME": "settimeofday stime clock_settime clock_settime64",
    "CAP_SYS_TTY_CONFIG": "vhangup",
    "CAP_SYS_NICE": "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
    "CAP_SYSLOG": "syslog",
    "CAP_BPF": "bpf",
    "CAP_PERFMON": "perf_event_open",
}

#: Calls of one architecture family, allowed on it (docker's names of the native one).
_ALLOWED_ON_ARCH = (
    ("ppc64le", "sync_file_range2 swapcontext"),
    ("arm arm64", "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls"),
    ("amd64 x32", "arch_prctl"),
    ("amd64 x32 x86", "modify_ldt"),
    ("s390 s390x", "s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr"),
    ("riscv64", "riscv_flush_icache"),
)

# <linux/socket.h>: socket's families, all allowed but these two: AF_ALG (the kernel's
# crypto API, a long line of kernel bugs) and AF_VSOCK (reaches the host or hypervisor
# side of a virtual machine).
_AF_ALG, _AF_NFC, _AF_VSOCK = 38, 39, 40
# <linux/personality.h>: PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE, both, and 0xffffffff
# (query the current persona). Other personas change how the kernel treats the
# process (READ_IMPLIES_EXEC, ...): refused.
_PERSONAS = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
# <linux/sched.h>: every CLONE_NEW* flag clone(2) takes (CLONE_NEWNS, CGROUP, UTS, IPC,
# USER, PID, NET). CLONE_NEWUSER needs no privilege, and a user namespace opens much of
# the kernel to an unprivileged process: without CAP_SYS_ADMIN, no new namespaces.
_CLONE_NAMESPACE_FLAGS = 0x7E020000


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _default_profile() -> Profile:
    allow = Action.ALLOW
    everyone = tuple(name for group in _ALLOWED_FOR_EVERYONE.values() for name in _names(group))
    rules: list[SyscallRule] = [
        SyscallRule(everyone, allow),
        # Since 4.8 seccomp runs again after a tracer changed a syscall, so a tracer
        # can no longer be used to bypass the filter.
        SyscallRule(
            _names("process_vm_readv process_vm_writev ptrace"), allow, includes=When(min_kernel=(4, 8))
        ),
    ]
    for op, family in ((Compare.LT, _AF_ALG), (Compare.EQ, _AF_NFC), (Compare.GT, _AF_VSOCK)):
        rules.append(SyscallRule(("socket",), allow, args=(ArgRule(0, op, family),)))
    rules += [SyscallRule(("personality",), allow, args=(ArgRule(0, Compare.EQ, p),)) for p in _PERSONAS]
    rules += [
        SyscallRule(_names(names), allow, includes=When(arches=frozenset(arches.split())))
        for arches, names in _ALLOWED_ON_ARCH
    ]
    no_admin = frozenset({"CAP_SYS_ADMIN"})
    s390 = frozenset({"s390", "s390x"})
    for cap, names in _ALLOWED_WITH_CAPABILITY.items():
        rules.append(SyscallRule(_names(names), allow, includes=When(caps=frozenset({cap}))))
        if cap == "CAP_SYS_ADMIN":
            # Without it: clone without namespace flags (s390 passes the flags second),
            # and clone3 refused with ENOSYS, its flags being out of the filter's reach
            # (in memory): the C library then falls back to clone.
            masked = Compare.MASKED_EQ
            rules += [
                SyscallRule(
                    ("clone",),
                    allow,
                    args=(ArgRule(0, masked, _CLONE_NAMESPACE_FLAGS, 0),),
                    excludes=When(caps=no_admin, arches=s390),
                ),
                SyscallRule(
                    ("clone",),
                    allow,
                    args=(ArgRule(1, masked, _CLONE_NAMESPACE_FLAGS, 0),),
                    includes=When(arches=s390),
                    excludes=When(caps=no_admin),
                ),
                SyscallRule(("clone3",), Action.ERRNO, _errno.ENOSYS, excludes=When(caps=no_admin)),
            ]
    return Profile(
        default_action=Action.ERRNO,
        default_errno=_errno.EPERM,
        # x86_64 with the i386 and x32 ABIs: a 64-bit kernel runs their binaries
        # too, and an ABI not in the filter would meet its bad-architecture action.
        arch_map=(
            ("SCMP_ARCH_X86_64", ("SCMP_ARCH_X86", "SCMP_ARCH_X32")),
            ("SCMP_ARCH_AARCH64", ("SCMP_ARCH_ARM",)),
            ("SCMP_ARCH_MIPS64", ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32")),
            ("SCMP_ARCH_MIPS64N32", ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64")),
            ("SCMP_ARCH_MIPSEL64", ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32")),
            ("SCMP_ARCH_MIPSEL64N32", ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64")),
            ("SCMP_ARCH_S390X", ("SCMP_ARCH_S390",)),
            ("SCMP_ARCH_RISCV64", ()),
            ("SCMP_ARCH_LOONGARCH64", ()),
        ),
        syscalls=tuple(rules),
        source="docker's default seccomp profile",
    )


#: Docker's default profile: EPERM for every syscall it does not allow.
DEFAULT_PROFILE = _default_profile()


# ---------------------------------------------------------------- the JSON format

#: the architectures of the OCI runtime spec (``SCMP_ARCH_*``)
_ARCHES = frozenset(
    "SCMP_ARCH_" + a
    for a in """X86 X86_64 X32 ARM AARCH64 MIPS MIPS64 MIPS64N32 MIPSEL MIPSEL64 MIPSEL64N32
    PPC PPC64 PPC64LE S390 S390X PARISC PARISC64 RISCV64 LOONGARCH64""".split()
)
# <linux/seccomp.h>: the flags of seccomp(SECCOMP_SET_MODE_FILTER) a profile may ask
# for. TSYNC is accepted and means nothing here: the child is single-threaded.
_FILTER_FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 0,
    "SECCOMP_FILTER_FLAG_LOG": 1 << 1,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 1 << 2,
}
#: the highest errno the kernel returns (MAX_ERRNO, <linux/err.h>)
_MAX_ERRNO = 4095
_U64 = (1 << 64) - 1


class _Bad(Exception):
    """What is wrong, raised inside the parser; ``parse_profile`` adds which profile."""


def _show(value: object) -> str:
    return json.dumps(value)[:60]


def _list(obj: Mapping[str, object], key: str, where: str) -> list[object]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Bad(f"{where}{key} must be a list, not {_show(value)}")
    return value


def _object(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise _Bad(f"{where} must be an object, not {_show(value)}")
    return value


def _str(obj: Mapping[str, object], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise _Bad(f"{where}{key} must be a string, not {_show(value)}")
    return value


def _strings(obj: Mapping[str, object], key: str, where: str) -> tuple[str, ...]:
    items = _list(obj, key, where)
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise _Bad(f"{where}{key}[{i}] must be a non-empty string, not {_show(item)}")
    return tuple(str(item) for item in items)


def _uint(obj: Mapping[str, object], key: str, where: str, top: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    # bool is an int to Python, not to JSON; floats are refused as Go's decoder does
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Bad(f"{where}{key} must be an integer, not {_show(value)}")
    if not 0 <= value <= top:
        raise _Bad(f"{where}{key} must be between 0 and {top}, not {value}")
    return value


def _capability(name: str) -> str:
    name = name.strip().upper()
    return name if name.startswith("CAP_") else "CAP_" + name


def _capabilities(names: Iterable[str]) -> frozenset[str]:
    if isinstance(names, str):  # a str is an iterable of letters: surely a mistake
        raise TypeError(f"capabilities must be a collection of names, not the string {names!r}")
    if isinstance(names, (tuple, frozenset)):
        return _capabilities_of(names)
    return frozenset(map(_capability, names))


@functools.lru_cache(maxsize=64)
def _capabilities_of(names: tuple[str, ...] | frozenset[str]) -> frozenset[str]:
    # every container asks twice (its program, its split) with the same names:
    # normalising docker's 14 each time was half of ``confine.confinement``'s ~30 us
    return frozenset(map(_capability, names))


def _arch(name: str, where: str) -> str:
    if name not in _ARCHES:
        raise _Bad(
            f"{where}unknown architecture {name!r} (expected SCMP_ARCH_X86_64, SCMP_ARCH_AARCH64, ...)"
        )
    return name


def _action(value: object, where: str) -> Action:
    try:
        return Action(value)
    except ValueError:
        if value == "SCMP_ACT_NOTIFY":
            raise _Bad(f"{where}SCMP_ACT_NOTIFY is not supported (no seccomp agent)") from None
        known = ", ".join(a.value for a in Action)
        raise _Bad(f"{where}unknown action {_show(value)} (expected one of {known})") from None


def _errno_for(action: Action, obj: Mapping[str, object], key: str, where: str) -> int | None:
    value = _uint(obj, key, where, _MAX_ERRNO)
    if value is not None and action not in (Action.ERRNO, Action.TRACE):
        raise _Bad(f"{where}{key} only goes with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {action.value}")
    return value


def _when(obj: Mapping[str, object], key: str, where: str) -> When:
    if obj.get(key) is None:
        return When()
    where = f"{where}{key}."
    value = _object(obj[key], where[:-1])
    kernel = _str(value, "minKernel", where)
    min_kernel = None
    if kernel:
        parts = kernel.split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise _Bad(f'{where}minKernel must look like "4.8", not {kernel!r}')
        min_kernel = (int(parts[0]), int(parts[1]))
    return When(
        caps=frozenset(map(_capability, _strings(value, "caps", where))),
        arches=frozenset(_strings(value, "arches", where)),
        min_kernel=min_kernel,
    )


def _arg(value: object, where: str) -> ArgRule:
    obj = _object(value, where[:-1])
    index = _uint(obj, "index", where, 5)
    if index is None:
        raise _Bad(f"{where}index is missing")
    op = obj.get("op")
    try:
        compare = Compare(op)
    except ValueError:
        known = ", ".join(c.value for c in Compare)
        raise _Bad(f"{where}op must be one of {known}, not {_show(op)}") from None
    return ArgRule(
        index, compare, _uint(obj, "value", where, _U64) or 0, _uint(obj, "valueTwo", where, _U64) or 0
    )


def _syscall(value: object, where: str) -> SyscallRule:
    obj = _object(value, where[:-1])
    name = _str(obj, "name", where)
    names = _strings(obj, "names", where)
    if name and names:
        raise _Bad(f"{where}has both name and names (use one)")
    if name:
        names = (name,)
    if not names:
        raise _Bad(f"{where}names no syscall")
    action = _action(obj.get("action"), f"{where}action: ")
    return SyscallRule(
        names=names,
        action=action,
        errno=_errno_for(action, obj, "errnoRet", where),
        args=tuple(_arg(a, f"{where}args[{i}].") for i, a in enumerate(_list(obj, "args", where))),
        includes=_when(obj, "includes", where),
        excludes=_when(obj, "excludes", where),
    )


def parse_profile(data: object, source: str = "seccomp profile") -> Profile:
    """Make a ``Profile`` of a docker seccomp profile or an OCI ``linux.seccomp``
    object, already decoded from JSON.

    Args:
        data: the object (``defaultAction``, ``syscalls``, ...).
        source: names the profile in error messages (a file's path).

    Raises:
        SpecError: one sentence naming ``source`` and what is wrong (a missing or
            unknown action, a bad argument rule, both ``architectures`` and
            ``archMap``, ...). Unknown keys are ignored, as docker does.
    """
    try:
        return _parse(data, source)
    except _Bad as e:
        raise SpecError(f"{source}: {e}") from None


def _parse(data: object, source: str) -> Profile:
    if not isinstance(data, dict):
        raise _Bad("a seccomp profile must be a JSON object")
    if data.get("defaultAction") is None:
        # docker takes a profile without defaultAction nor syscalls as "unconfined":
        # a typo in a file should not silently turn the filter off.
        raise _Bad('defaultAction is missing (to run without seccomp, use "seccomp=unconfined")')
    default = _action(data["defaultAction"], "defaultAction: ")
    arch_map = []
    for i, entry in enumerate(_list(data, "archMap", "")):
        where = f"archMap[{i}]."
        obj = _object(entry, where[:-1])
        main = _str(obj, "architecture", where)
        if not main:
            raise _Bad(f"{where}architecture is missing")
        subs = tuple(_arch(a, where) for a in _strings(obj, "subArchitectures", where))
        arch_map.append((_arch(main, where), subs))
    architectures = tuple(_arch(a, "architectures: ") for a in _strings(data, "architectures", ""))
    if architectures and arch_map:
        raise _Bad("has both architectures and archMap (use one)")
    flags = _strings(data, "flags", "")
    for flag in flags:
        if flag not in _FILTER_FLAGS:
            raise _Bad(f"flags: {flag!r} is not supported (expected {', '.join(_FILTER_FLAGS)})")
    return Profile(
        default_action=default,
        default_errno=_errno_for(default, data, "defaultErrnoRet", ""),
        architectures=architectures,
        arch_map=tuple(arch_map),
        syscalls=tuple(_syscall(s, f"syscalls[{i}].") for i, s in enumerate(_list(data, "syscalls", ""))),
        flags=frozenset(flags),
        source=source,
    )


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read a docker/OCI seccomp profile from a JSON file.

    Raises:
        SpecError: the file cannot be read, is not JSON, or is not a valid profile;
            the message names the file.
    """
    source = f"seccomp profile {os.fspath(path)}"
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise SpecError(f"{source}: cannot be read: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{source}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (ValueError, RecursionError) as e:  # not UTF-8, or nested past the parser's depth
        raise SpecError(f"{source}: not valid JSON: {e}") from None
    return parse_profile(data, source)


def profile_from_option(value: str) -> Profile | None:
    """The profile of ``--security-opt seccomp=VALUE``: None for ``unconfined``,
    docker's default for ``builtin``, else the JSON file at VALUE.

    Raises:
        SpecError: as ``load_profile``.
    """
    if value == "unconfined":
        return None
    if value == "builtin":
        return DEFAULT_PROFILE
    return load_profile(value)


# ---------------------------------------------------------------- which rules apply

#: uname's machine -> (libseccomp's SCMP_ARCH name, docker's name of the architecture)
_MACHINES = {
    "x86_64": ("SCMP_ARCH_X86_64", "amd64"),
    "aarch64": ("SCMP_ARCH_AARCH64", "arm64"),
    "i686": ("SCMP_ARCH_X86", "x86"),
    "i386": ("SCMP_ARCH_X86", "x86"),
    "armv7l": ("SCMP_ARCH_ARM", "arm"),
    "ppc64le": ("SCMP_ARCH_PPC64LE", "ppc64le"),
    "s390x": ("SCMP_ARCH_S390X", "s390x"),
    "riscv64": ("SCMP_ARCH_RISCV64", "riscv64"),
    "loongarch64": ("SCMP_ARCH_LOONGARCH64", "loong64"),
}


def _running_kernel() -> tuple[int, int]:
    release = os.uname().release.split("-")[0].split(".")
    try:
        return int(release[0]), int(release[1])
    except (IndexError, ValueError):
        return (0, 0)


def _applies(rule: SyscallRule, caps: frozenset[str], arch: str, kernel: tuple[int, int]) -> bool:
    inc, exc = rule.includes, rule.excludes
    if exc and (
        (exc.arches and arch in exc.arches)
        or (exc.caps & caps)
        or (exc.min_kernel is not None and kernel >= exc.min_kernel)
    ):
        return False
    return not inc or not (
        (inc.arches and arch not in inc.arches)
        or not inc.caps <= caps
        or (inc.min_kernel is not None and kernel < inc.min_kernel)
    )


def effective_rules(
    profile: Profile,
    capabilities: Iterable[str],
    *,
    machine: str | None = None,
    kernel: tuple[int, int] | None = None,
) -> tuple[SyscallRule, ...]:
    """The rules of ``profile`` that apply to a container with ``capabilities``
    (``CAP_SYS_ADMIN`` or ``SYS_ADMIN``) on this machine and kernel (or the given
    ``machine``, as uname names it, and ``kernel`` (major, minor)), in order."""
    caps = _capabilities(capabilities)
    arch = _MACHINES.get(machine or os.uname().machine, ("", ""))[1]
    kernel = kernel or _running_kernel()
    return tuple(rule for rule in profile.syscalls if _applies(rule, caps, arch, kernel))


# ---------------------------------------------------------------- libseccomp

# <seccomp.h>: actions, comparisons and filter attributes
_ACTION_CODES = {
    Action.KILL_PROCESS: 0x80000000,
    Action.KILL_THREAD: 0x00000000,
    Action.KILL: 0x00000000,  # as runc: SCMP_ACT_KILL kills the thread
    Action.TRAP: 0x00030000,
    Action.ERRNO: 0x00050000,  # | errno
    Action.TRACE: 0x7FF00000,  # | message for the tracer
    Action.LOG: 0x7FFC0000,
    Action.ALLOW: 0x7FFF0000,
}
_COMPARE_CODES = {c: i for i, c in enumerate(Compare, start=1)}  # SCMP_CMP_NE = 1 ... MASKED_EQ = 7
_FLTATR_CTL_NNP = 3
_FLTATR_CTL_OPTIMIZE = 8
_NR_SCMP_ERROR = -1
#: the binary tree from this many rules on (as runc: libseccomp <= 2.5.4 mis-builds
#: it for a filter without rules, and a short list is as quick)
_TREE_FROM_RULES = 32


class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp, <seccomp.h>."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


class _Lib:
    """The libseccomp calls the compiler makes, with their C types."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libseccomp.so.2")
        except OSError as e:
            raise SeccompUnavailableError(
                f"seccomp needs libseccomp, which cannot be loaded ({e}): install libseccomp2 "
                "(apt-get install libseccomp2, dnf install libseccomp), or run with "
                "--security-opt seccomp=unconfined"
            ) from None
        ctx, u32, c_int, name = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_char_p

        def fn(symbol: str, restype: object, *argtypes: object) -> Any:
            f = getattr(lib, symbol)
            f.restype, f.argtypes = restype, argtypes
            return f

        self.init = fn("seccomp_init", ctx, u32)
        self.release = fn("seccomp_release", None, ctx)
        self.arch_add = fn("seccomp_arch_add", c_int, ctx, u32)
        self.arch_resolve_name = fn("seccomp_arch_resolve_name", u32, name)
        self.arch_native = fn("seccomp_arch_native", u32)
        self.attr_set = fn("seccomp_attr_set", c_int, ctx, c_int, u32)
        self.resolve_name = fn("seccomp_syscall_resolve_name", c_int, name)
        self.resolve_name_arch = fn("seccomp_syscall_resolve_name_arch", c_int, u32, name)
        self.rule_add_array = fn(
            "seccomp_rule_add_array", c_int, ctx, u32, c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)
        )
        self.export_bpf = fn("seccomp_export_bpf", c_int, ctx, c_int)
        v = fn("seccomp_version", ctypes.POINTER(_Version))().contents
        self.version = f"{v.major}.{v.minor}.{v.micro}"


@functools.cache
def _lib() -> _Lib:
    return _Lib()


# ---------------------------------------------------------------- the compiler

# <linux/filter.h>, <linux/bpf_common.h>: the few classic BPF instructions of the
# ENOSYS stub. A program is an array of struct sock_filter {u16 code; u8 jt, jf; u32 k}.
_INSN = struct.Struct("=HBBI")
_LD_W_ABS, _JA, _JEQ_K, _JGT_K, _JSET_K, _RET_K = 0x20, 0x05, 0x15, 0x25, 0x45, 0x06
# struct seccomp_data: the syscall number, then the AUDIT_ARCH_* of the calling ABI
_NR_OFFSET, _ARCH_OFFSET = 0, 4
# <linux/audit.h>; x32 shares x86_64's AUDIT_ARCH and marks its numbers with bit 30
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000
# libseccomp's token of x32 (every other token is the architecture's AUDIT_ARCH_*)
_SCMP_ARCH_X32 = 0x4000003E
_SCMP_ARCH_S390, _SCMP_ARCH_S390X = 0x16, 0x80000016
#: the kernel's limit on a filter's length (BPF_MAXINSNS)
_MAX_INSNS = 4096
_ALLOW_LIKE = (Action.ALLOW, Action.LOG, Action.TRACE)


def _action_code(action: Action, errno: int | None) -> int:
    code = _ACTION_CODES[action]
    if action in (Action.ERRNO, Action.TRACE):
        code |= _errno.EPERM if errno is None else errno
    return code


def _arches(profile: Profile) -> list[str]:
    """The SCMP_ARCH names to filter besides the native one (which seccomp_init adds)."""
    if profile.architectures:
        return list(profile.architectures)
    native = _MACHINES.get(os.uname().machine, ("", ""))[0]
    for main, subs in profile.arch_map:
        if main == native:
            return [main, *subs]
    return []


def _conditions(rule: SyscallRule) -> list[tuple[ArgRule, ...]]:
    """The argument conditions of one libseccomp rule each: all of them in one rule,
    unless two test the same argument (libseccomp refuses that): then, as runc does,
    one rule per condition."""
    indexes = [a.index for a in rule.args]
    if len(set(indexes)) == len(indexes):
        return [rule.args]
    return [(a,) for a in rule.args]


def compile_profile(profile: Profile, capabilities: Iterable[str]) -> bytes:
    """The BPF program of ``profile`` for a container with ``capabilities`` on this
    machine: an array of ``struct sock_filter`` (8 bytes each), for
    ``_linux.seccomp_filter_call``. Compiled once per (profile, capabilities) in a
    process, then served from a cache; the filter is never installed here.

    Raises:
        SeccompUnavailableError: libseccomp cannot be loaded.
        SpecError: libseccomp refuses the profile (an architecture or action it does
            not know, a rule), or its program is too long for the kernel; the message
            names the profile.
    """
    return _compile_cached(profile, _capabilities(capabilities))


@functools.lru_cache(maxsize=32)
def _compile_cached(profile: Profile, caps: frozenset[str], tree_from: int = _TREE_FROM_RULES) -> bytes:
    lib = _lib()
    rules = effective_rules(profile, caps)
    default = _action_code(profile.default_action, profile.default_errno)
    ctx = lib.init(default)
    if not ctx:
        raise SpecError(
            f"{profile.source}: libseccomp {lib.version} does not support defaultAction "
            f"{profile.default_action.value}"
        )
    try:
        tokens = _add_arches(lib, ctx, profile)
        # Only seccomp_load reads it (we export, never load): set so that this context
        # can never turn on no_new_privs behind the runtime's back, which decides it.
        lib.attr_set(ctx, _FLTATR_CTL_NNP, 0)
        count = _add_rules(lib, ctx, profile, rules, default)
        if count >= tree_from:
            # A binary tree of syscall numbers: ~20 instructions run per syscall
            # instead of up to ~600 along a list. Before 2.5 libseccomp refuses the
            # attribute: the list then.
            lib.attr_set(ctx, _FLTATR_CTL_OPTIMIZE, 2)
        program = _export(lib, ctx, profile)
    finally:
        lib.release(ctx)
    if profile.default_action not in _ALLOW_LIKE:
        program = _enosys_stub(lib, tokens, rules) + program
    if len(program) // _INSN.size > _MAX_INSNS:
        raise SpecError(
            f"{profile.source}: compiles to {len(program) // _INSN.size} BPF instructions, "
            f"more than the kernel's limit of {_MAX_INSNS}"
        )
    return program


def _add_arches(lib: _Lib, ctx: int, profile: Profile) -> list[int]:
    tokens = [lib.arch_native()]
    for name in _arches(profile):
        token = lib.arch_resolve_name(name.removeprefix("SCMP_ARCH_").lower().encode())
        if not token:
            raise SpecError(f"{profile.source}: libseccomp {lib.version} does not know architecture {name}")
        rc = lib.arch_add(ctx, token)
        if rc == -_errno.EEXIST:  # the native one, added by seccomp_init
            continue
        if rc < 0:
            raise SpecError(f"{profile.source}: cannot filter architecture {name}: {os.strerror(-rc)}")
        tokens.append(token)
    return tokens


def _add_rules(lib: _Lib, ctx: int, profile: Profile, rules: Iterable[SyscallRule], default: int) -> int:
    count = 0
    for rule in rules:
        action = _action_code(rule.action, rule.errno)
        if action == default:
            continue  # libseccomp refuses a rule that does what the default does
        for name in rule.names:
            nr = lib.resolve_name(name.encode())
            if nr == _NR_SCMP_ERROR:
                continue  # unknown to this libseccomp: docker skips it too
            for conditions in _conditions(rule):
                array = (_ArgCmp * max(len(conditions), 1))(
                    *(_ArgCmp(a.index, _COMPARE_CODES[a.op], a.value, a.value_two) for a in conditions)
                )
                rc = lib.rule_add_array(ctx, action, nr, len(conditions), array)
                if rc < 0:
                    raise SpecError(
                        f"{profile.source}: libseccomp {lib.version} refuses the rule "
                        f"{rule.action.value} for {name}: {os.strerror(-rc)}"
                    )
                count += 1
    return count


def _export(lib: _Lib, ctx: int, profile: Profile) -> bytes:
    # libseccomp 2.5 exports only to an fd: a memfd, which needs no reader thread
    # (a pipe would fill past 64 KiB) and touches no filesystem.
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        rc = lib.export_bpf(ctx, fd)
        if rc < 0:
            raise SpecError(f"{profile.source}: libseccomp cannot export the filter: {os.strerror(-rc)}")
        return os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)


def _enosys_stub(lib: _Lib, tokens: list[int], rules: Iterable[SyscallRule]) -> bytes:
    """Instructions to put before the program: on each filtered ABI, a syscall whose
    number is above every syscall the profile names returns ENOSYS.

    Why: the profile cannot list a syscall newer than itself, and EPERM for one makes
    the C library fail where ENOSYS makes it fall back to the older call it replaces
    (fchmodat2 -> fchmodat, clone3 -> clone). runc does the same for docker.
    """
    names = {name for rule in rules for name in rule.names}
    # the highest number per ABI; x32's keep their marking bit
    highest: dict[int, int] = {}
    for token in tokens:
        if token in (_SCMP_ARCH_S390, _SCMP_ARCH_S390X):
            continue  # s390 multiplexes unknown numbers through syscall 0: no plain bound
        numbers = [lib.resolve_name_arch(token, n.encode()) for n in names]
        known = [nr for nr in numbers if nr >= 0]
        if known:
            highest[token] = max(known)
    if not highest:
        return b""
    # One section per AUDIT_ARCH: load the arch, skip to the next section unless it is
    # this one, load the number, jump to ENOSYS if it is above the highest, else to
    # the filter. Labels are resolved to relative jumps at the end.
    program: list[tuple[int, int | str, int | str, int | str]] = []  # code, jt, jf, k
    labels: dict[str, int] = {}

    def emit(code: int, k: int | str = 0, jt: int | str = 0, jf: int | str = 0) -> None:
        program.append((code, jt, jf, k))

    def bound(top: int | None) -> None:
        if top is None:
            emit(_JA, k="filter")
        else:
            emit(_JGT_K, k=top, jt="enosys", jf="filter")

    x86_64 = {t: n for t, n in highest.items() if t == _AUDIT_ARCH_X86_64 or t == _SCMP_ARCH_X32}
    sections: list[tuple[int, int | None, int | None]] = []
    if x86_64:
        sections.append((_AUDIT_ARCH_X86_64, x86_64.get(_AUDIT_ARCH_X86_64), x86_64.get(_SCMP_ARCH_X32)))
    sections += [(t, n, None) for t, n in highest.items() if t not in x86_64]
    for i, (audit_arch, top, x32_top) in enumerate(sections):
        emit(_LD_W_ABS, k=_ARCH_OFFSET)
        emit(_JEQ_K, k=audit_arch, jf=f"section{i + 1}")
        emit(_LD_W_ABS, k=_NR_OFFSET)
        if audit_arch == _AUDIT_ARCH_X86_64:
            emit(_JSET_K, k=_X32_SYSCALL_BIT, jt=f"x32_{i}")
            bound(top)
            labels[f"x32_{i}"] = len(program)
            bound(x32_top)
        else:
            bound(top)
        labels[f"section{i + 1}"] = len(program)
    emit(_JA, k="filter")  # no section's ABI: the filter decides (its bad-arch action)
    labels["enosys"] = len(program)
    emit(_RET_K, k=_action_code(Action.ERRNO, _errno.ENOSYS))
    labels["filter"] = len(program)

    def resolve(x: int | str, pc: int) -> int:
        return labels[x] - pc - 1 if isinstance(x, str) else x  # jumps are relative to the next

    out = bytearray()
    for pc, (code, jt, jf, k) in enumerate(program):
        out += _INSN.pack(code, resolve(jt, pc), resolve(jf, pc), resolve(k, pc))
    return bytes(out)


# ---------------------------------------------------------------- a filter in two parts
#
# Loading a filter costs the kernel ~0.25 us per instruction (checking it, converting
# it to eBPF, compiling it): docker's default profile, 1258 instructions for x86_64
# and its 32-bit ABIs, took ~320 us per container on a 2-core VM, a fifth of the
# throughput of /bin/true containers. A filter a process has is inherited by every
# child it clones, for free. So a spawn helper can load, once, a *base* program: the
# profile, except that it also allows the calls the child itself makes between
# clone and exec that the profile refuses (SETUP_CALLS: mounts, pivot_root, namespace
# calls, keyctl); every child then loads only a small *closing* program that refuses
# those calls again, with the profile's own action. Filters stack and the strictest
# action wins, so base and closing together are exactly the profile.

#: the calls of the spawn helper and of a child before its exec that docker's default
#: profile refuses without CAP_SYS_ADMIN (clone3: ENOSYS)
SETUP_CALLS = (
    "clone3",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "mount_setattr",
    "sethostname",
    "keyctl",
)


def split_programs(profile: Profile, capabilities: Iterable[str]) -> tuple[bytes, bytes] | None:
    """``(base, closing)`` programs whose stack is ``profile`` for a container with
    ``capabilities`` (see above), or None when the profile decides a setup call by
    its arguments (then only the whole program can be had).

    Raises:
        SeccompUnavailableError, SpecError: as ``compile_profile``.
    """
    return _split_cached(profile, _capabilities(capabilities))


@functools.lru_cache(maxsize=8)
def _split_cached(profile: Profile, caps: frozenset[str]) -> tuple[bytes, bytes] | None:
    setup = frozenset(SETUP_CALLS)
    rules = effective_rules(profile, caps)
    closing: list[SyscallRule] = []
    for name in SETUP_CALLS:
        deciding = [r for r in rules if name in r.names]
        if any(r.args for r in deciding) or len(deciding) > 1:
            return None
        rule = deciding[0] if deciding else None
        action = rule.action if rule is not None else profile.default_action
        errno = rule.errno if rule is not None else profile.default_errno
        if action not in _ALLOW_LIKE:
            closing.append(SyscallRule(names=(name,), action=action, errno=errno))
    kept = []
    for rule in rules:
        names = tuple(n for n in rule.names if n not in setup)
        if names:
            kept.append(dataclasses.replace(rule, names=names, includes=When(), excludes=When()))
    kept.append(SyscallRule(names=SETUP_CALLS, action=Action.ALLOW))
    base = dataclasses.replace(profile, syscalls=tuple(kept), source=f"{profile.source} (base)")
    close = dataclasses.replace(
        profile,
        default_action=Action.ALLOW,
        default_errno=None,
        syscalls=tuple(closing),
        source=f"{profile.source} (closing)",
    )
    # The closing program as a tree even though it is short: each child loads it, and
    # the kernel then runs it once for every syscall the base allows, on each ABI, to
    # find those it allows whatever their arguments (the filter's action cache): ~20
    # instructions down the list for most, ~8 down the tree (66 us to load, not 80).
    return _compile_cached(base, caps), _compile_cached(close, caps, tree_from=1)
