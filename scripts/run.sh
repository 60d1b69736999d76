#!/usr/bin/env bash
# The main job, on one machine as root: install, build, start a private containerd with
# netready serve in front of it, run a pod through it, and serve until Ctrl-C.
# Pass --once to exit after the demo pod.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --bin netready --bin dev-node
exec target/release/dev-node --netready target/release/netready "$@"
