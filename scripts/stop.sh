#!/usr/bin/env bash
# Stop the worker, beat and Flower that `make demo` started with `orchestrator up`
# (Redis and dockerd keep running).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v orchestrator >/dev/null; then
  echo "[stop] the orchestrator command is not installed: nothing was started"
  exit 0
fi
orchestrator down
echo "[stop] worker, beat and Flower stopped"
