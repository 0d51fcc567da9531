"""The video question-answering example (examples/video_qa.k and examples/video_qa.py) and the
TimeDistributed wrapper it rests on.

The `.k` and Python programs must give the same IR (names, scopes, weights; source locations and
the fresh symbols of merged batch*time axes aside); the compiled ONNX model must agree with the
reference interpreter at every optimisation level, for several clip and question lengths; the
per-frame CNN must be frozen. TimeDistributed itself is checked against independent oracles:
the wrapped model run frame by frame, and Keras' masking (padding words do not change an answer).
Its Keras numerics are in tests/fixtures/keras_timedistributed.* (tests/test_keras_layers.py).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import kcompile as kc
from kcompile import layers
from kcompile.ir import run_graph
from kcompile.ir.serialize import to_json
from kcompile.lang import load_program

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
_LOC_NOTE = re.compile(r"(, )?at \S+:\d+(:\d+)?$")
# Symbols made by shape rules (`d17`) are numbered by a process-wide counter.
_FRESH = re.compile(r"\bd\d+\b")


def canonical(text: str) -> str:
    """IR text or JSON with source locations dropped and fresh symbols renumbered in order."""
    names: dict[str, str] = {}
    text = _FRESH.sub(lambda m: names.setdefault(m.group(0), f"d#{len(names)}"), text)
    return "\n".join(_LOC_NOTE.sub("", line).rstrip().removesuffix("  #").rstrip() for line in text.splitlines())


def json_without_locs(graph: kc.ir.Graph) -> str:
    doc = json.loads(to_json(graph))
    for node in doc["nodes"]:
        node.pop("loc")
    return canonical(json.dumps(doc, sort_keys=True))


def python_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("video_qa_example", EXAMPLES / "video_qa.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_both() -> tuple[dict[str, kc.Model], dict[str, kc.Model]]:
    example = python_example()
    kc.clear_session()
    kc.set_random_seed(7)
    from_k = load_program(str(EXAMPLES / "video_qa.k")).models
    kc.clear_session()
    kc.set_random_seed(7)
    from_py = example.build_models()
    return from_k, from_py


def feeds(frames: int, words: int, seed: int = 0, batch: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    question = rng.integers(1, 1000, (batch, words)).astype(np.int32)
    question[0, : words // 2] = 0  # a shorter question, left-padded
    return {"video": rng.random((batch, frames, 32, 32, 3), dtype=np.float32), "question": question}


@pytest.fixture(scope="module")
def video_qa() -> kc.Model:
    kc.clear_session()
    kc.set_random_seed(3)
    model = load_program(str(EXAMPLES / "video_qa.k")).models["video_qa"]
    rng = np.random.default_rng(5)
    model.set_weights([rng.normal(0.0, 0.3, w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


# The example programs ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["frame_cnn", "video_qa"])
def test_k_and_python_give_identical_ir(name: str) -> None:
    from_k, from_py = build_both()
    assert list(from_k) == list(from_py) == ["frame_cnn", "video_qa"]
    gk, gp = from_k[name].to_graph(), from_py[name].to_graph()
    assert canonical(str(gk)) == canonical(str(gp))
    assert json_without_locs(gk) == json_without_locs(gp)  # includes every weight's bytes


def test_video_qa_structure_and_frozen_cnn() -> None:
    from_k, _ = build_both()
    cnn, model = from_k["frame_cnn"], from_k["video_qa"]
    assert [t.name for t in model.inputs] == ["video", "question"]
    assert [t.dtype for t in model.inputs] == ["float32", "int32"]
    assert model.inputs[0].shape == (None, None, 32, 32, 3) and model.outputs[0].shape == (None, 100)
    td = model.get_layer("time_distributed")
    assert isinstance(td, layers.TimeDistributed) and td.layer is cnn
    # The frozen CNN's weights are the TimeDistributed's, shared by identity, and not trainable.
    assert td.weights == cnn.weights and len(cnn.weights) == 4
    assert not any(w.trainable for w in cnn.weights)
    trainable = {w.name for w in model.weights if w.trainable}
    assert trainable == {
        "lstm/lstm_cell/kernel", "lstm/lstm_cell/recurrent_kernel", "lstm/lstm_cell/bias", "embedding/embeddings",
        "lstm_1/lstm_cell/kernel", "lstm_1/lstm_cell/recurrent_kernel", "lstm_1/lstm_cell/bias",
        "dense/kernel", "dense/bias", "predictions/kernel", "predictions/bias",
    }  # fmt: skip
    frozen = {p.name: p.trainable for p in model.to_graph().params if p.name.startswith("conv2d")}
    assert frozen == dict.fromkeys(["conv2d/kernel", "conv2d/bias", "conv2d_1/kernel", "conv2d_1/bias"], False)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_onnxruntime_matches_reference_at_several_lengths(video_qa: kc.Model, level: int) -> None:
    compiled = kc.compile(video_qa, level=level)
    graph = video_qa.to_graph()
    for frames, words in ((4, 7), (1, 3), (6, 12)):
        x = feeds(frames, words, seed=frames)
        (want,) = run_graph(graph, x)
        got = compiled(x)
        assert got.shape == (3, 100)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_time_distributed_cnn_equals_the_cnn_frame_by_frame(video_qa: kc.Model) -> None:
    td = video_qa.get_layer("time_distributed")
    cnn = td.layer
    video = kc.Input(shape=(None, 32, 32, 3), name="clip")
    features = kc.Model(video, td(video))
    x = feeds(5, 4)["video"]
    got = kc.compile(features)(x)
    per_frame = kc.compile(cnn)
    want = np.stack([per_frame(x[:, t]) for t in range(x.shape[1])], axis=1)
    assert got.shape == (3, 5, 32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_padding_words_do_not_change_the_answer(video_qa: kc.Model) -> None:
    """Embedding(mask_zero=True): the question LSTM skips id 0, as Keras does."""
    compiled = kc.compile(video_qa)
    x = feeds(3, 6, seed=11)
    padded = dict(x, question=np.concatenate([np.zeros((3, 4), np.int32), x["question"]], axis=1))
    np.testing.assert_allclose(compiled(padded), compiled(x), rtol=1e-5, atol=1e-6)


# TimeDistributed -------------------------------------------------------------------------------
def test_symbolic_batch_and_time_survive_and_weights_are_keras_named() -> None:
    kc.clear_session()
    x = kc.Input(shape=(None, 6), name="x")
    td = layers.TimeDistributed(layers.Dense(3))
    y = td(x)
    assert y.type.shape == (*x.type.shape[:2], 3)  # the batch and time symbols themselves
    assert [w.name for w in td.weights] == ["time_distributed/dense/kernel", "time_distributed/dense/bias"]
    with kc.name_scope("block"):
        inner = layers.TimeDistributed(layers.Dense(2))
        inner(x)
    assert inner.weights[0].name == "block/time_distributed_1/dense_1/kernel"


def test_symbolic_per_step_dims_are_merged_and_split() -> None:
    kc.clear_session()
    x = kc.Input(shape=(None, None, 3), name="x")  # [batch, time, steps, features]
    td = layers.TimeDistributed(layers.LSTM(4, return_sequences=True))
    y = td(x)
    assert y.type.shape == (*x.type.shape[:3], 4)
    model = kc.Model(x, y)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0.0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    xv = rng.normal(size=(2, 3, 5, 3)).astype(np.float32)
    got = kc.compile(model)(xv)
    lstm = kc.Model(x2 := kc.Input(shape=(None, 3)), td.layer(x2))
    want = np.stack([kc.compile(lstm)(xv[:, t]) for t in range(3)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run_graph(model.to_graph(), {"x": xv})[0], want, rtol=1e-5, atol=1e-6)


def test_wrapped_layer_keeps_its_trainable_flag_and_the_wrapper_sets_it() -> None:
    kc.clear_session()
    dense = layers.Dense(3)
    dense.trainable = False
    td = layers.TimeDistributed(dense)
    td(kc.Input(shape=(4, 6)))
    assert td.trainable and not any(w.trainable for w in td.weights)
    dense.trainable = True
    assert all(w.trainable for w in td.weights)
    td.trainable = False
    assert not dense.trainable and not any(w.trainable for w in td.weights)


def test_errors_name_the_problem() -> None:
    kc.clear_session()
    with pytest.raises(kc.KCompileError, match="TimeDistributed wraps a layer or a model, got int"):
        layers.TimeDistributed(3)  # type: ignore[arg-type]
    with pytest.raises(kc.KCompileError, match=r"rank 3 or more, got float32\[None, 6\]"):
        layers.TimeDistributed(layers.Dense(2))(kc.Input(shape=(6,)))
    with pytest.raises(kc.KCompileError, match="gives 3 outputs per step"):
        layers.TimeDistributed(layers.LSTM(2, return_state=True))(kc.Input(shape=(4, 5, 3)))


def test_training_through_time_distributed_equals_dense_on_sequences() -> None:
    """Dense on [N, T, F] is Dense on every step: one SGD step through TimeDistributed's reshapes
    (the gradient of unflatten_like included) must give the same loss and weights."""
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(8, 5, 6)).astype(np.float32)
    ys = rng.normal(size=(8, 1)).astype(np.float32)

    def one_step(wrap: bool) -> tuple[float, list[np.ndarray]]:
        kc.clear_session()
        x = kc.Input(shape=(None, 6), name="x")
        dense = layers.Dense(3, activation="tanh")
        h = layers.TimeDistributed(dense)(x) if wrap else dense(x)
        model = kc.Model(x, layers.Dense(1)(layers.GlobalAveragePooling1D()(h)))
        init = np.random.default_rng(0)
        model.set_weights([init.normal(0.0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
        model.compile(optimizer=kc.optimizers.SGD(0.1), loss="mse")
        loss = model.train_on_batch(xs, ys)
        return float(loss), model.get_weights()

    (loss_td, w_td), (loss_dense, w_dense) = one_step(True), one_step(False)
    np.testing.assert_allclose(loss_td, loss_dense, rtol=1e-6)
    for a, b in zip(w_td, w_dense, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(w_td[0], np.random.default_rng(0).normal(0.0, 0.5, (6, 3)))  # the step moved it


def test_k_diagnostic_points_at_the_time_distributed_call() -> None:
    from kcompile.lang import load_source

    text = "model m {\n    x = Input(shape=(6,))\n    return TimeDistributed(Dense(2))(x)\n}\n"
    with pytest.raises(kc.KCompileError) as info:
        load_source(text, "bad.k")
    err = info.value
    assert err.loc is not None and (err.loc.file, err.loc.line) == ("bad.k", 3)
    assert "TimeDistributed needs an input [batch, time, ...] of rank 3 or more, got float32[None, 6]" in str(err)


def test_weight_names_are_keras_paths() -> None:
    """Every TimeDistributed fixture case, written as a user writes it: kcompile's weight names and
    order are Keras 3's variable paths (`time_distributed/sequential/dense/kernel`, ...)."""
    from test_keras_layers import INDEXES, build, user_kwargs

    cases = INDEXES["keras_timedistributed"]["cases"]
    assert len(cases) >= 9
    for name, case in cases.items():
        kc.clear_session()
        model = build(case, user_kwargs(case["kwargs"]), from_config=False)
        assert [w.name for w in model.weights] == [w["path"] for w in case["weights"]], name
