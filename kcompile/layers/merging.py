"""Merging layers and tensor arithmetic.

Add/Subtract/Multiply/Maximum/Minimum fold their inputs left to right with broadcasting;
Average is their sum divided by their count; Concatenate joins along `axis` (default -1).
`Elementwise` is what `a + b`, `0.5 * x`, `-x` record on symbolic tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelError
from ..ir.builder import Builder
from ..ir.graph import Value
from .base import KTensor, Layer, flatten_tensors, unique_name

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
