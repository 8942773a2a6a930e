"""Seccomp profiles: the parser, docker's default profile, the compiler (its BPF run
by a small interpreter here, without root), and real filters loaded in forked
children (root)."""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import os
import shutil
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor import _linux, seccomp
from supervisor.errors import SpecError
from supervisor.seccomp import DEFAULT_PROFILE, Action, ArgRule, Compare, Profile, SyscallRule, When

# ---------------------------------------------------------------- helpers

# <linux/seccomp.h>: the filter's return values
RET_KILL_THREAD = 0x00000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000
EPERM = RET_ERRNO | errno.EPERM
ENOSYS = RET_ERRNO | errno.ENOSYS
# <linux/audit.h>
AUDIT_ARCH_X86_64, AUDIT_ARCH_I386 = 0xC000003E, 0x40000003
X32_BIT = 0x40000000
X86_64 = os.uname().machine == "x86_64"
needs_x86_64 = pytest.mark.skipif(not X86_64, reason="syscall numbers and ABIs of x86_64")


def _have_libseccomp() -> bool:
    try:
        seccomp._lib()
    except seccomp.SeccompUnavailableError:
        return False
    return True


needs_libseccomp = pytest.mark.skipif(not _have_libseccomp(), reason="libseccomp2 is not installed")

# <linux/sched.h>, <linux/socket.h>
CLONE_NEWUSER, CLONE_NEWNET, SIGCHLD = 0x10000000, 0x40000000, 17
AF_INET, AF_ALG, AF_VSOCK, SOCK_STREAM = 2, 38, 40, 1

NO_CAPS: frozenset[str] = frozenset()
#: docker's default capabilities
DOCKER_CAPS = frozenset(
    "CAP_CHOWN CAP_DAC_OVERRIDE CAP_FSETID CAP_FOWNER CAP_MKNOD CAP_NET_RAW CAP_SETGID CAP_SETUID "
    "CAP_SETFCAP CAP_SETPCAP CAP_NET_BIND_SERVICE CAP_SYS_CHROOT CAP_KILL CAP_AUDIT_WRITE".split()
)


def nr(name: str, arch: int | None = None) -> int:
    """A syscall's number, as libseccomp knows it (native, or of an AUDIT_ARCH)."""
    lib = seccomp._lib()
    n = lib.resolve_name(name.encode()) if arch is None else lib.resolve_name_arch(arch, name.encode())
    assert n >= 0, name
    return n


def run_bpf(program: bytes, number: int, args: tuple[int, ...] = (), arch: int = AUDIT_ARCH_X86_64) -> int:
    """Run a seccomp program on one syscall, as the kernel would: its return value.

    The classic BPF instructions libseccomp and our stub emit: load a word of
    struct seccomp_data, AND, the conditional jumps, ja and ret; anything else fails.
    """
    data = struct.pack("=iIQ6Q", number, arch, 0, *(list(args) + [0] * 6)[:6])
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    a = pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:  # ld [k]
            a = struct.unpack_from("=I", data, k)[0]
        elif code == 0x54:  # and #k
            a &= k
        elif code == 0x05:  # ja
            pc += k
        elif code in (0x15, 0x25, 0x35, 0x45):  # jeq, jgt, jge, jset
            taken = {0x15: a == k, 0x25: a > k, 0x35: a >= k, 0x45: bool(a & k)}[code]
            pc += jt if taken else jf
        elif code == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"unexpected BPF instruction {code:#x} at {pc - 1}")


def allowed(rules: tuple[SyscallRule, ...]) -> set[str]:
    """Names a set of rules allows whatever the arguments."""
    return {n for r in rules if r.action is Action.ALLOW and not r.args for n in r.names}


def write_profile(tmp_path: Path, data: object, name: str = "profile.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


# A profile in docker's own shape (default.json): archMap, names, includes/excludes,
# argument rules, errnoRet, and keys the parser ignores (comment).
DOCKER_SHAPED = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": None},
    ],
    "syscalls": [
        {"names": ["read", "write", "exit_group", "no_such_syscall"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}],
        },
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["mount", "unshare"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
            "comment": "no namespaces",
            "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]},
        },
        {
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 38,
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        },
    ],
}


# ---------------------------------------------------------------- the parser


def test_parser_reads_dockers_shape(tmp_path: Path) -> None:
    path = write_profile(tmp_path, DOCKER_SHAPED)
    p = seccomp.load_profile(path)
    assert p.default_action is Action.ERRNO and p.default_errno == 1
    assert p.arch_map[0] == ("SCMP_ARCH_X86_64", ("SCMP_ARCH_X86", "SCMP_ARCH_X32"))
    assert p.arch_map[1] == ("SCMP_ARCH_RISCV64", ())
    assert p.syscalls[1].includes == When(min_kernel=(4, 8))
    assert p.syscalls[2].args == (ArgRule(0, Compare.NE, 40),)
    clone = p.syscalls[5]
    assert clone.args == (ArgRule(0, Compare.MASKED_EQ, 0x7E020000, 0),)
    assert clone.excludes == When(caps=frozenset({"CAP_SYS_ADMIN"}), arches=frozenset({"s390", "s390x"}))
    assert p.syscalls[6].action is Action.ERRNO and p.syscalls[6].errno == errno.ENOSYS
    assert str(path) in p.source


def test_parser_takes_an_oci_linux_seccomp_object() -> None:
    oci = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
        "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"name": "kill", "action": "SCMP_ACT_KILL_PROCESS"},
        ],
    }
    p = seccomp.parse_profile(oci, source="config.json linux.seccomp")
    assert p.architectures == ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86")
    assert p.syscalls == (
        SyscallRule(("mkdir",), Action.ERRNO, 13),
        SyscallRule(("kill",), Action.KILL_PROCESS),
    )
    assert p.load_flags == (1 << 1) | (1 << 2)
    assert DEFAULT_PROFILE.load_flags == 0


def test_profiles_are_immutable_and_hashable(tmp_path: Path) -> None:
    a = seccomp.load_profile(write_profile(tmp_path, DOCKER_SHAPED, "a.json"))
    b = seccomp.parse_profile(DOCKER_SHAPED, source="elsewhere")
    assert a == b and hash(a) == hash(b)  # the source takes no part
    assert len({a, b, DEFAULT_PROFILE}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.default_action = Action.ALLOW  # type: ignore[misc]


BAD_PROFILES = [
    ([1, 2], "must be a JSON object"),
    ({}, "defaultAction is missing"),
    ({"defaultAction": "SCMP_ACT_NOPE"}, "unknown action"),
    ({"defaultAction": 3}, "unknown action"),
    ({"defaultAction": "SCMP_ACT_NOTIFY"}, "SCMP_ACT_NOTIFY is not supported"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1}, "between 0 and 4095"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1}, "only goes with SCMP_ACT_ERRNO"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {"names": ["read"]}}, "syscalls must be a list"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": ["read"]}, "syscalls[0] must be an object"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}, "names no syscall"),
    (
        {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": "read", "action": "SCMP_ACT_ERRNO"}]},
        "names must be a list",
    ),
    (
        {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [""], "action": "SCMP_ACT_ERRNO"}]},
        "must be a non-empty string",
    ),
    (
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"name": "a", "names": ["b"], "action": "SCMP_ACT_LOG"}],
        },
        "both name and names",
    ),
    (
        {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"]}]},
        "syscalls[0].action: unknown action",
    ),
    (
        {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_KILL_ALL"}]},
        "unknown action",
    ),
    (
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5000}],
        },
        "between 0 and 4095",
    ),
    (
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "op": "SCMP_CMP_EQ"}]}
            ],
        },
        "args[0].index must be between 0 and 5",
    ),
    (
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "op": "SCMP_CMP_XX"}]}
            ],
        },
        "op must be one of",
    ),
    (
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {
                    "names": ["read"],
                    "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}],
                }
            ],
        },
        "value must be between 0 and",
    ),
    (
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {
                    "names": ["read"],
                    "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": 0, "value": 1.5, "op": "SCMP_CMP_EQ"}],
                }
            ],
        },
        "value must be an integer",
    ),
    (
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "four"}}],
        },
        'minKernel must look like "4.8"',
    ),
    (
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": "CAP_SYS_ADMIN"}}
            ],
        },
        "includes.caps must be a list",
    ),
    (
        {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]},
        "unknown architecture 'SCMP_ARCH_Z80'",
    ),
    (
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "archMap": [{"architecture": "SCMP_ARCH_X86_64"}],
        },
        "both architectures and archMap",
    ),
    ({"defaultAction": "SCMP_ACT_ALLOW", "archMap": [{"subArchitectures": []}]}, "architecture is missing"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NEW_LISTENER"]}, "is not supported"),
]


@pytest.mark.parametrize(("data", "words"), BAD_PROFILES)
def test_parser_refuses_bad_profiles(tmp_path: Path, data: object, words: str) -> None:
    path = write_profile(tmp_path, data)
    with pytest.raises(SpecError) as info:
        seccomp.load_profile(path)
    message = str(info.value)
    assert str(path) in message and words in message and "\n" not in message


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b'{"defaultAction": "SCMP_ACT_ALLOW",', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_load_profile_refuses_what_is_not_json(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(SpecError, match=words) as info:
        seccomp.load_profile(path)
    assert str(path) in str(info.value)


def test_load_profile_refuses_a_file_it_cannot_read(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.json", tmp_path):
        with pytest.raises(SpecError, match="cannot be read") as info:
            seccomp.load_profile(path)
        assert str(path) in str(info.value)


def test_security_opt_values(tmp_path: Path) -> None:
    assert seccomp.profile_from_option("unconfined") is None
    assert seccomp.profile_from_option("builtin") is DEFAULT_PROFILE
    path = write_profile(tmp_path, DOCKER_SHAPED)
    assert seccomp.profile_from_option(str(path)) == seccomp.parse_profile(DOCKER_SHAPED)
    with pytest.raises(SpecError, match="cannot be read"):
        seccomp.profile_from_option(str(tmp_path / "nope.json"))


# ---------------------------------------------------------------- docker's default

#: what a shell, coreutils and python need (each on some architecture)
SHELL_NEEDS = """
    read write openat open close fstat newfstatat statx lseek mmap munmap mprotect brk
    rt_sigaction rt_sigprocmask rt_sigreturn ioctl pread64 access pipe pipe2 dup2 dup3
    fcntl getdents64 execve exit_group wait4 getpid getppid getuid geteuid getgid getegid
    uname getcwd chdir readlink arch_prctl set_tid_address set_robust_list rseq prlimit64
    getrandom futex clock_gettime clock_nanosleep sysinfo kill fork vfork poll select
    socket connect sendto recvfrom mkdir rmdir unlink rename umask getrlimit
""".split()
#: escapes and attack surface the default profile refuses without capabilities
REFUSED = """
    keyctl add_key request_key open_by_handle_at unshare setns mount umount2 pivot_root
    kexec_load kexec_file_load bpf perf_event_open init_module finit_module delete_module
    reboot swapon swapoff chroot acct settimeofday clock_settime iopl ioperm
    process_vm_writev kcmp userfaultfd io_uring_setup io_uring_enter quotactl sethostname
    setdomainname syslog vhangup lookup_dcookie fsopen move_mount
""".split()


def test_default_profile_allows_what_a_shell_needs() -> None:
    rules = seccomp.effective_rules(DEFAULT_PROFILE, DOCKER_CAPS, machine="x86_64", kernel=(6, 1))
    names = allowed(rules)
    missing = [n for n in SHELL_NEEDS if n not in names and n not in ("socket", "clone")]
    assert not missing
    assert "mlock" in names and "mlockall" in names  # as docker: RLIMIT_MEMLOCK bounds them
    assert "ptrace" in names  # kernel >= 4.8: seccomp cannot be bypassed by a tracer
    assert "chroot" in names  # CAP_SYS_CHROOT is one of docker's capabilities


def test_default_profile_refuses_escapes_without_capabilities() -> None:
    rules = seccomp.effective_rules(DEFAULT_PROFILE, NO_CAPS, machine="x86_64", kernel=(4, 4))
    named = {n for r in rules for n in r.names}
    assert not set(REFUSED) & named
    assert "ptrace" not in named  # before 4.8 a tracer could rewrite a syscall past the filter


@pytest.mark.parametrize(
    ("cap", "calls"),
    [
        ("CAP_SYS_ADMIN", "mount umount2 unshare setns bpf clone3 sethostname fsopen"),
        ("CAP_SYS_PTRACE", "ptrace process_vm_writev kcmp pidfd_getfd"),
        ("CAP_SYS_MODULE", "init_module finit_module delete_module"),
        ("CAP_SYS_BOOT", "reboot"),
        ("CAP_SYS_TIME", "settimeofday clock_settime"),
        ("CAP_SYS_NICE", "mbind set_mempolicy"),
        ("CAP_SYSLOG", "syslog"),
        ("CAP_BPF", "bpf"),
        ("CAP_PERFMON", "perf_event_open"),
        ("CAP_SYS_RAWIO", "iopl ioperm"),
        ("CAP_SYS_CHROOT", "chroot"),
        ("CAP_SYS_PACCT", "acct"),
        ("CAP_SYS_TTY_CONFIG", "vhangup"),
        ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
        ("SYS_ADMIN", "mount unshare"),  # the name without CAP_ too
    ],
)
def test_default_profile_allows_each_group_with_its_capability(cap: str, calls: str) -> None:
    without = allowed(seccomp.effective_rules(DEFAULT_PROFILE, NO_CAPS, kernel=(4, 4)))
    with_cap = allowed(seccomp.effective_rules(DEFAULT_PROFILE, {cap}, kernel=(4, 4)))
    for call in calls.split():
        assert call not in without and call in with_cap, call


@needs_libseccomp
@needs_x86_64
def test_default_program_decides_as_docker() -> None:
    program = seccomp.compile_profile(DEFAULT_PROFILE, DOCKER_CAPS)
    assert len(program) % 8 == 0
    for name in ("read", "execve", "getpid", "mlock", "arch_prctl", "chroot", "ptrace"):
        assert run_bpf(program, nr(name)) == RET_ALLOW, name
    for name in (
        "keyctl",
        "add_key",
        "request_key",
        "open_by_handle_at",
        "unshare",
        "mount",
        "kexec_load",
        "bpf",
    ):
        assert run_bpf(program, nr(name)) == EPERM, name
    # clone without namespace flags; clone3 (flags out of reach) falls back to it
    assert run_bpf(program, nr("clone"), (SIGCHLD,)) == RET_ALLOW
    assert run_bpf(program, nr("clone"), (CLONE_NEWUSER | SIGCHLD,)) == EPERM
    assert run_bpf(program, nr("clone"), (CLONE_NEWNET,)) == EPERM
    assert run_bpf(program, nr("clone3")) == ENOSYS
    # socket: every family but AF_ALG and AF_VSOCK
    assert run_bpf(program, nr("socket"), (AF_INET, SOCK_STREAM)) == RET_ALLOW
    assert run_bpf(program, nr("socket"), (AF_ALG,)) == EPERM
    assert run_bpf(program, nr("socket"), (AF_VSOCK,)) == EPERM
    # personality: the query and the harmless personas only
    assert run_bpf(program, nr("personality"), (0xFFFFFFFF,)) == RET_ALLOW
    assert run_bpf(program, nr("personality"), (0x20008,)) == RET_ALLOW
    assert run_bpf(program, nr("personality"), (0x0400000,)) == EPERM  # READ_IMPLIES_EXEC


@needs_libseccomp
@needs_x86_64
def test_default_program_covers_the_i386_and_x32_abis_as_docker() -> None:
    program = seccomp.compile_profile(DEFAULT_PROFILE, NO_CAPS)
    for arch, bit in ((AUDIT_ARCH_I386, 0), (AUDIT_ARCH_X86_64, X32_BIT)):
        token = arch if not bit else 0x4000003E  # libseccomp's x32
        assert run_bpf(program, nr("getpid", token) | bit, arch=arch) == RET_ALLOW
        assert run_bpf(program, nr("keyctl", token) | bit, arch=arch) == EPERM
        assert run_bpf(program, nr("unshare", token) | bit, arch=arch) == EPERM
    assert run_bpf(program, nr("getpid"), arch=0xC00000B7) == RET_KILL_THREAD  # aarch64: not filtered here


@needs_libseccomp
@needs_x86_64
def test_syscalls_newer_than_the_profile_get_enosys() -> None:
    program = seccomp.compile_profile(DEFAULT_PROFILE, NO_CAPS)
    assert run_bpf(program, 1000) == ENOSYS
    assert run_bpf(program, 1000, arch=AUDIT_ARCH_I386) == ENOSYS
    assert run_bpf(program, 1000 | X32_BIT) == ENOSYS
    # a profile that allows by default lets a new syscall through
    allow = seccomp.parse_profile(
        {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}
    )
    assert run_bpf(seccomp.compile_profile(allow, NO_CAPS), 1000) == RET_ALLOW


@needs_libseccomp
@needs_x86_64
def test_a_custom_profile_compiles_as_written(tmp_path: Path) -> None:
    data = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir", "mkdirat", "not_a_syscall_anywhere"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["getppid"], "action": "SCMP_ACT_ALLOW"},  # same as the default: dropped
            # two conditions on one argument: one rule each (either one refuses)
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 22,
                "args": [
                    {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                    {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"},
                ],
            },
        ],
    }
    program = seccomp.compile_profile(seccomp.load_profile(write_profile(tmp_path, data)), NO_CAPS)
    assert run_bpf(program, nr("mkdir")) == EPERM
    assert run_bpf(program, nr("mkdirat")) == EPERM
    assert run_bpf(program, nr("rmdir")) == RET_ALLOW
    assert run_bpf(program, nr("personality"), (1,)) == RET_ERRNO | 22
    assert run_bpf(program, nr("personality"), (2,)) == RET_ERRNO | 22
    assert run_bpf(program, nr("personality"), (3,)) == RET_ALLOW


@needs_libseccomp
def test_compile_is_cached_per_profile_and_capabilities() -> None:
    a = seccomp.compile_profile(DEFAULT_PROFILE, ["CAP_SYS_ADMIN"])
    assert seccomp.compile_profile(DEFAULT_PROFILE, frozenset({"SYS_ADMIN"})) is a
    assert seccomp.compile_profile(DEFAULT_PROFILE, ["cap_sys_admin"]) is a
    b = seccomp.compile_profile(DEFAULT_PROFILE, [])
    assert b is not a and b != a
    with pytest.raises(TypeError):
        seccomp.compile_profile(DEFAULT_PROFILE, "CAP_SYS_ADMIN")
    copy = seccomp.parse_profile(DOCKER_SHAPED, "one")
    assert seccomp.compile_profile(copy, []) is seccomp.compile_profile(
        seccomp.parse_profile(DOCKER_SHAPED, "two"), []
    )


@needs_libseccomp
def test_compile_refuses_what_libseccomp_does_not_know() -> None:
    lib = seccomp._lib()
    candidates = ("SCMP_ARCH_LOONGARCH64", "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64")
    unknown = [a for a in candidates if not lib.arch_resolve_name(a[10:].lower().encode())]
    if not unknown:
        pytest.skip("this libseccomp knows every architecture tried")
    profile = Profile(default_action=Action.ALLOW, architectures=(unknown[0],), source="p.json")
    with pytest.raises(SpecError, match=r"p\.json: libseccomp .* does not know architecture"):
        seccomp.compile_profile(profile, NO_CAPS)


def test_no_libseccomp_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    seccomp._lib.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", no_library)
    try:
        with pytest.raises(seccomp.SeccompUnavailableError, match="install libseccomp2"):
            seccomp.compile_profile(dataclasses.replace(DEFAULT_PROFILE, default_errno=2), NO_CAPS)
    finally:
        monkeypatch.undo()
        seccomp._lib.cache_clear()


@needs_libseccomp
def test_filter_call_holds_the_program() -> None:
    program = seccomp.compile_profile(DEFAULT_PROFILE, NO_CAPS)
    fn, args, text = _linux.seccomp_filter_call(program, 0)
    assert fn is _linux.raw_syscall and args[:3] == (_linux.NR["seccomp"], _linux.SECCOMP_SET_MODE_FILTER, 0)
    fprog = args[3]._obj  # type: ignore[attr-defined]
    assert fprog.len == len(program) // 8
    address = ctypes.c_void_p.from_buffer(fprog, _linux.SockFprog.filter.offset).value
    assert ctypes.string_at(address, len(program)) == program
    # the structure keeps the program itself alive (no copy)
    assert any(o is program for o in fprog._objects.values())
    assert f"{len(program) // 8} instructions" in text
    for bad in (b"", b"1234567"):
        with pytest.raises(ValueError):
            _linux.seccomp_filter_call(bad)


# ---------------------------------------------------------------- real filters (root)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.syscall.argtypes = [ctypes.c_long] + [ctypes.c_ulong] * 5


def _syscall(name: str, *args: int) -> int:
    """0 when the call succeeded, else its errno."""
    ctypes.set_errno(0)
    r = _libc.syscall(nr(name), *args, *([0] * (5 - len(args))))
    return ctypes.get_errno() if r == -1 else 0


def in_filtered_child(
    program: bytes, probe: Callable[[], dict[str, object]], nnp: bool = False
) -> dict[str, object]:
    """Fork; in the child, load ``program`` with the raw call the container's child
    uses (after no_new_privs with ``nnp``), run ``probe`` and send its result back."""
    calls = ([_linux.no_new_privs_call()] if nnp else []) + [_linux.seccomp_filter_call(program)]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.close(r)
            for fn, args, text in calls:
                if fn(*args) == -1:
                    raise OSError(_linux.errno_now(), text)
            with open("/proc/self/status") as f:
                status = dict(line.split(":\t", 1) for line in f if ":\t" in line)
            result = {"Seccomp": status["Seccomp"].strip(), "NoNewPrivs": status["NoNewPrivs"].strip()}
            result.update(probe())
            os.write(w, json.dumps(result).encode())
        except BaseException as e:  # noqa: BLE001 - report anything to the test
            os.write(w, json.dumps({"error": repr(e)}).encode())
            code = 1
        os._exit(code)
    os.close(w)
    try:
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks))
    assert "error" not in result, result["error"]
    return result  # type: ignore[no-any-return]


def _escapes() -> dict[str, object]:
    page = ctypes.create_string_buffer(4096)
    handle = ctypes.create_string_buffer(128)
    return {
        "getpid": _syscall("getpid"),
        "keyctl": _syscall("keyctl", 0, 0xFFFFFFFD),  # KEYCTL_GET_KEYRING_ID, the session keyring
        "add_key": _syscall("add_key", 0, 0, 0, 0, 0),
        "request_key": _syscall("request_key", 0, 0, 0, 0),
        "unshare_user": _syscall("unshare", CLONE_NEWUSER),
        "unshare_nothing": _syscall("unshare", 0),
        "mount": _syscall("mount", 0, 0, 0, 0, 0),
        "open_by_handle_at": _syscall("open_by_handle_at", 2**64 - 100, ctypes.addressof(handle), 0),
        "clone3": _syscall("clone3", 0, 0),
        "socket_vsock": _syscall("socket", AF_VSOCK, SOCK_STREAM, 0),
        "mlock": _syscall("mlock", ctypes.addressof(page), 4096),
        "mkdir": _syscall("mkdir", 0, 0o700),
    }


@needs_libseccomp
@pytest.mark.root
@needs_x86_64
def test_default_filter_refuses_escapes_in_a_real_process() -> None:
    got = in_filtered_child(seccomp.compile_profile(DEFAULT_PROFILE, DOCKER_CAPS), _escapes)
    # Loaded without no_new_privs: this process still has CAP_SYS_ADMIN (root).
    assert got["Seccomp"] == "2" and got["NoNewPrivs"] == "0"
    assert got["getpid"] == 0
    for call in (
        "keyctl",
        "add_key",
        "request_key",
        "unshare_user",
        "unshare_nothing",
        "mount",
        "open_by_handle_at",
    ):
        assert got[call] == errno.EPERM, call
    assert got["clone3"] == errno.ENOSYS
    assert got["socket_vsock"] == errno.EPERM
    # docker allows mlock: RLIMIT_MEMLOCK and CAP_IPC_LOCK decide (root has it here)
    assert got["mlock"] == 0
    assert got["mkdir"] == errno.EFAULT  # allowed: the kernel looked at the NULL path


@needs_libseccomp
@pytest.mark.root
@needs_x86_64
def test_default_filter_with_cap_sys_admin_allows_namespaces() -> None:
    got = in_filtered_child(
        seccomp.compile_profile(DEFAULT_PROFILE, DOCKER_CAPS | {"CAP_SYS_ADMIN"}), _escapes
    )
    assert got["unshare_nothing"] == 0
    assert got["mount"] == errno.EFAULT  # allowed by the filter, the kernel refuses a NULL target
    assert got["keyctl"] == errno.EPERM  # no capability opens the keyring calls
    assert got["clone3"] != errno.ENOSYS


@needs_libseccomp
@pytest.mark.root
def test_custom_profile_denies_one_syscall_only(tmp_path: Path) -> None:
    path = write_profile(
        tmp_path,
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
        },
    )
    target = tmp_path / "made"

    def probe() -> dict[str, object]:
        out: dict[str, object] = {}
        for what, call in (
            ("mkdir", lambda: os.mkdir(target)),
            ("rmdir", lambda: os.rmdir(tmp_path / "absent")),
        ):
            try:
                call()
                out[what] = 0
            except OSError as e:
                out[what] = e.errno
        out["getpid"] = _syscall("getpid")
        return out

    got = in_filtered_child(seccomp.compile_profile(seccomp.load_profile(path), NO_CAPS), probe)
    assert got == {
        "Seccomp": "2",
        "NoNewPrivs": "0",
        "mkdir": errno.EPERM,
        "rmdir": errno.ENOENT,
        "getpid": 0,
    }
    assert not target.exists()


@needs_libseccomp
@pytest.mark.root
def test_filter_loads_after_no_new_privs() -> None:
    program = seccomp.compile_profile(DEFAULT_PROFILE, NO_CAPS)
    got = in_filtered_child(program, dict, nnp=True)
    assert got == {"Seccomp": "2", "NoNewPrivs": "1"}


@needs_libseccomp
@pytest.mark.root
def test_programs_run_under_the_default_filter(tmp_path: Path) -> None:
    """sh, ls, busybox and python start and work under docker's default profile."""
    program = seccomp.compile_profile(DEFAULT_PROFILE, DOCKER_CAPS)
    script = "ls / >/dev/null && mkdir d && rmdir d && echo sh-ok"
    commands = [
        ["sh", "-c", script],
        [sys.executable, "-c", "import os, socket; socket.socket(); print('py-ok')"],
    ]
    if shutil.which("busybox"):
        commands.append(["busybox", "sh", "-c", script.replace("sh-ok", "busybox-ok")])

    def probe() -> dict[str, object]:
        out: dict[str, object] = {}
        for argv in commands:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the filter is inherited across fork and exec
                os.dup2(w, 1)
                os.chdir(tmp_path)
                try:
                    os.execvp(argv[0], argv)
                finally:
                    os._exit(127)
            os.close(w)
            data = b""
            while chunk := os.read(r, 4096):
                data += chunk
            os.close(r)
            out[argv[0]] = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), data.decode().strip()]
        return out

    got = in_filtered_child(program, probe)
    assert got["sh"] == [0, "sh-ok"]
    assert got[sys.executable] == [0, "py-ok"]
    if "busybox" in got:
        assert got["busybox"] == [0, "busybox-ok"]


def _stacked(programs: list[bytes], number: int, args: tuple[int, ...], arch: int) -> int:
    """What the kernel returns for stacked filters: the strictest action wins
    (lowest SECCOMP_RET_ACTION_FULL, compared as signed: KILL_PROCESS first)."""
    results = [run_bpf(p, number, args, arch) for p in programs]
    return min(results, key=lambda r: (r & 0xFFFF0000) - (1 << 32 if r & 0x80000000 else 0))


@needs_libseccomp
@needs_x86_64
@pytest.mark.parametrize("caps", [DOCKER_CAPS, DOCKER_CAPS | {"CAP_SYS_ADMIN"}, NO_CAPS])
def test_base_and_closing_programs_stack_to_exactly_the_profile(caps: frozenset[str]) -> None:
    whole = seccomp.compile_profile(DEFAULT_PROFILE, caps)
    split = seccomp.split_programs(DEFAULT_PROFILE, caps)
    assert split is not None
    base, closing = split
    assert len(closing) < len(whole) // 10  # what each container loads is small
    argsets = [(), (SIGCHLD,), (CLONE_NEWUSER | SIGCHLD,), (AF_VSOCK,), (AF_INET, SOCK_STREAM), (0x0400000,)]
    for arch, bit in ((AUDIT_ARCH_X86_64, 0), (AUDIT_ARCH_I386, 0), (AUDIT_ARCH_X86_64, X32_BIT)):
        for number in range(460):
            for args in argsets:
                want = run_bpf(whole, number | bit, args, arch)
                assert _stacked([base, closing], number | bit, args, arch) == want, (arch, number, args)
    # the base alone lets the helper and the child do their setup
    for name in seccomp.SETUP_CALLS:
        assert run_bpf(base, nr(name)) == RET_ALLOW, name
