# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint types unit demo bench clean promtool

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check streamsync tests scripts

types: install
	$(VENV)/bin/mypy streamsync

unit: install promtool
	$(VENV)/bin/pytest

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

test: lint types unit

demo: install
	$(PY) -m streamsync demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
