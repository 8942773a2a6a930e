"""Seccomp profiles: the parser and docker's default profile."""

from __future__ import annotations

import dataclasses
import errno
import json
from pathlib import Path

import pytest

from supervisor import seccomp
from supervisor.errors import SpecError
from supervisor.seccomp import DEFAULT_PROFILE, Action, ArgRule, Compare, SyscallRule, When

# ---------------------------------------------------------------- helpers

NO_CAPS: frozenset[str] = frozenset()
#: docker's default capabilities
DOCKER_CAPS = frozenset(
    "CAP_CHOWN CAP_DAC_OVERRIDE CAP_FSETID CAP_FOWNER CAP_MKNOD CAP_NET_RAW CAP_SETGID CAP_SETUID "
    "CAP_SETFCAP CAP_SETPCAP CAP_NET_BIND_SERVICE CAP_SYS_CHROOT CAP_KILL CAP_AUDIT_WRITE".split()
)


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
