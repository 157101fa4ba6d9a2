#!/usr/bin/env bash
# Runs the property-based fuzz targets far longer than CI does (which runs
# each with proptest's default 256 cases). Usage: bench/fuzz.sh [CASES]
# Targets: the data plane's wire format, every protobuf message a daemon
# accepts, layouts, bitmaps, status details, task-ids, URLs, config files,
# mount options, and any sequence of calls against the scheduler's state.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROPTEST_CASES="${1:-20000}"
cargo test --release -p peerd fuzz
cargo test --release -p api fuzz
cargo test --release -p scheduler fuzz
cargo test --release -p dffs fuzz
