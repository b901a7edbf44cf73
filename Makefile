# The two Quickstart commands (`make demo`, `make test`) set everything up themselves on a fresh
# machine with Python 3.11: a virtualenv in .venv, dependencies pinned by constraints.txt.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/driftloop up --demo

# The examples in the docstrings of the modules people extend (and of a few others), run as written.
DOCTEST_MODULES := features/aggregations models/model.py models/flavors.py models/checks.py streams/control/drift/detectors \
	streams/state/journal.py driftloop/spec_hints.py driftloop/schema.py driftloop/pulse.py features/rows.py \
	features/reference.py streams/control/metrics.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	MYPY=$(BIN)/mypy tools/typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider --doctest-modules $(DOCTEST_MODULES)

test: lint
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .driftloop
