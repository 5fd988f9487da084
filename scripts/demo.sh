#!/usr/bin/env bash
# Start the system on this machine and show it working:
# Redis + Docker engine (installed if missing), a worker, Flower, then one sample tool run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
STATE_DIR=${ORCHESTRATOR_STATE_DIR:-/var/tmp/orchestrator}
export ORCHESTRATOR_HOST_NAME=${ORCHESTRATOR_HOST_NAME:-$(hostname)}

if ! pgrep -f "celery -A worker worker" >/dev/null; then
  echo "[demo] starting a worker for host $ORCHESTRATOR_HOST_NAME (log: $STATE_DIR/worker.log)"
  nohup celery -A worker worker -l info >"$STATE_DIR/worker.log" 2>&1 &
fi
if ! pgrep -f "celery -A worker flower" >/dev/null; then
  echo "[demo] starting Flower on http://localhost:5555 (log: $STATE_DIR/flower.log)"
  nohup celery -A worker flower >"$STATE_DIR/flower.log" 2>&1 &
fi
for _ in $(seq 60); do
  redis-cli exists "orch:host:$ORCHESTRATOR_HOST_NAME" | grep -q 1 && break
  sleep 0.5
done

echo "[demo] running a sample tool: orchestrator tool run ..."
orchestrator tool run --image orchestrator-test/busybox:latest --session demo \
  --tool-name greet --param NAME=world --memory-mb 64 --timeout 30 -- \
  sh -c 'echo "hello $NAME from $(hostname)"; echo "{\"greeting\": \"hello $NAME\"}"'
echo "[demo] worker and Flower keep running; stop them with: make stop"
