# One command to run the service, one to run every test. Both set up .venv first and reuse it.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: setup run test lint bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# --no-build-isolation: the editable install only adds a path; no build tools are fetched.
	$(PY) -m pip install --quiet --no-build-isolation -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

run: setup
	$(VENV)/bin/serve run --address local serve_config.yaml

# Unit and integration tests share one Ray cluster; system tests start their own Ray, so they
# run in a second pytest process after the first has shut its cluster down.
test: setup
	$(PY) -m pytest tests/unit tests/integration
	$(PY) -m pytest tests/system

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) kuberay/render.py --check
