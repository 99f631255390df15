#!/usr/bin/env bash
# Builds the image set `obd dedup-report` is measured on (README, "Dedup"): Debian bookworm
# images in one OCI layout, as a registry holds images built by different people at different
# times. Built once and cached; a re-run on a ready machine prints the layout directory at once.
#
#   OBD_DEPS/images/dedup-set        the OCI layout, tags:
#     python   the benchmark image's first two layers (debootstrap minbase; + python3)
#     gcc      the benchmark image (convert/bench/mkimage.sh): minbase; + python3; + gcc
#     curl     a second debootstrap minbase, then + curl (same files, other layer bytes)
#     pyflat   that second minbase with python3 installed, squashed into one layer
#   OBD_DEPS/stamps/image-dedup-set  the recipe it was built with
#
# Needs root, debootstrap, umoci, jq and the Debian archive; about 5 minutes.
set -euo pipefail

OBD_DEPS=${OBD_DEPS:-/opt/obd-deps}
RECIPE="dedup-set: bench python+gcc; minbase2 + curl; minbase2+python3 flat; v1"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEST=$OBD_DEPS/images/dedup-set
STAMP=$OBD_DEPS/stamps/image-dedup-set
HERE=$(cd "$(dirname "$0")" && pwd)

log() { echo "mkdedupimages: $*" >&2; }
die() { echo "mkdedupimages: ERROR: $*" >&2; exit 1; }
ready() { [ "$(cat "$STAMP" 2>/dev/null)" = "$RECIPE" ] && [ -f "$DEST/index.json" ]; }

if ready; then echo "$DEST"; exit 0; fi
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot)"
for tool in debootstrap umoci chroot jq skopeo; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
bench=$(bash "$HERE/../convert/bench/mkimage.sh")

mkdir -p "$OBD_DEPS/images" "$OBD_DEPS/stamps"
exec 9>"$OBD_DEPS/images/.dedup-set.lock"
flock 9
if ready; then echo "$DEST"; exit 0; fi

work=$(mktemp -d "$OBD_DEPS/images/.dedup-set.XXXXXX")
cleanup() {
  umount "$work"/*/rootfs/proc 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
layout=$work/layout

skopeo copy -q "oci:$bench:bench" "oci:$layout:gcc"

# python: the benchmark image without its last layer (the config's diff_ids and history too).
blob() { echo "$layout/blobs/sha256/${1#sha256:}"; }
put() { # stdin -> blob; prints "digest size"
  local tmp=$work/blob d
  cat >"$tmp"
  d=$(sha256sum "$tmp" | cut -d' ' -f1)
  mv "$tmp" "$layout/blobs/sha256/$d"
  echo "sha256:$d $(stat -c %s "$layout/blobs/sha256/$d")"
}
mdigest=$(jq -r '.manifests[] | select(.annotations."org.opencontainers.image.ref.name"=="gcc") | .digest' "$layout/index.json")
manifest=$(cat "$(blob "$mdigest")")
config=$(cat "$(blob "$(jq -r .config.digest <<<"$manifest")")")
read -r cdigest csize < <(jq -c '.rootfs.diff_ids |= .[:2] | .history |= .[:2]' <<<"$config" | tr -d '\n' | put)
read -r pdigest psize < <(jq -c --arg d "$cdigest" --argjson s "$csize" '.layers |= .[:2] | .config.digest=$d | .config.size=$s' <<<"$manifest" | tr -d '\n' | put)
jq --arg d "$pdigest" --argjson s "$psize" \
  '.manifests += [{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":$d,"size":$s,"annotations":{"org.opencontainers.image.ref.name":"python"}}]' \
  "$layout/index.json" >"$work/index.json"
mv "$work/index.json" "$layout/index.json"

clean_apt() {
  rm -rf "$1"/rootfs/var/cache/apt/archives/*.deb "$1"/rootfs/var/cache/apt/*.bin \
    "$1"/rootfs/var/lib/apt/lists/* "$1"/rootfs/var/log/apt/* "$1"/rootfs/var/log/dpkg.log
}
install() { # bundle package
  mount -t proc proc "$1/rootfs/proc"
  chroot "$1/rootfs" /bin/sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $2" \
    >"$work/apt.log" 2>&1 || { tail -n 20 "$work/apt.log" >&2; die "apt-get install $2 failed"; }
  umount "$1/rootfs/proc"
  clean_apt "$1"
}

umoci new --image "$layout:curl"
umoci unpack --image "$layout:curl" "$work/curl"
log "debootstrap minbase (2-3 minutes)"
debootstrap --variant=minbase bookworm "$work/curl/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
clean_apt "$work/curl"
umoci repack --refresh-bundle --history.created_by "debootstrap --variant=minbase bookworm" --image "$layout:curl" "$work/curl"

umoci new --image "$layout:pyflat"
umoci unpack --image "$layout:pyflat" "$work/pyflat"
cp -a "$work/curl/rootfs/." "$work/pyflat/rootfs/"

log "apt-get install curl"
install "$work/curl" curl
umoci repack --refresh-bundle --history.created_by "apt-get install curl" --image "$layout:curl" "$work/curl"
log "apt-get install python3 (squashed with the base)"
install "$work/pyflat" python3
umoci repack --refresh-bundle --history.created_by "debootstrap minbase; apt-get install python3" --image "$layout:pyflat" "$work/pyflat"
umoci gc --layout "$layout"

rm -rf "$DEST"
mv "$layout" "$DEST"
echo "$RECIPE" >"$STAMP"
log "ready: $DEST"
echo "$DEST"
