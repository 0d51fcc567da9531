"""The normalization layers through the optimisation levels.

LayerNormalization over trailing axes is one `layer_norm` op and reaches onnxruntime as ONE ONNX
LayerNormalization node (no ReduceMean/Sqrt/Div around it; its weights are initializers after
-O1 folds any reshape of them). Every model here keeps its numbers at -O1..-O3 against -O0 in
onnxruntime with onnxruntime's own optimizer off, and against the reference interpreter; every
optimised file passes `onnx.checker.check_model(full_check=True)`. Keras numerics themselves are
checked by tests/test_keras_layers.py (fixtures from make_keras_normalization_fixtures.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import kcompile as kc
from kcompile import layers
from kcompile.ir import run_graph

STATISTIC_OPS = {"ReduceMean", "ReduceSum", "Sqrt", "Div", "Pow", "Reciprocal", "GlobalAveragePool"}


def randomize(model: kc.Model, seed: int = 0) -> kc.Model:
    rng = np.random.default_rng(seed)
    values = []
    for w in model.weights:
        if w.type.dtype.startswith("int"):
            values.append(np.array(7, w.type.dtype))
        elif w.name.endswith("variance"):
            values.append(rng.uniform(0.2, 2.0, w.type.shape).astype(np.float32))
        else:
            values.append((rng.standard_normal(w.type.shape) * 0.5 + 0.2).astype(np.float32))
    model.set_weights(values)
    return model


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def onnx_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def feeds_for(model: kc.Model, batch: int, time: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for t in model.inputs:
        shape = (batch, *(time if d is None else d for d in t.shape[1:]))
        out[t._call.layer.name] = (rng.standard_normal(shape) + 0.5).astype(np.float32)
    return out


# Models ------------------------------------------------------------------------------------
def encoder_block(**ln: object) -> Callable[[], kc.Model]:
    """Dense -> LayerNormalization(**ln) -> Dense over a symbolic time axis."""

    def build() -> kc.Model:
        x = kc.Input(shape=(None, 8), name="x")
        h = layers.Dense(8, activation="relu")(x)
        h = layers.LayerNormalization(**ln)(h)  # type: ignore[arg-type]
        return kc.Model(x, layers.Dense(4)(h))

    return build


def ln_over_two_axes() -> kc.Model:
    x = kc.Input(shape=(6, 5), name="x")
    return kc.Model(x, layers.LayerNormalization(axis=[-2, -1])(layers.Dense(5)(x)))


def ln_mixed_sign_axes() -> kc.Model:
    # Keras sorts the raw values to [-1, 1]: the (5, 6) weights are reshaped onto axes 1, 2.
    x = kc.Input(shape=(6, 5), name="x")
    return kc.Model(x, layers.LayerNormalization(axis=[1, -1])(x))


def ln_leading_axis() -> kc.Model:
    x = kc.Input(shape=(6, 5), name="x")
    return kc.Model(x, layers.Dense(3)(layers.LayerNormalization(axis=1)(x)))


def conv_group_norm() -> kc.Model:
    x = kc.Input(shape=(None, 4, 3), name="x")  # a symbolic height
    h = layers.Conv2D(6, 3, padding="same")(x)
    h = layers.GroupNormalization(groups=3)(h)
    h = layers.Activation("relu")(h)
    # Groups along the (static) width axis, behind the symbolic height.
    return kc.Model(x, layers.GroupNormalization(groups=2, axis=2, center=False)(layers.Conv2D(4, 1)(h)))


def preprocessed_mlp() -> kc.Model:
    x = kc.Input(shape=(6,), name="x")
    h = layers.Normalization()(x)
    h = layers.Dense(8, activation="relu")(h)
    h = layers.RMSNormalization()(h)
    h = layers.UnitNormalization()(layers.Dense(4)(h))
    return kc.Model(x, layers.Normalization(mean=[0.5, -1.0, 0.0, 2.0], variance=[1.0, 0.0, 2.0, 4.0], invert=True)(h))


def rms_scaling_block() -> kc.Model:
    x = kc.Input(shape=(None, 6), name="x")
    return kc.Model(x, layers.LayerNormalization(rms_scaling=True)(layers.Dense(6)(x)))


TRAILING: dict[str, Callable[[], kc.Model]] = {
    "axis-1": encoder_block(),
    "no_center": encoder_block(center=False),
    "no_scale": encoder_block(scale=False),
    "no_center_no_scale_eps": encoder_block(center=False, scale=False, epsilon=0.1),
    "two_axes": ln_over_two_axes,
    "mixed_sign_axes": ln_mixed_sign_axes,
}
MODELS: dict[str, Callable[[], kc.Model]] = {
    **{f"layer_norm_{k}": v for k, v in TRAILING.items()},
    "layer_norm_leading_axis": ln_leading_axis,
    "conv_group_norm": conv_group_norm,
    "preprocessed_mlp": preprocessed_mlp,
    "rms_scaling": rms_scaling_block,
}


# Tests -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TRAILING))
def test_trailing_layer_norm_is_one_onnx_layer_normalization(name: str) -> None:
    model = randomize(TRAILING[name]())
    onnx_model = kc.compile(model, level=2).onnx_model
    types = op_types(onnx_model)
    assert types.count("LayerNormalization") == 1
    assert not STATISTIC_OPS & set(types), types
    (node,) = [n for n in onnx_model.graph.node if n.op_type == "LayerNormalization"]
    # Scale (and bias) come straight from initializers: no reshape is left in front of the node.
    inits = {i.name for i in onnx_model.graph.initializer}
    assert all(i in inits for i in node.input[1:]), node.input
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["stash_type"] == 1 and attrs["axis"] == (1 if name in ("two_axes", "mixed_sign_axes") else 2)
    assert len(node.input) == (2 if "no_center" in name else 3)


def test_layer_norm_outside_the_trailing_axes_stays_primitive() -> None:
    types = op_types(kc.compile(randomize(ln_leading_axis()), level=2).onnx_model)
    assert "LayerNormalization" not in types and types.count("ReduceMean") == 2


@pytest.mark.parametrize("level", [1, 2, 3])
@pytest.mark.parametrize("name", list(MODELS))
def test_levels_keep_the_numbers(name: str, level: int) -> None:
    model = randomize(MODELS[name]())
    base = kc.compile(model, level=0).onnx_model
    opt = kc.compile(model, level=level).onnx_model
    onnx.checker.check_model(opt, full_check=True)
    optimized_ir = kc.optimize(model.to_graph(), level=level)
    for batch, time in ((1, 3), (4, 7)):
        feeds = feeds_for(model, batch, time)
        want = onnx_outputs(base, feeds)
        for w, g, r in zip(want, onnx_outputs(opt, feeds), run_graph(optimized_ir, feeds), strict=True):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)
            np.testing.assert_allclose(r, w, rtol=2e-5, atol=2e-5)


def test_layer_norm_trains_through_its_gradient_rule() -> None:
    """One SGD step through LayerNormalization equals the step from finite differences of the loss."""
    x = kc.Input(shape=(5,), name="x")
    model = randomize(kc.Model(x, layers.Dense(2)(layers.LayerNormalization()(layers.Dense(5)(x)))))
    rng = np.random.default_rng(3)
    xs, ys = rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
    before = model.get_weights()

    def loss(weights: list[np.ndarray]) -> float:
        model.set_weights(weights)
        (y,) = run_graph(kc.optimize(model.to_graph(), level=0), {"x": xs.astype(np.float32)})
        return float(np.mean((y - ys) ** 2))

    lr = 0.1
    model.set_weights(before)
    model.compile(optimizer=kc.optimizers.SGD(learning_rate=lr), loss="mse")
    model.train_on_batch(xs, ys)
    after = model.get_weights()
    gamma = 2  # dense kernel, dense bias, then the LayerNormalization's gamma
    assert model.weights[gamma].name.endswith("layer_normalization/gamma")
    eps = 1e-3
    for i in range(before[gamma].size):
        plus = [w.copy() for w in before]
        minus = [w.copy() for w in before]
        plus[gamma].reshape(-1)[i] += eps
        minus[gamma].reshape(-1)[i] -= eps
        fd = (loss(plus) - loss(minus)) / (2 * eps)
        step = (before[gamma].reshape(-1)[i] - after[gamma].reshape(-1)[i]) / lr
        np.testing.assert_allclose(step, fd, rtol=2e-2, atol=1e-4)


@pytest.mark.parametrize(
    ("make", "shape", "error", "message"),
    [
        (lambda: layers.RMSNormalization(axis=1), (4, 5), kc.ShapeError, "must be the trailing axes"),
        (lambda: layers.GroupNormalization(groups=4), (6,), kc.ShapeError, "cannot be split into 4 groups"),
        (lambda: layers.GroupNormalization(groups=2, axis=1), (None, 4), kc.ShapeError, "known size on axis 1"),
        (lambda: layers.LayerNormalization(axis=[1, -2]), (4, 5), kc.ShapeError, "names one axis twice"),
        (lambda: layers.LayerNormalization(axis=3), (4, 5), kc.ShapeError, "out of range"),
        (lambda: layers.Normalization(mean=[1.0, 2.0]), (2,), kc.ModelError, "both `mean` and `variance`"),
        (lambda: layers.Normalization(mean=[1.0], variance=[1.0, 2.0]), (2,), kc.ModelError, "one shape"),
        (lambda: layers.Normalization(axis=None, mean=[1.0], variance=[1.0]), (2,), kc.ModelError, "more dimensions"),
    ],
)
def test_configuration_errors_say_what_is_wrong(
    make: Callable[[], object], shape: tuple, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        layer = make()
        layer(kc.Input(shape=shape))  # type: ignore[operator]
