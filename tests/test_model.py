"""The Keras-style model API: weight sharing, model reuse, placement, naming, weights I/O."""

from __future__ import annotations

import numpy as np
import pytest

import kcompile as kc
from kcompile import layers
from kcompile.ir import run_graph


def initializer_names(compiled: kc.runtime.CompiledModel) -> list[str]:  # type: ignore[name-defined]
    return [i.name for i in compiled.onnx_model.graph.initializer]


def test_shared_layer_has_one_param_set_and_one_initializer_each() -> None:
    a = kc.Input(shape=(20, 64), name="a")
    b = kc.Input(shape=(20, 64), name="b")
    shared = layers.Dense(32, activation="relu", name="shared")
    merged = layers.concatenate([shared(a), shared(b)])
    out = layers.Dense(1, activation="sigmoid")(merged)
    model = kc.Model([a, b], out)
    graph = model.to_graph()
    assert [p.name for p in graph.params] == ["shared/kernel", "shared/bias", "dense/kernel", "dense/bias"]
    # Two matmuls read the one kernel object.
    kernels = [n.inputs[1] for n in graph.nodes if n.op == "matmul" and n.scope == "shared"]
    assert len(kernels) == 2 and kernels[0] is kernels[1]
    compiled = kc.compile(model, level=0)  # unoptimised: -O2 would drop the all-zero biases
    names = initializer_names(compiled)
    assert names.count("shared/kernel") == 1 and names.count("shared/bias") == 1
    assert len([n for n in names if n.endswith(("kernel", "bias"))]) == 4
    assert model.count_params() == 64 * 32 + 32 + 64 + 1
    # Shared weights mean swapping the inputs gives the same features.
    rng = np.random.default_rng(0)
    xa, xb = rng.random((2, 20, 64), dtype=np.float32), rng.random((2, 20, 64), dtype=np.float32)
    feats = kc.Model([a, b], merged).predict([xa, xb])
    np.testing.assert_allclose(feats[..., :32], kc.Model([a, b], merged).predict([xa, xa])[..., :32])


def test_model_reuse_shares_weights_and_records_devices() -> None:
    classifier = kc.Sequential(
        [kc.Input(shape=(16,)), layers.Dense(8, activation="relu"), layers.Dense(4, activation="softmax")],
        name="classifier",
    )
    x = kc.Input(shape=(16,), name="x")
    with kc.device("gpu:0"):
        y0 = classifier(x)
    with kc.device("gpu:1"):
        y1 = classifier(x)
    with kc.device("cpu:0"):
        preds = 0.5 * (y0 + y1)
    model = kc.Model(x, preds, name="replicas")
    graph = model.to_graph()
    assert len(graph.params) == 4
    assert {n.device for n in graph.nodes} == {"gpu:0", "gpu:1", "cpu:0"}
    by_device = {d: [n.op for n in graph.nodes if n.device == d] for d in ("gpu:0", "gpu:1")}
    assert by_device["gpu:0"] == by_device["gpu:1"] and "matmul" in by_device["gpu:0"]
    compiled = kc.compile(model, level=0)
    assert len([n for n in initializer_names(compiled) if n.startswith("classifier") or "dense" in n]) == 4
    # Device placement is carried into the ONNX nodes' metadata.
    devices = {p.value for n in compiled.onnx_model.graph.node for p in n.metadata_props if p.key == "kcompile.device"}
    assert devices == {"gpu:0", "gpu:1", "cpu:0"}
    # Averaging two identical replicas gives the classifier's own output.
    xs = np.random.default_rng(1).random((5, 16), dtype=np.float32)
    np.testing.assert_allclose(compiled(xs), classifier.predict(xs), rtol=1e-6)


def test_name_scope_prefixes_weight_names() -> None:
    x = kc.Input(shape=(4,))
    with kc.name_scope("block1"):
        y = layers.Dense(3, name="mylayer")(x)
    model = kc.Model(x, y)
    assert [w.name for w in model.weights] == ["block1/mylayer/kernel", "block1/mylayer/bias"]
    assert {i.name for i in kc.compile(model).onnx_model.graph.initializer} >= {"block1/mylayer/kernel"}


def test_keras_weight_order_and_set_weights_round_trip() -> None:
    x = kc.Input(shape=(6, 6, 2))
    h = layers.Conv2D(3, 3, padding="same")(x)
    h = layers.BatchNormalization()(h)
    h = layers.Flatten()(h)
    y = layers.Dense(2)(h)
    model = kc.Model(x, y)
    names = [w.name for w in model.weights]
    assert names == [
        "conv2d/kernel",
        "conv2d/bias",
        "batch_normalization/gamma",
        "batch_normalization/beta",
        "batch_normalization/moving_mean",
        "batch_normalization/moving_variance",
        "dense/kernel",
        "dense/bias",
    ]
    assert [w.name for w in model.trainable_weights] == [n for n in names if "moving" not in n]
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(3, 3, 2, 3), (3,), (3,), (3,), (3,), (3,), (108, 2), (2,)]
    rng = np.random.default_rng(3)
    new = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    new[5] = np.abs(new[5]) + 0.5
    model.set_weights(new)
    for got, want in zip(model.get_weights(), new, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(kc.KCompileError, match="has 8 weights"):
        model.set_weights(new[:3])
    with pytest.raises(kc.ShapeError, match=r"conv2d/kernel.*shape \(3, 3, 2, 3\)"):
        model.set_weights([np.zeros((1, 1))] + new[1:])


def test_frozen_batchnorm_stays_in_inference_mode_in_training_phase() -> None:
    x = kc.Input(shape=(4,))
    bn = layers.BatchNormalization()
    model = kc.Model(x, bn(x))
    assert bn.uses_learning_phase and model.uses_learning_phase
    xs = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32) * 3 + 1
    trained = kc.compile(model, learning_phase=1)(xs)
    np.testing.assert_allclose(trained.mean(axis=0), 0, atol=1e-5)  # batch statistics
    bn.trainable = False
    assert not bn.uses_learning_phase
    frozen = kc.compile(model, learning_phase=1)(xs)
    np.testing.assert_allclose(frozen, xs / np.sqrt(1 + 1e-3), rtol=1e-6)  # moving statistics (0, 1)
    assert model.trainable_weights == [] and len(model.non_trainable_weights) == 4


def test_freezing_a_model_freezes_its_layers() -> None:
    inner = kc.Sequential([kc.Input(shape=(3,)), layers.Dense(2)])
    x = kc.Input(shape=(3,))
    y = layers.Dense(1)(inner(x))
    outer = kc.Model(x, y)
    inner.trainable = False
    assert [w.name for w in outer.trainable_weights] == ["dense_1/kernel", "dense_1/bias"]
    # Keras builds a Sequential's layers in the model's name scope: sequential/dense/kernel.
    assert {p.name: p.trainable for p in outer.to_graph().params}["sequential/dense/kernel"] is False


def test_summary_table() -> None:
    x = kc.Input(shape=(784,), name="img")
    with kc.device("gpu:0"):
        y = layers.Dense(10, activation="softmax")(x)
    model = kc.Model(x, y, name="tiny")
    text = model.summary_text()
    assert 'Model: "tiny"' in text
    line = next(line for line in text.splitlines() if line.startswith("dense (Dense)"))
    assert "(None, 10)" in line and "7,850" in line and "gpu:0" in line
    assert "Total params: 7,850" in text and "Non-trainable params: 0" in text


def test_sequential_add_and_deferred_build() -> None:
    model = kc.Sequential(name="seq")
    model.add(layers.Dense(4, activation="relu"))
    model.add(layers.Dense(2))
    assert model.weights == []  # not built until it sees an input
    x = kc.Input(shape=(3,))
    y = model(x)
    assert y.shape == (None, 2)
    assert [w.shape for w in model.get_weights()] == [(3, 4), (4,), (4, 2), (2,)]
    model2 = kc.Sequential([layers.Dense(5, input_shape=(7,))])
    assert model2.outputs[0].shape == (None, 5)


def test_tensor_arithmetic_matches_numpy() -> None:
    x = kc.Input(shape=(3,), name="x")
    y = kc.Input(shape=(3,), name="y")
    model = kc.Model([x, y], [2.0 * x - y / 4.0, -(x * y) + 1.0])
    a = np.array([[1.0, 2.0, 3.0]], np.float32)
    b = np.array([[4.0, 8.0, -4.0]], np.float32)
    got = kc.compile(model)(a, b)
    np.testing.assert_allclose(got[0], 2 * a - b / 4)
    np.testing.assert_allclose(got[1], -(a * b) + 1)


def test_shape_mismatch_names_layer_shapes_and_origin() -> None:
    a = kc.Input(shape=(64,), name="a")
    b = kc.Input(shape=(32,), name="b")
    shared = layers.Dense(8, name="shared")
    shared(a)
    with pytest.raises(kc.ShapeError) as info:
        shared(b)
    msg = str(info.value)
    assert "Dense layer 'shared'" in msg and "64" in msg and "float32[None, 32]" in msg and "Input 'b'" in msg
    assert info.value.loc is not None and info.value.loc.file == __file__
    with pytest.raises(kc.ShapeError, match=r"cannot broadcast float32\[None, 64\] with float32\[None, 32\]"):
        layers.add([a, b])


def test_model_errors_are_kcompile_errors() -> None:
    x = kc.Input(shape=(3,))
    other = kc.Input(shape=(3,), name="other")
    y = layers.add([x, other])
    with pytest.raises(kc.ModelError, match="depend on Input 'other'"):
        kc.Model(x, y)
    with pytest.raises(kc.ModelError, match="units must be a positive integer"):
        layers.Dense(0)
    with pytest.raises(kc.ModelError, match="did you mean 'relu'"):
        layers.Dense(3, activation="rellu")
    with pytest.raises(kc.ModelError, match="unknown device"):
        with kc.device("tpuu:0"):
            pass
    with pytest.raises(kc.ModelError, match="unknown argument"):
        layers.Dense(3, unitz=4)


def test_predict_batches_and_symbolic_batch() -> None:
    x = kc.Input(shape=(5,), name="x")
    model = kc.Model(x, layers.Dense(3, activation="tanh")(x))
    xs = np.random.default_rng(2).standard_normal((37, 5)).astype(np.float32)
    want = np.tanh(xs @ model.get_weights()[0] + model.get_weights()[1])
    np.testing.assert_allclose(model.predict(xs, batch_size=8), want, rtol=1e-5, atol=1e-6)
    (ref,) = run_graph(model.to_graph(), {"x": xs})
    np.testing.assert_allclose(ref, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(kc.RuntimeFailure, match=r"input 'x' expects float32\[None, 5\]"):
        model.predict(np.zeros((2, 4), np.float32))


def test_default_initializers_follow_keras() -> None:
    kc.set_random_seed(7)
    d = layers.Dense(300)
    e = layers.Embedding(1000, 64)
    x = kc.Input(shape=(200,))
    d(x)
    e(kc.Input(shape=(5,), dtype="int32"))
    kernel, bias = d.get_weights()
    limit = np.sqrt(6 / (200 + 300))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.95 * limit
    assert abs(kernel.std() - limit / np.sqrt(3)) < 0.01 * limit  # uniform(-l, l) has std l/sqrt(3)
    assert not bias.any()
    (table,) = e.get_weights()
    assert np.abs(table).max() <= 0.05 and np.abs(table).max() > 0.049
    kc.set_random_seed(7)
    again = layers.Dense(300)
    again(x)
    np.testing.assert_array_equal(again.get_weights()[0], kernel)


def test_bidirectional_weights_take_the_active_name_scope_once() -> None:
    x = kc.Input(shape=(4, 3))
    with kc.name_scope("block"):
        y = layers.Bidirectional(layers.LSTM(2))(x)
    names = [w.name for w in kc.Model(x, y).weights]
    assert names[0] == "block/bidirectional/forward_lstm/lstm_cell/kernel"
    assert names[3] == "block/bidirectional/backward_lstm/lstm_cell/kernel"
