#!/bin/sh
# Install the Debian packages mydocker needs that are missing (as root, with apt-get).
#
#   scripts/debian-deps.sh run    what `mydocker run` needs: libseccomp2 (the seccomp
#                                 compiler), tini (--init), uidmap (newuidmap: a
#                                 subordinate id range for rootless containers),
#                                 libnftables1 (networks: mydocker's nftables tables)
#   scripts/debian-deps.sh test   that, and what the tests use: busybox-static (the
#                                 image of the root filesystem tests), procps (ps and
#                                 top inside containers), util-linux (unshare,
#                                 setpriv), vim-tiny (a full-screen program for the
#                                 pty tests), nftables (nft, to look at the tables)
#                                 and iproute2 (ip: the network tests' outside host
#                                 and bench/network.py's baseline), containerd
#                                 (ctr and its runc shim drive mydocker-runc in
#                                 tests/test_oci.py and scripts/containerd-demo.sh)
#   scripts/debian-deps.sh bench  that, and the runtimes the benches compare
#                                 mydocker with: crun and runc
#
# Without root or apt-get it only says what is missing (mydocker itself then says
# what it cannot do, in one line, when it is asked to).
set -eu
packages="libseccomp2 tini uidmap libnftables1"
case "${1:-run}" in
test | bench) packages="$packages busybox-static procps util-linux vim-tiny nftables iproute2 containerd" ;;
esac
[ "${1:-run}" = bench ] && packages="$packages crun runc"
need=""
for pkg in $packages; do
    dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need="$need $pkg"
done
[ -z "$need" ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "$0: missing Debian packages:$need (install them as root)" >&2
    exit 0
fi
apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need
