#!/usr/bin/env bash
# Builds CRIU into OBD_DEPS/bin/criu for obd's checkpoint/restore starts (package checkpoint).
# Called by scripts/setup.sh; runs alone too. Cached: a re-run with the stamp in place is instant.
#
# Why a source build: Debian 12's criu 3.17 fails at start on kernels 6.x ("Failed to fill self
# vdso symtable"); 4.1.1 works. Only bookworm's apt suites may be used, so 4.1.1 is built from
# the upstream source that Debian 13 ships (its orig tarball, fetched from the pool of the same
# Debian mirror apt uses and checked against a pinned sha256) against bookworm's libraries.
#
# RUNDIR is where criu keeps its kernel-feature cache (criu.kdat). criu keeps the cache only on
# a tmpfs and /run is not one on every host, so it lives in /dev/shm/obd-criu, a root-only
# directory that package checkpoint creates before it runs criu. Without the cache every criu
# run probes the kernel again (about 40 ms here: pagemap, a veth pair, vdso layout).
#
#   OBD_DEPS/bin/criu         the binary
#   OBD_DEPS/stamps/criu      the recipe it was built with
set -euo pipefail

OBD_DEPS=${OBD_DEPS:-/opt/obd-deps}
CRIU_VERSION=4.1.1
CRIU_TARBALL=criu_${CRIU_VERSION}.orig.tar.xz
CRIU_SHA256=f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe
CRIU_RUNDIR=/dev/shm/obd-criu
STAMP="$CRIU_VERSION sha256:$CRIU_SHA256 rundir:$CRIU_RUNDIR"
# Build dependencies, all from bookworm; the -dev packages pull in the libraries criu links.
BUILD_PACKAGES=(
  build-essential pkg-config curl xz-utils protobuf-compiler protobuf-c-compiler libprotobuf-dev
  libprotobuf-c-dev libnl-3-dev libnl-route-3-dev libnet1-dev libcap-dev libbsd-dev
  libgnutls28-dev libnftables-dev uuid-dev libaio-dev python3-protobuf
)

log() { echo "build-criu: $*"; }
die() { echo "build-criu: ERROR: $*" >&2; exit 1; }

if [ "$(cat "$OBD_DEPS/stamps/criu" 2>/dev/null)" = "$STAMP" ] && [ -x "$OBD_DEPS/bin/criu" ]; then
  log "criu $CRIU_VERSION: present"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "must run as root (installs Debian packages, builds into $OBD_DEPS)"
mkdir -p "$OBD_DEPS/bin" "$OBD_DEPS/stamps"

missing=()
for pkg in "${BUILD_PACKAGES[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$pkg")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  apt-get update -qq || die "apt-get update failed (is the Debian archive reachable?)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || die "apt-get install ${missing[*]} failed"
fi

# The mirror apt already uses for bookworm main (no host is named here).
mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Release: bookworm' 'Component: main' \
  'Created-By: Packages' | head -n1)
[ -n "$mirror" ] || die "no Debian bookworm main source in apt's configuration"
url="${mirror%/}/pool/main/c/criu/$CRIU_TARBALL"

log "criu $CRIU_VERSION: building from $CRIU_TARBALL (1-3 min)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -fsS --retry 3 -o "$work/$CRIU_TARBALL" "$url" || die "download of $url failed"
echo "$CRIU_SHA256  $work/$CRIU_TARBALL" | sha256sum -c --quiet - \
  || die "$CRIU_TARBALL: sha256 mismatch (want $CRIU_SHA256)"
tar -xJf "$work/$CRIU_TARBALL" -C "$work"
src="$work/criu-$CRIU_VERSION"
[ -f "$src/Makefile" ] || die "$CRIU_TARBALL has no criu-$CRIU_VERSION/Makefile"
make -C "$src" -j"$(nproc)" criu RUNDIR="$CRIU_RUNDIR" >"$work/build.log" 2>&1 \
  || { tail -n 30 "$work/build.log" >&2; die "make criu failed"; }
install -m 0755 "$src/criu/criu" "$OBD_DEPS/bin/criu.new"
mv "$OBD_DEPS/bin/criu.new" "$OBD_DEPS/bin/criu"
"$OBD_DEPS/bin/criu" --version >/dev/null || die "built criu does not run"
echo "$STAMP" >"$OBD_DEPS/stamps/criu"
log "criu $CRIU_VERSION: installed in $OBD_DEPS/bin"
