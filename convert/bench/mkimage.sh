#!/usr/bin/env bash
# Builds the converter benchmark's source image: a real Debian bookworm image in an OCI layout
# with three gzip layers (debootstrap minbase; + python3; + gcc), apt caches cleaned. Built once
# and cached; a re-run on a ready machine prints the layout directory at once.
#
#   OBD_DEPS/images/debian-bench        the OCI layout, tag "bench"
#   OBD_DEPS/stamps/image-debian-bench  the recipe it was built with
#
# Needs root, debootstrap, umoci and the Debian archive.
set -euo pipefail

OBD_DEPS=${OBD_DEPS:-/opt/obd-deps}
RECIPE="debootstrap minbase bookworm; python3; gcc; umoci layers v1"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEST=$OBD_DEPS/images/debian-bench
STAMP=$OBD_DEPS/stamps/image-debian-bench

log() { echo "mkimage: $*" >&2; }
die() { echo "mkimage: ERROR: $*" >&2; exit 1; }
ready() { [ "$(cat "$STAMP" 2>/dev/null)" = "$RECIPE" ] && [ -f "$DEST/index.json" ]; }

if ready; then echo "$DEST"; exit 0; fi
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot)"
for tool in debootstrap umoci chroot; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install debootstrap umoci)"
done

mkdir -p "$OBD_DEPS/images" "$OBD_DEPS/stamps"
exec 9>"$OBD_DEPS/images/.debian-bench.lock"
flock 9
if ready; then echo "$DEST"; exit 0; fi

work=$(mktemp -d "$OBD_DEPS/images/.debian-bench.XXXXXX")
cleanup() {
  umount "$work/bundle/rootfs/proc" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

layout=$work/layout
bundle=$work/bundle
umoci init --layout "$layout"
umoci new --image "$layout:bench"
umoci unpack --image "$layout:bench" "$bundle"

log "debootstrap minbase (2-3 minutes)"
debootstrap --variant=minbase bookworm "$bundle/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

clean_apt() {
  rm -rf "$bundle"/rootfs/var/cache/apt/archives/*.deb "$bundle"/rootfs/var/cache/apt/*.bin \
    "$bundle"/rootfs/var/lib/apt/lists/* "$bundle"/rootfs/var/log/apt/* "$bundle"/rootfs/var/log/dpkg.log
}
clean_apt
umoci repack --refresh-bundle --history.created_by "debootstrap --variant=minbase bookworm" \
  --image "$layout:bench" "$bundle"

for pkg in python3 gcc; do
  log "apt-get install $pkg"
  mount -t proc proc "$bundle/rootfs/proc"
  chroot "$bundle/rootfs" /bin/sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkg" \
    >"$work/apt.log" 2>&1 || { tail -n 20 "$work/apt.log" >&2; die "apt-get install $pkg failed"; }
  umount "$bundle/rootfs/proc"
  clean_apt
  umoci repack --refresh-bundle --history.created_by "apt-get install $pkg" --image "$layout:bench" "$bundle"
done
umoci config --image "$layout:bench" --config.cmd /bin/bash
umoci gc --layout "$layout"

rm -rf "$DEST"
mv "$layout" "$DEST"
echo "$RECIPE" >"$STAMP"
log "ready: $DEST"
echo "$DEST"
