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
import os
import struct

# What typing.TYPE_CHECKING is, without importing typing (see spawn.py).
TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable

    #: the raw calls as (function, arguments, the call as text for an error message)
    RawCall = tuple[Callable[..., int], tuple[object, ...], str]

# <linux/sched.h>
CLONE_NEWTIME = 0x00000080
CLONE_VM = 0x00000100
CLONE_FS = 0x00000200
CLONE_FILES = 0x00000400
CLONE_PIDFD = 0x00001000
CLONE_PARENT = 0x00008000
CLONE_NEWNS = 0x00020000
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
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2
# <linux/mount.h>, <linux/fcntl.h>: mount_setattr(2)
MOUNT_ATTR_RDONLY = 0x00000001
AT_RECURSIVE = 0x8000
AT_FDCWD = -100

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15

# <asm-generic/ioctls.h>, <linux/sockios.h>, <net/if.h>
TIOCSCTTY = 0x540E
TIOCGWINSZ = 0x5413
TIOCSWINSZ = 0x5414
TIOCSPTLCK = 0x40045431
TIOCGPTN = 0x80045430
SIOCGIFFLAGS = 0x8913
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
        "bpf": 321,
    },
    "aarch64": {
        "clone3": 435,
        "close_range": 436,
        "pivot_root": 41,
        "setns": 268,
        "unshare": 97,
        "mount_setattr": 442,
        "bpf": 280,
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


def _raise(call: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{call} failed: {os.strerror(err)}")


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


def mount_setattr_rdonly(path: str, recursive: bool = True) -> None:
    """Make the mount at ``path`` (and, with ``recursive``, every mount below it)
    read-only: mount_setattr(2), Linux 5.12; ENOSYS on older kernels."""
    attr = MountAttr(attr_set=MOUNT_ATTR_RDONLY)
    flags = AT_RECURSIVE if recursive else 0
    r = _syscall(
        ctypes.c_long(NR["mount_setattr"]),
        ctypes.c_int(AT_FDCWD),
        _b(path),
        ctypes.c_uint(flags),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    if r != 0:
        _raise(f"mount_setattr({path!r}, MOUNT_ATTR_RDONLY, {'AT_RECURSIVE' if recursive else 0})")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2)."""
    if _syscall(ctypes.c_long(NR["setns"]), ctypes.c_long(fd), ctypes.c_long(nstype)) != 0:
        _raise(f"setns({fd}, {nstype:#x})")


def prctl(option: int, arg2: int = 0) -> None:
    """prctl(2) with one argument."""
    if _prctl(option, arg2, 0, 0, 0) != 0:
        _raise(f"prctl({option}, {arg2})")


def set_pdeathsig(sig: int) -> None:
    """Ask the kernel to send ``sig`` to us when our parent thread exits."""
    prctl(PR_SET_PDEATHSIG, sig)


def close_range_cloexec(first: int) -> None:
    """Mark every fd >= first close-on-exec (close_range(2), Linux 5.11)."""
    r = _syscall(
        ctypes.c_long(NR["close_range"]),
        ctypes.c_uint(first),
        ctypes.c_uint(0xFFFFFFFF),
        ctypes.c_uint(CLOSE_RANGE_CLOEXEC),
    )
    if r != 0:
        _raise(f"close_range({first}, ~0, CLOSE_RANGE_CLOEXEC)")


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
_errno_location = _raw.__errno_location
_errno_location.restype = ctypes.c_void_p


def errno_now() -> int:
    """errno of this thread, as the last raw call left it."""
    return ctypes.c_int.from_address(_errno_location()).value


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
