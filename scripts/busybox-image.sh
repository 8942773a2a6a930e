#!/bin/sh
# Build a minimal busybox root filesystem from Debian's busybox-static package, offline
# once the package is at hand (installed, given as a .deb, or `apt-get download`able).
#
#   scripts/busybox-image.sh DIR                 make DIR a busybox rootfs
#   scripts/busybox-image.sh DIR busybox.tar     ... and pack it as a tarball too
#   BUSYBOX_DEB=/path/busybox-static_*.deb scripts/busybox-image.sh DIR
#
# Then: mydocker run --rootfs DIR sh   or   mydocker image import busybox busybox.tar
# Exit status 2 when no static busybox can be found (tests skip on it).
set -eu

usage() { echo "usage: $0 DIR [TARBALL]" >&2; exit 64; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
out=$1
tarball=${2:-}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# 1. a static busybox binary: a given .deb, the installed package, or a download
bb=
if [ -n "${BUSYBOX_DEB:-}" ]; then
    dpkg-deb -x "$BUSYBOX_DEB" "$tmp/deb"
    bb=$tmp/deb/bin/busybox
elif dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
    bb=$(dpkg-query -L busybox-static | grep '/busybox$' | head -n1)
elif command -v apt-get >/dev/null 2>&1 &&
        (cd "$tmp" && apt-get download busybox-static >/dev/null 2>&1); then
    dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/deb"
    bb=$tmp/deb/bin/busybox
fi
if [ -z "$bb" ] || [ ! -x "$bb" ]; then
    echo "$0: no static busybox: install busybox-static, set BUSYBOX_DEB," \
         "or run 'apt-get update' so that 'apt-get download busybox-static' works" >&2
    exit 2
fi

# 2. the tree: busybox, one symlink per applet, the usual mount points, root's account
mkdir -p "$out"
cd "$out"
mkdir -p bin sbin usr/bin usr/sbin etc root tmp var/tmp proc sys dev home
chmod 1777 tmp var/tmp
chmod 700 root
cp "$bb" bin/busybox
chmod 755 bin/busybox
for applet in $(./bin/busybox --list-full); do
    [ "$applet" = bin/busybox ] || ln -sfn /bin/busybox "$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > etc/passwd
printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' > etc/group
echo 'mydocker-busybox' > etc/hostname

# 3. optionally a tarball for `mydocker image import`
if [ -n "$tarball" ]; then
    case $tarball in /*) ;; *) tarball=$OLDPWD/$tarball ;; esac
    tar --numeric-owner -cf "$tarball" .
fi
