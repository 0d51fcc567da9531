"""Property tests: every shape rule agrees with the shapes its own reference (or NumPy) produces,
for static shapes and with a symbolic batch dimension."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kcompile.errors import ShapeError
from kcompile.ir.types import TensorType, broadcast_shapes
from kcompile.ops import OPS
from kcompile.ops.structural import reshape_dims

dims = st.integers(1, 5)
shapes = st.lists(dims, min_size=0, max_size=4).map(tuple)


class _Ctx:
    training = False

    def rng(self, seed: int) -> np.random.Generator:
        return np.random.default_rng(seed)


def infer(op: str, types: list[TensorType], **attrs: object) -> TensorType:
    opdef = OPS[op]
    return opdef.infer(types, opdef.check_attrs(attrs))[0]  # type: ignore[misc]


def run_ref(op: str, arrays: list[np.ndarray], **attrs: object) -> np.ndarray:
    opdef = OPS[op]
    return opdef.reference(_Ctx(), arrays, opdef.check_attrs(attrs))[0]  # type: ignore[misc]


@given(shapes, shapes)
def test_broadcast_matches_numpy(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    try:
        want = np.broadcast_shapes(a, b)
    except ValueError:
        with pytest.raises(ShapeError):
            broadcast_shapes(a, b)
        return
    assert broadcast_shapes(a, b) == want
    # A symbolic dim broadcasts like the size it stands for.
    try:
        concrete = np.broadcast_shapes((7, *a), (1, *b))
    except ValueError:
        return
    sym = broadcast_shapes(("batch", *a), (1, *b))
    assert tuple(7 if d == "batch" else d for d in sym) == concrete


@given(st.lists(dims, min_size=1, max_size=4), st.data())
def test_reshape_matches_numpy(shape: list[int], data: st.DataObject) -> None:
    total = int(np.prod(shape))
    # A target: a factorisation of total, maybe with one -1 and some leading 0s (copies).
    factors = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    assume(total % int(np.prod(factors)) == 0)
    target = [*factors, total // int(np.prod(factors))]
    spec = list(target)
    if data.draw(st.booleans()):
        spec[data.draw(st.integers(0, len(spec) - 1))] = -1
    x = np.zeros(shape)
    assert reshape_dims(tuple(shape), tuple(spec)) == np.reshape(x, spec).shape
    # With a symbolic batch copied by 0, the rest still resolves.
    out = reshape_dims(("batch", *shape), (0, *spec))
    assert out == ("batch", *np.reshape(x, spec).shape)


@given(st.lists(dims, min_size=0, max_size=2), dims, dims, dims)
def test_matmul_rule_matches_numpy(batch: list[int], m: int, k: int, n: int) -> None:
    a, b = np.zeros((*batch, m, k), np.float32), np.zeros((k, n), np.float32)
    t = infer("matmul", [TensorType("float32", a.shape), TensorType("float32", b.shape)])
    assert t.shape == np.matmul(a, b).shape
    sym = infer("matmul", [TensorType("float32", ("batch", m, k)), TensorType("float32", (k, n))])
    assert sym.shape == ("batch", m, n)


@settings(max_examples=60, deadline=None)
@given(
    nd=st.integers(1, 2),
    size=st.integers(1, 9),
    k=st.integers(1, 4),
    s=st.integers(1, 3),
    d=st.integers(1, 2),
    pad=st.sampled_from(["VALID", "SAME_UPPER"]),
    groups=st.sampled_from([1, 2]),
)
def test_conv_rule_matches_reference(nd: int, size: int, k: int, s: int, d: int, pad: str, groups: int) -> None:
    assume(pad == "SAME_UPPER" or (k - 1) * d + 1 <= size)
    x = np.ones((2, 2 * groups) + (size,) * nd, np.float32)
    w = np.ones((2 * groups, 2) + (k,) * nd, np.float32)
    attrs = {"auto_pad": pad, "strides": (s,) * nd, "dilations": (d,) * nd, "group": groups}
    t = infer("conv", [TensorType("float32", x.shape), TensorType("float32", w.shape)], **attrs)
    assert t.shape == run_ref("conv", [x, w], **attrs).shape
    sym = infer("conv", [TensorType("float32", ("batch", *x.shape[1:])), TensorType("float32", w.shape)], **attrs)
    assert sym.shape == ("batch", *t.shape[1:])


@settings(max_examples=60, deadline=None)
@given(
    op=st.sampled_from(["max_pool", "avg_pool"]),
    size=st.integers(1, 9),
    k=st.integers(1, 4),
    s=st.integers(1, 3),
    pad=st.sampled_from(["VALID", "SAME_UPPER"]),
)
def test_pool_rule_matches_reference(op: str, size: int, k: int, s: int, pad: str) -> None:
    assume(pad == "SAME_UPPER" or k <= size)
    x = np.random.default_rng(0).random((1, 2, size, size)).astype(np.float32)
    attrs = {"kernel": (k, k), "strides": (s, s), "auto_pad": pad}
    t = infer(op, [TensorType("float32", x.shape)], **attrs)
    assert t.shape == run_ref(op, [x], **attrs).shape


@given(st.lists(dims, min_size=1, max_size=4), st.data())
def test_transpose_and_reduce_rules(shape: list[int], data: st.DataObject) -> None:
    x = np.zeros(shape, np.float32)
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    assert infer("transpose", [TensorType("float32", x.shape)], perm=perm).shape == np.transpose(x, perm).shape
    axes = tuple(sorted(data.draw(st.sets(st.integers(0, len(shape) - 1), min_size=1))))
    keep = data.draw(st.booleans())
    want = np.mean(x, axis=axes, keepdims=keep).shape
    assert infer("reduce_mean", [TensorType("float32", x.shape)], axes=axes, keepdims=keep).shape == want


@given(st.lists(st.integers(1, 4), min_size=2, max_size=4), dims)
def test_concat_rule(widths: list[int], rows: int) -> None:
    arrays = [np.zeros((rows, w), np.float32) for w in widths]
    t = infer("concat", [TensorType("float32", a.shape) for a in arrays], axis=-1)
    assert t.shape == np.concatenate(arrays, axis=-1).shape
    with pytest.raises(ShapeError):
        infer("concat", [TensorType("float32", (rows, 2)), TensorType("float32", (rows + 1, 2))], axis=-1)


def test_matmul_mismatch_names_both_types() -> None:
    with pytest.raises(ShapeError, match=r"float32\[None, 32\] @ float32\[64, 10\]"):
        infer("matmul", [TensorType("float32", ("batch", 32)), TensorType("float32", (64, 10))])
