"""Containers after ``run``: ``ps``, ``logs``, ``stop``, ``kill``, ``wait``, ``rm``,
``inspect`` and ``commit``, with docker's names, flags and output.

Each reads the records on disk (``records.py``) and acts through the container's
pidfd (``lifecycle.py``): they work whether or not the daemon runs. A command given
several containers does what it can for each, says what failed for the others (one
line each) and then exits 1, as docker's do.
"""

from __future__ import annotations

import calendar
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from ..errors import MydockerError
from .options import resolve_state_dir, state_dir_option


def _each(refs: tuple[str, ...], sdir: str, act: Callable[[Any], None]) -> None:
    """``act(entry)`` for each container named; print the name as given when it
    succeeded, one line per failure; exit 1 if any failed."""
    from .. import records

    _each_ref(refs, lambda ref: act(records.find(sdir, ref)))


def _each_ref(refs: tuple[str, ...], act: Callable[[str], None]) -> None:
    """``act(ref)`` for each container reference as given: as ``_each``."""
    failed = False
    for ref in refs:
        try:
            act(ref)
        except MydockerError as e:
            click.echo(f"mydocker: {e}", err=True)
            failed = True
            continue
        click.echo(ref)
    if failed:
        sys.exit(1)


# -- times as docker prints them ---------------------------------------------------------


def _parse_time(text: object) -> float | None:
    if not isinstance(text, str) or len(text) < 19:
        return None
    try:
        whole = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    fraction = text[19:].rstrip("Z")
    return whole + (float(fraction) if fraction.startswith(".") and fraction[1:].isdigit() else 0.0)


def human_duration(seconds: float) -> str:
    """docker's ``units.HumanDuration``: "Less than a second", "5 seconds", "About a
    minute", "3 hours", ..."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def _ago(text: object, now: float) -> str:
    t = _parse_time(text)
    return "" if t is None else f"{human_duration(max(0.0, now - t))} ago"


def status_text(entry: Any, now: float) -> str:
    """The STATUS column: ``Up 5 seconds``, ``Exited (0) 3 seconds ago``, ``Created``."""
    status = entry.status
    if status == "running":
        started = _parse_time(entry.state.get("StartedAt"))
        return f"Up {human_duration(now - started)}" if started is not None else "Up"
    if status == "exited":
        finished = entry.state.get("FinishedAt") or entry.state.get("StartedAt")
        return f"Exited ({entry.exit_code}) {_ago(finished, now)}".rstrip()
    return status.capitalize()


# -- ps ------------------------------------------------------------------------------


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _command(record: dict[str, Any], no_trunc: bool) -> str:
    text = " ".join([str(record.get("Path", "")), *map(str, record.get("Args", []))])
    if not no_trunc and len(text) > 20:
        text = text[:19] + "…"
    return f'"{text}"'


def _image(record: dict[str, Any]) -> str:
    image = record.get("Image") or record.get("HostConfig", {}).get("Rootfs") or ""
    return str(image) or "(host)"


def _published(sdir: str, entries: list[Any]) -> dict[str, str]:
    """The PORTS cell of each running container on a network: its published ports
    as the kernel bound them (``-p 80`` shows the host port it got), read from the
    networks' live leases, docker's way (``0.0.0.0:32768->80/tcp``)."""
    from ..network.ipam import Store
    from ..spec import NETWORK_MODES, NETWORK_NAME

    modes = {e.record.get("HostConfig", {}).get("NetworkMode") for e in entries if e.running}
    names = sorted(
        m for m in modes if isinstance(m, str) and m not in NETWORK_MODES and NETWORK_NAME.fullmatch(m)
    )
    store, out = Store(sdir), {}
    for name in names:
        for lease, alive in store.leases(name):
            if alive and lease.forwards:
                out[lease.container] = ", ".join(f"{a}:{h}->{c}/{p}" for p, a, h, c in lease.forwards)
    return out


@click.command(short_help="List containers.")
@click.option("-a", "--all", "show_all", is_flag=True, help="Show all containers (default: running ones).")
@click.option("-q", "--quiet", is_flag=True, help="Only show container ids.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate ids and commands.")
@state_dir_option
def ps(show_all: bool, quiet: bool, no_trunc: bool, state_dir: str | None) -> None:
    """List the containers mydocker runs (`-a`: and those that exited)."""
    from .. import records

    now = time.time()
    sdir = resolve_state_dir(state_dir)
    shown = [e for e in records.entries(sdir) if show_all or e.running]
    if quiet:
        for e in shown:
            click.echo(e.id if no_trunc else e.short_id)
        return
    ports = _published(sdir, shown)
    rows = [["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]]
    for e in shown:
        rows.append(
            [
                e.id if no_trunc else e.short_id,
                _image(e.record),
                _command(e.record, no_trunc),
                _ago(e.record.get("Created"), now),
                status_text(e, now),
                ports.get(e.id, "") if e.running else "",
                e.name,
            ]
        )
    click.echo(_table(rows))


# -- logs ----------------------------------------------------------------------------


def _out(entry: Any, timestamps: bool) -> None:
    stream = sys.stdout.buffer if entry.stream == "stdout" else sys.stderr.buffer
    if timestamps:
        stream.write(entry.time.encode() + b" ")
    stream.write(entry.data)
    stream.flush()


@click.command(short_help="Show a container's output.")
@click.option("-f", "--follow", is_flag=True, help="Follow the output until the container exits.")
@click.option("-n", "--tail", default="all", metavar="N", help="Only the last N lines (default: all).")
@click.option("-t", "--timestamps", is_flag=True, help="Show when each line was written.")
@state_dir_option
@click.argument("container")
def logs(follow: bool, tail: str, timestamps: bool, state_dir: str | None, container: str) -> None:
    """Show what CONTAINER wrote: its stdout on stdout, its stderr on stderr, also
    after it exited (docker's json-file log)."""
    from .. import records
    from ..logs import Follower, read_entries

    if tail != "all" and not (tail.isdigit() or (tail.startswith("-") and tail[1:].isdigit())):
        raise MydockerError(f"invalid --tail value {tail!r} (a number of lines, or all)")
    entry = records.find(resolve_state_dir(state_dir), container)
    path = f"{entry.dir}/{records.LOG}"
    follower = Follower(path) if follow else None
    if follower is not None:
        follower.skip_to_end()  # what is there now is printed below, once
    found = list(read_entries(path))
    if tail != "all" and int(tail) >= 0:
        found = found[len(found) - int(tail) :] if int(tail) else []
    for e in found:
        _out(e, timestamps)
    if follower is None:
        return
    try:
        while True:
            running = records.is_owned(entry.dir)
            for e in follower.read():
                _out(e, timestamps)
            if not running:
                return
            time.sleep(0.05)
    finally:
        follower.close()


# -- stop, kill, wait, rm ---------------------------------------------------------------


@click.command(short_help="Stop running containers.")
@click.option(
    "-t",
    "--time",
    "--timeout",
    "timeout",
    default=10,
    type=click.IntRange(min=0),
    metavar="SECONDS",
    help="Seconds between SIGTERM and SIGKILL (default 10).",
)
@state_dir_option
@click.argument("containers", nargs=-1, required=True)
def stop(timeout: int, state_dir: str | None, containers: tuple[str, ...]) -> None:
    """Stop each CONTAINER: SIGTERM, then SIGKILL after the timeout (at once if its
    PID 1 has no SIGTERM handler, which the kernel would drop)."""
    from .. import lifecycle

    _each(containers, resolve_state_dir(state_dir), lambda e: lifecycle.stop(e, timeout))


@click.command(short_help="Send a signal to running containers.")
@click.option(
    "-s", "--signal", "sig", default="KILL", metavar="SIGNAL", help="Name or number (default KILL)."
)
@state_dir_option
@click.argument("containers", nargs=-1, required=True)
def kill(sig: str, state_dir: str | None, containers: tuple[str, ...]) -> None:
    """Send SIGNAL to the PID 1 of each CONTAINER."""
    from .. import lifecycle

    number = lifecycle.parse_signal(sig)
    _each(containers, resolve_state_dir(state_dir), lambda e: lifecycle.send_signal(e, number))


@click.command(short_help="Wait for containers to exit; print their exit codes.")
@state_dir_option
@click.argument("containers", nargs=-1, required=True)
def wait(state_dir: str | None, containers: tuple[str, ...]) -> None:
    """Block until each CONTAINER exits, then print its exit code."""
    from .. import lifecycle, records

    sdir = resolve_state_dir(state_dir)
    failed = False
    for ref in containers:
        try:
            click.echo(lifecycle.wait_exit(records.find(sdir, ref)))
        except MydockerError as e:
            click.echo(f"mydocker: {e}", err=True)
            failed = True
    if failed:
        sys.exit(1)


@click.command(short_help="Remove containers.")
@click.option("-f", "--force", is_flag=True, help="Kill a running container first.")
@click.option("-v", "--volumes", is_flag=True, hidden=True)
@state_dir_option
@click.argument("containers", nargs=-1, required=True)
def rm(force: bool, volumes: bool, state_dir: str | None, containers: tuple[str, ...]) -> None:
    """Remove each CONTAINER (its record, layer and log); a running one needs -f."""
    from .. import lifecycle

    sdir = resolve_state_dir(state_dir)
    _each_ref(containers, lambda ref: lifecycle.remove_ref(sdir, ref, force))


# -- inspect ---------------------------------------------------------------------------


def inspect_data(entry: Any) -> dict[str, Any]:
    """docker's ``inspect`` object of a container (plus ``Usage``)."""
    record, state = entry.record, entry.state
    status = entry.status
    return {
        "Id": entry.id,
        "Created": record.get("Created", ""),
        "Path": record.get("Path", ""),
        "Args": record.get("Args", []),
        "State": {
            "Status": status,
            "Running": status == "running",
            "Paused": False,
            "Restarting": False,
            "OOMKilled": bool(state.get("OOMKilled", False)),
            "Dead": False,
            "Pid": int(state.get("Pid", 0)) if status == "running" else 0,
            "ExitCode": entry.exit_code,
            "Error": entry.error,
            "StartedAt": state.get("StartedAt", "0001-01-01T00:00:00Z"),
            "FinishedAt": state.get("FinishedAt", "0001-01-01T00:00:00Z"),
        },
        "Name": f"/{entry.name}" if entry.name else "",
        "Image": record.get("Image", ""),
        "Config": record.get("Config", {}),
        "HostConfig": record.get("HostConfig", {}),
        "Usage": state.get("Usage"),
    }


def render_format(template: str, value: Any) -> str:
    """A small part of docker's Go templates: ``{{.A.B}}``, ``{{json .A}}``, ``{{.}}``
    and text around them.

    Raises:
        MydockerError: anything else.
    """
    import re

    def field(path: str) -> Any:
        v = value
        for part in [p for p in path.split(".") if p]:
            if not isinstance(v, dict) or part not in v:
                raise MydockerError(f"template: no field {path!r}")
            v = v[part]
        return v

    def one(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        if expr.startswith("json "):
            return json.dumps(field(expr[5:].strip()))
        if not expr.startswith("."):
            raise MydockerError(
                f"template: only {{{{.Field}}}} and {{{{json .Field}}}} are supported, not {expr!r}"
            )
        v = field(expr)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (dict, list)):
            return json.dumps(v)
        return "<no value>" if v is None else str(v)

    return re.sub(r"\{\{(.*?)\}\}", one, template)


@click.command(short_help="Show containers' details as JSON.")
@click.option("-f", "--format", "fmt", metavar="TEMPLATE", help="Print {{.Field.Path}} per container.")
@state_dir_option
@click.argument("containers", nargs=-1, required=True)
def inspect(fmt: str | None, state_dir: str | None, containers: tuple[str, ...]) -> None:
    """Print each CONTAINER's record (docker's field names) as a JSON array."""
    from .. import records

    sdir = resolve_state_dir(state_dir)
    found, failed = [], False
    for ref in containers:
        try:
            found.append(inspect_data(records.find(sdir, ref)))
        except MydockerError as e:
            click.echo(f"mydocker: {e}", err=True)
            failed = True
    if fmt is not None:
        for data in found:
            click.echo(render_format(fmt, data))
    else:
        click.echo(json.dumps(found, indent=4))
    if failed:
        sys.exit(1)


# -- commit ------------------------------------------------------------------------------


@click.command(short_help="Make an image of a container's root filesystem.")
@state_dir_option
@click.argument("container")
@click.argument("image")
def commit(state_dir: str | None, container: str, image: str) -> None:
    """Save CONTAINER's root filesystem, with its changes, as image IMAGE
    (`mydocker run --image IMAGE` then sees them)."""
    from .. import layers, records

    sdir = resolve_state_dir(state_dir)
    layers.commit(sdir, records.find(sdir, container), image)
    click.echo(image)


# -- stats ------------------------------------------------------------------------------


def _bytes(n: int | None) -> str:
    if n is None:
        return "--"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n}B"


def _stats_rows(pairs: list[tuple[Any, Any, Any]]) -> list[list[str]]:
    import os

    rows = [["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS"]]
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for entry, first, second in pairs:
        cpu = "--"
        if first.cpu_usec is not None and second.cpu_usec is not None and second.taken > first.taken:
            cpu = f"{(second.cpu_usec - first.cpu_usec) / 1e6 / (second.taken - first.taken) * 100:.2f}%"
        limit = second.memory_limit or total
        mem = f"{_bytes(second.memory)} / {_bytes(limit)}"
        pct = f"{second.memory / limit * 100:.2f}%" if second.memory is not None else "--"
        rows.append(
            [entry.short_id, entry.name, cpu, mem, pct, "--" if second.pids is None else str(second.pids)]
        )
    return rows


@click.command(short_help="Show running containers' resource usage.")
@click.option("--no-stream", is_flag=True, help="Print one table and exit.")
@click.option("-a", "--all", "show_all", is_flag=True, hidden=True)
@state_dir_option
@click.argument("containers", nargs=-1)
def stats(no_stream: bool, show_all: bool, state_dir: str | None, containers: tuple[str, ...]) -> None:
    """CPU, memory and processes of the running containers (or of each CONTAINER),
    from their cgroups; refreshed every second until Ctrl-C, unless --no-stream."""
    from .. import lifecycle, records

    sdir = resolve_state_dir(state_dir)
    while True:
        chosen = [records.find(sdir, ref) for ref in containers] or records.entries(sdir)
        running = [e for e in chosen if e.running]
        first = [lifecycle.sample(e) for e in running]
        time.sleep(0.5)
        pairs = [(e, a, lifecycle.sample(e)) for e, a in zip(running, first, strict=True)]
        table = _table(_stats_rows(pairs))
        if no_stream:
            click.echo(table)
            return
        click.echo("\x1b[2J\x1b[H" + table)
        time.sleep(0.5)
