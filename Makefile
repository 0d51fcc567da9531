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
	$(PIP) install -e ".[demo]"
	touch $@

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PIP) install -e ".[dev,tvm]"
	touch $(STAMP) $@

demo: $(STAMP)
	@mkdir -p build
	$(VENV)/bin/kcompile examples/mnist_mlp.py:mnist -o build/mnist_cli.onnx
	$(PY) examples/mnist_mlp.py
	$(VENV)/bin/kcompile check examples/blocks.k
	$(VENV)/bin/kcompile examples/mnist.k -o build/mnist_k.onnx
	$(VENV)/bin/kcompile examples/classifier.k -o build/classifier_k.onnx
	$(VENV)/bin/kcompile examples/replicas.k --model siamese -o build/siamese_k.onnx
	$(VENV)/bin/kcompile examples/replicas.k --model replicas -o build/replicas_k.onnx
	$(VENV)/bin/kcompile examples/replicas.k --model replicas --emit dot -o build/replicas_k.dot
	$(VENV)/bin/kcompile examples/blocks.k --model cnn --time-passes -o build/cnn_k.onnx
	$(VENV)/bin/kcompile examples/blocks.k --model finetune -o build/finetune_k.onnx
	$(VENV)/bin/kcompile examples/video_qa.k --model video_qa -o build/video_qa_k.onnx
	$(VENV)/bin/kcompile tests/fixtures/models/mobilenet_v2.keras -o build/mobilenet_v2.onnx
	$(VENV)/bin/kcompile tests/fixtures/models/transformer_block.keras -o build/transformer_block.onnx
	$(VENV)/bin/kcompile train examples/digits.k --data examples/data/digits.npz \
		-o build/digits.onnx --curve build/digits_curve.png --checkpoint build/digits.weights.h5

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
	KERAS_BACKEND=torch $(PY) bench/train.py

clean:
	rm -rf build dist *.egg-info .pytest_cache
