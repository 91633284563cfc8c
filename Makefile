# The two commands a newcomer needs: `make demo` and `make test`.
#
# Dependencies are locked in uv.lock (every package pinned, every file by sha256) and installed
# with `uv sync --locked`, which also fails when pyproject.toml and uv.lock disagree. Why uv and
# not pip-tools: one universal lock serves every supported Python (pip-compile needs one file per
# version), uv only talks to PyPI (this machine's pip.conf adds local indexes that pip-compile
# would write into its output) and it never installs what the lock does not name. uv itself comes
# from PyPI, pinned by hash in requirements/uv.txt, into its own venv. How to update: README,
# "Updating dependencies".
#
# Supported Pythons: OLDEST to NEWEST, as pyproject.toml's classifiers say (tests/test_packaging.py
# keeps the three in step). `make test` runs ruff and mypy once and the suite on both. An
# interpreter is taken from `pythonX.Y` on PATH, else pyenv's newest X.Y.*; it must really run
# (pyenv's shim for a version not selected is on PATH and fails).
OLDEST_PYTHON := 3.11
NEWEST_PYTHON := 3.13
find_python = $(shell for p in "$$(command -v python$(1))" $$(ls -d \
	"$${PYENV_ROOT:-$$HOME/.pyenv}"/versions/$(1).*/bin/python 2>/dev/null | sort -rV); do \
	test -n "$$p" && test "$$("$$p" -c 'import sys; print("%d.%d" % sys.version_info[:2])' \
	2>/dev/null)" = "$(1)" && { echo "$$p"; break; }; done)

PYTHON ?= $(or $(call find_python,$(OLDEST_PYTHON)),python3)
PYTHON_NEWEST ?= $(call find_python,$(NEWEST_PYTHON))
VENV ?= .venv
VENV_NEWEST ?= .venv-$(NEWEST_PYTHON)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
UV_VENV := .venv-uv
UV := $(UV_VENV)/bin/uv
UV_STAMP := $(UV_VENV)/.installed
# uv never downloads an interpreter of its own (that is not a package registry) and installs
# only what uv.lock names, the project itself editable.
export UV_PYTHON_DOWNLOADS := never
UV_SYNC := $(UV) sync --locked --extra dev
# CI (CI=true) fails when a supported Python is missing; elsewhere `make test` says so loudly and
# runs the suite on what there is, so a fresh clone with one Python 3.11+ still tests.
REQUIRE_ALL_PYTHONS ?= $(if $(filter true 1,$(CI)),1,)

.PHONY: install test lint types unit unit-newest pythons demo bench clean promtool chromium lock \
	postgres

$(UV_STAMP): requirements/uv.txt
	@test -x $(UV_VENV)/bin/python || $(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install -q --require-hashes --no-deps -r requirements/uv.txt
	@touch $(UV_STAMP)

$(STAMP): pyproject.toml uv.lock $(UV_STAMP)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV_SYNC) -q --python $(PYTHON)
	@touch $(STAMP)

install: $(STAMP)

# Regenerate uv.lock after editing the dependencies in pyproject.toml (LOCK_ARGS=--upgrade moves
# everything to the newest allowed release, LOCK_ARGS='--upgrade-package NAME' one package).
lock: $(UV_STAMP)
	$(UV) lock $(LOCK_ARGS)

lint: install
	$(VENV)/bin/ruff check streamsync tests scripts
	$(VENV)/bin/lint-imports --no-cache

types: install
	$(VENV)/bin/mypy streamsync

# missing X.Y: say loudly that a supported Python goes untested; fail where all are required.
missing = echo "!!! Python $(1) not found (python$(1) on PATH, or pyenv's versions/$(1).*): the"; \
	echo "!!! suite will not run on it, though pyproject.toml says it is supported."; \
	if [ -n "$(REQUIRE_ALL_PYTHONS)" ]; then echo "!!! failing: CI tests every supported Python"; \
	exit 1; fi

# Which supported Pythons this machine has. A missing one is said loudly; under CI it fails.
pythons:
	@have=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
	if [ "$$have" = $(OLDEST_PYTHON) ]; then echo "Python $(OLDEST_PYTHON): $(PYTHON) ($(VENV))"; \
	else $(call missing,$(OLDEST_PYTHON)); fi; \
	if [ -n "$(PYTHON_NEWEST)" ]; then echo "Python $(NEWEST_PYTHON): $(PYTHON_NEWEST) ($(VENV_NEWEST))"; \
	else $(call missing,$(NEWEST_PYTHON)); fi

# The suite mostly waits (emulators, service subprocesses, timers; about 3 CPU-minutes in 10
# wall-minutes), so pytest-xdist runs it in PYTEST_WORKERS processes even on 2 cores; each worker
# starts its own PostgreSQL server. PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 4
unit: install promtool chromium postgres
	@echo "== pytest on $$($(PY) -V), $(PYTEST_WORKERS) workers"
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS)

# The suite again on the newest supported Python, in its own venv from the same lock. The six
# `slow` tests (chaos minute, crash, bench, demo, systemd: ~2.5 min) run on the oldest only, to
# keep `make test` short on a busy 2-core machine; they pass on 3.13 too:
# `make unit-newest NEWEST_PYTEST_ARGS=` runs them there.
NEWEST_PYTEST_ARGS ?= -m 'not slow'
unit-newest: promtool chromium postgres
	@if [ -z "$(PYTHON_NEWEST)" ]; then echo "!!! not run: no Python $(NEWEST_PYTHON)"; exit 0; fi; \
	set -e; UV_PROJECT_ENVIRONMENT=$(VENV_NEWEST) $(UV_SYNC) -q --python $(PYTHON_NEWEST); \
	if [ -x $(VENV)/bin/promtool ]; then install -m 0755 $(VENV)/bin/promtool $(VENV_NEWEST)/bin/; fi; \
	echo "== pytest on $$($(VENV_NEWEST)/bin/python -V) $(NEWEST_PYTEST_ARGS)"; \
	$(VENV_NEWEST)/bin/pytest -p no:cacheprovider -n $(PYTEST_WORKERS) $(NEWEST_PYTEST_ARGS)

# promtool checks contrib/prometheus/alerts.yml. When it is missing and we are root with apt-get
# (CI), it is taken from Debian's prometheus package into the venv: only the binary is unpacked,
# so no prometheus server is installed or started.
promtool: install
	@if command -v promtool >/dev/null 2>&1 || test -x $(VENV)/bin/promtool; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "promtool missing: 'sudo apt-get install prometheus' (or 'sudo make promtool')"; \
		exit 0; fi; \
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && chown _apt "$$tmp" 2>/dev/null; \
	apt-get update -qq && (cd "$$tmp" && apt-get download -qq prometheus) && \
	dpkg-deb --fsys-tarfile "$$tmp"/prometheus_*.deb | tar -x -C "$$tmp" ./usr/bin/promtool && \
	install -m 0755 "$$tmp/usr/bin/promtool" $(VENV)/bin/promtool && \
	$(VENV)/bin/promtool --version | head -1

# The PostgreSQL store's tests start their own throwaway server (streamsync/testing/pg_server.py
# finds initdb, pg_ctl and postgres on PATH or in /usr/lib/postgresql/*/bin, and runs them as an
# unprivileged user when we are root). On a machine without them, the PostgreSQL build inside the
# pgserver wheel from PyPI, pinned by hash in requirements/pgserver.txt, is unpacked into .pg/
# (no system package is installed, nothing is started). PG_FROM=wheel takes that path anyway.
PG_FOUND = $(PY) -c 'from streamsync.testing.pg_server import find_bindir; print(find_bindir())'
postgres: install
	@if [ "$(PG_FROM)" != wheel ] && $(PG_FOUND) >/dev/null 2>&1; then exit 0; fi; \
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(UV_VENV)/bin/python -m pip download -q --no-deps --only-binary=:all: \
		--python-version 3.11 --platform manylinux2014_x86_64 \
		--require-hashes -r requirements/pgserver.txt -d "$$tmp" && \
	rm -rf .pg && $(PY) -m streamsync.testing.pg_server --unpack "$$tmp"/pgserver-*.whl

# The status page's browser test (tests/runtime/test_status_page_browser.py) drives Debian's
# chromium over the DevTools protocol. When it is missing and we are root with apt-get (CI), it
# is installed; otherwise the test fails and says how to get it.
CHROMIUM_NAMES := chromium chromium-browser google-chrome
chromium:
	@for b in $(CHROMIUM_NAMES); do command -v $$b >/dev/null 2>&1 && exit 0; done; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "chromium missing: 'sudo apt-get install --no-install-recommends chromium'"; \
		echo "(or 'sudo make chromium'); the status page's browser test fails without it"; \
		exit 0; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends chromium >/dev/null && chromium --version

test: pythons lint types unit unit-newest

demo: install
	$(PY) -m streamsync demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) $(VENV_NEWEST) $(UV_VENV) .mypy_cache .pytest_cache .ruff_cache .pg
