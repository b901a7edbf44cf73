# The two Quickstart commands (`make demo`, `make test`) set everything up themselves on a fresh
# machine with Python 3.11: a virtualenv in .venv, dependencies pinned by constraints.txt.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Quix Streams, the reference `driftloop bench --quix-python .quix/bin/python` measures beside the data
# plane, in a virtualenv of its own: its pins (confluent-kafka, pydantic) differ from driftloop's.
QUIX_VENV ?= .quix
QUIX_VERSION ?= 3.28.0

.PHONY: demo test lint install quix clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

quix: $(QUIX_VENV)/.installed

$(QUIX_VENV)/.installed:
	$(PYTHON) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/pip install --quiet quixstreams==$(QUIX_VERSION)
	touch $@

demo: $(STAMP)
	$(BIN)/driftloop up --demo

# The examples in the docstrings of the modules people extend (and of a few others), run as written.
DOCTEST_MODULES := features/aggregations models/model.py models/flavors.py models/checks.py streams/control/drift/detectors \
	streams/state/journal.py driftloop/spec_hints.py driftloop/schema.py driftloop/pulse.py features/rows.py \
	features/reference.py streams/control/metrics.py load/benchmarks/cpu.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	MYPY=$(BIN)/mypy tools/typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider --doctest-modules $(DOCTEST_MODULES)

test: lint
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(QUIX_VENV) .driftloop
