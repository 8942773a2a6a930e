"""``mydocker daemon``: the supervisor of detached containers (``daemon/server.py``)."""

from __future__ import annotations

import os
import select
import sys

import click

from .options import resolve_state_dir, state_dir_option


@click.command(short_help="Run the daemon of detached containers (started on demand).")
@state_dir_option
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Exit after SECONDS with no container and no client (0: never; the default when "
    "started by hand; started on demand: $MYDOCKER_DAEMON_IDLE or 10).",
)
@click.option("--stop", "stop_it", is_flag=True, help="Stop the running daemon (and its containers).")
@click.option("--ready-fd", type=int, hidden=True)
def daemon(state_dir: str | None, idle_timeout: float | None, stop_it: bool, ready_fd: int | None) -> None:
    """Run the daemon of detached containers in the foreground (under systemd, say).

    `mydocker run -d` starts one on demand; it exits by itself once it has had no
    container to look after for a while. SIGTERM stops its containers (SIGTERM,
    their stop timeout, SIGKILL), then it.
    """
    from ..daemon import server

    sdir = resolve_state_dir(state_dir)
    if stop_it:
        _stop(sdir)
        return
    if idle_timeout is None and ready_fd is None:
        idle_timeout = 0.0
    sys.exit(server.serve(sdir, idle_timeout, ready_fd))


def _stop(sdir: str) -> None:
    from ..daemon import client, protocol
    from ..records import start_time

    try:
        with open(protocol.path(sdir, protocol.PIDFILE)) as f:
            pid_text, started = f.read().split()
        pid = int(pid_text)
        pidfd = os.pidfd_open(pid)
    except (OSError, ValueError):
        return  # none runs
    try:
        if str(start_time(pid)) != started:
            return  # that pid is another process now
        try:
            client.request(sdir, {"op": "shutdown"}, start=False)
        except client.DaemonError:
            return  # it is on its way out already
        select.select([pidfd], [], [], 60)
    finally:
        os.close(pidfd)
