"""Container filesystems: overlay root + pivot_root, /dev, /proc and /sys, volumes,
tmpfs, the state directory, and bad input. Root tests use a real busybox rootfs;
conftest's ``host_unchanged`` checks the host's mount table around every test."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import ContainerSpec, SpecError, StartError, open_container, run_container
from supervisor import rootfs as rfs
from supervisor.spec import Mount
from supervisor.state import STATE_DIR_ENV

from . import busybox as bb
from .busybox import snapshot
from .conftest import mydocker_cmd, run_cli

pytestmark = pytest.mark.anyio

# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="session")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox root filesystem directory (the tests never modify it)."""
    return bb.build(tmp_path_factory)[0]


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """A fresh state directory; after the test no container directory may remain."""
    sdir = tmp_path / "state"
    yield sdir
    leftovers = os.listdir(sdir / "containers") if (sdir / "containers").exists() else []
    assert leftovers == [], f"container directories left behind: {leftovers}"


def run_in(
    state: Path, rootfs: Path, script: str, *opts: str, **kw: object
) -> subprocess.CompletedProcess[bytes]:
    """``mydocker run --state-dir STATE --rootfs ROOTFS [OPTS] sh -c SCRIPT``."""
    return run_cli("run", "--state-dir", str(state), "--rootfs", str(rootfs), *opts, "sh", "-c", script, **kw)


def out(res: subprocess.CompletedProcess[bytes]) -> str:
    return res.stdout.decode()


def one_line_error(res: subprocess.CompletedProcess[bytes]) -> str:
    err = res.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("mydocker: "), err
    assert "Traceback" not in err
    return err


# ------------------------------------------------------------------ pure units (no root)


@pytest.mark.parametrize(
    ("text", "mount"),
    [
        ("/h:/c", Mount("/c", "/h")),
        ("/h:/c:ro", Mount("/c", "/h", read_only=True)),
        ("/h:/c:rw", Mount("/c", "/h")),
    ],
)
def test_parse_volume(text: str, mount: Mount) -> None:
    assert Mount.parse_volume(text) == mount


@pytest.mark.parametrize("text", ["/h", "/h:/c:rx", ":/c", "/h:", "a:b:c:d"])
def test_parse_volume_refuses(text: str) -> None:
    with pytest.raises(SpecError):
        Mount.parse_volume(text)


def test_parse_tmpfs() -> None:
    assert Mount.parse_tmpfs("/t") == Mount("/t", type="tmpfs")
    assert Mount.parse_tmpfs("/t:ro,size=1m") == Mount("/t", type="tmpfs", read_only=True, options="size=1m")
    with pytest.raises(SpecError, match="invalid --tmpfs option 'bogus'"):
        Mount.parse_tmpfs("/t:bogus")
    # docker's defaults: noexec, nosuid, nodev (MS_* 8, 2, 4), each can be undone
    assert Mount.parse_tmpfs("/t").tmpfs_flags() == (8 | 2 | 4, "mode=1777")
    assert Mount.parse_tmpfs("/t:exec,ro,size=1m").tmpfs_flags() == (2 | 4 | 1, "size=1m,mode=1777")
    assert Mount.parse_tmpfs("/t:suid,dev,mode=700").tmpfs_flags() == (8, "mode=700")


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"rootfs": "/r", "mounts": (Mount("rel", "/h"),)}, "must be absolute"),
        ({"rootfs": "/r", "mounts": (Mount("/", "/h"),)}, "root"),
        ({"rootfs": "/r", "mounts": (Mount("//x/..", "/h"),)}, "root"),
        ({"rootfs": "/r", "mounts": (Mount("/c", "rel"),)}, "host path"),
        ({"mounts": (Mount("/c", "/h"),)}, "need --rootfs"),
        ({"read_only": True}, "need --rootfs"),
        ({"rootfs": "relative"}, "absolute"),
        ({"rootfs": "/r", "namespaces": {"pid"}}, "mount namespace"),
    ],
)
def test_spec_validation(kw: dict[str, object], words: str) -> None:
    with pytest.raises(SpecError, match=words):
        ContainerSpec(command=("sh",), **kw)  # type: ignore[arg-type]


def test_host_side_checks_create_nothing(tmp_path: Path) -> None:
    sdir = tmp_path / "state"
    afile = tmp_path / "file"
    afile.write_text("x")
    (tmp_path / "r").mkdir()
    cases = [
        (ContainerSpec(("sh",), rootfs=str(tmp_path / "missing"), state_dir=str(sdir)), "does not exist"),
        (ContainerSpec(("sh",), rootfs=str(afile), state_dir=str(sdir)), "not a directory"),
        (
            ContainerSpec(
                ("sh",), rootfs=str(tmp_path / "r"), state_dir=str(sdir), mounts=(Mount("/c", "/no/such"),)
            ),
            "volume host path does not exist",
        ),
        (ContainerSpec(("sh",), image="nosuch", state_dir=str(sdir)), "no such image"),
        (ContainerSpec(("sh",), rootfs="/", state_dir=str(sdir)), "inside the root filesystem"),
        (ContainerSpec(("sh",), rootfs=str(tmp_path), state_dir=str(sdir)), "inside the root filesystem"),
        (
            ContainerSpec(("sh",), rootfs=str(afile.parent / "r"), state_dir=str(tmp_path / "a,b")),
            "cannot contain",
        ),
    ]
    for spec, words in cases:
        with pytest.raises(SpecError, match=words):
            rfs.resolve(spec)
    assert not sdir.exists()


# ------------------------------------------------------------------ root: the CLI with busybox


@pytest.mark.root
def test_ls_shows_the_image_not_the_host(busybox: Path, state: Path) -> None:
    res = run_in(state, busybox, "ls -a /")
    assert res.returncode == 0, res.stderr
    assert set(out(res).split()) == {".", ".."} | set(os.listdir(busybox))
    assert "work" not in out(res).split()  # a host directory


@pytest.mark.root
def test_writes_go_to_the_containers_layer_and_vanish(busybox: Path, state: Path) -> None:
    before = snapshot(busybox)
    res = run_in(
        state,
        busybox,
        "echo new > /newfile && echo more >> /etc/passwd && rm /bin/ls && mkdir /d && cat /newfile",
    )
    assert (res.returncode, out(res)) == (0, "new\n"), res.stderr
    assert snapshot(busybox) == before
    # each container starts from the image again
    res = run_in(state, busybox, "ls /newfile /bin/ls; tail -n1 /etc/passwd")
    assert "/bin/ls" in out(res) and "more" not in out(res)
    assert "No such file" in res.stderr.decode()


@pytest.mark.root
def test_read_only_root(busybox: Path, state: Path) -> None:
    res = run_in(
        state,
        busybox,
        "touch /x; echo rc=$?; touch /tmpfs/x && echo tmpfs-ok",
        "--read-only",
        "--tmpfs",
        "/tmpfs",
    )
    assert "Read-only file system" in res.stderr.decode()
    assert "rc=1" in out(res) and "tmpfs-ok" in out(res)


@pytest.mark.root
def test_volumes_ro_rw_and_file(busybox: Path, state: Path, tmp_path: Path) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "hello").write_text("from host\n")
    afile = tmp_path / "afile"
    afile.write_text("file volume\n")
    before = snapshot(busybox)
    res = run_in(
        state,
        busybox,
        "cat /ro/hello; echo x > /ro/new; echo rc=$?; echo written > /deep/rw/out; cat /etc/afile",
        "-v", f"{ro}:/ro:ro", "-v", f"{rw}:/deep/rw", "-v", f"{afile}:/etc/afile:ro",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert out(res) == "from host\nrc=1\nfile volume\n"
    assert "Read-only file system" in res.stderr.decode()
    assert sorted(os.listdir(ro)) == ["hello"]
    assert (rw / "out").read_text() == "written\n"
    # /deep was created in the container's layer, not in the image
    assert snapshot(busybox) == before


@pytest.mark.root
def test_ro_volume_is_read_only_recursively(busybox: Path, state: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    # The submount lives in a mount namespace of the test's own (unshare), so the
    # host's mount table never changes, even for a moment (other suites may run).
    mydocker = " ".join(shlex.quote(a) for a in mydocker_cmd())
    script = (
        f"mount -t tmpfs tmpfs {shlex.quote(str(src / 'sub'))} && "
        f"touch {shlex.quote(str(src / 'sub/ok'))} && "
        f"{mydocker} run --state-dir {shlex.quote(str(state))} --rootfs {shlex.quote(str(busybox))} "
        f"-v {shlex.quote(str(src))}:/v:ro sh -c 'ls /v/sub; touch /v/sub/x; echo rc=$?'"
    )
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        timeout=60,
    )
    assert out(res) == "ok\nrc=1\n", res.stderr
    assert b"Read-only file system" in res.stderr


@pytest.mark.root
def test_volume_target_through_an_image_symlink_stays_inside(
    busybox: Path, state: Path, tmp_path: Path
) -> None:
    image = tmp_path / "image"
    shutil.copytree(busybox, image, symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (image / "data").symlink_to(str(outside))  # absolute: /…/outside on the host
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "v").write_text("vol\n")
    res = run_in(state, image, "cat /data/sub/v", "-v", f"{vol}:/data/sub")
    assert (res.returncode, out(res)) == (0, "vol\n"), res.stderr
    assert os.listdir(outside) == []


@pytest.mark.root
def test_dev_is_minimal_and_works(busybox: Path, state: Path) -> None:
    script = (
        "ls /dev; echo ---; echo gone > /dev/null && head -c 5 /dev/zero | wc -c; "
        "head -c 8 /dev/urandom | wc -c; echo x > /dev/shm/f && cat /dev/shm/f; ls /dev/pts"
    )
    res = run_in(state, busybox, script)
    assert res.returncode == 0, res.stderr
    listing, rest = out(res).split("---\n")
    assert set(listing.split()) == {
        "null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm", "mqueue",
        "fd", "stdin", "stdout", "stderr",
    }  # fmt: skip
    assert rest.split() == ["5", "8", "x", "ptmx"]  # a new devpts: none of the host's ptys


@pytest.mark.root
def test_host_block_devices_are_absent(busybox: Path, state: Path) -> None:
    host_disks = [d for d in os.listdir("/dev") if d.startswith(("sd", "vd", "nvme", "loop", "xvd"))]
    res = run_in(state, busybox, "ls /dev /dev/* 2>&1; cat /proc/partitions >/dev/null")
    assert res.returncode == 0, res.stderr
    for d in host_disks:
        assert d not in out(res).split(), d


@pytest.mark.root
def test_proc_and_sys_are_masked_and_read_only(busybox: Path, state: Path) -> None:
    # (kcore is absent on some kernels: either way nothing can be read from it)
    script = (
        "cat /proc/kcore 2>/dev/null | wc -c; cat /proc/keys /proc/timer_list | wc -c; "
        "ls /sys/firmware | wc -l; "
        "echo 1 > /proc/sys/vm/overcommit_memory; echo x > /proc/sys/kernel/hostname; touch /sys/x; "
        "grep -q Pid /proc/self/status && echo proc-ok"
    )
    res = run_in(state, busybox, script)
    assert out(res).split() == ["0", "0", "0", "proc-ok"], res.stderr
    assert res.stderr.decode().count("Read-only file system") == 3, res.stderr
    assert os.path.getsize("/proc/keys") >= 0 and os.path.exists("/proc/timer_list")


@pytest.mark.root
def test_proc_irq_and_bus_are_read_only(busybox: Path, state: Path) -> None:
    res = run_in(state, busybox, "cat /proc/self/mounts; echo 1 > /proc/irq/default_smp_affinity")
    mounts = {}  # mount point -> options of the last (visible) mount there
    for line in out(res).splitlines():
        fields = line.split()
        mounts[fields[1]] = fields[3].split(",")
    for path in ("/proc/irq", "/proc/bus"):
        assert "ro" in mounts.get(path, []), (path, mounts.get(path))
    assert "Read-only file system" in res.stderr.decode(), res.stderr


@pytest.mark.root
def test_tmpfs_options_at_run_time(busybox: Path, state: Path) -> None:
    script = (
        "grep ' /small ' /proc/self/mounts; stat -c %a /small /plain; "
        "head -c 2097152 /dev/zero > /small/f; echo fill=$?; stat -c %s /small/f; "  # 2 MiB into 1
        "cp /bin/busybox /plain/true && /plain/true; echo plain=$?; "
        "cp /bin/busybox /exec/true && /exec/true; echo exec=$?"
    )
    tmpfs = ["--tmpfs", "/small:size=1m,mode=700", "--tmpfs", "/plain", "--tmpfs", "/exec:exec"]
    res = run_in(state, busybox, script, *tmpfs)
    mount, small_mode, plain_mode, fill, filled, *rest = out(res).split("\n")[:-1]
    options = mount.split()[3].split(",")
    assert "size=1024k" in options and "mode=700" in options, mount
    assert (small_mode, plain_mode) == ("700", "1777")  # docker's default mode
    assert fill != "fill=0" and int(filled) <= 1 << 20, (fill, filled)  # the size holds
    assert rest == ["plain=126", "exec=0"], res.stderr  # noexec unless asked for


@pytest.mark.root
def test_state_dir_from_the_environment(busybox: Path, state: Path) -> None:
    res = run_cli(
        "run", "--rootfs", str(busybox), "cat", "/proc/self/mountinfo",
        env={**os.environ, STATE_DIR_ENV: str(state)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"upperdir={state}/containers/" in out(res)


@pytest.mark.orphans
@pytest.mark.root
def test_dirs_of_a_sigkilled_supervisor_are_swept_by_the_next_run(busybox: Path, state: Path) -> None:
    cmd = [*mydocker_cmd(), "run", "--state-dir", str(state), "--rootfs", str(busybox), "sleep", "60"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    containers = state / "containers"
    try:
        for _ in range(500):
            if containers.exists() and any(
                (containers / c / "config.json").exists() for c in os.listdir(containers)
            ):
                break
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    left = os.listdir(containers)
    assert len(left) == 1  # nobody removed it: its supervisor was SIGKILLed
    res = run_in(state, busybox, "ls /")
    assert res.returncode == 0, res.stderr
    # ... and the next run swept it (the `state` fixture checks that nothing remains)


# ------------------------------------------------------------------ root: bad input


@pytest.mark.root
@pytest.mark.parametrize(
    ("opts", "words"),
    [
        (["--rootfs", "/no/such/dir"], "root filesystem does not exist"),
        (["--rootfs", "/etc/passwd"], "not a directory"),
        (["--rootfs", "BUSYBOX", "-v", "/no/such:/x"], "volume host path does not exist"),
        (["--rootfs", "BUSYBOX", "-v", "/tmp:relative"], "must be absolute"),
        (["--rootfs", "BUSYBOX", "--image", "bb"], "not both"),
        (["--image", "nosuch"], "no such image"),
        (["-v", "/tmp:/x"], "need --rootfs"),
    ],
)
def test_bad_input_is_one_line_125_and_creates_nothing(
    busybox: Path, tmp_path: Path, opts: list[str], words: str
) -> None:
    sdir = tmp_path / "never-created"
    opts = [str(busybox) if o == "BUSYBOX" else o for o in opts]
    res = run_cli("run", "--state-dir", str(sdir), *opts, "true")
    assert res.returncode == 125
    assert words in one_line_error(res)
    assert not sdir.exists()


@pytest.mark.root
def test_rootfs_without_the_command_is_127(busybox: Path, state: Path) -> None:
    res = run_cli("run", "--state-dir", str(state), "--rootfs", str(busybox), "bash")
    assert res.returncode == 127
    assert "bash: command not found" in one_line_error(res)


@pytest.mark.root
def test_failure_half_way_through_setup_leaves_nothing(busybox: Path, state: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    # a file over the image's /bin directory: the bind mount fails in the child
    res = run_cli("run", "--state-dir", str(state), "--rootfs", str(busybox), "-v", f"{afile}:/bin", "true")
    assert res.returncode == 125
    assert "mount volume" in one_line_error(res)
    # the `state` fixture checks that no container directory remains


# ------------------------------------------------------------------ root: the API, both backends


@pytest.mark.root
async def test_api_container_dir_exists_while_running_and_goes_after(
    anyio_backend: str, busybox: Path, state: Path
) -> None:
    async with await open_container(
        ["sh", "-c", "read x; echo $x > /f; cat /f"], rootfs=str(busybox), state_dir=str(state)
    ) as c:
        cdir = state / "containers" / c.spec.id
        assert sorted(os.listdir(cdir)) == ["config.json", "lock", "rootfs", "upper", "work"]
        assert c.spec.rootfs == str(busybox) and c.spec.state_dir == str(state)
        assert c.stdin is not None and c.stdout is not None
        await c.stdin.send(b"hello\n")
        data = b""
        async for chunk in c.stdout:
            data += chunk
        assert await c.wait() == 0
        assert data == b"hello\n"
        assert (cdir / "upper" / "f").read_text() == "hello\n"  # the writable layer
    assert not cdir.exists()


@pytest.mark.root
async def test_api_tty_inside_the_rootfs(anyio_backend: str, busybox: Path, state: Path) -> None:
    # the pty is the container's own: /dev/pts/0 of its devpts, sized before the command runs
    async with await open_container(
        ["sh", "-c", "tty; test -t 0 && echo interactive; stty size; ls /dev/pts; tty < /dev/console"],
        tty=True,
        winsize=(31, 97),
        rootfs=str(busybox),
        state_dir=str(state),
    ) as c:
        assert c.stdout is not None
        data = b""
        async for chunk in c.stdout:
            data += chunk
        assert await c.wait() == 0
    lines = data.replace(b"\r", b"").decode().split("\n")
    assert lines[:5] == ["/dev/pts/0", "interactive", "31 97", "0     ptmx", "/dev/console"]


@pytest.mark.root
async def test_api_tty_setup_failure_is_reported(anyio_backend: str, busybox: Path, state: Path) -> None:
    with pytest.raises(StartError, match="mount volume"):
        await open_container(
            ["true"],
            tty=True,
            rootfs=str(busybox),
            state_dir=str(state),
            mounts=(Mount("/bin", "/etc/passwd"),),
        )


@pytest.mark.root
async def test_api_setup_failure_is_a_start_error(anyio_backend: str, busybox: Path, state: Path) -> None:
    with pytest.raises(StartError) as e:
        await run_container(
            ["true"], rootfs=str(busybox), state_dir=str(state), mounts=(Mount("/bin", "/etc/passwd"),)
        )
    assert e.value.step.startswith("mount volume")
    with pytest.raises(SpecError):
        await run_container(["true"], rootfs=str(busybox / "nope"), state_dir=str(state))


@pytest.mark.root
async def test_api_many_containers_share_one_image(anyio_backend: str, busybox: Path, state: Path) -> None:
    import anyio

    results: dict[int, bytes] = {}

    async def one(i: int) -> None:
        r = await run_container(
            ["sh", "-c", f"echo {i} > /id; sleep 0.05; cat /id"], rootfs=str(busybox), state_dir=str(state)
        )
        results[i] = r.stdout or b""

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(one, i)
    assert results == {i: f"{i}\n".encode() for i in range(6)}
    assert not (busybox / "id").exists()


# ------------------------------------------------------------------ root: a terminal (pexpect)


@pytest.mark.root
def test_ti_works_inside_the_rootfs(busybox: Path, state: Path) -> None:
    pexpect = pytest.importorskip("pexpect", reason="pexpect is needed for the terminal tests")
    exe, *rest = mydocker_cmd()
    child = pexpect.spawn(
        exe,
        [*rest, "run", "-ti", "--state-dir", str(state), "--rootfs", str(busybox), "-e", "PS1=ctr> ", "sh"],
        env={**os.environ, "TERM": "xterm"},
        timeout=30,
    )
    try:
        child.expect("ctr> ")
        child.sendline("echo $((6*7)); stty size")
        child.expect("42")
        child.expect("24 80")
        child.expect("ctr> ")
        child.sendline("tty")
        child.expect("/dev/pts/0")
        child.expect("ctr> ")
        child.setwinsize(40, 120)  # SIGWINCH: mydocker resizes the container's own pty
        for _ in range(50):
            child.sendline("stty size")
            if child.expect(["40 120", "24 80"]) == 0:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the container's pty was never resized")
        child.expect("ctr> ")
        child.sendline("exit 3")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 3
