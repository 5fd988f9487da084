#!/usr/bin/env bash
# Stop the worker, beat and Flower that ./scripts/demo.sh started with `orchestrator up`
# (Redis and dockerd keep running).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh
if ! command -v orchestrator >/dev/null; then
  echo "[stop] the orchestrator command is not installed (no .venv): nothing was started"
  exit 0
fi
orchestrator down
echo "[stop] worker, beat and Flower stopped"
