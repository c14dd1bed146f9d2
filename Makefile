# One entry point per task; every target creates .venv with pip on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# stages run `python`: make it the venv's, whatever the caller's PATH holds
export PATH := $(BIN):$(PATH)
UI_PORT ?= 5000
SAMPLES ?= build/samples
BASELINE_REV ?= main
ACTIVATIONS ?= relu tanh sigmoid
DROPOUTS ?= 0.0 0.2 0.5
JOBS ?= 2
# three runs per setting: one seed is one sample, and compare needs several to tell settings apart
SEEDS ?= 0 1 2
SEARCH ?= params/search/default.yaml
# the store's URI from its one home, without importing MLflow or torch (tracking/location.py)
STORE = $(shell $(BIN)/python -m mnist_mlp.tracking.location)

.DEFAULT_GOAL := help
.PHONY: help install lock lint repro test ui clean demo serve check-metrics check-reproducible bench plots sweep sweep-quick search compare test-browser browser-deps close-stale-runs app server-deps server server-start server-stop test-server

# The venv holds exactly requirements/lock.txt (--no-deps: nothing outside it), then the project itself.
$(VENV)/.installed: requirements/lock.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "install: the locked packages into $(VENV) (a fresh venv takes about 5 minutes: torch is 5.5 GB)"
	$(BIN)/pip install --progress-bar on --no-deps -r requirements/lock.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

install: $(VENV)/.installed  ## the venv with the locked packages, the project and its dev tools (on first use of any target)

lock: install  ## refresh requirements/lock.txt: the newest releases pyproject.toml and requirements/holds.in allow
	PIP_CONFIG_FILE=/dev/null $(BIN)/pip-compile --quiet --upgrade --extra dev --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links -o requirements/lock.txt pyproject.toml requirements/holds.in
	@echo "lock: requirements/lock.txt refreshed; \`make install\` then \`make test\` before you commit it"

# the variables a target's comment names, shown with their values
HELP_VARS = ACTIVATIONS DROPOUTS SEEDS JOBS SEARCH BASELINE_REV SAMPLES SERVER_PORT UI_PORT
help:  ## this list: each target and what it does, from the comment after its name (`make` alone prints it too)
	@awk -v vars='$(foreach name,$(HELP_VARS),$(name)=$($(name))|)' 'BEGIN { FS = ":[^#]*## "; \
		n = split(vars, pairs, "|"); for (i = 1; i < n; i++) { split(pairs[i], kv, "="); sub(/^ +/, "", kv[1]); value[kv[1]] = kv[2] } } \
		/^[a-z][a-z-]*:.*## / { text = $$2; for (name in value) gsub("\\$$\\(" name "\\)", value[name], text); \
		printf "  %-19s %s\n", $$1, text }' $(MAKEFILE_LIST)

repro: install  ## rebuild data, model and reports (MNIST_MIRROR=folder-or-URL to read MNIST offline)
	$(BIN)/dvc repro

lint: install  ## ruff's linter and formatter check (`ruff format .` and `ruff check --fix .` mend most of it)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install  ## the test suite in its tiers: fast, then integration, docs and slow (no network, no real MNIST)
	$(BIN)/pytest
	$(BIN)/pytest -m "(integration or docs or slow) and not browser and not server"

ui: install  ## the MLflow UI on 127.0.0.1 against the project's store (a tracking server serves its own UI)
	@case "$(STORE)" in http://*|https://*) echo "the tracking server at $(STORE) serves the UI: open $(STORE)"; exit 0;; esac; \
	$(BIN)/python -c "import socket; socket.create_server(('127.0.0.1', $(UI_PORT))).close()" 2>/dev/null || \
		{ echo "make ui: 127.0.0.1:$(UI_PORT) is taken; choose another port: make ui UI_PORT=5050" >&2; exit 1; }; \
	$(BIN)/mlflow ui --backend-store-uri "$(STORE)" --host 127.0.0.1 --port $(UI_PORT)

demo: install  ## draw ten real test digits as PNG/JPEG in different styles into $(SAMPLES), then classify them
	$(BIN)/mnist-mlp render-samples $(SAMPLES)
	$(BIN)/mnist-mlp predict $(SAMPLES)/*

serve: install  ## the evaluated model as a REST API on 127.0.0.1:5001 (SERVE_PORT for another; MODEL_URI=runs:/<run id>/model for another model)
	$(BIN)/mnist-mlp serve $(if $(SERVE_PORT),--port $(SERVE_PORT)) $(if $(MODEL_URI),--model-uri "$(MODEL_URI)")

app: install  ## draw a digit in the browser: the current model and every model of the latest sweep answer, on 127.0.0.1:8000 (APP_PORT for another)
	$(BIN)/mnist-mlp app $(if $(APP_PORT),--port $(APP_PORT))

check-metrics: install  ## fail when reports/metrics.json regressed against $(BASELINE_REV) (rules: metrics_rules.yaml)
	$(BIN)/mnist-mlp check-metrics --baseline-rev $(BASELINE_REV)

check-reproducible: install  ## rebuild the splits and train a 1-epoch config twice; fail unless weights and file md5s are bit-identical
	$(BIN)/mnist-mlp check-reproducible

bench: install  ## lecture's loop vs `fit` vs the matmul bound, the fast preset, MLflow's share -> reports/benchmarks.{json,md}; exit 1 if INVALID
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

plots: install  ## `dvc plots show` offline: the vega scripts DVC's page loads, fetched once from npm and inlined (build/plots/offline.html)
	mkdir -p build/plots
	specs="$$($(BIN)/python tools/offline_plots.py specs --missing-in build/plots)" && \
		if [ -n "$$specs" ]; then npm pack --silent --pack-destination build/plots $$specs >/dev/null; fi
	$(BIN)/python tools/offline_plots.py build build/plots build/plots/offline.html
	$(BIN)/dvc plots show --html-template build/plots/offline.html $(PLOTS_ARGS)

sweep: install  ## an Optuna study of activation x dropout x seed ($(ACTIVATIONS) x $(DROPOUTS) x seeds $(SEEDS)), each trial a DVC experiment, on $(JOBS) workers
	$(BIN)/mnist-mlp sweep --activations $(ACTIVATIONS) --dropouts $(DROPOUTS) --seeds $(SEEDS) --jobs $(JOBS)

sweep-quick: install  ## the same grid, one seed, 2 epochs per run (CI): too few samples to tell settings apart
	$(BIN)/mnist-mlp sweep --activations $(ACTIVATIONS) --dropouts $(DROPOUTS) --jobs $(JOBS) --set train.epochs=2

search: install  ## a TPE search (Optuna) over $(SEARCH): lr, weight decay, dropout, width; SEARCH_ARGS="--set train.epochs=2" for more
	$(BIN)/mnist-mlp sweep --search $(SEARCH) --jobs $(JOBS) $(SEARCH_ARGS)

compare: install  ## reports/compare.md and reports/figures/compare.png from the latest sweep's MLflow runs
	$(BIN)/mnist-mlp compare

browser-deps:  ## headless Chromium and its driver for test-browser (Debian, as root)
	test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || \
		{ apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }

# The team's tracking server (docs/team.md): PostgreSQL backend store, artifacts proxied by the server.
# SERVER_ARTIFACTS: a folder (default ~/.local/share/mnist-mlp/mlflow-artifacts) or s3://bucket/prefix;
# SERVER_AUTH=1: MLflow's basic-auth app. Secrets: environment, else ~/.config/mnist-mlp/server.env (mode 600).
SERVER_PORT ?= 5000
export SERVER_PORT SERVER_HOST SERVER_DB SERVER_ARTIFACTS SERVER_AUTH SERVER_WORKERS SERVER_OPTIONS

server-deps: install  ## PostgreSQL from Debian where missing, started, with MLflow's role and databases (as root)
	command -v pg_lsclusters >/dev/null || { apt-get update -qq && apt-get install -y -qq postgresql; }
	$(BIN)/python -m ops.server deps

server: install  ## mlflow server on PostgreSQL at 127.0.0.1:$(SERVER_PORT) in the foreground; prints the MLFLOW_TRACKING_URI to use
	$(BIN)/python -m ops.server run

server-start: install  ## the same in the background (log in build/server/); returns once it answers
	$(BIN)/python -m ops.server start

server-stop: install  ## stop what server-start started
	$(BIN)/python -m ops.server stop

test-server: install  ## the tests that run against mlflow server on PostgreSQL (make server-deps first)
	$(BIN)/pytest -m server

test-browser: install  ## the MLflow UI and `mnist-mlp app` in headless Chromium against small real sweeps
	$(BIN)/pytest -m browser

close-stale-runs: install  ## end MLflow runs a crash left RUNNING as KILLED (OLDER_THAN=minutes, for other hosts' runs)
	$(BIN)/mnist-mlp close-stale-runs --older-than $(or $(OLDER_THAN),60)

clean:  ## remove outputs (not the MLflow store)
	rm -rf data models reports/figures reports/*.csv reports/metrics.json reports/training_run.json
