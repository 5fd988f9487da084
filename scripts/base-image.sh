#!/usr/bin/env bash
# Build local stand-ins for the registry images docker-compose.yml uses, on machines where
# no registry is reachable (CI, this project's VMs):
#   local/debian:bookworm  a debootstrap'ed minbase Debian, imported as an image
#   local/python:3.11      Debian's python3 (3.11) with pip and venv: ORCHESTRATOR_BASE_IMAGE
#   local/redis:7          Debian's redis-server 7: ORCHESTRATOR_REDIS_IMAGE
# Usage: scripts/base-image.sh [debian|python|redis]...   (no argument: all three; the last
# two need the first, which is made when missing; tests/integration/test_fresh_machine.py
# needs only `debian`).
# Idempotent: an image that exists is kept. Needs root, debootstrap and apt access.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_IMAGE=local/debian:bookworm
PYTHON_IMAGE=local/python:3.11
REDIS_IMAGE=local/redis:7
MIRROR=${ORCHESTRATOR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
STATE_DIR=${ORCHESTRATOR_STATE_DIR:-/var/tmp/orchestrator}
log() { printf '[base-image] %s\n' "$*"; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
wanted=" ${*:-debian python redis} "
for name in $wanted; do
  case $name in
    debian | python | redis) ;;
    *) echo "usage: $0 [debian|python|redis]..." >&2; exit 2 ;;
  esac
done
wants() { [[ $wanted == *" $1 "* ]]; }

if ! have_image "$DEBIAN_IMAGE"; then
  command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  mkdir -p "$STATE_DIR"
  root=$(mktemp -d "$STATE_DIR/bookworm.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  log "debootstrap --variant=minbase bookworm (about a minute)"
  debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$STATE_DIR/debootstrap.log" 2>&1 \
    || { log "debootstrap failed; see $STATE_DIR/debootstrap.log"; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import -c 'CMD ["bash"]' - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$root"
  trap - EXIT
  log "imported $DEBIAN_IMAGE"
fi

# Images built FROM the imported Debian; apt reaches the mirror through the host's network.
build_from_debian() {
  local tag=$1 dockerfile=$2
  have_image "$tag" && return 0
  local out
  # The legacy builder's deprecation notice goes to stderr: show stderr only on failure.
  if ! out=$(printf '%s\n' "$dockerfile" | docker build -q --network host -t "$tag" - 2>&1); then
    printf '%s\n' "$out" >&2
    log "building $tag failed"
    exit 1
  fi
  log "built $tag"
}

if wants python; then
  build_from_debian "$PYTHON_IMAGE" "FROM $DEBIAN_IMAGE
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      python3 python3-pip python3-venv ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
CMD [\"python3\"]"
fi

if wants redis; then
  build_from_debian "$REDIS_IMAGE" "FROM $DEBIAN_IMAGE
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \\
 && rm -rf /var/lib/apt/lists/* \\
 && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD [\"redis-server\", \"--dir\", \"/data\"]"
fi
