#!/usr/bin/env bash
# Build the small local images the demo and the tests use (no registry is needed).
# DOCKER_HOST selects the engine, so the same script serves a second Docker host.
set -euo pipefail
cd "$(dirname "$0")/.."
busybox_bin=$(command -v busybox || true)
[ -x /bin/busybox ] && busybox_bin=/bin/busybox
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$busybox_bin" "$ctx/busybox"
cp tests/images/busybox/Dockerfile "$ctx/Dockerfile"
if ! docker image inspect orchestrator-test/busybox:latest >/dev/null 2>&1; then
  docker build -q -t orchestrator-test/busybox:latest "$ctx" >/dev/null
  echo "[setup] built orchestrator-test/busybox:latest"
fi
