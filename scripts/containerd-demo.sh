#!/bin/sh
# containerd drives mydocker-runc: a private containerd runs a busybox image,
# imported from an OCI image archive made here from Debian's busybox-static (no
# registry needed), with `ctr run --runc-binary mydocker-runc`.
#
#   scripts/containerd-demo.sh [COMMAND...]     default: a few lines about the container
#
# Needs root, Debian's containerd package (containerd, ctr, containerd-shim-runc-v2;
# scripts/debian-deps.sh test installs it) and busybox-static. MYDOCKER_RUNC names
# the runtime (default: mydocker-runc on PATH, else the .venv's).
#
# Nothing of the host is used or changed: containerd, its shim, ctr and the
# containers run in a mount namespace of their own with a tmpfs on /run (ctr's
# FIFOs, the shim's socket), containerd's root, state and socket are in a
# temporary directory, and the container's cgroup is mydocker-demo/ID below this
# script's own cgroup. All of it is gone when the script exits. Exit status:
# the container's.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
runtime=${MYDOCKER_RUNC:-$(command -v mydocker-runc || echo "$here/../.venv/bin/mydocker-runc")}
python=${PYTHON:-python3}
for tool in containerd ctr containerd-shim-runc-v2 unshare; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$0: $tool is not installed (Debian: containerd, util-linux)" >&2; exit 2; }
done
[ -x "$runtime" ] || { echo "$0: no mydocker-runc at $runtime (set MYDOCKER_RUNC)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: needs root" >&2; exit 2; }

if [ "${_MYDOCKER_DEMO_INSIDE:-}" != 1 ]; then
    work=$(mktemp -d /tmp/mydocker-containerd.XXXXXX)
    chmod 755 "$work"
    trap 'rm -rf "$work"' EXIT INT TERM
    "$here/busybox-image.sh" "$work/rootfs" >/dev/null
    "$python" "$here/oci-image.py" "$work/rootfs" "$work/busybox.tar" docker.io/library/busybox:latest
    rm -rf "$work/rootfs"
    status=0
    _MYDOCKER_DEMO_INSIDE=1 WORK=$work RUNTIME=$runtime \
        unshare -m --propagation private "$0" "$@" || status=$?
    exit "$status"
fi

# ---- inside the private mount namespace
mount -t tmpfs -o mode=755 tmpfs /run
cat > "$WORK/config.toml" <<EOF
version = 2
root = "$WORK/root"
state = "$WORK/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$WORK/containerd.sock"
[ttrpc]
  address = "$WORK/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
EOF
containerd --config "$WORK/config.toml" > "$WORK/containerd.log" 2>&1 &
daemon=$!
ctr() { command ctr --address "$WORK/containerd.sock" --namespace mydocker-demo "$@"; }
stop() {
    # whatever a failed run left: its tasks (and their shims) go before containerd
    for task in $(ctr task ls -q 2>/dev/null); do
        ctr task kill -s KILL "$task" >/dev/null 2>&1
        ctr task rm -f "$task" >/dev/null 2>&1
    done
    for c in $(ctr container ls -q 2>/dev/null); do ctr container rm "$c" >/dev/null 2>&1; done
    kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
}
trap stop EXIT INT TERM
i=0
until ctr version >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo "$0: containerd did not start:" >&2; tail -5 "$WORK/containerd.log" >&2; exit 1; }
    sleep 0.1
done
ctr images import "$WORK/busybox.tar" >/dev/null
id=demo-$$
if [ $# -eq 0 ]; then
    set -- sh -c 'echo "hello from busybox, PID $$ in $(hostname), run by containerd with $RUNTIME_NAME"'
fi
status=0
ctr run --rm --env RUNTIME_NAME=mydocker-runc --runc-binary "$RUNTIME" --runc-root "$WORK/runc" \
    --cgroup "mydocker-demo/$id" docker.io/library/busybox:latest "$id" "$@" || status=$?
exit $status
