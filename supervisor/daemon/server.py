"""The daemon: one event loop that runs the detached containers of one state directory.

It is the parent of every container it starts (through its own spawn helper, with
``CLONE_PARENT``, as the library's), waits for each through its pidfd, copies its
output into its log (``logs.py``), writes its exit into its record (``records.py``)
and tears it down; a container to be removed on exit (``--rm``) is removed. If the
daemon dies, its containers die with it (``PR_SET_PDEATHSIG``); the next daemon writes
their exits down (``records.recover``) and the cgroups of the dead are swept as
always. With no container to look after and no client for ``idle`` seconds, it exits.

One daemon per state directory: the one holding ``daemon.lock``. A second one finds
the first answering and leaves quietly; one that finds the lock held but nobody
answering waits for the holder (a daemon on its way out) to let go.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import os
import signal
import socket
import struct
import sys
import time
import warnings
from typing import Any

import anyio

from .. import records, state
from .._streams import FdStream
from ..container import Container, start_container
from ..errors import MydockerError
from ..logs import DEFAULT_MAX_SIZE, LogWriter
from ..spec import DEVNULL, PIPE, ContainerSpec
from . import protocol
from .pumps import Pumps

#: how long a daemon with nothing to do stays, unless told (``MYDOCKER_DAEMON_IDLE``)
DEFAULT_IDLE = 10.0
IDLE_ENV = "MYDOCKER_DAEMON_IDLE"
#: how long a new daemon waits for an old one on its way out to let go of the lock
_HANDOVER = 10.0

#: warnings raised while a request is handled, for its reply (per task)
_warnings: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("_warnings", default=None)


class AlreadyRunning(MydockerError):
    """Another daemon serves this state directory."""


def _show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    found = _warnings.get()
    if found is not None:
        found.append(str(message))
    else:
        print(f"mydocker daemon: {message}", file=sys.stderr, flush=True)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def _log(message: str) -> None:
    print(f"mydocker daemon[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


class Daemon:
    """The daemon of state directory ``sdir``."""

    def __init__(self, sdir: str, idle: float) -> None:
        self.sdir = sdir
        self.idle = idle
        self.containers: dict[str, Container] = {}
        #: attached clients of each container: where its output goes besides its log
        self.attached: dict[str, set[Any]] = {}
        self.starting = 0
        self.clients = 0
        self.last_activity = time.monotonic()
        self.stopping = anyio.Event()
        self._containers_tg: Any = None
        #: each running container's log, written by the pumps
        self.logs: dict[str, LogWriter] = {}
        self.pumps = Pumps(self._deliver, self._exited)
        #: the containers whose teardown has begun
        self._ending: set[str] = set()

    # -- requests ---------------------------------------------------------------

    async def _serve_client(self, conn: socket.socket) -> None:
        self.clients += 1
        stream = FdStream(conn.detach())
        buffer = b""
        try:
            while True:
                while b"\n" not in buffer:
                    if len(buffer) > protocol.MAX_LINE:
                        await stream.send(
                            protocol.encode(protocol.error_reply(ValueError("request too long")))
                        )
                        return
                    try:
                        buffer += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                line, _, buffer = buffer.partition(b"\n")
                attach = _attach_request(line)
                if attach is not None:
                    await self._attach(attach, stream, buffer)
                    return
                reply = await self._handle(line)
                try:
                    await stream.send(protocol.encode(reply))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return
        finally:
            stream.close()
            self.clients -= 1
            self.last_activity = time.monotonic()

    async def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = protocol.decode(line)
            protocol.check_version(request)
            op = request.get("op")
            if op == "ping":
                return {"ok": True, "pid": os.getpid(), "containers": len(self.containers)}
            if op == "run":
                return await self._run(request)
            if op == "shutdown":
                self.stopping.set()
                return {"ok": True}
            raise protocol.ProtocolError(f"unknown request {op!r}")
        except (MydockerError, OSError, protocol.ProtocolError) as e:
            return protocol.error_reply(e)
        except Exception as e:  # noqa: BLE001 - one bad request must not end the daemon and its containers
            _log(f"a request failed: {type(e).__name__}: {e}")
            return protocol.error_reply(protocol.ProtocolError(f"bad request ({type(e).__name__}: {e})"))

    async def _run(self, request: dict[str, Any]) -> dict[str, Any]:
        spec = protocol.unpack(request.get("spec"))
        if not isinstance(spec, ContainerSpec):
            raise protocol.ProtocolError("run: no spec")
        if spec.state_dir != self.sdir:
            raise protocol.ProtocolError(
                f"run: a container of state directory {spec.state_dir}, not {self.sdir}"
            )
        grace = request.get("grace", 10.0)
        max_size = request.get("log_max_size", DEFAULT_MAX_SIZE)
        if not isinstance(grace, (int, float)) or isinstance(grace, bool) or not 0 <= grace < 1e9:
            raise protocol.ProtocolError(f"run: grace must be a number of seconds, not {grace!r}")
        if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 4096:
            raise protocol.ProtocolError(f"run: log_max_size must be a number of bytes, not {max_size!r}")
        reg = records.Registration(detached=True, autoremove=bool(request.get("autoremove")))
        found: list[str] = []
        token = _warnings.set(found)
        self.starting += 1
        try:
            # -i: a stdin that stays open and empty (the daemon holds its other end)
            stdin = PIPE if request.get("interactive") else DEVNULL
            container = await start_container(
                spec, stdin=stdin, stdout=PIPE, stderr=PIPE, grace=float(grace), register=reg
            )
        finally:
            self.starting -= 1
            _warnings.reset(token)
        assert container.record is not None
        try:
            log = LogWriter(container.record.log_path, max_size)
        except BaseException:
            await container.aclose()
            raise
        self.containers[spec.id] = container
        self.logs[spec.id] = log
        for name, stream in (("stdout", container.stdout), ("stderr", container.stderr)):
            if stream is not None and (name == "stdout" or stream is not container.stdout):
                self.pumps.add(spec.id, name, stream.fileno())
        self.pumps.watch_exit(spec.id, container.pidfd)
        return {"ok": True, "id": spec.id, "warnings": found}

    async def _attach(self, cid: str, stream: FdStream, pending: bytes) -> None:
        """``attach``: the container's output to this client as it comes, the
        client's input to its stdin, until either ends (the container's exit
        status as the last frame)."""
        container = self.containers.get(cid)
        if container is None:
            error = MydockerError(f"container {cid[:12]} is not running in this daemon (not attachable)")
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.send(protocol.encode(protocol.error_reply(error)))
            return
        send, receive = anyio.create_memory_object_stream[tuple[int, bytes]](256)
        self.attached.setdefault(cid, set()).add(send)
        try:
            await stream.send(protocol.encode({"ok": True, "tty": container.spec.tty}))
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._attach_input, container, stream, pending, tg.cancel_scope)
                async with receive:
                    async for kind, data in receive:
                        await stream.send(protocol.frame(kind, data))
                tg.cancel_scope.cancel()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self.attached.get(cid, set()).discard(send)
            send.close()

    @staticmethod
    async def _attach_input(container: Container, stream: FdStream, pending: bytes, scope: Any) -> None:
        frames = protocol.Frames()
        data = pending
        try:
            while True:
                for kind, payload in frames.feed(data):
                    if kind == protocol.IN and container.stdin is not None:
                        await container.stdin.send(payload)
                    elif kind == protocol.RESIZE and len(payload) == 4:
                        container.resize(
                            int.from_bytes(payload[:2], "big"), int.from_bytes(payload[2:], "big")
                        )
                    elif kind == protocol.EOF and container.stdin is not None and not container.spec.tty:
                        await container.stdin.aclose()
                data = await stream.receive()
        except (
            anyio.EndOfStream,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            protocol.ProtocolError,
        ):
            scope.cancel()  # the client detached (or sent garbage): the container goes on

    def _to_attached(self, cid: str, kind: int, data: bytes) -> None:
        for send in list(self.attached.get(cid, ())):
            try:
                send.send_nowait((kind, data))
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                send.close()  # a client that does not keep up is let go, never waited for
                self.attached[cid].discard(send)

    # -- containers -------------------------------------------------------------

    def _exited(self, cid: str) -> None:
        """A container's PID 1 exited (``Pumps``): a task to tear it down."""
        container = self.containers.get(cid)
        if container is not None:
            self._containers_tg.start_soon(self._end, container)

    async def _end(self, container: Container, stop: bool = False) -> None:
        """Reap it (``stop``: first stop it), record the exit and tear it down (its
        output is the pumps' to read meanwhile). Once per container: its exit and
        the daemon's shutdown may both ask."""
        cid = container.spec.id
        if cid in self._ending:
            return
        self._ending.add(cid)
        try:
            if stop:
                await container.stop()
            await container.wait()
            # what it wrote before it died is still in the pipes: let the pumps read
            # it all, but not for ever (a process of --pid host may keep them open)
            with anyio.move_on_after(2.0):
                while self.pumps.open_streams(cid):
                    await anyio.sleep(0.01)
        finally:
            with anyio.CancelScope(shield=True):
                self.pumps.forget(cid)  # before its streams' fds are closed
                try:
                    await container.aclose()
                except Exception as e:  # noqa: BLE001 - one container's teardown must not end the daemon
                    _log(f"tearing down container {container.spec.short_id}: {e}")
                log = self.logs.pop(cid, None)
                if log is not None:
                    log.close()
                self.containers.pop(cid, None)
                if container.returncode is not None:
                    self._to_attached(
                        cid, protocol.EXIT, container.returncode.to_bytes(4, "big", signed=True)
                    )
                for send in self.attached.pop(cid, set()):
                    send.close()
                self._ending.discard(cid)
                self.last_activity = time.monotonic()

    def _deliver(self, cid: str, name: str, data: bytes) -> None:
        """A chunk of a container's output (``Pumps``): to its log and to the
        clients attached to it."""
        log = self.logs.get(cid)
        if log is not None:
            try:
                log.write(name, data)
            except OSError as e:
                _log(f"cannot write the log {log.path}: {e.strerror or e}")
        if self.attached.get(cid):
            self._to_attached(cid, protocol.OUT if name == "stdout" else protocol.ERR, data)

    # -- the loop ----------------------------------------------------------------

    async def _accept(self, listener: socket.socket) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                await anyio.wait_readable(listener)
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        _log(f"accept: {e.strerror}")
                        await anyio.sleep(0.1)
                        continue
                    raise
                self.last_activity = time.monotonic()
                if _peer_uid(conn) not in (os.geteuid(), 0):
                    conn.close()  # only our own user (and root) may ask
                    continue
                tg.start_soon(self._serve_client, conn)

    async def _watch_idle(self) -> None:
        while True:
            await anyio.sleep(min(0.2, max(self.idle / 4, 0.01)))
            busy = self.containers or self.starting or self.clients
            if not busy and time.monotonic() - self.last_activity >= self.idle:
                _log(f"idle for {self.idle:g} s: exiting")
                self.stopping.set()
                return

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    continue
                _log(f"{signal.Signals(signum).name}: stopping its containers and exiting")
                self.stopping.set()
                return

    async def run(self, listener: socket.socket, ready: int | None) -> None:
        """Serve until told to stop or idle; then stop the containers and return."""
        try:
            async with anyio.create_task_group() as pumps_tg:
                pumps_tg.start_soon(self.pumps.run)
                async with anyio.create_task_group() as containers_tg:
                    self._containers_tg = containers_tg
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._accept, listener)
                        tg.start_soon(self._watch_signals)
                        if self.idle > 0:
                            tg.start_soon(self._watch_idle)
                        if ready is not None:
                            os.write(ready, b"ok\n")
                            os.close(ready)
                        await self.stopping.wait()
                        tg.cancel_scope.cancel()
                    listener.close()
                    for container in list(self.containers.values()):
                        containers_tg.start_soon(self._end, container, True)
                pumps_tg.cancel_scope.cancel()  # every container is gone, and its streams
        finally:
            self.pumps.close()


def _attach_request(line: bytes) -> str | None:
    """The container id of an ``attach`` request (its connection then carries frames)."""
    try:
        request = protocol.decode(line)
    except protocol.ProtocolError:
        return None
    cid = request.get("id")
    if request.get("op") == "attach" and request.get("v") == protocol.VERSION and isinstance(cid, str):
        return cid
    return None


def _instance_lock(sdir: str) -> int:
    """Take ``daemon.lock``.

    Raises:
        AlreadyRunning: a daemon answers on the socket.
        MydockerError: the lock stayed held by one that does not answer.
    """
    fd = os.open(
        protocol.path(sdir, protocol.LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    deadline = time.monotonic() + _HANDOVER
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass
        from .client import ping

        if ping(sdir) is not None:
            os.close(fd)
            raise AlreadyRunning(f"a daemon already serves {sdir}")
        if time.monotonic() > deadline:
            os.close(fd)
            raise MydockerError(
                f"{protocol.path(sdir, protocol.LOCK)} is held by a daemon that does not answer"
            )
        time.sleep(0.02)


def _listen(sdir: str) -> socket.socket:
    """The daemon's socket, bound (mode 0600) and listening."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(protocol.path(sdir, protocol.SOCKET))

    def bind(sock: socket.socket, address: str) -> None:
        old = os.umask(0o177)
        try:
            sock.bind(address)
        finally:
            os.umask(old)
        sock.listen(128)

    sock = protocol.socket_at(sdir, bind)
    sock.setblocking(False)
    return sock


def serve(sdir: str, idle: float | None = None, ready: int | None = None) -> int:
    """Run the daemon of ``sdir`` until it is idle or told to stop; its exit status.

    ``ready``: an fd to write ``ok`` to once it serves (or one line saying why not),
    then close (``client.start_daemon`` waits on it).
    """
    if idle is None:
        idle = float(os.environ.get(IDLE_ENV) or DEFAULT_IDLE)
    try:
        os.makedirs(sdir, mode=0o711, exist_ok=True)
        lock = _instance_lock(sdir)
    except AlreadyRunning:
        if ready is not None:
            os.write(ready, b"ok\n")
        return 0
    except (MydockerError, OSError) as e:
        if ready is not None:
            os.write(ready, f"{e}\n".encode())
        _log(str(e))
        return 125
    try:
        with open(protocol.path(sdir, protocol.PIDFILE), "w") as f:
            f.write(f"{os.getpid()} {records.start_time(os.getpid())}\n")
        for cid in records.recover(sdir):
            _log(f"container {cid[:12]} died with the daemon before this one: recorded as exited")
        state.sweep_dead(sdir)
        listener = _listen(sdir)
        warnings.showwarning = _show_warning
        daemon = Daemon(sdir, idle)
        _log(f"serving {sdir}")
        backend = os.environ.get("MYDOCKER_BACKEND") or "asyncio"
        try:
            anyio.run(daemon.run, listener, ready, backend=backend)
        finally:
            # the socket goes first: a CLI that finds no socket starts a new daemon,
            # which waits for this one's lock
            with contextlib.suppress(OSError):
                os.unlink(protocol.path(sdir, protocol.SOCKET))
            listener.close()
        return 0
    except (MydockerError, OSError) as e:
        if ready is not None:
            with contextlib.suppress(OSError):
                os.write(ready, f"{e}\n".encode())
        _log(str(e))
        return 125
    finally:
        with contextlib.suppress(OSError):
            os.unlink(protocol.path(sdir, protocol.PIDFILE))
        os.close(lock)
