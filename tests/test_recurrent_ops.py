"""The recurrent ops (kcompile/ops/recurrent.py): the NumPy reference against onnxruntime, with a
symbolic batch AND a symbolic time length, each fed at several sizes, on random weights.

`CASES` is this module's differential case table (tests/test_ops.py counts it toward "every op has
cases"). Masks are drawn with the hard shapes in them: a row with no unmasked step, left padding,
right padding and holes, so the ONNX compaction lowering meets every pattern.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from kcompile.runtime import lower_to_onnx

from kcompile.errors import ShapeError
from kcompile.ir import Builder, Graph, TensorType, run_graph
from kcompile.ir.graph import Param
from kcompile.ops.recurrent import KINDS

F = "float32"
SIZES = ((1, 1), (3, 5), (4, 7), (2, 2))  # (batch, time) fed to one session


@dataclass
class RCase:
    """One recurrent op node: x[batch, time, features] -> (units), with optional states and mask."""

    features: int = 3
    units: int = 4
    attrs: dict[str, Any] = field(default_factory=dict)
    states: bool = False
    masked: bool = False
    tol: float = 2e-5


def _variants(kind: str) -> list[RCase]:
    out = [
        RCase(),
        RCase(attrs={"return_sequences": True}),
        RCase(attrs={"return_sequences": True, "go_backwards": True}),
        RCase(attrs={"return_sequences": True, "go_backwards": True, "output_order": "time"}),
        RCase(attrs={"go_backwards": True}, states=True),
        RCase(attrs={"return_sequences": True}, states=True, masked=True),
        RCase(masked=True),
        RCase(masked=True, states=True, attrs={"zero_output_for_mask": True}),
        RCase(masked=True, attrs={"return_sequences": True, "zero_output_for_mask": True}),
        RCase(masked=True, attrs={"return_sequences": True, "go_backwards": True}),
        RCase(masked=True, states=True, attrs={"return_sequences": True, "go_backwards": True, "output_order": "time"}),
        RCase(masked=True, attrs={"go_backwards": True, "zero_output_for_mask": True}),
        RCase(attrs={"return_sequences": True, "activation": "relu"}),
    ]
    gated = kind != "simple_rnn"
    acts = ["hard_sigmoid", "linear", "elu", "softsign", "softplus", "leaky_relu", "tanh", "sigmoid"]
    bounded = ["hard_sigmoid", "sigmoid", "softsign", "tanh"]  # gates that keep an LSTM cell finite
    for i, act in enumerate(acts):
        attrs: dict[str, Any] = {"return_sequences": True, "activation": act}
        if gated:
            attrs["recurrent_activation"] = bounded[i % len(bounded)]
        out.append(RCase(attrs=attrs, states=True))
    if kind == "gru":
        out += [
            RCase(attrs={"reset_after": False, "return_sequences": True}),
            RCase(attrs={"reset_after": False}, masked=True, states=True),
        ]
    return out


CASES: dict[str, list[RCase]] = {kind: _variants(kind) for kind in KINDS}
ALL = [(n, i) for n, cases in CASES.items() for i in range(len(cases))]


def build(kind: str, c: RCase, rng: np.random.Generator) -> Graph:
    gates, n_states, _ = KINDS[kind]
    b = Builder(Graph(f"{kind}_case"))
    u = c.units
    x = b.input("x", TensorType(F, ("batch", "time", c.features)))
    w = Param("w", (0.6 * rng.standard_normal((1, gates * u, c.features))).astype(F))
    r = Param("r", (0.6 * rng.standard_normal((1, gates * u, u))).astype(F))
    bias = (0.4 * rng.standard_normal((1, 2 * gates * u))).astype(F)
    if kind == "gru" and not c.attrs.get("reset_after", True):
        bias[:, 5 * u :] = 0.0  # Keras' reset_after=False GRU has no recurrent bias for h
    inputs = [x, w, r, Param("b", bias)]
    if c.states:
        inputs += [b.input(f"s{i}", TensorType(F, ("batch", u))) for i in range(n_states)]
    if c.masked:
        inputs.append(b.input("mask", TensorType("bool", ("batch", "time"))))
    outs = b.op_multi(kind, inputs, masked=c.masked, **c.attrs)
    b.graph.outputs = list(outs)
    b.graph.verify()
    return b.graph


def draw_mask(rng: np.random.Generator, n: int, t: int) -> np.ndarray:
    m = rng.random((n, t)) < 0.6
    if n > 1:
        m[0] = False  # no step at all: states stay initial, outputs zero
    if n > 2:
        m[1] = np.arange(t) >= t // 2  # left padding (Keras pad_sequences' default)
    if n > 3:
        m[2] = np.arange(t) < (t + 1) // 2  # right padding
    return m


def feeds_for(graph: Graph, n: int, t: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for v in graph.inputs:
        if v.name == "mask":
            feeds[v.name] = draw_mask(rng, n, t)
        else:
            shape = tuple(n if d == "batch" else t if d == "time" else d for d in v.type.shape)
            feeds[v.name] = rng.standard_normal(shape).astype(F)
    return feeds


@pytest.mark.parametrize(("kind", "index"), ALL, ids=[f"{n}-{i}" for n, i in ALL])
def test_reference_matches_onnxruntime(kind: str, index: int) -> None:
    c = CASES[kind][index]
    rng = np.random.default_rng(1000 + index)
    graph = build(kind, c, rng)
    model = lower_to_onnx(graph)
    # One recurrent node, whatever the mask: no unrolled time steps, no Loop.
    ops = [n.op_type for n in model.graph.node]
    assert ops.count(KINDS[kind][2]) == 1 and "Loop" not in ops and "Scan" not in ops
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for n, t in SIZES:
        feeds = feeds_for(graph, n, t, rng)
        want = run_graph(graph, feeds)
        got = sess.run(None, feeds)
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g.shape == w.shape and g.dtype == w.dtype, (k, g.shape, w.shape)
            np.testing.assert_allclose(g, w, rtol=c.tol, atol=c.tol, err_msg=f"output {k} at batch {n}, time {t}")


def _step_loop(x: np.ndarray, m: np.ndarray, cell: Any, h0: np.ndarray, zero: bool) -> tuple[np.ndarray, np.ndarray]:
    """Keras' masked loop written out (keras/src/backend/torch/rnn.py), for the reference's own check."""
    h, y, ys = h0, np.zeros_like(h0), []
    for t in range(x.shape[1]):
        new = cell(x[:, t], h)
        keep = m[:, t : t + 1]
        h = np.where(keep, new, h)
        y = np.where(keep, new, 0.0 if zero else y)
        ys.append(y)
    return np.stack(ys, 1), h


def test_reference_masking_follows_keras_loop() -> None:
    """Masked steps keep the state; the output repeats the previous one (zeros before any step)."""
    rng = np.random.default_rng(3)
    c = RCase(masked=True, states=True, attrs={"return_sequences": True})
    graph = build("simple_rnn", c, rng)
    w, r, b = (p.data[0] for p in graph.params)
    feeds = feeds_for(graph, 4, 6, rng)

    def cell(xt: np.ndarray, h: np.ndarray) -> np.ndarray:
        return np.tanh(xt @ w.T + b[:4] + h @ r.T + b[4:])

    for zero in (False, True):
        graph = build(
            "simple_rnn",
            RCase(masked=True, states=True, attrs={"return_sequences": True, "zero_output_for_mask": zero}),
            np.random.default_rng(3),
        )
        y, h = run_graph(graph, feeds)
        want_y, want_h = _step_loop(feeds["x"], feeds["mask"], cell, feeds["s0"], zero)
        np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(h, want_h, rtol=1e-5, atol=1e-6)
    assert np.all(y[0] == 0.0) and np.array_equal(h[0], feeds["s0"][0])  # row 0 is fully masked


def test_shape_rule_reports_bad_weights_and_masks() -> None:
    b = Builder()
    x = b.input("x", TensorType(F, ("batch", "time", 3)))
    w, r, bias = (
        Param("w", np.zeros((1, 16, 3), F)),
        Param("r", np.zeros((1, 16, 4), F)),
        Param("b", np.zeros((1, 32), F)),
    )
    y, h, cst = b.op_multi("lstm", [x, w, r, bias], return_sequences=True)
    assert y.type.shape == ("batch", "time", 4) and h.type.shape == cst.type.shape == ("batch", 4)
    with pytest.raises(ShapeError, match="weight w"):
        b.op_multi("lstm", [x, Param("w2", np.zeros((1, 12, 3), F)), r, bias])
    with pytest.raises(ShapeError, match="initial state"):
        b.op_multi("lstm", [x, w, r, bias, b.input("h", TensorType(F, ("batch", 4)))])
    with pytest.raises(ShapeError, match="mask"):
        gw, gr, gb = (Param(n, np.zeros(s, F)) for n, s in (("w3", (1, 12, 3)), ("r3", (1, 12, 4)), ("b3", (1, 24))))
        b.op_multi("gru", [x, gw, gr, gb, b.input("m", TensorType(F, ("batch", "time")))], masked=True)


# The layers over these ops (kcompile/layers/recurrent.py); their numerics against Keras are in
# tests/test_keras_layers.py (fixtures from tests/fixtures/make_keras_recurrent_fixtures.py).
def test_imdb_lstm_is_one_lstm_node_at_O2_and_onnxruntime_optimizes_it(tmp_path: Any) -> None:
    import onnx

    import kcompile as kc
    from kcompile import layers as L

    kc.clear_session()
    x = kc.Input(shape=(80,), name="x")
    model = kc.Model(x, L.Dense(1, activation="sigmoid")(L.LSTM(128)(L.Embedding(10000, 128)(x))))
    compiled = kc.compile(model, level=2)
    ops = [n.op_type for n in compiled.onnx_model.graph.node]
    assert ops.count("LSTM") == 1 and not {"Loop", "Scan"} & set(ops), ops
    # The Keras -> ONNX weight re-layout is folded: the LSTM reads initializers directly.
    lstm = next(n for n in compiled.onnx_model.graph.node if n.op_type == "LSTM")
    inits = {i.name: tuple(i.dims) for i in compiled.onnx_model.graph.initializer}
    assert [inits.get(name) for name in lstm.input[1:4]] == [(1, 512, 128), (1, 512, 128), (1, 1024)]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    opts.log_severity_level = 3
    sess = ort.InferenceSession(compiled.onnx_model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    assert [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node].count("LSTM") == 1
    ids = np.random.default_rng(0).integers(0, 10000, (3, 80)).astype(F)
    want = run_graph(kc.optimize(model.to_graph(), level=0), {"x": ids})[0]
    np.testing.assert_allclose(sess.run(None, {"x": ids})[0], want, rtol=1e-5, atol=1e-6)


def test_weights_are_named_and_ordered_as_keras() -> None:
    import kcompile as kc
    from kcompile import layers as L

    kc.clear_session()
    x = kc.Input(shape=(None, 3))
    y = L.Bidirectional(L.LSTM(4, return_sequences=True))(x)
    z = L.GRU(2, reset_after=False)(L.SimpleRNN(5, return_sequences=True)(y))
    model = kc.Model(x, z)
    # As keras 3.15 names them (variable.path), in model.get_weights() order.
    assert [(w.name, w.type.shape) for w in model.weights] == [
        ("bidirectional/forward_lstm/lstm_cell/kernel", (3, 16)),
        ("bidirectional/forward_lstm/lstm_cell/recurrent_kernel", (4, 16)),
        ("bidirectional/forward_lstm/lstm_cell/bias", (16,)),
        ("bidirectional/backward_lstm/lstm_cell/kernel", (3, 16)),
        ("bidirectional/backward_lstm/lstm_cell/recurrent_kernel", (4, 16)),
        ("bidirectional/backward_lstm/lstm_cell/bias", (16,)),
        ("simple_rnn/simple_rnn_cell/kernel", (8, 5)),
        ("simple_rnn/simple_rnn_cell/recurrent_kernel", (5, 5)),
        ("simple_rnn/simple_rnn_cell/bias", (5,)),
        ("gru/gru_cell/kernel", (5, 6)),
        ("gru/gru_cell/recurrent_kernel", (2, 6)),
        ("gru/gru_cell/bias", (6,)),
    ]
    # Keras defaults: orthogonal recurrent kernels, the LSTM forget-gate bias starts at 1.
    rk = model.weights[1].data  # (4, 16): orthonormal rows, as keras.initializers.Orthogonal
    np.testing.assert_allclose(rk @ rk.T, np.eye(4), atol=1e-5)
    np.testing.assert_array_equal(model.weights[2].data, np.r_[np.zeros(4), np.ones(4), np.zeros(8)])


def test_masked_model_stays_one_recurrent_node_per_direction() -> None:
    import kcompile as kc
    from kcompile import layers as L

    kc.clear_session()
    ids = kc.Input(shape=(None,), dtype="int32", name="ids")
    h = L.Bidirectional(L.GRU(3, return_sequences=True))(L.Embedding(9, 4)(ids), mask=ids)
    model = kc.Model(ids, L.LSTM(2)(h))  # the mask reaches the LSTM through the Bidirectional
    ops = [n.op_type for n in kc.compile(model, level=2).onnx_model.graph.node]
    assert ops.count("GRU") == 2 and ops.count("LSTM") == 1 and "Loop" not in ops and "Scan" not in ops
    lstm_node = next(n for n in model.to_graph().nodes if n.op == "lstm")
    assert lstm_node.attrs["masked"]


def test_layer_arguments_are_checked() -> None:
    from kcompile import ModelError
    from kcompile import layers as L

    with pytest.raises(ModelError, match="not supported in a recurrent cell"):
        L.LSTM(3, activation="gelu")
    with pytest.raises(ModelError, match="stateful"):
        L.GRU(3, stateful=True)
    with pytest.raises(ModelError, match="merge_mode"):
        L.Bidirectional(L.LSTM(3), merge_mode="max")
    with pytest.raises(ModelError, match="initial state"):
        import kcompile as kc

        x = kc.Input(shape=(4, 2))
        L.LSTM(3)(x, initial_state=[kc.Input(shape=(3,))])


def test_embedding_mask_zero_reaches_the_rnn() -> None:
    import kcompile as kc
    from kcompile import layers as L

    kc.clear_session()
    ids = kc.Input(shape=(None,), dtype="int32", name="ids")
    emb, lstm = L.Embedding(9, 4, mask_zero=True), L.LSTM(3, return_sequences=True)
    implicit = kc.Model(ids, lstm(emb(ids)))
    explicit = kc.Model(ids, lstm(emb(ids), mask=ids))
    feed = {"ids": np.array([[0, 0, 3, 4], [5, 0, 6, 0]], np.int32)}
    np.testing.assert_array_equal(run_graph(implicit.to_graph(), feed)[0], run_graph(explicit.to_graph(), feed)[0])
