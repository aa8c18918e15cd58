# Two commands on a fresh machine with Python 3.11:  make run   and   make test
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sfumato-installed

.PHONY: install run test pytest lint bench clean prometheus-tools lock

# torch is installed first and pinned exactly: letting pip resolve torch from a range pulls a
# multi-GB CUDA build. Set TORCH_PIP_ARGS to e.g. an extra index for a CPU-only wheel.
# Every other version comes from requirements/lock.txt (pip constraints), so installs are
# reproducible: CI, the Docker images and a laptop get what the tests ran against.
LOCK := requirements/lock.txt
$(STAMP): pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=..."; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[api,worker,test,dev]'
	touch $(STAMP)

install: $(STAMP)

## Start the whole service (private Redis, worker with the tiny model, API on :8000).
run: install
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(PY) -m worker.devstack

## Lint, type-check and run the whole test suite.
test: install prometheus-tools lint pytest

pytest: install prometheus-tools
	$(PY) -m pytest -q

## prometheus + promtool (Debian package) for the deploy and scrape tests: installed when missing
## and root; otherwise those tests are skipped with the reason.
prometheus-tools:
	@bash deploy/prometheus/ensure-prometheus.sh

## Re-resolve the dependencies from pyproject.toml (newest allowed) and rewrite the lock.
lock: install
	$(PY) -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[api,worker,test,dev]'
	$(PY) requirements/write_lock.py

lint: install
	$(VENV)/bin/ruff check core api worker sfumato tests bench deploy
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
