"""``mydocker exec`` and ``mydocker cp``: a second command in a running container, and
files in and out of one (running, or exited and not yet removed).

``exec`` is the library's (``exec.open_exec``) on a target built from the record;
the exec'd process is the CLI's child, proxied like a foreground ``run``. ``cp`` keeps
docker's rules for what lands where (``_plan_out``, ``_plan_in``). Every path inside
the container is resolved in its root (``files.py``; an exited one's layers are
mounted privately, ``layers.py``); what comes out of a container is unpacked with the
image import's safety (nothing through a symlink, no ``..``, no device), owned by
the caller and without set-id bits: a container cannot plant a set-uid file on the
host.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

import click

from ..errors import MydockerError
from .options import resolve_state_dir, state_dir_option


@click.command(
    "exec",
    context_settings={"allow_interspersed_args": False},
    short_help="Run a command in a running container.",
)
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin attached.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-terminal.")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY[=VALUE]", help="Set an environment variable.")
@click.option("-w", "--workdir", metavar="DIR", help="Working directory inside the container.")
@click.option("-u", "--user", metavar="NAME|UID[:GROUP|GID]", help="The user the command runs as.")
@state_dir_option
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(
    interactive: bool,
    tty: bool,
    env: tuple[str, ...],
    workdir: str | None,
    user: str | None,
    state_dir: str | None,
    container: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND in CONTAINER: its namespaces, root, cgroup and confinement (the
    capabilities and seccomp of its PID 1). Exit status: COMMAND's (126/127 if it
    cannot be executed / found)."""
    from .. import lifecycle, records
    from ..exec import open_exec
    from ..spec import parse_env
    from .foreground import run_foreground

    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise MydockerError("no command given (usage: mydocker exec [OPTIONS] CONTAINER COMMAND [ARG...])")
    target = lifecycle.exec_target(records.find(resolve_state_dir(state_dir), container))
    variables = dict(parse_env(env))

    def start(stdin: Any, stdout: Any, stderr: Any, winsize: tuple[int, int] | None) -> Any:
        return open_exec(
            target,
            command,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=variables,
            cwd=workdir,
            user=user,
            tty=tty,
            winsize=winsize,
        )

    try:
        status = run_foreground(start, tty=tty, interactive=interactive)
    finally:
        os.close(target.pidfd)
    sys.exit(status)


# -- cp ----------------------------------------------------------------------------------


class _Container:
    """The container side of a copy: a running container through its PID 1's root,
    an exited one through its layers."""

    def __init__(self, entry: Any) -> None:
        self.entry = entry
        self.pidfd = -1
        from ..errors import ContainerNotRunningError

        with contextlib.suppress(ContainerNotRunningError):
            self.pidfd = entry.open_pidfd()
        identity = entry.identity() if self.pidfd >= 0 or entry.state else None
        mapping = getattr(identity, "mapping", None)
        #: the ids of its root, as the process that unpacks what is copied in sees
        #: them: on the host for a running one, as root, the host ids its root maps
        #: to; without root our own ids; an exited one's layers are written by the
        #: root of a user namespace mapping 0 to us (layers.py) without root
        self.owner = (
            (mapping.uids[0].outside, mapping.gids[0].outside)
            if mapping is not None and os.geteuid() == 0
            else (0, 0)
            if os.geteuid() == 0 or self.pidfd < 0
            else (os.geteuid(), os.getegid())
        )

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    @contextlib.contextmanager
    def _root(self) -> Iterator[Any]:
        from ..files import Root

        with Root(int(self.entry.state["Pid"]), self.pidfd) as root:
            yield root

    def kind(self, path: str) -> str | None:
        if self.pidfd >= 0:
            with self._root() as root:
                return root.kind(path)
        from .. import layers

        r, w = os.pipe()
        try:
            layers.run(self.entry, "kind", str(w), path, pass_fds=(w,))
        finally:
            os.close(w)
        with os.fdopen(r, "rb") as f:
            return f.read().decode() or None

    def get(self, path: str, out: int) -> None:
        """A tar stream of ``path`` to fd ``out`` (closed when done, however it ends:
        the reader at its other end waits for that)."""
        with os.fdopen(out, "wb") as f:
            if self.pidfd >= 0:
                from ..files import open_top, write_archive

                # the container may have exited, or removed the path, since ``kind``
                with self._root() as root:
                    top = open_top(root, path)
                try:
                    write_archive(top, path, f)
                finally:
                    os.close(top)
                return
            from .. import layers

            layers.run(self.entry, "get", str(out), path, pass_fds=(out,))

    def put(self, path: str, src: int) -> None:
        """Unpack the tar stream on fd ``src`` (closed when done, however it ends: the
        writer at its other end waits for that) into ``path``."""
        with os.fdopen(src, "rb") as f:
            if self.pidfd >= 0:
                from ..files import extract_archive

                with self._root() as root:
                    extract_archive(root, path, f)
                return
            from .. import layers

            layers.run(self.entry, "put", str(src), path, pass_fds=(src,))


def _split(arg: str) -> tuple[str | None, str]:
    """``CONTAINER:PATH`` -> (container, path); a local path -> (None, path)."""
    if arg == "-" or arg.startswith(("/", ".")):
        return None, arg
    name, sep, path = arg.partition(":")
    if not sep:
        return None, arg
    return name, path or "/"


def _threaded(produce: Callable[[int], object], consume: Callable[[IO[bytes]], object]) -> None:
    """``produce(w)`` writes a stream to a pipe in a thread while ``consume(r)`` reads it."""
    r, w = os.pipe()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            produce(w)
        except BrokenPipeError:
            pass
        except BaseException as e:  # noqa: BLE001 - raised below, in the caller's thread
            failure.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        with os.fdopen(r, "rb") as src:
            consume(src)
    finally:
        thread.join()
    if failure:
        raise failure[0]


def _retagged(src: IO[bytes], out: IO[bytes], rename: str | None, owner: tuple[int, int]) -> None:
    """Copy a tar stream, its top member renamed to ``rename`` (the rest below it
    follows), every member owned by ``owner``, without set-uid/set-gid bits."""
    with (
        tarfile.open(fileobj=src, mode="r|") as tin,
        tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tout,
    ):
        top: str | None = None
        for m in tin:
            name = m.name.rstrip("/")
            if rename is not None:
                if top is None:
                    top = name
                if name == top:
                    m.name = rename
                elif name.startswith(top + "/"):
                    m.name = rename + name[len(top) :]
            m.uid, m.gid = owner
            m.uname = m.gname = ""
            m.mode &= 0o1777
            tout.addfile(m, tin.extractfile(m) if m.isreg() else None)


def _local_dir_fd(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MydockerError(f"no such directory: {path}") from None
    except NotADirectoryError:
        raise MydockerError(f"not a directory: {path}") from None


def _plan_out(kind: str, src: str, dest: str) -> tuple[str, str | None]:
    """Where a copy out of the container lands: (the local directory the archive is
    unpacked in, the new name of its top member or None)."""
    contents_only = src.rstrip("/").endswith("/.")
    if os.path.isdir(dest):
        return dest, None
    if os.path.lexists(dest):
        if kind == "dir":
            raise MydockerError(f"cannot copy a directory to a file: {dest}")
        return os.path.dirname(os.path.abspath(dest)), os.path.basename(dest)
    if dest.endswith("/"):
        raise MydockerError(f"no such directory: {dest}")
    if contents_only:
        os.mkdir(dest, 0o755)
        return dest, None
    return os.path.dirname(os.path.abspath(dest)), os.path.basename(os.path.normpath(dest))


def _plan_in(src: str, kind: str | None, dest: str) -> tuple[str, str | None]:
    """Where a copy into the container lands: (its directory the archive is unpacked
    in, the name of the top member; None: the contents of ``src``)."""
    is_dir = os.path.isdir(src) and not os.path.islink(src)
    contents_only = src.rstrip("/").endswith("/.")
    if kind == "dir":
        return dest, None if contents_only and is_dir else os.path.basename(os.path.normpath(src))
    if kind == "file":
        if is_dir:
            raise MydockerError(f"cannot copy a directory to a file: {dest}")
        return os.path.dirname(dest.rstrip("/")) or "/", os.path.basename(dest)
    if dest.endswith("/"):
        raise MydockerError(f"no such directory in the container: {dest}")
    return os.path.dirname(dest) or "/", os.path.basename(dest)


def _host_archive(src: str, top: str | None, owner: tuple[int, int], out: int) -> None:
    """A tar stream of the local ``src`` (as ``top``, or its contents) to fd ``out``."""

    def own(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid, info.gid = owner
        info.uname = info.gname = ""
        return info

    with contextlib.suppress(BrokenPipeError), os.fdopen(out, "wb") as f:  # the reader failed: it says why
        with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            if top is not None:
                tf.add(src, arcname=top, filter=own)
            else:
                for child in sorted(os.listdir(src)):
                    tf.add(os.path.join(src, child), arcname=child, filter=own)


@click.command(short_help="Copy files between a container and the host.")
@click.option("-a", "--archive", is_flag=True, hidden=True)
@state_dir_option
@click.argument("src")
@click.argument("dest")
def cp(archive: bool, state_dir: str | None, src: str, dest: str) -> None:
    """Copy SRC to DEST, one of them CONTAINER:PATH, as docker cp: a directory with
    all below it, `DIR/.` for its contents, `-` for a tar stream on stdin/stdout.
    Works on running containers and on exited ones not yet removed."""
    from .. import records
    from ..images import extract_into

    (src_ctr, src_path), (dest_ctr, dest_path) = _split(src), _split(dest)
    if (src_ctr is None) == (dest_ctr is None):
        raise MydockerError("give exactly one of SRC and DEST as CONTAINER:PATH")
    sdir = resolve_state_dir(state_dir)
    ctr = _Container(records.find(sdir, src_ctr or dest_ctr or ""))
    try:
        if src_ctr is not None:  # out of the container
            kind = ctr.kind(src_path)
            if kind is None:
                raise MydockerError(f"no such file or directory in the container: {src_path}")
            if dest_path == "-":
                ctr.get(src_path, os.dup(1))
                return
            where, rename = _plan_out(kind, src_path, dest_path)
            dfd = _local_dir_fd(where)
            mine = (os.geteuid(), os.getegid())
            try:
                _threaded(
                    lambda w: ctr.get(src_path, w),
                    lambda r: _threaded(
                        lambda w2: _retag_to(r, w2, rename, mine),
                        lambda r2: extract_into(dfd, r2, f"{src_ctr}:{src_path}"),
                    ),
                )
            finally:
                os.close(dfd)
        else:  # into the container
            if src_path == "-":
                ctr.put(dest_path, os.dup(0))
                return
            if not os.path.lexists(src_path):
                raise MydockerError(f"no such file or directory: {src_path}")
            where, top = _plan_in(src_path, ctr.kind(dest_path), dest_path)
            if ctr.kind(where) != "dir":
                raise MydockerError(f"no such directory in the container: {where}")
            r, w = os.pipe()
            thread = threading.Thread(target=_host_archive, args=(src_path, top, ctr.owner, w), daemon=True)
            thread.start()
            try:
                ctr.put(where, r)
            finally:
                thread.join()
    finally:
        ctr.close()


def _retag_to(src: IO[bytes], out: int, rename: str | None, owner: tuple[int, int]) -> None:
    with os.fdopen(out, "wb") as f:
        _retagged(src, f, rename, owner)
