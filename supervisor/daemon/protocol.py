"""How the CLI and the daemon talk: JSON objects, one per line, over a unix socket.

A request is ``{"v": VERSION, "op": NAME, ...}``; the reply ``{"ok": true, ...}`` or
``{"ok": false, "error": {"type": ..., "message": ..., "exit_code": N}}``. A request
of another version is refused with an error naming both. A spec travels as a pickle
(base64): the daemon accepts connections only from its own user (``SO_PEERCRED``), who
could run anything as that user anyway.

The daemon's files, under the state directory (so that separate state directories
are separate worlds)::

    daemon.sock   the socket (mode 0600)
    daemon.lock   held (flock) by the one running daemon
    daemon.pid    its pid and start time
    daemon.log    its stderr, when started on demand
    daemon.start  taken by a CLI while it starts one (two CLIs start one daemon)
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import socket
from collections.abc import Callable
from typing import Any

#: the protocol's version: a CLI and a daemon of different versions refuse each other
VERSION = 1
#: the longest line either side accepts
MAX_LINE = 4 << 20

SOCKET, LOCK, PIDFILE, LOG, START = "daemon.sock", "daemon.lock", "daemon.pid", "daemon.log", "daemon.start"


class ProtocolError(Exception):
    """A message that is not one (too long, not JSON, not an object, other version)."""


def path(sdir: str, name: str) -> str:
    """One of the daemon's files in state directory ``sdir``."""
    return os.path.join(sdir, name)


def socket_at(
    sdir: str, act: Callable[[socket.socket, str], None], timeout: float | None = None
) -> socket.socket:
    """A unix stream socket on which ``act(sock, address)`` was done (``connect`` or
    ``bind``) with the daemon's socket's address, reached through the state
    directory's fd: a state directory's path may be longer than a socket address can
    be. The socket is closed if ``act`` fails."""
    dfd = os.open(sdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        act(sock, f"/proc/self/fd/{dfd}/{SOCKET}")
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(dfd)
    return sock


def encode(message: dict[str, Any]) -> bytes:
    """A message as one line."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """A line as a message.

    Raises:
        ProtocolError: not a JSON object.
    """
    try:
        message = json.loads(line)
    except ValueError as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(message, dict):
        raise ProtocolError("not a JSON object")
    return message


def check_version(message: dict[str, Any]) -> None:
    """Refuse a request of another protocol version.

    Raises:
        ProtocolError: naming both versions.
    """
    if message.get("v") != VERSION:
        raise ProtocolError(
            f"the client speaks protocol version {message.get('v')!r} and this daemon {VERSION}: "
            "stop the old daemon (mydocker daemon --stop) and try again"
        )


def pack(value: object) -> str:
    """A Python value (a spec) as text for a message."""
    return base64.b64encode(pickle.dumps(value)).decode()


def unpack(text: object) -> object:
    """The value ``pack`` made.

    Raises:
        ProtocolError: it is not one.
    """
    if not isinstance(text, str):
        raise ProtocolError("a packed value must be text")
    try:
        return pickle.loads(base64.b64decode(text, validate=True))
    except Exception as e:  # noqa: BLE001 - a corrupt pickle raises almost anything
        raise ProtocolError(f"cannot unpack: {type(e).__name__}") from None


def error_reply(e: BaseException) -> dict[str, Any]:
    """The reply for a request that failed with ``e``."""
    exit_code = getattr(e, "exit_code", 125)
    message = str(e) if not isinstance(e, OSError) or not e.strerror else f"{e.strerror}: {e.filename or ''}"
    return {
        "ok": False,
        "error": {"type": type(e).__name__, "message": message, "exit_code": int(exit_code)},
    }


# -- attach: after its reply, the connection carries frames both ways ------------------
#
# a frame: one byte of kind, four of length (big-endian), the payload

#: daemon -> client: the container's stdout (a pty's output too), its stderr, its
#: exit status (4 bytes, signed) as the last frame
OUT, ERR, EXIT = 1, 2, 3
#: client -> daemon: bytes for the container's stdin; a new window size (rows, cols:
#: two 2-byte numbers); end of input
IN, RESIZE, EOF = 4, 5, 6
#: the largest payload of a frame
MAX_FRAME = 1 << 20


def frame(kind: int, payload: bytes = b"") -> bytes:
    """One frame."""
    return bytes([kind]) + len(payload).to_bytes(4, "big") + payload


class Frames:
    """Frames out of a byte stream, as they come (``feed``, then ``pop``)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The whole frames ``data`` completes.

        Raises:
            ProtocolError: a frame larger than ``MAX_FRAME``.
        """
        self._buffer += data
        out = []
        while len(self._buffer) >= 5:
            size = int.from_bytes(self._buffer[1:5], "big")
            if size > MAX_FRAME:
                raise ProtocolError(f"a frame of {size} bytes")
            if len(self._buffer) < 5 + size:
                break
            out.append((self._buffer[0], self._buffer[5 : 5 + size]))
            self._buffer = self._buffer[5 + size :]
        return out
