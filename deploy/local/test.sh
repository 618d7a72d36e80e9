#!/usr/bin/env bash
# The test command: brings the local stack up (idempotent), builds the binaries the
# tests run, and runs every test against the real services.
#   deploy/local/test.sh [extra cargo-nextest arguments, e.g. a test name filter]
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$REPO_ROOT/deploy/local/up.sh"
cd "$REPO_ROOT"
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast -- "$@"
fi
