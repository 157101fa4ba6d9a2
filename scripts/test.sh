#!/usr/bin/env bash
# Runs every check and test of the workspace, installing what a fresh
# machine lacks. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_root "$@"
repair_dev_null
# Nothing here reads input; a stray stdin (a pipe from a job runner) must
# not reach the tools either.
exec </dev/null
ensure_cargo
apt_install fuse3 iproute2 procps coreutils util-linux build-essential python3 curl

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== build"
cargo build --workspace --bins

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi
