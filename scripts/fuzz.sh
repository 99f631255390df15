#!/usr/bin/env bash
# Runs every Go fuzz target in the module for a short time (FUZZTIME, default 10s).
# The seed corpora live next to each package under testdata/fuzz/ and always run as
# part of `go test`; this adds a short coverage-guided run on top.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-10s}
for pkg in $(go list ./...); do
  for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
    echo "fuzz: $pkg $target ($fuzztime)"
    go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"
  done
done
