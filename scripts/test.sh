#!/usr/bin/env bash
# Run the whole test suite from a fresh machine: install and start what the tests need
# (Redis, Docker engine, test images, a second Docker host), then lint, type-check and test;
# then part of the integration suite again with RabbitMQ as the broker. The README's second
# command and what .ci/run runs. Arguments go to pytest and select a subset
# (`./scripts/test.sh tests/unit`); lint, type-check and layers run every time.
# The tools are the project's virtual environment's (.venv/, made by setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# shellcheck source=scripts/env.sh
source scripts/env.sh
export CI=${CI:-true}   # integration tests fail (never skip) when a service is missing
status=0
echo "[test] ruff";  ruff check . && ruff format --check . || status=1
echo "[test] mypy";  mypy || status=1
echo "[test] layers"; lint-imports --no-cache || status=1
mkdir -p artifacts
echo "[test] pytest"
python3 -m pytest -p no:cacheprovider "$@" || status=1

# The same behaviours with RabbitMQ as the broker (Redis stays the result backend and the
# registry, in a database of its own). Only for a whole run: arguments select a subset.
AMQP_TESTS=(
  tests/integration/test_tools.py
  tests/integration/test_relics.py
  tests/integration/test_stats.py
  tests/integration/test_cli.py
  tests/integration/test_janitor.py
  # Redis-only by design: a plain client on the Redis broker, and draining a dead host's
  # queue (the janitor reads kombu's Redis lists; docs/brokers.md).
  --deselect tests/integration/test_janitor.py::test_messages_on_a_dead_hosts_queue_fail_clearly
)
if [ $# -eq 0 ] && [ "${ORCHESTRATOR_SKIP_AMQP_PASS:-}" != 1 ]; then
  echo "[test] pytest with the amqp broker (RabbitMQ)"
  rabbit_was_running=0
  bash scripts/rabbitmq.sh status && rabbit_was_running=1
  amqp_redis=${ORCHESTRATOR_TEST_AMQP_REDIS_URL:-redis://127.0.0.1:6379/12}
  if bash scripts/rabbitmq.sh start && bash scripts/rabbitmq.sh reset; then
    ORCHESTRATOR_TEST_BROKER_URL=amqp://guest:guest@127.0.0.1:5672// \
    ORCHESTRATOR_TEST_REDIS_URL=$amqp_redis \
      python3 -m pytest -p no:cacheprovider "${AMQP_TESTS[@]}" || status=1
    bash scripts/rabbitmq.sh reset || true       # no queue of the pass stays behind
    [ $rabbit_was_running = 1 ] || bash scripts/rabbitmq.sh stop
  else
    status=1
  fi
  redis-cli -u "$amqp_redis" flushdb >/dev/null || true
fi
exit $status
