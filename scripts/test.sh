#!/usr/bin/env bash
# Run the whole test suite from a fresh machine: install and start what the tests need
# (Redis, Docker engine, test images, a second Docker host), then lint, type-check and test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CI=${CI:-true}   # integration tests fail (never skip) when a service is missing
status=0
echo "[test] ruff";  ruff check . && ruff format --check . || status=1
echo "[test] mypy";  mypy || status=1
mkdir -p artifacts
echo "[test] pytest"
python -m pytest -p no:cacheprovider "$@" || status=1
exit $status
