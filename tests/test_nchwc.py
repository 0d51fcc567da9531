"""Blocked convolutions with run-time filters (`kcompile.runtime.nchwc`, what the training step
runs): onnxruntime on the rewritten model against the NumPy reference interpreter, and the
lowerings chosen when the emitter runs Convs blocked (`conv_block`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from kcompile.runtime import lower_to_onnx
from kcompile.runtime.nchwc import NCHWC_DOMAIN, block_runtime_convs, nchwc_block, onnxruntime_filter, reorder_filter
from test_training_ops import TRAINING_CASES, _build

from kcompile.ir import Builder, Graph, TensorType, run_graph
from kcompile.ir.graph import Param
from kcompile.training.step import params_to_inputs

BLOCK = nchwc_block()
needs_blocks = pytest.mark.skipif(
    BLOCK is None, reason="this onnxruntime build has no blocked (NCHWc) convolution kernels on this CPU"
)


def _session(model: Any) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _conv_graph(c: int, o: int, attrs: dict[str, Any], bias: bool, rng: np.random.Generator) -> Graph:
    b = Builder(Graph("conv"))
    x = b.input("x", TensorType("float32", ("batch", c, 9, 8)))
    w = Param("w", rng.standard_normal((o, c // attrs.get("group", 1), 3, 3)).astype(np.float32))
    ins = [x, w] + ([Param("b", rng.standard_normal(o).astype(np.float32))] if bias else [])
    b.graph.outputs = [b.op("conv", ins, **attrs)]
    b.graph.verify()
    return b.graph


def _feeds(graph: Graph, params: dict[str, Param], batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for v in graph.inputs:
        if v.name in params:
            feeds[v.name] = params[v.name].data
        else:
            shape = tuple(batch if d == "batch" else d for d in v.type.shape)
            feeds[v.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _blocked_convs(model: Any) -> int:
    return sum(1 for n in model.graph.node if n.domain == NCHWC_DOMAIN and n.op_type == "Conv")


@needs_blocks
@pytest.mark.parametrize("channels", [3, 2 * 16], ids=["nchw-input", "blocked-input"])
def test_filters_are_reordered_as_onnxruntime_reorders_constant_ones(channels: int) -> None:
    assert BLOCK is not None
    w = np.random.default_rng(0).standard_normal((2 * BLOCK, channels, 3, 3)).astype(np.float32)
    written = onnxruntime_filter(w)
    assert written is not None
    np.testing.assert_array_equal(reorder_filter(w, BLOCK), written)


# (conv attributes, bias, input channels: "blocks" = two whole blocks, else that many, fewer than
# any block, which MLAS reads as NCHW)
CONV_CASES: list[tuple[dict[str, Any], bool, int | str]] = [
    ({}, True, "blocks"),
    ({"pads": (1, 1, 1, 1)}, True, 1),
    ({"strides": (2, 2)}, False, 3),
    ({"pads": (1, 0, 2, 1)}, False, "blocks"),
    ({"strides": (2, 1), "dilations": (1, 2)}, True, "blocks"),
    ({"auto_pad": "SAME_UPPER"}, True, "blocks"),
    ({"auto_pad": "SAME_UPPER", "strides": (2, 2)}, False, "blocks"),
]


@needs_blocks
@pytest.mark.parametrize(("attrs", "bias", "inputs"), CONV_CASES, ids=[str(i) for i in range(len(CONV_CASES))])
def test_runtime_filter_convs_run_blocked_and_match_the_reference(
    attrs: dict[str, Any], bias: bool, inputs: int | str
) -> None:
    assert BLOCK is not None
    channels = 2 * BLOCK if inputs == "blocks" else int(inputs)
    rng = np.random.default_rng(3)
    graph = _conv_graph(channels, BLOCK, attrs, bias, rng)
    params = params_to_inputs(graph)
    model = lower_to_onnx(graph)
    assert block_runtime_convs(model, BLOCK) == 1 and _blocked_convs(model) == 1
    session = _session(model)
    for batch in (1, 3):
        feeds = _feeds(graph, params, batch, rng)
        (want,) = run_graph(graph, feeds)
        (got,) = session.run(None, feeds)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@needs_blocks
def test_max_pools_of_a_blocked_conv_pool_blocked_once_each() -> None:
    """Two equal pools and a different one read the conv's blocked output (the equal ones run
    once); a ReLU still reads it as NCHW."""
    assert BLOCK is not None
    rng = np.random.default_rng(5)
    b = Builder(Graph("pools"))
    x = b.input("x", TensorType("float32", ("batch", BLOCK, 9, 9)))
    w = Param("w", rng.standard_normal((BLOCK, BLOCK, 3, 3)).astype(np.float32))
    y = b.op("conv", [x, w])
    first, again = (b.op("max_pool", [y], kernel=(2, 2), strides=(2, 2)) for _ in range(2))
    box = b.op("max_pool", [y], kernel=(1, 2), strides=(2, 2))
    b.graph.outputs = [b.op("add", [first, again]), box, b.op("relu", [y])]
    b.graph.verify()
    params = params_to_inputs(b.graph)
    model = lower_to_onnx(b.graph)
    assert block_runtime_convs(model, BLOCK) == 1
    blocked = [n.op_type for n in model.graph.node if n.domain == NCHWC_DOMAIN]
    assert sorted(blocked) == ["Conv", "MaxPool", "MaxPool", "ReorderInput"] + ["ReorderOutput"] * 3
    assert not any(n.op_type == "MaxPool" and n.domain == "" for n in model.graph.node)
    session = _session(model)
    feeds = _feeds(b.graph, params, 3, rng)
    for got, want in zip(session.run(None, feeds), run_graph(b.graph, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@needs_blocks
def test_only_ungrouped_runtime_filters_with_whole_blocks_are_rewritten() -> None:
    assert BLOCK is not None
    rng = np.random.default_rng(4)
    constant = lower_to_onnx(_conv_graph(BLOCK, BLOCK, {}, True, rng))  # onnxruntime's own transformer's
    grouped = _conv_graph(2 * BLOCK, 2 * BLOCK, {"group": 2}, False, rng)
    ragged = _conv_graph(BLOCK + 2, BLOCK, {}, False, rng)
    for g in (grouped, ragged):
        params_to_inputs(g)
    for model in (constant, lower_to_onnx(grouped), lower_to_onnx(ragged)):
        before = [n.op_type for n in model.graph.node]
        assert block_runtime_convs(model, BLOCK) == 0
        assert [n.op_type for n in model.graph.node] == before


CONV_GRAD_INPUT = list(range(len(TRAINING_CASES["conv_grad_input"])))


@pytest.mark.parametrize("index", CONV_GRAD_INPUT, ids=[str(i) for i in CONV_GRAD_INPUT])
def test_conv_grad_input_under_blocked_convs_matches_the_reference(index: int) -> None:
    """Where the emitter runs Convs blocked, a stride-1, one-group input gradient lowers to one Conv
    with the flipped filter. A block of 1 takes that path for every such case (their channels
    fill no real block, so onnxruntime runs them unblocked, with the same numbers)."""
    case = TRAINING_CASES["conv_grad_input"][index]
    rng = np.random.default_rng(index + 5)
    graph = _build("conv_grad_input", case, rng)
    params = params_to_inputs(graph)
    model = lower_to_onnx(graph, conv_block=1)
    flipped = (
        len(case.attrs.get("strides", ())) == 0
        and case.attrs.get("group", 1) == 1
        and graph.inputs[0].type.rank == 4
        and max(case.attrs.get("pads", (0,))) <= 2
    )
    assert any(n.op_type == "Conv" for n in model.graph.node) == flipped, [n.op_type for n in model.graph.node]
    session = _session(model)
    for batch in (1, 3):
        feeds = _feeds(graph, params, batch, rng)
        (want,) = run_graph(graph, feeds)
        (got,) = session.run(None, feeds)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@needs_blocks
def test_a_blocked_flipped_conv_grad_input_matches_the_reference() -> None:
    """Channels that fill blocks: the input gradient runs as a blocked Conv."""
    assert BLOCK is not None
    rng = np.random.default_rng(6)
    b = Builder(Graph("dx"))
    dy = b.input("dy", TensorType("float32", ("batch", 2 * BLOCK, 7, 6)))
    w = Param("w", rng.standard_normal((2 * BLOCK, BLOCK, 3, 3)).astype(np.float32))
    x = b.input("x", TensorType("float32", ("batch", BLOCK, 7, 6)))
    b.graph.outputs = [b.op("conv_grad_input", [dy, w, x], auto_pad="SAME_UPPER")]
    graph = b.graph
    params = params_to_inputs(graph)
    model = lower_to_onnx(graph, conv_block=BLOCK)
    assert block_runtime_convs(model, BLOCK) == 1
    session = _session(model)
    feeds = _feeds(graph, params, 4, rng)
    (want,) = run_graph(graph, feeds)
    (got,) = session.run(None, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_step_onnxruntime_cannot_load_blocked_falls_back_to_the_plain_lowering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An onnxruntime build whose blocked ops differ must not stop training."""
    import kcompile.runtime.nchwc as nchwc

    import kcompile as kc
    from kcompile.layers import Conv2D, Dense, Flatten

    tried: list[int] = []

    def broken(model: Any, block: int) -> int:
        tried.append(block)
        model.graph.node.append(onnx.helper.make_node("NoSuchOp", [], ["nothing"], domain=NCHWC_DOMAIN))
        model.graph.output.append(onnx.helper.make_tensor_value_info("nothing", onnx.TensorProto.FLOAT, None))
        return 1

    monkeypatch.setattr(nchwc, "nchwc_block", lambda: 16)
    monkeypatch.setattr(nchwc, "block_runtime_convs", broken)
    model = kc.Sequential([kc.Input(shape=(6, 6, 1)), Conv2D(16, 3), Flatten(), Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 6, 6, 1)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
    before = model.evaluate(x, y, verbose=0)
    model.train_on_batch(x, y)
    assert model.evaluate(x, y, verbose=0) < before
    assert tried  # the blocked model was built, refused, and replaced
