"""Regenerate `digits.npz`: the 8x8 handwritten digits that ship with scikit-learn (a copy of
the UCI "Optical Recognition of Handwritten Digits" test set, CC BY 4.0), split 80/20 with a
fixed seed and scaled to [0, 1].

    pip install scikit-learn numpy && python examples/data/make_digits.py

kcompile itself never needs scikit-learn: the demo reads the committed `digits.npz`.
"""

from __future__ import annotations

import os

import numpy as np
from sklearn.datasets import load_digits

digits = load_digits()
x = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1)
y = digits.target.astype(np.int64)
order = np.random.default_rng(0).permutation(len(x))
split = int(0.8 * len(x))
train, test = order[:split], order[split:]
np.savez_compressed(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.npz"),
    x_train=x[train],
    y_train=y[train],
    x_test=x[test],
    y_test=y[test],
)
