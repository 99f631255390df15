#!/usr/bin/env bash
# Installs what obd's tests need on a fresh machine. Idempotent; see OBD_DEPS.
set -euo pipefail
command -v go >/dev/null || { echo "setup: Go 1.26 is required (https://go.dev/dl/)" >&2; exit 1; }
