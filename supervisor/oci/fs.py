"""The child's filesystem steps for an OCI bundle, in runc's order (built here, run
by the child with ``mounts.py``'s functions, as mydocker's own container's are):

    the bundle's root bound onto itself
    each of ``mounts``, in order (a read-only tmpfs or /dev is made read-only last)
    unless /dev is bound from elsewhere: the default device nodes, ``linux.devices``
        and the /dev symlinks (ptmx, fd, stdin, stdout, stderr)
    ``linux.sysctl`` (in the container's own /proc/sys), the working directory
    a pause for the prestart, createRuntime and createContainer hooks
    ``linux.readonlyPaths``, ``linux.maskedPaths``, the late read-only mounts,
        ``root.readonly``
    pivot_root, then ``linux.rootfsPropagation`` (shared or unbindable) on /

Without a mount namespace of its own (none in the config) no mount is made: it
would be made in the host's namespace and outlive the container. The process is
only chrooted into the bundle's root (runc would mount there; mydocker never
touches the host's mount table).
"""

from __future__ import annotations

import os
import stat

from .. import mounts
from ..mounts import Op
from ..spec import ContainerSpec
from .config import MS_RDONLY, MS_SHARED, MS_UNBINDABLE, OciSettings

#: the nodes every container's /dev gets (runtime-spec config-linux.md "Default Devices")
DEFAULT_DEVICES = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
#: the symlinks of /dev (runtime-spec "Default Filesystems" and runc's)
DEV_SYMLINKS = (
    ("pts/ptmx", "/dev/ptmx"),
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
)
_NODE = {"c": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}


def needs_dev(oci: OciSettings) -> bool:
    """Whether the runtime makes /dev's nodes and links: unless /dev is a bind mount."""
    return not any(m.bind and m.destination == "/dev" for m in oci.mounts)


def child_ops(
    spec: ContainerSpec,
    oci: OciSettings,
    *,
    mount_namespace: bool,
    hooks_pause: tuple[int, int] | None = None,
) -> list[Op]:
    """The steps of a bundle's root filesystem (see the module docstring).

    Args:
        spec: the container (``rootfs`` the bundle's root, ``read_only``).
        oci: what else its config says.
        mount_namespace: a mount namespace of its own (made, or joined by path).
        hooks_pause: (error pipe, hooks pipe) fds in the child: pause there for the
            runtime's hooks.
    """
    assert spec.rootfs is not None
    root = spec.rootfs
    if not mount_namespace:
        return [Op(f"chroot into {root}", mounts._chroot, (root,))]
    ops = [Op(f"bind the root {root}", mounts._bind_root, (root,))]
    late_read_only: list[str] = []
    for m in oci.mounts:
        if m.bind:
            args = (root, m.source, m.destination, m.recursive, m.flags, m.propagation, m.recursive_ro)
            ops.append(Op(f"bind {m.source} on {m.destination}", mounts._bind_mount, args))
            continue
        flags = m.flags
        if flags & MS_RDONLY and (m.type == "tmpfs" or m.destination == "/dev"):
            # made read-only once the nodes and mounts below it are made (as runc)
            flags &= ~MS_RDONLY
            late_read_only.append(m.destination)
        fstype = "cgroup2" if m.type == "cgroup" else m.type
        args2 = (root, m.destination, m.source, fstype, flags, m.data or None, m.propagation)
        ops.append(Op(f"mount {m.type} on {m.destination}", mounts._mount_fs, args2))
    if needs_dev(oci):
        listed = {d.path for d in oci.devices}
        for name, major, minor in DEFAULT_DEVICES:
            path = f"/dev/{name}"
            if path not in listed:
                ops.append(_device_op(root, path, "c", major, minor, 0o666, 0, 0, oci.user_namespace))
        for d in oci.devices:
            mode = 0o666 if d.mode is None else d.mode
            ops.append(
                _device_op(root, d.path, d.type, d.major, d.minor, mode, d.uid, d.gid, oci.user_namespace)
            )
        for target, path in DEV_SYMLINKS:
            ops.append(Op(f"symlink {path}", mounts._symlink_in, (root, target, path, True)))
    for key, value in oci.sysctl:
        path = "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))
        ops.append(Op(f"sysctl {key}={value}", mounts._write_in, (root, path, value.encode())))
    if spec.cwd and spec.cwd != "/":
        ops.append(Op(f"make the working directory {spec.cwd}", mounts._make_dir, (root, spec.cwd)))
    if hooks_pause is not None:
        ops.append(Op("run the hooks", mounts._pause_for_hooks, hooks_pause))
    ops += [Op(f"make {p} read-only", mounts._read_only_path, (root, p)) for p in oci.readonly_paths]
    ops += [Op(f"mask {p}", mounts._mask, (root, p)) for p in oci.masked_paths]
    ops += [Op(f"make {p} read-only", mounts._make_read_only, (root, p)) for p in late_read_only]
    if spec.read_only:
        ops.append(Op("make the root filesystem read-only", mounts._make_read_only, (root, "/")))
    ops.append(Op("pivot_root", mounts._pivot_root, (root,)))
    if oci.rootfs_propagation & (MS_SHARED | MS_UNBINDABLE):
        # after pivot_root: on the container's / only (before it, a shared root would
        # be the host's peer)
        ops.append(Op("set the root's propagation", mounts._propagate, ("/", "/", oci.rootfs_propagation)))
    return ops


def _device_op(
    root: str, path: str, kind: str, major: int, minor: int, mode: int, uid: int, gid: int, userns: bool
) -> Op:
    if userns and kind != "p":
        # a user namespace may not make device nodes: the host's is bound (runc's way)
        return Op(f"bind the device {path}", mounts._bind_in, (root, path, path))
    node = _NODE[kind] | (mode & 0o7777)
    return Op(
        f"make the device {path}", mounts._mknod_in, (root, path, node, os.makedev(major, minor), uid, gid)
    )


def wire_ops(ops: list[Op]) -> tuple[tuple[str, str, tuple[object, ...]], ...]:
    """The steps as they travel to the child (``init.child_spec``'s ``fs_ops``)."""
    return tuple((op.step, op.fn.__name__, op.args) for op in ops)
