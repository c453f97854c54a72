# make test : create .venv, install the pinned dependencies, build cc/ with CMake, run pytest
# make demo : the whole job end to end on a simulated log
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Every core (pytest-xdist); a test module runs whole in one worker (tests/conftest.py).
PYTEST_WORKERS ?= -n auto --maxprocesses 4 --dist loadfile

.PHONY: all install build test test-fast demo bench asan clean

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

test: install
	$(PY) -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS) tests

# Skips tests marked slow (the full suite, `make test`, runs them).
test-fast: install
	$(PY) -m pytest $(PYTEST_WORKERS) -m "not slow" $(PYTEST_ARGS) tests

demo: install
	$(PY) -m tfrec_kuai.demo

# Each prints its table; results are recorded with their commands in benchmarks/RESULTS.md.
bench: install
	$(PY) benchmarks/bench_attention.py
	$(PY) benchmarks/bench_pipeline.py --impressions 1000000 --runs 3 --markdown
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_serving.py

# The op tests against AddressSanitizer (+UBSan) builds of the native libraries.
asan: install
	PY=$(abspath $(PY)) tools/asan_op_tests.sh

clean:
	rm -rf build *.egg-info tfrec_kuai/*.so
