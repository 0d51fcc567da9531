"""The ops of `kcompile.ops.training_ops`: NumPy reference vs onnxruntime on random inputs with a
symbolic batch dimension fed at several sizes (the same check `test_ops.py` makes for the forward
ops; `TRAINING_CASES` lists one or more cases per training op)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from kcompile.runtime import lower_to_onnx

from kcompile.ir import Builder, Graph, TensorType, run_graph
from kcompile.ir.graph import Param, Value
from kcompile.ops import OPS, training_ops

F = "float32"
Draw = Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]


def T(*shape: Any, dtype: str = F) -> TensorType:
    return TensorType(dtype, tuple(shape))


@dataclass
class TCase:
    """Inputs in order: a TensorType is a graph input ('batch' symbolic), an array a weight."""

    inputs: list[TensorType | np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    draw: dict[int, Draw] = field(default_factory=dict)  # per-input draw (default standard normal)


def ints(hi: int) -> Draw:
    return lambda rng, shape: rng.integers(0, hi, shape).astype(np.int64)


def rounded(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-2, 3, shape).astype(F)  # ties and equalities actually occur


TRAINING_CASES: dict[str, list[TCase]] = {
    "expand_like": [TCase([T(1, 4), T("batch", 4)]), TCase([T("batch", 1), T("batch", 3)])],
    "reshape_like": [TCase([T("batch", 12), T("batch", 3, 4)])],
    "size": [TCase([T("batch", 3)], {"axes": (0,)}), TCase([T("batch", 3, 2)])],
    "slice": [TCase([T("batch", 6)], {"axes": (1,), "starts": (1,), "ends": (4,)})],
    "gather_grad": [
        TCase([T("batch", 3), T("batch", dtype="int64"), np.zeros((5, 3))], {"axis": 0}, {1: ints(5)}),
        TCase([T(2, "batch"), T("batch", dtype="int32"), np.zeros((2, 4))], {"axis": 1}, {1: ints(4)}),
    ],
    "conv_grad_input": [
        TCase(
            [T("batch", 4, 3, 3), np.ones((4, 3, 3, 3)), T("batch", 3, 6, 5)],
            {"auto_pad": "SAME_UPPER", "strides": (2, 2)},
        ),
        TCase(
            [T("batch", 6, 5, 5), np.ones((6, 2, 3, 3)), T("batch", 4, 5, 5)], {"auto_pad": "SAME_UPPER", "group": 2}
        ),
        TCase([T("batch", 3, 6), np.ones((3, 2, 3)), T("batch", 2, 10)], {"auto_pad": "VALID", "dilations": (2,)}),
        TCase(
            [T("batch", 3, 3, 3), np.ones((3, 2, 3, 3)), T("batch", 2, 7, 7)], {"auto_pad": "VALID", "strides": (2, 2)}
        ),
        # strided 2D, group 1: batched MatMul + Col2Im; dilated, explicit uneven pads, leftover rows
        TCase(
            [T("batch", 4, 3, 4), np.ones((4, 3, 3, 2)), T("batch", 3, 8, 6)],
            {"strides": (2, 1), "dilations": (2, 3), "pads": (1, 0, 0, 1)},
        ),
        # stride 1, 2D, one group: MatMul + Col2Im here; one Conv with the flipped kernel where
        # the emitter runs Convs blocked (tests/test_nchwc.py): dilated, uneven and 'same' pads
        TCase([T("batch", 5, 6, 6), np.ones((5, 4, 3, 3)), T("batch", 4, 8, 8)], {"auto_pad": "VALID"}),
        TCase(
            [T("batch", 4, 7, 6), np.ones((4, 3, 3, 2)), T("batch", 3, 7, 6)],
            {"dilations": (2, 1), "pads": (2, 0, 2, 1)},
        ),
        TCase([T("batch", 3, 5, 4), np.ones((3, 2, 2, 2)), T("batch", 2, 5, 4)], {"auto_pad": "SAME_UPPER"}),
        # depthwise, 3D: ConvTranspose
        TCase(
            [T("batch", 4, 5, 5), np.ones((4, 1, 3, 3)), T("batch", 4, 5, 5)], {"auto_pad": "SAME_UPPER", "group": 4}
        ),
        TCase([T("batch", 3, 3, 3, 3), np.ones((3, 2, 2, 3, 2)), T("batch", 2, 4, 5, 4)], {"auto_pad": "VALID"}),
        # padding wider than the kernel reaches: no flipped Conv (Col2Im)
        TCase([T("batch", 3, 8, 8), np.ones((3, 2, 3, 3)), T("batch", 2, 4, 4)], {"pads": (3, 3, 3, 3)}),
        # strided and grouped: ConvTranspose
        TCase(
            [T("batch", 6, 3, 3), np.ones((6, 2, 3, 3)), T("batch", 4, 6, 5)],
            {"auto_pad": "SAME_UPPER", "strides": (2, 2), "group": 2},
        ),
    ],
    "conv_grad_weight": [
        TCase(
            [T("batch", 3, 6, 5), T("batch", 4, 3, 3), np.ones((4, 3, 3, 3))],
            {"auto_pad": "SAME_UPPER", "strides": (2, 2)},
        ),
        TCase(
            [T("batch", 4, 5, 5), T("batch", 6, 5, 5), np.ones((6, 2, 3, 3))], {"auto_pad": "SAME_UPPER", "group": 2}
        ),
        TCase([T("batch", 2, 8), T("batch", 3, 8), np.ones((3, 2, 3))], {"pads": (2, 0)}),
        # 1D and 2D take the one-hot-Conv columns; 3D the crops and row runs (stride 1) or strided
        # slices (strided)
        TCase([T("batch", 3, 9, 7), T("batch", 4, 5, 5), np.ones((4, 3, 3, 2))], {"dilations": (2, 2)}),
        TCase([T("batch", 1, 9, 7), T("batch", 4, 7, 5), np.ones((4, 1, 3, 3))]),
        # fewer column rows (C*K) than output channels: per-sample products summed over the batch
        TCase([T("batch", 1, 9, 7), T("batch", 12, 4, 3), np.ones((12, 1, 3, 3))], {"strides": (2, 2)}),
        TCase([T("batch", 2, 6), T("batch", 8, 6), np.ones((8, 1, 3))], {"auto_pad": "SAME_UPPER", "group": 2}),
        TCase([T("batch", 2, 5, 4, 6), T("batch", 3, 4, 2, 4), np.ones((3, 2, 2, 3, 3))]),
        TCase(
            [T("batch", 2, 5, 5, 6), T("batch", 3, 3, 3, 3), np.ones((3, 2, 2, 2, 2))],
            {"strides": (2, 2, 2), "pads": (0, 1, 0, 1, 0, 1)},
        ),
    ],
    "avg_pool_grad": [
        TCase(
            [T("batch", 3, 3, 3), T("batch", 3, 5, 5)], {"kernel": (2, 2), "strides": (2, 2), "auto_pad": "SAME_UPPER"}
        ),
        TCase([T("batch", 2, 3), T("batch", 2, 10)], {"kernel": (3,), "strides": (3,), "auto_pad": "VALID"}),
    ],
    "max_pool_grad": [
        TCase(
            [T("batch", 3, 5, 5), T("batch", 3, 3, 3)],
            {"kernel": (2, 2), "strides": (2, 2), "auto_pad": "SAME_UPPER"},
            {0: rounded},
        ),
        TCase(
            [T("batch", 2, 9), T("batch", 2, 4)], {"kernel": (3,), "strides": (2,), "auto_pad": "VALID"}, {0: rounded}
        ),
        # Windows that tile x (strides = kernel, no padding): the prefix-box + MaxUnpool lowering,
        # with rows and columns past the last window, non-square windows, 1D and 3D.
        TCase([T("batch", 3, 6, 6), T("batch", 3, 3, 3)], {"kernel": (2, 2), "strides": (2, 2)}, {0: rounded}),
        TCase([T("batch", 2, 7, 11), T("batch", 2, 3, 3)], {"kernel": (2, 3), "strides": (2, 3)}, {0: rounded}),
        TCase(
            [T("batch", 2, 10), T("batch", 2, 3)], {"kernel": (3,), "strides": (3,), "auto_pad": "VALID"}, {0: rounded}
        ),
        TCase(
            [T("batch", 2, 4, 5, 4), T("batch", 2, 2, 2, 2)], {"kernel": (2, 2, 2), "strides": (2, 2, 2)}, {0: rounded}
        ),
    ],
    "compare": [
        TCase([T("batch", 3), T(3)], {"mode": m}, {0: rounded, 1: rounded})
        for m in ("equal", "greater", "greater_equal", "less", "less_equal")
    ],
    "argmax": [
        TCase([T("batch", 5)], {"axis": -1}, {0: rounded}),
        TCase([T("batch", 3, 4)], {"axis": 1, "keepdims": True}),
    ],
    "one_hot": [
        TCase([T("batch", dtype="int64")], {"depth": 4}, {0: ints(4)}),
        TCase([T("batch", 2, dtype="int64")], {"depth": 3}, {0: ints(3)}),
    ],
    "dropout_mask": [TCase([T("batch", 6)], {"rate": 0.0}), TCase([T("batch", 6)], {"rate": 1.0, "seed": 2})],
}

ALL = [(n, i) for n, cases in TRAINING_CASES.items() for i in range(len(cases))]


def training_op_names() -> set[str]:
    return {
        name for name, op in OPS.items() if op.onnx is not None and op.reference is not None and _defined_here(name)
    }


def _defined_here(name: str) -> bool:
    return (
        getattr(OPS[name].infer, "__module__", "") == training_ops.__name__
        or getattr(OPS[name].reference, "__module__", "") == training_ops.__name__
    )


def test_every_training_op_has_cases_and_a_complete_entry() -> None:
    names = training_op_names()
    assert names == set(TRAINING_CASES), f"missing: {names - set(TRAINING_CASES)}; extra: {set(TRAINING_CASES) - names}"
    for name in names:
        op = OPS[name]
        assert op.doc and op.infer and op.reference and op.onnx and op.grad, name


def _build(name: str, case: TCase, rng: np.random.Generator) -> Graph:
    b = Builder(Graph(name))
    inputs: list[Value] = []
    for i, spec in enumerate(case.inputs):
        if isinstance(spec, np.ndarray):
            inputs.append(Param(f"w{i}", rng.standard_normal(spec.shape).astype(F)))
        else:
            inputs.append(b.input(f"x{i}", spec))
    b.graph.outputs = [b.op(name, inputs, **case.attrs)]
    b.graph.verify()
    return b.graph


@pytest.mark.parametrize(("name", "index"), ALL, ids=[f"{n}-{i}" for n, i in ALL])
def test_reference_matches_onnxruntime(name: str, index: int) -> None:
    case = TRAINING_CASES[name][index]
    rng = np.random.default_rng(index + 17)
    graph = _build(name, case, rng)
    session = ort.InferenceSession(lower_to_onnx(graph).SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 8):
        feeds = {}
        for _i, v in enumerate(graph.inputs):
            index_in_case = int(v.name[1:])
            shape = tuple(batch if d == "batch" else d for d in v.type.shape)
            draw = case.draw.get(index_in_case)
            feeds[v.name] = (
                draw(rng, shape).astype(v.type.dtype) if draw else rng.standard_normal(shape).astype(v.type.dtype)
            )
        (want,) = run_graph(graph, feeds)
        (got,) = session.run(None, feeds)
        assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, want.dtype, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dropout_mask_draws_a_seeded_mask_with_the_right_fraction() -> None:
    b = Builder()
    x = b.input("x", T("batch", 2000))
    b.graph.outputs = [b.op("dropout_mask", [x], rate=0.25, seed=7)]
    session = ort.InferenceSession(lower_to_onnx(b.graph).SerializeToString(), providers=["CPUExecutionProvider"])
    ones = np.ones((4, 2000), np.float32)
    ref = run_graph(b.graph, {"x": ones})[0]
    first, second = session.run(None, {"x": ones})[0], session.run(None, {"x": ones})[0]
    for got in (ref, first):
        kept = got != 0
        assert abs(kept.mean() - 0.75) < 0.02
        np.testing.assert_allclose(got[kept], 1 / 0.75, rtol=1e-6)
    assert not np.array_equal(first, second)  # a new mask on every run
    again = ort.InferenceSession(lower_to_onnx(b.graph).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(again.run(None, {"x": ones})[0], first)  # the seed fixes the sequence
