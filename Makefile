# Quick start: `make demo` (set up + train MiniLM on SST-2) and `make test` (set up + whole test suite).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
EXTRAS  ?= dev
STAMP   := $(VENV)/.installed-$(EXTRAS)
WORKERS ?= 2

.PHONY: setup demo test test-fast clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first, pinned (an unpinned torch pulls a multi-GB CUDA build on this machine kind)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	# DeepSpeed is an sdist that builds against the torch above: no build isolation
	$(BIN)/pip install -q -c constraints.txt --no-build-isolation "deepspeed>=0.15"
	$(BIN)/pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	# DeepSpeed's CPU ops (shared-memory collectives, CPU Adam) compile now, not inside the first run
	$(BIN)/python -m tlscale.runners.deepspeed_ops
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/tlscale train configs/sst2-minilm-full.yaml --overwrite

# Two pytest workers (one thread each) for all but the multi-process tests; those then run alone, since ranks
# waiting on each other in collectives slow down several times when other work shares the cores.
test: $(STAMP)
	$(BIN)/python -m pytest -q -rs --durations=15 -n $(WORKERS) --dist loadfile --no-loadscope-reorder -m "not distributed"
	$(BIN)/python -m pytest -q -rs --durations=15 -m distributed

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(WORKERS) -m "not slow and not distributed"

clean:
	rm -rf $(VENV) runs
