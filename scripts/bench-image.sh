#!/usr/bin/env bash
# Prints the path of a real filesystem image for the format benchmarks: an ext4 image of the
# Debian bookworm + python3 rootfs that scripts/mkrootfs.sh builds. Made once and cached.
set -euo pipefail
OBD_DEPS=${OBD_DEPS:-/opt/obd-deps}
img=$OBD_DEPS/bench/debian-python3.ext4
if [ ! -s "$img" ]; then
  root=$(bash "$(dirname "$0")/mkrootfs.sh")
  mkdir -p "$(dirname "$img")"
  truncate -s 1G "$img.tmp"
  # Fixed UUID, hash seed and time, so the image (and every figure measured on it) repeats.
  E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -b 4096 -I 256 -U 6f6264ff-0000-4000-8000-000000000001 \
    -E hash_seed=6f6264ff-0000-4000-8000-000000000002 -d "$root" "$img.tmp" >&2
  mv "$img.tmp" "$img"
fi
echo "$img"
