#!/usr/bin/env bash
# Builds the Python 3 runtime rootfs that the function sandboxes (package sandbox/) run in:
# Debian bookworm minbase plus python3, made by debootstrap from the Debian archive. Built once
# and cached; a re-run on a ready machine returns at once and prints the directory.
#
#   OBD_DEPS/rootfs/python3-bookworm          the rootfs (read-only use by sandboxes)
#   OBD_DEPS/stamps/rootfs-python3-bookworm   the recipe it was built with
#
# Concurrent callers (parallel test packages) serialise on a lock; only one builds.
set -euo pipefail

OBD_DEPS=${OBD_DEPS:-/opt/obd-deps}
NAME=python3-bookworm
RECIPE="debootstrap minbase bookworm include=python3 v2"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEST=$OBD_DEPS/rootfs/$NAME
STAMP=$OBD_DEPS/stamps/rootfs-$NAME

log() { echo "mkrootfs: $*" >&2; }
die() { echo "mkrootfs: ERROR: $*" >&2; exit 1; }

ready() { [ "$(cat "$STAMP" 2>/dev/null)" = "$RECIPE" ] && [ -x "$DEST/usr/bin/python3" ]; }

if ready; then echo "$DEST"; exit 0; fi
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap creates device nodes and chroots)"

mkdir -p "$OBD_DEPS/rootfs" "$OBD_DEPS/stamps"
exec 9>"$OBD_DEPS/rootfs/.$NAME.lock"
flock 9
if ready; then echo "$DEST"; exit 0; fi

if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  apt-get update -qq || die "apt-get update failed (is the Debian archive reachable?)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap \
    || die "apt-get install debootstrap failed"
fi

# Build next to the destination and rename, so a killed build never leaves a half rootfs that
# looks ready.
work=$(mktemp -d "$OBD_DEPS/rootfs/.$NAME.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "debootstrap $NAME into $work (3-4 minutes)"
debootstrap --variant=minbase --include=python3 bookworm "$work" "$MIRROR" >"$work.log" 2>&1 \
  || { tail -n 20 "$work.log" >&2; rm -f "$work.log"; die "debootstrap failed"; }
rm -f "$work.log"
rm -rf "$work"/var/cache/apt/archives/*.deb "$work"/var/lib/apt/lists/*
chroot "$work" /usr/bin/python3 -c 'import json, sqlite3' \
  || die "python3 in the new rootfs cannot import json and sqlite3"

chmod 755 "$work"  # mktemp made it 0700; sandboxes run as nobody
rm -rf "$DEST"
mv "$work" "$DEST"
trap - EXIT
echo "$RECIPE" >"$STAMP"
log "ready: $DEST"
echo "$DEST"
