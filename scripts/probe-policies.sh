#!/usr/bin/env bash
# Live against simulated keep-alive policies (policy/RESULTS.md, "Live against simulated"):
# starts obd-lambda on a private unix socket with its policies' clock 60x as fast, replays a
# synthetic trace with `obd probe --policies` (a trace minute lasting 1 s) and stops the server.
# Needs root and the python3 rootfs (scripts/mkrootfs.sh). Arguments go to obd probe, e.g.
#   bash scripts/probe-policies.sh --seed 2 --minutes 120
set -euo pipefail
BIN=${BIN:-bin}
DEPS=${OBD_DEPS:-/opt/obd-deps}
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
"$BIN/obd-lambda" --rootfs-dir "$DEPS/rootfs" --policy-time-scale 60 --listen "$dir/lambda.sock" \
	--state-dir "$dir/state" --log-level warn 2>"$dir/server.log" &
pid=$!
for _ in $(seq 100); do [ -S "$dir/lambda.sock" ] && break; sleep 0.1; done
uptime
"$BIN/obd" probe --server "unix://$dir/lambda.sock" --minute 1s \
	--policies fixed-10m,hybrid,predictive,reuse+fixed-10m,reuse+hybrid \
	--mix periodic=7,poisson=7,bursty=3,rare=3 --minutes 240 --seed 1 --per-function "$@"
uptime
