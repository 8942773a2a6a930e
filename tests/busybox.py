"""A busybox root filesystem for the filesystem tests, built once per session by
scripts/busybox-image.sh from Debian's busybox-static (tests skip without it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "busybox-image.sh"

_built: dict[str, Path] = {}


def build(factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(rootfs dir, tarball of it), built once per session (the test modules'
    session fixtures call this); skips the test when no busybox can be had."""
    if "rootfs" not in _built:
        base = factory.mktemp("busybox")
        rootfs, tar = base / "rootfs", base / "busybox.tar"
        res = subprocess.run([str(SCRIPT), str(rootfs), str(tar)], capture_output=True, timeout=300)
        if res.returncode != 0:
            pytest.skip(
                "no static busybox (apt-get install busybox-static, or make "
                f"'apt-get download busybox-static' work): {res.stderr.decode().strip()}"
            )
        _built.update(rootfs=rootfs, tar=tar)
    return _built["rootfs"], _built["tar"]


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every entry below ``root``: (mode, size, mtime_ns, link target) by relative path."""
    out = {}
    for p in [root, *root.rglob("*")]:
        st = p.lstat()
        target = str(p.readlink()) if p.is_symlink() else ""
        out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, target)
    return out


def reachable(path: Path, bits: int = 0o755) -> Path:
    """Open ``path`` and every directory above it to other users (``bits`` added to
    each mode): a container whose root is another host id (rootless, or an OCI user
    namespace) must walk down to its root filesystem. pytest makes its directories
    0700, its base directory included, wherever ``--basetemp`` puts it."""
    for p in [path, *path.parents]:
        if p == Path("/"):
            break
        os.chmod(p, os.stat(p).st_mode | bits)
    return path
