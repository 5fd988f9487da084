#!/usr/bin/env bash
# Install and start everything orchestrator needs on a fresh Debian/Ubuntu machine (as root):
# Redis, the Docker engine, the Python package, and the local test images. With --test, also
# what only the tests use: Chromium, docker-compose and debootstrap (tests/integration/
# test_compose.py builds its base images with scripts/base-image.sh) and RabbitMQ (started
# by scripts/test.sh's amqp pass).
# The package and its dev extras go into the project's virtual environment .venv/ (made with
# `python3 -m venv`; apt installs python3-venv when the system Python lacks it), never into
# the system Python (PEP 668). Other scripts reach it through scripts/env.sh.
# Needs only bash, python3 (3.11+) and apt: no make, no pip. pip honours its usual variables
# (PIP_CERT, PIP_INDEX_URL...) and configuration files.
# Idempotent: safe to run again; it only installs what is missing and starts what is not running.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE_DIR=${ORCHESTRATOR_STATE_DIR:-/var/tmp/orchestrator}
mkdir -p "$STATE_DIR"
log() { printf '[setup] %s\n' "$*"; }
VENV=$PWD/.venv
PATH=${PATH//"$VENV/bin:"/}  # the system's python3 makes the environment, not the environment's

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { log "python3 is $(python3 --version 2>&1); orchestrator needs 3.11 or later"; exit 1; }

# A usable environment: its python runs and has pip (a `python3 -m venv` that failed for want
# of python3-venv leaves a python without pip behind).
venv_ok() { "$VENV/bin/python3" -m pip --version >/dev/null 2>&1; }

need_pkgs=()
# `python3 -m venv` needs ensurepip, which Debian and Ubuntu ship in python3-venv.
venv_ok || python3 -c 'import ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
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
  command -v zsh >/dev/null || need_pkgs+=(zsh)  # the completion tests run the real shells
  command -v fish >/dev/null || need_pkgs+=(fish)
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

if ! venv_ok; then
  log "creating the virtual environment $VENV ($(python3 --version))"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
fi
# The package, editable (the checkout is what runs), with its dev extras: at the exact,
# hash-checked versions of requirements-dev.lock (scripts/lock.sh) when the checkout has one.
# -I: not from the working directory, where `import orchestrator` would work uninstalled.
stamp=$VENV/.orchestrator-installed
pip_install() { "$VENV/bin/python3" -m pip install -q --disable-pip-version-check "$@"; }
if [ pyproject.toml -nt "$stamp" ] || [ requirements-dev.lock -nt "$stamp" ] \
   || [ ! -x "$VENV/bin/orchestrator" ] \
   || ! "$VENV/bin/python3" -I -c 'import orchestrator, celery, docker, fakeredis, pytest' \
        >/dev/null 2>&1; then
  log "installing the package and its dev extras into $VENV (a minute or two the first time)"
  if [ -f requirements-dev.lock ]; then
    pip_install -r requirements-dev.lock
    pip_install --no-deps -e .
  else
    pip_install -e '.[dev]'
  fi
  touch "$stamp"
fi
# shellcheck source=scripts/env.sh
source scripts/env.sh

bash scripts/build-test-images.sh
log "ready: redis $(redis-cli info server | awk -F: '/redis_version/{print $2}' | tr -d '\r'), docker $(docker version -f '{{.Server.Version}}')"
log "the orchestrator command is $VENV/bin/orchestrator; \`source scripts/env.sh\` (or \`. .venv/bin/activate\`) puts it and celery, pytest... on your PATH"
