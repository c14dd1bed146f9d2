# One entry point per task; every target creates .venv with pip on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# stages run `python`: make it the venv's, whatever the caller's PATH holds
export PATH := $(BIN):$(PATH)
UI_PORT ?= 5000
STORE = $(shell $(BIN)/python -c "from mnist_mlp.tracking import tracking_uri; print(tracking_uri())")

.PHONY: install repro test ui clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

repro: install  ## rebuild data, model and reports (MNIST_MIRROR=folder-or-URL to read MNIST offline)
	$(BIN)/dvc repro

test: install  ## the test suite (no network, no real MNIST)
	$(BIN)/pytest

ui: install  ## the MLflow UI on 127.0.0.1 against the project's store
	$(BIN)/mlflow ui --backend-store-uri "$(STORE)" --host 127.0.0.1 --port $(UI_PORT)

clean:  ## remove outputs (not the MLflow store)
	rm -rf data models reports/figures reports/*.csv reports/metrics.json
