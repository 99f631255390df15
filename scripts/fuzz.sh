#!/usr/bin/env bash
# Runs every Go fuzz target in the module for a short time (FUZZTIME, default 10s).
# The seed corpora live next to each package under testdata/fuzz/ and always run as
# part of `go test`; this adds a short coverage-guided run on top. Targets are found by
# name in the test files, so no package is compiled just to list them.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-10s}
git ls-files '*_test.go' | xargs grep -H '^func Fuzz[A-Za-z0-9_]*(' | sed 's/(.*//; s/:func / /' |
  while read -r file target; do
    pkg=./$(dirname "$file")
    echo "fuzz: $pkg $target ($fuzztime)"
    go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" -fuzzminimizetime 0s "$pkg" </dev/null
  done
