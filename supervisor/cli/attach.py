"""``mydocker attach``: the terminal to a detached container's stdio, through its daemon.

The daemon sends the container's output as it comes (``daemon/protocol.py``'s frames)
and takes the terminal's input for its stdin (with ``run -di`` / ``-dit``) and window
size; Ctrl-P Ctrl-Q detaches (docker's keys) and leaves the container running; when
the container exits, attach exits with its status.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import Any

import click

from ..errors import MydockerError
from .options import resolve_state_dir, state_dir_option

#: docker's default detach keys: Ctrl-P Ctrl-Q
DETACH = b"\x10\x11"


async def _session(sock: Any, tty: bool, forward_input: bool) -> int:
    import anyio

    from .._streams import FdStream
    from ..daemon import protocol
    from .stdio import StdinReader, StdoutWriter
    from .tty import raw_mode, terminal_size

    stream = FdStream(sock.detach())
    out, err = StdoutWriter(1), StdoutWriter(2)
    status = 0
    detached = False

    async def send_size() -> None:
        size = terminal_size()
        if size is not None and tty:
            rows, cols = size
            await stream.send(
                protocol.frame(protocol.RESIZE, rows.to_bytes(2, "big") + cols.to_bytes(2, "big"))
            )

    async def pump_in(scope: Any) -> None:
        nonlocal detached
        reader = StdinReader(0)
        last = b""
        while True:
            data = await reader.read()
            if not data:
                return  # our input ended: the container's stays open, as docker's
            if tty and DETACH in last[-1:] + data:
                detached = True
                scope.cancel()
                return
            last = data
            await stream.send(protocol.frame(protocol.IN, data))

    async def follow_winch() -> None:
        with anyio.open_signal_receiver(signal.SIGWINCH) as signals:
            async for _ in signals:
                await send_size()

    with contextlib.ExitStack() as stack:
        stack.callback(out.close)
        stack.callback(err.close)
        if forward_input and tty:
            stack.enter_context(raw_mode(0))
        try:
            async with anyio.create_task_group() as tg:
                await send_size()
                if forward_input:
                    tg.start_soon(pump_in, tg.cancel_scope)
                if tty:
                    tg.start_soon(follow_winch)
                frames = protocol.Frames()
                while True:
                    try:
                        data = await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
                    for kind, payload in frames.feed(data):
                        if kind == protocol.OUT:
                            await out.write(payload)
                        elif kind == protocol.ERR:
                            await err.write(payload)
                        elif kind == protocol.EXIT:
                            status = int.from_bytes(payload, "big", signed=True)
                tg.cancel_scope.cancel()
        finally:
            stream.close()
    if detached:
        sys.stderr.write("\r\nmydocker: detached (the container goes on)\r\n")
    return status


@click.command(short_help="Attach the terminal to a detached container.")
@click.option("--no-stdin", is_flag=True, help="Do not send the terminal's input.")
@state_dir_option
@click.argument("container")
def attach(no_stdin: bool, state_dir: str | None, container: str) -> None:
    """Show CONTAINER's output as it comes and send it the terminal's input (started
    with `run -di`, or `-dit`); Ctrl-P Ctrl-Q detaches. Exit status: the container's,
    when it exits."""
    import anyio

    from .. import records
    from ..daemon import client, protocol

    sdir = resolve_state_dir(state_dir)
    entry = records.find(sdir, container)
    if not entry.running:
        raise MydockerError(f"container {entry.name or entry.short_id} is not running")
    try:
        sock = client._connect(sdir)
    except OSError:
        raise MydockerError(
            f"container {entry.name or entry.short_id} runs in the foreground of another mydocker: "
            "only a detached one (run -d) can be attached to"
        ) from None
    with sock:
        sock.sendall(protocol.encode({"v": protocol.VERSION, "op": "attach", "id": entry.id}))
        line = b""
        while not line.endswith(b"\n"):
            chunk = sock.recv(1)
            if not chunk:
                raise MydockerError("the daemon closed the connection")
            line += chunk
        reply = protocol.decode(line)
        if not reply.get("ok"):
            raise MydockerError(str((reply.get("error") or {}).get("message") or "cannot attach"))
        sys.exit(anyio.run(_session, sock, bool(reply.get("tty")), not no_stdin))
