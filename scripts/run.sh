#!/usr/bin/env bash
# The main job, on one machine as root: install the Debian packages, build netready, and run
# the whole network-ready benchmark with `netready local` (simulated nodes, real CNI plugins,
# pod flux, report). Flags go to `netready local` (see `netready local --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked --bin netready
exec target/release/netready local "$@"
