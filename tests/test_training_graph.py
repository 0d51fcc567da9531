"""The fast paths of the training step: the ONNX lowerings of the gradient ops that the step graph
of a conv net uses (tiled max pooling, convolution adjoints) against the NumPy reference, and the
optimized step graph against the unoptimized one (same loss and updated state, step after step)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from kcompile.runtime import lower_to_onnx

from kcompile.ir import Builder, Graph, TensorType, run_graph
from kcompile.ir.graph import Param, Value

F = "float32"


def _lowering_graph(op: str, inputs: list[TensorType | tuple[int, ...]], attrs: dict[str, Any]) -> Graph:
    """A graph of one `op`: a TensorType is a graph input, a shape a random weight."""
    rng = np.random.default_rng(3)
    b = Builder(Graph(op))
    values: list[Value] = []
    for i, spec in enumerate(inputs):
        if isinstance(spec, TensorType):
            values.append(b.input(f"x{i}", spec))
        else:
            values.append(Param(f"w{i}", rng.standard_normal(spec).astype(F)))
    b.graph.outputs = [b.op(op, values, **attrs)]
    b.graph.verify()
    return b.graph


def _check_lowering(graph: Graph, ties: bool) -> None:
    session = ort.InferenceSession(lower_to_onnx(graph).SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(11)
    for batch in (1, 4):
        feeds = {}
        for v in graph.inputs:
            shape = tuple(batch if d == "batch" else d for d in v.type.shape)
            # Small integers make equal values (ties between window elements) common.
            draw = rng.integers(-2, 3, shape) if ties and v is graph.inputs[0] else rng.standard_normal(shape)
            feeds[v.name] = draw.astype(F)
        (want,) = run_graph(graph, feeds)
        (got,) = session.run(None, feeds)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def T(*shape: Any) -> TensorType:
    return TensorType(F, tuple(shape))


# Windows that tile the input (strides = kernel, no padding) take the slice-and-compare lowering;
# the rest take MaxPool indices + ScatterElements. Both route to the first maximum.
MAX_POOL_GRAD = [
    ([T("batch", 3, 6, 4), T("batch", 3, 3, 2)], {"kernel": (2, 2), "strides": (2, 2), "auto_pad": "VALID"}),
    ([T("batch", 2, 7, 5), T("batch", 2, 3, 2)], {"kernel": (2, 2), "strides": (2, 2), "auto_pad": "VALID"}),
    ([T("batch", 2, 9, 6), T("batch", 2, 3, 2)], {"kernel": (3, 3), "strides": (3, 3)}),
    ([T("batch", 2, 6, 6), T("batch", 2, 2, 3)], {"kernel": (3, 2), "strides": (3, 2), "auto_pad": "SAME_UPPER"}),
    ([T("batch", 2, 8), T("batch", 2, 4)], {"kernel": (2,), "strides": (2,)}),
    ([T("batch", 2, 4, 4, 4), T("batch", 2, 2, 2, 2)], {"kernel": (2, 2, 2), "strides": (2, 2, 2)}),
    ([T("batch", 2, 5, 5), T("batch", 2, 3, 3)], {"kernel": (2, 2), "strides": (2, 2), "auto_pad": "SAME_UPPER"}),
    ([T("batch", 2, 7, 7), T("batch", 2, 3, 3)], {"kernel": (3, 3), "strides": (2, 2)}),
]


@pytest.mark.parametrize("index", range(len(MAX_POOL_GRAD)))
@pytest.mark.parametrize("ties", [True, False])
def test_max_pool_grad_lowering_matches_the_reference(index: int, ties: bool) -> None:
    inputs, attrs = MAX_POOL_GRAD[index]
    _check_lowering(_lowering_graph("max_pool_grad", list(inputs), attrs), ties)


def test_tiled_max_pool_grad_needs_no_scatter() -> None:
    inputs, attrs = MAX_POOL_GRAD[0]
    ops = {n.op_type for n in lower_to_onnx(_lowering_graph("max_pool_grad", list(inputs), attrs)).graph.node}
    assert "ScatterElements" not in ops and "MaxPool" in ops


# The optimized step graph ------------------------------------------------------------------------
def _conv_net(rate: float) -> Any:
    import kcompile as kc
    from kcompile.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D

    kc.set_random_seed(5)
    return kc.Sequential(
        [
            kc.Input(shape=(10, 10, 2)),
            Conv2D(4, 3, activation="relu"),
            MaxPooling2D(),
            Conv2D(3, 2, padding="same", activation="relu"),
            BatchNormalization(momentum=0.9),
            MaxPooling2D(),
            Flatten(),
            Dropout(rate),
            Dense(5, activation="softmax"),
        ]
    )


def _branchy_net(rate: float) -> Any:
    """Residual add, depthwise and strided convs, 'same' max pooling on an odd size (the
    scatter lowering), average and global pooling, a PReLU: layouts the step must keep straight."""
    import kcompile as kc
    from kcompile import layers as L

    kc.set_random_seed(6)
    x = kc.Input(shape=(9, 9, 3))
    h = L.Conv2D(4, 3, padding="same", activation="relu")(x)
    h = L.Add()([h, L.DepthwiseConv2D(3, padding="same")(h)])
    h = L.PReLU()(L.MaxPooling2D(padding="same")(h))
    h = L.Conv2D(6, 2, strides=2, padding="same", use_bias=False)(h)
    h = L.AveragePooling2D()(L.BatchNormalization()(h))
    y = L.Dense(5, activation="softmax")(L.Dropout(rate)(L.GlobalAveragePooling2D()(h)))
    return kc.Model(x, y)


def _step_plans(optimizer: Any, rate: float = 0.5, net: str = "conv") -> tuple[Any, Any]:
    from kcompile.training import losses
    from kcompile.training.step import build_train_graph, target_types

    y_types = target_types([np.zeros(4, np.int64)])
    loss = [losses.SparseCategoricalCrossentropy()]
    model = _conv_net(rate) if net == "conv" else _branchy_net(rate)
    raw = build_train_graph(model, optimizer, loss, [1.0], [[]], y_types, optimize=False)
    opt = build_train_graph(model, optimizer, loss, [1.0], [[]], y_types, optimize=True)
    return raw, opt


def _feeds(plan: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    shape = tuple(int(d) for d in plan.graph.inputs[0].type.shape[1:])
    feeds = {plan.data_inputs[0]: rng.integers(-2, 3, (4, *shape)).astype(F)}  # ties in every pool
    feeds[plan.data_inputs[1]] = rng.integers(0, 5, 4).astype(np.int64)
    scalars = {"lr": np.array(0.05, F), "t": np.array(1.0, F)}
    for v in plan.graph.inputs:
        if v.name in feeds:
            continue
        if v.name in scalars:
            feeds[v.name] = scalars[v.name]
            continue
        shape = tuple(int(d) for d in v.type.shape)
        positive = "variance" in v.name or v.name in plan.slots  # Adam's velocity, RMSprop's average
        feeds[v.name] = (rng.uniform(0.5, 1.5, shape) if positive else rng.standard_normal(shape)).astype(F)
    return feeds


@pytest.mark.parametrize("net", ["conv", "branchy"])
@pytest.mark.parametrize("rate", [0.0, 0.5])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_optimized_step_computes_what_the_unoptimized_step_computes(opt_name: str, rate: float, net: str) -> None:
    from kcompile.training import optimizers

    optimizer = optimizers.SGD(0.05) if opt_name == "sgd" else optimizers.Adam(0.01)
    raw, opt = _step_plans(optimizer, rate, net)
    assert opt.states == raw.states and opt.updated == raw.updated and opt.scalars == raw.scalars
    feeds = _feeds(raw, np.random.default_rng(2))
    want = run_graph(raw.graph, feeds, training=True)
    got = run_graph(opt.graph, feeds, training=True)
    names = [*raw.scalars, *(f"{s}:new" for s in raw.updated)]
    for name, w, g in zip(names, want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=name)
    if rate == 0.0:  # onnxruntime draws other dropout masks than the interpreter
        session = ort.InferenceSession(lower_to_onnx(opt.graph).SerializeToString(), providers=["CPUExecutionProvider"])
        for name, w, g in zip(names, want, session.run(names, feeds), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_optimized_conv_step_runs_channels_first() -> None:
    from kcompile.training import optimizers

    raw, opt = _step_plans(optimizers.SGD(0.05))
    g = opt.graph

    def transposes(graph: Graph) -> int:  # of activations (weights are transposed once per step)
        return sum(1 for n in graph.nodes if n.op == "transpose" and not isinstance(n.outputs[0].type.shape[0], int))

    # The input's transpose, the flatten's (forward and backward); before: around every window op.
    assert transposes(g) == 3 < transposes(raw.graph)
    producers = {id(o): n for n in g.nodes for o in n.outputs}
    for n in g.nodes:
        if n.op == "add":
            assert all(producers.get(id(v)) is None or producers[id(v)].op != "conv" for v in n.inputs)
        if n.op == "max_pool":  # ReLU runs on the pooled map
            assert producers[id(n.inputs[0])].op != "relu"
        if n.op == "reduce_sum":  # a conv bias gradient sums the pooled gradient
            assert producers[id(n.inputs[0])].op != "max_pool_grad"


@pytest.mark.parametrize("net", ["conv", "branchy"])
def test_optimized_eval_graph_computes_what_the_unoptimized_one_computes(net: str) -> None:
    from kcompile.training import losses, metrics
    from kcompile.training.step import build_eval_graph, target_types

    model = _conv_net(0.5) if net == "conv" else _branchy_net(0.5)
    args = ([losses.SparseCategoricalCrossentropy()], [1.0], [[metrics.SparseCategoricalAccuracy()]])
    y_types = target_types([np.zeros(4, np.int64)])
    raw = build_eval_graph(model, *args, y_types, optimize=False)
    opt = build_eval_graph(model, *args, y_types, optimize=True)
    assert opt.scalars == raw.scalars and opt.states == raw.states
    feeds = _feeds(raw, np.random.default_rng(4))
    for w, g in zip(run_graph(raw.graph, feeds), run_graph(opt.graph, feeds), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
