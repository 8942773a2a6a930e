"""A container's output on disk, in docker's json-file format, and read back.

One JSON object per line: ``{"log": "...", "stream": "stdout"|"stderr", "time":
"<RFC 3339 with nanoseconds>"}``. Each chunk the container writes becomes one entry
per line, and a line not yet ended is written as it comes (without its newline), so
``logs`` gives back exactly the bytes written, in the order they were read. Bytes
that are not UTF-8 survive (they travel as surrogate escapes).

A container's log cannot fill the disk: past ``max_size`` bytes the file is moved to
``<log>.1`` (replacing the one before) and a new one begun, so a log takes at most
twice ``max_size`` (docker's ``--log-opt max-size`` and ``max-file=2``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import NamedTuple

#: ``--log-opt max-size``'s default: the most a log file holds before it is rotated
DEFAULT_MAX_SIZE = 32 << 20


def _stamp(t: float) -> str:
    whole = int(t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((t - whole) * 1e9):09d}Z"


class LogWriter:
    """Appends a container's output to its log file."""

    def __init__(self, path: str, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.path = path
        self.max_size = max_size
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size

    def write(self, stream: str, data: bytes) -> None:
        """Log a chunk the container wrote to ``stream`` (``stdout`` or ``stderr``)."""
        if self._fd < 0 or not data:
            return
        stamp = _stamp(time.time())
        text = data.decode("utf-8", "surrogateescape")
        lines = text.splitlines(keepends=True)
        out = "".join(
            json.dumps({"log": line, "stream": stream, "time": stamp}, ensure_ascii=True) + "\n"
            for line in lines
        ).encode()
        if self._size + len(out) > self.max_size and self._size:
            self._rotate()
        os.write(self._fd, out)
        self._size += len(out)

    def _rotate(self) -> None:
        os.rename(self.path, self.path + ".1")
        os.close(self._fd)
        self._fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        self._size = 0

    def close(self) -> None:
        """Stop logging."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Entry(NamedTuple):
    """One logged chunk: the stream, its bytes, and when it was read (as logged)."""

    stream: str
    data: bytes
    time: str


def _parse(line: bytes) -> Entry | None:
    try:
        obj = json.loads(line)
        return Entry(str(obj["stream"]), str(obj["log"]).encode("utf-8", "surrogateescape"), str(obj["time"]))
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a crash, or not ours: skipped


def read_entries(path: str) -> Iterator[Entry]:
    """The entries of a log (its rotated part first); nothing if there is none."""
    for name in (path + ".1", path):
        with contextlib.suppress(FileNotFoundError), open(name, "rb") as f:
            for line in f:
                if line.endswith(b"\n"):
                    entry = _parse(line)
                    if entry is not None:
                        yield entry


class Follower:
    """Reads a log as it grows (``logs -f``): complete lines only, across a rotation."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._f = None if not os.path.exists(path) else open(path, "rb")
        self._partial = b""
        self._ino = os.fstat(self._f.fileno()).st_ino if self._f is not None else None

    def skip_to_end(self) -> None:
        """Start from what comes next."""
        if self._f is not None:
            self._f.seek(0, os.SEEK_END)

    def read(self) -> list[Entry]:
        """The entries written since the last read."""
        out: list[Entry] = []
        if self._f is None:
            if not os.path.exists(self.path):
                return out
            self._f = open(self.path, "rb")
            self._ino = os.fstat(self._f.fileno()).st_ino
        out += self._drain()
        try:
            ino = os.stat(self.path).st_ino
        except FileNotFoundError:
            return out
        if ino != self._ino:  # rotated: finish the old file, go on with the new one
            self._f.close()
            self._f = open(self.path, "rb")
            self._ino = ino
            self._partial = b""
            out += self._drain()
        return out

    def _drain(self) -> list[Entry]:
        assert self._f is not None
        data = self._partial + self._f.read()
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [e for e in map(_parse, lines) if e is not None]

    def close(self) -> None:
        """Close the file."""
        if self._f is not None:
            self._f.close()
