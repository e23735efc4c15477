# Quick start: `make demo` and `make test`. Both create .venv when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH_CPU := torch==2.13.0

.PHONY: demo test lint typecheck contracts pytest benchmark benchmark-full clean-venv install browser

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall only when the project's declared dependencies change.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet "$(TORCH_CPU)" || $(PY) -m pip install --quiet "torch>=2.4,<3"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/beamwatch demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

contracts: $(STAMP)
	$(VENV)/bin/lint-imports

# Browser tests need Debian's chromium; installed here when missing (root + apt), else they skip.
browser:
	@sh tests/browser/install-chromium.sh

pytest: $(STAMP) browser
	$(VENV)/bin/pytest

test: lint typecheck contracts pytest

benchmark: $(STAMP)  ## all benchmarks; README lists the latest numbers
	$(PY) -m benchmarks.run_all

benchmark-full: $(STAMP)  ## the same plus the whole-512^3 runs (about 18 min more)
	$(PY) -m benchmarks.run_all --full-size

clean-venv:
	rm -rf $(VENV)
