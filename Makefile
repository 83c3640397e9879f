# The README's two commands: `make run` and `make test`. Both set up
# everything (virtualenv, the Pulumi engine built once into ~/.cache/runner,
# PostgreSQL and Chromium for the tests) and are fast when already set up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test test-unit setup engine test-deps bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

engine: $(STAMP)
	$(PY) -m runner.bootstrap > /dev/null

test-deps:
	bash scripts/ensure-test-deps.sh

# Deploys the example tenants (stacks/tenants.yaml) on the local platform,
# state in .runner/state (file://), artifacts in .runner/platform.
run: engine
	CUSTOMER_1_DB_PASSWORD=$${CUSTOMER_1_DB_PASSWORD:-demo-only-password} \
	$(VENV)/bin/runner up --all-tenants --yes

test: engine test-deps
	$(PY) -m pytest -n auto -p no:cacheprovider $(PYTEST_ARGS)

# The inner loop: unit tests only (no engine, no PostgreSQL, no browser).
test-unit: $(STAMP)
	$(PY) -m pytest -n auto -p no:cacheprovider tests/unit $(PYTEST_ARGS)

bench: engine
	$(PY) -m bench.fleet

clean:
	rm -rf .runner
