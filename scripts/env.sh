#!/usr/bin/env bash
# The project's virtual environment first on PATH: `.venv/` in the repository, made by
# scripts/setup.sh, holds the package, its dev extras and their commands (python3, pytest,
# ruff, mypy, lint-imports, celery, orchestrator). The system Python is never touched.
#
#   source scripts/env.sh            in a script, or in your bash/zsh (like .venv/bin/activate)
#   bash scripts/env.sh CMD [ARG]... run one command with it (what the Makefile does)
#
# Sourced, it only sets PATH and VIRTUAL_ENV (no shell options: an interactive shell must not
# inherit `set -e`); run as a command, it fails clearly when setup.sh has not made the
# environment yet.
ORCHESTRATOR_VENV_BIN=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)/.venv/bin
case ":$PATH:" in
  ":$ORCHESTRATOR_VENV_BIN:"*) ;;  # already first
  *) PATH="$ORCHESTRATOR_VENV_BIN:$PATH" ;;
esac
VIRTUAL_ENV=${ORCHESTRATOR_VENV_BIN%/bin}
export PATH VIRTUAL_ENV
hash -r 2>/dev/null || true  # forget where the shell found python3, pytest... before

if [ "${BASH_SOURCE[0]:-}" = "$0" ]; then  # executed, not sourced
  set -euo pipefail
  if [ ! -x "$ORCHESTRATOR_VENV_BIN/python3" ]; then
    echo "[env] no virtual environment at $VIRTUAL_ENV: run ./scripts/setup.sh first" >&2
    exit 1
  fi
  if [ $# -eq 0 ]; then
    echo "usage: bash $0 CMD [ARG]...   (or: source $0)" >&2
    exit 2
  fi
  exec "$@"
fi
