"""Transposed and separable convolutions beyond the single-layer Keras fixtures (keras_conv):
what -O2 makes of them (one ONNX ConvTranspose per layer, BatchNormalization folded into it,
no transposes between layers), symbolic spatial sizes, Keras' argument checks, and training.
The numbers are compared with the unoptimised graph run by the NumPy reference interpreter."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from kcompile.passes import FusionPass
from kcompile.runtime import CompiledModel, lower_to_onnx

import kcompile as kc
from kcompile import layers
from kcompile.errors import ModelError
from kcompile.ir import Builder, Graph, TensorType, run_graph
from kcompile.ir.graph import Param


def randomize(model: kc.Model, seed: int = 0) -> kc.Model:
    rng = np.random.default_rng(seed)
    values = []
    for w in model.weights:
        v = rng.standard_normal(w.type.shape).astype(np.float32) * 0.5
        values.append(np.abs(v) + 0.5 if w.name.endswith("moving_variance") else v)
    model.set_weights(values)
    return model


def op_types(compiled: CompiledModel) -> list[str]:
    return [n.op_type for n in compiled.onnx_model.graph.node]


def check_against_reference(model: kc.Model, compiled: CompiledModel, x: np.ndarray) -> None:
    (name,) = compiled.input_names
    want = run_graph(kc.optimize(model.to_graph(), level=0), {name: x})[0]
    got = compiled({name: x})
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_conv2d_transpose_batch_norm_folds_into_one_conv_transpose(data_format: str) -> None:
    last = data_format == "channels_last"
    x = kc.Input(shape=(5, 6, 3) if last else (3, 5, 6), name="x")
    h = layers.Conv2DTranspose(4, 3, strides=2, padding="same", output_padding=1, data_format=data_format)(x)
    h = layers.BatchNormalization(axis=-1 if last else 1)(h)
    model = randomize(kc.Model(x, layers.ReLU()(h)))
    compiled = kc.compile(model, level=2)
    core = ["ConvTranspose", "Relu"]
    assert op_types(compiled) == (["Transpose", *core, "Transpose"] if last else core)
    check_against_reference(model, compiled, np.random.default_rng(1).standard_normal((2, *x.shape[1:]), np.float32))


def test_decoder_keeps_only_the_boundary_transposes() -> None:
    x = kc.Input(shape=(4, 5, 3), name="x")
    h = layers.Conv2DTranspose(6, 3, strides=2, padding="same", activation="relu")(x)
    h = layers.SeparableConv2D(4, 3, padding="same", depth_multiplier=2)(h)
    h = layers.BatchNormalization()(h)
    h = layers.Conv2DTranspose(2, 2, strides=3, output_padding=1)(h)
    model = randomize(kc.Model(x, h))
    compiled = kc.compile(model, level=2)
    assert op_types(compiled) == ["Transpose", "ConvTranspose", "Relu", "Conv", "Conv", "ConvTranspose", "Transpose"]
    check_against_reference(model, compiled, np.random.default_rng(2).standard_normal((3, 4, 5, 3), np.float32))


def test_scale_and_shift_fold_into_a_grouped_conv_transpose() -> None:
    rng = np.random.default_rng(3)
    b = Builder(Graph("g"))
    x = b.input("x", TensorType("float32", ("batch", 4, 3, 3)))
    w = Param("w", rng.standard_normal((4, 3, 2, 2)).astype(np.float32))  # group 2: 6 output channels
    y = b.op("conv_transpose", [x, w], group=2, strides=(2, 2), pads=(0, 1, 1, 0))
    y = b.op("mul", [y, b.constant(rng.standard_normal((6, 1, 1)).astype(np.float32))])
    y = b.op("add", [y, b.constant(rng.standard_normal((1, 6, 1, 1)).astype(np.float32))])
    b.graph.outputs = [y]
    feeds = {"x": rng.standard_normal((2, 4, 3, 3)).astype(np.float32)}
    (want,) = run_graph(b.graph, feeds)
    result = FusionPass().run(b.graph)
    assert result.stats == {"fold-scale-into-conv-transpose": 1, "fold-shift-into-conv-transpose": 1}
    assert [n.op for n in result.graph.nodes if n.op != "constant"] == ["conv_transpose"]
    np.testing.assert_allclose(run_graph(result.graph, feeds)[0], want, rtol=1e-5, atol=1e-5)


def test_scale_across_channels_and_space_is_not_folded() -> None:
    b = Builder(Graph("g"))
    x = b.input("x", TensorType("float32", ("batch", 2, 3)))
    w = Param("w", np.ones((2, 3, 2), np.float32))
    y = b.op("conv_transpose", [x, w])
    b.graph.outputs = [b.op("mul", [y, b.constant(np.arange(12, dtype=np.float32).reshape(3, 4))])]
    fusion = FusionPass()
    result = fusion.run(b.graph)
    assert [n.op for n in result.graph.nodes if n.op != "constant"] == ["conv_transpose", "mul"]
    assert any("is not per output channel" in e for e in fusion.explanations), fusion.explanations


@pytest.mark.parametrize(
    ("kwargs", "sizes"),
    [
        # Keras: 'same' -> n * s; with output_padding -> (n - 1) * s + k % 2 + output_padding;
        # 'valid' -> (n - 1) * s + k + default output_padding max(k, s) - k.
        ({"padding": "same", "strides": 2}, {4: 8, 5: 10}),
        ({"padding": "same", "strides": 2, "output_padding": 0}, {4: 7, 5: 9}),
        ({"padding": "valid", "strides": 3, "kernel_size": 2}, {4: 12, 5: 15}),
    ],
)
def test_symbolic_spatial_sizes(kwargs: dict, sizes: dict[int, int]) -> None:
    x = kc.Input(shape=(None, None, 2), name="x")
    layer = layers.Conv2DTranspose(3, **{"kernel_size": 3, **kwargs})
    model = randomize(kc.Model(x, layer(x)))
    assert all(isinstance(d, str) for d in model.outputs[0].type.shape[1:3])
    compiled = kc.compile(model, level=2)
    rng = np.random.default_rng(4)
    for n, want in sizes.items():
        feed = rng.standard_normal((2, n, n + 1, 2)).astype(np.float32)
        got = np.asarray(compiled({"x": feed}))
        assert got.shape[1] == want
        check_against_reference(model, compiled, feed)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: layers.Conv2DTranspose(2, 3, strides=2, output_padding=2), "output_padding"),
        (lambda: layers.Conv1DTranspose(2, 3, output_padding=1), "output_padding"),
        (lambda: layers.Conv2DTranspose(2, 3, output_padding=-1), "non-negative"),
        (lambda: layers.Conv2DTranspose(2, 3, strides=2, dilation_rate=2), "dilation_rate"),
        (lambda: layers.Conv1DTranspose(2, 3, padding="causal"), "padding"),
        (lambda: layers.SeparableConv1D(2, 3, padding="causal"), "padding"),
        (lambda: layers.DepthwiseConv1D(3, padding="causal"), "padding"),
        (lambda: layers.SeparableConv2D(0, 3), "filters"),
        (lambda: layers.SeparableConv2D(2, 3, depth_multiplier=0), "depth_multiplier"),
    ],
)
def test_keras_argument_checks(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError, match=message):
        make()


def test_weights_have_keras_names_shapes_and_order() -> None:
    x = kc.Input(shape=(6, 5, 3))
    sep = layers.SeparableConv2D(4, (3, 2), depth_multiplier=2, name="sep")
    tr = layers.Conv3DTranspose(2, (3, 2, 1), name="tr")
    sep(x)
    tr(kc.Input(shape=(4, 3, 2, 5)))
    assert [(w.name, w.type.shape) for w in sep.weights] == [
        ("sep/depthwise_kernel", (3, 2, 3, 2)),
        ("sep/pointwise_kernel", (1, 1, 6, 4)),
        ("sep/bias", (4,)),
    ]
    assert [(w.name, w.type.shape) for w in tr.weights] == [("tr/kernel", (3, 2, 1, 2, 5)), ("tr/bias", (2,))]


def test_conv_transpose_model_trains() -> None:
    rng = np.random.default_rng(5)
    model = kc.Sequential(
        [
            kc.Input(shape=(3, 4, 2)),
            layers.Conv2DTranspose(3, 3, strides=2, padding="same", activation="tanh"),
            layers.SeparableConv2D(2, 3, padding="same", pointwise_regularizer="l2"),
        ]
    )
    model.compile(optimizer=kc.optimizers.Adam(0.02), loss="mse")
    x = rng.standard_normal((16, 3, 4, 2)).astype(np.float32)
    y = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2) * 0.5
    hist = model.fit(x, y, epochs=20, batch_size=8, verbose=0, seed=0)
    assert hist.history["loss"][-1] < 0.5 * hist.history["loss"][0]


def test_conv_transpose_lowers_to_onnx_conv_transpose_with_explicit_pads() -> None:
    b = Builder(Graph("g"))
    x = b.input("x", TensorType("float32", ("batch", 2, 5)))
    w = Param("w", np.ones((2, 3, 3), np.float32))
    b.graph.outputs = [b.op("conv_transpose", [x, w], strides=(3,), pads=(1, 0), output_padding=(2,))]
    model = lower_to_onnx(b.graph)
    (node,) = [n for n in model.graph.node if n.op_type == "ConvTranspose"]
    attrs = {a.name: list(a.ints) for a in node.attribute if a.ints}
    assert attrs == {"strides": [3], "pads": [1, 0], "output_padding": [2]}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": np.ones((1, 2, 5), np.float32)})
    assert got.shape == (1, 3, 3 * 4 + 2 + 3 - 1)
