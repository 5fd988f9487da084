# Aliases for those who have make: the README's commands are the scripts themselves
# (./scripts/demo.sh, ./scripts/test.sh), which need no make. Python tools come from the
# project's virtual environment .venv/ (made by scripts/setup.sh): `bash scripts/env.sh CMD`
# runs CMD with .venv/bin first on PATH.
.PHONY: demo test unit integration lint typecheck layers bench setup stop hostb-up hostb-down

VENV_RUN := bash scripts/env.sh

demo:           ## install what is missing, start a worker and Flower, run a sample tool
	bash scripts/demo.sh

test:           ## the whole suite from a fresh machine (what .ci/run calls)
	bash scripts/test.sh

setup:          ## install and start Redis, the Docker engine, the package (.venv), test images
	bash scripts/setup.sh

unit:           ## unit tests only: no servers needed
	$(VENV_RUN) python3 -m pytest -p no:cacheprovider tests/unit

integration:    ## integration tests (real Redis, Docker engine, workers)
	$(VENV_RUN) python3 -m pytest -p no:cacheprovider tests/integration

lint:
	$(VENV_RUN) ruff check . && $(VENV_RUN) ruff format --check .

typecheck:
	$(VENV_RUN) mypy

layers:         ## the layering check: only orchestrator/engine imports docker, no cycles upward
	$(VENV_RUN) lint-imports --no-cache

bench:          ## every benchmark, each against raw docker-py in the same run, ratios printed
	$(VENV_RUN) python3 bench/run_overhead.py
	$(VENV_RUN) python3 bench/bench_stats.py
	$(VENV_RUN) python3 bench/bench_relics.py
	$(VENV_RUN) python3 bench/bench_two_hosts.py
	$(VENV_RUN) python3 bench/bench_exec.py
	$(VENV_RUN) python3 bench/bench_files.py
	$(VENV_RUN) python3 bench/bench_pool.py

stop:           ## stop the demo's worker, beat and Flower
	bash scripts/stop.sh

hostb-up:       ## a second Docker host in a network namespace (multi-host tests)
	bash scripts/hostb.sh up

hostb-down:
	bash scripts/hostb.sh down

.PHONY: config-reference
config-reference: ## rewrite docs/configuration.md's settings table from orchestrator/settings.py
	$(VENV_RUN) python3 -m orchestrator.config_reference docs/configuration.md

.PHONY: mutation-check
mutation-check: ## break each guarantee on a copy (scripts/mutations.txt); its tests must fail. Not in CI
	$(VENV_RUN) bash scripts/mutation-check.sh $(ROWS)
