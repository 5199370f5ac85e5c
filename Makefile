# tunegate — see README.md. `make setup` once, then `make test` or `make run`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1

.PHONY: setup lock test test-unit run data clean help

help:
	@echo "make setup   create $(VENV) and install the pinned dependencies (requirements.lock)"
	@echo "make test    run the test suite (unit + integration on the tiny model)"
	@echo "make run     run the retrain flow on params/demo.yaml"
	@echo "make data    reproduce the demo dataset with DVC"
	@echo "make lock    re-pin requirements.lock from the ranges in pyproject.toml"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

setup: $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned exactly: it resolves to the CPU wheel on these machines.
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	@$(BIN)/tunegate --help > /dev/null && echo "tunegate installed in $(VENV)"
	@# A migrated, empty Prefect database in the user's cache: a new $$TUNEGATE_HOME starts from a copy.
	-@$(BIN)/python -m tunegate.adapters.prefect --template
	@# Headless Chromium renders the HTML report in a test; where apt is not available the test skips.
	-@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium not installed: the HTML report test will skip"; fi

lock: $(BIN)/python
	$(BIN)/pip install --quiet "torch==2.13.0" -e ".[test]"
	$(BIN)/pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/' > requirements.lock

# Two pytest-xdist workers, one test file each at a time (a file's shared trained models stay in one
# worker); each worker has its own $$TUNEGATE_HOME, training slots and half the cores (tests/conftest.py).
# TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile,-p no:xdist)

test:
	$(PYTEST)

test-unit:
	$(PYTEST) tests --ignore=tests/integration

run:
	$(BIN)/tunegate run

data:
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro demo_data

clean:
	rm -rf .tunegate
