"""``mydocker run``: the flags, the ContainerSpec they build, and the foreground run."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ..errors import SpecError


def _network(network: str) -> tuple[str, str | None]:
    """(the --network value as a namespace mode, the network's name or None)."""
    if network in ("", "none", "private", "host"):
        return network, None
    return "", network


def _parse_namespaces(network: str, pid: str, uts: str, ipc: str, cgroupns: str) -> frozenset[str]:
    ns = {"mount"}
    network, _name = _network(network)
    for name, flag, value in (
        ("net", "network", network),
        ("pid", "pid", pid),
        ("uts", "uts", uts),
        ("ipc", "ipc", ipc),
        ("cgroup", "cgroupns", cgroupns),
    ):
        if value in ("", "none", "private"):
            ns.add(name)
        elif value != "host":
            raise SpecError(
                f"invalid --{flag} value {value!r} (use 'host', or leave it out for a private one)"
            )
    return frozenset(ns)


def _security_options(opts: tuple[str, ...]) -> dict[str, Any]:
    """ContainerSpec fields for docker's ``--security-opt`` values.

    Raises:
        SpecError: an option mydocker does not know (apparmor and label have no
            meaning here: one line, rather than silently less confinement).
    """
    fields: dict[str, Any] = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if key.startswith("no-new-privileges:"):  # docker's older spelling
            key, sep, value = opt.partition(":")
        if key == "seccomp" and sep and value:
            fields["seccomp"] = value
        elif key == "no-new-privileges" and value in ("", "true", "false"):
            fields["no_new_privileges"] = value != "false"
        else:
            known = "seccomp=unconfined, seccomp=PROFILE.json, no-new-privileges"
            raise SpecError(f"invalid --security-opt {opt!r} ({known})")
    return fields


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


@click.command(
    context_settings={"allow_interspersed_args": False},
    short_help="Run a command in a new container.",
)
@click.option("-d", "--detach", is_flag=True, help="Run in the background (the daemon's); print the id.")
@click.option("--rm", "remove", is_flag=True, help="Remove a detached container when it exits.")
@click.option(
    "--log-opt",
    "log_opts",
    multiple=True,
    metavar="max-size=SIZE",
    help="A detached container's log: rotated past SIZE (default 32m; two files kept).",
)
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-terminal.")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin attached.")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY[=VALUE]", help="Set an environment variable.")
@click.option("-w", "--workdir", metavar="DIR", help="Working directory inside the container.")
@click.option("-u", "--user", metavar="NAME|UID[:GROUP|GID]", help="The user the command runs as.")
@click.option("--cap-add", multiple=True, metavar="CAP", help="Add a Linux capability (or ALL).")
@click.option("--cap-drop", multiple=True, metavar="CAP", help="Drop a Linux capability (or ALL).")
@click.option(
    "--privileged", is_flag=True, help="Every capability, no seccomp, all devices, /proc and /sys unmasked."
)
@click.option(
    "--security-opt",
    "security_opts",
    multiple=True,
    metavar="OPT",
    help="seccomp=unconfined|PROFILE.json, no-new-privileges[:true|false].",
)
@click.option("--hostname", metavar="NAME", help="Container hostname (default: its short id).")
@click.option("--name", metavar="NAME", help="Container name (default: its id).")
@click.option(
    "--init", "use_init", is_flag=True, help="Run a minimal init as PID 1 that forwards signals and reaps."
)
@click.option(
    "--network",
    default="none",
    metavar="NAME|MODE",
    help="A network ('mydocker network'; 'bridge' is made on first use), 'none' (only lo) or 'host'.",
)
@click.option(
    "-p",
    "--publish",
    "ports",
    multiple=True,
    metavar="[IP:][HOSTPORT:]PORT[/udp]",
    help="Publish a container port on the host (needs --network NAME).",
)
@click.option(
    "--pid", "pid_mode", default="", metavar="MODE", help="'host' to share the host's PID namespace."
)
@click.option("--uts", default="", metavar="MODE", help="'host' to share the host's UTS namespace.")
@click.option("--ipc", default="", metavar="MODE", help="'host' to share the host's IPC namespace.")
@click.option("--cgroupns", default="", metavar="MODE", help="'host' to share the host's cgroup namespace.")
@click.option(
    "--userns",
    metavar="MODE",
    help="'auto': the container's root is an unprivileged id range of its own (as root).",
)
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
    "--cpu-time", metavar="SECONDS", help="CPU time of all its processes together; then it is killed."
)
@click.option("--wall-time", metavar="SECONDS", help="Real time from the start; then it is killed.")
@click.option(
    "--ulimit",
    "ulimits",
    multiple=True,
    metavar="TYPE=SOFT[:HARD]",
    help="An rlimit: nofile, nproc, fsize, ...",
)
@click.option("--max-output", metavar="BYTES", help="Most bytes of stdout and stderr together; more: killed.")
@click.option(
    "--report", "report_path", metavar="FILE", help="Write the verdict and usage as JSON when it is gone."
)
@click.option(
    "--cgroup-parent", metavar="PATH", help="Parent cgroup of the container's (default: mydocker's)."
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    detach: bool,
    remove: bool,
    log_opts: tuple[str, ...],
    tty: bool,
    interactive: bool,
    env: tuple[str, ...],
    workdir: str | None,
    user: str | None,
    cap_add: tuple[str, ...],
    cap_drop: tuple[str, ...],
    privileged: bool,
    security_opts: tuple[str, ...],
    hostname: str | None,
    name: str | None,
    use_init: bool,
    network: str,
    ports: tuple[str, ...],
    pid_mode: str,
    uts: str,
    ipc: str,
    cgroupns: str,
    userns: str | None,
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
    cpu_time: str | None,
    wall_time: str | None,
    ulimits: tuple[str, ...],
    max_output: str | None,
    report_path: str | None,
    cgroup_parent: str | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND [ARG...] as PID 1 of a new container.

    Options after COMMAND belong to COMMAND: `mydocker run sh -c 'echo hi'`.
    Exit status: the command's; 128+N if killed by signal N; 125 if mydocker
    failed; 126 if COMMAND cannot be executed; 127 if it was not found.
    """
    from ..spec import ContainerSpec, Limits, Mount, Port, parse_env, parse_size
    from ..ulimits import parse as parse_ulimit
    from .verdict import open_report

    # First of all: a report that cannot be written is an error before anything
    # starts; one that can holds every later failure (the CLI's one error line, XX).
    report = open_report(report_path) if report_path is not None else None
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
        namespaces=_parse_namespaces(network, pid_mode, uts, ipc, cgroupns),
        network=_network(network)[1],
        ports=tuple(Port.parse(text) for text in ports),
        user=user,
        userns=userns,
        cap_add=cap_add,
        cap_drop=cap_drop,
        privileged=privileged,
        **_security_options(security_opts),
        init=use_init,
        **_filesystem_options(rootfs, image, read_only, volumes, tmpfs, state_dir, Mount),
        limits=Limits.parse(
            memory=memory,
            memory_swap=memory_swap,
            cpus=cpus,
            cpu_shares=cpu_shares,
            cpuset_cpus=cpuset_cpus,
            pids=pids_limit,
            cpu_time=cpu_time,
            wall_time=wall_time,
        ),
        ulimits=tuple(parse_ulimit(u) for u in ulimits),
        cgroup_parent=cgroup_parent,
    )
    cap = parse_size(max_output, "--max-output") if max_output is not None else None
    if cap is not None and cap < 0:
        raise SpecError(f"invalid --max-output {max_output!r} (a size such as 64m)")
    if detach:
        if report is not None or cap is not None:
            raise SpecError("--report and --max-output are for a foreground run, not with -d")
        _run_detached(spec, remove, interactive, stop_timeout, _log_max_size(log_opts))
        return
    from .foreground import run_cli

    sys.exit(run_cli(spec, interactive=interactive, grace=stop_timeout, report=report, max_output=cap))


def _log_max_size(opts: tuple[str, ...]) -> int:
    from ..logs import DEFAULT_MAX_SIZE
    from ..spec import parse_size

    size = DEFAULT_MAX_SIZE
    for opt in opts:
        key, sep, value = opt.partition("=")
        if key != "max-size" or not sep:
            raise SpecError(f"invalid --log-opt {opt!r} (max-size=SIZE)")
        size = parse_size(value, "--log-opt max-size")
        if size < 4096:
            raise SpecError(f"--log-opt max-size must be at least 4k, not {value!r}")
    return size


def _run_detached(spec: Any, remove: bool, interactive: bool, grace: float, log_max_size: int) -> None:
    """``run -d``: the daemon starts it; print its id once its command runs."""
    from ..daemon import client, protocol
    from ..state import state_dir
    from .signals import say

    sdir = state_dir(spec.state_dir)
    spec = spec.evolve(state_dir=sdir)
    reply = client.request(
        sdir,
        {
            "op": "run",
            "spec": protocol.pack(spec),
            "autoremove": remove,
            "interactive": interactive,
            "grace": grace,
            "log_max_size": log_max_size,
        },
    )
    for warning in reply.get("warnings") or []:
        say(str(warning))
    click.echo(reply["id"])
