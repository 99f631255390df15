#!/usr/bin/env bash
# obd demo (`make demo`): a lazy overlaybd start next to a plain overlayfs pull-and-run.
#
# Everything runs privately under one temp dir and is removed on exit and on Ctrl-C:
#   a registry (Debian's docker-registry) on 127.0.0.1, bdd, the overlaybd snapshotter,
#   containerd (own root, state, socket and namespace), and the containers nerdctl starts.
# Steps: build obd's binaries, build a sample image offline (busybox, or DEMO_IMAGE=python
# for Debian + python3 from scripts/mkrootfs.sh), push it, convert it with `obd convert`, then
# time `nerdctl --snapshotter overlaybd run` of the converted image against `nerdctl pull` +
# `nerdctl run` of the original on containerd's overlayfs snapshotter. Then `ctr-obd
# record-trace` records the lazy start's reads, and a third start from an empty bdd cache
# (`ctr-obd rpull`, which prefetches the trace, + `nerdctl run`) shows what the trace buys.
#
# Needs root and the tools of `make deps` (scripts/setup.sh). Variables:
#   DEMO_IMAGE   busybox (default) or python
#   OBD_DEPS     where setup.sh installed containerd, nerdctl (default /opt/obd-deps)
#   BIN          where obd's binaries are built (default ./bin)
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OBD_DEPS=${OBD_DEPS:-/opt/obd-deps}
BIN=${BIN:-$REPO/bin}
DEMO_IMAGE=${DEMO_IMAGE:-busybox}
export PATH="$OBD_DEPS/bin:$PATH"

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'demo: ERROR: %s\n' "$*" >&2; exit 1; }
trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

[ "$(id -u)" = 0 ] || die "must run as root (containerd, mounts, loop devices)"
for tool in containerd containerd-shim-runc-v2 nerdctl runc umoci skopeo docker-registry busybox go; do
  command -v "$tool" >/dev/null || die "$tool not found: run \`make deps\` first"
done
case $DEMO_IMAGE in busybox | python) ;; *) die "DEMO_IMAGE=$DEMO_IMAGE: want busybox or python" ;; esac

# A short path: unix sockets live in it (108-byte limit).
WORK=$(mktemp -d /tmp/obd-demo.XXXXXX)
NS=obd-demo-$$
CTRD_SOCK=$WORK/containerd.sock
BDD_SOCK=$WORK/bdd.sock
SN_SOCK=$WORK/snapshotter.sock
REGISTRY_PID= BDD_PID= SN_PID= CTRD_PID=

# stop PID NAME: SIGTERM, then SIGKILL after 15 s.
stop() {
  local pid=$1 name=$2 i
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    info "$name did not stop on SIGTERM: killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# unmount_under DIR: lazily unmounts every mount at or below DIR, deepest first.
unmount_under() {
  local dir=$1 mp
  awk -v d="$dir" '$5 == d || index($5, d "/") == 1 {print length($5), $5}' /proc/self/mountinfo | sort -rn | cut -d' ' -f2- |
    while read -r mp; do umount -l "$mp" 2>/dev/null || true; done
}

cleanup() {
  local status=$?
  trap - EXIT ERR
  trap "" INT TERM # a second Ctrl-C must not cut the cleanup short
  set +e
  step "Cleaning up"
  if [ -n "$CTRD_PID" ] && kill -0 "$CTRD_PID" 2>/dev/null; then
    local ids
    ids=$(nerdctl_ ps -aq 2>/dev/null || true)
    [ -n "$ids" ] && nerdctl_ rm -f $ids >/dev/null 2>&1 || true
  fi
  stop "$CTRD_PID" containerd
  # Shims of this namespace outlive containerd; they are ours, found by the unique namespace.
  local pid
  for pid in $(pgrep -f -- "-namespace $NS( |$)" || true); do stop "$pid" "shim $pid"; done
  stop "$SN_PID" overlaybd-snapshotter
  unmount_under "$WORK/snapshotter"
  unmount_under "$WORK/containerd"
  if [ -n "$BDD_PID" ] && kill -0 "$BDD_PID" 2>/dev/null; then
    local id
    for id in $("$BIN/obd" ls --socket "$BDD_SOCK" 2>/dev/null | awk 'NR>1 {print $1}'); do
      "$BIN/obd" detach --socket "$BDD_SOCK" "$id" >/dev/null 2>&1 || info "could not detach bdd device $id"
    done
  fi
  stop_bdd
  unmount_under "$WORK"
  local loop
  for loop in $(losetup -a 2>/dev/null | grep -F "$WORK/" | cut -d: -f1); do losetup -d "$loop" 2>/dev/null || true; done
  stop "$REGISTRY_PID" registry
  rm -rf "/run/containerd/runc/$NS" "$WORK"
  info "removed $WORK and every process, mount and device the demo started"
  exit "$status"
}
trap cleanup EXIT
trap 'echo; info "interrupted"; exit 130' INT TERM

# nerdctl_ runs nerdctl on the demo's containerd. Its notes about the loopback registry's plain
# HTTP and cgroup v1, and a benign report of `run --rm` (the shim's connection closing before
# the signal forwarder ends), are noise here; everything else goes through.
NOISE='level=(info|warning)|forward signal child exited'
nerdctl_() {
  NERDCTL_TOML=$WORK/nerdctl.toml nerdctl --address "$CTRD_SOCK" --namespace "$NS" \
    --data-root "$WORK/nerdctl" --cgroup-manager cgroupfs --insecure-registry "$@" 2> >(grep -Ev "$NOISE" >&2 || true)
}
ctr_obd() { "$BIN/ctr-obd" --address "$CTRD_SOCK" --namespace "$NS" "$@" 2> >(grep -Ev "$NOISE" >&2 || true); }

# wait_for WHAT COMMAND...: polls until COMMAND succeeds, for up to 30 s.
wait_for() {
  local what=$1 i
  shift
  for i in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$what did not come up within 30 s (logs in $WORK/*.log)"
}
socket_up() { [ -S "$1" ]; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
now() { date +%s.%N; }
start_bdd() {
  "$BIN/bdd" --config "$WORK/bdd.toml" >>"$WORK/bdd.log" 2>&1 &
  BDD_PID=$!
  wait_for bdd "$BIN/obd" ls --socket "$BDD_SOCK"
}
# stop_bdd stops bdd and the descriptor keeper it starts (which outlives bdd by design, to keep
# FUSE devices alive across a crash) and unmounts what they leave.
stop_bdd() {
  stop "$BDD_PID" bdd
  local keeper
  keeper=$(cat "$WORK/bdd/run/fdkeeper.pid" 2>/dev/null || true)
  if [ -n "$keeper" ]; then stop "$keeper" "bdd fdkeeper"; fi
  unmount_under "$WORK/bdd"
}
no_bdd_devices() { [ "$("$BIN/obd" ls --socket "$BDD_SOCK" | wc -l)" -le 1 ]; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }

step "Building obd's binaries into $BIN"
mkdir -p "$BIN"
(cd "$REPO" && go build -o "$BIN/" ./cmd/obd ./cmd/bdd ./cmd/overlaybd-snapshotter ./cmd/ctr-obd)
info "obd, bdd, overlaybd-snapshotter, ctr-obd"

step "Starting a private registry"
PORT=
for candidate in $(shuf -i 20000-40000 -n 50); do
  if ! port_open "$candidate"; then PORT=$candidate; break; fi
done
[ -n "$PORT" ] || die "no free port for the registry"
REGISTRY=127.0.0.1:$PORT
mkdir -p "$WORK/registry"
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: $REGISTRY
EOF
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGISTRY_PID=$!
wait_for registry port_open "$PORT"
info "http://$REGISTRY"

step "Starting bdd, the overlaybd snapshotter and containerd (namespace $NS)"
mkdir -p "$WORK/bdd"
cat >"$WORK/bdd.toml" <<EOF
state_dir = "$WORK/bdd/state"
socket = "$BDD_SOCK"
run_dir = "$WORK/bdd/run"
log_level = "info"
[cache]
dir = "$WORK/bdd/cache"
size = "8GiB"
EOF
start_bdd
cat >"$WORK/snapshotter.json" <<EOF
{"root": "$WORK/snapshotter", "address": "$SN_SOCK", "bddSocket": "$BDD_SOCK"}
EOF
"$BIN/overlaybd-snapshotter" --config "$WORK/snapshotter.json" >"$WORK/snapshotter.log" 2>&1 &
SN_PID=$!
wait_for overlaybd-snapshotter socket_up "$SN_SOCK"
cat >"$WORK/containerd.toml" <<EOF
version = 3
root = "$WORK/containerd/root"
state = "$WORK/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.nri.v1.nri"]
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[proxy_plugins.overlaybd]
  type = "snapshot"
  address = "$SN_SOCK"
EOF
: >"$WORK/nerdctl.toml"
containerd --config "$WORK/containerd.toml" >"$WORK/containerd.log" 2>&1 &
CTRD_PID=$!
wait_for containerd socket_up "$CTRD_SOCK"
info "bdd $BDD_SOCK, snapshotter $SN_SOCK, containerd $CTRD_SOCK"

step "Building the sample image ($DEMO_IMAGE) offline"
LAYOUT=$WORK/image
ROOTFS=$WORK/rootfs
case $DEMO_IMAGE in
  busybox)
    mkdir -p "$ROOTFS/bin"
    cp "$(command -v busybox)" "$ROOTFS/bin/busybox"
    for applet in sh cat ls echo; do ln -s busybox "$ROOTFS/bin/$applet"; done
    INSERT_SRC=$ROOTFS/bin INSERT_DST=/bin
    CONFIG=(--config.env PATH=/bin --config.cmd /bin/sh)
    RUN=(sh -c 'cat /bin/busybox > /dev/null; echo hello from busybox')
    ;;
  python)
    info "Debian bookworm + python3 by debootstrap (scripts/mkrootfs.sh; minutes the first time)"
    INSERT_SRC=$(bash "$REPO/scripts/mkrootfs.sh") INSERT_DST=/
    CONFIG=(--config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --config.cmd python3)
    RUN=(python3 -c 'import json, email, http.client; print("hello from python")')
    ;;
esac
umoci init --layout "$LAYOUT"
umoci new --image "$LAYOUT:demo"
if [ "$INSERT_DST" = / ]; then
  # `umoci insert DIR /` writes a tar entry named "/", which converters rightly refuse as an
  # absolute path; unpack + repack writes relative names.
  umoci unpack --image "$LAYOUT:demo" "$WORK/bundle" >/dev/null
  cp -a "$INSERT_SRC/." "$WORK/bundle/rootfs/"
  umoci repack --image "$LAYOUT:demo" "$WORK/bundle"
  rm -rf "$WORK/bundle"
else
  umoci insert --image "$LAYOUT:demo" "$INSERT_SRC" "$INSERT_DST"
fi
umoci config --image "$LAYOUT:demo" "${CONFIG[@]}"
PLAIN_REF=$REGISTRY/demo/$DEMO_IMAGE:plain
OBD_REF=$REGISTRY/demo/$DEMO_IMAGE:obd
skopeo copy --quiet --dest-tls-verify=false "oci:$LAYOUT:demo" "docker://$PLAIN_REF"
info "pushed $PLAIN_REF ($(du -sh "$LAYOUT/blobs" | cut -f1) in the layout)"

step "Converting it with obd convert"
"$BIN/obd" convert --work-dir "$WORK/convert" "$PLAIN_REF" "$OBD_REF" >"$WORK/convert.out" 2>"$WORK/convert.log" ||
  die "obd convert failed: $(tail -n 5 "$WORK/convert.log")"
info "$(cat "$WORK/convert.out")"

step "Lazy start: nerdctl --snapshotter overlaybd run (metadata-only pull, blocks read on demand)"
t0=$(now)
nerdctl_ --snapshotter overlaybd run --quiet --rm --net none "$OBD_REF" "${RUN[@]}" | while read -r line; do info "$line"; done
t1=$(now)
LAZY=$(elapsed "$t0" "$t1")

step "Plain start: nerdctl pull + nerdctl run on containerd's overlayfs snapshotter"
t0=$(now)
nerdctl_ pull --quiet "$PLAIN_REF" >/dev/null
nerdctl_ run --quiet --rm --net none "$PLAIN_REF" "${RUN[@]}" | while read -r line; do info "$line"; done
t1=$(now)
PLAIN=$(elapsed "$t0" "$t1")

step "Recording the lazy start's reads with ctr-obd record-trace (later rpulls prefetch them)"
ctr_obd record-trace --bdd-socket "$BDD_SOCK" --trace-dir "$WORK/traces" "$OBD_REF" "$WORK/start.trace" -- "${RUN[@]}" |
  while read -r line; do info "$line"; done

step "Traced start: bdd restarted with an empty cache, ctr-obd rpull (prefetches the trace) + nerdctl run"
wait_for "the lazy containers' devices to go" no_bdd_devices
stop_bdd
rm -rf "$WORK/bdd/cache"
start_bdd
t0=$(now)
ctr_obd rpull --bdd-socket "$BDD_SOCK" --trace-dir "$WORK/traces" "$OBD_REF" | while read -r line; do info "$line"; done
t_run=$(now)
nerdctl_ --snapshotter overlaybd run --quiet --rm --net none "$OBD_REF" "${RUN[@]}" | while read -r line; do info "$line"; done
t1=$(now)
TRACED=$(elapsed "$t0" "$t1")
TRACED_RUN=$(elapsed "$t_run" "$t1")

step "Start times, command to output ($DEMO_IMAGE, registry on loopback, cold caches)"
printf '    %-58s %6s s\n' "overlayfs: nerdctl pull + run (full download)" "$PLAIN" \
  "overlaybd: nerdctl run (lazy, metadata-only pull)" "$LAZY" \
  "overlaybd + trace: ctr-obd rpull (prefetch) + nerdctl run" "$TRACED"
info "(of the traced start, nerdctl run took $TRACED_RUN s: rpull prefetches before the start,"
info " so on loopback the trace moves reads off the start rather than saving time overall)"
[ "$DEMO_IMAGE" = python ] ||
  info "(a one-binary image gains little from lazy reads; DEMO_IMAGE=python make demo shows a 400 MB one)"
