"""Training recurrent layers. `DecomposeForTrainingPass` unrolls `lstm`/`gru`/`simple_rnn` over a
static time length; the unrolled graph is checked against the op's NumPy reference (forward) and
central finite differences (gradients, float64), the ONNX step against the reference interpreter,
and whole models against Keras 3 (tests/fixtures/make_keras_training_fixtures.py: weights after 1
and 3 `train_on_batch` steps of SGD and Adam)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest
from kcompile.passes import FoldLearningPhasePass
from kcompile.passes.autodiff import AutodiffPass, DecomposeForTrainingPass

import kcompile as kc
from kcompile import layers
from kcompile.errors import KCompileError
from kcompile.ir import Builder, Graph, run_graph
from kcompile.ir.graph import Param
from kcompile.training import optimizers

GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}
STATES = {"lstm": 2, "gru": 1, "simple_rnn": 1}

# (kind, attrs, masked, initial states): every loop variant of the op.
OP_CASES: list[tuple[str, dict[str, Any], bool, bool]] = [
    ("lstm", {}, False, False),
    ("lstm", {"return_sequences": True, "go_backwards": True}, True, True),
    ("lstm", {"return_sequences": True, "go_backwards": True, "output_order": "time"}, False, True),
    ("lstm", {"return_sequences": True, "zero_output_for_mask": True}, True, False),
    ("lstm", {"activation": "relu", "recurrent_activation": "hard_sigmoid"}, True, True),
    ("gru", {}, False, False),
    ("gru", {"reset_after": False, "return_sequences": True}, True, True),
    ("gru", {"go_backwards": True, "return_sequences": True, "output_order": "time"}, True, False),
    ("gru", {"activation": "softsign", "recurrent_activation": "sigmoid", "reset_after": False}, False, True),
    ("simple_rnn", {}, True, False),
    ("simple_rnn", {"return_sequences": True, "go_backwards": True, "activation": "elu"}, False, True),
    ("simple_rnn", {"return_sequences": True, "zero_output_for_mask": True, "activation": "softplus"}, True, True),
]
IDS = [f"{k}-{i}" for i, (k, *_) in enumerate(OP_CASES)]
N, T, I, U = 3, 5, 2, 3
# Left padding, a hole, and a row with no kept step at all.
MASK = np.array([[0, 0, 1, 1, 1], [1, 0, 1, 1, 0], [0, 0, 0, 0, 0]], bool)


def _op_graph(
    kind: str, attrs: dict[str, Any], masked: bool, init: bool, seed: int = 0
) -> tuple[Graph, list[Param], list[Any]]:
    """A graph with every float input of the op as a trainable float64 Param, a random projection
    of every output summed into the loss (output 0), the op's own outputs after it."""
    rng = np.random.default_rng(seed)
    g, n_states = GATES[kind], STATES[kind]
    b = Builder(Graph(kind))
    arrays = [
        rng.standard_normal((N, T, I)),
        rng.standard_normal((1, g * U, I)) * 0.6,
        rng.standard_normal((1, g * U, U)) * 0.6,
        rng.standard_normal((1, 2 * g * U)) * 0.3,
    ]
    if init:
        arrays += [rng.standard_normal((N, U)) * 0.5 for _ in range(n_states)]
    params = [Param(f"p{i}", a) for i, a in enumerate(arrays)]
    inputs: list[Any] = list(params)
    if masked:
        inputs.append(b.constant(MASK, "bool"))
    outs = b.op_multi(kind, inputs, masked=masked, **attrs)
    terms = []
    for o in outs:
        proj = b.constant(rng.standard_normal(tuple(int(d) for d in o.type.shape)), "float64")
        terms.append(b.op("reduce_sum", [b.op("mul", [o, proj])], axes=tuple(range(o.type.rank))))
    loss = terms[0]
    for t in terms[1:]:
        loss = b.op("add", [loss, t])
    b.graph.outputs = [loss, *outs]
    return b.graph, params, outs


def _fd(graph: Graph, p: Param, eps: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(p.data)
    base = p.data
    for i in np.ndindex(*base.shape):
        for sign in (1, -1):
            d = base.copy()
            d[i] += sign * eps
            p.data = d
            grad[i] += sign * float(run_graph(graph, {})[0])
        p.data = base
    return grad / (2 * eps)


@pytest.mark.parametrize(("kind", "attrs", "masked", "init"), OP_CASES, ids=IDS)
def test_unrolled_forward_equals_the_op_reference(kind: str, attrs: dict[str, Any], masked: bool, init: bool) -> None:
    graph, _, _ = _op_graph(kind, attrs, masked, init)
    want = run_graph(graph, {})
    result = DecomposeForTrainingPass().run(graph)
    assert result.stats == {"recurrent": 1}
    assert kind not in result.graph.op_counts()
    got = run_graph(result.graph, {})
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("kind", "attrs", "masked", "init"), OP_CASES, ids=IDS)
def test_unrolled_gradient_matches_finite_differences(
    kind: str, attrs: dict[str, Any], masked: bool, init: bool
) -> None:
    graph, params, _ = _op_graph(kind, attrs, masked, init, seed=1)
    graph.outputs = graph.outputs[:1]
    graph = DecomposeForTrainingPass().run(graph).graph
    ad = AutodiffPass()
    result = ad.run(graph).graph
    analytic = run_graph(result, {})[1:]
    by_name = dict(zip(ad.param_names, analytic, strict=True))
    result.outputs = result.outputs[:1]
    for p in params:
        want = _fd(result, p)
        got = by_name.get(p.name, np.zeros_like(p.data))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=p.name)


def test_symbolic_sequence_length_is_refused_naming_the_layer() -> None:
    x = kc.Input(shape=(None, 3))
    model = kc.Sequential([x, layers.LSTM(4, name="encoder"), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(KCompileError, match=r"encoder.*fixed sequence length"):
        model.train_on_batch(np.zeros((2, 5, 3), np.float32), np.zeros((2, 1), np.float32))


def test_recurrent_dropout_in_training_is_refused() -> None:
    model = kc.Sequential(
        [kc.Input(shape=(4, 3)), layers.Bidirectional(layers.GRU(2, recurrent_dropout=0.3)), layers.Dense(1)]
    )
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(KCompileError, match=r"recurrent_dropout=0.3.*set dropout=0"):
        model.train_on_batch(np.zeros((2, 4, 3), np.float32), np.zeros((2, 1), np.float32))


def test_a_frozen_recurrence_stays_one_onnx_node() -> None:
    inp = kc.Input(shape=(None, 3))
    rnn = layers.GRU(4, return_sequences=True)
    rnn.trainable = False
    graph = kc.Model(inp, layers.Dense(2)(rnn(inp))).to_graph()
    graph = FoldLearningPhasePass(training=True).run(graph).graph
    result = DecomposeForTrainingPass().run(graph)
    assert result.graph.op_counts().get("gru") == 1


def test_onnx_training_step_of_an_lstm_matches_the_reference_interpreter() -> None:
    from kcompile.training import losses
    from kcompile.training.step import build_train_graph, target_types

    rng = np.random.default_rng(4)
    model = kc.Sequential(
        [kc.Input(shape=(6,), dtype="int64"), layers.Embedding(9, 4, mask_zero=True), layers.LSTM(3), layers.Dense(2)]
    )
    x = rng.integers(0, 9, (5, 6)).astype(np.int64)
    x[:, :2] = 0
    y = rng.standard_normal((5, 2)).astype(np.float32)
    opt = optimizers.SGD(0.1)
    plan = build_train_graph(model, opt, [losses.get("mse")], [1.0], [[]], target_types([y]))
    feeds: dict[str, Any] = {"lr": np.float32(0.1), "t": np.float32(1)}
    feeds.update(dict(zip(plan.data_inputs, [x, y], strict=True)))
    feeds.update({name: p.data for name, p in plan.params.items()})
    want = run_graph(plan.graph, feeds, training=True)
    import onnxruntime as ort
    from kcompile.runtime import lower_to_onnx

    sess = ort.InferenceSession(lower_to_onnx(plan.graph).SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: np.asarray(v) for k, v in feeds.items()})
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_bidirectional_model_fits() -> None:
    rng = np.random.default_rng(2)
    model = kc.Sequential(
        [
            kc.Input(shape=(7, 2)),
            layers.Bidirectional(layers.SimpleRNN(4, return_sequences=True)),
            layers.GRU(3, go_backwards=True),
            layers.Dense(1),
        ]
    )
    model.compile(optimizer=optimizers.Adam(0.02), loss="mse")
    x = rng.standard_normal((32, 7, 2)).astype(np.float32)
    y = x.sum(axis=(1, 2))[:, None] * 0.2
    hist = model.fit(x, y, epochs=15, batch_size=8, verbose=0, seed=0)
    assert hist.history["loss"][-1] < 0.5 * hist.history["loss"][0]


# Keras 3 oracles ---------------------------------------------------------------------------------
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "training")
with open(os.path.join(HERE, "keras_training.json")) as _f:
    INDEX = json.load(_f)
DATA = np.load(os.path.join(HERE, "keras_training.npz"))
KERAS_CASES = [(m, o) for m in INDEX["recurrent_models"] for o in INDEX["recurrent_optimizers"]]


def _layer(cls: str, kwargs: dict[str, Any]) -> Any:
    kwargs = dict(kwargs)
    if "layer" in kwargs:
        kwargs["layer"] = _layer(*kwargs["layer"])
    return getattr(layers, cls)(**kwargs)


def build(spec: dict[str, Any]) -> kc.Model:
    stack: list[Any] = [kc.Input(shape=tuple(spec["input"]), dtype=spec.get("dtype", "float32"))]
    stack += [_layer(cls, kwargs) for cls, kwargs in spec["layers"]]
    return kc.Sequential(stack)


def weights(prefix: str) -> list[np.ndarray]:
    out = []
    while f"{prefix}/{len(out)}" in DATA:
        out.append(DATA[f"{prefix}/{len(out)}"])
    return out


@pytest.mark.parametrize(("model_name", "opt_name"), KERAS_CASES, ids=[f"{m}-{o}" for m, o in KERAS_CASES])
def test_recurrent_weights_match_keras_after_1_and_3_steps(model_name: str, opt_name: str) -> None:
    spec = INDEX["recurrent_models"][model_name]
    cls, kwargs = INDEX["recurrent_optimizers"][opt_name]
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
            for w, g, k in zip(model.weights, got, want, strict=True):
                np.testing.assert_allclose(g, k, rtol=1e-5, atol=1e-6, err_msg=f"{w.name} after step {step}")
