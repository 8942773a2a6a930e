"""Every wire format between mydocker's processes, each encoder next to its decoder.

Four conversations, all over fds that live only as long as one container's start:

- **spawn request** (supervisor -> spawn helper, a SOCK_SEQPACKET socket, one
  message per request): ``b"I" + marshal((rid, child, roles, clone_flags, cgroup_parents))`` with the
  container's fds by SCM_RIGHTS. ``roles`` is ``((role, i), ...)``: the role's fd is
  ``fds[i]`` (an fd serving several roles, as /dev/null for stdin, stdout and stderr,
  travels once). A request over ``INLINE_MAX`` (a big environment; a message is at
  most the socket's send buffer) is ``b"F"`` with the marshalled request in a memfd,
  ``fds[0]``. ``child`` is ``init.ChildSpec`` as a plain tuple; ``cgroup_parents``
  the directories the container's cgroups are in (where the helper cleans up if
  the supervisor dies). marshal, not pickle: the helper loads nothing for it (see
  ``helper.py`` on what the helper may load).
- **spawn reply** (helper -> supervisor): ``REPLY`` (rid, pid, errno) + the failure
  text (utf-8) + the pidfd by SCM_RIGHTS when pid > 0. Replies come strictly in the
  order of the requests.
- **error pipe** (child -> supervisor, close-on-exec): ``step NUL errno NUL detail``
  when a step before exec failed; EOF with no data means the exec succeeded. An
  OCI container's child also writes ``ASK_FOR_HOOKS`` (and waits on its hooks
  pipe) and ``CREATED`` (then waits on its exec fifo): markers start with NUL,
  which no failure report does.
- **console handshake** (child -> supervisor, a socketpair): with ``-t`` and a root
  filesystem the child sends the pty master it opened in its own devpts; the
  supervisor sizes the pty and answers one byte, and only then does the child go on.
- **release** (supervisor -> child, the "sync" pipe): one byte once the child's user
  namespace is mapped; EOF without it
  means give up. A child that enters its user namespace late (``--userns auto``)
  asks for its maps with ``ASK_FOR_MAPS`` on the error pipe, and waits for a
  second byte.

This module is loaded by the spawn helper and runs in the child: it imports only the
C cores of socket and struct, ``marshal`` and ``os``.
"""

from __future__ import annotations

import _socket
import _struct
import errno
import marshal
import os

#: fd roles a spawn request may carry: the child's stdio, the error pipe, the cgroup
#: v1 "sync" pipe, a cgroup2 directory for CLONE_INTO_CGROUP, the console socket on
#: which a child with a root filesystem sends back the master of its pty, and for an
#: exec the pidfd of the container's PID 1 ("target")
ROLES = ("stdin", "stdout", "stderr", "errpipe", "sync", "cgroup", "console", "target")
#: the largest request that travels in the message itself (a unix socket takes at
#: most its send buffer, ~200 kB by default)
INLINE_MAX = 32 << 10
_INLINE, _IN_MEMFD = b"I", b"F"
#: the head of a reply: request id, pid (0: the clone failed), errno
REPLY = _struct.Struct("=qqi")
_RID_MIN, _RID_MAX = -(1 << 63), (1 << 63) - 1  # what the reply's "q" takes
_SOL_SOCKET, _SCM_RIGHTS = _socket.SOL_SOCKET, _socket.SCM_RIGHTS

# What typing.TYPE_CHECKING is, without importing typing (helper.py says why).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket


# ---------------------------------------------------------------- fds over a socket


def send_fds(sock: socket.socket | _socket.socket, data: bytes, fds: list[int]) -> None:
    """One message with fds (SCM_RIGHTS); never raises SIGPIPE."""
    ancillary = [(_SOL_SOCKET, _SCM_RIGHTS, _struct.pack(f"{len(fds)}i", *fds))] if fds else []
    sock.sendmsg([data], ancillary, _socket.MSG_NOSIGNAL)


def recv_fds(
    sock: socket.socket | _socket.socket, bufsize: int, maxfds: int, flags: int = 0
) -> tuple[bytes, list[int]]:
    """One message and the fds that came with it, close-on-exec (at most maxfds: the
    kernel closes any beyond what fits)."""
    msg, ancillary, _flags, _addr = sock.recvmsg(
        bufsize, _socket.CMSG_SPACE(maxfds * 4), flags | _socket.MSG_CMSG_CLOEXEC
    )
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            fds += _struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4])
    return msg, fds


# ---------------------------------------------------------------- spawn request


def encode_request(
    rid: int, child: tuple[object, ...], fds: dict[str, int], flags: int, cgroup_parents: tuple[str, ...] = ()
) -> tuple[bytes, list[int], int]:
    """(message, fds to send, memfd or -1) for one spawn request. A memfd is made
    for a large request and goes first in the fds; the caller closes it once sent."""
    unique = list(dict.fromkeys(fds[r] for r in ROLES if r in fds))
    roles = tuple((r, unique.index(fds[r])) for r in ROLES if r in fds)
    data = marshal.dumps((rid, child, roles, flags, cgroup_parents))  # type: ignore[arg-type]
    if len(data) <= INLINE_MAX:
        return _INLINE + data, unique, -1
    memfd = os.memfd_create("mydocker-request", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(memfd, view) :]
    except BaseException:
        os.close(memfd)
        raise
    return _IN_MEMFD, [memfd, *unique], memfd


def decode_request(
    msg: bytes, fds: list[int]
) -> tuple[int, tuple[object, ...], dict[str, int], int, tuple[str, ...]]:
    """``(rid, child, {role: fd}, clone flags, cgroup parents)`` from ``encode_request``'s message and
    the fds that came with it (a memfd among them is read; the caller closes every fd
    of the message, as it does when the request is refused).

    Raises:
        ValueError: a malformed request (the caller answers it with an error).
    """
    if msg[:1] == _INLINE:
        data = msg[1:]
    elif msg[:1] == _IN_MEMFD and fds:
        memfd, fds = fds[0], fds[1:]
        data = os.pread(memfd, os.fstat(memfd).st_size, 0)
    else:
        raise ValueError("unknown request kind")
    try:
        rid, child, roles, flags, parents = marshal.loads(data)
        byrole = {role: fds[i] for role, i in roles}
        if not isinstance(rid, int) or not _RID_MIN <= rid <= _RID_MAX:
            raise ValueError(f"a request id no reply can carry: {rid!r}")
    except (EOFError, TypeError, IndexError, ValueError) as e:
        raise ValueError(f"malformed request: {e}") from None
    return rid, child, byrole, flags, parents


# ---------------------------------------------------------------- spawn reply


def encode_reply(rid: int, pid: int, err: int = 0, detail: str = "") -> bytes:
    """A reply: pid > 0 (the pidfd goes with it), or pid 0 with errno and why."""
    return REPLY.pack(rid, pid, err) + detail.encode(errors="replace")


def decode_reply(msg: bytes) -> tuple[int, int, int, str]:
    """``(rid, pid, errno, detail)`` from ``encode_reply``'s bytes."""
    rid, pid, err = REPLY.unpack_from(msg)
    return rid, pid, err, msg[REPLY.size :].decode(errors="replace")


def clone_failed(flags: int, err: int) -> str:
    """What a failed clone3 says (the helper sends it, the direct clone raises it)."""
    return f"clone3(flags={flags:#x}) failed: {os.strerror(err)}"


# ---------------------------------------------------------------- error pipe

#: the most a failure report may take (a pipe takes it in one atomic write)
_REPORT_MAX = 4000


def encode_failure(step: str, err: int, detail: str) -> bytes:
    """The child's failure report: ``step NUL errno NUL detail``."""
    return f"{step}\0{err}\0{detail}".encode(errors="surrogateescape")[:_REPORT_MAX]


def report_failure(fd: int, step: str, err: int, detail: str) -> None:
    """In the child: write the failure report (best effort: nobody may be reading)."""
    try:
        os.write(fd, encode_failure(step, err, detail))
    except OSError:
        pass


def decode_failure(data: bytes) -> tuple[str, int, str]:
    """``(step, errno, detail)`` from a non-empty report."""
    step, _, rest = data.decode(errors="replace").partition("\0")
    err_s, _, detail = rest.partition("\0")
    try:
        err = int(err_s or 0)
    except ValueError:
        err = 0
    return step, err, detail


# ---------------------------------------------------------------- console handshake

_CONSOLE_TAG = b"pty"
_GO = b"1"


def send_console(sock_fd: int, master: int) -> None:
    """In the child: send the pty master, then wait until the supervisor has sized
    the terminal (so the command never starts with a 0x0 window).

    Raises:
        OSError: the supervisor went away before answering.
    """
    sock = _socket.socket(fileno=sock_fd)
    try:
        send_fds(sock, _CONSOLE_TAG, [master])
        if sock.recv(1) != _GO:
            raise OSError(errno.ECONNRESET, "the supervisor went away before the terminal was ready")
    finally:
        sock.close()


def receive_console(sock: socket.socket) -> int | None:
    """The pty master the child sent, or None if the child died first (its error pipe
    says why). Raises BlockingIOError when nothing has arrived yet."""
    msg, fds = recv_fds(sock, 16, 1)
    if not fds:
        return None
    if msg != _CONSOLE_TAG:
        for f in fds:
            os.close(f)
        return None
    return fds[0]


def console_ready(sock: socket.socket) -> None:
    """Let the child go on (the supervisor has sized its terminal)."""
    sock.send(_GO)


# ---------------------------------------------------------------- cgroup release


def release(fd: int) -> None:
    """The child's user namespace is mapped: let it go on."""
    os.write(fd, _GO)


def wait_released(fd: int, close: bool = True) -> bool:
    """In the child: block until ``release``; False on EOF (the supervisor gave up)."""
    try:
        return os.read(fd, 1) == _GO
    finally:
        if close:
            os.close(fd)


# ---------------------------------------------------------------- user namespace maps

#: what a child that has just entered a user namespace (``--userns auto``) writes on
#: its error pipe: a NUL first, which no failure report starts with
ASK_FOR_MAPS = b"\0userns\0"


def ask_for_maps(errpipe: int) -> None:
    """In the child: ask the supervisor to write the maps of our new user namespace
    (it answers through the sync pipe: ``release``)."""
    os.write(errpipe, ASK_FOR_MAPS)


# ---------------------------------------------------------------- OCI containers

#: what an OCI container's child writes on its error pipe once it is set up and
#: confined, before it blocks on its exec fifo (the spec's "created" state): its
#: creator may exit. NUL first, as ``ASK_FOR_MAPS``.
CREATED = b"\0created\0"
#: what it writes when its mounts are made and its root not yet pivoted, then waits
#: for one byte on its hooks pipe: the runtime runs the prestart, createRuntime and
#: createContainer hooks meanwhile
ASK_FOR_HOOKS = b"\0hooks\0"


def report_created(errpipe: int) -> None:
    """In the child: the container is created (see ``CREATED``)."""
    os.write(errpipe, CREATED)


def ask_for_hooks(errpipe: int, hooks: int) -> None:
    """In the child: let the runtime run the hooks, and wait until it has (``release``
    on ``hooks``; EOF: it gave up).

    Raises:
        OSError: the runtime gave up (a hook failed): the child stops there.
    """
    os.write(errpipe, ASK_FOR_HOOKS)
    if not wait_released(hooks):
        raise OSError(errno.ECANCELED, "the runtime stopped the container (a hook failed)")


def split_marker(data: bytes) -> tuple[bytes | None, bytes]:
    """``(marker, rest)`` when ``data`` read from an error pipe starts with one of the
    child's markers (``ASK_FOR_MAPS``, ``ASK_FOR_HOOKS``, ``CREATED``), else
    ``(None, data)``: a failure report, or nothing."""
    for marker in (ASK_FOR_HOOKS, CREATED, ASK_FOR_MAPS):
        if data.startswith(marker):
            return marker, data[len(marker) :]
    return None, data
