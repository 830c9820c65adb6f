# Two commands do all set-up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = "0" ] || echo sudo)

.PHONY: demo test lint format bench clean redis chromium notebook

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	rm -rf data/archive
	$(VENV)/bin/archiver record --replay data/celery-events-sample.jsonl --archive data/archive --freq 1
	$(VENV)/bin/archiver info --archive data/archive
	@echo; echo "Tasks whose last state is FAILURE (first 5):"
	$(VENV)/bin/archiver query tasks --archive data/archive --latest --where state=FAILURE --columns uuid,name,worker,exception --limit 5
	@echo; echo "Next, in the venv (. .venv/bin/activate):"
	@echo "  archiver query tasks --where name=harness.slow --tail 10   # the newest rows of one task name"
	@echo "  pip install -e '.[report]' && archiver report --output report.html   # one HTML page of charts"
	@echo "  make notebook   # the analysis notebook in JupyterLab"

# Jupyter on the analysis notebook, in the project's .venv, on the demo archive.
$(VENV)/.installed-notebook: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e '.[notebook]'
	touch $@

notebook: $(VENV)/.installed-notebook
	@[ -d data/archive/tasks ] || $(MAKE) demo
	$(VENV)/bin/jupyter lab notebooks/analysis.ipynb

redis:
	@command -v redis-server >/dev/null 2>&1 || { $(SUDO) apt-get install -y -q redis-server || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q redis-server; }; }

# Headless Chromium for the report's browser test (tests/test_report.py).
chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium || { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }; }

test: $(VENV)/.installed-dev redis chromium
	$(PY) -m pytest

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: $(VENV)/.installed-dev
	@status=0; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || status=1; done; exit $$status

clean:
	rm -rf $(VENV) data/archive .pytest_cache
