"""Training against Keras 3 itself: from the same start on the same batch, the weights (moving
statistics included) after 1 and 3 `train_on_batch` steps match Keras' within 1e-5 relative.

The oracles come from tests/fixtures/make_keras_training_fixtures.py (run in a Keras venv); this
test needs no Keras."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest

import kcompile as kc
from kcompile import layers
from kcompile.training import optimizers, regularizers

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "training")
INDEX = json.load(open(os.path.join(HERE, "keras_training.json")))
DATA = np.load(os.path.join(HERE, "keras_training.npz"))

CASES = [(m, o) for m in INDEX["models"] for o in INDEX["optimizers"]]


def build(spec: dict[str, Any]) -> kc.Model:
    stack: list[Any] = [kc.Input(shape=tuple(spec["input"]))]
    for cls, kwargs in spec["layers"]:
        kwargs = dict(kwargs)
        reg = kwargs.pop("kernel_regularizer", None)
        layer = getattr(layers, cls)(**kwargs)
        if reg is not None:
            layer.kernel_regularizer = regularizers.L2(reg)
        stack.append(layer)
    return kc.Sequential(stack)


def weights(prefix: str) -> list[np.ndarray]:
    out = []
    j = 0
    while f"{prefix}/{j}" in DATA:
        out.append(DATA[f"{prefix}/{j}"])
        j += 1
    return out


@pytest.mark.parametrize(("model_name", "opt_name"), CASES, ids=[f"{m}-{o}" for m, o in CASES])
def test_weights_match_keras_after_1_and_3_steps(model_name: str, opt_name: str) -> None:
    spec = INDEX["models"][model_name]
    cls, kwargs = INDEX["optimizers"][opt_name]
    model = build(spec)
    model.set_weights(weights(f"{model_name}/w0"))
    model.compile(optimizer=getattr(optimizers, cls)(**kwargs), loss=spec["loss"])
    x, y = DATA[f"{model_name}/x"], DATA[f"{model_name}/y"]
    want_losses = DATA[f"{model_name}/{opt_name}/loss"]
    for step in range(1, 4):
        loss = model.train_on_batch(x, y)
        np.testing.assert_allclose(loss, want_losses[step - 1], rtol=1e-5, err_msg=f"loss at step {step}")
        if step in (1, 3):
            want = weights(f"{model_name}/{opt_name}/step{step}")
            got = model.get_weights()
            assert len(got) == len(want)
            for w, (g, k) in zip(model.weights, zip(got, want, strict=True), strict=True):
                np.testing.assert_allclose(g, k, rtol=1e-5, atol=1e-7, err_msg=f"{w.name} after step {step}")
