#!/usr/bin/env bash
# Builds kubo (the IPFS node, command `ipfs`) into OBD_DEPS/bin/ipfs for obd's peer-to-peer blob
# reads (remotefetch's IPFS gateway reader and its three-node test). Called by scripts/setup.sh;
# runs alone too. Cached: a re-run with the stamp in place is instant.
#
# Why not `go install github.com/ipfs/kubo/cmd/ipfs@VERSION`: kubo's go.mod replaces go-libp2p
# with a fork (github.com/lidel/go-libp2p) that the Go module proxy refuses to serve, and
# `go install pkg@version` refuses modules with replace directives anyway. The fork only carried
# go-libp2p forward to quic-go >= v0.62 and webtransport-go >= v0.13, which go-libp2p v0.52.0
# requires itself, so the module's source is built with the replace dropped and go-libp2p
# required at that release instead. The build takes about 8 minutes on 2 cores with a cold Go
# build cache.
#
#   OBD_DEPS/bin/ipfs         the binary
#   OBD_DEPS/stamps/kubo      the recipe it was built with
set -euo pipefail

OBD_DEPS=${OBD_DEPS:-/opt/obd-deps}
KUBO_VERSION=v0.43.1
LIBP2P_VERSION=v0.52.0
STAMP="$KUBO_VERSION go-libp2p:$LIBP2P_VERSION"

log() { echo "build-kubo: $*"; }
die() { echo "build-kubo: ERROR: $*" >&2; exit 1; }

if [ "$(cat "$OBD_DEPS/stamps/kubo" 2>/dev/null)" = "$STAMP" ] && [ -x "$OBD_DEPS/bin/ipfs" ]; then
  log "kubo $KUBO_VERSION: present"
  exit 0
fi
command -v go >/dev/null || die "Go is required on PATH"
mkdir -p "$OBD_DEPS/bin" "$OBD_DEPS/stamps"

log "kubo $KUBO_VERSION: building from module source with go-libp2p $LIBP2P_VERSION (about 8 min)"
mod="github.com/ipfs/kubo@$KUBO_VERSION"
dir=$(cd / && GOFLAGS= go mod download -json "$mod" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
[ -n "$dir" ] && [ -d "$dir" ] || die "go mod download $mod gave no source directory"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$dir/." "$work/"
chmod -R u+w "$work"
(
  cd "$work"
  go mod edit -dropreplace github.com/libp2p/go-libp2p
  go mod edit -require "github.com/libp2p/go-libp2p@$LIBP2P_VERSION"
  grep -q '^replace' go.mod && die "kubo $KUBO_VERSION's go.mod has replace directives left: $(grep '^replace' go.mod)"
  GOFLAGS=-mod=mod go build -trimpath -o "$OBD_DEPS/bin/ipfs.new" ./cmd/ipfs
) || die "building kubo $KUBO_VERSION failed"
mv "$OBD_DEPS/bin/ipfs.new" "$OBD_DEPS/bin/ipfs"
got=$("$OBD_DEPS/bin/ipfs" version --number) || die "built ipfs does not run"
[ "v$got" = "$KUBO_VERSION" ] || die "built ipfs says version $got, want $KUBO_VERSION"
echo "$STAMP" >"$OBD_DEPS/stamps/kubo"
log "kubo $KUBO_VERSION: installed in $OBD_DEPS/bin"
