# The README and CI call these targets.
.PHONY: demo test unit integration lint typecheck layers bench setup stop hostb-up hostb-down

demo:           ## install what is missing, start a worker and Flower, run a sample tool
	bash scripts/demo.sh

test:           ## the whole suite from a fresh machine (what .ci/run calls)
	bash scripts/test.sh

setup:          ## install and start Redis, the Docker engine, the package, test images
	bash scripts/setup.sh

unit:           ## unit tests only: no servers needed
	python -m pytest -p no:cacheprovider tests/unit

integration:    ## integration tests (real Redis, Docker engine, workers)
	python -m pytest -p no:cacheprovider tests/integration

lint:
	ruff check . && ruff format --check .

typecheck:
	mypy

layers:         ## the layering check: only orchestrator/engine imports docker, no cycles upward
	lint-imports --no-cache

bench:          ## every benchmark, each against raw docker-py in the same run, ratios printed
	python bench/run_overhead.py
	python bench/bench_stats.py
	python bench/bench_relics.py
	python bench/bench_two_hosts.py

stop:           ## stop the demo's worker, beat and Flower
	bash scripts/stop.sh

hostb-up:       ## a second Docker host in a network namespace (multi-host tests)
	bash scripts/hostb.sh up

hostb-down:
	bash scripts/hostb.sh down

.PHONY: config-reference
config-reference: ## rewrite README's settings table from orchestrator/settings.py
	python -m orchestrator.config_reference README.md
