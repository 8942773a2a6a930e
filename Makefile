# mydocker — set up a virtual environment and run things from it.
# Everything here needs Linux; `run` and `test` need root (namespaces, mounts, cgroups).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint unit bench bench-quick clean deps-run deps-test deps-bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

deps-run:
	scripts/debian-deps.sh run

deps-test:
	scripts/debian-deps.sh test

deps-bench:
	scripts/debian-deps.sh bench

## run: set up, then start an interactive shell in a new container
run: $(STAMP) deps-run
	$(BIN)/mydocker run -ti /bin/sh

## lint: ruff (lint + format) and mypy
lint: $(STAMP)
	$(BIN)/ruff check supervisor tests bench
	$(BIN)/ruff format --check supervisor tests bench
	$(BIN)/mypy supervisor

## test: set up, lint, and run the whole test suite (as root)
test: lint deps-test
	$(BIN)/pytest

## bench: every bench in bench/ (as root, ~15 minutes): mydocker against unshare(1),
## crun, runc and itself, interleaved, medians of rounds; BENCH="--only start,exec"
bench: $(STAMP) deps-bench
	$(BIN)/python bench/run.py $(BENCH)

## bench-quick: one small round of each bench (a minute or two): do they all run?
bench-quick: $(STAMP) deps-bench
	$(BIN)/python bench/run.py --quick $(BENCH)

clean:
	rm -rf $(VENV)
