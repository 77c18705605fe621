# The commands the README shows. Everything installs into .venv; torch comes from the pinned CPU wheel
# first, so no later requirement can pull a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: setup demo test bench sweep clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

DEMO_TIME ?= 2m

demo: setup
	$(VENV)/bin/charloom corpus-info shakespeare
	$(VENV)/bin/charloom train shakespeare --max-time $(DEMO_TIME) --out runs/demo --overwrite
	$(VENV)/bin/charloom sample --checkpoint runs/demo --start "ROMEO." --length 600 --temperature 0.8 --seed 1

test: setup
	bash scripts/ensure_chromium.sh
	$(PY) -m pytest -q

bench: setup
	$(PY) -m pip install -q -e ".[plot]"
	$(PY) bench/corpus_bench.py
	$(PY) bench/generate_bench.py
	$(PY) bench/train_speed_bench.py
	$(PY) bench/serve_bench.py
	$(PY) bench/quality_bench.py

# the sweep behind the defaults (about 6 minutes a run; rows accumulate in bench/sweep.jsonl)
SWEEP_MINUTES ?= 5
sweep: setup
	$(PY) bench/sweep.py --minutes $(SWEEP_MINUTES) -- "" "--forget-bias 1" "--precision fp32" "--batch-size 16" \
		"--batch-size 64" "--order contiguous" "--lr 1e-2" "--seq-len 128 --batch-size 16" "--cell gru --hidden 640"

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
