"""Images: import (safe extraction of hostile tarballs), ls, rm, and run --image."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor import SpecError, open_container
from supervisor.images import (
    UnsafeArchiveError,
    image_rootfs,
    import_image,
    list_images,
    remove_image,
    sweep_images,
)

from . import busybox as bb
from .conftest import mydocker_cmd, run_cli

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox root filesystem as a tarball."""
    return bb.build(tmp_path_factory)[1]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


Member = Callable[[tarfile.TarFile], None]


def make_tar(path: Path, *members: tuple[str, str, object]) -> Path:
    """A tarball of (type, name, payload) members: ("file", name, bytes),
    ("dir", name, None), ("sym", name, target), ("hard", name, target),
    ("chr", name, (major, minor))."""
    with tarfile.open(path, "w") as tf:
        for kind, name, payload in members:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            if kind == "file":
                assert isinstance(payload, bytes)
                ti.size = len(payload)
                ti.mode = 0o644
                tf.addfile(ti, io.BytesIO(payload))
                continue
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, str(payload)
            elif kind == "hard":
                ti.type, ti.linkname = tarfile.LNKTYPE, str(payload)
            elif kind == "chr":
                assert isinstance(payload, tuple)
                ti.type, ti.mode = tarfile.CHRTYPE, 0o666
                ti.devmajor, ti.devminor = payload
            tf.addfile(ti)
    return path


def assert_no_image_and_no_leftovers(state: Path, name: str) -> None:
    images = state / "images"
    assert not (images / name).exists()
    assert [e for e in os.listdir(images) if e.startswith(".")] == [] if images.exists() else True


# ------------------------------------------------------------------ hostile tarballs (no root needed)


def test_dotdot_member_is_refused(tmp_path: Path, state: Path) -> None:
    tar = make_tar(tmp_path / "t.tar", ("file", "ok", b"x"), ("file", "../../escaped", b"evil"))
    with pytest.raises(UnsafeArchiveError, match=r"outside the image"):
        import_image("evil", str(tar), str(state))
    assert not (state / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert_no_image_and_no_leftovers(state, "evil")


def test_absolute_member_is_made_relative(tmp_path: Path, state: Path) -> None:
    target = tmp_path / "host-file"
    tar = make_tar(tmp_path / "t.tar", ("file", str(target), b"inside"))
    img = import_image("abs", str(tar), str(state))
    assert not target.exists()
    assert os.stat(img.path).st_mode & 0o777 == 0o700  # set-uid files in it stay unreachable
    assert (Path(img.rootfs) / str(target).lstrip("/")).read_bytes() == b"inside"


@pytest.mark.parametrize("link", ["ABS", "../../../../../../..", "sub/../../.."])
def test_writing_through_a_symlink_is_refused(tmp_path: Path, state: Path, link: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link = str(outside) if link == "ABS" else link
    tar = make_tar(
        tmp_path / "t.tar", ("dir", "sub", None), ("sym", "esc", link), ("file", "esc/pwned", b"evil")
    )
    with pytest.raises(UnsafeArchiveError, match="symlink"):
        import_image("evil", str(tar), str(state))
    assert os.listdir(outside) == []
    assert not (tmp_path / "pwned").exists()
    assert_no_image_and_no_leftovers(state, "evil")


def test_a_file_replacing_a_symlink_does_not_write_through_it(tmp_path: Path, state: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host data")
    tar = make_tar(tmp_path / "t.tar", ("sym", "f", str(secret)), ("file", "f", b"image data"))
    img = import_image("img", str(tar), str(state))
    assert secret.read_text() == "host data"
    f = Path(img.rootfs) / "f"
    assert not f.is_symlink() and f.read_bytes() == b"image data"


def test_symlinks_are_kept_as_they_are(tmp_path: Path, state: Path) -> None:
    tar = make_tar(tmp_path / "t.tar", ("sym", "sh", "/bin/busybox"), ("sym", "up", "../../.."))
    img = import_image("links", str(tar), str(state))
    assert os.readlink(Path(img.rootfs) / "sh") == "/bin/busybox"
    assert os.readlink(Path(img.rootfs) / "up") == "../../.."


@pytest.mark.parametrize("target", ["../outside", "ABS"])
def test_hard_link_out_of_the_image_is_refused(tmp_path: Path, state: Path, target: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host data")
    target = str(secret) if target == "ABS" else target
    tar = make_tar(tmp_path / "t.tar", ("hard", "hl", target))
    with pytest.raises(UnsafeArchiveError):
        import_image("evil", str(tar), str(state))
    assert os.stat(secret).st_nlink == 1
    assert_no_image_and_no_leftovers(state, "evil")


def test_hard_link_inside_the_image(tmp_path: Path, state: Path) -> None:
    tar = make_tar(
        tmp_path / "t.tar", ("dir", "bin", None), ("file", "bin/a", b"data"), ("hard", "b", "bin/a")
    )
    img = import_image("hl", str(tar), str(state))
    a, b = Path(img.rootfs) / "bin/a", Path(img.rootfs) / "b"
    assert os.path.samefile(a, b) and b.read_bytes() == b"data"


def test_device_nodes_are_skipped_unless_allowed(tmp_path: Path, state: Path) -> None:
    tar = make_tar(tmp_path / "t.tar", ("file", "ok", b"x"), ("chr", "sda", (8, 0)))
    img = import_image("nodev", str(tar), str(state))
    assert img.skipped == 1 and not (Path(img.rootfs) / "sda").exists()
    if os.geteuid() == 0:
        img = import_image("dev", str(tar), str(state), allow_devices=True)
        st = os.lstat(Path(img.rootfs) / "sda")
        assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 8


@pytest.mark.root
def test_cli_creates_device_nodes_only_with_allow_devices(tmp_path: Path, state: Path) -> None:
    tar = make_tar(tmp_path / "t.tar", ("file", "ok", b"x"), ("chr", "sda", (8, 0)))
    res = run_cli("image", "--state-dir", str(state), "import", "nodev", str(tar))
    assert res.returncode == 0, res.stderr
    assert b"1 device nodes or special files skipped" in res.stdout + res.stderr
    assert not (Path(image_rootfs("nodev", str(state))) / "sda").exists()
    res = run_cli("image", "--state-dir", str(state), "import", "--allow-devices", "dev", str(tar))
    assert res.returncode == 0, res.stderr
    st = os.lstat(Path(image_rootfs("dev", str(state))) / "sda")
    assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (8, 0)


def test_not_a_tarball(tmp_path: Path, state: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00not a tar" * 100)
    with pytest.raises(SpecError, match="not a readable tar archive"):
        import_image("junk", str(junk), str(state))
    assert_no_image_and_no_leftovers(state, "junk")


def test_names_duplicates_ls_and_rm(tmp_path: Path, state: Path) -> None:
    tar = make_tar(tmp_path / "t.tar", ("dir", "etc", None), ("file", "etc/hostname", b"h\n"))
    for bad in ("Upper", "a/b", "a:b", "", ".hidden"):
        with pytest.raises(SpecError, match="invalid image name"):
            import_image(bad, str(tar), str(state))
    import_image("one", str(tar), str(state))
    import_image("two", str(tar), str(state))
    with pytest.raises(SpecError, match="already exists"):
        import_image("one", str(tar), str(state))
    assert [(i.name, i.size) for i in list_images(str(state))] == [("one", 2), ("two", 2)]
    assert image_rootfs("one", str(state)) == str(state / "images" / "one" / "rootfs")
    remove_image("one", str(state))
    assert [i.name for i in list_images(str(state))] == ["two"]
    with pytest.raises(SpecError, match="no such image"):
        remove_image("one", str(state))


# ------------------------------------------------------------------ the CLI (root)


@pytest.mark.root
def test_cli_import_ls_run_rm(busybox_tar: Path, state: Path) -> None:
    sd = ["--state-dir", str(state)]
    res = run_cli("image", *sd, "import", "busybox", str(busybox_tar))
    assert (res.returncode, res.stdout) == (0, b"busybox\n"), res.stderr
    res = run_cli("image", *sd, "ls")
    assert res.stdout.decode().split("\n")[1].split()[0] == "busybox"
    res = run_cli("run", *sd, "--image", "busybox", "sh", "-c", "echo hi > /f; cat /f /etc/hostname")
    assert (res.returncode, res.stdout) == (0, b"hi\nmydocker-busybox\n"), res.stderr
    assert os.listdir(state / "containers") == []
    assert not (state / "images" / "busybox" / "rootfs" / "f").exists()
    res = run_cli("image", *sd, "rm", "busybox")
    assert res.returncode == 0, res.stderr
    res = run_cli("run", *sd, "--image", "busybox", "true")
    assert res.returncode == 125 and b"no such image" in res.stderr


@pytest.mark.root
def test_cli_import_from_stdin_and_hostile_tarball(tmp_path: Path, state: Path) -> None:
    sd = ["--state-dir", str(state)]
    good = make_tar(tmp_path / "good.tar", ("file", "x", b"1"))
    res = run_cli("image", *sd, "import", "fromstdin", "-", input=good.read_bytes())
    assert res.returncode == 0, res.stderr
    evil = make_tar(tmp_path / "evil.tar", ("file", "../x", b"1"))
    res = run_cli("image", *sd, "import", "evil", str(evil))
    assert res.returncode == 125
    err = res.stderr.decode()
    assert err.count("\n") == 1 and "outside the image" in err
    assert_no_image_and_no_leftovers(state, "evil")


@pytest.mark.root
async def test_an_image_in_use_cannot_be_removed(anyio_backend: str, busybox_tar: Path, state: Path) -> None:
    import_image("bb", str(busybox_tar), str(state))
    async with await open_container(["cat"], image="bb", state_dir=str(state)) as c:
        assert c.spec.rootfs == image_rootfs("bb", str(state))
        with pytest.raises(SpecError, match="in use"):
            remove_image("bb", str(state))
        assert c.stdin is not None
        await c.stdin.aclose()
        assert await c.wait() == 0
    remove_image("bb", str(state))
    assert list_images(str(state)) == []


# ------------------------------------------------------------------ archives built by hand


def tar_bytes(
    *members: tarfile.TarInfo | tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    """An archive of members, each a TarInfo (no data) or (TarInfo, data)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for m in members:
            ti, data = m if isinstance(m, tuple) else (m, None)
            if data is not None:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def info(
    name: str, kind: bytes = tarfile.REGTYPE, pax: dict[str, str] | None = None, **attrs: object
) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mtime, ti.mode = kind, 1_700_000_000, 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(ti, key, value)
    if pax:
        ti.pax_headers = pax
    return ti


def raw_header(ti: tarfile.TarInfo, fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """One header block as tarfile writes it, whatever values the TarInfo holds
    (base-256 numbers in GNU format; tarfile checks nothing when it encodes)."""
    return ti.tobuf(fmt, "utf-8", "surrogateescape")


END = b"\0" * 1024
MiB = 1 << 20


def assert_refused(tar: bytes, state: Path, match: str, **kw: object) -> None:
    with pytest.raises(SpecError, match=match):
        import_image("evil", io.BytesIO(tar), str(state), **kw)  # type: ignore[arg-type]
    assert_no_image_and_no_leftovers(state, "evil")
    assert os.listdir(state / "images") == []


# ------------------------------------------------------------------ malformed headers (no root needed)


SYM, LNK, DIR, CHR = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.CHRTYPE

MALFORMED: dict[str, tuple[bytes, str]] = {
    "NUL in path": (tar_bytes((info("f", pax={"path": "a\0b"}), b"x")), "NUL byte in its name"),
    "NUL in a symlink's linkpath": (
        tar_bytes(info("s", SYM, {"linkpath": "/x\0y"})),
        "NUL byte in its link target",
    ),
    "NUL in a hard link's linkpath": (
        tar_bytes((info("f"), b"x"), info("h", LNK, {"linkpath": "f\0"})),
        "NUL byte in its link target",
    ),
    "mtime=1e300": (tar_bytes((info("f", pax={"mtime": "1e300"}), b"x")), "impossible modification time"),
    "mtime=nan": (tar_bytes((info("f", pax={"mtime": "nan"}), b"x")), "impossible modification time"),
    "mtime=-inf": (tar_bytes((info("f", pax={"mtime": "-inf"}), b"x")), "impossible modification time"),
    "mtime=2**80 base-256": (raw_header(info("f", mtime=2**80)) + END, "impossible modification time"),
    "uid=2**40": (tar_bytes((info("f", pax={"uid": str(2**40)}), b"x")), "not a 32-bit id"),
    "uid=(uid_t)-1": (tar_bytes((info("f", pax={"uid": str(2**32 - 1)}), b"x")), "not a 32-bit id"),
    "gid=-5": (tar_bytes((info("f", pax={"gid": "-5"}), b"x")), "not a 32-bit id"),
    "size=-1 pax": (tar_bytes((info("f", pax={"size": "-1"}), b"")), "negative size"),
    "size=-1 base-256": (raw_header(info("f", size=-1)) + END, "negative size"),
    "size=10**20": (tar_bytes((info("f", pax={"size": str(10**20)}), b"x")), "add up to more than"),
    "GNU.sparse.size=zz": (tar_bytes((info("f", pax={"GNU.sparse.size": "zz"}), b"x")), "not a readable tar"),
    "GNU.sparse.map=a,b": (tar_bytes((info("f", pax={"GNU.sparse.map": "a,b"}), b"x")), "not a readable tar"),
    "path of only slashes": (tar_bytes((info("f", pax={"path": "///"}), b"x")), "names the image root"),
    "a file named .": (tar_bytes((info("."), b"x")), "names the image root"),
    "a symlink named ./": (tar_bytes(info("./", SYM, linkname="/etc")), "names the image root"),
    "a name past PATH_MAX": (tar_bytes((info("f", pax={"path": "d/" * 2500 + "f"}), b"x")), "PATH_MAX"),
    "a 300-byte component": (tar_bytes((info("a" * 300), b"x")), "File name too long"),
    "a symlink to nothing": (tar_bytes(info("s", SYM, linkname="")), "empty target"),
    "a hard link to itself": (tar_bytes((info("a"), b"x"), info("a", LNK, linkname="a")), "to itself"),
    "a hard link to a directory": (tar_bytes(info("d", DIR), info("h", LNK, linkname="d")), "to directory"),
    "a directory, then a file of its name": (
        tar_bytes(info("d", DIR), (info("d/f"), b"x"), (info("d"), b"x")),
        "replace a directory",
    ),
    "a header that is not one": (b"\xff" * 512 + END, "not a readable tar"),
    "a file cut short": (tar_bytes((info("f"), b"x" * 5000))[:2048], "ends inside member|not a readable"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_headers_are_refused_in_one_line(state: Path, case: str) -> None:
    tar, match = MALFORMED[case]
    assert_refused(tar, state, match)


@pytest.mark.parametrize("major", [2**40, 5000, -1])
def test_device_numbers_beyond_linux_are_refused(state: Path, major: int) -> None:
    """GNU base-256 numbers: mknod would fold them into a different device."""
    tar = raw_header(info("dev", CHR, devmajor=major, devminor=1)) + END
    assert_refused(tar, state, "beyond Linux", allow_devices=True)
    # skipped, as every device is by default: nothing to refuse
    assert import_image("skip", io.BytesIO(tar), str(state)).skipped == 1


def test_names_that_are_not_utf8_are_kept_as_bytes(state: Path) -> None:
    latin1 = tarfile.TarInfo("caf\xe9")  # written as the raw byte 0xe9
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        tf.addfile(latin1, io.BytesIO(b""))
    pax = tar_bytes(info("x", SYM, {"path": "caf\udcff"}, linkname="caf\udce9"))
    img = import_image("latin", io.BytesIO(tar.getvalue()), str(state))
    assert os.listdir(os.fsencode(img.rootfs)) == [b"caf\xe9"]
    img = import_image("pax", io.BytesIO(pax), str(state))
    assert os.readlink(os.fsencode(img.rootfs) + b"/caf\xff") == b"caf\xe9"


def test_a_hard_link_to_a_skipped_device_is_skipped_too(state: Path) -> None:
    tar = tar_bytes(info("null", CHR, devmajor=1, devminor=3), info("null2", LNK, linkname="null"))
    img = import_image("dev", io.BytesIO(tar), str(state))
    assert img.skipped == 2 and os.listdir(img.rootfs) == []


# ------------------------------------------------------------------ cli: one line, exit 125


@pytest.mark.parametrize(
    ("case", "flags"),
    [
        ("NUL in path", ()),
        ("mtime=nan", ()),
        ("uid=2**40", ()),
        ("GNU.sparse.map=a,b", ()),
        ("a hard link to itself", ()),
        ("device", ("--allow-devices",)),
    ],
)
def test_cli_refuses_a_malformed_archive_in_one_line(state: Path, case: str, flags: tuple[str, ...]) -> None:
    if case == "device":
        tar = raw_header(info("dev", CHR, devmajor=2**40, devminor=1)) + END
    else:
        tar = MALFORMED[case][0]
    res = run_cli("image", "--state-dir", str(state), "import", *flags, "evil", "-", input=tar)
    err = res.stderr.decode()
    assert res.returncode == 125 and err.startswith("mydocker: ") and err.count("\n") == 1, err
    assert os.listdir(state / "images") == []


# ------------------------------------------------------------------ sparse members and limits


def sparse_10(name: str, realsize: int, segments: list[tuple[int, bytes]], text: str | None = None) -> bytes:
    """A member in GNU tar's pax sparse format 1.0 (the map at the start of its
    data), with the map ``text`` given or made from ``segments``."""
    if text is None:
        text = f"{len(segments)}\n" + "".join(f"{off}\n{len(data)}\n" for off, data in segments)
    mapblock = text.encode().ljust(-(-len(text) // 512) * 512, b"\0")
    pax = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(realsize),
    }
    return tar_bytes((info(f"GNUSparseFile.0/{name}", pax=pax), mapblock + b"".join(d for _, d in segments)))


def sparse_01(name: str, realsize: int, segments: list[tuple[int, int]], data: bytes) -> bytes:
    """A member in pax sparse format 0.1: the map in a pax record."""
    pax = {
        "GNU.sparse.size": str(realsize),
        "GNU.sparse.map": ",".join(f"{o},{n}" for o, n in segments),
    }
    return tar_bytes((info(name, pax=pax), data))


def sparse_gnu(name: str, realsize: int, segments: list[tuple[int, bytes]]) -> bytes:
    """A member in the old GNU sparse format (type S, the map in the header block)."""
    data = b"".join(d for _, d in segments)
    block = bytearray(raw_header(info(name, tarfile.GNUTYPE_SPARSE, size=len(data))))
    for i, (off, d) in enumerate(segments[:4]):
        block[386 + 24 * i : 398 + 24 * i] = tarfile.itn(off, 12, tarfile.GNU_FORMAT)
        block[398 + 24 * i : 410 + 24 * i] = tarfile.itn(len(d), 12, tarfile.GNU_FORMAT)
    block[483:495] = tarfile.itn(realsize, 12, tarfile.GNU_FORMAT)
    chksum = 256 + sum(block[:148]) + sum(block[156:])
    block[148:156] = b"%06o\0 " % chksum
    return bytes(block) + data.ljust(-(-len(data) // 512) * 512, b"\0") + END


SEGMENTS = [(0, b"A" * 4096), (200_000_000, b"B" * 4096)]


def assert_sparse(path: Path, size: int, segments: list[tuple[int, bytes]]) -> None:
    st = os.stat(path)
    assert st.st_size == size
    assert st.st_blocks * 512 < MiB, f"{st.st_blocks * 512} bytes on disk: written whole"
    with open(path, "rb") as f:
        for off, data in segments:
            f.seek(off)
            assert f.read(len(data)) == data
        f.seek(100_000_000)
        assert f.read(16) == b"\0" * 16


@pytest.mark.parametrize("fmt", ["pax 1.0", "pax 0.1", "old gnu"])
def test_sparse_members_stay_sparse(state: Path, fmt: str) -> None:
    size = 256 * MiB
    if fmt == "pax 1.0":
        tar = sparse_10("big", size, SEGMENTS)
    elif fmt == "pax 0.1":
        tar = sparse_01("big", size, [(o, len(d)) for o, d in SEGMENTS], b"".join(d for _, d in SEGMENTS))
    else:
        tar = sparse_gnu("big", size, SEGMENTS)
    assert len(tar) <= 24_000  # 8 KiB of data, headers, padding to 10 KiB records
    img = import_image("sparse", io.BytesIO(tar), str(state))
    assert_sparse(Path(img.rootfs) / "big", size, SEGMENTS)
    assert img.size == size  # the apparent size


@pytest.mark.skipif(not shutil.which("tar"), reason="needs GNU tar")
@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_sparse_files_from_gnu_tar_stay_sparse(tmp_path: Path, state: Path, fmt: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big", "wb") as f:
        for off, data in SEGMENTS:
            f.seek(off)
            f.write(data)
        f.truncate(256 * MiB)
    tar = tmp_path / "t.tar"
    subprocess.run(["tar", "-S", f"--format={fmt}", "-cf", str(tar), "-C", str(src), "big"], check=True)
    img = import_image("sparse", str(tar), str(state))
    assert_sparse(Path(img.rootfs) / "big", 256 * MiB, SEGMENTS)


@pytest.mark.parametrize(
    ("segments", "realsize", "data"),
    [
        ([(0, 100), (50, 100)], 500, b"x" * 200),  # overlapping
        ([(400, 10), (0, 10)], 500, b"x" * 20),  # out of order
        ([(0, 100), (450, 100)], 500, b"x" * 200),  # past the end
        ([(0, 5000)], 10_000, b"x" * 100),  # more data than stored
    ],
)
def test_malformed_sparse_maps_are_refused(
    state: Path, segments: list[tuple[int, int]], realsize: int, data: bytes
) -> None:
    assert_refused(sparse_01("f", realsize, segments, data), state, "sparse map")


@pytest.mark.parametrize("text", ["x\n", "1\n0\n", "1\n-5\n10\n"])
def test_a_sparse_map_that_is_not_numbers_is_refused(state: Path, text: str) -> None:
    """tarfile parses the 1.0 map with int(): junk, a map cut short, a negative offset."""
    tar = sparse_10("f", 123, [(0, b"x" * 10)], text=text)
    assert_refused(tar, state, "not a readable tar|sparse map")


def test_a_sparse_file_counts_at_its_apparent_size(state: Path) -> None:
    tar = sparse_10("huge", 1 << 40, [(0, b"x" * 512), ((1 << 40) - 512, b"y" * 512)])
    assert_refused(tar, state, r"add up to more than 10 GiB")
    assert_refused(sparse_10("f", 64 * MiB, SEGMENTS[:1]), state, "more than 32 MiB", max_size=32 * MiB)


class Endless:
    """An endless tar stream of generated members; counts what was read of it."""

    def __init__(self, member: Callable[[int], bytes]) -> None:
        self.member, self.i, self.buf, self.consumed = member, 0, b"", 0

    def read(self, n: int = -1) -> bytes:
        while len(self.buf) < n:
            self.buf += self.member(self.i)
            self.i += 1
        out, self.buf = self.buf[:n], self.buf[n:]
        self.consumed += len(out)
        return out


def test_the_size_limit_stops_an_endless_stream(state: Path) -> None:
    def one_mib_file(i: int) -> bytes:
        return raw_header(info(f"f{i}", size=MiB)) + b"\0" * MiB

    stream = Endless(one_mib_file)
    with pytest.raises(SpecError, match="more than 8 MiB"):
        import_image("evil", stream, str(state), max_size=8 * MiB)  # type: ignore[arg-type]
    assert stream.consumed < 10 * MiB
    assert os.listdir(state / "images") == []


def test_the_member_limit_stops_a_stream_of_empty_files(state: Path) -> None:
    stream = Endless(lambda i: raw_header(info(f"f{i}")))
    with pytest.raises(SpecError, match="more than 1000 members"):
        import_image("evil", stream, str(state), max_members=1000)  # type: ignore[arg-type]
    assert stream.consumed < 1002 * 512 + 2 * tarfile.RECORDSIZE
    assert os.listdir(state / "images") == []


def test_a_huge_pax_header_is_refused_before_it_is_read_whole(state: Path) -> None:
    """tarfile reads a member's headers into memory whole: 256 MiB of pax records
    would be held at once."""
    header = raw_header(info("././@PaxHeader", tarfile.XHDTYPE, size=256 * MiB), tarfile.USTAR_FORMAT)
    stream = Endless(lambda i: header if i == 0 else b"a" * MiB)
    with pytest.raises(SpecError, match="headers of member 1 exceed 1 MiB"):
        import_image("evil", stream, str(state))  # type: ignore[arg-type]
    assert stream.consumed < 3 * MiB


def test_headers_may_average_4k_a_member(state: Path) -> None:
    def member(comment: int) -> Callable[[int], bytes]:
        """An empty file with a pax comment record of ``comment`` bytes."""
        return lambda i: raw_header(info(f"f{i}", pax={"comment": "c" * comment}), tarfile.PAX_FORMAT)

    assert len(member(1000)(0)) == 2048  # pax header, its records, the member's header
    fine = b"".join(member(1000)(i) for i in range(2000)) + END
    img = import_image("ok", io.BytesIO(fine), str(state))
    assert len(os.listdir(img.rootfs)) == 2000
    stream = Endless(member(60_000))  # each member's headers well under 1 MiB
    with pytest.raises(SpecError, match="headers take"):
        import_image("evil", stream, str(state))  # type: ignore[arg-type]
    assert 10 < stream.i and stream.consumed < 4 * MiB


def test_limits_must_be_positive(tmp_path: Path, state: Path) -> None:
    tar = make_tar(tmp_path / "t.tar", ("file", "x", b"1"))
    for kw in ({"max_size": 0}, {"max_members": -1}):
        with pytest.raises(SpecError, match="must be positive"):
            import_image("x", str(tar), str(state), **kw)  # type: ignore[arg-type]


def test_cli_max_size_and_max_members(tmp_path: Path, state: Path) -> None:
    sd = ["image", "--state-dir", str(state), "import"]
    tar = make_tar(tmp_path / "t.tar", ("file", "a", b"x" * 3000), ("file", "b", b""))
    res = run_cli(*sd, "--max-size", "2k", "big", str(tar))
    assert res.returncode == 125 and b"more than 2 KiB" in res.stderr and res.stderr.count(b"\n") == 1
    res = run_cli(*sd, "--max-members", "1", "many", str(tar))
    assert res.returncode == 125 and b"more than 1 members" in res.stderr
    for bad in (("--max-size", "12q"), ("--max-size", "0"), ("--max-members", "0")):
        res = run_cli(*sd, *bad, "bad", str(tar))
        assert res.returncode == 125 and res.stderr.count(b"\n") == 1, res.stderr
    res = run_cli(*sd, "--max-size", "3k", "--max-members", "2", "fits", str(tar))
    assert res.returncode == 0, res.stderr
    assert os.listdir(state / "images") == ["fits"]


# ------------------------------------------------------------------ formats and odd inputs


@pytest.mark.parametrize("compress", ["gzip", "bzip2", "xz"])
def test_compressed_tarballs_from_a_file_and_from_stdin(tmp_path: Path, state: Path, compress: str) -> None:
    import bz2
    import gzip
    import lzma

    plain = make_tar(tmp_path / "t.tar", ("dir", "etc", None), ("file", "etc/hostname", b"h\n")).read_bytes()
    packed = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}[compress](plain)
    (tmp_path / "t.tar.z").write_bytes(packed)
    img = import_image("file", str(tmp_path / "t.tar.z"), str(state))
    assert (Path(img.rootfs) / "etc/hostname").read_bytes() == b"h\n"
    res = run_cli("image", "--state-dir", str(state), "import", "stdin", "-", input=packed)
    assert res.returncode == 0, res.stderr
    assert (Path(image_rootfs("stdin", str(state))) / "etc/hostname").read_bytes() == b"h\n"
    # cut short: the decompressor's complaint, as one line
    res = run_cli("image", "--state-dir", str(state), "import", "cut", "-", input=packed[: len(packed) // 2])
    assert res.returncode == 125 and res.stderr.count(b"\n") == 1, res.stderr
    assert sorted(os.listdir(state / "images")) == ["file", "stdin"]


def cut_archive(how: str) -> bytes:
    whole = tar_bytes(*((info(n), b"xyz") for n in "abc"), fmt=tarfile.USTAR_FORMAT)
    if how == "at a header":
        return whole[:2048]  # a and b whole, no end-of-archive block
    if how == "inside a header":
        return whole[:1100]
    if how == "corrupt header":
        return whole[:1034] + bytes([whole[1034] ^ 0xFF]) + whole[1035:]
    import lzma

    packed = lzma.compress(tar_bytes((info("etc", DIR), None), (info("etc/hostname"), b"h\n")))
    return packed[: len(packed) // 2]


@pytest.mark.parametrize("how", ["at a header", "inside a header", "corrupt header", "xz"])
def test_a_cut_archive_is_refused_not_imported_in_part(state: Path, how: str) -> None:
    """tarfile (and GNU tar) end an archive quietly where a header is missing."""
    assert_refused(cut_archive(how), state, "cut short|corrupt|ended before")


def test_empty_input_is_refused_an_empty_archive_is_an_empty_image(state: Path) -> None:
    assert_refused(b"", state, "empty file")
    img = import_image("empty", io.BytesIO(b"\0" * tarfile.RECORDSIZE), str(state))
    assert os.listdir(img.rootfs) == []


def test_deep_trees_import_and_clean_up(state: Path) -> None:
    """2000 nested directories (the most PATH_MAX allows): a refused import and an
    image rm remove them (shutil.rmtree recursed once per level)."""
    deep = "d/" * 2000 + "f"
    assert_refused(tar_bytes((info(deep), b"x"), (info("../x"), b"x")), state, "outside the image")
    img = import_image("deep", io.BytesIO(tar_bytes((info(deep), b"x"))), str(state))
    assert img.size == 1 and (Path(img.rootfs) / "d" / "d").is_dir()
    remove_image("deep", str(state))
    assert os.listdir(state / "images") == []


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_an_images_dir_that_is_not_a_directory(tmp_path: Path, state: Path, kind: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x").mkdir()
    state.mkdir()
    if kind == "symlink":
        (state / "images").symlink_to(elsewhere)
    else:
        (state / "images").write_text("")
    tar = make_tar(tmp_path / "t.tar", ("file", "a", b"1"))
    for args in (("import", "x", str(tar)), ("rm", "x"), ("ls",)):
        res = run_cli("image", "--state-dir", str(state), *args)
        err = res.stderr.decode()
        assert res.returncode == 125 and err.count("\n") == 1, (args, err)
        assert "symlink" in err if kind == "symlink" else "not a directory" in err
    assert os.listdir(elsewhere) == ["x"]
    with pytest.raises(SpecError, match=kind if kind == "symlink" else "not a directory"):
        image_rootfs("x", str(state))


def test_an_image_entry_that_is_a_symlink_is_not_removed_through(tmp_path: Path, state: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "rootfs").mkdir(parents=True)
    tar = make_tar(tmp_path / "t.tar", ("file", "a", b"1"))
    import_image("real", str(tar), str(state))
    (state / "images" / "fake").symlink_to(elsewhere)
    with pytest.raises(SpecError, match="not an image"):
        remove_image("fake", str(state))
    assert os.listdir(elsewhere) == ["rootfs"]
    assert [i.name for i in list_images(str(state))] == ["real"]


# ------------------------------------------------------------------ sweeping interrupted imports and removals


def leftover(images: Path, name: str) -> Path:
    """A work directory as a dead import or removal leaves it."""
    d = images / name
    (d / "rootfs" / "etc").mkdir(parents=True)
    (d / "rootfs" / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\n")
    (d / "rootfs" / "bin").symlink_to("/bin")
    return d


@pytest.mark.parametrize("op", ["ls", "import", "rm"])
def test_dead_work_directories_are_swept(tmp_path: Path, state: Path, op: str) -> None:
    tar = make_tar(tmp_path / "t.tar", ("file", "a", b"1"))
    import_image("keep", str(tar), str(state))
    images = state / "images"
    outside = tmp_path / "outside"
    (outside / "rootfs").mkdir(parents=True)
    (outside / "rootfs" / "precious").write_text("host data")
    dead = [leftover(images, ".import-a-0123"), leftover(images, ".rm-b-4567")]
    (dead[1] / "rootfs" / "up").symlink_to(outside)  # removed as a link, never followed
    fd = os.open(dead[1] / "rootfs", os.O_RDONLY)
    for _ in range(1500):  # deeper than shutil.rmtree and Path.mkdir(parents=True) recurse
        os.mkdir("d", dir_fd=fd)
        fd, up = os.open("d", os.O_RDONLY, dir_fd=fd), fd
        os.close(up)
    os.close(fd)
    live = [leftover(images, ".import-c-89ab"), leftover(images, ".rm-d-cdef")]
    (images / ".import-evil-1").symlink_to(outside)  # not ours: left alone
    (images / ".rm-evil-2").symlink_to(outside / "rootfs")
    (images / ".rm-file").write_text("not ours either")
    locks = [os.open(d, os.O_RDONLY | os.O_DIRECTORY) for d in live]
    try:
        for fd in locks:
            fcntl.flock(fd, fcntl.LOCK_EX)  # as a live import or removal holds it
        if op == "ls":
            assert [i.name for i in list_images(str(state))] == ["keep"]
        elif op == "import":
            import_image("new", str(tar), str(state))
        else:
            remove_image("keep", str(state))
        assert not any(d.exists() for d in dead)
        assert all((d / "rootfs" / "etc" / "passwd").exists() for d in live)
        assert (outside / "rootfs" / "precious").read_text() == "host data"
        assert {".import-evil-1", ".rm-evil-2", ".rm-file"} <= set(os.listdir(images))
    finally:
        for fd in locks:
            os.close(fd)
    assert sorted(sweep_images(str(state))) == [".import-c-89ab", ".rm-d-cdef"]
    assert sweep_images(str(state)) == []


def test_a_killed_import_is_swept_a_live_one_is_not(state: Path) -> None:
    """The importer is SIGKILLed in the middle of a member: its flock dies with it."""
    head = raw_header(info("first", size=1), tarfile.USTAR_FORMAT) + b"1".ljust(512, b"\0")
    # enough for tarfile's first 10 KiB record, and then some of big's data
    head += raw_header(info("big", size=MiB), tarfile.USTAR_FORMAT) + b"x" * (64 << 10)
    proc = subprocess.Popen(
        [*mydocker_cmd(), "image", "--state-dir", str(state), "import", "slow", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(head)
        proc.stdin.flush()
        images = state / "images"
        deadline = time.monotonic() + 30
        while not list(images.glob(".import-slow-*/rootfs/big")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        (work,) = images.glob(".import-slow-*")
        assert sweep_images(str(state)) == [] and list_images(str(state)) == []
        assert (work / "rootfs" / "first").exists()
    finally:
        proc.kill()
        proc.wait()
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()  # type: ignore[union-attr]
    assert list_images(str(state)) == [] and os.listdir(images) == []
