#!/usr/bin/env bash
# Start the system on this machine and show it working:
# Redis + Docker engine (installed if missing), a worker, beat and Flower, then one sample tool run.
# The README's first command. The package lives in the project's virtual environment .venv/
# (made by setup.sh); scripts/env.sh puts its commands first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh
# Starts what is not running yet (logs and pid files in $ORCHESTRATOR_STATE_DIR, default
# /var/tmp/orchestrator) and waits until this host's worker heart-beats in Redis. Flower gets
# no default password: `up` generates one (unless ORCHESTRATOR_FLOWER_BASIC_AUTH is set),
# prints it and keeps it in $ORCHESTRATOR_STATE_DIR/flower-credentials.
orchestrator up

echo "[demo] running a sample tool: orchestrator tool run ..."
orchestrator tool run --image orchestrator-test/busybox:latest --session demo \
  --tool-name greet --param NAME=world --memory-mb 64 --timeout 30 -- \
  sh -c 'echo "hello $NAME from $(hostname)"; echo "{\"greeting\": \"hello $NAME\"}"'
echo "[demo] worker, beat and Flower keep running; stop them with: ./scripts/stop.sh"
if [ -z "${ORCHESTRATOR_FLOWER_BASIC_AUTH:-}${FLOWER_BASIC_AUTH:-}" ]; then
  echo "[demo] Flower: http://localhost:5555, user:password in ${ORCHESTRATOR_STATE_DIR:-/var/tmp/orchestrator}/flower-credentials"
fi
echo "[demo] the orchestrator command is .venv/bin/orchestrator (\`source scripts/env.sh\` puts it on PATH)"
