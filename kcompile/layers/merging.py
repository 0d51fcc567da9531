"""Merging layers and tensor arithmetic.

Add/Subtract/Multiply/Maximum/Minimum fold their inputs left to right with broadcasting;
Average is their sum divided by their count; Concatenate joins along `axis` (default -1); Dot
is Keras' `batch_dot` (an einsum lowered to matmul).
`Elementwise` is what `a + b`, `0.5 * x`, `-x` record on symbolic tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelError, ShapeError
from ..ir.builder import Builder
from ..ir.graph import Value
from .base import KTensor, Layer, flatten_tensors, unique_name
from .einsum_dense import emit_einsum

_OP_LAYER_NAMES = {
    "add": "add",
    "sub": "subtract",
    "mul": "multiply",
    "div": "divide",
    "pow": "power",
    "neg": "negative",
    "matmul": "matmul",
}


class Elementwise(Layer):
    """One arithmetic op on symbolic tensors and Python/NumPy constants."""

    takes_list = True

    def __init__(self, op: str, **kwargs: Any) -> None:
        super().__init__(name=kwargs.pop("name", None) or unique_name(_OP_LAYER_NAMES[op]), **kwargs)
        self.op = op
        self._operands: list[Any] = []

    def _coerce_inputs(self, inputs: Any) -> list[KTensor]:
        operands = list(inputs)
        tensors = [x for x in operands if isinstance(x, KTensor)]
        for x in operands:
            if not isinstance(x, KTensor) and not isinstance(x, int | float | np.ndarray | np.generic):
                raise ModelError(f"cannot apply '{self.op}' to a {type(x).__name__}")
        self._operands = [None if isinstance(x, KTensor) else np.asarray(x) for x in operands]
        return tensors

    def call(self, b: Builder, inputs: list[Value], /, **kwargs: Any) -> Value:
        it = iter(inputs)
        dtype = inputs[0].type.dtype
        args = [next(it) if c is None else b.constant(np.asarray(c, dtype)) for c in self._operands]
        return b.op(self.op, args)


class _Merge(Layer):
    takes_list = True
    op = "add"

    def _coerce_inputs(self, inputs: Any) -> list[KTensor]:
        if not isinstance(inputs, list | tuple) or len(flatten_tensors(inputs)) < 2:
            raise ModelError(
                f"{type(self).__name__} layer '{self.name}' must be called on a list of at least 2 tensors"
            )
        return super()._coerce_inputs(inputs)

    def call(self, b: Builder, inputs: list[Value], /, **kwargs: Any) -> Value:
        y = inputs[0]
        for x in inputs[1:]:
            y = b.op(self.op, [y, x])
        return y


class Add(_Merge):
    op = "add"


class Subtract(_Merge):
    op = "sub"

    def _coerce_inputs(self, inputs: Any) -> list[KTensor]:
        tensors = super()._coerce_inputs(inputs)
        if len(tensors) != 2:
            raise ModelError(f"Subtract layer '{self.name}' takes exactly 2 tensors, got {len(tensors)}")
        return tensors


class Multiply(_Merge):
    op = "mul"


class Maximum(_Merge):
    op = "maximum"


class Minimum(_Merge):
    op = "minimum"


class Average(_Merge):
    op = "add"

    def call(self, b: Builder, inputs: list[Value], /, **kwargs: Any) -> Value:
        total = super().call(b, inputs)
        return b.op("mul", [total, b.constant(np.asarray(1.0 / len(inputs), total.type.dtype))])


class Concatenate(_Merge):
    def __init__(self, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axis = axis

    def call(self, b: Builder, inputs: list[Value], /, **kwargs: Any) -> Value:
        return b.op("concat", inputs, axis=self.axis)


class Dot(_Merge):
    """Keras Dot: `batch_dot(x, y, axes)`, the samples' dot product along one axis of each input.

    y = einsum over x's axis axes[0] and y's axis axes[1] (never the batch axis), the output being
    x's other dims then y's other non-batch dims ([batch, 1] when nothing else is left). With
    normalize=True each input is first scaled along its axis by min(1/sqrt(sum(x^2)), 1/1e-7)
    (Keras' `normalize` with its epsilon).
    """

    def __init__(self, axes: Any, normalize: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        pair = axes if isinstance(axes, list | tuple) else None
        ok = isinstance(axes, int) or (pair is not None and len(pair) == 2 and all(isinstance(a, int) for a in pair))
        if not ok or isinstance(axes, bool):
            raise ModelError(f"Dot axes must be an int or a pair of ints, got {axes!r}")
        self.axes = tuple(axes) if pair is not None else axes
        self.normalize = bool(normalize)

    def _coerce_inputs(self, inputs: Any) -> list[KTensor]:
        tensors = super()._coerce_inputs(inputs)
        if len(tensors) != 2:
            raise ModelError(f"Dot layer '{self.name}' takes exactly 2 tensors, got {len(tensors)}")
        return tensors

    def call(self, b: Builder, inputs: list[Value], /, **kwargs: Any) -> Value:
        x, y = inputs
        rx, ry = x.type.rank, y.type.rank
        if rx < 2 or ry < 2:
            raise ShapeError(f"Dot needs inputs of rank >= 2, got {x.type} and {y.type}")
        pair = self.axes if isinstance(self.axes, tuple) else (self.axes, self.axes)
        ax, ay = pair[0] % rx, pair[1] % ry
        if ax == 0 or ay == 0:
            raise ModelError(f"Dot cannot take the dot product over the batch axis (axes={self.axes})")
        if self.normalize:
            x, y = _l2_normalize(b, x, ax), _l2_normalize(b, y, ay)
        letters = "abcdefghijklmnopqrstuvwxyz"
        xs = "a" + letters[1:rx]
        ys = "a" + letters[rx : rx + ry - 1]
        ys = ys[:ay] + xs[ax] + ys[ay + 1 :]
        out = xs[:ax] + xs[ax + 1 :] + ys[1:ay] + ys[ay + 1 :]
        z = emit_einsum(b, f"{xs},{ys}->{out}", x, y)
        return b.op("reshape", [z], shape=(0, 1)) if z.type.rank == 1 else z


def _l2_normalize(b: Builder, x: Value, axis: int) -> Value:
    """x * min(1 / sqrt(sum(x^2, axis)), 1 / epsilon), Keras' `ops.normalize` (epsilon 1e-7)."""
    dt = x.type.dtype
    sq = b.op("reduce_sum", [b.op("mul", [x, x])], axes=(axis,), keepdims=True)
    inv = b.op("div", [b.constant(np.asarray(1.0, dt), dt), b.op("sqrt", [sq])])
    return b.op("mul", [x, b.op("minimum", [inv, b.constant(np.asarray(1.0 / 1e-7, dt), dt)])])


def add(inputs: list[KTensor], **kwargs: Any) -> KTensor:
    return Add(**kwargs)(inputs)  # type: ignore[no-any-return]


def subtract(inputs: list[KTensor], **kwargs: Any) -> KTensor:
    return Subtract(**kwargs)(inputs)  # type: ignore[no-any-return]


def multiply(inputs: list[KTensor], **kwargs: Any) -> KTensor:
    return Multiply(**kwargs)(inputs)  # type: ignore[no-any-return]


def average(inputs: list[KTensor], **kwargs: Any) -> KTensor:
    return Average(**kwargs)(inputs)  # type: ignore[no-any-return]


def maximum(inputs: list[KTensor], **kwargs: Any) -> KTensor:
    return Maximum(**kwargs)(inputs)  # type: ignore[no-any-return]


def minimum(inputs: list[KTensor], **kwargs: Any) -> KTensor:
    return Minimum(**kwargs)(inputs)  # type: ignore[no-any-return]


def concatenate(inputs: list[KTensor], axis: int = -1, **kwargs: Any) -> KTensor:
    return Concatenate(axis=axis, **kwargs)(inputs)  # type: ignore[no-any-return]
