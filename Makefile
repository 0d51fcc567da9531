# The two set-up commands for a fresh machine are `make demo` and `make test`: each creates
# .venv when it is missing and installs the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PIP) install -e ".[dev,tvm]"
	touch $(STAMP) $@

demo: $(STAMP)
	@mkdir -p build
	$(VENV)/bin/kcompile examples/mnist_mlp.py:mnist -o build/mnist_cli.onnx
	$(PY) examples/mnist_mlp.py

test: $(TEST_STAMP)
	$(PY) -m pytest -q

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check kcompile passes runtime tests bench examples
	$(VENV)/bin/ruff format --check kcompile passes runtime tests bench examples
	$(VENV)/bin/mypy

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): pyproject.toml | $(PY)
	$(PIP) install -e ".[bench]"
	touch $(STAMP) $@

bench: $(BENCH_STAMP)
	KERAS_BACKEND=torch $(PY) bench/run.py

clean:
	rm -rf build dist *.egg-info .pytest_cache
