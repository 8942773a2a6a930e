"""Every wire format of wire.py, encoder and decoder together over a real socket or
pipe: the spawn request (inline and in a memfd, with its fds), the spawn reply, the
error pipe, the console handshake, the release on the sync pipe and the request for
user namespace maps. No root, no clone: the fds that travel are pipes, sockets, a pty
and a pidfd of this very process."""

from __future__ import annotations

import errno
import marshal
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import init, wire
from supervisor.spec import ContainerSpec


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        yield a, b


def same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def child_tuple(**env: str) -> tuple[object, ...]:
    spec = ContainerSpec(("sh", "-c", "echo hi"), env=tuple(env.items()))
    return init.child_to_wire(init.child_spec(spec))


def receive_request(sock: socket.socket) -> tuple[bytes, list[int]]:
    """As the helper receives one (helper._receive_batch)."""
    return wire.recv_fds(sock, wire.INLINE_MAX + 1, len(wire.ROLES) + 1)


@pytest.fixture
def role_fds(tmp_path: Path) -> Iterator[dict[str, int]]:
    """A container's fds by role, as the supervisor hands them over: stdout and
    stderr one pipe (``STDOUT``), stdin another, the error pipe, the sync pipe, a
    cgroup directory (O_PATH), the console socket and (an exec's) a pidfd."""
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    sync_r, sync_w = os.pipe()
    cgroup = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    console, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    target = os.pidfd_open(os.getpid())
    yield {
        "stdin": stdin_r,
        "stdout": out_w,
        "stderr": out_w,
        "errpipe": err_w,
        "sync": sync_r,
        "cgroup": cgroup,
        "console": theirs.fileno(),
        "target": target,
    }
    for fd in (stdin_r, stdin_w, out_r, out_w, err_r, err_w, sync_r, sync_w, cgroup, target):
        os.close(fd)
    console.close()
    theirs.close()


# ---------------------------------------------------------------- spawn request


def test_a_request_and_its_fds_arrive_whole(
    pair: tuple[socket.socket, socket.socket], role_fds: dict[str, int]
) -> None:
    a, b = pair
    child = child_tuple(A="1")
    parents = ("/sys/fs/cgroup/x", "/sys/fs/cgroup/memory/x")
    message, fdlist, memfd = wire.encode_request(7, child, role_fds, 0x7E020000, parents)
    assert memfd == -1 and message[:1] == b"I"
    # an fd serving several roles travels once
    assert set(role_fds) == set(wire.ROLES)
    assert len(fdlist) == len(set(role_fds.values())) == len(wire.ROLES) - 1
    wire.send_fds(a, message, fdlist)
    msg, fds = receive_request(b)
    try:
        rid, got_child, byrole, flags, got_parents = wire.decode_request(msg, fds)
        assert (rid, got_child, flags, got_parents) == (7, child, 0x7E020000, parents)
        assert set(byrole) == set(role_fds)
        for role, fd in role_fds.items():
            assert same_file(byrole[role], fd), role
            assert not os.get_inheritable(byrole[role]), role  # close-on-exec on arrival
        assert byrole["stdout"] == byrole["stderr"]
        assert init.child_from_wire(got_child) == init.child_from_wire(child)
    finally:
        for fd in fds:
            os.close(fd)


def test_a_big_request_goes_in_a_memfd(
    pair: tuple[socket.socket, socket.socket], role_fds: dict[str, int]
) -> None:
    a, b = pair
    child = child_tuple(BIG="x" * (4 * wire.INLINE_MAX), OTHER="y")
    message, fdlist, memfd = wire.encode_request(8, child, role_fds, 0, ())
    assert message == b"F" and memfd >= 0 and fdlist[0] == memfd
    try:
        wire.send_fds(a, message, fdlist)
    finally:
        os.close(memfd)  # the caller's to close once sent
    msg, fds = receive_request(b)
    try:
        assert len(fds) == 1 + len(set(role_fds.values()))
        rid, got_child, byrole, _flags, _parents = wire.decode_request(msg, fds)
        assert rid == 8 and got_child == child
        assert all(same_file(byrole[r], fd) for r, fd in role_fds.items())
        assert fds[0] not in byrole.values()  # the memfd is no role's
    finally:
        for fd in fds:
            os.close(fd)


def test_inline_up_to_inline_max_and_a_memfd_one_byte_beyond(role_fds: dict[str, int]) -> None:
    def size(pad: int) -> int:
        data = marshal.dumps((1, child_tuple(PAD="p" * pad), (("stdin", 0),), 0, ()))
        return len(data)

    pad = 1000 + wire.INLINE_MAX - size(1000)  # marshal grows one byte per byte here
    assert size(pad) == wire.INLINE_MAX
    fds = {"stdin": role_fds["stdin"]}
    message, _fdlist, memfd = wire.encode_request(1, child_tuple(PAD="p" * pad), fds, 0, ())
    assert memfd == -1 and len(message) == wire.INLINE_MAX + 1  # the kind byte too
    message, _fdlist, memfd = wire.encode_request(1, child_tuple(PAD="p" * (pad + 1)), fds, 0, ())
    os.close(memfd)
    assert message == b"F"


def _marshal(value: object) -> bytes:
    return b"I" + marshal.dumps(value)


GOOD = (3, ("child",), (("stdin", 0),), 0, ())


@pytest.mark.parametrize(
    ("msg", "nfds"),
    [
        (b"", 0),
        (b"Z" + marshal.dumps(GOOD), 1),  # an unknown kind
        (_marshal(GOOD)[:-3], 1),  # cut short
        (b"I\xff\x00garbage", 0),  # not marshal at all
        (_marshal(42), 0),  # not a tuple
        (_marshal(GOOD[:3]), 1),  # a tuple of another length
        (_marshal((3, ("child",), 5, 0, ())), 1),  # roles not pairs
        (_marshal((3, ("child",), (("stdin",),), 0, ())), 1),
        (_marshal((3, ("child",), (("stdin", 1),), 0, ())), 1),  # an fd that did not come
        (_marshal((3, ("child",), (("stdin", "0"),), 0, ())), 1),
        (_marshal((3, ("child",), (([], 0),), 0, ())), 1),  # a role that is no name
        (b"F", 0),  # a memfd that did not come
        (_marshal(("3", *GOOD[1:])), 1),  # an id that is no number
        (_marshal((1 << 63, *GOOD[1:])), 1),  # an id no reply can carry
    ],
    ids=[
        "empty",
        "unknown kind",
        "cut short",
        "not marshal",
        "not a tuple",
        "short tuple",
        "roles not pairs",
        "role without index",
        "fd not sent",
        "index not int",
        "role not a name",
        "memfd not sent",
        "id not int",
        "id too big",
    ],
)
def test_a_malformed_request_is_a_value_error(msg: bytes, nfds: int) -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError):
            wire.decode_request(msg, [r] * nfds)
    finally:
        os.close(r)
        os.close(w)


def test_a_memfd_holding_garbage_is_a_value_error() -> None:
    memfd = os.memfd_create("garbage")
    try:
        os.write(memfd, b"\x00not marshal")
        with pytest.raises(ValueError):
            wire.decode_request(b"F", [memfd])
    finally:
        os.close(memfd)


# ---------------------------------------------------------------- spawn reply


def _pid_of(pidfd: int) -> int:
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pid:"))


def test_a_reply_with_a_pidfd(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    pidfd = os.pidfd_open(os.getpid())
    try:
        wire.send_fds(a, wire.encode_reply(12, os.getpid()), [pidfd])
    finally:
        os.close(pidfd)
    msg, fds = wire.recv_fds(b, 4096, 1)  # as SpawnHelper reads them
    assert len(fds) == 1
    try:
        assert wire.decode_reply(msg) == (12, os.getpid(), 0, "")
        assert _pid_of(fds[0]) == os.getpid()
    finally:
        os.close(fds[0])


@pytest.mark.parametrize(
    ("detail", "decoded"),
    [
        (wire.clone_failed(0x20000, errno.ENOSPC), "clone3(flags=0x20000) failed: No space left on device"),
        (
            "the spawn helper cannot serve this request: ünïcode",
            "the spawn helper cannot serve this request: ünïcode",
        ),
        ("bad \udcff byte", "bad ? byte"),  # a lone surrogate cannot go as UTF-8
        ("", ""),
    ],
)
def test_a_failure_reply_carries_errno_and_why(
    pair: tuple[socket.socket, socket.socket], detail: str, decoded: str
) -> None:
    a, b = pair
    wire.send_fds(a, wire.encode_reply(2**62, 0, errno.ENOSPC, detail), [])
    msg, fds = wire.recv_fds(b, 4096, 1)
    assert fds == []
    assert wire.decode_reply(msg) == (2**62, 0, errno.ENOSPC, decoded)


# ---------------------------------------------------------------- error pipe


def _report(step: str, err: int, detail: str) -> bytes:
    r, w = os.pipe()
    try:
        wire.report_failure(w, step, err, detail)
        os.close(w)
        w = -1
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        return data
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_a_failure_report_round_trips() -> None:
    data = _report("mount volume /a:/b", errno.ENOTDIR, "mount(...) failed: Not a directory")
    assert wire.decode_failure(data) == (
        "mount volume /a:/b",
        errno.ENOTDIR,
        "mount(...) failed: Not a directory",
    )


def test_a_failure_report_with_bytes_that_are_not_utf8() -> None:
    # a path from the image: surrogate-escaped bytes go out as they were
    data = _report("chdir /caf\udce9", errno.ENOENT, "/caf\udce9")
    assert data == f"chdir /caf\udce9\0{errno.ENOENT}\0/caf\udce9".encode(errors="surrogateescape")
    step, err, detail = wire.decode_failure(data)
    assert (step, err, detail) == ("chdir /caf\ufffd", errno.ENOENT, "/caf\ufffd")


@pytest.mark.parametrize(
    ("data", "decoded"),
    [
        (b"exec\0\0prog", ("exec", 0, "prog")),  # no errno
        (b"exec\0x1\0prog", ("exec", 0, "prog")),  # not a number
        (b"exec", ("exec", 0, "")),  # cut after the step
        (b"exec\x002", ("exec", 2, "")),
        (b"exec\x002\0a\0b", ("exec", 2, "a\0b")),  # NUL in the detail is the detail's
    ],
)
def test_a_partial_failure_report_still_decodes(data: bytes, decoded: tuple[str, int, str]) -> None:
    assert wire.decode_failure(data) == decoded


def test_a_failure_report_is_cut_at_the_limit_in_one_write() -> None:
    data = _report("init", errno.E2BIG, "d" * 100_000)
    assert data == wire.encode_failure("init", errno.E2BIG, "d" * 100_000)
    assert len(data) == 4000  # what one pipe write takes atomically
    step, err, detail = wire.decode_failure(data)
    assert (step, err) == ("init", errno.E2BIG) and detail == "d" * len(detail)


def test_reporting_to_nobody_is_not_an_error() -> None:
    r, w = os.pipe()
    os.close(r)
    try:
        wire.report_failure(w, "exec", errno.ENOENT, "nobody reads")  # EPIPE, swallowed
    finally:
        os.close(w)
    wire.report_failure(w, "exec", errno.ENOENT, "a closed fd")  # EBADF, swallowed


# ---------------------------------------------------------------- console handshake


class Child(threading.Thread):
    """The child's side of the console handshake (``wire.send_console``)."""

    def __init__(self, sock_fd: int, master: int) -> None:
        super().__init__()
        self.sock_fd, self.master = sock_fd, master
        self.returned = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            wire.send_console(self.sock_fd, self.master)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e
        self.returned.set()


@pytest.fixture
def console() -> Iterator[tuple[socket.socket, int, int]]:
    """(supervisor side, child side's fd, pty master)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    master, slave = os.openpty()
    fd = theirs.detach()  # send_console owns and closes it
    yield ours, fd, master
    ours.close()
    os.close(master)
    os.close(slave)


def test_the_pty_master_arrives_and_the_child_waits_for_the_go(
    console: tuple[socket.socket, int, int],
) -> None:
    ours, theirs, master = console
    child = Child(theirs, master)
    child.start()
    got = wire.receive_console(ours)
    try:
        assert got is not None and same_file(got, master)
        assert os.isatty(got)
        # not gone on before the supervisor sized the terminal
        assert not child.returned.wait(0.2)
        wire.console_ready(ours)
        child.join()
        assert child.error is None
    finally:
        if got is not None:
            os.close(got)


def test_the_child_gives_up_when_the_supervisor_goes_away_before_the_go(
    console: tuple[socket.socket, int, int],
) -> None:
    ours, theirs, master = console
    child = Child(theirs, master)
    child.start()
    got = wire.receive_console(ours)
    assert got is not None
    os.close(got)
    ours.shutdown(socket.SHUT_RDWR)  # EOF for the child, no go byte
    child.join()
    assert isinstance(child.error, OSError) and child.error.errno == errno.ECONNRESET


def test_receive_console_before_anything_arrived_and_after_the_child_died() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        ours.setblocking(False)
        with pytest.raises(BlockingIOError):
            wire.receive_console(ours)
        # something else than the pty: its fd is closed, nothing is returned
        r, w = os.pipe()
        wire.send_fds(theirs, b"not a pty", [r])
        os.close(r)
        assert wire.receive_console(ours) is None
        os.close(w)
        theirs.close()  # the child died before sending
        assert wire.receive_console(ours) is None


# ---------------------------------------------------------------- release, and a request for maps


def test_release_lets_the_child_go_on() -> None:
    r, w = os.pipe()
    try:
        wire.release(w)
        assert wire.wait_released(r) is True
        with pytest.raises(OSError) as e:
            os.fstat(r)  # wait_released closed it
        assert e.value.errno == errno.EBADF
    finally:
        os.close(w)


def test_eof_without_the_byte_means_give_up() -> None:
    r, w = os.pipe()
    os.close(w)
    assert wire.wait_released(r) is False


def test_release_from_another_thread_wakes_the_waiting_child() -> None:
    r, w = os.pipe()
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(wire.wait_released(r)))
    waiter.start()
    wire.release(w)
    waiter.join()
    os.close(w)
    assert result == [True]


def test_userns_auto_asks_for_its_maps_and_waits_for_a_second_release() -> None:
    err_r, err_w = os.pipe()
    sync_r, sync_w = os.pipe()
    released: list[bool] = []

    def child() -> None:
        released.append(wire.wait_released(sync_r, close=False))  # placed: the pipe stays
        wire.ask_for_maps(err_w)  # after unshare(CLONE_NEWUSER)
        released.append(wire.wait_released(sync_r))  # mapped
        wire.report_failure(err_w, "exec", errno.ENOENT, "sh")

    waiter = threading.Thread(target=child)
    waiter.start()
    try:
        wire.release(sync_w)
        assert os.read(err_r, len(wire.ASK_FOR_MAPS)) == wire.ASK_FOR_MAPS
        wire.release(sync_w)
        waiter.join()
        os.close(err_w)
        # what follows the request on the error pipe is an ordinary report
        assert wire.decode_failure(os.read(err_r, 4096)) == ("exec", errno.ENOENT, "sh")
        assert released == [True, True]
        with pytest.raises(OSError):
            os.fstat(sync_r)  # the second wait closed it
    finally:
        os.close(err_r)
        os.close(sync_w)


@pytest.mark.parametrize(("step", "err"), [("", 0), ("userns", 0), ("exec", errno.ENOENT)])
def test_no_failure_report_looks_like_a_request_for_maps(step: str, err: int) -> None:
    # (every step the child names starts with a word, never with a NUL)
    assert not wire.encode_failure(step, err, "userns\0").startswith(wire.ASK_FOR_MAPS)


# ---------------------------------------------------------------- fds over a socket


def test_more_fds_than_asked_for_are_closed_by_the_kernel(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    pipes = [os.pipe() for _ in range(4)]
    before = set(os.listdir("/proc/self/fd"))
    wire.send_fds(a, b"four", [r for r, _w in pipes])
    msg, fds = wire.recv_fds(b, 16, 2)
    assert msg == b"four" and len(fds) == 2
    assert all(same_file(fd, pipes[i][0]) for i, fd in enumerate(fds))
    for fd in fds:
        os.close(fd)
    assert set(os.listdir("/proc/self/fd")) == before  # the two beyond did not arrive
    for r, w in pipes:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(
    "bad",
    [
        (),
        child_tuple()[:-1],  # a field short: another version of mydocker
        (*child_tuple(), None),
        (*child_tuple()[:-1], (1, 2, 3)),  # a confinement of another shape
        (*child_tuple()[:-1], "not a confinement"),
    ],
)
def test_a_child_of_another_shape_is_refused(bad: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        init.child_from_wire(bad)
