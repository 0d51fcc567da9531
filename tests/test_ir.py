"""The IR: verifier invariants, text printer, JSON round trip."""

from __future__ import annotations

import numpy as np
import pytest

import kcompile as kc
from kcompile import layers
from kcompile.errors import GraphError
from kcompile.ir import Builder, Graph, TensorType, from_json, run_graph, to_json
from kcompile.ir.graph import Node, Param, Value


def small_model() -> kc.Model:
    x = kc.Input(shape=(8, 8, 3), name="img")
    h = layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    h = layers.BatchNormalization()(h)
    h = layers.MaxPooling2D()(h)
    h = layers.Dropout(0.3)(h)
    h = layers.Flatten()(h)
    return kc.Model(x, layers.Dense(5, activation="softmax")(h), name="small")


def test_json_round_trip_is_exact() -> None:
    graph = small_model().to_graph()
    text = to_json(graph)
    again = from_json(text)
    assert str(again) == str(graph)
    assert to_json(again) == text
    xs = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    for training in (False, True):
        (a,) = run_graph(graph, {"img": xs}, training=training, seed=3)
        (b,) = run_graph(again, {"img": xs}, training=training, seed=3)
        np.testing.assert_array_equal(a, b)


def test_json_keeps_shared_params_shared() -> None:
    x = kc.Input(shape=(4,))
    d = layers.Dense(4)
    graph = kc.Model(x, d(d(x))).to_graph()
    again = from_json(to_json(graph))
    kernels = [n.inputs[1] for n in again.nodes if n.op == "matmul"]
    assert len(again.params) == 2 and kernels[0] is kernels[1]


def test_malformed_json_is_a_graph_error() -> None:
    for text in ("{", '{"format": "other"}', '{"format": "kcompile-ir", "version": 1}'):
        with pytest.raises(kc.KCompileError):
            from_json(text)


def test_printer_shows_types_params_devices() -> None:
    x = kc.Input(shape=(3,), name="x")
    with kc.device("gpu:1"):
        y = layers.Dense(2, name="head")(x)
    text = str(kc.Model(x, y, name="m").to_graph())
    assert text.startswith("graph m(%x: float32[None, 3]) -> (%head)")
    assert "param @head/kernel: float32[3, 2]  # trainable, 6 values" in text
    assert "= matmul(%x, @head/kernel)" in text and "device gpu:1" in text


def test_learning_phase_is_one_bool_value() -> None:
    graph = small_model().to_graph()
    phase = graph.learning_phase
    assert phase is not None and phase.type == TensorType("bool", ())
    users = [n.op for n in graph.nodes if phase in n.inputs]
    assert sorted(users) == ["batch_norm", "dropout"]


def _broken(kind: str) -> Graph:
    b = Builder()
    x = b.input("x", TensorType("float32", ("batch", 3)))
    y = b.op("relu", [x])
    z = b.op("sigmoid", [y])
    b.graph.outputs = [z]
    g = b.graph
    if kind == "order":
        g.nodes.reverse()
    elif kind == "type":
        y.type = TensorType("float32", ("batch", 4))
    elif kind == "param":
        p = Param("w", np.ones(3, np.float32))
        g.nodes.append(Node("add", [z, p], {}, [Value("w2", z.type)]))
        g.nodes[-1].outputs[0].producer = g.nodes[-1]
    elif kind == "attrs":
        g.nodes[0].attrs = {"alpha": 1.0}
    elif kind == "output":
        g.outputs = [Value("ghost", z.type)]
    elif kind == "twice":
        g.nodes.append(g.nodes[0])
    return g


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("order", "used before it is defined"),
        ("type", "is typed float32"),
        ("param", "missing from graph.params"),
        ("attrs", "has no attribute 'alpha'"),
        ("output", "not defined in the graph"),
        ("twice", "defined twice"),
    ],
)
def test_verifier_catches_broken_graphs(kind: str, message: str) -> None:
    _broken("none").verify()
    with pytest.raises(GraphError, match=message):
        _broken(kind).verify()
