"""Training throughput at batch 64: kcompile `fit` vs PyTorch eager vs Keras `fit`, side by side.

    KERAS_BACKEND=torch .venv/bin/python examples/train_bench.py [--only small_cnn] [--rounds 9]

The benchmark itself is bench/train.py (also run by `make bench`): the MNIST MLP and the small
MNIST CNN with SGD and Adam, interleaved rounds, median per runner, ratios against kcompile.
Peers that are not installed (`pip install .[bench]`) are reported and skipped.
"""

from __future__ import annotations

import os
import runpy

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    runpy.run_path(os.path.join(here, "..", "bench", "train.py"), run_name="__main__")
