"""Every ctypes call of the project, in one place.

Each wrapper declares its argument types and turns a failure into an ``OSError``
whose message names the call and its arguments (``mount('proc', '/proc', ...)``),
so an error read on a terminal says what failed on what. Constants cite the kernel
header they come from. Where the standard library has the call (``os.pidfd_open``,
``os.waitid``, ``signal.pidfd_send_signal``) we use that. The child's calls between
clone and exec are the exception: raw calls (see below).
"""

from __future__ import annotations

import _socket  # socket's C core: socket.py loads enum, selectors and more (see spawn)
import ctypes
import errno
import os
import struct

# What typing.TYPE_CHECKING is, without importing typing (see spawn.py).
TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable

    #: the raw calls as (function, arguments, the call as text for an error message)
    RawCall = tuple[Callable[..., int], tuple[object, ...], str]

# <linux/sched.h>
CLONE_PIDFD = 0x00001000
CLONE_PARENT = 0x00008000
CLONE_NEWNS = 0x00020000
CLONE_NEWTIME = 0x00000080
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_INTO_CGROUP = 0x200000000

# <sys/mount.h> / <linux/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2
# <linux/mount.h>, <linux/fcntl.h>: mount_setattr(2)
MOUNT_ATTR_RDONLY = 0x00000001
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
AT_FDCWD = -100

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_DUMPABLE = 4

# <linux/seccomp.h>
SECCOMP_SET_MODE_FILTER = 1

# <asm-generic/ioctls.h>, <linux/sockios.h>, <net/if.h>
TIOCSCTTY = 0x540E
TIOCGWINSZ = 0x5413
TIOCSWINSZ = 0x5414
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

# <linux/close_range.h>
CLOSE_RANGE_CLOEXEC = 1 << 2

# <bits/waitflags.h>: a child whose exit signal is not SIGCHLD (ours: 0, needed by
# CLONE_PARENT) is a "clone" child, and waitid only sees it with __WALL or __WCLONE.
WALL = 0x40000000

# <linux/bpf.h>: the bpf(2) commands, program and attach types that device confinement uses
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_OVERRIDE = 1 << 0
BPF_F_ALLOW_MULTI = 1 << 1

# <asm/unistd_64.h> (x86_64; aarch64 shares the generic numbers below)
_SYSCALLS = {
    "x86_64": {
        "clone3": 435,
        "close_range": 436,
        "pivot_root": 155,
        "setns": 308,
        "unshare": 272,
        "mount_setattr": 442,
        "seccomp": 317,
        "bpf": 321,
        "keyctl": 250,
        "prlimit64": 302,
        "waitid": 247,
    },
    "aarch64": {
        "clone3": 435,
        "close_range": 436,
        "pivot_root": 41,
        "setns": 268,
        "unshare": 97,
        "mount_setattr": 442,
        "seccomp": 277,
        "bpf": 280,
        "keyctl": 219,
        "prlimit64": 261,
        "waitid": 95,
    },
}
NR = _SYSCALLS.get(os.uname().machine, _SYSCALLS["x86_64"])

# The C library through the program's own symbols (dlopen(NULL)): ctypes.util's
# find_library would load shutil, tempfile, bz2 and lzma into the spawn helper, and
# every clone copies the page tables of all it has mapped. syscall(2) for the calls
# glibc has no wrapper for, through PyDLL (the GIL kept: they are quick).
_pylibc = ctypes.PyDLL(None, use_errno=True)
_libc = ctypes.CDLL(None, use_errno=True)

_syscall = _pylibc.syscall
_syscall.restype = ctypes.c_long

_mount = _libc.mount
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_mount.restype = ctypes.c_int
_umount2 = _libc.umount2
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_umount2.restype = ctypes.c_int
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int


def os_error(call: str, err: int) -> OSError:
    """The OSError of a failed call, naming it: ``"{call} failed: {strerror}"``."""
    return OSError(err, f"{call} failed: {os.strerror(err)}")


def _raise(call: str) -> None:
    raise os_error(call, ctypes.get_errno())


def _b(s: str | bytes | None) -> bytes | None:
    return os.fsencode(s) if s is not None else None


def mount(
    source: str | None,
    target: str,
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """mount(2); raises OSError naming the call and its arguments."""
    if _mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        _raise(f"mount({source!r}, {target!r}, {fstype!r}, {flags:#x}, {data!r})")


def umount(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    if _umount2(_b(target), flags) != 0:
        _raise(f"umount2({target!r}, {flags})")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2) (glibc has no wrapper)."""
    if _syscall(ctypes.c_long(NR["pivot_root"]), _b(new_root), _b(put_old)) != 0:
        _raise(f"pivot_root({new_root!r}, {put_old!r})")


def unshare(flags: int) -> None:
    """unshare(2): ``os.unshare`` only exists from Python 3.12."""
    if _syscall(ctypes.c_long(NR["unshare"]), ctypes.c_long(flags)) != 0:
        _raise(f"unshare({flags:#x})")


class MountAttr(ctypes.Structure):
    """struct mount_attr, <linux/mount.h> (MOUNT_ATTR_SIZE_VER0: 32 bytes)."""

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr_rdonly_fd(fd: int, recursive: bool = True) -> None:
    """``mount_setattr_rdonly`` of the mount an open fd (O_PATH) is the root of."""
    attr = MountAttr(attr_set=MOUNT_ATTR_RDONLY)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    r = _syscall(
        ctypes.c_long(NR["mount_setattr"]),
        ctypes.c_int(fd),
        b"",
        ctypes.c_uint(flags),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    if r != 0:
        _raise(f"mount_setattr({fd}, '', MOUNT_ATTR_RDONLY, {'AT_RECURSIVE' if recursive else 0})")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2)."""
    if _syscall(ctypes.c_long(NR["setns"]), ctypes.c_long(fd), ctypes.c_long(nstype)) != 0:
        _raise(f"setns({fd}, {nstype:#x})")


# <linux/wait.h>
P_PIDFD = 3
#: siginfo_t (128 bytes): si_signo, si_errno, si_code, padding, then for SIGCHLD
#: si_pid, si_uid, si_status (<asm-generic/siginfo.h>, 64-bit)
_SIGINFO_CHLD = struct.Struct("=iiiiiIi")
#: struct rusage (<linux/resource.h>, 64-bit): ru_utime and ru_stime (timevals), then
#: 14 longs, ru_maxrss (KiB) the first
_RUSAGE = struct.Struct("=qqqqq")
_RUSAGE_SIZE = 144


def waitid_pidfd(pidfd: int, options: int) -> tuple[int, int, float, float, int]:
    """waitid(P_PIDFD, pidfd, ..., options, &rusage): ``os.waitid`` with what it
    leaves out, the child's rusage (it counts the descendants the child reaped).

    Returns:
        ``(si_code, si_status, user seconds, system seconds, max RSS in bytes)``;
        si_code 0 when ``WNOHANG`` found nothing to reap.

    Raises:
        OSError: naming the call (ECHILD: reaped already).
    """
    info = ctypes.create_string_buffer(128)
    usage = ctypes.create_string_buffer(_RUSAGE_SIZE)
    if _syscall(ctypes.c_long(NR["waitid"]), P_PIDFD, pidfd, info, options, usage) != 0:
        _raise(f"waitid(P_PIDFD, {pidfd}, {options:#x})")
    code, status = _SIGINFO_CHLD.unpack_from(info)[2::4]
    usec, uusec, ssec, susec, maxrss = _RUSAGE.unpack_from(usage)
    return code, status, usec + uusec / 1e6, ssec + susec / 1e6, maxrss * 1024


def prctl(option: int, arg2: int = 0) -> None:
    """prctl(2) with one argument."""
    if _prctl(option, arg2, 0, 0, 0) != 0:
        _raise(f"prctl({option}, {arg2})")


# ---------------------------------------------------------------- raw calls
#
# For the child between clone and exec (``init.prepare`` builds its calls from these).
# There, every Python object it touches costs a copy-on-write fault (~2 us): these
# functions have no argtypes and no errno capture, so that ctypes passes plain ints,
# bytes and None without making a single object, and PyDLL keeps the GIL (no lock
# traffic). They return -1 and leave errno set on failure: read it with ``errno_now``
# before any other call. Ints go as C ints (sign-extended: -1 is ~0 for an unsigned
# argument); pointers only as bytes or ctypes objects.
_raw = ctypes.PyDLL(None)
raw_mount = _raw.mount
raw_prctl = _raw.prctl
raw_setsid = _raw.setsid
raw_dup2 = _raw.dup2
raw_fcntl = _raw.fcntl
raw_close = _raw.close
raw_chdir = _raw.chdir
raw_sethostname = _raw.sethostname
raw_execve = _raw.execve
raw_syscall = _raw.syscall
raw_ioctl = _raw.ioctl
raw_access = _raw.access
raw_poll = _raw.poll
_errno_location = _raw.__errno_location
_errno_location.restype = ctypes.c_void_p


# <linux/keyctl.h>
KEYCTL_JOIN_SESSION_KEYRING = 1
# <linux/nsfs.h>: _IO(0xb7, 0x3), the CLONE_NEW* type of a namespace file
NS_GET_NSTYPE = 0xB703
# <poll.h>
POLLIN = 1


def pollfd_in(fd: int) -> ctypes.Array[ctypes.c_char]:
    """A ``struct pollfd`` asking whether ``fd`` is readable (for ``raw_poll``)."""
    return ctypes.create_string_buffer(struct.pack("ihh", fd, POLLIN, 0), 8)


def errno_now() -> int:
    """errno of this thread, as the last raw call left it."""
    return ctypes.c_int.from_address(_errno_location()).value


def set_errno(value: int) -> None:
    """Set errno (to hand on the error of an earlier raw call)."""
    ctypes.c_int.from_address(_errno_location()).value = value


def setns_call(fd: int, nstype: int) -> RawCall:
    """setns(2) as a raw call."""
    return raw_syscall, (NR["setns"], fd, nstype), f"setns({fd}, {nstype:#x})"


def close_range_cloexec_call(first: int) -> RawCall:
    """``close_range_cloexec`` as a raw call."""
    return (
        raw_syscall,
        (NR["close_range"], first, -1, CLOSE_RANGE_CLOEXEC),
        f"close_range({first}, ~0, CLOSE_RANGE_CLOEXEC)",
    )


def no_new_privs_call() -> RawCall:
    """prctl(PR_SET_NO_NEW_PRIVS, 1) as a raw call: execve grants no privilege from
    then on (setuid bits, file capabilities), and seccomp filters load without
    CAP_SYS_ADMIN."""
    return raw_prctl, (PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS, 1)"


class SockFprog(ctypes.Structure):
    """struct sock_fprog, <linux/filter.h>: a BPF program's length in instructions
    and where it is. ``filter`` is a c_char_p so that the structure, assigned the
    program's bytes, keeps them alive (in its ``_objects``) and points at them
    without a copy."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def seccomp_filter_call(program: bytes, flags: int = 0) -> RawCall:
    """seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog) as a raw call, for a program
    from ``seccomp.compile_profile``. Build it in the parent, before the clone: the
    call's arguments hold the ``SockFprog``, which holds the program, for as long as
    the call is kept. Without no_new_privs the kernel requires CAP_SYS_ADMIN."""
    if not program or len(program) % 8:
        raise ValueError(
            f"a BPF program is a non-empty array of 8-byte instructions, not {len(program)} bytes"
        )
    fprog = SockFprog(len(program) // 8, program)
    return (
        raw_syscall,
        (NR["seccomp"], SECCOMP_SET_MODE_FILTER, flags, ctypes.byref(fprog)),
        f"seccomp(SECCOMP_SET_MODE_FILTER, {flags:#x}, <{len(program) // 8} instructions>)",
    )


def prlimit_call(resource: int, soft: int, hard: int) -> RawCall:
    """prlimit64(0, resource, {soft, hard}, NULL) as a raw call: this process's
    limit (``RLIM64_INFINITY`` for unlimited). Raising a hard limit needs
    CAP_SYS_RESOURCE in the initial user namespace."""
    limit = (ctypes.c_uint64 * 2)(soft, hard)
    return (
        raw_syscall,
        (NR["prlimit64"], 0, resource, limit, None),
        f"prlimit64(0, {resource}, {{{soft}, {hard}}}, NULL)",
    )


def c_string_array(items: tuple[bytes, ...]) -> ctypes.Array[ctypes.c_char_p]:
    """A NULL-terminated ``char *[]`` (execve's argv and envp) for a raw call."""
    return (ctypes.c_char_p * (len(items) + 1))(*items, None)


#: struct clone_args, <linux/sched.h> (CLONE_ARGS_SIZE_VER2: 88 bytes): flags, pidfd,
#: child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup
_CLONE_ARGS = struct.Struct("=11Q")
CLONE_ARGS_SIZE = _CLONE_ARGS.size
NR_CLONE3 = NR["clone3"]


def clone3_args(flags: int, exit_signal: int = 0, cgroup_fd: int = -1) -> tuple[bytes, ctypes.c_int]:
    """clone3(2)'s arguments with CLONE_PIDFD (and CLONE_INTO_CGROUP for a
    cgroup_fd): the struct, and where the kernel writes the pidfd."""
    pidfd = ctypes.c_int(-1)
    if cgroup_fd >= 0:
        flags |= CLONE_INTO_CGROUP
    packed = _CLONE_ARGS.pack(
        flags | CLONE_PIDFD, ctypes.addressof(pidfd), 0, 0, exit_signal, 0, 0, 0, 0, 0, max(cgroup_fd, 0)
    )
    return packed, pidfd


def raw_clone3(args: bytes) -> int:
    """clone3(2) with ``clone3_args``, fork-style (no new stack), as a raw call: the
    child's pid in the parent, 0 in the child, -1 and errno on failure.

    Only safe in a single-threaded process: the child is a copy of this interpreter,
    and a lock held by another thread at the instant of the clone would stay held
    forever. The interpreter's fork bookkeeping (PyOS_BeforeFork and friends) is
    skipped on both sides: with one thread there are no other threads' states to
    drop or locks to reset, and the child only sets up namespaces and execs.
    """
    return raw_syscall(NR_CLONE3, args, CLONE_ARGS_SIZE)


IFF_LOOPBACK = 0x8
_LO_UP = struct.pack("16sH14x", b"lo", IFF_UP | IFF_LOOPBACK)
_INET_DGRAM_CLOEXEC = (_socket.AF_INET, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC, 0)
_raw_socket = _raw.socket


def raw_loopback_up() -> int:
    """Bring up ``lo`` of a network namespace that was just created, in one ioctl:
    0, or -1 with errno set (a raw call, for the child).

    A raw socket and a prebuilt ``ifreq`` instead of a socket object and a
    read-modify-write of the flags: between clone and exec every Python object
    touched costs a copy-on-write fault. A fresh ``lo`` has exactly IFF_LOOPBACK set,
    so writing IFF_UP | IFF_LOOPBACK loses nothing.
    """
    fd = _raw_socket(*_INET_DGRAM_CLOEXEC)
    if fd < 0:
        return -1
    result = raw_ioctl(fd, SIOCSIFFLAGS, _LO_UP)
    raw_close(fd)  # leaves errno alone when it succeeds
    return result


def loopback_up() -> None:
    """``raw_loopback_up`` raising OSError."""
    if raw_loopback_up() != 0:
        err = errno_now()
        raise OSError(err, f"bring up lo (socket, ioctl SIOCSIFFLAGS) failed: {os.strerror(err)}")


def get_winsize(fd: int) -> tuple[int, int] | None:
    """(rows, cols) of the terminal on fd, or None when fd is not a terminal."""
    import fcntl  # here: the spawn helper has no use for it

    try:
        res = fcntl.ioctl(fd, TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None
    rows, cols = struct.unpack("HHHH", res)[:2]
    return rows, cols


def set_winsize(fd: int, rows: int, cols: int) -> None:
    """Set the window size of the terminal on fd (TIOCSWINSZ)."""
    import fcntl

    fcntl.ioctl(fd, TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


# ---------------------------------------------------------------- capabilities and identity
#
# The child's last steps before exec: capability sets, groups, gid and uid, as raw
# calls (see "raw calls" above) whose arguments are all made here, before the clone.

# <linux/prctl.h>
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
# <linux/capability.h>: 64-bit sets, in two struct __user_cap_data_struct
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# setgroups, setresgid and setresuid go to the kernel by number, not through glibc's
# wrappers. glibc applies a credential change to every thread of the process (POSIX
# says credentials are per process, Linux keeps them per thread): unless it believes
# the process single-threaded, it signals each thread it knows of (SIGSETXID) and
# waits for all of them. Our child is a raw clone3 copy of the spawn helper: glibc
# was told nothing of the clone, so its thread list and "single-threaded" flag are the
# helper's (the supervisor's, when it clones directly, where anyio may have started
# worker threads), with thread ids of the parent. The broadcast would then wait for
# threads that do not exist in the child, or signal the parent's. The child has one
# thread, so the bare syscall changes the whole process, which is what we want.
_ID_SYSCALLS = {
    "x86_64": {"setgroups": 116, "setresuid": 117, "setresgid": 119, "capset": 126},
    "aarch64": {"setgroups": 159, "setresuid": 147, "setresgid": 149, "capset": 91},
}
NR_ID = _ID_SYSCALLS.get(os.uname().machine, _ID_SYSCALLS["x86_64"])


def capbset_drop_call(cap: int) -> RawCall:
    """prctl(PR_CAPBSET_DROP, cap) as a raw call: take ``cap`` out of the bounding
    set (needs CAP_SETPCAP in the effective set)."""
    return raw_prctl, (PR_CAPBSET_DROP, cap, 0, 0, 0), f"prctl(PR_CAPBSET_DROP, {cap})"


def keepcaps_call(keep: bool) -> RawCall:
    """prctl(PR_SET_KEEPCAPS, keep) as a raw call."""
    return raw_prctl, (PR_SET_KEEPCAPS, int(keep), 0, 0, 0), f"prctl(PR_SET_KEEPCAPS, {int(keep)})"


def ambient_raise_call(cap: int) -> RawCall:
    """prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap) as a raw call (the capability
    must be permitted and inheritable)."""
    return (
        raw_prctl,
        (PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0),
        f"prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, {cap})",
    )


def ambient_clear_call() -> RawCall:
    """prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL) as a raw call."""
    return (
        raw_prctl,
        (PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0),
        "prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)",
    )


def capset_call(effective: int, permitted: int, inheritable: int = 0) -> RawCall:
    """capset(2) of this thread's three sets (64-bit masks) as a raw call.

    The header (version 3, pid 0: this thread) and the two data structs (caps 0-31,
    then 32-63) are ctypes buffers made here; the kernel writes to the header only
    when it refuses the version, and capset reads the data.
    """
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    low, high = 0xFFFFFFFF, 32
    data = (ctypes.c_uint32 * 6)(
        effective & low,
        permitted & low,
        inheritable & low,
        effective >> high & low,
        permitted >> high & low,
        inheritable >> high & low,
    )
    text = f"capset(effective={effective:#x}, permitted={permitted:#x}, inheritable={inheritable:#x})"
    return raw_syscall, (NR_ID["capset"], header, data), text


def setgroups_call(gids: tuple[int, ...]) -> RawCall:
    """setgroups(2) as a raw syscall (see ``_ID_SYSCALLS``); () clears the list."""
    array = (ctypes.c_uint32 * len(gids))(*gids) if gids else None
    return raw_syscall, (NR_ID["setgroups"], len(gids), array), f"setgroups({list(gids)})"


def setresgid_call(gid: int) -> RawCall:
    """setresgid(gid, gid, gid) as a raw syscall (see ``_ID_SYSCALLS``)."""
    return raw_syscall, (NR_ID["setresgid"], gid, gid, gid), f"setresgid({gid}, {gid}, {gid})"


def setresuid_call(uid: int) -> RawCall:
    """setresuid(uid, uid, uid) as a raw syscall (see ``_ID_SYSCALLS``)."""
    return raw_syscall, (NR_ID["setresuid"], uid, uid, uid), f"setresuid({uid}, {uid}, {uid})"


def cap_last_cap() -> int:
    """The highest capability number the running kernel knows."""
    with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
        return int(f.read())


#: every capability (a bounding set mask): what a process has in a user namespace it
#: creates or joins, whatever it had before
ALL_CAPS = (1 << 64) - 1
_bounding: int | None = None


def bounding_set() -> int:
    """This process's capability bounding set (a mask, bit N = capability N), read
    once with PR_CAPBSET_READ: it only ever shrinks, through ``drop_bounding``."""
    global _bounding
    if _bounding is None:
        held = 0
        for cap in range(min(cap_last_cap(), 63) + 1):
            if raw_prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1:
                held |= 1 << cap
        _bounding = held
    return _bounding


def drop_bounding(keep: int) -> None:
    """Take every capability not in ``keep`` out of this process's bounding set (needs
    CAP_SETPCAP). The bounding set limits what an execve or a capset may give, never
    the effective set a process holds: a spawn helper that serves one confinement
    drops its bounding set once, keeps working with every capability, and each of
    its children inherits the set already dropped (``identity_calls_before_seccomp``
    then has nothing left to drop: ~25 prctl calls, each a new set of credentials,
    fewer per container).

    Raises:
        OSError: the kernel refused a drop.
    """
    global _bounding
    held = bounding_set()
    for cap in range(64):
        if held >> cap & 1 and not keep >> cap & 1:
            if raw_prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise os_error(f"prctl(PR_CAPBSET_DROP, {cap})", errno_now())
            held &= ~(1 << cap)
            _bounding = held


def identity_calls_before_seccomp(bounding: int, last_cap: int, held: int = ALL_CAPS) -> list[RawCall]:
    """The child's capability calls that come before a seccomp filter is loaded.

    Args:
        bounding: the container's bounding set (a mask, bit N = capability N).
        last_cap: the kernel's last capability (``cap_last_cap()``, which the
            supervisor reads once: ``capabilities.last_cap()``): every capability
            up to it that is not in ``bounding`` is dropped...
        held: ... unless the child's bounding set lacks it already when these calls
            run (``bounding_set()`` of its cloner, or every capability if it
            entered a user namespace first).

    A seccomp filter loaded next still has CAP_SYS_ADMIN, if the supervisor had it:
    the bounding set limits what an execve or a capset may give, not what the
    effective set holds now. See ``identity_calls_after_seccomp`` for the order.
    """
    drop = held & ~bounding
    calls = [capbset_drop_call(cap) for cap in range(min(last_cap, 63) + 1) if drop >> cap & 1]
    calls.append(keepcaps_call(True))
    return calls


def identity_calls_after_seccomp(
    effective: int,
    permitted: int,
    uid: int,
    gid: int,
    groups: tuple[int, ...] | None,
    pdeathsig: int = 0,
    inheritable: int = 0,
    ambient: int = 0,
) -> list[RawCall]:
    """The child's identity and capability calls after the seccomp filter, in order
    (``groups`` None: no setgroups, which a user namespace with one mapped id refuses).

    The order is runc's (libcontainer/init_linux.go, finalizeNamespace and
    setupUser), and each step needs what the later ones take away:

    before the filter (``identity_calls_before_seccomp``):
      1. PR_CAPBSET_DROP for each capability outside the bounding set: needs
         CAP_SETPCAP in the effective set, which steps 5 and 7 remove.
      2. PR_SET_KEEPCAPS 1: so that step 5, when the uid becomes non-zero, keeps
         the permitted set (the kernel would clear it); step 7 then sets exactly
         the sets asked for, whatever the uid.
    then:
      3. setgroups: needs CAP_SETGID, gone from the effective set after step 5
         for a non-root uid. It comes first so that no moment runs with the new
         gid but the supervisor's supplementary groups.
      4. setresgid: needs CAP_SETGID as well, so before step 5.
      5. setresuid: the last identity change (for a non-root uid the kernel clears
         the effective set here; KEEPCAPS kept the permitted one).
      6. PR_SET_KEEPCAPS 0: nothing later should keep capabilities over a uid
         change (execve clears the flag too; runc clears it explicitly).
      7. capset: effective, permitted, and the inheritable set (empty but for an
         OCI config that asks for one). Last, because
         it removes CAP_SETUID, CAP_SETGID and CAP_SETPCAP that 1 to 5 need. For
         root, execve then makes the permitted and effective sets the bounding set
         (root's programs count as having every file capability); for another uid
         they become empty unless the program has file capabilities or is setuid.
      8. PR_CAP_AMBIENT_CLEAR_ALL: ambient capabilities would survive the execve
         even into a non-root, non-setuid program. Step 7 already empties them (an
         ambient capability must be permitted and inheritable); this says it.
         Then each capability of ``ambient`` is raised (an OCI config's ambient set,
         which execve keeps for a program without file capabilities).
      9. PR_SET_PDEATHSIG again (if ``pdeathsig``): the kernel forgets the parent
         death signal when the effective uid or gid changes (steps 4 and 5).

    The seccomp filter must allow setgroups, setresgid, setresuid, prctl and capset
    (docker's default profile does).
    """
    calls = [setgroups_call(groups)] if groups is not None else []
    calls += [
        setresgid_call(gid),
        setresuid_call(uid),
        keepcaps_call(False),
        capset_call(effective, permitted, inheritable),
        ambient_clear_call(),
    ]
    calls += [ambient_raise_call(cap) for cap in range(64) if ambient >> cap & 1]
    if pdeathsig:
        rearm = (PR_SET_PDEATHSIG, pdeathsig, 0, 0, 0)
        calls.append((raw_prctl, rearm, f"prctl(PR_SET_PDEATHSIG, {pdeathsig})"))
    return calls


# ---------------------------------------------------------------- openat2
#
# <linux/openat2.h>: how a path inside a container's root filesystem is opened from
# the host without a symlink or ".." taking it out of that root (SECURITY.md: docker
# cp, runc CVE-2021-30465).
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
NR_OPENAT2 = 437  # the same on x86_64 and aarch64 (it came after the tables were unified)


class OpenHow(ctypes.Structure):
    """struct open_how, <linux/openat2.h> (OPEN_HOW_SIZE_VER0: 24 bytes)."""

    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


def openat2(
    dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0, missing_ok: bool = False
) -> int:
    """openat2(2) (Linux 5.6, no glibc wrapper): a new fd, or OSError naming the call
    (``missing_ok``: -1 for ENOENT, with no exception made and raised).

    With ``RESOLVE_IN_ROOT``, ``path`` is resolved as if ``dirfd`` were ``/``: an
    absolute symlink or a ``..`` lands inside it, never above it. Unlike open(2),
    openat2 refuses unknown ``flags`` bits (EINVAL) instead of ignoring them.

    RESOLVE_IN_ROOT gives up (EAGAIN) when a rename or a mount anywhere on the host,
    in any mount namespace, raced with a ``..`` of the lookup: containers starting
    side by side make that happen. Another try sees the tree as it is now: up to
    ``_OPENAT2_TRIES`` are made.
    """
    how = OpenHow(flags=flags, mode=mode, resolve=resolve)
    for _attempt in range(_OPENAT2_TRIES):
        fd = _syscall(
            ctypes.c_long(NR_OPENAT2),
            ctypes.c_int(dirfd),
            _b(path),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err == errno.ENOENT and missing_ok:
            return -1
        if err != errno.EAGAIN or not resolve & RESOLVE_IN_ROOT:
            break
    _raise(f"openat2({dirfd}, {path!r}, {flags:#o}, {mode:#o}, resolve={resolve:#x})")
    raise AssertionError("unreachable")


#: how often ``openat2`` tries again after EAGAIN
_OPENAT2_TRIES = 32

# The same lookups for a child's masked and read-only paths, as raw calls (see "raw
# calls" above): the structs are made once, here, and a failure is -errno, not an
# exception. Measured in a forked child, docker's 17 paths took ~780 us through
# ``mounts.Kernel`` and ~450 us this way (of which ~235 us are the mounts).
_IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
_HOW_PATH = OpenHow(flags=os.O_PATH | os.O_CLOEXEC, resolve=_IN_ROOT)
_HOW_DIR = OpenHow(flags=os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY, resolve=_IN_ROOT)
_HOW_PATH_REF = ctypes.byref(_HOW_PATH)
_HOW_DIR_REF = ctypes.byref(_HOW_DIR)
_HOW_SIZE = ctypes.sizeof(OpenHow)
_RDONLY = MountAttr(attr_set=MOUNT_ATTR_RDONLY)
_RDONLY_REF = ctypes.byref(_RDONLY)
_RDONLY_SIZE = ctypes.sizeof(MountAttr)


def raw_open_in_root(dirfd: int, path: bytes, directory: bool) -> int:
    """``openat2(dirfd, path, O_PATH [| O_DIRECTORY], RESOLVE_IN_ROOT |
    RESOLVE_NO_MAGICLINKS)`` as ``openat2`` does it (EAGAIN tried again): the fd,
    or -errno."""
    how = _HOW_DIR_REF if directory else _HOW_PATH_REF
    for _attempt in range(_OPENAT2_TRIES):
        fd: int = raw_syscall(NR_OPENAT2, dirfd, path, how, _HOW_SIZE)
        if fd >= 0:
            return fd
        err = errno_now()
        if err != errno.EAGAIN:
            return -err
    return -errno.EAGAIN


def raw_make_read_only(fd: int) -> int:
    """mount_setattr(fd, "", AT_EMPTY_PATH, MOUNT_ATTR_RDONLY) of the mount ``fd``
    is the root of, that mount alone: 0, or -errno."""
    if raw_syscall(NR["mount_setattr"], fd, b"", AT_EMPTY_PATH, _RDONLY_REF, _RDONLY_SIZE) == 0:
        return 0
    return -errno_now()


# ---------------------------------------------------------------- bpf(2)
#
# union bpf_attr, <linux/bpf.h>, packed per command. The kernel takes a shorter attr
# than its own (it zero-fills the rest), so each command passes only the fields it
# uses; the few names below follow the header's.

#: BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level, log_size, log_buf,
#: kern_version, prog_flags, prog_name[16]
_PROG_LOAD = struct.Struct("=IIQQIIQII16s")
#: BPF_PROG_ATTACH / BPF_PROG_DETACH: target_fd, attach_bpf_fd, attach_type, attach_flags
_PROG_ATTACH = struct.Struct("=IIII")
#: BPF_PROG_QUERY: target_fd, attach_type, query_flags, attach_flags, prog_ids, prog_cnt
_PROG_QUERY = struct.Struct("=IIIIQI4x")

#: how much of a failed load's verifier log goes into the error (its end says why)
VERIFIER_LOG_TAIL = 2000


def _attr(packed: bytes) -> ctypes.Array[ctypes.c_char]:
    # exactly the struct's size (create_string_buffer would add a NUL to the length)
    return ctypes.create_string_buffer(packed, len(packed))


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    return int(_syscall(ctypes.c_long(NR["bpf"]), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr))))


def bpf_prog_load(prog_type: int, insns: bytes, license: str, name: str = "") -> int:
    """bpf(BPF_PROG_LOAD): load a program of 8-byte ``struct bpf_insn``; its fd
    (the kernel makes every bpf fd close-on-exec).

    The first try asks for no verifier log (writing one costs time on every load);
    only a failure is retried with a log, so that the error says why.

    Raises:
        OSError: naming the call, with the end of the verifier log when there is one.
    """
    lic = ctypes.create_string_buffer(license.encode())
    code = ctypes.create_string_buffer(insns, len(insns))
    count = len(insns) // 8

    def load(log: ctypes.Array[ctypes.c_char] | None) -> int:
        attr = _attr(
            _PROG_LOAD.pack(
                prog_type,
                count,
                ctypes.addressof(code),
                ctypes.addressof(lic),
                1 if log is not None else 0,
                len(log) if log is not None else 0,
                ctypes.addressof(log) if log is not None else 0,
                0,
                0,
                name.encode()[:15],
            )
        )
        return _bpf(BPF_PROG_LOAD, attr)

    fd = load(None)
    if fd >= 0:
        return fd
    err = ctypes.get_errno()
    log = ctypes.create_string_buffer(1 << 16)
    fd = load(log)
    if fd >= 0:  # a transient failure (ENOMEM, EAGAIN): the retry is as good as a load
        return fd
    text = log.value.decode(errors="replace").strip()
    if len(text) > VERIFIER_LOG_TAIL:
        text = "..." + text[-VERIFIER_LOG_TAIL:]
    what = f"bpf(BPF_PROG_LOAD, type {prog_type}, {count} insns, license {license!r})"
    detail = f"; verifier log: {'; '.join(text.splitlines())}" if text else ""
    raise OSError(err, f"{what} failed: {os.strerror(err)}{detail}")


def bpf_prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int = 0) -> None:
    """bpf(BPF_PROG_ATTACH): attach a loaded program to a cgroup directory fd (O_RDONLY;
    an O_PATH fd also works where the kernel looks it up with fdget_raw, as 6.18 does)."""
    attr = _attr(_PROG_ATTACH.pack(target_fd, prog_fd, attach_type, flags))
    if _bpf(BPF_PROG_ATTACH, attr) != 0:
        _raise(
            f"bpf(BPF_PROG_ATTACH, cgroup fd {target_fd}, prog fd {prog_fd}, type {attach_type}, "
            f"flags {flags:#x})"
        )


def bpf_prog_detach(target_fd: int, prog_fd: int, attach_type: int) -> None:
    """bpf(BPF_PROG_DETACH): detach one program from a cgroup directory fd."""
    attr = _attr(_PROG_ATTACH.pack(target_fd, prog_fd, attach_type, 0))
    if _bpf(BPF_PROG_DETACH, attr) != 0:
        _raise(f"bpf(BPF_PROG_DETACH, cgroup fd {target_fd}, prog fd {prog_fd}, type {attach_type})")


def bpf_prog_query(target_fd: int, attach_type: int, max_progs: int = 64) -> tuple[int, list[int]]:
    """bpf(BPF_PROG_QUERY): ``(attach flags, program ids)`` attached directly to a cgroup."""
    ids = (ctypes.c_uint32 * max_progs)()
    attr = _attr(_PROG_QUERY.pack(target_fd, attach_type, 0, 0, ctypes.addressof(ids), max_progs))
    if _bpf(BPF_PROG_QUERY, attr) != 0:
        _raise(f"bpf(BPF_PROG_QUERY, cgroup fd {target_fd}, type {attach_type})")
    _fd, _type, _qflags, flags, _ptr, count = _PROG_QUERY.unpack(attr.raw)
    return flags, list(ids[:count])


# ---------------------------------------------------------------- libnftables
#
# nftables' own library (Debian's libnftables1, which the nftables package brings):
# the JSON interface of ``nft -j -f -``, in this process. A transaction takes ~0.2 ms
# here against ~2.3 ms for an exec of nft (measured on the development machine), and
# a container on a network makes two. Loaded on first use only (never in the spawn
# helper, whose every mapped page each clone pays for).

#: <nftables/libnftables.h>: enum nft_output_flags NFT_CTX_OUTPUT_JSON
_NFT_CTX_OUTPUT_JSON = 1 << 4
_nft: ctypes.CDLL | None = None


def _libnftables() -> ctypes.CDLL:
    global _nft
    if _nft is None:
        lib = ctypes.CDLL("libnftables.so.1", use_errno=True)  # OSError when not installed
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_free.restype = None
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_output_set_flags.restype = None
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_int
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        _nft = lib
    return _nft


def nft_available() -> bool:
    """Whether libnftables can be loaded (the nftables package is installed)."""
    try:
        _libnftables()
    except OSError:
        return False
    return True


#: this process's libnftables context (and so its netlink socket), made on first use
#: and kept: closing an nftables socket after a transaction that deleted something
#: waits for the kernel to free it (an RCU grace period: ~10 ms a container here);
#: a socket kept open lets the kernel do that in the background
_nft_ctx: int | None = None
_nft_lock = None
_nft_fds: list[int] = []


def nft_fds() -> tuple[int, ...]:
    """The fds libnftables keeps open for this process (none may reach a container)."""
    return tuple(_nft_fds)


def nft_run(commands: str) -> str:
    """Run nftables commands as one transaction, in nft's JSON form (``{"nftables":
    [...]}``, what ``nft -j -f -`` reads) or else in its own syntax; return what nft
    prints (JSON). Thread-safe.

    Raises:
        OSError: libnftables is missing (ENOENT), or nft refused the commands (the
            message is nft's own first line, e.g. "Could not process rule: No such
            file or directory").
    """
    global _nft_ctx, _nft_lock
    try:
        lib = _libnftables()
    except OSError as e:
        raise OSError(2, f"libnftables.so.1 cannot be loaded ({e}): is nftables installed?") from None
    if _nft_lock is None:
        import threading

        _nft_lock = threading.Lock()
    with _nft_lock:
        if _nft_ctx is None:
            before = set(os.listdir("/proc/self/fd"))
            ctx = lib.nft_ctx_new(0)
            if not ctx:
                raise OSError(12, "nft_ctx_new() failed: out of memory")
            # libnftables opens its netlink socket without SOCK_CLOEXEC: no child may
            # inherit it (its fd is not in the API: it is the one that appeared)
            for fd in set(os.listdir("/proc/self/fd")) - before:
                try:
                    os.set_inheritable(int(fd), False)
                    _nft_fds.append(int(fd))
                except OSError:
                    pass  # the fd listdir used, closed already
            lib.nft_ctx_output_set_flags(ctx, _NFT_CTX_OUTPUT_JSON)
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            _nft_ctx = ctx
        ctx = _nft_ctx
        ctypes.set_errno(0)
        rc = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
        err = ctypes.get_errno()
        # each get_*_buffer call hands over what was buffered and starts anew
        output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        text = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace").strip()
    if rc != 0:
        first = text.splitlines()[0].split("Error: ", 1)[-1] if text else "failed"
        raise OSError(err or 22, f"nft: {first}")
    return output
