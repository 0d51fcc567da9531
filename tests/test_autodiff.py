"""Every op's gradient rule against central finite differences in float64 (the NumPy reference
interpreter is the oracle), and every gradient graph run by onnxruntime against the reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from kcompile.passes import FoldLearningPhasePass
from kcompile.passes.autodiff import AutodiffPass, DecomposeForTrainingPass, gradients
from kcompile.runtime import lower_to_onnx

from kcompile.ir import Builder, Graph, run_graph
from kcompile.ir.graph import Param, Value
from kcompile.ops import OPS
from kcompile.ops.gradients import NO_GRADIENT, GradientError

Draw = Callable[[np.random.Generator], list[Any]]
PHASE = "phase"  # an input slot fed by the graph's learning phase


@dataclass
class GCase:
    """Inputs (float arrays become trainable Params; ints/bools are constants; PHASE is the
    learning phase), attrs, and the learning phase the graph runs with."""

    draw: Draw
    attrs: dict[str, Any] = field(default_factory=dict)
    training: bool = False
    ort: bool = True  # also compare the gradient graph in onnxruntime with the reference


def normal(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.standard_normal(shape)


def away(*shape: int, kinks: tuple[float, ...] = (0.0,), lo: float = -2.0, hi: float = 2.0) -> Callable[..., Any]:
    """Uniform values at least 0.05 from every kink (finite differences must not straddle one)."""

    def draw(rng: np.random.Generator) -> np.ndarray:
        x = rng.uniform(lo, hi, shape)
        for k in kinks:
            near = np.abs(x - k) < 0.05
            x[near] = k + np.where(x[near] >= k, 0.1, -0.1)
        return x

    return draw


def distinct(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    """Values without ties (max and max_pool are differentiable there)."""
    return lambda rng: rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 + rng.uniform(0, 0.01, shape)


def positive(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.uniform(0.3, 2.0, shape)


def case(*draws: Any, training: bool = False, ort: bool = True, **attrs: Any) -> GCase:
    def draw(rng: np.random.Generator) -> list[Any]:
        return [d(rng) if callable(d) else d for d in draws]

    return GCase(draw, attrs, training, ort)


def unary(**attrs: Any) -> list[GCase]:
    return [case(normal(3, 4), **attrs)]


idx = np.array([[0, 2], [2, 4]], np.int64)  # repeats: the gradient must accumulate

GRAD_CASES: dict[str, list[GCase]] = {
    "identity": unary(),
    "neg": unary(),
    "abs": [case(away(3, 4))],
    "relu": [case(away(3, 4))],
    "sigmoid": unary(),
    "tanh": unary(),
    "exp": unary(),
    "log": [case(positive(3, 4))],
    "sqrt": [case(positive(3, 4))],
    "erf": unary(),
    "softplus": unary(),
    "softsign": [case(away(3, 4))],
    "elu": [case(away(3, 4)), case(away(3, 4), alpha=0.5)],
    "selu": [case(away(3, 4))],
    "leaky_relu": [case(away(3, 4)), case(away(3, 4), alpha=0.01)],
    "hard_sigmoid": [case(away(3, 4, kinks=(-3.0, 3.0), lo=-4, hi=4))],
    "gelu": unary() + unary(approximate=True),
    "clip": [case(away(3, 4, kinks=(-0.5, 0.7)), lo=-0.5, hi=0.7)],
    "cast": [case(normal(3, 4), to="float64")],
    "add": [case(normal(3, 4), normal(4)), case(normal(3, 1), normal(1, 5))],
    "sub": [case(normal(3, 4), normal(3, 1))],
    "mul": [case(normal(2, 3), normal(2, 1))],
    "div": [case(normal(3, 4), away(4, lo=0.5, hi=2.0))],
    "pow": [case(positive(3, 4), normal(4))],
    "maximum": [case(away(3, 4), np.zeros((1, 4)))],
    "minimum": [case(away(3, 4), np.zeros((3, 4)))],
    "where": [case(np.array([[True, False, True], [False, False, True]]), normal(2, 3), normal(3))],
    "matmul": [case(normal(3, 5), normal(5, 2)), case(normal(2, 3, 5), normal(5, 2))],
    "gemm": [case(normal(3, 5), normal(5, 2), normal(2))],
    "transpose": [case(normal(2, 3, 4), perm=(0, 2, 1))],
    "reshape": [case(normal(3, 4), shape=(2, 6)), case(normal(2, 3, 4), shape=(0, -1))],
    "concat": [case(normal(3, 2), normal(3, 4), axis=-1), case(normal(1, 3), normal(2, 3), axis=0)],
    "pad": [case(normal(3, 4), pads=(1, 0, 0, 2)), case(normal(2, 3), pads=(0, 1, 2, 0), value=0.5)],
    "gather": [case(normal(5, 3), idx, axis=0), case(normal(3, 5), np.array([1, 1, 4]), axis=1)],
    "constant": [],
    "learning_phase": [],
    "conv": [
        case(normal(2, 3, 6, 5), normal(4, 3, 3, 3), auto_pad="SAME_UPPER", strides=(2, 2)),
        case(normal(2, 2, 10), normal(3, 2, 3), auto_pad="VALID", dilations=(2,)),
        case(normal(2, 4, 5, 5), normal(6, 2, 3, 3), auto_pad="SAME_UPPER", group=2),
        case(normal(2, 2, 8), normal(3, 2, 3), normal(3), pads=(2, 0)),
        case(normal(1, 2, 4, 5, 6), normal(2, 2, 2, 2, 2), auto_pad="VALID", strides=(1, 2, 2)),
        case(normal(2, 2, 7, 7), normal(3, 2, 3, 3), auto_pad="VALID", strides=(2, 2)),
    ],
    "conv_transpose": [
        case(normal(2, 3, 3, 4), normal(3, 2, 3, 3), strides=(2, 2), pads=(1, 1, 0, 0), output_padding=(1, 0)),
        case(normal(2, 2, 5), normal(2, 3, 3), normal(3), dilations=(2,), pads=(1, 2)),
        case(normal(1, 4, 3, 3), normal(4, 2, 2, 3), group=2, strides=(1, 2), pads=(0, 1, 1, 0)),
    ],
    "max_pool": [
        case(distinct(2, 3, 5, 5), kernel=(2, 2), strides=(2, 2), auto_pad="SAME_UPPER"),
        case(distinct(2, 2, 9), kernel=(3,), strides=(2,), auto_pad="VALID"),
    ],
    "avg_pool": [
        case(normal(2, 3, 5, 5), kernel=(2, 2), strides=(2, 2), auto_pad="SAME_UPPER"),
        case(normal(1, 2, 5, 6), kernel=(3, 3), strides=(1, 1), auto_pad="SAME_UPPER"),
        case(normal(2, 2, 10), kernel=(3,), strides=(3,), auto_pad="VALID"),
    ],
    "softmax": [case(normal(3, 5), axis=-1), case(normal(2, 3, 4), axis=1)],
    "reduce_mean": [case(normal(2, 3, 4), axes=(1, 2)), case(normal(2, 3, 4), axes=(0,), keepdims=True)],
    "reduce_sum": [case(normal(2, 3, 4), axes=(2,))],
    "reduce_max": [case(distinct(2, 3, 4), axes=(1,)), case(distinct(2, 3, 4), axes=(0, 2), keepdims=True)],
    "dropout": [case(normal(3, 4), np.array(False), rate=0.5, seed=3), case(normal(3, 4), np.array(True), rate=0.0)],
    "phase_select": [
        case(normal(3, 4), normal(3, 4), PHASE, training=True),
        case(normal(3, 4), normal(3, 4), PHASE, training=False),
    ],
    "batch_norm": [
        case(normal(4, 3), normal(3), normal(3), normal(3), positive(3), epsilon=1e-3),
        case(normal(4, 3, 2, 2), normal(3), normal(3), normal(3), positive(3), PHASE, axis=1, training=True),
        case(normal(5, 3), normal(3), normal(3), normal(3), positive(3), PHASE, training=True),
        case(normal(5, 3), normal(3), normal(3), normal(3), positive(3), PHASE, training=False),
        case(normal(5, 3), normal(3), normal(3), normal(3), positive(3), np.array(True)),
        case(normal(5, 3), normal(3), normal(3), normal(3), positive(3), np.array(False)),
    ],
    # The adjoint and helper ops of training_ops.
    "expand_like": [case(normal(1, 4), normal(3, 4)), case(normal(4), normal(2, 3, 4))],
    "reshape_like": [case(normal(3, 4), normal(2, 6))],
    "unflatten_like": [case(normal(6, 4), normal(2, 3, 5), axes=2)],
    "slice": [
        case(normal(3, 6), axes=(1,), starts=(1,), ends=(4,)),
        case(normal(4, 3), axes=(0, 1), starts=(1, 0), ends=(3, 2)),
    ],
    "gather_grad": [
        case(normal(2, 2, 3), idx, normal(5, 3), axis=0),
        case(normal(3, 3), np.array([1, 1, 4]), normal(3, 5), axis=1),
    ],
    "conv_grad_input": [
        case(normal(2, 4, 3, 3), normal(4, 3, 3, 3), normal(2, 3, 6, 5), auto_pad="SAME_UPPER", strides=(2, 2)),
        case(normal(2, 3, 6), normal(3, 2, 3), normal(2, 2, 10), auto_pad="VALID", dilations=(2,)),
    ],
    "conv_grad_weight": [
        case(normal(2, 3, 6, 5), normal(2, 4, 3, 3), normal(4, 3, 3, 3), auto_pad="SAME_UPPER", strides=(2, 2)),
        case(normal(2, 4, 5, 5), normal(2, 6, 5, 5), normal(6, 2, 3, 3), auto_pad="SAME_UPPER", group=2),
    ],
    "avg_pool_grad": [
        case(normal(2, 3, 3, 3), normal(2, 3, 5, 5), kernel=(2, 2), strides=(2, 2), auto_pad="SAME_UPPER")
    ],
    "log_softmax": [case(normal(3, 5), axis=-1), case(normal(2, 3, 4), axis=1)],
    "layer_norm": [
        case(normal(3, 5), normal(5), normal(5), epsilon=1e-3),
        case(normal(2, 3, 4), normal(3, 4), axis=1, epsilon=0.1),
        case(normal(4, 2, 3), normal(3), normal(3), axis=-1, epsilon=1e-5),
    ],
}

# Ops whose outputs carry no gradient (bool/int outputs, or values that are piecewise constant).
NONDIFFERENTIABLE = {
    "compare", "argmax", "one_hot", "size", "dropout_mask", "random_normal", "constant", "learning_phase",
}  # fmt: skip
# Ops whose rule exists but refuses, with a reason (`unsupported_reason`): second derivatives of
# max pooling, and the recurrent ops (training differentiates lstm/gru/simple_rnn through their
# unrolled form, DecomposeForTrainingPass; checked by tests/test_recurrent_training.py).
REFUSED = {"max_pool_grad", "lstm", "gru", "simple_rnn"}


def _build(name: str, c: GCase, dtype: str, rng: np.random.Generator) -> tuple[Graph, list[Param], Value]:
    b = Builder(Graph(name))
    params: list[Param] = []
    inputs: list[Value] = []
    for i, arr in enumerate(c.draw(rng)):
        if isinstance(arr, str):
            inputs.append(b.learning_phase())
        elif arr.dtype.kind == "f":
            p = Param(f"p{i}", arr.astype(dtype))
            params.append(p)
            inputs.append(p)
        else:
            inputs.append(b.constant(arr, str(arr.dtype)))
    attrs = {k: (dtype if k == "to" else v) for k, v in c.attrs.items()}
    y = b.op(name, inputs, **attrs)
    # A random projection makes the scalar loss sensitive to every output element.
    proj = b.constant(rng.standard_normal(tuple(int(d) for d in y.type.shape)).astype(dtype), dtype)
    loss = b.op("reduce_sum", [b.op("mul", [y, proj])], axes=tuple(range(y.type.rank)))
    b.graph.outputs = [loss]
    return b.graph, params, loss


def _fd(graph: Graph, p: Param, training: bool, eps: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(p.data)
    base = p.data
    for i in np.ndindex(*base.shape):
        vals = []
        for sign in (1, -1):
            data = base.copy()
            data[i] += sign * eps
            p.data = data
            vals.append(float(run_graph(graph, {}, training=training)[0]))
        grad[i] = (vals[0] - vals[1]) / (2 * eps)
    p.data = base
    return grad


ALL = [(n, i) for n, cases in GRAD_CASES.items() for i in range(len(cases))]


def test_every_op_has_a_gradient_rule_and_cases() -> None:
    without_rule = sorted(n for n, op in OPS.items() if op.grad is None)
    assert not without_rule, f"ops without a gradient rule: {without_rule}"
    untested = sorted(set(OPS) - set(GRAD_CASES) - NONDIFFERENTIABLE - REFUSED)
    assert not untested, f"ops without a finite-difference case: {untested}"
    for name in set(OPS) - NONDIFFERENTIABLE - REFUSED:
        if name not in ("constant", "learning_phase"):
            assert GRAD_CASES[name], f"{name} has an empty case list"
    for name in NONDIFFERENTIABLE:
        assert OPS[name].grad is NO_GRADIENT, f"{name} should be marked NO_GRADIENT"
    for name in REFUSED & set(OPS):
        assert getattr(OPS[name].grad, "unsupported_reason", ""), f"{name}'s rule should say why it refuses"


@pytest.mark.parametrize(("name", "index"), ALL, ids=[f"{n}-{i}" for n, i in ALL])
def test_gradient_matches_finite_differences(name: str, index: int) -> None:
    c = GRAD_CASES[name][index]
    rng = np.random.default_rng(100 + index)
    graph, params, loss = _build(name, c, "float64", rng)
    grads = gradients(graph, loss, params)
    graph.outputs = [loss, *(g for g in grads if g is not None)]
    graph.verify()
    got = run_graph(graph, {}, training=c.training)[1:]
    it = iter(got)
    analytic = [next(it) if g is not None else np.zeros_like(p.data) for p, g in zip(params, grads, strict=True)]
    graph.outputs = [loss]
    for p, a in zip(params, analytic, strict=True):
        want = _fd(graph, p, c.training)
        assert a.shape == p.data.shape
        np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-6, err_msg=f"d loss / d {p.name} for {name}")


@pytest.mark.parametrize(("name", "index"), ALL, ids=[f"{n}-{i}" for n, i in ALL])
def test_gradient_graph_in_onnxruntime_matches_reference(name: str, index: int) -> None:
    c = GRAD_CASES[name][index]
    rng = np.random.default_rng(200 + index)
    graph, params, loss = _build(name, c, "float32", rng)
    graph.outputs = [loss, *(g for g in gradients(graph, loss, params) if g is not None)]
    want = run_graph(graph, {}, training=c.training)
    session = ort.InferenceSession(lower_to_onnx(graph).SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"learning_phase": np.array(c.training)} if graph.learning_phase is not None else {}
    got = session.run(None, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_nondifferentiable_ops_stop_the_gradient() -> None:
    b = Builder()
    x = Param("x", np.arange(6.0).reshape(2, 3))
    hit = b.op("cast", [b.op("compare", [x, b.constant(np.array(2.0), "float64")], mode="greater")], to="float64")
    n = b.op("size", [x], dtype="float64")
    loss = b.op("reduce_sum", [b.op("mul", [hit, n])], axes=(0, 1))
    assert gradients(b.graph, loss, [x]) == [None]


def test_max_pool_second_derivative_is_refused_by_name() -> None:
    b = Builder()
    x = Param("x", np.random.default_rng(0).standard_normal((1, 1, 4, 4)))
    dy = Param("dy", np.ones((1, 1, 2, 2)))
    g = b.op("max_pool_grad", [x, dy], kernel=(2, 2), strides=(2, 2))
    loss = b.op("reduce_sum", [g], axes=(0, 1, 2, 3))
    with pytest.raises(GradientError, match=r"max_pool_grad.*second derivatives"):
        gradients(b.graph, loss, [dy])


def test_missing_rules_are_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OPS["tanh"], "grad", None)
    monkeypatch.setattr(OPS["softsign"], "grad", None)
    b = Builder()
    x = Param("x", np.ones((2, 2)))
    y = b.op("softsign", [b.op("tanh", [x])])
    loss = b.op("reduce_sum", [y], axes=(0, 1))
    with pytest.raises(GradientError, match=r"no gradient rule for op\(s\) softsign, tanh"):
        gradients(b.graph, loss, [x])


def test_shared_weight_gradients_accumulate_over_all_uses() -> None:
    rng = np.random.default_rng(5)
    b = Builder()
    w = Param("w", rng.standard_normal((3, 3)))
    x = b.constant(rng.standard_normal((4, 3)), "float64")
    h = b.op("tanh", [b.op("matmul", [x, w])])
    y = b.op("matmul", [h, w])  # the same Param again
    loss = b.op("reduce_sum", [b.op("mul", [y, y])], axes=(0, 1))
    b.graph.outputs = [loss]
    (g,) = gradients(b.graph, loss, [w])
    assert g is not None
    b.graph.outputs = [loss, g]
    analytic = run_graph(b.graph, {})[1]
    b.graph.outputs = [loss]
    np.testing.assert_allclose(analytic, _fd(b.graph, w, False), rtol=1e-6, atol=1e-7)


def test_dropout_in_training_mode_is_decomposed_and_differentiated() -> None:
    rng = np.random.default_rng(9)
    b = Builder()
    w = Param("w", rng.standard_normal((4, 6)))
    x = b.constant(rng.standard_normal((5, 4)), "float64")
    h = b.op("dropout", [b.op("matmul", [x, w]), b.learning_phase()], rate=0.4, seed=11)
    loss = b.op("reduce_sum", [b.op("mul", [h, h])], axes=(0, 1))
    b.graph.outputs = [loss]
    graph = FoldLearningPhasePass(training=True).run(b.graph).graph
    with pytest.raises(GradientError, match="dropout"):
        gradients(graph, graph.outputs[0], [w])
    graph = DecomposeForTrainingPass().run(graph).graph
    assert "dropout_mask" in graph.op_counts()
    result = AutodiffPass().run(graph).graph
    analytic = run_graph(result, {}, training=True)[1]
    result.outputs = result.outputs[:1]
    want = _fd(result, w, True)
    np.testing.assert_allclose(analytic, want, rtol=1e-5, atol=1e-6)
    # About 40 % of the hidden units got no gradient at all.
    dropped = np.mean(np.all(analytic == 0, axis=0))
    assert 0 <= dropped < 1


def test_batch_norm_training_decomposition_matches_keras_moments() -> None:
    rng = np.random.default_rng(3)
    b = Builder()
    x_in = b.input("x", __import__("kcompile").ir.TensorType("float64", ("batch", 3)))
    gamma, beta = Param("g", rng.standard_normal(3)), Param("b", rng.standard_normal(3))
    mm, mv = Param("mm", rng.standard_normal(3), trainable=False), Param("mv", rng.uniform(0.5, 2, 3), trainable=False)
    y = b.op("batch_norm", [x_in, gamma, beta, mm, mv, b.learning_phase()], momentum=0.9, epsilon=1e-3)
    b.graph.outputs = [y]
    graph = FoldLearningPhasePass(training=True).run(b.graph).graph
    dec = DecomposeForTrainingPass()
    graph = dec.run(graph).graph
    assert [p.name for p, _ in dec.updates] == ["mm", "mv"]
    x = rng.standard_normal((6, 3))
    y_got, mm_new, mv_new = run_graph(graph, {"x": x})
    mean, var = x.mean(0), (x * x).mean(0) - x.mean(0) ** 2
    np.testing.assert_allclose(y_got, (x - mean) / np.sqrt(var + 1e-3) * gamma.data + beta.data, rtol=1e-10)
    np.testing.assert_allclose(mm_new, mm.data * 0.9 + mean * (1 - 0.9), rtol=1e-12)
    np.testing.assert_allclose(mv_new, mv.data * 0.9 + var * (1 - 0.9), rtol=1e-12)
