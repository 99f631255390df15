#!/usr/bin/env bash
# Installs what obd's tests need on a fresh Debian 12 machine. Idempotent: everything built here
# is cached under OBD_DEPS (default /opt/obd-deps) with a version stamp per component, and Debian
# packages are checked in dpkg's status first, so a re-run on a ready machine takes seconds.
#
#   OBD_DEPS/bin/{containerd,ctr,containerd-shim-runc-v2}   containerd, built from its Go module
#   OBD_DEPS/bin/nerdctl                                      nerdctl, built from its Go module
#   OBD_DEPS/bin/crictl                                       crictl (cri-tools), built from its Go module
#   OBD_DEPS/bin/criu                                         CRIU 4.1.1, built from source (scripts/build-criu.sh)
#   OBD_DEPS/bin/ipfs                                         kubo, built from its Go module (scripts/build-kubo.sh)
#   OBD_DEPS/stamps/<component>                               the version installed
set -euo pipefail

OBD_DEPS=${OBD_DEPS:-/opt/obd-deps}
CONTAINERD_VERSION=v2.4.2
NERDCTL_VERSION=v2.2.2
CRITOOLS_VERSION=v1.37.0
APT_PACKAGES=(
  e2fsprogs fuse3 libnbd-bin nbdkit qemu-utils fio umoci skopeo docker-registry runc
  busybox-static debootstrap iproute2 erofs-utils util-linux kmod
)

log() { echo "setup: $*"; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }
trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

command -v go >/dev/null || die "Go 1.26 is required on PATH (https://go.dev/dl/)"
[ "$(id -u)" = 0 ] || die "must run as root (installs Debian packages under /usr and builds into $OBD_DEPS)"

mkdir -p "$OBD_DEPS/bin" "$OBD_DEPS/stamps"

# stamp_ok COMPONENT VERSION BINARY... : true when the stamp says VERSION and every binary exists.
stamp_ok() {
  local component=$1 version=$2; shift 2
  [ "$(cat "$OBD_DEPS/stamps/$component" 2>/dev/null)" = "$version" ] || return 1
  local bin
  for bin in "$@"; do [ -x "$OBD_DEPS/bin/$bin" ] || return 1; done
}

install_apt_packages() {
  local missing=() pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
      missing+=("$pkg")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "apt: all ${#APT_PACKAGES[@]} packages present"
    return
  fi
  log "apt: installing ${missing[*]}"
  apt-get update -qq || die "apt-get update failed (is the Debian archive reachable?)"
  # No service of these packages (docker-registry) may be started by the install: tests start
  # their own instances on private ports. invoke-rc.d asks policy-rc.d; 101 means "not allowed".
  local policy=/usr/sbin/policy-rc.d placed_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && placed_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || { [ $placed_policy = 1 ] && rm -f "$policy"; die "apt-get install ${missing[*]} failed"; }
  [ $placed_policy = 1 ] && rm -f "$policy"
  log "apt: installed ${missing[*]}"
}

install_containerd() {
  if stamp_ok containerd "$CONTAINERD_VERSION" containerd ctr containerd-shim-runc-v2; then
    log "containerd $CONTAINERD_VERSION: present"
    return
  fi
  log "containerd $CONTAINERD_VERSION: building (about 100 s)"
  local cmd
  for cmd in containerd ctr containerd-shim-runc-v2; do
    (cd / && GOBIN="$OBD_DEPS/bin" GOFLAGS= go install \
      "github.com/containerd/containerd/v2/cmd/$cmd@$CONTAINERD_VERSION") \
      || die "go install containerd/cmd/$cmd@$CONTAINERD_VERSION failed"
  done
  echo "$CONTAINERD_VERSION" >"$OBD_DEPS/stamps/containerd"
  log "containerd $CONTAINERD_VERSION: installed in $OBD_DEPS/bin"
}

# nerdctl's go.mod replaces its test framework (tigron) with ./mod/tigron, which the module zip
# lacks; only tests and two helper files use it, so those are dropped before building the binary.
install_nerdctl() {
  if stamp_ok nerdctl "$NERDCTL_VERSION" nerdctl; then
    log "nerdctl $NERDCTL_VERSION: present"
    return
  fi
  log "nerdctl $NERDCTL_VERSION: building from module source (1-3 min)"
  local mod="github.com/containerd/nerdctl/v2@$NERDCTL_VERSION" dir work
  dir=$(cd / && GOFLAGS= go mod download -json "$mod" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
  [ -n "$dir" ] && [ -d "$dir" ] || die "go mod download $mod gave no source directory"
  work=$(mktemp -d)
  cp -r "$dir/." "$work/"
  chmod -R u+w "$work"
  sed -i '/tigron/d' "$work/go.mod"
  # testing.go and testing_linux.go: test helpers compiled into the package, the second reaching
  # tigron through pkg/testutil. Nothing outside tests calls them.
  rm -f "$work/cmd/nerdctl/helpers/testing.go" "$work/cmd/nerdctl/helpers/testing_linux.go"
  (cd "$work" && GOFLAGS=-mod=mod go build -o "$OBD_DEPS/bin/nerdctl" ./cmd/nerdctl) \
    || { rm -rf "$work"; die "building nerdctl $NERDCTL_VERSION failed"; }
  rm -rf "$work"
  echo "$NERDCTL_VERSION" >"$OBD_DEPS/stamps/nerdctl"
  log "nerdctl $NERDCTL_VERSION: installed in $OBD_DEPS/bin"
}

install_crictl() {
  if stamp_ok crictl "$CRITOOLS_VERSION" crictl; then
    log "crictl $CRITOOLS_VERSION: present"
    return
  fi
  log "crictl $CRITOOLS_VERSION: building (about 30 s)"
  (cd / && GOBIN="$OBD_DEPS/bin" GOFLAGS= go install "sigs.k8s.io/cri-tools/cmd/crictl@$CRITOOLS_VERSION") \
    || die "go install cri-tools/cmd/crictl@$CRITOOLS_VERSION failed"
  echo "$CRITOOLS_VERSION" >"$OBD_DEPS/stamps/crictl"
  log "crictl $CRITOOLS_VERSION: installed in $OBD_DEPS/bin"
}

# Container hosts run with a shared root mount (systemd makes it so): then runc's rslave copy
# of the mount table in a new container sees our unmounts, and a device obd unmounts is
# really released. Without systemd the root mount is private and every container started
# meanwhile keeps its own copy of our ext4 mounts alive.
share_root_mount() {
  if ! awk '$5 == "/" && / shared:/ { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    mount --make-rshared / || die "mount --make-rshared / failed"
    log "root mount made shared (as on systemd hosts)"
  fi
}

start=$SECONDS
install_apt_packages
install_containerd
install_nerdctl
install_crictl
bash "$(dirname "${BASH_SOURCE[0]}")/build-criu.sh" || die "building criu failed"
bash "$(dirname "${BASH_SOURCE[0]}")/build-kubo.sh" || die "building kubo failed"
share_root_mount
"$OBD_DEPS/bin/containerd" --version >/dev/null || die "installed containerd does not run"
"$OBD_DEPS/bin/nerdctl" --version >/dev/null || die "installed nerdctl does not run"
"$OBD_DEPS/bin/crictl" --version >/dev/null || die "installed crictl does not run"
"$OBD_DEPS/bin/criu" --version >/dev/null || die "installed criu does not run"
"$OBD_DEPS/bin/ipfs" version >/dev/null || die "installed kubo (ipfs) does not run"
log "done in $((SECONDS - start)) s; binaries in $OBD_DEPS/bin"
