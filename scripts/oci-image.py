#!/usr/bin/env python3
"""Pack a root filesystem directory as an OCI image archive (an image layout in a
tar), offline: one gzip layer, its config, its manifest, ``index.json``.

    scripts/oci-image.py ROOTFS OUT.tar [NAME]      NAME default docker.io/library/busybox:latest

``ctr images import OUT.tar`` (containerd) takes it as NAME; ``tests/test_oci.py``
and ``scripts/containerd-demo.sh`` make one from the busybox root filesystem of
``scripts/busybox-image.sh``. Standard library only.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import sys
import tarfile

_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def _layer(rootfs: str) -> bytes:
    """The root filesystem as an uncompressed tar, every file root's."""

    def owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(os.listdir(rootfs)):
            tar.add(os.path.join(rootfs, name), arcname=name, filter=owned_by_root)
    return buf.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest[7:]}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return {"digest": digest, "size": len(data)}


def _file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build(rootfs: str, out: str, name: str = "docker.io/library/busybox:latest") -> None:
    """Write the image archive of ``rootfs`` to ``out``, named ``name``."""
    arch = _ARCH.get(platform.machine(), platform.machine())
    layer = _layer(rootfs)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    with tarfile.open(out, "w") as tar:
        _file(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        layer_desc = _blob(tar, gzip.compress(layer, mtime=0))
        config_desc = _blob(tar, json.dumps(config).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_desc}],
        }
        manifest_desc = _blob(tar, json.dumps(manifest).encode())
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    **manifest_desc,
                    "platform": {"architecture": arch, "os": "linux"},
                    "annotations": {"org.opencontainers.image.ref.name": tag, "io.containerd.image.name": name},
                }
            ],
        }
        _file(tar, "index.json", json.dumps(index).encode())


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(f"usage: {sys.argv[0]} ROOTFS OUT.tar [NAME]")
    build(*sys.argv[1:])
