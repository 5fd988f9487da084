#!/usr/bin/env bash
# Rewrite the lock files from pyproject.toml, with uv (from PyPI, in a throwaway virtualenv):
#   requirements.lock      the worker image: the package's dependencies and its `worker` extra
#   requirements-dev.lock  development and CI: the `dev` extra, within requirements.lock's pins
# Pins already in a lock file are kept unless pyproject.toml no longer allows them; options go
# to `uv pip compile`: `scripts/lock.sh --upgrade-package kombu`, or `--upgrade` for all.
# Universal (every platform) for Python 3.11 and later, with the hashes of every file.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9

tool=$(mktemp -d)
trap 'rm -rf "$tool"' EXIT
python3 -m venv "$tool"
"$tool/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"

compile() {
  "$tool/bin/uv" pip compile pyproject.toml --quiet --universal --python-version 3.11 \
    --generate-hashes --custom-compile-command "scripts/lock.sh" "$@"
}
compile --extra worker -o requirements.lock "$@"
compile --extra dev -c requirements.lock -o requirements-dev.lock "$@"
