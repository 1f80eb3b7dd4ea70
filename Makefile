# Vintage: two commands on a fresh machine with Python 3.11 and make.
#   make demo   environment + demo data + the whole graph over every demo month
#   make test   the test suite
# `make dev` then opens the Dagster UI on http://127.0.0.1:3000 with the demo's runs (the
# Dagster instance lives with its warehouse, in warehouse/_dagster).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo .bootstrap/bin/uv)
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)
# Bytecode at install: every `vintage` process then skips compiling ~2,000 modules (seconds
# per process where PYTHONDONTWRITEBYTECODE is set, as on many CI machines).
export UV_COMPILE_BYTECODE := 1
HOST ?= 127.0.0.1
PORT ?= 3000
PYTEST_ARGS ?=

.PHONY: demo test test-all dev dashboard serve env lint bench clean

env: $(BIN)/vintage

# uv comes from PATH, or is bootstrapped with pip into .bootstrap
.bootstrap/bin/uv:
	$(PYTHON) -m venv .bootstrap
	PIP_DISABLE_PIP_VERSION_CHECK=1 .bootstrap/bin/pip install --quiet uv

# with the optional extra mlflow (MLflow tracking, README), so that its tests run here and in CI
$(BIN)/vintage: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra mlflow --python $(PYTHON)
	touch $@

demo: env
	$(BIN)/vintage demo

test: env
	$(BIN)/pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

# make bench [SCALE=10] [BENCH_ARGS="--max-training-rows 200000"]: the benchmark
# (bench/benchmark.py); results in bench/results
SCALE ?= 1
BENCH_ARGS ?=
bench: env
	$(BIN)/python bench/benchmark.py --scale $(SCALE) $(BENCH_ARGS)

lint: env
	$(BIN)/ruff check .

dev: env
	$(BIN)/vintage ui --host $(HOST) --port $(PORT)

# the monitoring dashboard (evidently's UI) on 8000 unless PORT=... is given
dashboard: PORT = 8000
dashboard: env
	$(BIN)/vintage dashboard --host $(HOST) --port $(PORT)

# the scoring service (README, Serving) on serve.port of config/vintage.yaml (8080) unless
# PORT=... is given
serve: env
	$(BIN)/vintage serve --host $(HOST) $(if $(filter command line,$(origin PORT)),--port $(PORT))

clean:
	rm -rf .bootstrap warehouse data/demo .vintage
