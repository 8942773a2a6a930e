"""--user: docker's (runc's) resolution rules against passwd and group texts, and the
reading of a container's files from the host: inside its root whatever symlinks
say, never blocking, never more than a bounded size."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import users
from supervisor.errors import SpecError
from supervisor.users import User, lookup, resolve_user

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:100::/home/bob:/bin/sh
1234:x:4321:4321::/home/numeric:/bin/sh
alice:x:2000:2000:second alice:/elsewhere:/bin/sh
twin:x:1000:3000::/home/twin:/bin/sh
nohome:x:1500:1500
"""

GROUP = """\
root:x:0:root
wheel:x:10:root,alice
alice:x:1000:
users:x:100:alice,bob
staff:x:50:
audio:x:29: alice , carol
wheel2:x:10:alice
"""


def _lookup(spec: str, passwd: str | None = PASSWD, group: str | None = GROUP) -> User:
    return lookup(spec, passwd, group)


# ---------------------------------------------------------------- the forms of --user


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # a name: its entry, and every group that lists it (deduplicated, in order)
        ("alice", User(1000, 1000, (10, 100, 29), "/home/alice", "alice")),
        ("bob", User(1001, 100, (100,), "/home/bob", "bob")),
        # a uid: the first entry with it, the same way
        ("1000", User(1000, 1000, (10, 100, 29), "/home/alice", "alice")),
        ("1", User(1, 1, (), "/usr/sbin", "daemon")),
        # a uid without an entry: gid 0, no groups, no home
        ("4242", User(4242, 0, (), None, None)),
        # a number is always a uid, even when a user has it as a name
        ("1234", User(1234, 0, (), None, None)),
        # an explicit group: its gid, and no supplementary groups
        ("alice:staff", User(1000, 50, (), "/home/alice", "alice")),
        ("alice:50", User(1000, 50, (), "/home/alice", "alice")),
        ("alice:777", User(1000, 777, (), "/home/alice", "alice")),
        ("1000:users", User(1000, 100, (), "/home/alice", "alice")),
        ("4242:4242", User(4242, 4242, (), None, None)),
        ("4242:staff", User(4242, 50, (), None, None)),
        # an empty user part is root, as without --user: root's groups from the image
        ("", User(0, 0, (0, 10), "/root", "root")),
        (":staff", User(0, 50, (), "/root", "root")),
        ("0", User(0, 0, (0, 10), "/root", "root")),
        ("alice:", User(1000, 1000, (10, 100, 29), "/home/alice", "alice")),
        # an entry without a home field
        ("nohome", User(1500, 1500, (), "", "nohome")),
        # Go's Atoi takes a sign, and so does runc
        ("+1001", User(1001, 100, (100,), "/home/bob", "bob")),
        ("2147483647", User(2147483647, 0, (), None, None)),
    ],
)
def test_forms(spec: str, expected: User) -> None:
    assert _lookup(spec) == expected


def test_first_entry_wins() -> None:
    assert _lookup("alice").uid == 1000  # not the second alice's 2000
    assert _lookup("1000").name == "alice"  # not twin, who comes later


def test_home_env() -> None:
    assert _lookup("alice").home_env == "/home/alice"
    assert _lookup("4242").home_env == "/"
    assert _lookup("nohome").home_env == "/"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nobody", "unable to find user nobody: no matching entries in passwd file"),
        ("Alice", "unable to find user Alice"),
        ("alice:nogroup", "unable to find group nogroup: no matching entries in group file"),
        ("4242:nogroup", "unable to find group nogroup"),
        ("a:b:c", "invalid user 'a:b:c' (expected NAME|UID[:GROUP|GID])"),
        ("alice\0", "invalid user"),
        ("alice\n", "invalid user"),
        ("-1", "uid -1 is out of range (0 to 2147483647)"),
        ("2147483648", "uid 2147483648 is out of range"),
        ("alice:-5", "gid -5 is out of range"),
        ("1000:4294967296", "gid 4294967296 is out of range"),
    ],
)
def test_errors(spec: str, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)) as info:
        _lookup(spec)
    assert "\n" not in str(info.value)


def test_without_files() -> None:
    assert lookup("1000:1000", None, None) == User(1000, 1000)
    assert lookup("1000", None, None) == User(1000, 0)
    assert lookup("", None, None) == User(0, 0)
    with pytest.raises(SpecError, match="unable to find user alice"):
        lookup("alice", None, None)
    with pytest.raises(SpecError, match="unable to find group staff"):
        lookup("1000:staff", None, None)


def test_too_many_groups() -> None:
    many = "".join(f"g{n}:x:{n}:alice\n" for n in range(1, users.NGROUPS_MAX + 2))
    with pytest.raises(SpecError, match="in 65537 groups"):
        lookup("alice", PASSWD, many)
    assert len(lookup("alice", PASSWD, many[: many.index(f"g{users.NGROUPS_MAX + 1}:")]).groups) == 65536


# ---------------------------------------------------------------- parsing as libc does


def test_malformed_passwd_lines_are_skipped() -> None:
    text = "\n".join(
        [
            "# a comment",
            "",
            "   ",
            "evil:x:abc:0::/:/bin/sh",  # runc would read uid 0 here
            "short:x:1000",
            "signed:x:-1:0:::",
            "spaced:x: 7:0:::",
            "huge:x:4294967296:0:::",
            ":x:0:0:::",
            "+::::::",
            "-bob:x:1:1:::",
            "  indented:x:7:8::/home/indented:/bin/sh",
            "tail:x:9:9",
            "carriage:x:11:11::/home/carriage:/bin/sh\r",
            "\xff\xfe:x:12:12:::",
        ]
    )
    entries = users.parse_passwd(text)
    assert [(e.name, e.uid, e.gid, e.home) for e in entries] == [
        ("indented", 7, 8, "/home/indented"),
        ("tail", 9, 9, ""),
        ("carriage", 11, 11, "/home/carriage"),
        ("\xff\xfe", 12, 12, ""),
    ]
    with pytest.raises(SpecError, match="unable to find user evil"):
        lookup("evil", text, None)


def test_malformed_group_lines_are_skipped() -> None:
    text = "\n".join(
        [
            "#wheel:x:10:alice",
            "bad:x:abc:alice",
            "nogid:x:",
            "two:x",
            "last:x:60",
            "  spaced:x:61:, alice ,,bob,",
        ]
    )
    entries = users.parse_group(text)
    assert [(g.name, g.gid, g.members) for g in entries] == [
        ("last", 60, ()),
        ("spaced", 61, ("alice", "bob")),
    ]
    assert lookup("alice", PASSWD, text).groups == (61,)


# ---------------------------------------------------------------- reading a root filesystem


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


def test_resolve_in_a_root_filesystem(rootfs: Path) -> None:
    assert resolve_user("alice", str(rootfs)) == User(1000, 1000, (10, 100, 29), "/home/alice", "alice")


def test_the_containers_root_is_not_the_hosts(rootfs: Path) -> None:
    (rootfs / "etc" / "passwd").write_text("root:x:4242:4242::/root:/bin/sh\n")
    assert resolve_user("root", str(rootfs)).uid == 4242


def test_without_etc(tmp_path: Path) -> None:
    assert resolve_user("1000:1000", str(tmp_path)) == User(1000, 1000)
    assert resolve_user("", str(tmp_path)) == User(0, 0)
    with pytest.raises(SpecError, match="unable to find user root"):
        resolve_user("root", str(tmp_path))


def test_a_missing_root_filesystem(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot open the root filesystem"):
        resolve_user("1000", str(tmp_path / "nope"))


def test_without_a_root_filesystem_the_hosts_files() -> None:
    host = Path("/etc/passwd")
    if not host.exists() or "root:" not in host.read_text(errors="replace"):
        pytest.skip("no root entry in the host's /etc/passwd")
    user = resolve_user("root", None)
    assert (user.uid, user.name) == (0, "root")


SHADOW = "alice:x:7777:7777::/from/the/containers/shadow:/bin/sh\n"


@pytest.mark.parametrize(
    "target", ["../../../../etc/shadow", "/etc/shadow", "../../../../../../../../etc/./shadow"]
)
def test_a_symlink_out_of_the_root_stays_inside(rootfs: Path, target: str) -> None:
    """A container's ``etc/passwd -> ../../../../etc/shadow`` (or ``/etc/shadow``)
    is its own etc/shadow, never the host's."""
    (rootfs / "etc" / "shadow").write_text(SHADOW)
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").symlink_to(target)
    assert resolve_user("alice", str(rootfs)).uid == 7777


def test_a_symlink_to_a_host_file_the_container_lacks(rootfs: Path) -> None:
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").symlink_to("/etc/hostname")  # the host has one, not the root
    with pytest.raises(SpecError, match="unable to find user root"):
        resolve_user("root", str(rootfs))
    assert resolve_user("1000", str(rootfs)) == User(1000, 0)


def test_a_symlinked_etc_directory_stays_inside(rootfs: Path) -> None:
    """``etc -> ../../../..`` is the container's root itself, not the host's /."""
    os.rename(rootfs / "etc", rootfs / "real-etc")
    (rootfs / "etc").symlink_to("../../../../../..")
    (rootfs / "passwd").write_text(SHADOW)
    assert resolve_user("alice", str(rootfs)).uid == 7777


def test_proc_inside_the_root_is_the_roots(rootfs: Path) -> None:
    """``/proc/self/root/...`` names the root's own (here absent) /proc, not the
    supervisor's, whose /proc/self/root is the host's root."""
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").symlink_to("/proc/self/root/etc/passwd")
    with pytest.raises(SpecError, match="unable to find user root"):
        resolve_user("root", str(rootfs))


def test_a_magic_link_is_refused() -> None:
    """Where a /proc is inside the root (the host's own root here), its magic links
    (/proc/self/root, /proc/self/fd/N) are not followed."""
    with pytest.raises(SpecError, match="a /proc magic link"):
        users.read_in_root("/", "/proc/self/root/etc/passwd")
    with pytest.raises(SpecError, match="a /proc magic link"):
        users.read_in_root(None, "/proc/self/cwd/x")


def test_a_symlink_loop(rootfs: Path) -> None:
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").symlink_to("passwd")
    with pytest.raises(SpecError, match=r"cannot read the container's /etc/passwd: too many symlinks"):
        resolve_user("alice", str(rootfs))


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Turn a hang into a failure instead of a stuck test run."""

    def hung(signum: int, frame: object) -> None:
        raise TimeoutError("blocked reading the container's file")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_a_fifo_does_not_block(rootfs: Path, no_hang: None) -> None:
    (rootfs / "etc" / "passwd").unlink()
    os.mkfifo(rootfs / "etc" / "passwd")
    with pytest.raises(SpecError, match="cannot read the container's /etc/passwd: not a regular file"):
        resolve_user("alice", str(rootfs))


def test_a_fifo_group_file(rootfs: Path, no_hang: None) -> None:
    (rootfs / "etc" / "group").unlink()
    os.mkfifo(rootfs / "etc" / "group")
    with pytest.raises(SpecError, match="cannot read the container's /etc/group: not a regular file"):
        resolve_user("alice", str(rootfs))
    # a form that needs no group file does not read it
    assert resolve_user("alice:50", str(rootfs)).gid == 50


def test_a_directory(rootfs: Path) -> None:
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").mkdir()
    with pytest.raises(SpecError, match="not a regular file"):
        resolve_user("alice", str(rootfs))


@pytest.mark.root
def test_a_device_node_is_never_opened(rootfs: Path) -> None:
    (rootfs / "etc" / "passwd").unlink()
    os.mknod(rootfs / "etc" / "passwd", 0o644 | 0o020000, os.makedev(1, 3))  # like /dev/null
    with pytest.raises(SpecError, match="not a regular file"):
        resolve_user("alice", str(rootfs))


def test_a_huge_file_is_refused_without_reading_it(rootfs: Path) -> None:
    with open(rootfs / "etc" / "passwd", "r+b") as f:
        f.truncate(10 * 1024**3)  # sparse: 10 GiB that take no disk
    with pytest.raises(SpecError, match=r"/etc/passwd: larger than 4194304 bytes \(10737418240\)"):
        resolve_user("1000:1000", str(rootfs))


def test_a_huge_group_file(rootfs: Path) -> None:
    with open(rootfs / "etc" / "group", "r+b") as f:
        f.truncate(users.MAX_FILE_SIZE + 1)
    with pytest.raises(SpecError, match="/etc/group: larger than"):
        resolve_user("alice", str(rootfs))


def test_the_limit_is_on_what_is_read(rootfs: Path) -> None:
    path = rootfs / "etc" / "passwd"
    assert users.read_in_root(str(rootfs), "/etc/passwd", limit=len(PASSWD)) == PASSWD.encode()
    with pytest.raises(SpecError, match="larger than"):
        users.read_in_root(str(rootfs), "/etc/passwd", limit=len(PASSWD) - 1)
    assert users.read_in_root(str(rootfs), "/etc/nothing") is None
    assert path.exists()
