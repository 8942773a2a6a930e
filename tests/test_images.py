"""Images: import (safe extraction of hostile tarballs), ls, rm, and run --image."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor import SpecError, open_container
from supervisor.images import UnsafeArchiveError, image_rootfs, import_image, list_images, remove_image

from . import busybox as bb
from .conftest import run_cli

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
