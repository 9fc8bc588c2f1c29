# Two commands do all set-up on a fresh machine:
#   make demo   -> creates .venv, installs kface, runs the whole pipeline on sample_data/
#   make test   -> creates .venv, installs kface, runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kface-installed

.PHONY: install demo test quick lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# constraints.txt pins torch to the CPU build (a looser requirement pulls a multi-GB CUDA build)
	# and mediapipe to the release the suite is tested with.
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest -q

quick: $(STAMP)  # the quick subset: everything but the tests marked slow
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)  # Ruff (formatting, lint rules) and import-linter (the layers), as CI runs them (pyproject.toml)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) demo_workspace
