# The two commands of the README: `make demo` and `make test`. Everything else is a step of them.
PY        ?= python3
BUILD     ?= build
ASAN      ?= build-asan
JOBS      ?= 2
PIP       := $(PY) -m pip install -q --disable-pip-version-check --root-user-action=ignore

.PHONY: all setup build build-asan install demo test test-cpp test-asan test-python test-net bench clean

all: build

setup:
	@bash scripts/setup.sh

build: setup
	@cmake -S . -B $(BUILD) -G Ninja -DCHAINIO_WERROR=ON >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

build-asan: setup
	@cmake -S . -B $(ASAN) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCHAINIO_SANITIZE=address,undefined \
	  -DCHAINIO_BUILD_BENCH=OFF -DCHAINIO_WERROR=ON >/dev/null
	@cmake --build $(ASAN) -j $(JOBS)

# Builds the extension with the compilers and packages setup installed (no build isolation).
install: setup
	@$(PIP) --no-build-isolation .

demo: install
	@$(PY) -m chainio_torch demo

test-cpp: build
	ctest --test-dir $(BUILD) --output-on-failure

test-asan: build-asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest --test-dir $(ASAN) --output-on-failure

test-python: install
	$(PY) -m pytest -q tests/python

# Two network namespaces joined by veth (root): AF_XDP and TCP sessions, impairments, failures.
test-net: install
	$(PY) -m pytest -q tests/net

test: test-cpp test-asan test-python test-net fuzz

bench: build install
	$(PY) bench/read_bench.py

clean:
	rm -rf $(BUILD) $(ASAN) build-py

# libFuzzer on the safetensors header parser for 60 s (clang build in build-fuzz/).
.PHONY: fuzz
fuzz: setup
	bash tests/fuzz/run_fuzz.sh 60
