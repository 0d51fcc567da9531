"""Weight regularizers inside nested models and wrappers count in the training loss, as in Keras
(the reported loss is the data loss plus `l2 * sum(w^2)` for every regularized weight)."""

from __future__ import annotations

import numpy as np

import kcompile as kc
from kcompile import layers as L


def build(l2: float | None) -> kc.Model:
    kc.clear_session()
    reg = None if l2 is None else kc.regularizers.L2(l2)
    inner = kc.Sequential([kc.Input(shape=(3,)), L.Dense(2, kernel_regularizer=reg)], name="inner")
    x = kc.Input(shape=(4, 3))
    y = L.TimeDistributed(inner)(x)
    y = L.Bidirectional(L.LSTM(2, kernel_regularizer=reg))(y)
    model = kc.Model(x, L.Dense(1)(y))
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(w.dtype) for w in model.get_weights()])
    model.compile(optimizer=kc.optimizers.SGD(0.0), loss="mse")
    return model


def test_nested_and_wrapped_regularizers_are_added_to_the_loss() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 4, 3)).astype("float32")
    y = rng.standard_normal((5, 1)).astype("float32")
    plain = float(np.ravel(build(None).train_on_batch(x, y))[0])
    model = build(0.1)
    regularized = float(np.ravel(model.train_on_batch(x, y))[0])
    names = ("inner/dense/kernel", "bidirectional/forward_lstm/lstm_cell/kernel",
             "bidirectional/backward_lstm/lstm_cell/kernel")  # fmt: skip
    kernels = [w.data for w in model.weights if w.name.endswith(names)]
    assert len(kernels) == 3  # the inner Dense and both LSTM directions
    penalty = 0.1 * sum(float(np.sum(np.asarray(k, np.float64) ** 2)) for k in kernels)
    np.testing.assert_allclose(regularized - plain, penalty, rtol=1e-4)
