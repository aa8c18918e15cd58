# Two commands on a fresh machine with Python 3.11:  make run   and   make test
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# Two install stamps: what running needs (make run), then what testing adds (make test).
STAMP := $(VENV)/.sfumato-installed
TEST_STAMP := $(VENV)/.sfumato-test-installed

.PHONY: install install-test run test pytest test-compiled lint bench clean prometheus-tools browser-tools lock device-wheels

# torch is installed first and pinned exactly: letting pip resolve torch from a range pulls a
# multi-GB CUDA build. Set TORCH_PIP_ARGS to e.g. an extra index for a CPU-only wheel.
# Every other version comes from requirements/lock.txt (pip constraints), so installs are
# reproducible: CI, the Docker images and a laptop get what the tests ran against.
# Two distributions from this repository: sfumato-server (., with extras) and the client SDK
# sfumato (./client); see pyproject.toml.
LOCK := requirements/lock.txt
$(STAMP): pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=..."; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[api,worker,dev]'
	touch $(STAMP)

## make test's additions: the client SDK (its CLI and tests), test and lint tools, the docs site.
$(TEST_STAMP): $(STAMP) client/pyproject.toml
	$(PY) -m pip install --quiet -c $(LOCK) -e ./client -e '.[test,docs]'
	touch $(TEST_STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP)

## Start the whole service (private Redis, worker with the shapes model, API on :8000).
run: install
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(PY) -m devstack

## Lint, type-check and run the whole test suite.
test: install-test prometheus-tools browser-tools lint pytest test-compiled

pytest: install-test prometheus-tools browser-tools
	$(PY) -m pytest -q

## The engine suites again with the compiled fast path on (SFUMATO_COMPILE=on through
## TEST_SFUMATO_COMPILE, tests/support/engine.py): dynamo's eager backend on the tiny models,
## buckets 1 and 4, so tracing, guards and bucket padding are real without inductor's minutes of
## C++ compiling per graph (issue 21: the existing tests with compilation on and off). Part of
## make test: about a minute more on 2 cores.
COMPILED_TESTS := tests/integration/test_batch_invariance.py tests/integration/test_engine.py
test-compiled: install-test
	TEST_SFUMATO_COMPILE=eager $(PY) -m pytest -q $(COMPILED_TESTS)

## prometheus + promtool (Debian package) for the deploy and scrape tests: installed when missing
## and root; otherwise those tests are skipped with the reason.
prometheus-tools:
	@bash deploy/prometheus/ensure-prometheus.sh

## chromium (Debian package) for the browser playground tests, driven by Playwright: installed
## when missing and root; otherwise those tests are skipped with the reason (they fail under CI=true).
browser-tools:
	@bash deploy/browser/ensure-chromium.sh

## Wheels a lent GPU machine lacks (bench/device/requirements.txt at the lock's versions, for its
## Python 3.12; never torch), carried there by bench/device/gpu.sh's run (see that script).
DEVICE_PLATFORMS := $(foreach p,manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 any,--platform $(p))
device-wheels: install-test
	$(PY) -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
		$(DEVICE_PLATFORMS) --no-deps -c requirements/lock.txt -d .device-wheels -r bench/device/requirements.txt
	@du -sh .device-wheels

## Re-resolve the dependencies from pyproject.toml (newest allowed) and rewrite the lock.
lock: install-test
	$(PY) -m pip install --quiet --upgrade --upgrade-strategy eager -e ./client -e '.[api,worker,test,dev,docs]'
	$(PY) requirements/write_lock.py

lint: install-test
	$(VENV)/bin/ruff check core api worker client training devstack tests bench deploy scripts
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
