"""The child's filesystem steps against a recording kernel, and ``open_target``
against hostile symlinks, without root.

``RecordingKernel`` replaces ``mounts.KERNEL`` (youki's ``TestHelperSyscall``): a
small in-memory tree (directories, files, symlinks) that resolves paths the way
openat2 ``RESOLVE_IN_ROOT`` does, makes what ``open_target`` asks for, and records
every mount, umount, pivot_root, chdir and symlink with the path an fd's magic link
(``/proc/self/fd/N``) stands for. A mount of a filesystem shows that filesystem's
entries (proc's, sysfs's, an empty tmpfs), so masks and read-only paths find what
they would find on a kernel, and skip what this fake "kernel" lacks.

The hostile-symlink tests run twice: against a real directory (openat2 works for
any user) and against the fake, which keeps the fake honest.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from supervisor import _linux, mounts
from supervisor.spec import ContainerSpec, Mount

NOSUID, NODEV, NOEXEC, RDONLY = _linux.MS_NOSUID, _linux.MS_NODEV, _linux.MS_NOEXEC, _linux.MS_RDONLY
BIND, REC, REMOUNT = _linux.MS_BIND, _linux.MS_REC, _linux.MS_REMOUNT
MAXSYMLINKS = 40  # the kernel's limit on symlinks followed in one lookup

# ---------------------------------------------------------------- the fake kernel


@dataclass
class Node:
    kind: str  # "dir", "file" or "link"
    children: dict[str, Node] = field(default_factory=dict)
    target: str = ""

    def copy(self) -> Node:
        return Node(self.kind, {k: v.copy() for k, v in self.children.items()}, self.target)


def _tree(spec: dict[str, object]) -> Node:
    """A directory from ``{"name": {...} (a dir) | "file" | "-> target"}``."""
    node = Node("dir")
    for name, what in spec.items():
        if isinstance(what, dict):
            node.children[name] = _tree(what)
        elif isinstance(what, str) and what.startswith("-> "):
            node.children[name] = Node("link", target=what[3:])
        else:
            node.children[name] = Node("file")
    return node


#: what a fresh mount of each filesystem shows (what masks and read-only paths look
#: for; some of docker's masked paths are absent, as on many kernels)
FS_CONTENT: dict[str, dict[str, object]] = {
    "proc": {
        "acpi": {},
        "asound": {},
        "bus": {},
        "fs": {},
        "irq": {},
        "scsi": {},
        "sys": {"kernel": {}},
        "interrupts": "file",
        "kcore": "file",
        "keys": "file",
        "timer_list": "file",
        "sysrq-trigger": "file",
    },
    "sysfs": {"firmware": {}, "fs": {"cgroup": {}}, "devices": {"virtual": {}}},
    "devpts": {"ptmx": "file"},
}

#: the host as the spawn helper sees it
HOST: dict[str, object] = {
    "dev": {d: "file" for d in mounts.DEVICES},
    "etc": {"passwd": "file", "shadow": "file"},
    "usr": {"bin": {"tini-static": "file"}},
    "srv": {"data": {"old": "file"}, "file": "file", "ro": {}},
    "state": {
        "lower": {
            "bin": {"sh": "file"},
            "etc": {"passwd": "file"},
            "proc": {},
            "sys": {},
            "tmp": {},
            "lib": "-> /usr/lib",
            "usr": {"lib": {}},
        },
        "c": {"upper": {}, "work": {}, "rootfs": {}},
    },
}
DIRS = mounts.ContainerDirs("/state/lower", "/state/c/upper", "/state/c/work", "/state/c/rootfs")
ROOT = DIRS.mountpoint
HOST_INIT = "/usr/bin/tini-static"


def inside(path: str) -> str:
    """The host path of ``path`` in the container's root (what a magic link shows)."""
    return ROOT + path if path != "/" else ROOT


class RecordingKernel(mounts.Kernel):
    """``mounts.Kernel`` over an in-memory tree, recording what reaches "the kernel"."""

    def __init__(self, host: dict[str, object] | None = None, mount_setattr: bool = True) -> None:
        self.root = _tree(HOST if host is None else host)
        self.fds: dict[int, tuple[Node, str]] = {}
        self._next_fd = 1000
        self.calls: list[tuple[object, ...]] = []
        #: (path, flags) of every mount, newest last (mount_flags looks here)
        self.table: list[tuple[str, int]] = [("/", 0)]
        self.cwd = "/"
        self.mount_setattr = mount_setattr

    # -- paths

    def _fd(self, node: Node, path: str) -> int:
        fd = self._next_fd
        self._next_fd += 1
        self.fds[fd] = (node, path)
        return fd

    def _get(self, fd: int) -> tuple[Node, str]:
        if fd not in self.fds:
            raise OSError(errno.EBADF, f"fd {fd} is not open")
        return self.fds[fd]

    def path_of(self, name: str) -> str:
        """What a path handed to mount(2) stands for: an fd's magic link is the path
        it was opened by."""
        if name.startswith("/proc/self/fd/"):
            return self._get(int(name.rsplit("/", 1)[1]))[1]
        return name

    def resolve(self, root: tuple[Node, str], path: str, flags: int, in_root: bool) -> tuple[Node, str]:
        """Walk ``path`` from ``root`` (openat2 RESOLVE_IN_ROOT when ``in_root``:
        ``..`` and absolute symlinks stay at ``root``; the host's lookup otherwise,
        which starts from the host's / for an absolute path)."""
        base = root if in_root else (self.root, "/")
        stack = [base]
        todo = [p for p in path.split("/") if p not in ("", ".")]
        links = 0
        while todo:
            name = todo.pop(0)
            node, where = stack[-1]
            if name == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            if node.kind != "dir":
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
            child = node.children.get(name)
            if child is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            if child.kind == "link" and (todo or not flags & os.O_NOFOLLOW):
                links += 1
                if links > MAXSYMLINKS:
                    raise OSError(errno.ELOOP, "Too many levels of symbolic links", path)
                if child.target.startswith("/"):
                    del stack[1:]
                todo = [p for p in child.target.split("/") if p not in ("", ".")] + todo
                continue
            stack.append((child, f"{where.rstrip('/')}/{name}"))
        node, where = stack[-1]
        if flags & os.O_DIRECTORY and node.kind != "dir":
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        return node, where

    # -- the Kernel interface

    def mount(
        self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None
    ) -> None:
        src = self.path_of(source) if source is not None else None
        dst = self.path_of(target)
        self.calls.append(("mount", src, dst, fstype, flags, data))
        node = self.resolve((self.root, "/"), dst, 0, in_root=False)[0]
        if flags & REMOUNT:
            self.table.append((dst, flags & ~(REMOUNT | BIND)))
            return
        if flags & BIND:
            src_node = self.resolve((self.root, "/"), src or "", 0, in_root=False)[0]
            if node.kind == "dir" and src_node.kind == "dir":
                node.children = src_node.children  # the same directory, seen in two places
            self.table.append((dst, self.mount_flags_of(src or "/") | (flags & RDONLY)))
            return
        if fstype == "overlay":
            assert data is not None
            lower = dict(kv.split("=", 1) for kv in data.split(","))["lowerdir"]
            node.children = self.resolve((self.root, "/"), lower, 0, in_root=False)[0].copy().children
        else:
            node.children = _tree(FS_CONTENT.get(fstype or "", {})).children
        self.table.append((dst, flags))

    def umount(self, target: str, flags: int) -> None:
        self.calls.append(("umount", os.path.normpath(os.path.join(self.cwd, target)), flags))

    def pivot_root(self, new_root: str, put_old: str) -> None:
        new, old = (os.path.normpath(os.path.join(self.cwd, p)) for p in (new_root, put_old))
        self.calls.append(("pivot_root", new, old))

    def chdir(self, path: str) -> None:
        self.cwd = os.path.normpath(os.path.join(self.cwd, path))
        self.calls.append(("chdir", self.cwd))

    def open(self, path: str, flags: int) -> int:
        return self._fd(*self.resolve((self.root, "/"), path, flags, in_root=False))

    def open_in(self, root_fd: int, path: str, flags: int) -> int:
        return self._fd(*self.resolve(self._get(root_fd), path, flags, in_root=True))

    def open_existing_in(self, root_fd: int, path: str, flags: int) -> int:
        try:
            return self.open_in(root_fd, path, flags)
        except FileNotFoundError:
            return -1

    def _new(self, dir_fd: int, name: str, node: Node, what: str) -> None:
        parent, where = self._get(dir_fd)
        assert "/" not in name and name not in ("", ".", ".."), name
        if name in parent.children:
            raise FileExistsError(errno.EEXIST, "File exists", name)
        parent.children[name] = node
        self.calls.append((what, f"{where.rstrip('/')}/{name}"))

    def mkdir_at(self, dir_fd: int, name: str) -> None:
        self._new(dir_fd, name, Node("dir"), "mkdir")

    def create_at(self, dir_fd: int, name: str) -> None:
        self._new(dir_fd, name, Node("file"), "create")

    def readlink_at(self, dir_fd: int, name: str) -> str:
        node = self._get(dir_fd)[0].children.get(name)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", name)
        if node.kind != "link":
            raise OSError(errno.EINVAL, "Invalid argument", name)
        return node.target

    def symlink_at(self, target: str, dir_fd: int, name: str) -> None:
        self._new(dir_fd, name, Node("link", target=target), "symlink")
        self.calls[-1] += (target,)

    def is_dir(self, fd: int) -> bool:
        return self._get(fd)[0].kind == "dir"

    def mount_flags_of(self, path: str) -> int:
        best, flags = "", 0
        for where, f in self.table:  # the newest of the longest prefix wins
            if (path == where or path.startswith(where.rstrip("/") + "/")) and len(where) >= len(best):
                best, flags = where, f
        return flags

    def mount_flags(self, fd: int) -> int:
        return self.mount_flags_of(self._get(fd)[1])

    def make_read_only(self, fd: int, recursive: bool) -> None:
        if not self.mount_setattr:
            raise OSError(errno.ENOSYS, "mount_setattr: Function not implemented")
        path = self._get(fd)[1]
        self.calls.append(("mount_setattr rdonly", path, recursive))
        self.table.append((path, self.mount_flags_of(path) | RDONLY))

    def close(self, fd: int) -> None:
        self._get(fd)
        del self.fds[fd]

    def openpty(self) -> tuple[int, int]:
        raise AssertionError("no pty in these tests")

    def ttyname(self, fd: int) -> str:
        raise AssertionError("no pty in these tests")

    # -- for the tests

    def lookup(self, path: str) -> Node | None:
        """The node at a host path, not following a final symlink."""
        try:
            return self.resolve((self.root, "/"), path, os.O_NOFOLLOW, in_root=False)[0]
        except OSError:
            return None

    def mounts(self) -> list[tuple[object, ...]]:
        """The mount calls, as (source, target, fstype, flags, data)."""
        return [c[1:] for c in self.calls if c[0] == "mount"]

    def targets(self) -> list[str]:
        return [str(m[1]) for m in self.mounts()]


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingKernel]:
    k = RecordingKernel()
    monkeypatch.setattr(mounts, "KERNEL", k)
    yield k
    assert not k.fds, f"fds left open: {k.fds}"


def run_ops(spec: ContainerSpec, init: str | None = None) -> list[str]:
    ops = mounts.child_ops(spec, DIRS, init)
    for op in ops:
        op.run()
    return [op.step for op in ops]


def spec(**kw: object) -> ContainerSpec:
    return ContainerSpec(("sh",), rootfs=DIRS.lower, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the steps, in order


def test_a_default_container_mounts_in_dockers_order(kernel: RecordingKernel) -> None:
    run_ops(spec())
    nsd = NOSUID | NODEV | NOEXEC
    lower, upper, work = DIRS.lower, DIRS.upper, DIRS.work
    expected: list[tuple[object, ...]] = [
        ("overlay", ROOT, "overlay", 0, f"lowerdir={lower},upperdir={upper},workdir={work}"),
        ("proc", inside("/proc"), "proc", nsd, None),
        ("tmpfs", inside("/dev"), "tmpfs", NOSUID | _linux.MS_STRICTATIME, "mode=755,size=65536k"),
        *[(f"/dev/{d}", inside(f"/dev/{d}"), None, BIND | REC, None) for d in mounts.DEVICES],
        (
            "devpts",
            inside("/dev/pts"),
            "devpts",
            NOSUID | NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
        ),
        ("tmpfs", inside("/dev/shm"), "tmpfs", nsd, "mode=1777,size=65536k"),
        ("mqueue", inside("/dev/mqueue"), "mqueue", nsd, None),
        ("sysfs", inside("/sys"), "sysfs", RDONLY | nsd, None),
        ("cgroup2", inside("/sys/fs/cgroup"), "cgroup2", RDONLY | nsd, None),
        # docker's masks that this "kernel" has: directories under an empty read-only
        # tmpfs, files under /dev/null; the rest is skipped
        ("tmpfs", inside("/proc/asound"), "tmpfs", RDONLY | nsd, "size=0,mode=755"),
        ("tmpfs", inside("/proc/acpi"), "tmpfs", RDONLY | nsd, "size=0,mode=755"),
        ("/dev/null", inside("/proc/interrupts"), None, BIND, None),
        ("/dev/null", inside("/proc/kcore"), None, BIND, None),
        ("/dev/null", inside("/proc/keys"), None, BIND, None),
        ("/dev/null", inside("/proc/timer_list"), None, BIND, None),
        ("tmpfs", inside("/proc/scsi"), "tmpfs", RDONLY | nsd, "size=0,mode=755"),
        ("tmpfs", inside("/sys/firmware"), "tmpfs", RDONLY | nsd, "size=0,mode=755"),
    ]
    # the read-only paths: bound onto themselves, then remounted read-only keeping
    # proc's nosuid, nodev and noexec (a remount that drops them is refused)
    for p in mounts.READONLY_PATHS:
        expected.append((inside(p), inside(p), None, BIND | REC, None))
        expected.append((None, inside(p), None, REMOUNT | BIND | RDONLY | nsd, None))
    assert kernel.mounts() == expected
    # then pivot_root(".", ".") in the new root, and the old root detached
    assert kernel.calls[-4:] == [
        ("chdir", ROOT),
        ("pivot_root", ROOT, ROOT),
        ("umount", ROOT, _linux.MNT_DETACH),
        ("chdir", "/"),
    ]
    symlinks = {c[1]: c[2] for c in kernel.calls if c[0] == "symlink"}
    assert symlinks == {
        inside("/dev/ptmx"): "pts/ptmx",
        inside("/dev/fd"): "/proc/self/fd",
        inside("/dev/stdin"): "/proc/self/fd/0",
        inside("/dev/stdout"): "/proc/self/fd/1",
        inside("/dev/stderr"): "/proc/self/fd/2",
    }
    # the device nodes' mount points are files, made in the container's /dev tmpfs
    assert all(kernel.lookup(inside(f"/dev/{d}")).kind == "file" for d in mounts.DEVICES)  # type: ignore[union-attr]
    # the image itself is untouched: what was made, was made in the merged root
    assert kernel.lookup("/state/lower/dev") is None


def test_mqueue_only_with_an_ipc_namespace(kernel: RecordingKernel) -> None:
    run_ops(spec(namespaces={"pid", "mount", "uts", "net"}))
    assert inside("/dev/mqueue") not in kernel.targets()


def test_privileged_leaves_sys_writable_and_masks_nothing(kernel: RecordingKernel) -> None:
    run_ops(spec(privileged=True))
    flags = {m[1]: m[3] for m in kernel.mounts()}
    assert flags[inside("/sys")] == NOSUID | NODEV | NOEXEC
    assert flags[inside("/sys/fs/cgroup")] == NOSUID | NODEV | NOEXEC
    # nothing over /proc's or /sys's entries, nothing remounted
    assert kernel.targets()[-1] == inside("/sys/fs/cgroup")
    assert not any(m[3] & REMOUNT for m in kernel.mounts())


def test_the_init_is_bound_read_only_after_sys_and_before_volumes(kernel: RecordingKernel) -> None:
    run_ops(spec(mounts=(Mount("/data", "/srv/data"),)), init=HOST_INIT)
    targets = kernel.targets()
    at = targets.index(inside(mounts.INIT_PATH))
    assert targets[at - 1] == inside("/sys/fs/cgroup")
    assert kernel.mounts()[at] == (HOST_INIT, inside(mounts.INIT_PATH), None, BIND | REC, None)
    # a file: remounted read-only itself (mount_setattr is for a directory's tree)
    assert kernel.mounts()[at + 1] == (None, inside(mounts.INIT_PATH), None, REMOUNT | BIND | RDONLY, None)
    assert targets[at + 2] == inside("/data")
    # /sbin was made for it, inside the root
    assert ("mkdir", inside("/sbin")) in kernel.calls and (
        "create",
        inside("/sbin/docker-init"),
    ) in kernel.calls


def test_volumes_go_parents_first_whatever_order_they_were_given_in(kernel: RecordingKernel) -> None:
    given = (
        Mount("/data/a/b", type="tmpfs"),
        Mount("/data/a", "/srv/ro", read_only=True),
        Mount("/data", "/srv/data"),
        Mount("/etc/passwd", "/srv/file"),
    )
    run_ops(spec(mounts=given))
    vols = [t for t in kernel.targets() if t.startswith((inside("/data"), inside("/etc")))]
    depth = [t.count("/") for t in vols]
    assert depth == sorted(depth)
    assert vols.index(inside("/data")) < vols.index(inside("/data/a")) < vols.index(inside("/data/a/b"))
    # a read-only directory volume: its whole tree at once (mount_setattr, recursive)
    assert ("mount_setattr rdonly", inside("/data/a"), True) in kernel.calls
    # the image's file is the mount point of a file volume: nothing made
    assert ("create", inside("/etc/passwd")) not in kernel.calls
    assert ("/srv/file", inside("/etc/passwd"), None, BIND | REC, None) in kernel.mounts()
    # "a" did not exist: made in the bound host directory, as the kernel would
    assert kernel.lookup("/srv/data/a") is not None


def test_a_read_only_directory_volume_without_mount_setattr_is_remounted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k = RecordingKernel(mount_setattr=False)
    monkeypatch.setattr(mounts, "KERNEL", k)
    run_ops(spec(mounts=(Mount("/ro", "/srv/ro", read_only=True),)))
    assert (None, inside("/ro"), None, REMOUNT | BIND | RDONLY, None) in k.mounts()
    assert not k.fds


@pytest.mark.parametrize(
    ("options", "flags", "data"),
    [
        ("", NOSUID | NODEV | NOEXEC, "mode=1777"),
        ("size=1m", NOSUID | NODEV | NOEXEC, "size=1m,mode=1777"),
        ("exec", NOSUID | NODEV, "mode=1777"),
        ("exec,suid,dev,mode=700", 0, "mode=700"),
        ("ro", RDONLY | NOSUID | NODEV | NOEXEC, "mode=1777"),
    ],
)
def test_tmpfs_flags_default_to_noexec_nosuid_nodev(
    kernel: RecordingKernel, options: str, flags: int, data: str
) -> None:
    m = Mount.parse_tmpfs(f"/scratch:{options}" if options else "/scratch")
    run_ops(spec(mounts=(m,)))
    assert ("tmpfs", inside("/scratch"), "tmpfs", flags, data) in kernel.mounts()


def test_read_only_root_comes_last_before_pivot_root(kernel: RecordingKernel) -> None:
    steps = run_ops(spec(read_only=True, mounts=(Mount("/data", "/srv/data"),)))
    assert steps[-2:] == ["make the root filesystem read-only", "pivot_root"]
    assert kernel.mounts()[-1] == (None, ROOT, None, REMOUNT | BIND | RDONLY, None)


def test_every_mount_lands_inside_the_root(monkeypatch: pytest.MonkeyPatch) -> None:
    hostile = {
        **HOST,
        "state": {
            "lower": {
                # an image whose mount points lead out of it
                "proc": "-> /etc",
                "sys": "-> ../../../etc",
                "dev": "-> /../../srv",
                "data": "-> /srv/data",
            },
            "c": {"upper": {}, "work": {}, "rootfs": {}},
        },
    }
    k = RecordingKernel(hostile)
    monkeypatch.setattr(mounts, "KERNEL", k)
    run_ops(spec(mounts=(Mount("/data/x", "/srv/ro"), Mount("/tmp", type="tmpfs"))))
    for _source, target, *_ in k.mounts():
        assert target == ROOT or str(target).startswith(ROOT + "/"), target
    made = [c[1] for c in k.calls if c[0] in ("mkdir", "create", "symlink")]
    assert made and all(str(p).startswith(ROOT + "/") for p in made)
    # the host's /etc and /srv got nothing
    assert set(k.lookup("/etc").children) == {"passwd", "shadow"}  # type: ignore[union-attr]
    assert set(k.lookup("/srv/data").children) == {"old"}  # type: ignore[union-attr]


# ---------------------------------------------------------------- open_target, real and fake


class Tree:
    """A root directory to resolve in, with an ``outside`` next to it, real or fake."""

    root: str
    outside: str

    def mkdir(self, path: str) -> None: ...
    def file(self, path: str) -> None: ...
    def symlink(self, path: str, target: str) -> None: ...
    def kind(self, path: str) -> str | None: ...
    def where(self, fd: int) -> str: ...
    def listing(self, path: str) -> set[str]: ...


class RealTree(Tree):
    def __init__(self, base: Path) -> None:
        (base / "root").mkdir()
        (base / "outside").mkdir()
        self.root, self.outside = str(base / "root"), str(base / "outside")

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def file(self, path: str) -> None:
        Path(path).write_text("")

    def symlink(self, path: str, target: str) -> None:
        os.symlink(target, path)

    def kind(self, path: str) -> str | None:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return None
        return "dir" if stat.S_ISDIR(mode) else "link" if stat.S_ISLNK(mode) else "file"

    def where(self, fd: int) -> str:
        return os.readlink(f"/proc/self/fd/{fd}")

    def listing(self, path: str) -> set[str]:
        return set(os.listdir(path))


class FakeTree(Tree):
    def __init__(self, k: RecordingKernel) -> None:
        self.k = k
        k.root.children["base"] = _tree({"root": {}, "outside": {}})
        self.root, self.outside = "/base/root", "/base/outside"

    def _add(self, path: str, node: Node) -> None:
        parent = self.k.lookup(os.path.dirname(path))
        assert parent is not None and parent.kind == "dir", path
        parent.children[os.path.basename(path)] = node

    def mkdir(self, path: str) -> None:
        self._add(path, Node("dir"))

    def file(self, path: str) -> None:
        self._add(path, Node("file"))

    def symlink(self, path: str, target: str) -> None:
        self._add(path, Node("link", target=target))

    def kind(self, path: str) -> str | None:
        node = self.k.lookup(path)
        return node.kind if node is not None else None

    def where(self, fd: int) -> str:
        return self.k.fds[fd][1]

    def listing(self, path: str) -> set[str]:
        node = self.k.lookup(path)
        assert node is not None
        return set(node.children)


@pytest.fixture(params=["real", "fake"])
def tree(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tree]:
    if request.param == "real":
        yield RealTree(tmp_path)
        return
    k = RecordingKernel()
    monkeypatch.setattr(mounts, "KERNEL", k)
    yield FakeTree(k)
    assert not k.fds, f"fds left open: {k.fds}"


def open_at(t: Tree, path: str, **kw: bool) -> str:
    """open_target's result, as a path relative to the root ("/" for the root)."""
    fd = mounts.open_target(t.root, path, **kw)
    try:
        where = t.where(fd)
    finally:
        mounts.KERNEL.close(fd)
    assert where == t.root or where.startswith(t.root + "/"), f"{path!r} resolved outside: {where}"
    return where[len(t.root) :] or "/"


def test_an_absolute_symlink_resolves_inside_the_root(tree: Tree) -> None:
    tree.symlink(f"{tree.root}/abs", "/etc")
    # the host's /etc/passwd exists; the root's does not: not found
    with pytest.raises(FileNotFoundError):
        mounts.open_target(tree.root, "/abs/passwd", directory=False, create=False)
    assert tree.kind(f"{tree.root}/etc") is None  # and nothing made without create
    tree.mkdir(f"{tree.root}/etc")
    tree.file(f"{tree.root}/etc/passwd")
    assert open_at(tree, "/abs/passwd", directory=False, create=False) == "/etc/passwd"


def test_an_absolute_symlink_to_a_host_directory_makes_its_target_inside(tree: Tree) -> None:
    tree.symlink(f"{tree.root}/out", tree.outside)
    assert open_at(tree, "/out/new/dir") == f"{tree.outside}/new/dir"
    assert tree.listing(tree.outside) == set()
    assert tree.kind(f"{tree.root}{tree.outside}/new/dir") == "dir"
    assert tree.kind(f"{tree.root}/out") == "link"


@pytest.mark.parametrize("link", ["../../..", "../../../../../..", "/..", "./../x/../.."])
def test_dot_dot_stops_at_the_root(tree: Tree, link: str) -> None:
    tree.mkdir(f"{tree.root}/sub")
    tree.symlink(f"{tree.root}/sub/up", link)
    assert open_at(tree, "/sub/up") == "/"
    assert open_at(tree, "/sub/up/made") == "/made"
    assert open_at(tree, "/../../made/../made2/f", directory=False) == "/made2/f"
    assert tree.kind(f"{tree.root}/made2/f") == "file"
    assert tree.listing(tree.outside) == set()
    assert tree.kind(f"{os.path.dirname(tree.root)}/made") is None


@pytest.mark.parametrize("links", [{"loop": "loop"}, {"a": "b", "b": "a"}, {"a": "a/x"}, {"a": "/a/../a"}])
def test_a_symlink_loop_is_eloop(tree: Tree, links: dict[str, str]) -> None:
    for name, target in links.items():
        tree.symlink(f"{tree.root}/{name}", target)
    for create in (False, True):
        with pytest.raises(OSError) as e:
            mounts.open_target(tree.root, f"/{next(iter(links))}/x", create=create)
        assert e.value.errno == errno.ELOOP


def test_a_dangling_symlink_is_followed_and_its_target_made_inside(tree: Tree) -> None:
    tree.mkdir(f"{tree.root}/d")
    tree.symlink(f"{tree.root}/d/abs", "/made/here")
    tree.symlink(f"{tree.root}/d/rel", "there")
    assert open_at(tree, "/d/abs/sub") == "/made/here/sub"
    assert open_at(tree, "/d/rel", directory=False) == "/d/there"
    assert tree.kind(f"{tree.root}/d/abs") == tree.kind(f"{tree.root}/d/rel") == "link"
    assert tree.kind(f"{tree.root}/d/there") == "file"
    # without create: not found, and nothing made
    tree.symlink(f"{tree.root}/d/none", "/nowhere")
    with pytest.raises(FileNotFoundError):
        mounts.open_target(tree.root, "/d/none", create=False)
    assert tree.kind(f"{tree.root}/nowhere") is None


@pytest.mark.parametrize(("length", "ok"), [(MAXSYMLINKS - 5, True), (MAXSYMLINKS + 5, False)])
def test_a_chain_of_dangling_symlinks_is_followed_up_to_the_limit(tree: Tree, length: int, ok: bool) -> None:
    for i in range(length):
        tree.symlink(f"{tree.root}/l{i}", f"l{i + 1}" if i + 1 < length else "/end")
    if ok:
        assert open_at(tree, "/l0") == "/end"
    else:
        with pytest.raises(OSError) as e:
            mounts.open_target(tree.root, "/l0")
        assert e.value.errno == errno.ELOOP
        assert tree.kind(f"{tree.root}/end") is None


@pytest.mark.parametrize(("length", "ok"), [(MAXSYMLINKS - 5, True), (MAXSYMLINKS + 5, False)])
def test_dangling_symlinks_followed_one_creation_at_a_time_count_too(
    tree: Tree, length: int, ok: bool
) -> None:
    # each link leads through a directory not made yet: no single lookup follows more
    # than two links, so the limit is open_target's own count
    for i in range(length):
        tree.symlink(f"{tree.root}/l{i}", f"m{i}/../l{i + 1}" if i + 1 < length else "end")
    if ok:
        assert open_at(tree, "/l0") == "/end"
    else:
        with pytest.raises(OSError) as e:
            mounts.open_target(tree.root, "/l0")
        assert e.value.errno == errno.ELOOP
    assert tree.listing(tree.outside) == set()


def test_a_file_in_the_middle_of_a_path_is_enotdir(tree: Tree) -> None:
    tree.file(f"{tree.root}/file")
    tree.symlink(f"{tree.root}/tofile", "/file")
    for path in ("/file/x", "/file/x/y", "/tofile/x"):
        for create in (False, True):
            with pytest.raises(OSError) as e:
                mounts.open_target(tree.root, path, create=create)
            assert e.value.errno == errno.ENOTDIR, path
    # a file wanted as a directory: ENOTDIR too; as a file, it is the one
    with pytest.raises(OSError) as e:
        mounts.open_target(tree.root, "/tofile")
    assert e.value.errno == errno.ENOTDIR
    assert open_at(tree, "/tofile", directory=False) == "/file"
    assert tree.listing(tree.root) == {"file", "tofile"}


def test_what_is_missing_is_made_a_directory_or_an_empty_file(tree: Tree) -> None:
    assert open_at(tree, "/a/b/c") == "/a/b/c"
    assert open_at(tree, "/a/b/f", directory=False) == "/a/b/f"
    assert (tree.kind(f"{tree.root}/a/b/c"), tree.kind(f"{tree.root}/a/b/f")) == ("dir", "file")
    with pytest.raises(FileNotFoundError):
        mounts.open_target(tree.root, "/x/y", create=False)
    assert open_at(tree, "/") == "/"


# ---------------------------------------------------------------- lookups racing with the host


def test_a_lookup_that_raced_with_a_rename_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # RESOLVE_IN_ROOT's EAGAIN: the kernel could not tell whether a ".." stayed inside;
    # _linux.openat2 tries again, for every caller (mounts, users, files)
    import ctypes

    real, failures = _linux._syscall, iter(range(5))

    def racing(nr: object, *args: object) -> int:
        if getattr(nr, "value", None) == _linux.NR_OPENAT2 and next(failures, None) is not None:
            ctypes.set_errno(errno.EAGAIN)
            return -1
        return int(real(nr, *args))

    monkeypatch.setattr(_linux, "_syscall", racing)
    fd = mounts.open_target(str(tmp_path), "/a/../b")
    os.close(fd)
    assert (tmp_path / "b").is_dir()

    # a lookup that never gets through is an error, not a loop
    def always_racing(nr: object, *args: object) -> int:
        if getattr(nr, "value", None) == _linux.NR_OPENAT2:
            ctypes.set_errno(errno.EAGAIN)
            return -1
        return int(real(nr, *args))

    monkeypatch.setattr(_linux, "_syscall", always_racing)
    with pytest.raises(BlockingIOError):
        mounts.open_target(str(tmp_path), "/b")


def test_lookups_with_dot_dot_survive_renames_elsewhere_on_the_host(tmp_path: Path) -> None:
    # Any rename on the host (or mount, in any namespace) during a ".." lookup makes
    # openat2 RESOLVE_IN_ROOT give up with EAGAIN; containers starting side by side
    # cause plenty. The child must not fail a mount for it.
    root, busy = tmp_path / "root", tmp_path / "busy"
    (root / "a" / "b").mkdir(parents=True)
    busy.mkdir()
    stop = threading.Event()

    def rename_storm() -> None:
        i = 0
        while not stop.is_set():
            (busy / "x").touch()
            os.rename(busy / "x", busy / f"y{i % 2}")
            i += 1

    storm = threading.Thread(target=rename_storm)
    storm.start()
    try:
        for _ in range(3000):
            os.close(mounts.open_target(str(root), "/a/b/../../a/b/../../a/b/../../a/b/../..", create=False))
    finally:
        stop.set()
        storm.join()


# ---------------------------------------------------------------- the raw path, for real


def _masks_made_by(tmp: Path, kernel: mounts.Kernel) -> list[tuple[str, str, str]]:
    """In a child with a mount namespace of its own: a root with a fresh proc and
    sysfs, docker's masked and read-only paths done through ``kernel``; the mounts
    below the root as (path, fs type, per-mount options)."""
    import ctypes

    root = tmp / "root"
    for d in ("proc", "sys"):
        (root / d).mkdir(parents=True, exist_ok=True)

    def run() -> object:
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.mount(b"proc", str(root / "proc").encode(), b"proc", 0, None) == 0
        assert libc.mount(b"sysfs", str(root / "sys").encode(), b"sysfs", 0, None) == 0
        mounts.KERNEL = kernel
        masked = tuple(mounts._in_root(p) for p in mounts.MASKED_PATHS)
        read_only = tuple(mounts._in_root(p) for p in mounts.READONLY_PATHS)
        mounts._hide_and_protect(str(root), masked, read_only)
        made = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            at, options = fields[4], fields[5]
            fstype = fields[fields.index("-") + 1]
            if at.startswith(str(root) + "/"):
                made.append((at[len(str(root)) :], fstype, options))
        return made

    out = _in_mount_namespace(run)
    assert isinstance(out, dict) and "result" in out, out
    return [tuple(m) for m in out["result"]]  # type: ignore[misc]


@pytest.mark.root
def test_the_raw_masks_are_the_same_mounts_as_the_kernel_steps(tmp_path: Path) -> None:
    # A container's child masks through raw calls (_hide_and_protect_raw); any other
    # Kernel, a subclass that changes nothing included, goes through its methods.
    class Plain(mounts.Kernel):
        pass

    raw = _masks_made_by(tmp_path, mounts.Kernel())
    through_methods = _masks_made_by(tmp_path, Plain())
    assert raw == through_methods
    made = {at: (fstype, options) for at, fstype, options in raw}
    assert all(made[p][1].startswith("ro,") for p in mounts.READONLY_PATHS if p in made)
    assert "/proc/sys" in made and "/proc/keys" in made  # on every kernel of these years


def _in_mount_namespace(fn: Callable[[], object]) -> object:
    """``fn()`` in a forked child with a mount namespace of its own (private): its
    result (JSON), or the exception's text."""
    import ctypes
    import json

    libc = ctypes.CDLL(None, use_errno=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(r)
            assert libc.unshare(_linux.CLONE_NEWNS) == 0
            assert libc.mount(None, b"/", None, _linux.MS_REC | _linux.MS_PRIVATE, None) == 0
            try:
                out: object = {"result": fn()}
            except Exception as e:  # noqa: BLE001 - reported to the test
                out = {"error": f"{type(e).__name__}: {e}"}
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.root
@pytest.mark.parametrize("path", [".", "up", "a/.."])
def test_a_read_only_path_that_is_the_root_makes_the_root_read_only(tmp_path: Path, path: str) -> None:
    # (an OCI bundle's readonlyPaths may name "/" or a symlink to it): a bind onto
    # the root then a lookup from it would make the mount under the bind read-only
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "up").symlink_to("/")

    def run() -> object:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.mount(str(root).encode(), str(root).encode(), None, _linux.MS_BIND, None) == 0
        mounts._hide_and_protect(str(root), (), (path,))
        try:
            (root / "written").write_text("x")
        except OSError as e:
            return e.errno
        return 0

    assert _in_mount_namespace(run) == {"result": errno.EROFS}
    assert not (root / "written").exists()


@pytest.mark.root
def test_a_path_that_is_not_utf8_is_looked_up_as_bytes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    missing = "proc/\udcff"  # os.fsencode's surrogate escape of byte 0xff
    got = _in_mount_namespace(lambda: mounts._hide_and_protect(str(root), (missing,), (missing,)))
    assert got == {"result": None}  # not on this "kernel": skipped, no error


@pytest.mark.root
def test_a_refused_mount_setattr_falls_back_to_a_remount(tmp_path: Path) -> None:
    # e.g. a seccomp filter that refuses mount_setattr (EPERM) but not mount(2)
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)

    def run() -> object:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.mount(b"proc", str(root / "proc").encode(), b"proc", 0, None) == 0
        _linux.raw_make_read_only = lambda fd: -errno.EPERM  # only in this child
        mounts._hide_and_protect(str(root), (), ("proc/sys",))
        line = next(
            m
            for m in Path("/proc/self/mountinfo").read_text().splitlines()
            if m.split()[4].endswith("/proc/sys")
        )
        return line.split()[5].split(",")[0]

    assert _in_mount_namespace(run) == {"result": "ro"}
