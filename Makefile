# The README's commands. `make install serve` starts the service; `make test` runs the suite.
VENV ?= .venv
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 8000
BIN = $(VENV)/bin

.PHONY: install serve test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[cpu,train,dev]'

serve:
	$(BIN)/reid-gallery serve --host $(HOST) --port $(PORT)

test:
	$(BIN)/python -m pytest -m "not slow and not gpu"

lint:
	$(BIN)/ruff check app models reid_client tests benchmarks
	$(BIN)/mypy app models reid_client
	$(BIN)/hadolint Dockerfile
