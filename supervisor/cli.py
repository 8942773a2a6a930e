"""The ``mydocker`` command line: builds a ContainerSpec, runs it, exits with its status.

Errors are printed once, as one line (``mydocker: ...``), with exit status 125 for
mydocker's own failures, 126/127 for a command that cannot run (docker's codes);
``--debug`` adds the traceback. Start-up time matters (it is most of
``mydocker run /bin/true``): anyio and the container machinery are imported only
when a container is really run.
"""

from __future__ import annotations

import signal
import sys
from typing import Any, NoReturn

import click

from . import __version__
from .errors import MydockerError, SpecError

EXIT_MYDOCKER = 125

#: signals mydocker passes on to the container's PID 1 (docker's sig-proxy)
FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)

#: a second SIGINT within this many seconds kills a container that ignores the first
SECOND_INTERRUPT_WINDOW = 3.0


def _fail(message: str, code: int = EXIT_MYDOCKER) -> NoReturn:
    click.echo(f"mydocker: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """A group whose usage errors are one line and exit 125, as docker's are."""

    def main(self, args: Any = None, prog_name: str | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        debug = "--debug" in sys.argv[1:2]
        kwargs["standalone_mode"] = False
        try:
            return super().main(args, prog_name, **kwargs)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            _fail("aborted")
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            _fail(f"{e.format_message()}{hint}")
        except click.ClickException as e:
            _fail(e.format_message())
        except MydockerError as e:
            if debug:
                raise
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)
        except OSError as e:
            if debug:
                raise
            _fail(str(e))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-v", "--version", prog_name="mydocker")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
def main(debug: bool) -> None:
    """mydocker: run commands in Linux containers (namespaces, cgroups, a pty)."""


def _parse_namespaces(network: str, pid: str, uts: str, ipc: str) -> frozenset[str]:
    ns = {"mount"}
    for name, flag, value in (
        ("net", "network", network),
        ("pid", "pid", pid),
        ("uts", "uts", uts),
        ("ipc", "ipc", ipc),
    ):
        if value in ("", "none", "private"):
            ns.add(name)
        elif value != "host":
            raise SpecError(
                f"invalid --{flag} value {value!r} (use 'host', or leave it out for a private one)"
            )
    return frozenset(ns)


def _filesystem_options(
    rootfs: str | None,
    image: str | None,
    read_only: bool,
    volumes: tuple[str, ...],
    tmpfs: tuple[str, ...],
    state_dir: str | None,
    mount_cls: Any,
) -> dict[str, Any]:
    """ContainerSpec fields for --rootfs/--image/--read-only/-v/--tmpfs/--state-dir.

    Host paths are made absolute against the current directory (docker refuses a
    relative -v host path; resolving it is friendlier and just as unambiguous).
    """
    import os

    if rootfs is not None and image is not None:
        raise SpecError("give either --rootfs or --image, not both")
    mounts = []
    for text in volumes:
        m = mount_cls.parse_volume(text)
        if not os.path.isabs(m.source):
            m = mount_cls(m.target, os.path.abspath(m.source), read_only=m.read_only)
        mounts.append(m)
    mounts += [mount_cls.parse_tmpfs(text) for text in tmpfs]
    return {
        "rootfs": os.path.abspath(rootfs) if rootfs else None,
        "image": image,
        "read_only": read_only,
        "mounts": tuple(mounts),
        "state_dir": os.path.abspath(state_dir) if state_dir else None,
    }


@main.command(
    context_settings={"allow_interspersed_args": False},
    short_help="Run a command in a new container.",
)
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-terminal.")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin attached.")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY[=VALUE]", help="Set an environment variable.")
@click.option("-w", "--workdir", metavar="DIR", help="Working directory inside the container.")
@click.option("--hostname", metavar="NAME", help="Container hostname (default: its short id).")
@click.option("--name", metavar="NAME", help="Container name (default: its id).")
@click.option(
    "--init", "use_init", is_flag=True, help="Run a minimal init as PID 1 that forwards signals and reaps."
)
@click.option("--network", default="none", metavar="MODE", help="'none' (own namespace with lo) or 'host'.")
@click.option(
    "--pid", "pid_mode", default="", metavar="MODE", help="'host' to share the host's PID namespace."
)
@click.option("--uts", default="", metavar="MODE", help="'host' to share the host's UTS namespace.")
@click.option("--ipc", default="", metavar="MODE", help="'host' to share the host's IPC namespace.")
@click.option(
    "--stop-timeout",
    default=10.0,
    type=float,
    metavar="SECONDS",
    help="Grace period between SIGTERM and SIGKILL.",
)
@click.option(
    "--rootfs", metavar="DIR", help="Use DIR as the root filesystem (copy-on-write, DIR is unchanged)."
)
@click.option(
    "--image", metavar="NAME", help="Use an imported image as the root filesystem ('mydocker image')."
)
@click.option("--read-only", is_flag=True, help="Mount the container's root filesystem read-only.")
@click.option(
    "-v", "--volume", "volumes", multiple=True, metavar="HOST:CONTAINER[:ro]", help="Bind mount a host path."
)
@click.option(
    "--tmpfs", "tmpfs", multiple=True, metavar="PATH[:OPTS]", help="Mount a tmpfs (ro, size=, mode=)."
)
@click.option(
    "--state-dir",
    metavar="DIR",
    help="Images and layers (default: $MYDOCKER_STATE_DIR or /var/lib/mydocker).",
)
@click.option("-m", "--memory", metavar="BYTES", help="Memory limit, e.g. 64m (b, k, m, g suffixes).")
@click.option(
    "--memory-swap", metavar="BYTES", help="Memory plus swap limit; -1: unlimited swap (default: 2x memory)."
)
@click.option("--cpus", metavar="N", help="CPU limit in CPUs, e.g. 0.5.")
@click.option("--cpu-shares", metavar="N", help="Relative CPU weight, 2-262144 (default 1024).")
@click.option("--cpuset-cpus", metavar="LIST", help="CPUs the container may use, e.g. 0-1,3.")
@click.option("--pids-limit", metavar="N", help="Most processes at once (-1: unlimited).")
@click.option(
    "--cgroup-parent", metavar="PATH", help="Parent cgroup of the container's (default: mydocker's)."
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    tty: bool,
    interactive: bool,
    env: tuple[str, ...],
    workdir: str | None,
    hostname: str | None,
    name: str | None,
    use_init: bool,
    network: str,
    pid_mode: str,
    uts: str,
    ipc: str,
    stop_timeout: float,
    rootfs: str | None,
    image: str | None,
    read_only: bool,
    volumes: tuple[str, ...],
    tmpfs: tuple[str, ...],
    state_dir: str | None,
    memory: str | None,
    memory_swap: str | None,
    cpus: str | None,
    cpu_shares: str | None,
    cpuset_cpus: str | None,
    pids_limit: str | None,
    cgroup_parent: str | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND [ARG...] as PID 1 of a new container.

    Options after COMMAND belong to COMMAND: `mydocker run sh -c 'echo hi'`.
    Exit status: the command's; 128+N if killed by signal N; 125 if mydocker
    failed; 126 if COMMAND cannot be executed; 127 if it was not found.
    """
    from .spec import ContainerSpec, Limits, Mount, parse_env

    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise SpecError("no command given (usage: mydocker run [OPTIONS] COMMAND [ARG...])")
    spec = ContainerSpec(
        command=command,
        env=parse_env(env),
        hostname=hostname,
        name=name,
        cwd=workdir,
        tty=tty,
        namespaces=_parse_namespaces(network, pid_mode, uts, ipc),
        init=use_init,
        **_filesystem_options(rootfs, image, read_only, volumes, tmpfs, state_dir, Mount),
        limits=Limits.parse(
            memory=memory,
            memory_swap=memory_swap,
            cpus=cpus,
            cpu_shares=cpu_shares,
            cpuset_cpus=cpuset_cpus,
            pids=pids_limit,
        ),
        cgroup_parent=cgroup_parent,
    )
    from .runner import run_cli

    sys.exit(run_cli(spec, interactive=interactive, grace=stop_timeout))


@main.group(short_help="Import, list and remove images.")
@click.option(
    "--state-dir",
    metavar="DIR",
    help="Images and layers (default: $MYDOCKER_STATE_DIR or /var/lib/mydocker).",
)
@click.pass_context
def image(ctx: click.Context, state_dir: str | None) -> None:
    """Root filesystem images: `mydocker run --image NAME COMMAND` runs one.

    A busybox image to start with: scripts/busybox-image.sh DIR busybox.tar, then
    `mydocker image import busybox busybox.tar`.
    """
    from .rootfs import state_dir as resolve_state_dir

    ctx.obj = resolve_state_dir(state_dir)


@image.command("import")
@click.option(
    "--allow-devices", is_flag=True, help="Create device nodes found in the tarball (default: skip them)."
)
@click.option(
    "--max-size",
    default="10g",
    metavar="SIZE",
    help="Refuse a tarball whose files add up to more than SIZE, sparse holes included (default: 10g).",
)
@click.option(
    "--max-members",
    default=1_000_000,
    type=click.IntRange(min=1),
    metavar="N",
    help="Refuse a tarball of more than N files, directories and links (default: 1000000).",
)
@click.argument("name")
@click.argument("tarball")
@click.pass_obj
def image_import(
    state_dir: str, allow_devices: bool, max_size: str, max_members: int, name: str, tarball: str
) -> None:
    """Unpack TARBALL (a root filesystem; '-' reads stdin) as image NAME."""
    from .images import import_image
    from .spec import parse_size

    limit = parse_size(max_size, "--max-size")
    if limit <= 0:
        raise SpecError(f"invalid --max-size {max_size!r} (it must be positive)")
    source: Any = sys.stdin.buffer if tarball == "-" else tarball
    img = import_image(
        name, source, state_dir, allow_devices=allow_devices, max_size=limit, max_members=max_members
    )
    note = f" ({img.skipped} device nodes or special files skipped)" if img.skipped else ""
    click.echo(f"{img.name}{note}")


@image.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only names.")
@click.pass_obj
def image_ls(state_dir: str, quiet: bool) -> None:
    """List the imported images."""
    import time

    from .images import list_images

    images = list_images(state_dir)
    if quiet:
        for img in images:
            click.echo(img.name)
        return
    click.echo(f"{'NAME':<24} {'CREATED':<20} {'SIZE':>10}")
    for img in images:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(img.created))
        click.echo(f"{img.name:<24} {created:<20} {img.size / 1e6:>8.1f}MB")


@image.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def image_rm(state_dir: str, names: tuple[str, ...]) -> None:
    """Remove images."""
    from .images import remove_image

    for name in names:
        remove_image(name, state_dir)
        click.echo(name)


if __name__ == "__main__":  # pragma: no cover
    main()
