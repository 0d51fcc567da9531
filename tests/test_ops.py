"""Every op: the registry entry is complete, and the NumPy reference agrees with onnxruntime on
random inputs, with a symbolic batch dimension fed at several sizes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from kcompile.runtime import lower_to_onnx

from kcompile.ir import Builder, Graph, TensorType, run_graph
from kcompile.ir.graph import Param
from kcompile.ops import OPS

F = "float32"


@dataclass
class Case:
    """One op application: input types ('batch' is symbolic), attrs, and how to draw inputs."""

    inputs: list[TensorType]
    attrs: dict[str, Any] = field(default_factory=dict)
    draw: Callable[[np.random.Generator, tuple[int, ...], str], np.ndarray] | None = None
    params: list[np.ndarray] = field(default_factory=list)  # weights, fed as Params after inputs
    training: bool = False
    tol: float = 1e-5


def T(*shape: Any, dtype: str = F) -> TensorType:
    return TensorType(dtype, tuple(shape))


def positive(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    return rng.uniform(0.1, 3.0, shape).astype(dtype)


def ints(hi: int) -> Callable[[np.random.Generator, tuple[int, ...], str], np.ndarray]:
    return lambda rng, shape, dtype: rng.integers(0, hi, shape).astype(dtype)


def unary(**attrs: Any) -> list[Case]:
    return [Case([T("batch", 5, 3)], attrs), Case([T("batch", 7)], attrs)]


CASES: dict[str, list[Case]] = {
    "identity": unary(),
    "neg": unary(),
    "abs": unary(),
    "relu": unary(),
    "sigmoid": unary(),
    "tanh": unary(),
    "exp": unary(),
    "log": [Case([T("batch", 6)], draw=positive)],
    "sqrt": [Case([T("batch", 6)], draw=positive)],
    "erf": unary(),
    "softplus": unary(),
    "softsign": unary(),
    "elu": unary() + unary(alpha=0.5),
    "selu": unary(),
    "leaky_relu": unary() + unary(alpha=0.01),
    "hard_sigmoid": unary(),
    "gelu": unary() + unary(approximate=True),
    "clip": unary(lo=-0.5, hi=0.7),
    "cast": [Case([T("batch", 4)], {"to": "int64"}, draw=ints(50)), Case([T("batch", 4, dtype="int32")], {"to": F})],
    "add": [Case([T("batch", 4, 3), T(3)]), Case([T("batch", 1), T(1, 5)])],
    "sub": [Case([T("batch", 4), T("batch", 4)])],
    "mul": [Case([T("batch", 2, 3), T(2, 1)])],
    "div": [Case([T("batch", 3), T(3)], draw=positive)],
    "pow": [Case([T("batch", 3), T(3)], draw=positive)],
    "maximum": [Case([T("batch", 3), T(1, 3)])],
    "minimum": [Case([T("batch", 3), T("batch", 3)])],
    "where": [Case([T("batch", 3, dtype="bool"), T("batch", 3), T(3)], draw=None)],
    "matmul": [Case([T("batch", 6)], params=[np.ones((6, 4))]), Case([T("batch", 3, 5), T("batch", 5, 2)])],
    "gemm": [
        Case([T("batch", 6)], params=[np.ones((6, 4)), np.ones(4)]),
        Case([T("batch", 3)], params=[np.ones((3, 2)), np.ones((1, 2))]),
    ],
    "transpose": [Case([T("batch", 2, 3, 4)], {"perm": (0, 3, 1, 2)})],
    "reshape": [
        Case([T("batch", 4, 6)], {"shape": (0, -1)}),
        Case([T("batch", 12)], {"shape": (0, 3, -1)}),
        Case([T("batch", 2, 6)], {"shape": (0, 3, 4)}),
    ],
    "unflatten_like": [
        Case([T("batch", 4), T("batch", 1, 7)], {"axes": 2}),
        Case([T(6, 5, 2), T(2, 3, "batch")], {"axes": 2}),
        Case([T(6, 5), T(6, "batch")], {"axes": 1}),
    ],
    "concat": [
        Case([T("batch", 2), T("batch", 3), T("batch", 1)], {"axis": -1}),
        Case([T("batch", 2, 2)] * 2, {"axis": 1}),
    ],
    "pad": [
        Case([T("batch", 3, 4)], {"pads": (0, 1, 2, 0, 0, 1)}),
        Case([T("batch", 2)], {"pads": (0, 0, 0, 3), "value": -1.5}),
    ],
    "gather": [
        Case([T("batch", 5, dtype="int64")], {"axis": 0}, draw=ints(10), params=[np.ones((10, 3))]),
        Case([T("batch", dtype="int32")], {"axis": 0}, draw=ints(4), params=[np.ones((4, 2, 2))]),
    ],
    "constant": [Case([], {"value": np.arange(6, dtype=np.float32).reshape(2, 3)})],
    "learning_phase": [Case([], training=True), Case([], training=False)],
    "conv": [
        Case([T("batch", 3, 9, 8)], {"auto_pad": "SAME_UPPER", "strides": (2, 2)}, params=[np.ones((4, 3, 3, 3))]),
        Case([T("batch", 2, 10)], {"auto_pad": "VALID", "dilations": (2,)}, params=[np.ones((3, 2, 3))]),
        Case([T("batch", 2, 9, 8)], {"auto_pad": "SAME_UPPER", "dilations": (2, 3)}, params=[np.ones((3, 2, 3, 2))]),
        Case([T("batch", 4, 7, 7)], {"auto_pad": "SAME_UPPER", "group": 2}, params=[np.ones((6, 2, 3, 3))]),
        Case([T("batch", 2, 8)], {"pads": (2, 0)}, params=[np.ones((3, 2, 3)), np.ones(3)]),
        Case([T("batch", 2, 4, 5, 6)], {"auto_pad": "VALID", "strides": (1, 2, 2)}, params=[np.ones((2, 2, 2, 2, 2))]),
    ],
    "conv_transpose": [
        Case([T("batch", 3, 4, 5)], {"strides": (2, 2), "pads": (1, 1, 0, 0)}, params=[np.ones((3, 2, 3, 3))]),
        Case([T("batch", 2, 6)], {"strides": (3,), "output_padding": (2,)}, params=[np.ones((2, 3, 2)), np.ones(3)]),
        Case([T("batch", 2, 5)], {"dilations": (2,), "pads": (1, 2)}, params=[np.ones((2, 3, 3))]),
        Case(
            [T("batch", 4, 3, 4)], {"group": 2, "strides": (1, 2), "pads": (1, 0, 1, 1)}, params=[np.ones((4, 3, 3, 2))]
        ),
        Case(
            [T("batch", 2, 3, 2, 4)],
            {"strides": (2, 1, 2), "output_padding": (1, 0, 1)},
            params=[np.ones((2, 2, 2, 2, 3))],
        ),
    ],
    "max_pool": [
        Case([T("batch", 3, 9, 9)], {"kernel": (2, 2), "strides": (2, 2), "auto_pad": "SAME_UPPER"}),
        Case([T("batch", 2, 10)], {"kernel": (3,), "strides": (2,), "auto_pad": "VALID"}),
    ],
    "avg_pool": [
        Case([T("batch", 3, 9, 9)], {"kernel": (2, 2), "strides": (2, 2), "auto_pad": "SAME_UPPER"}),
        Case([T("batch", 2, 5, 7)], {"kernel": (3, 3), "strides": (1, 1), "auto_pad": "SAME_UPPER"}),
        Case([T("batch", 2, 10)], {"kernel": (3,), "strides": (3,), "auto_pad": "VALID"}),
    ],
    "softmax": [Case([T("batch", 7)], {"axis": -1}), Case([T("batch", 3, 4)], {"axis": 1})],
    "log_softmax": [Case([T("batch", 7)], {"axis": -1}), Case([T("batch", 3, 4)], {"axis": 1})],
    "reduce_mean": [
        Case([T("batch", 4, 5)], {"axes": (1, 2)}),
        Case([T("batch", 4, 5)], {"axes": (1,), "keepdims": True}),
        Case([T("batch", 3, 4, 5)], {"axes": (2, 3)}),
        Case([T("batch", 2, 3, 4, 5)], {"axes": (2, 3, 4), "keepdims": True}),
    ],
    "reduce_sum": [Case([T("batch", 4, 5)], {"axes": (2,)})],
    "reduce_max": [
        Case([T("batch", 4, 5)], {"axes": (1,)}),
        Case([T("batch", 3, 4, 5)], {"axes": (2, 3)}),
        Case([T("batch", 3, 4, 5)], {"axes": (3, 2), "keepdims": True}),
    ],
    "dropout": [
        Case([T("batch", 8), T(dtype="bool")], {"rate": 0.5, "seed": 3}, training=False),
        Case([T("batch", 8), T(dtype="bool")], {"rate": 0.0, "seed": 3}, training=True),
    ],
    "phase_select": [
        Case([T("batch", 5, 3), T("batch", 5, 3), T(dtype="bool")], training=True),
        Case([T("batch", 5, 3), T("batch", 5, 3), T(dtype="bool")], training=False),
    ],
    # A random draw cannot match across generators: stddev 0 pins the value (the distribution is
    # tested in test_reshaping_layers.py).
    "random_normal": [
        Case([T("batch", 6)], {"mean": 1.5, "stddev": 0.0, "seed": 2}),
        Case([T("batch", 2, 3)], {"stddev": 0.0}),
    ],
    "batch_norm": [
        Case([T("batch", 5, 4)], {"axis": -1, "epsilon": 1e-3}, params=[np.ones(4)] * 4),
        Case([T("batch", 3, 4, 4)], {"axis": 1, "epsilon": 1e-3}, params=[np.ones(3)] * 4),
        Case([T("batch", 6), T(dtype="bool")], {"axis": -1}, params=[np.ones(6)] * 4, training=True),
        Case([T("batch", 6), T(dtype="bool")], {"axis": -1}, params=[np.ones(6)] * 4, training=False),
    ],
    "layer_norm": [
        Case([T("batch", 3, 5)], {"axis": -1, "epsilon": 1e-3}, params=[np.ones(5), np.ones(5)]),
        Case([T("batch", 2, 3, 4)], {"axis": 2, "epsilon": 0.1}, params=[np.ones((3, 4))]),
        Case([T("batch", 6)], {"axis": 1, "epsilon": 1e-5}, params=[np.ones(6), np.ones(6)]),
    ],
}

ALL_CASES = [(name, i) for name, cases in CASES.items() for i in range(len(cases))]


def test_every_op_has_a_complete_entry() -> None:
    for name, op in OPS.items():
        assert op.infer is not None, f"{name} has no shape rule"
        assert op.reference is not None, f"{name} has no reference implementation"
        assert op.onnx is not None, f"{name} has no ONNX lowering"
        assert op.doc, f"{name} has no doc line"
        # Slots that the TVM back end and autodiff fill; they must exist on every entry.
        assert hasattr(op, "relax") and hasattr(op, "grad")


# Ops registered by other modules keep their differential cases next to their own tests.
OTHER_CASE_TABLES = {"test_training_ops": "TRAINING_CASES", "test_recurrent_ops": "CASES"}


def covered_elsewhere() -> set[str]:
    import importlib
    import importlib.util

    names: set[str] = set()
    for module, table in OTHER_CASE_TABLES.items():
        if importlib.util.find_spec(module) is not None:
            names |= set(getattr(importlib.import_module(module), table))
    return names


def test_every_op_has_differential_cases() -> None:
    covered = set(CASES) | covered_elsewhere()
    assert covered == set(OPS), f"ops without cases: {set(OPS) - covered}; cases of unknown ops: {covered - set(OPS)}"


def _build(name: str, case: Case, rng: np.random.Generator) -> tuple[Graph, list[TensorType]]:
    b = Builder(Graph(name))
    inputs = []
    for i, t in enumerate(case.inputs):
        if t == TensorType("bool", ()):
            inputs.append(b.learning_phase())
        else:
            inputs.append(b.input(f"x{i}", t))
    for j, p in enumerate(case.params):
        # Weights are random (not the placeholder ones above) so the comparison is not trivial.
        data = (rng.standard_normal(p.shape) if p.dtype.kind == "f" else p).astype(F)
        inputs.append(Param(f"w{j}", data))
    if name == "batch_norm":
        # moving variance must be positive
        inputs[-1] = Param("w3", rng.uniform(0.5, 2.0, case.params[3].shape).astype(F))
    if name == "gather":
        table = inputs.pop()
        inputs.insert(0, table)
    if name == "batch_norm" and len(case.inputs) == 2:
        phase = inputs.pop(1)
        inputs.append(phase)
    out = b.learning_phase() if name == "learning_phase" else b.op(name, inputs, **case.attrs)
    b.graph.outputs = [out]
    b.graph.verify()
    return b.graph, [v.type for v in b.graph.inputs]


def _draw(case: Case, t: TensorType, batch: int, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(batch if d == "batch" else d for d in t.shape)
    if case.draw is not None:
        return case.draw(rng, shape, t.dtype)
    if t.dtype == "bool":
        return rng.random(shape) < 0.5
    if t.dtype.startswith("int"):
        return rng.integers(-5, 5, shape).astype(t.dtype)
    return rng.standard_normal(shape).astype(t.dtype)


@pytest.mark.parametrize(("name", "index"), ALL_CASES, ids=[f"{n}-{i}" for n, i in ALL_CASES])
def test_reference_matches_onnxruntime(name: str, index: int) -> None:
    case = CASES[name][index]
    rng = np.random.default_rng(index + 7)
    graph, _ = _build(name, case, rng)
    model = lower_to_onnx(graph)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_inputs = [i.name for i in session.get_inputs()]
    for batch in (1, 3, 8):
        feeds = {v.name: _draw(case, v.type, batch, rng) for v in graph.inputs}
        (want,) = run_graph(graph, feeds, training=case.training)
        ort_feeds = dict(feeds)
        if "learning_phase" in onnx_inputs:
            ort_feeds["learning_phase"] = np.array(case.training)
        (got,) = session.run(None, ort_feeds)
        assert got.dtype == want.dtype, (got.dtype, want.dtype)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=case.tol, atol=case.tol)
        if graph.outputs[0].type.shape and graph.outputs[0].type.shape[0] == "batch":
            assert got.shape[0] == batch


def test_dropout_in_training_keeps_expected_fraction_and_scales() -> None:
    # Reference and onnxruntime use different generators: compare the distribution, not values.
    b = Builder()
    x = b.input("x", T("batch", 1000))
    b.graph.outputs = [b.op("dropout", [x, b.learning_phase()], rate=0.3, seed=5)]
    session = ort.InferenceSession(lower_to_onnx(b.graph).SerializeToString(), providers=["CPUExecutionProvider"])
    ones = np.ones((4, 1000), np.float32)
    for got in (
        run_graph(b.graph, {"x": ones}, training=True)[0],
        session.run(None, {"x": ones, "learning_phase": np.array(True)})[0],
    ):
        kept = got != 0
        assert abs(kept.mean() - 0.7) < 0.03
        np.testing.assert_allclose(got[kept], 1 / 0.7, rtol=1e-6)
