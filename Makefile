# The README's two commands: `make run` and `make test`. Both set up
# everything (virtualenv, the Pulumi engine built once into ~/.cache/runner,
# PostgreSQL and Chromium for the tests) and are fast when already set up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test test-unit lint setup engine test-deps bench clean pulumi-version

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

# A lint failure fails the tests (rules in pyproject.toml [tool.ruff]).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint engine test-deps
	$(PY) -m pytest -n auto -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

# The inner loop: unit tests only (no engine, no PostgreSQL, no browser).
test-unit: lint
	$(PY) -m pytest -n auto -p no:cacheprovider tests/unit $(PYTEST_ARGS)

bench: engine
	$(PY) -m bench.fleet

clean:
	rm -rf .runner

# The one place to change the engine version (#19): `make pulumi-version V=3.x.y`
# writes the `pulumi` pin in pyproject.toml and the same pkg/v3 + sdk/v3 in
# tools/go.mod and go.sum, reinstalls the SDK, and builds that engine (its own
# cache folder: an engine of another version is never used).
pulumi-version:
	@test -n "$(V)" || { echo "usage: make pulumi-version V=3.x.y" >&2; exit 2; }
	sed -i -E 's/"pulumi==[0-9][0-9.]*"/"pulumi==$(V)"/' pyproject.toml
	cd tools && GOTOOLCHAIN=local GOFLAGS=-mod=mod go get github.com/pulumi/pulumi/pkg/v3@v$(V) github.com/pulumi/pulumi/sdk/v3@v$(V)
	cd tools && GOTOOLCHAIN=local go mod tidy
	$(MAKE) engine
