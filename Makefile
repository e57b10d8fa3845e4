# One task runner; targets mirror CI (.ci/run runs `make lint` and `make test`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench venv clean

# The venv is rebuilt only when pyproject.toml changes, so a second run installs nothing.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	# Freshly written libraries sit in large page-cache folios that each process would map
	# whole (about 60 MiB more RSS per process): runtime/runners/library_cache.py.
	$(BIN)/python -m runtime.runners.library_cache $(VENV)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/streamdag demo $(ARGS)

test: $(STAMP)
	bash scripts/install_prometheus.sh
	bash scripts/install_chromium.sh
	$(BIN)/python -m pytest tests streamdag runtime operators connectors $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check streamdag runtime operators connectors tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
