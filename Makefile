# structq: the commands the README gives. Each one installs what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo observe test test-unit chaos deploy-check bench worker gateway lint clean

setup:
	./scripts/setup.sh

## Start Redis, one worker and the gateway; run the seed examples as jobs; print the results.
demo: setup
	$(PY) -m scripts.demo

## The local stack with Prometheus scraping it and jobs trickling in; prints the URLs (Ctrl-C stops).
observe: setup
	$(PY) -m scripts.observe

## The whole test suite (unit, gateway, and end to end on the bundled model).
test: setup
	$(PY) -m pytest

## Only the fast tests (no engine).
test-unit: setup
	$(PY) -m pytest -m "not e2e"

## The chaos soak: a mixed load on two workers under seeded faults, then every guarantee
## checked (docs/lifecycle.md). MINUTES=10 by default; SEED=n draws the same faults again.
chaos: setup
	$(PY) -m scripts.chaos --minutes $(or $(MINUTES),10) $(if $(SEED),--seed $(SEED))

## The deployment for real with podman: stand-in base images, both images built from their
## Dockerfiles, the compose file's cpu profile up, jobs and faults through it (docs/deploy.md).
deploy-check: setup
	$(PY) -m scripts.deploy.check

## structq against raw vLLM, side by side (see the README's Benchmark section).
bench: setup
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	$(PY) -m bench

## Run the parts by hand (Redis aside): see the README for their settings.
worker: setup
	$(PY) -m worker

gateway: setup
	$(PY) -m api

## ruff, and mypy (strict on shared/, worker/ and structq/; see pyproject.toml).
lint: setup
	$(PY) -m ruff check api worker shared structq scripts tests bench
	$(PY) -m ruff format --check api worker shared structq scripts tests bench
	$(PY) -m mypy

clean:
	rm -rf $(VENV) .pytest_cache
