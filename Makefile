# Two entry points: `make demo` runs the main experiment, `make test` runs the tests.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint format bench notebooks clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,ray,baselines,notebooks,interop]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/icl-lab demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/pytest

test-slow: $(STAMP)
	$(BIN)/pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks examples
	$(BIN)/ruff check --fix src tests benchmarks examples

notebooks: $(STAMP)  # executes the examples in build/notebooks, renders them to docs/notebooks
	rm -rf build/notebooks && mkdir -p build/notebooks && cp examples/*.ipynb build/notebooks/
	cd build/notebooks && ../../$(BIN)/jupyter nbconvert --execute --to html --output-dir ../../docs/notebooks *.ipynb

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/reddy_throughput.py
	$(BIN)/python benchmarks/clamp_overhead.py
	$(BIN)/python benchmarks/sweep_throughput.py
	$(BIN)/python benchmarks/ngram_baseline.py
	$(BIN)/python benchmarks/arch_throughput.py
	$(BIN)/python benchmarks/regression_baselines.py
	$(BIN)/python benchmarks/text_throughput.py
	$(BIN)/python benchmarks/sae_throughput.py
	$(BIN)/python benchmarks/attention_paths.py
	$(BIN)/python benchmarks/eval_cost.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
