#!/usr/bin/env bash
# obd demo (`make demo`): what lazy images are for. One image is started on fresh nodes that
# reach its registry only over an emulated WAN link: by containerd's full pull onto overlayfs,
# lazily by obd, and lazily with the start trace the registry serves.
#
# The link is the cold-start benchmark's shaped one (bench/coldstart): 100 Mbit/s shared by all
# responses and 20 ms before each request, done at the HTTP level by internal/faultproxy in
# demo/wanlink (the kernel's netem is not needed). Setup (push, convert) uses loopback.
#
# Everything runs privately under one temp dir and is removed on exit and on Ctrl-C: a registry
# (Debian's docker-registry) on 127.0.0.1, the link in front of it, and per node bdd, the
# overlaybd snapshotter and containerd (own root, state, sockets), and their containers.
#
# Steps: build obd's binaries and the link; build the sample image offline; push it and convert
# it with `obd convert`; then, each on a fresh node (new containerd root and state, new
# snapshotter root and trace dir, bdd with an empty cache) with the page cache dropped:
#   1. nerdctl pull + nerdctl run of the original image on overlayfs (timed)
#   2. nerdctl --snapshotter overlaybd run of the converted image: metadata only, blocks on
#      demand (timed)
#   3. ctr-obd rpull + ctr-obd record-trace --push: the start's reads, pushed to the registry
#      as a trace artifact of the image (not timed; an empty trace fails the demo)
#   4. nerdctl --snapshotter overlaybd run: the snapshotter finds the trace in the registry and
#      bdd replays it while the container starts (timed; the logs must show both, or the demo
#      fails; skipped, saying so, where the snapshotter has no registry traces (remoteTraces))
# and a table of the times, the bytes that crossed the link and the ratios.
#
# The python image (Debian bookworm + python3, 173 MB, 66 MB gzipped) is debootstrapped by
# scripts/mkrootfs.sh the first time, which took 91 s here (3-4 minutes on a slow mirror); later
# runs reuse it and build the image from it in seconds. A whole run takes about 2 minutes then.
#
# Needs root and the tools of `make deps` (scripts/setup.sh). Variables:
#   DEMO_IMAGE   python (default) or busybox (one static binary: quick, but nothing to be lazy about)
#   OBD_DEPS     where setup.sh installed containerd, nerdctl (default /opt/obd-deps)
#   BIN          where obd's binaries are built (default ./bin)
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OBD_DEPS=${OBD_DEPS:-/opt/obd-deps}
BIN=${BIN:-$REPO/bin}
DEMO_IMAGE=${DEMO_IMAGE:-python}
LINK_LATENCY_MS=20
LINK_MBITS=100
export PATH="$OBD_DEPS/bin:$PATH"

# The demo's own output: a step that fails inside a redirected function call (`f >/dev/null`)
# runs the ERR and EXIT traps with that redirection in force, and the cleanup must still be seen.
exec {OUT_FD}>&1 {ERR_FD}>&2
step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'demo: ERROR: %s\n' "$*" >&"$ERR_FD"; exit 1; }
trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

[ "$(id -u)" = 0 ] || die "must run as root (containerd, mounts, loop devices)"
for tool in containerd containerd-shim-runc-v2 nerdctl runc umoci skopeo docker-registry busybox go; do
  command -v "$tool" >/dev/null || die "$tool not found: run \`make deps\` first"
done
case $DEMO_IMAGE in busybox | python) ;; *) die "DEMO_IMAGE=$DEMO_IMAGE: want python or busybox" ;; esac

# A short path: unix sockets live in it (108-byte limit).
WORK=$(mktemp -d /tmp/obd-demo.XXXXXX)
NS=obd-demo-$$
REGISTRY_PID= LINK_PID=
# The running node: its directory, sockets and daemons (node_start, node_stop).
NODE= CTRD_SOCK= BDD_SOCK= SN_SOCK= BDD_PID= SN_PID= CTRD_PID=

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
  exec 1>&"$OUT_FD" 2>&"$ERR_FD"
  step "Cleaning up"
  node_stop
  stop "$LINK_PID" wanlink
  stop "$REGISTRY_PID" registry
  unmount_under "$WORK"
  rm -rf "/run/containerd/runc/$NS" "$WORK"
  info "removed $WORK and every process, mount and device the demo started"
  exit "$status"
}
trap cleanup EXIT
trap 'echo; info "interrupted"; exit 130' INT TERM

# nerdctl_ runs nerdctl on the node's containerd. Its notes about the registry's plain HTTP and
# cgroup v1, and a benign report of `run --rm` (the shim's connection closing before the signal
# forwarder ends), are noise here; everything else goes through.
NOISE='level=(info|warning)|forward signal child exited'
nerdctl_() {
  NERDCTL_TOML=$WORK/nerdctl.toml nerdctl --address "$CTRD_SOCK" --namespace "$NS" \
    --data-root "$NODE/nerdctl" --cgroup-manager cgroupfs --insecure-registry "$@" 2> >(grep -Ev "$NOISE" >&2 || true)
}
ctr_obd() { "$BIN/ctr-obd" --address "$CTRD_SOCK" --namespace "$NS" "$@" 2> >(grep -Ev "$NOISE" >&2 || true); }
# indent prints each line of its input as progress output.
indent() { while IFS= read -r line; do info "$line"; done; }

# wait_for WHAT COMMAND...: polls until COMMAND succeeds, for up to 30 s.
wait_for() {
  local what=$1 i
  shift
  for i in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$what did not come up within 30 s (logs in $WORK)"
}
socket_up() { [ -S "$1" ]; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", a / b}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }

# node_start NAME: a fresh node under $WORK/NAME: bdd with an empty cache and state, the
# overlaybd snapshotter with a new root and an empty trace dir, containerd with a new root and
# state, both snapshotters (overlayfs built in, overlaybd as a proxy plugin).
node_start() {
  NODE=$WORK/$1
  CTRD_SOCK=$NODE/containerd.sock BDD_SOCK=$NODE/bdd.sock SN_SOCK=$NODE/snapshotter.sock
  mkdir -p "$NODE"
  cat >"$NODE/bdd.toml" <<EOF
state_dir = "$NODE/bdd/state"
socket = "$BDD_SOCK"
run_dir = "$NODE/bdd/run"
log_level = "info"
[cache]
dir = "$NODE/bdd/cache"
size = "8GiB"
EOF
  "$BIN/bdd" --config "$NODE/bdd.toml" >"$NODE/bdd.log" 2>&1 &
  BDD_PID=$!
  wait_for bdd "$BIN/obd" ls --socket "$BDD_SOCK"
  cat >"$NODE/snapshotter.json" <<EOF
{"root": "$NODE/snapshotter", "address": "$SN_SOCK", "bddSocket": "$BDD_SOCK", "traceDir": "$NODE/traces"}
EOF
  "$BIN/overlaybd-snapshotter" --config "$NODE/snapshotter.json" >"$NODE/snapshotter.log" 2>&1 &
  SN_PID=$!
  wait_for overlaybd-snapshotter socket_up "$SN_SOCK"
  cat >"$NODE/containerd.toml" <<EOF
version = 3
root = "$NODE/containerd/root"
state = "$NODE/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.nri.v1.nri"]
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[proxy_plugins.overlaybd]
  type = "snapshot"
  address = "$SN_SOCK"
EOF
  containerd --config "$NODE/containerd.toml" >"$NODE/containerd.log" 2>&1 &
  CTRD_PID=$!
  wait_for containerd socket_up "$CTRD_SOCK"
  info "node $1: bdd, overlaybd-snapshotter and containerd in $NODE, nothing cached"
}

# node_stop stops the running node's containers and daemons and frees its mounts and devices.
node_stop() {
  [ -n "$NODE" ] || return 0
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
  unmount_under "$NODE/snapshotter"
  unmount_under "$NODE/containerd"
  if [ -n "$BDD_PID" ] && kill -0 "$BDD_PID" 2>/dev/null; then
    local id
    for id in $("$BIN/obd" ls --socket "$BDD_SOCK" 2>/dev/null | awk 'NR>1 {print $1}'); do
      "$BIN/obd" detach --socket "$BDD_SOCK" "$id" >/dev/null 2>&1 || info "could not detach bdd device $id"
    done
  fi
  stop "$BDD_PID" bdd
  # bdd's descriptor keeper outlives bdd by design (it keeps FUSE devices alive across a crash).
  local keeper
  keeper=$(cat "$NODE/bdd/run/fdkeeper.pid" 2>/dev/null || true)
  if [ -n "$keeper" ]; then stop "$keeper" "bdd fdkeeper"; fi
  unmount_under "$NODE"
  local loop
  for loop in $(losetup -a 2>/dev/null | grep -F "$NODE/" | cut -d: -f1 || true); do losetup -d "$loop" 2>/dev/null || true; done
  CTRD_PID= SN_PID= BDD_PID= NODE=
}

# link_stats prints "REQUESTS BYTES": what crossed the link since it started.
link_stats() {
  local reply
  exec 4<>"/dev/tcp/${LINK_STATS%:*}/${LINK_STATS#*:}"
  printf 'GET / HTTP/1.0\r\n\r\n' >&4
  reply=$(cat <&4)
  exec 4<&-
  awk '$1 == "requests" {r = $2} $1 == "bytes" {b = $2} END {print r, b}' <<<"${reply//$'\r'/}"
}

# timed NAME DESCRIPTION COMMAND...: runs COMMAND from cold caches, its output indented, and
# records its wall time and what crossed the link in SECS_NAME, REQS_NAME and BYTES_NAME.
timed() {
  local name=$1 what=$2 t0 t1 r0 b0 r1 b1
  shift 2
  sync
  echo 3 >/proc/sys/vm/drop_caches
  read -r r0 b0 < <(link_stats)
  t0=$(now)
  "$@"
  t1=$(now)
  read -r r1 b1 < <(link_stats)
  printf -v "SECS_$name" '%s' "$(elapsed "$t0" "$t1")"
  printf -v "REQS_$name" '%s' "$((r1 - r0))"
  printf -v "BYTES_$name" '%s' "$((b1 - b0))"
  printf -v "WHAT_$name" '%s' "$what"
  local secs="SECS_$name" reqs="REQS_$name" bytes="BYTES_$name"
  info "took ${!secs} s; ${!reqs} requests and $(mib "${!bytes}") over the link"
}

full_pull_run() {
  nerdctl_ pull --quiet "$PLAIN_REF" >/dev/null
  nerdctl_ run --quiet --rm --net none "$PLAIN_REF" "${RUN[@]}" | indent
}
# record_trace runs the image once on the node with bdd recording its reads and pushes the trace
# to the registry, attached to the image. A trace that is empty or too small to be a start's
# (its reads served from a cache) is refused by ctr-obd, and the demo fails on it.
record_trace() {
  ctr_obd rpull --plain-http --bdd-socket "$BDD_SOCK" --trace-dir "$NODE/traces" --no-prefetch "$OBD_REF" | indent
  if ! ctr_obd record-trace --plain-http --push --bdd-socket "$BDD_SOCK" --trace-dir "$NODE/traces" \
    "$OBD_REF" "$NODE/start.trace" -- "${RUN[@]}" >"$NODE/record.out" 2>&1; then
    indent <"$NODE/record.out"
    die "ctr-obd record-trace kept no trace: a cold start must read its image from the registry"
  fi
  indent <"$NODE/record.out"
  grep -q '^pushed start trace' "$NODE/record.out" || die "ctr-obd record-trace --push did not push the trace"
  TRACE_SUMMARY=$(sed -n 's/^recorded a trace of \([^ ]* blobs, [^ ]* ranges, [^ ]*\) in .*/\1/p' "$NODE/record.out")
}
# show_log_line WHAT FILE PATTERN: prints the first line of FILE matching the extended regular
# expression PATTERN (waiting up to 30 s for it), or fails the demo saying WHAT is missing.
show_log_line() {
  local what=$1 file=$2 pattern=$3 i line
  for i in $(seq 300); do
    line=$(grep -m1 -E "$pattern" "$file" || true)
    [ -n "$line" ] && break
    sleep 0.1
  done
  [ -n "$line" ] || die "$what: no line matching '$pattern' in $file"
  info "$(basename "$file"): $line"
}
lazy_run() { nerdctl_ --snapshotter overlaybd run --quiet --rm --net none "$OBD_REF" "${RUN[@]}" | indent; }

step "Building obd's binaries into $BIN and the WAN link"
mkdir -p "$BIN"
(cd "$REPO" && go build -o "$BIN/" ./cmd/obd ./cmd/bdd ./cmd/overlaybd-snapshotter ./cmd/ctr-obd &&
  go build -o "$WORK/wanlink" ./demo/wanlink)
info "obd, bdd, overlaybd-snapshotter, ctr-obd; wanlink (demo/wanlink)"

step "Starting a private registry and the emulated WAN link in front of it"
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
"$WORK/wanlink" --upstream "$REGISTRY" --storage "$WORK/registry" --latency "${LINK_LATENCY_MS}ms" \
  --bandwidth "$LINK_MBITS" >"$WORK/wanlink.log" 2>&1 &
LINK_PID=$!
wait_for wanlink grep -q 'listening on' "$WORK/wanlink.log"
LINK=$(sed -n 's/.*listening on \([^,]*\),.*/\1/p' "$WORK/wanlink.log")
LINK_STATS=$(sed -n 's/.*stats on \(.*\)$/\1/p' "$WORK/wanlink.log")
LINK_DESC="$LINK_MBITS Mbit/s shared, $LINK_LATENCY_MS ms per request"
info "registry http://$REGISTRY (loopback: the demo's setup pushes and converts through it)"
info "WAN link http://$LINK -> registry: $LINK_DESC (every node pulls through it)"

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
    info "Debian bookworm + python3 (scripts/mkrootfs.sh: debootstrap, 1.5-4 minutes the first time, then reused)"
    t0=$(now)
    INSERT_SRC=$(bash "$REPO/scripts/mkrootfs.sh") INSERT_DST=/
    info "rootfs $INSERT_SRC ready in $(elapsed "$t0" "$(now)") s"
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
skopeo copy --quiet --dest-tls-verify=false "oci:$LAYOUT:demo" "docker://$REGISTRY/demo/$DEMO_IMAGE:plain"
info "pushed demo/$DEMO_IMAGE:plain ($(du -sh "$LAYOUT/blobs" | cut -f1) gzipped)"

step "Converting it with obd convert (zstd in 16 KiB blocks, as the benchmark's images)"
"$BIN/obd" convert --algorithm zstd --block-size 16K --work-dir "$WORK/convert" \
  "$REGISTRY/demo/$DEMO_IMAGE:plain" "$REGISTRY/demo/$DEMO_IMAGE:obd" >"$WORK/convert.out" 2>"$WORK/convert.log" ||
  die "obd convert failed: $(tail -n 5 "$WORK/convert.log")"
indent <"$WORK/convert.out"
PLAIN_REF=$LINK/demo/$DEMO_IMAGE:plain
OBD_REF=$LINK/demo/$DEMO_IMAGE:obd

step "1. Full pull: nerdctl pull + nerdctl run of the original image on overlayfs (fresh node)"
node_start full
timed full "nerdctl pull + run, overlayfs: the whole image crosses the link" full_pull_run
node_stop

step "2. Lazy start: nerdctl --snapshotter overlaybd run of the converted image (fresh node)"
info "the pull fetches the manifest and config; bdd reads blocks from the registry as the container touches them"
node_start lazy
timed lazy "nerdctl run, overlaybd: metadata pull, blocks read on demand" lazy_run
node_stop

step "3. Recording the start's reads once: ctr-obd rpull + ctr-obd record-trace --push (fresh node)"
info "bdd records which ranges of which layer blobs the start reads; the trace goes to the registry as an"
info "OCI artifact whose subject is the image's manifest (the image itself is not changed)"
node_start record
timed record "ctr-obd rpull + record-trace --push: records and pushes the trace, once per image" record_trace
node_stop

step "4. Lazy start with the registry's trace: nerdctl --snapshotter overlaybd run (fresh node)"
# The snapshotter's registry traces (its remoteTraces setting, bdd's FetchTrace call) are what
# this step shows; a tree without them skips it, saying so.
if grep -qs 'json:"remoteTraces"' "$REPO"/snapshotter/*.go && grep -qs 'rpc FetchTrace' "$REPO/api/bdd/v1/bdd.proto"; then
  info "a node that never ran the image: the snapshotter has bdd look for a start trace attached to the image"
  info "in the registry and replay it, so the start's blocks arrive in a few large requests"
  node_start traced
  timed traced "nerdctl run, overlaybd: lazy, the registry's trace replayed" lazy_run
  show_log_line "bdd did not find the registry's trace" "$NODE/bdd.log" 'registry trace found'
  show_log_line "the snapshotter did not replay the registry's trace" "$NODE/snapshotter.log" \
    'trace prefetched.*(source=registry|"source":"registry")'
  node_stop
  STEPS=(full lazy record traced)
else
  info "SKIPPED: this tree's snapshotter does not look for traces in the registry (no remoteTraces setting,"
  info "no bdd FetchTrace call): the trace pushed in step 3 waits there for a snapshotter that does"
  STEPS=(full lazy record)
fi

step "Start times, command to output ($DEMO_IMAGE; registry over the link: $LINK_DESC; fresh nodes, cold caches)"
printf '    %-7s %7s %9s %11s  %s\n' step seconds requests "over link" "what it did"
for name in "${STEPS[@]}"; do
  secs="SECS_$name" reqs="REQS_$name" bytes="BYTES_$name" what="WHAT_$name"
  printf '    %-7s %7s %9s %11s  %s\n' "$name" "${!secs}" "${!reqs}" "$(mib "${!bytes}")" "${!what}"
done
info ""
printf '    %-34s %5sx\n' "full pull / lazy:" "$(ratio "$SECS_full" "$SECS_lazy")"
if [ -n "${SECS_traced:-}" ]; then
  printf '    %-34s %5sx\n' "full pull / lazy + registry trace:" "$(ratio "$SECS_full" "$SECS_traced")"
fi
info "(the trace, $TRACE_SUMMARY, is recorded once per image; every node after that can replay it)"
