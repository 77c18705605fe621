# The commands the README shows. Everything installs into .venv; torch comes from the pinned CPU wheel
# first, so no later requirement can pull a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: setup demo test bench sweep fuzz readme-images clean

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

# an AVX2-only CPU on any x86 machine: ATen's, oneDNN's (no bf16 LSTM there) and MKL's kernels held to AVX2
AVX2 = ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2

# the tests run in one process per core (at most 4), each on its share of the cores (tests/conftest.py), then
# those that read the machine's load in one process; those that depend on the CPU's kernels run a second time on
# the AVX2 path, so a suite that passes on an AVX-512 machine also passes on an AVX2 one
PYTEST = $(PY) -m pytest -q -n auto --maxprocesses 4

test: setup
	bash scripts/ensure_chromium.sh
	bash scripts/ensure_ort_web.sh
	$(PYTEST)
	$(PY) -m pytest -q -m alone
	$(AVX2) $(PYTEST) -m kernel

bench: setup
	$(PY) -m pip install -q -e ".[plot]"
	$(PY) bench/corpus_bench.py
	$(PY) bench/generate_bench.py
	$(PY) bench/export_bench.py
	$(PY) bench/finetune_bench.py
	$(PY) bench/labels_bench.py
	$(PY) bench/train_speed_bench.py
	$(PY) bench/serve_bench.py
	command -v 7z >/dev/null || { apt-get update -qq && apt-get install -y -qq p7zip-full; }
	command -v bible >/dev/null || { apt-get update -qq && apt-get install -y -qq bible-kjv; }
	$(PY) bench/processes_bench.py
	$(AVX2) $(PY) bench/processes_bench.py
	$(PY) bench/quality_bench.py
	$(PY) bench/adapt_bench.py --minutes 10
	$(PY) bench/corpora_bench.py --minutes 3
	$(PY) bench/ngram_bench.py
	$(PY) bench/recurrence_bench.py
	$(PY) bench/read_bench.py

# the README's chart and coloured passage, from a one-minute run on the bundled Shakespeare (runs/readme)
readme-images: setup
	$(PY) scripts/readme_images.py

# the reliability suite with figures (about 10 minutes): hostile model files, kills at random points and
# mid-save, a fuzzed and loaded server; each exits non-zero when anything got in or was lost
fuzz: setup
	$(PY) bench/fuzz_files.py
	$(PY) bench/fuzz_kill.py
	$(PY) bench/fuzz_server.py

# the sweep behind the defaults: each run is a `charloom train` of SWEEP_MINUTES with flags relative to
# today's defaults, then about a minute of scoring (rows accumulate in bench/sweep.jsonl); the widths run on
# both kernel paths, one thread each, two at a time, and the law that sizes a run is refitted from them
SWEEP_MINUTES ?= 10
WIDTHS ?= 256 384 512 768 1024
sweep: setup
	$(PY) bench/sweep.py --minutes $(SWEEP_MINUTES) -- "--seq-len 64 --batch-size 32" "--seq-len 256 --batch-size 8" \
		"--lr 3e-3" "--min-lr-ratio 0" "--order contiguous" "--forget-bias 1" "--cell gru" "--ema 0" "--lr 7e-3" \
		"--min-lr-ratio 0.3" "--eval-every 500" "--weight-decay 0" "--weight-decay 0.05" "--weight-decay 0.2" \
		"--dropout 0.1" "--embedding 128" "--layers 2"
	for w in $(WIDTHS); do \
		$(PY) bench/sweep.py --minutes $(SWEEP_MINUTES) -- "--hidden $$w --threads 1" & \
		$(AVX2) $(PY) bench/sweep.py --minutes $(SWEEP_MINUTES) -- "--hidden $$w --threads 1" ; wait; \
	done
	$(PY) bench/sizing_fit.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
