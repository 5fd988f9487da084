#!/usr/bin/env bash
# A local RabbitMQ for the AMQP test pass (scripts/test.sh), listening on 127.0.0.1 only.
#   scripts/rabbitmq.sh start   install if missing, start if not running, wait until it answers
#   scripts/rabbitmq.sh reset   delete every queue and exchange (a clean broker for a pass)
#   scripts/rabbitmq.sh stop    stop the node and its epmd
#   scripts/rabbitmq.sh status  exit 0 when a node answers
set -euo pipefail
log() { printf '[rabbitmq] %s\n' "$*"; }
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
STATE_DIR=${ORCHESTRATOR_STATE_DIR:-/var/tmp/orchestrator}
export RABBITMQ_PID_FILE=$STATE_DIR/rabbitmq.pid

running() { timeout 20 rabbitmqctl -q status >/dev/null 2>&1; }

start() {
  if ! command -v rabbitmq-server >/dev/null; then
    log "installing rabbitmq-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  running && return 0
  log "starting rabbitmq-server on 127.0.0.1:5672"
  mkdir -p "$STATE_DIR"
  chmod a+rx "$STATE_DIR"
  touch "$RABBITMQ_PID_FILE" && chmod a+rw "$RABBITMQ_PID_FILE"  # the node runs as rabbitmq
  # The Debian package may start its service on install; ours is the detached node.
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 90); do
    running && timeout 20 rabbitmqctl -q await_startup >/dev/null 2>&1 && return 0
    sleep 1
  done
  log "rabbitmq-server did not start; see /var/log/rabbitmq/"
  exit 1
}

ctl() {  # rabbitmqctl, quiet unless it fails (reset warns about feature flags on stderr)
  local out
  out=$(timeout 60 rabbitmqctl -q "$@" 2>&1) || { printf '%s\n' "$out" >&2; return 1; }
}

reset() {
  # stop_app/reset/start_app wipes queues, exchanges and bindings; the guest user comes back.
  ctl stop_app && ctl reset && ctl start_app
}

stop() {
  local pid
  pid=$(cat "$RABBITMQ_PID_FILE" 2>/dev/null || true)
  # `stop <pid file>` returns once the node's process has exited.
  timeout 60 rabbitmqctl -q stop "$RABBITMQ_PID_FILE" >/dev/null 2>&1 || true
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true  # the node did not answer: end the process we started
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  fi
  rm -f "$RABBITMQ_PID_FILE"
  epmd -kill >/dev/null 2>&1 || true  # rabbitmqctl starts an epmd when none runs
}

case ${1:-} in
  start) start ;;
  reset) reset ;;
  stop) stop ;;
  status) running ;;
  *) echo "usage: $0 start|reset|stop|status" >&2; exit 2 ;;
esac
