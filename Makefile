# One command each: `make train` (set up, generate the synthetic cohort, train the bundle) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BUNDLE := bundles/chest_ct_pneumonia_classification
COHORT ?= data/synthetic
# the embedded synthetic cohort of the quickstart (MosMedData geometry and field of view)
SYNTH_ARGS ?= --categories CT-0,CT-1,CT-2,CT-3,CT-4 --per-category 80 --matrix 256 --seed 0 --workers 2
TRAIN_ARGS ?= --epochs 20

.PHONY: setup cohort train test lint bench clean-runs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0

$(VENV)/.installed: $(BIN)/python setup.cfg
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

$(COHORT)/dataset_registry.csv: | setup
	$(BIN)/python -m pipeline synth $(COHORT) $(SYNTH_ARGS)

cohort: $(COHORT)/dataset_registry.csv

train: setup cohort
	$(BIN)/python -m monai.bundle run training --config_file $(BUNDLE)/configs/train.json $(TRAIN_ARGS)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python -m benchmarks.run_all
