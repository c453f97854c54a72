# make test : create .venv, install the pinned dependencies, build cc/ with CMake, run pytest
# make demo : the whole job end to end on a simulated log
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Every core (pytest-xdist); a test module runs whole in one worker (tests/conftest.py).
PYTEST_WORKERS ?= -n auto --maxprocesses 4 --dist loadfile

.PHONY: all install build lint test test-fast demo bench asan clean

all: test

$(VENV)/.deps: requirements.txt tools/install_system_packages.sh
	tools/install_system_packages.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install -r requirements.txt
	touch $@

install: $(VENV)/.deps
	$(PY) -m pip install --no-build-isolation --no-deps -e .

build: install

# ruff.toml says what is checked: pyflakes, pycodestyle, bugbear, and no stale `# noqa`.
lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS) tests

# Skips tests marked slow (the full suite, `make test`, runs them).
test-fast: install lint
	$(PY) -m pytest $(PYTEST_WORKERS) -m "not slow" $(PYTEST_ARGS) tests

demo: install
	$(PY) -m tfrec_kuai.demo

# Each prints its table; the recorded figures and their exact commands are in benchmarks/RESULTS.md.
# A run's own files go to $(BENCH_OUT) (git ignores it), never to a tracked file.
BENCH_OUT ?= benchmarks/out
bench: install $(BENCH_OUT)/examples/metadata.json
	$(PY) benchmarks/bench_attention.py
	$(PY) benchmarks/bench_pipeline.py --impressions 1000000 --runs 3 --markdown
	$(PY) benchmarks/bench_training.py --examples $(BENCH_OUT)/examples --output $(BENCH_OUT)/bench_training.jsonl
	$(PY) benchmarks/bench_serving.py --output $(BENCH_OUT)/results_serving.json
	$(PY) benchmarks/bench_abtest.py --output $(BENCH_OUT)/bench_abtest.json

# The training benchmark's examples: 200 k simulated impressions through the Beam job (L = 50).
$(BENCH_OUT)/examples/metadata.json: | install
	$(VENV)/bin/tfrec-kuai simulate --output $(BENCH_OUT)/log --impressions 200000 --seed 7
	$(PY) -m beam_pipelines.build_examples --input '$(BENCH_OUT)/log/log_*.csv' \
	    --video_features $(BENCH_OUT)/log/video_features_basic_sim.csv \
	    --user_features $(BENCH_OUT)/log/user_features_sim.csv \
	    --history_length 50 --eval_days 1 --output $(BENCH_OUT)/examples

# The op tests against AddressSanitizer (+UBSan) builds of the native libraries.
asan: install
	PY=$(abspath $(PY)) tools/asan_op_tests.sh

clean:
	rm -rf build *.egg-info tfrec_kuai/*.so
