"""The ONNX file: versions, checker, dynamic batch, names, learning phase handling, saving."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import kcompile as kc
from kcompile import layers
from kcompile.ir import run_graph


def cnn() -> kc.Model:
    x = kc.Input(shape=(10, 10, 2), name="img")
    with kc.name_scope("features"):
        h = layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(x)
        h = layers.BatchNormalization()(h)
        h = layers.AveragePooling2D(padding="same")(h)
    h = layers.Dropout(0.5)(layers.GlobalAveragePooling2D()(h))
    return kc.Model(x, layers.Dense(3, activation="softmax", name="probs")(h), name="cnn")


def randomize(model: kc.Model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(w.shape).astype(np.float32) for w in model.get_weights()]
    for i, w in enumerate(model.weights):
        if w.name.endswith("moving_variance"):
            values[i] = np.abs(values[i]) + 0.5
    model.set_weights(values)


def test_file_versions_checker_and_dynamic_batch(tmp_path: os.PathLike[str]) -> None:
    model = cnn()
    path = os.path.join(tmp_path, "cnn.onnx")
    kc.compile(model, level=0).save(path)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == 10
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 21)]
    (inp,) = proto.graph.input
    assert inp.name == "img"
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [10, 10, 2]
    assert [o.name for o in proto.graph.output] == ["probs"]
    inits = {i.name for i in proto.graph.initializer}
    assert {"features/conv2d/kernel", "features/batch_normalization/moving_mean", "probs/kernel"} <= inits
    # Inference export: no Dropout, no learning-phase input.
    assert "Dropout" not in {n.op_type for n in proto.graph.node}
    assert len(proto.graph.input) == 1


def test_o2_folds_batchnorm_and_keeps_weight_names() -> None:
    x = kc.Input(shape=(10, 10, 2), name="img")
    with kc.name_scope("features"):
        h = layers.Conv2D(4, 3, padding="same")(x)
        h = layers.Activation("relu")(layers.BatchNormalization()(h))
    model = kc.Model(x, layers.Dense(3)(layers.Flatten()(h)))
    randomize(model)
    proto = kc.compile(model, level=2).onnx_model
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    assert "Dropout" not in ops and "BatchNormalization" not in ops
    # The BatchNorm's scale and shift live in the conv weights now.
    inits = {i.name for i in proto.graph.initializer}
    assert "features/conv2d/kernel" in inits and not any("batch_normalization" in n for n in inits)
    xs = np.random.default_rng(0).random((3, 10, 10, 2), dtype=np.float32)
    (ref,) = run_graph(kc.optimize(model.to_graph(), level=0), {"img": xs})
    np.testing.assert_allclose(kc.compile(model, level=2)(xs), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", [21, 23, 26])
def test_opsets_run_in_onnxruntime(opset: int) -> None:
    model = cnn()
    randomize(model)
    compiled = kc.compile(model, opset=opset)
    xs = np.random.default_rng(1).random((4, 10, 10, 2), dtype=np.float32)
    (ref,) = run_graph(kc.optimize(model.to_graph()), {"img": xs})
    np.testing.assert_allclose(compiled(xs), ref, rtol=1e-5, atol=1e-6)


def test_unsupported_opset_is_refused() -> None:
    with pytest.raises(kc.LoweringError, match="opset 27 is not supported"):
        kc.compile(cnn(), opset=27)


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_reference_and_onnxruntime_agree_on_several_batches(batch: int) -> None:
    model = cnn()
    randomize(model, batch)
    xs = np.random.default_rng(batch).random((batch, 10, 10, 2), dtype=np.float32)
    (ref,) = run_graph(kc.optimize(model.to_graph()), {"img": xs})
    np.testing.assert_allclose(kc.compile(model)(xs), ref, rtol=1e-5, atol=1e-6)


def test_dynamic_learning_phase_runs_both_behaviours_from_one_file() -> None:
    x = kc.Input(shape=(6,), name="x")
    h = layers.BatchNormalization()(x)
    model = kc.Model(x, layers.Dropout(0.25, seed=1)(h))
    randomize(model)
    compiled = kc.compile(model, learning_phase="dynamic")
    names = [i.name for i in compiled.onnx_model.graph.input]
    assert names == ["x", "learning_phase"]
    xs = np.random.default_rng(0).standard_normal((64, 6)).astype(np.float32)
    graph = model.to_graph()
    (inference_ref,) = run_graph(graph, {"x": xs}, training=False)
    np.testing.assert_allclose(compiled(xs, training=False), inference_ref, rtol=1e-5, atol=1e-6)
    # Training: batch-normalised (zero mean, unit variance per feature) then dropout.
    trained = compiled(xs, training=True)
    gamma, beta = model.get_weights()[:2]
    kept = trained != 0
    assert 0.6 < kept.mean() < 0.9
    normalised = (xs - xs.mean(0)) / np.sqrt(xs.var(0) + 1e-3) * gamma + beta
    np.testing.assert_allclose(trained[kept], (normalised / 0.75)[kept], rtol=1e-4, atol=1e-5)


def test_save_is_atomic_and_keeps_the_old_file_on_failure(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "m.onnx")
    compiled = kc.compile(cnn())
    compiled.save(path)
    before = open(path, "rb").read()
    with pytest.raises(kc.KCompileError, match="does not exist"):
        compiled.save(os.path.join(tmp_path, "missing", "m.onnx"))
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_node_metadata_records_scope_and_source() -> None:
    proto = kc.compile(cnn()).onnx_model
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    meta = {p.key: p.value for p in conv.metadata_props}
    assert meta["kcompile.scope"] == "features/conv2d"
    assert meta["kcompile.loc"].startswith(__file__)


def test_onnxruntime_optimizer_accepts_the_file() -> None:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    ort.InferenceSession(kc.compile(cnn()).serialized(), opts, providers=["CPUExecutionProvider"])
