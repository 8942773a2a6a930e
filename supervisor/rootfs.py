"""A container's root filesystem, on the host side: resolve it, make its directory.

``resolve`` checks a spec's image, root filesystem and volume paths before anything
exists on the host; ``make_container_dir`` makes the container's directory in the
state directory (``state.py``) and registers its removal. The mounts themselves are
made in the child: ``mounts.py``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Mapping

from . import state
from .errors import SpecError
from .mounts import ContainerDirs
from .spec import ContainerSpec


def resolve(spec: ContainerSpec) -> ContainerSpec:
    """Fill in ``state_dir`` and, for ``image``, ``rootfs``; check the host side.

    Nothing is created. A spec without a root filesystem is returned unchanged.

    Raises:
        SpecError: an OCI bundle's spec (``spec.oci``: mydocker-runc runs those);
            unknown image; a missing, non-directory or unreadable rootfs; a
            volume whose host path does not exist; a path overlayfs cannot take.
    """
    if spec.oci is not None:
        # its root is used as it is, its mounts and confinement are its config's:
        # made by mydocker-runc (supervisor/oci), never by start_container's overlay
        raise SpecError("this spec describes an OCI bundle: run it with mydocker-runc (supervisor.oci)")
    if spec.rootfs is None and spec.image is None:
        return spec
    changes: dict[str, object] = {}
    sdir = state.state_dir(spec.state_dir)
    if spec.state_dir != sdir:
        changes["state_dir"] = sdir
    if spec.image is not None:
        from .images import image_rootfs

        rootfs = image_rootfs(spec.image, sdir)
        if spec.rootfs is not None and os.path.realpath(spec.rootfs) != os.path.realpath(rootfs):
            raise SpecError("give either a root filesystem or an image, not both")
        if spec.rootfs != rootfs:
            changes["rootfs"] = rootfs
    if changes:
        spec = spec.evolve(**changes)
    assert spec.rootfs is not None
    _check_dir(spec.rootfs, "root filesystem")
    real_root, real_state = os.path.realpath(spec.rootfs), os.path.realpath(sdir)
    if os.path.commonpath([real_root, real_state]) == real_root:
        # the container's layers would be written into its own image (and overlayfs
        # does not support an upper layer inside its lower one)
        raise SpecError(
            f"the state directory {sdir} is inside the root filesystem {spec.rootfs} (use --state-dir)"
        )
    for path, what in ((spec.rootfs, "root filesystem"), (sdir, "state directory")):
        # overlayfs options are comma separated and lowerdir is colon separated
        if any(c in path for c in ",:\\"):
            raise SpecError(f"the {what} path cannot contain ',', ':' or '\\': {path!r}")
    for m in spec.mounts:
        if m.type == "bind":
            assert m.source is not None
            try:
                os.stat(m.source)
            except FileNotFoundError:
                raise SpecError(f"volume host path does not exist: {m.source}") from None
            except OSError as e:
                raise SpecError(f"volume host path {m.source}: {e.strerror}") from None
    return spec


def _check_dir(path: str, what: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SpecError(f"{what} does not exist: {path}") from None
    except OSError as e:
        raise SpecError(f"{what} {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SpecError(f"{what} is not a directory: {path}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise SpecError(f"{what} is not readable: {path}")
    try:
        os.listdir(path)
    except OSError as e:
        raise SpecError(f"{what} {path} is not readable: {e.strerror}") from None


#: state directories already swept by this process
_swept: set[str] = set()


def make_container_dir(
    spec: ContainerSpec,
    stack: contextlib.ExitStack,
    files: Mapping[str, bytes] | None = None,
    claim: Callable[[], Callable[[], None]] | None = None,
) -> tuple[state.OwnedDir | None, ContainerDirs | None]:
    """Make the container's directory (spec, overlay upper/work, mount point, and
    ``files``; ``claim`` as ``state.OwnedDir.make``'s) and return it and what its
    root filesystem is made of. A container without a root filesystem gets a
    directory only if it has ``files`` (a registered one: ``records.py``); else
    ``(None, None)``. ``spec`` must be resolved.

    Its removal is registered in ``stack``, so closing the stack removes it on every
    path. The first time in a process, the directories of dead owners are swept.

    Raises:
        SpecError: a container with this id already has a directory, or the state
            directory cannot be used.
    """
    if spec.rootfs is None and files is None:
        return None, None
    sdir = state.state_dir(spec.state_dir)
    if sdir not in _swept:  # once per process: a CLI run, or a service's first container
        _swept.add(sdir)
        state.sweep_dead(sdir)
    try:
        owned = state.OwnedDir.make(spec, files, claim)
    except FileExistsError:
        raise SpecError(f"container {spec.short_id} already exists in {state.containers_dir(sdir)}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SpecError(f"{state.containers_dir(sdir)} is a symlink: refusing to use it") from None
        raise SpecError(f"cannot use the state directory {sdir}: {e.strerror or e}") from None
    stack.callback(owned.remove)
    if spec.rootfs is None:
        return owned, None
    where = owned.where
    return owned, ContainerDirs(
        lower=spec.rootfs, upper=where.upper, work=where.work, mountpoint=where.rootfs
    )
