#!/usr/bin/env bash
# `flwr run .` through Flower's own CLI, without leaving anything behind.
#
# flwr 1.42 starts a detached local SuperLink for the run and never stops it (it has no
# stop command). This wrapper gives Flower a private FLWR_HOME, streams the run, and on
# exit (also on Ctrl-C or failure) stops the SuperLink it started and its children.
#   scripts/flwr_run.sh --run-config 'num-server-rounds=3' --federation-config 'num-supernodes=100'
set -euo pipefail
cd "$(dirname "$0")/.."
export FLWR_HOME="${FLWR_HOME:-$PWD/.flwr-home}"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1  # dependencies come from .venv
export PATH="$PWD/.venv/bin:$PATH"  # flwr launches flower-superlink by name
# The SuperLink it starts (and the simulation's workers under it) inherit this: the
# live allocator (spry.memory.LIVE_ENV), so client step peaks measure live memory
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-65536}"

stop_superlink() {
  local pids
  pids=$(pgrep -f "flower-superlink.*${FLWR_HOME}/local-superlink" || true)
  for pid in $pids; do
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
  done
}
trap stop_superlink EXIT
flwr run . --stream "$@"
