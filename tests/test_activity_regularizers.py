"""Activity regularization against Keras 3 itself: layers with an `activity_regularizer` and
ActivityRegularization layers add Keras' penalty (regularizer(output) / batch size, per call) to
the training loss the optimizer differentiates, to the loss `train_on_batch`/`fit` report and to
`evaluate`'s loss; inference graphs do not change.

The oracles come from tests/fixtures/make_keras_training_fixtures.py (ACTIVITY_MODELS, run in a
Keras venv): weights after 1 and 3 `train_on_batch` steps, the losses, `evaluate` after them, one
`fit` epoch with uneven batches, and each model saved by Keras as a `.keras` archive. This test
needs no Keras."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest

import kcompile as kc
from kcompile import layers
from kcompile.errors import ModelError
from kcompile.training import optimizers, regularizers

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "training")
INDEX = json.load(open(os.path.join(HERE, "keras_training.json")))
DATA = np.load(os.path.join(HERE, "keras_training.npz"))
MODELS, OPTIMIZERS = INDEX["activity_models"], INDEX["activity_optimizers"]
CASES = [(m, o) for m in MODELS for o in OPTIMIZERS]
IDS = [f"{m}-{o}" for m, o in CASES]


def make_layer(cls: str, kwargs: dict[str, Any]) -> Any:
    kwargs = dict(kwargs)
    if cls == "Sequential":
        return kc.Sequential([make_layer(*spec) for spec in kwargs["layers"]], name=kwargs["name"])
    if "layer" in kwargs:  # TimeDistributed
        kwargs["layer"] = make_layer(*kwargs["layer"])
    reg = kwargs.pop("kernel_regularizer", None)
    layer = getattr(layers, cls)(**kwargs)  # activity_regularizer: Keras' config dict
    if reg is not None:
        layer.kernel_regularizer = regularizers.L2(reg)
    return layer


def build(spec: dict[str, Any]) -> kc.Model:
    return kc.Sequential([kc.Input(shape=tuple(spec["input"]))] + [make_layer(*s) for s in spec["layers"]])


def weights(prefix: str) -> list[np.ndarray]:
    out = []
    while f"{prefix}/{len(out)}" in DATA:
        out.append(DATA[f"{prefix}/{len(out)}"])
    return out


def compiled(model: kc.Model, model_name: str, opt_name: str) -> kc.Model:
    cls, kwargs = OPTIMIZERS[opt_name]
    model.set_weights(weights(f"{model_name}/w0"))
    model.compile(optimizer=getattr(optimizers, cls)(**kwargs), loss=MODELS[model_name]["loss"])
    return model


def check_weights(model: kc.Model, prefix: str, what: str) -> None:
    want = weights(prefix)
    got = model.get_weights()
    assert len(got) == len(want)
    for w, g, k in zip(model.weights, got, want, strict=True):
        np.testing.assert_allclose(g, k, rtol=1e-5, atol=1e-7, err_msg=f"{w.name} {what}")


def check_steps(model: kc.Model, model_name: str, opt_name: str) -> None:
    x, y = DATA[f"{model_name}/x"], DATA[f"{model_name}/y"]
    want_losses = DATA[f"{model_name}/{opt_name}/loss"]
    for step in range(1, 4):
        loss = model.train_on_batch(x, y)
        np.testing.assert_allclose(loss, want_losses[step - 1], rtol=1e-5, err_msg=f"loss at step {step}")
        if step in (1, 3):
            check_weights(model, f"{model_name}/{opt_name}/step{step}", f"after step {step}")
    got = model.evaluate(x, y, batch_size=6, verbose=0)
    np.testing.assert_allclose(got, DATA[f"{model_name}/{opt_name}/evaluate"], rtol=1e-5, err_msg="evaluate")


@pytest.mark.parametrize(("model_name", "opt_name"), CASES, ids=IDS)
def test_training_with_activity_penalties_matches_keras(model_name: str, opt_name: str) -> None:
    model = compiled(build(MODELS[model_name]), model_name, opt_name)
    check_steps(model, model_name, opt_name)


@pytest.mark.parametrize(("model_name", "opt_name"), CASES, ids=IDS)
def test_fit_with_uneven_batches_matches_keras(model_name: str, opt_name: str) -> None:
    """Batches of 6, 6 and 4: each batch's penalty is divided by its own size."""
    model = compiled(build(MODELS[model_name]), model_name, opt_name)
    x, y = DATA[f"{model_name}/x"], DATA[f"{model_name}/y"]
    hist = model.fit(x, y, batch_size=6, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(hist.history["loss"], DATA[f"{model_name}/{opt_name}/fit_loss"], rtol=1e-5)
    check_weights(model, f"{model_name}/{opt_name}/fit", "after one fit epoch")


@pytest.mark.parametrize("model_name", list(MODELS))
def test_keras_archive_with_activity_regularizers_trains_like_keras(model_name: str) -> None:
    model = kc.load(os.path.join(HERE, f"{model_name}.keras"))
    check_steps(compiled(model, model_name, "adam"), model_name, "adam")


def test_inference_graph_is_unchanged() -> None:
    spec = MODELS["act_layer"]
    plain_spec = {
        **spec,
        "layers": [
            [cls, {k: v for k, v in kw.items() if k != "activity_regularizer"}]
            for cls, kw in spec["layers"]
            if cls != "ActivityRegularization"
        ],
    }
    regularized, plain = build(spec), build(plain_spec)
    plain.set_weights(regularized.get_weights())
    for level in (0, 2):
        a = kc.compile(regularized, level=level).graph
        b = kc.compile(plain, level=level).graph
        ops_a, ops_b = [n.op for n in a.nodes], [n.op for n in b.nodes]
        if level == 2:
            assert ops_a == ops_b
        assert not {"abs", "size", "reduce_sum"} & set(ops_a)
    x = DATA["act_layer/x"]
    np.testing.assert_allclose(regularized.predict(x), plain.predict(x), rtol=1e-6)


def test_shared_layer_adds_one_penalty_per_call() -> None:
    """Keras' `Layer.__call__` adds a loss per call; the oracle here is the NumPy formula."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    y = rng.standard_normal((5, 4)).astype(np.float32)
    inp = kc.Input(shape=(4,))
    shared = layers.Dense(4, activation="tanh", activity_regularizer=regularizers.L1L2(0.03, 0.2))
    model = kc.Model(inp, shared(shared(inp)))
    model.compile(optimizer="sgd", loss="mse")
    k, b = model.get_weights()
    h1 = np.tanh(x @ k + b)
    h2 = np.tanh(h1 @ k + b)

    def pen(h: np.ndarray) -> float:
        return float(0.03 * np.abs(h).sum() + 0.2 * (h**2).sum()) / len(h)

    want = ((h2 - y) ** 2).mean() + pen(h1) + pen(h2)
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0), want, rtol=1e-5)
    np.testing.assert_allclose(model.train_on_batch(x, y), want, rtol=1e-5)


def test_activity_regularizer_is_parsed_and_kept_in_the_config() -> None:
    layer = layers.Dense(3, activity_regularizer={"class_name": "L1L2", "config": {"l1": 0.5, "l2": 0.25}})
    assert isinstance(layer.activity_regularizer, regularizers.L1L2)
    assert (layer.activity_regularizer.l1, layer.activity_regularizer.l2) == (0.5, 0.25)
    assert layers.Dense(3, activity_regularizer="l2").get_config()["activity_regularizer"] == "l2"
    with pytest.raises(ModelError, match="unknown regularizer"):
        layers.Dense(3, activity_regularizer="l3")
    assert "activity_regularizer" not in layers.ActivityRegularization(l1=0.1).get_config()
    with pytest.raises(ModelError, match="l1 and l2"):
        layers.ActivityRegularization(l1=0.1, activity_regularizer="l2")


def test_regularizer_configs_are_keras_configs() -> None:
    # Keras' `from_config` is `cls(**config)`: L2(l1=..) would not load.
    assert regularizers.L1(0.5).get_config() == {"l1": 0.5}
    assert regularizers.L2(0.25).get_config() == {"l2": 0.25}
    assert regularizers.L1L2(0.5, 0.25).get_config() == {"l1": 0.5, "l2": 0.25}


def test_unsupported_placements_are_refused_when_training() -> None:
    reg = regularizers.L2(0.1)
    inp = kc.Input(shape=(3, 4))
    att = layers.MultiHeadAttention(num_heads=2, key_dim=2, activity_regularizer=reg)
    model = kc.Model(inp, att(inp, inp))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ModelError, match=r"MultiHeadAttention .*query, key, value"):
        model.train_on_batch(np.zeros((2, 3, 4), np.float32), np.zeros((2, 3, 4), np.float32))
    inp = kc.Input(shape=(3, 4))
    model = kc.Model(inp, layers.Bidirectional(layers.GRU(2, activity_regularizer=reg))(inp))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ModelError, match="each direction"):
        model.train_on_batch(np.zeros((2, 3, 4), np.float32), np.zeros((2, 4), np.float32))
    inp = kc.Input(shape=(4,))
    inner = kc.Model(inp, layers.Dense(2)(inp), activity_regularizer=reg)
    inp = kc.Input(shape=(4,))
    model = kc.Model(inp, inner(inp))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ModelError, match="does not apply to a model"):
        model.train_on_batch(np.zeros((2, 4), np.float32), np.zeros((2, 2), np.float32))
