"""A stopped container's root filesystem, as it was: for ``cp`` and ``commit``.

A container that runs is reached through its PID 1's root (``files.py``). One that
exited has only its layers: its upper directory over its image. Those are mounted
again (overlayfs) in a private mount namespace of a short-lived process, so that
nothing is mounted on the host and a path is resolved exactly as the container saw
it (whiteouts, opaque directories, its symlinks kept inside by ``RESOLVE_IN_ROOT``):

- read-only, for ``cp`` out of it and ``commit`` (``lowerdir=upper:image``: its
  changes become one more read-only layer);
- read-write, for ``cp`` into it (``upperdir``/``workdir`` as when it ran).

As root that process only unshares its mount namespace; without root it is the
root of a user namespace with the user's subordinate ids (``userns.call_in_userns``),
where overlayfs keeps its data in ``user.*`` xattrs, as when the container ran.
Tar streams travel through pipes passed to it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from . import _linux
from .errors import MydockerError, SpecError

_CHILD = "import sys\nfrom supervisor.layers import _here\nsys.exit(_here(*sys.argv[1:]))\n"


def _mount(lower: str, upper: str, work: str, mountpoint: str, writable: bool) -> None:
    userxattr = ",userxattr" if os.geteuid() == 0 and _in_userns() else ""
    if writable:
        data = f"lowerdir={lower},upperdir={upper},workdir={work}{userxattr}"
        flags = 0
    else:
        data = f"lowerdir={upper}:{lower}{userxattr}"
        flags = _linux.MS_RDONLY
    _linux.mount("overlay", mountpoint, "overlay", flags | _linux.MS_NOSUID | _linux.MS_NODEV, data)


def _in_userns() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split()[:3] != ["0", "0", "4294967295"]
    except OSError:
        return False


def _here(op: str, *args: str) -> int:
    """In the child: ``_do``; 0, or 125 with the message on stderr."""
    try:
        _do(op, *args)
    except (MydockerError, OSError) as e:
        print(str(e), file=sys.stderr)
        return 125
    return 0


def _do(op: str, lower: str, upper: str, work: str, mountpoint: str, *args: str) -> None:
    """In the child: mount the layers privately, then do ``op``."""
    from .files import Root, extract_archive, open_top, write_archive

    try:
        _linux.unshare(_linux.CLONE_NEWNS)
        _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
        _mount(lower, upper, work, mountpoint, writable=op == "put")
        with Root.at(mountpoint) as root:
            if op == "get":  # fd, path: a tar stream of path to fd
                fd, path = int(args[0]), args[1]
                top = open_top(root, path)
                try:
                    with os.fdopen(fd, "wb") as out:
                        write_archive(top, path, out)
                finally:
                    os.close(top)
            elif op == "put":  # fd, path: unpack the tar stream on fd into path
                fd, path = int(args[0]), args[1]
                with os.fdopen(fd, "rb") as src:
                    extract_archive(root, path, src)
            elif op == "kind":  # fd, path: "dir", "file" or "" to fd
                fd, path = int(args[0]), args[1]
                os.write(fd, (root.kind(path) or "").encode())
                os.close(fd)
            elif op == "commit":  # image, state dir
                _commit(root, args[0], args[1])
            else:
                raise SpecError(f"unknown operation {op!r}")
    except BrokenPipeError:
        pass  # the reader went away


def _commit(root: object, image: str, sdir: str) -> None:
    """Import the mounted root (``root``'s directory) as ``image``."""
    import threading

    from .files import Root, open_top, write_archive
    from .images import import_image

    assert isinstance(root, Root)
    r, w = os.pipe()
    top = open_top(root, "/.")
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(w, "wb") as out:
                write_archive(top, "/.", out)
        except BrokenPipeError:
            pass
        except BaseException as e:  # noqa: BLE001 - reported by the importing thread
            failure.append(e)
        finally:
            os.close(top)

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        with os.fdopen(r, "rb") as src:
            import_image(image, src, sdir)
    finally:
        thread.join()
    if failure:
        raise failure[0]


def run(entry: object, op: str, *args: str, pass_fds: tuple[int, ...] = ()) -> None:
    """Do ``op`` (``get``, ``put``, ``kind``, ``commit``) on the stopped container
    ``entry``'s layers, in a child process (see the module's docstring).

    Raises:
        SpecError: it has no root filesystem of its own, or ``op`` failed (its message).
    """
    from .records import Entry

    assert isinstance(entry, Entry)
    spec = entry.spec()
    if spec.rootfs is None:
        raise SpecError(
            f"container {entry.name or entry.short_id} has no root filesystem of its own "
            "(it ran on the host's, with --rootfs or --image it would have one)"
        )
    layers = (spec.rootfs, f"{entry.dir}/upper", f"{entry.dir}/work", f"{entry.dir}/rootfs")
    with _held(entry, op):
        _run(op, layers, args, pass_fds)


@contextlib.contextmanager
def _held(entry: Any, op: str) -> Iterator[None]:
    """The container's lock for the ``with`` (its layers mounted by one process at a
    time; ``rm`` waits), unless it runs: a running one is only read (``commit``),
    frozen meanwhile where cgroup v2 can (docker commit's ``--pause``)."""
    from . import state

    sdir = os.path.dirname(os.path.dirname(entry.dir))
    if op == "commit" and entry.running:
        with _frozen(entry.state.get("Cgroups") or []):
            yield
        return
    taken = state.lock_container(sdir, entry.id, wait=True)
    assert taken is not None
    try:
        yield
    finally:
        for fd in reversed(taken):
            os.close(fd)


@contextlib.contextmanager
def _frozen(dirs: list[str]) -> Iterator[None]:
    v2 = [d for d in dirs if os.path.exists(os.path.join(d, "cgroup.freeze"))]
    if not v2:
        yield  # no freezer to be had: its upper layer is read as it is
        return
    freeze = os.path.join(v2[0], "cgroup.freeze")
    try:
        with open(freeze, "w") as f:
            f.write("1")
    except OSError:
        yield
        return
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            with open(os.path.join(v2[0], "cgroup.events")) as f:
                if "frozen 1" in f.read():
                    break
            time.sleep(0.005)
        yield
    finally:
        with contextlib.suppress(OSError), open(freeze, "w") as f:
            f.write("0")


def _run(op: str, layers: tuple[str, ...], args: tuple[str, ...], pass_fds: tuple[int, ...]) -> None:
    if os.geteuid() != 0:
        from .userns import call_in_userns, rootless_mapping

        call_in_userns(rootless_mapping(), "supervisor.layers:_do", op, *layers, *args, pass_fds=pass_fds)
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    # -P: the current directory is not searched first; a `supervisor` package there
    # (copied out of a container by `cp CTR:/supervisor .`) would run as root
    proc = subprocess.run(
        [sys.executable, "-P", "-c", _CHILD, op, *layers, *args],
        pass_fds=pass_fds,
        env=env,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SpecError(lines[-1] if lines else f"{op} on the container's layers failed")


def commit(sdir: str, entry: object, image: str) -> object:
    """``docker commit``: a new image ``image`` of the container's root filesystem
    with its changes (its upper layer over its image, read-only: a running container
    goes on running). Returns the ``images.Image``.

    Raises:
        SpecError: a bad or taken image name, a container without a root filesystem
            of its own, or the import failed.
    """
    from .images import check_name, list_images

    check_name(image)
    if any(i.name == image for i in list_images(sdir)):
        raise SpecError(f"image {image} already exists (remove it first: mydocker image rm {image})")
    run(entry, "commit", image, sdir)
    for made in list_images(sdir):
        if made.name == image:
            return made
    raise SpecError(f"image {image} was not made")
