#!/usr/bin/env bash
# Install and start everything orchestrator needs on a fresh Debian/Ubuntu machine (as root):
# Redis, the Docker engine, the Python package, and the local test images. With --test, also
# what only the tests use: Chromium, docker-compose and debootstrap (tests/integration/
# test_compose.py builds its base images with scripts/base-image.sh) and RabbitMQ (started
# by scripts/test.sh's amqp pass).
# Idempotent: safe to run again; it only starts what is not running.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE_DIR=${ORCHESTRATOR_STATE_DIR:-/var/tmp/orchestrator}
mkdir -p "$STATE_DIR"
log() { printf '[setup] %s\n' "$*"; }

need_pkgs=()
command -v dockerd >/dev/null || need_pkgs+=(docker.io)
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need_pkgs+=(busybox-static)
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v nsenter >/dev/null || need_pkgs+=(util-linux)
if [ "${1:-}" = "--test" ]; then  # what only the test suite needs
  [ -x /usr/bin/chromium ] || need_pkgs+=(chromium)  # the Flower dashboard test
  command -v docker-compose >/dev/null || need_pkgs+=(docker-compose)  # the compose test
  command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)  # its local base images
  command -v rabbitmq-server >/dev/null || need_pkgs+=(rabbitmq-server)  # the amqp test pass
  command -v openssl >/dev/null || need_pkgs+=(openssl)  # certificates for the TLS Redis test
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  log "starting redis-server on 127.0.0.1:6379"
  redis-server --bind "127.0.0.1" --port 6379 --daemonize yes \
    --dir "$STATE_DIR" --logfile "$STATE_DIR/redis.log" --save "" --appendonly no
  for _ in $(seq 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

if ! timeout 5 docker info >/dev/null 2>&1; then
  log "starting dockerd"
  nohup dockerd >"$STATE_DIR/dockerd.log" 2>&1 &
  for _ in $(seq 120); do timeout 5 docker info >/dev/null 2>&1 && break; sleep 0.5; done
  timeout 5 docker info >/dev/null 2>&1 || { log "dockerd did not start; see $STATE_DIR/dockerd.log"; exit 1; }
fi

if ! python3 -c 'import orchestrator, celery, docker, fakeredis, ruff' >/dev/null 2>&1 \
   || [ pyproject.toml -nt "$STATE_DIR/pip.stamp" ]; then
  log "installing the Python package and its dev extras"
  python3 -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v -e '^WARNING: Running pip as' -e 'is ignored: it is neither' || true
  touch "$STATE_DIR/pip.stamp"
fi

bash scripts/build-test-images.sh
log "ready: redis $(redis-cli info server | awk -F: '/redis_version/{print $2}' | tr -d '\r'), docker $(docker version -f '{{.Server.Version}}')"
