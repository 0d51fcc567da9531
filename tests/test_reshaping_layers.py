"""The reshaping, noise and small core layers beyond their Keras inference fixtures
(tests/fixtures/keras_reshaping.*): the noise layers' training behaviour against Keras'
definitions (statistics of many draws, in the reference interpreter and in onnxruntime), the
learning-phase folding that leaves nothing of them at inference, symbolic sizes, and errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from kcompile.runtime import lower_to_onnx

import kcompile as kc
from kcompile.ir import Builder, TensorType, run_graph
from kcompile.layers import (
    AlphaDropout,
    Cropping1D,
    Dense,
    GaussianDropout,
    GaussianNoise,
    Permute,
    ReLU,
    SpatialDropout1D,
    SpatialDropout2D,
    SpatialDropout3D,
    UpSampling1D,
    UpSampling2D,
)
from kcompile.ops.elementwise import SELU_ALPHA, SELU_SCALE

RANDOM_OPS = {"random_normal", "dropout_mask", "phase_select", "learning_phase"}


def one_layer(layer: Any, shape: tuple[int | None, ...]) -> kc.Model:
    x = kc.Input(shape=shape, name="x")
    return kc.Model(x, layer(x))


def training_outputs(model: kc.Model, x: np.ndarray) -> list[np.ndarray]:
    """The model in training mode, twice per engine: the reference interpreter on the graph
    folded at phase 1, and onnxruntime on `kc.compile(learning_phase=1)`."""
    graph = kc.optimize(model.to_graph(), learning_phase=1)
    compiled = kc.compile(model, learning_phase=1)
    return [
        run_graph(graph, {"x": x}, seed=0)[0],
        run_graph(graph, {"x": x}, seed=1)[0],
        compiled({"x": x}),
        compiled({"x": x}),
    ]


def check_training(model: kc.Model, x: np.ndarray, check: Callable[[np.ndarray], None]) -> None:
    outs = training_outputs(model, x)
    for y in outs:
        assert y.shape == x.shape and y.dtype == x.dtype
        check(y)
    # A new draw per run, in both engines.
    assert not np.array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[2], outs[3])


@pytest.mark.parametrize(
    "layer",
    [
        SpatialDropout1D(0.4),
        SpatialDropout2D(0.4, data_format="channels_first"),
        GaussianNoise(0.3),
        GaussianDropout(0.3),
        AlphaDropout(0.3, noise_shape=(None, 1, None)),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_noise_layers_leave_nothing_at_inference(layer: Any) -> None:
    shape = (5, 4, 3) if isinstance(layer, SpatialDropout2D) else (6, 3)
    model = one_layer(layer, shape)
    assert model.uses_learning_phase
    x = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    for level in (0, 1, 2):
        graph = kc.optimize(model.to_graph(), level=level)
        assert not set(graph.op_counts()) & RANDOM_OPS
        np.testing.assert_array_equal(run_graph(graph, {"x": x})[0], x)
    np.testing.assert_array_equal(kc.compile(model)({"x": x}), x)
    # A dynamic phase keeps both branches: False selects the input.
    dynamic = kc.compile(model, learning_phase="dynamic")
    np.testing.assert_array_equal(dynamic({"x": x}, training=False), x)
    assert not np.array_equal(dynamic({"x": x}, training=True), x)


def test_gaussian_noise_adds_normal_noise_of_stddev() -> None:
    x = np.random.default_rng(1).standard_normal((64, 500)).astype(np.float32)

    def check(y: np.ndarray) -> None:
        noise = (y - x).astype(np.float64)
        assert abs(noise.mean()) < 0.01
        assert abs(noise.std() - 0.3) < 0.01

    check_training(one_layer(GaussianNoise(0.3, seed=5), (500,)), x, check)


def test_gaussian_dropout_multiplies_by_normal_noise_around_one() -> None:
    # Keras: x * N(1, rate / (1 - rate)), so on ones the output is the noise itself.
    x = np.ones((64, 500), np.float32)
    rate = 0.3

    def check(y: np.ndarray) -> None:
        assert abs(y.mean() - 1.0) < 0.01
        assert abs(y.var() - rate / (1 - rate)) < 0.02

    check_training(one_layer(GaussianDropout(rate, seed=5), (500,)), x, check)


@pytest.mark.parametrize(
    ("layer", "shape", "spatial"),
    [
        (SpatialDropout1D(0.4, seed=3), (6, 50), (1,)),
        (SpatialDropout2D(0.4, seed=3), (3, 4, 50), (1, 2)),
        (SpatialDropout2D(0.4, data_format="channels_first", seed=3), (50, 3, 4), (2, 3)),
        (SpatialDropout3D(0.4, seed=3), (2, 3, 2, 50), (1, 2, 3)),
        (SpatialDropout3D(0.4, data_format="channels_first", seed=3), (50, 2, 3, 2), (2, 3, 4)),
    ],
    ids=["1d", "2d", "2d_channels_first", "3d", "3d_channels_first"],
)
def test_spatial_dropout_drops_whole_feature_maps(layer: Any, shape: tuple[int, ...], spatial: tuple[int, ...]) -> None:
    # Keras: dropout with noise shape (batch, 1.., channels): one keep/drop per sample and channel.
    x = np.ones((40, *shape), np.float32)

    def check(y: np.ndarray) -> None:
        first = y[tuple(slice(0, 1) if i in spatial else slice(None) for i in range(y.ndim))]
        np.testing.assert_array_equal(y, np.broadcast_to(first, y.shape))
        kept = first != 0
        np.testing.assert_allclose(first[kept], 1 / 0.6, rtol=1e-6)
        assert abs(kept.mean() - 0.6) < 0.05

    check_training(one_layer(layer, shape), x, check)


def test_alpha_dropout_keeps_mean_and_variance_and_sets_dropped_units_to_the_saturation_value() -> None:
    rate = 0.3
    alpha_p = -SELU_ALPHA * SELU_SCALE
    a = ((1 - rate) * (1 + rate * alpha_p**2)) ** -0.5
    b = -a * alpha_p * rate
    x = np.random.default_rng(2).standard_normal((64, 20, 30)).astype(np.float32)

    def check(y: np.ndarray) -> None:
        dropped = np.isclose(y, a * alpha_p + b, rtol=0, atol=1e-6)
        np.testing.assert_allclose(y[~dropped], (a * x + b)[~dropped], rtol=1e-5, atol=1e-6)
        # noise_shape (None, 1, None): one draw per sample and feature, shared along axis 1.
        np.testing.assert_array_equal(dropped, np.broadcast_to(dropped[:, :1], dropped.shape))
        assert abs(dropped.mean() - rate) < 0.03
        # The point of the affine correction: standard normal in, mean 0 and variance 1 out.
        assert abs(y.mean()) < 0.05
        assert abs(y.var() - 1.0) < 0.05

    check_training(one_layer(AlphaDropout(rate, noise_shape=(None, 1, None), seed=7), (20, 30)), x, check)


def test_noise_layers_train_through_fit() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 5)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    model = kc.Sequential(
        [
            kc.Input(shape=(5,)),
            GaussianNoise(0.1),
            Dense(8, activation="selu"),
            AlphaDropout(0.2),
            GaussianDropout(0.2),
            Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer=kc.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
    first, second = model.train_on_batch(x, y), model.train_on_batch(x, y)
    assert np.isfinite(first) and first != second  # same weights (lr 0), new noise
    assert model.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0))


def test_random_normal_draws_the_requested_distribution() -> None:
    import onnxruntime as ort

    b = Builder()
    x = b.input("x", TensorType("float32", ("batch", 1000)))
    b.graph.outputs = [b.op("random_normal", [x], mean=1.5, stddev=0.5, seed=9)]
    session = ort.InferenceSession(lower_to_onnx(b.graph).SerializeToString(), providers=["CPUExecutionProvider"])
    feed = np.zeros((50, 1000), np.float32)
    for got in (run_graph(b.graph, {"x": feed})[0], session.run(None, {"x": feed})[0]):
        assert got.shape == feed.shape and got.dtype == np.float32
        assert abs(got.mean() - 1.5) < 0.01
        assert abs(got.std() - 0.5) < 0.01


def test_repeat_handles_symbolic_sizes() -> None:
    x = np.random.default_rng(4).standard_normal((2, 3, 5, 2)).astype(np.float32)
    model = one_layer(UpSampling2D((2, 3)), (None, None, 2))
    want = np.repeat(np.repeat(x, 2, axis=1), 3, axis=2)
    np.testing.assert_array_equal(kc.compile(model)({"x": x}), want)
    np.testing.assert_array_equal(run_graph(kc.optimize(model.to_graph()), {"x": x})[0], want)
    seq = one_layer(UpSampling1D(3), (None, 4))
    for steps in (2, 7):
        s = np.random.default_rng(steps).standard_normal((2, steps, 4)).astype(np.float32)
        np.testing.assert_array_equal(kc.compile(seq)({"x": s}), np.repeat(s, 3, axis=1))


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: one_layer(Cropping1D((3, 3)), (6, 2)), kc.ShapeError, "leaves nothing"),
        (lambda: one_layer(Cropping1D((1, 1)), (None, 2)), kc.ShapeError, "static size"),
        (lambda: one_layer(UpSampling2D(interpolation="bilinear"), (None, 4, 2)), kc.ShapeError, "static"),
        (lambda: UpSampling2D(interpolation="bicubic"), kc.ModelError, "interpolation"),
        (lambda: Permute((1, 3)), kc.ModelError, "permutation"),
        (lambda: one_layer(Permute((2, 1)), (2, 3, 4)), kc.ShapeError, "rank-3"),
        (lambda: ReLU(threshold=-1.0), kc.ModelError, "threshold"),
        (lambda: GaussianDropout(1.0), kc.ModelError, r"\[0, 1.0\)"),
        (lambda: one_layer(AlphaDropout(0.2, noise_shape=(None, 2)), (4,)), kc.ShapeError, "noise_shape"),
        (lambda: one_layer(SpatialDropout2D(0.2), (4, 3)), kc.ShapeError, "rank-4"),
    ],
)
def test_errors_say_what_is_wrong(make: Callable[[], Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_dropout_noise_shape_shares_the_mask_along_size_one_axes() -> None:
    """Keras' Dropout(noise_shape=(None, 1, 1, C)): one keep/drop draw per (sample, channel),
    the same at every position, kept values scaled by 1 / (1 - rate); the identity at inference."""
    x_in = kc.Input(shape=(5, 6, 8))
    model = kc.Model(x_in, kc.layers.Dropout(0.5, noise_shape=(None, 1, 1, 8), seed=3)(x_in))
    x = np.random.default_rng(0).uniform(1.0, 2.0, (4, 5, 6, 8)).astype("float32")
    y = np.asarray(kc.compile(model, learning_phase=1)(x))
    ratio = y / x
    assert np.allclose(ratio, ratio[:, :1, :1, :])  # constant over the shared spatial axes
    assert set(np.round(np.unique(ratio), 5)) <= {0.0, 2.0} and 0 < (ratio[:, 0, 0, :] == 0).mean() < 1
    np.testing.assert_array_equal(np.asarray(kc.compile(model)(x)), x)
