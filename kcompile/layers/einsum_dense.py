"""EinsumDense and the two-operand einsum lowering shared by Dot and the attention layers.

`emit_einsum(b, "abc,cde->abde", x, w)` turns a two-operand einsum into transpose/reshape/matmul:
letters in both operands and the output are batch dims, letters in both operands only are
contracted, letters of one operand that reach the output are its free dims, letters of one operand
only are summed out first. The operands are laid out as x[batch..., free_x..., K] and
w[batch..., K, FY] (K: the contracted dims merged, FY: w's free dims merged), multiplied with one
batched `matmul` (ONNX MatMul, which Gemm fusion can take), then reshaped and transposed into the
output order. The operand order is swapped when that makes the final transpose unnecessary.

EinsumDense(x) = act(einsum(equation, x, kernel) + bias) with Keras' kernel and bias shapes
(keras/src/layers/core/einsum_dense.py `_analyze_einsum_string`), weights `kernel`, `bias`.
"""

from __future__ import annotations

import math
import re
import string
from typing import Any

import numpy as np

from ..errors import ModelError, ShapeError
from ..ir.builder import Builder
from ..ir.graph import Value
from ..ir.types import Dim, TensorType
from .activations import apply_activation, get_activation
from .base import Layer


def _static(dims: list[Dim]) -> int | None:
    """The product of `dims` when all are known, else None."""
    sizes = [d for d in dims if isinstance(d, int)]
    return math.prod(sizes) if len(sizes) == len(dims) else None


def _reshape(b: Builder, x: Value, shape: tuple[int, ...]) -> Value:
    return x if shape == tuple(x.type.shape) else b.op("reshape", [x], shape=shape)


def _transpose(b: Builder, x: Value, perm: list[int]) -> Value:
    return x if perm == list(range(len(perm))) else b.op("transpose", [x], perm=tuple(perm))


def emit_einsum(b: Builder, equation: str, x: Value, y: Value) -> Value:
    """einsum(equation, x, y) for an explicit two-operand equation without repeated letters."""
    m = re.fullmatch(r"([a-zA-Z]*),([a-zA-Z]*)->([a-zA-Z]*)", equation.replace(" ", ""))
    if m is None:
        raise ModelError(f"einsum equation {equation!r} must read 'xs,ys->out' with letters only")
    xs, ys, out = m.groups()
    for spec, v in ((xs, x), (ys, y)):
        if len(set(spec)) != len(spec):
            raise ModelError(f"einsum equation {equation!r}: a letter repeats within one operand")
        if len(spec) != v.type.rank:
            raise ShapeError(f"einsum {equation!r}: operand '{spec}' does not match {v.type}")
    if len(set(out)) != len(out) or any(c not in xs + ys for c in out):
        raise ModelError(f"einsum equation {equation!r}: every output letter must come from one operand, once")
    # Letters of one operand only that leave no output dim are summed out first.
    for side in (0, 1):
        spec, other, v = (xs, ys, x) if side == 0 else (ys, xs, y)
        drop = [i for i, c in enumerate(spec) if c not in out and c not in other]
        if drop:
            v = b.op("reduce_sum", [v], axes=tuple(drop), keepdims=False)
            spec = "".join(c for i, c in enumerate(spec) if i not in drop)
        if side == 0:
            xs, x = spec, v
        else:
            ys, y = spec, v
    size = {c: x.type.shape[i] for i, c in enumerate(xs)}
    for i, c in enumerate(ys):
        d = y.type.shape[i]
        if c in size and isinstance(d, int) and isinstance(size[c], int) and d != size[c]:
            raise ShapeError(f"einsum {equation!r}: dimension '{c}' is {size[c]} in {x.type} but {d} in {y.type}")
        size.setdefault(c, d)

    def order(letters: list[str]) -> list[str]:
        return sorted(letters, key=out.index)

    batch = order([c for c in xs if c in ys and c in out])
    contract = [c for c in xs if c in ys and c not in out]
    free_x, free_y = order([c for c in xs if c not in ys]), order([c for c in ys if c not in xs])
    if "".join(batch + free_x + free_y) != out and "".join(batch + free_y + free_x) == out:
        xs, ys, x, y, free_x, free_y = ys, xs, y, x, free_y, free_x
    nb = len(batch)
    a = _transpose(b, x, [xs.index(c) for c in batch + free_x + contract])
    w = _transpose(b, y, [ys.index(c) for c in batch + contract + free_y])
    k = _static([size[c] for c in contract])
    fy = _static([size[c] for c in free_y])
    where = f"einsum {equation!r} on {x.type} and {y.type}"
    # a: [batch..., free_x... (or 1), K]
    if not free_x:
        if k is None:
            raise ShapeError(f"{where}: needs static contracted dimensions")
        a = _reshape(b, a, (0,) * nb + (1, k))
    elif len(contract) != 1:
        if k is None:
            raise ShapeError(f"{where}: needs static contracted dimensions")
        a = _reshape(b, a, (0,) * (nb + len(free_x)) + (k,))
    # w: [batch..., (1,)*ones, K, FY]; the ones let the extra free dims of `a` broadcast.
    ones = len(free_x) - 1 if nb and len(free_x) > 1 else 0
    if len(contract) != 1 or len(free_y) != 1 or ones:
        # 0 copies the input dim at the same index: the one contracted dim when nothing moves.
        kdim = k if k is not None else (0 if len(contract) == 1 and not ones else None)
        fdim = fy if fy is not None else (-1 if len(free_y) == 1 else None)
        if kdim is None or fdim is None:
            raise ShapeError(f"{where}: needs static sizes for the dimensions it merges")
        w = _reshape(b, w, (0,) * nb + (1,) * ones + (kdim, fdim))
    r = b.op("matmul", [a, w])
    # r: [batch..., free_x... (or 1), FY] -> [batch..., free_x..., free_y...]
    if len(free_y) != 1 or not free_x:
        tail: list[int] = []
        for c in free_y:
            d = size[c]
            tail.append(d if isinstance(d, int) else -1)
        if tail.count(-1) > 1:
            raise ShapeError(f"{where}: needs static sizes for the free dimensions of its second operand")
        r = _reshape(b, r, (0,) * (nb + len(free_x)) + tuple(tail))
    got = batch + free_x + free_y
    return _transpose(b, r, [got.index(c) for c in out])


def analyze_einsum(
    equation: str, bias_axes: str | None, input_shape: tuple[Dim, ...], output_shape: tuple[Any, ...]
) -> tuple[str, tuple[int, ...], tuple[int, ...] | None]:
    """Keras' `_analyze_einsum_string`: the equation with `...` spelled out in letters, the kernel
    shape and the bias shape (None without bias_axes)."""
    dotted = re.sub(r"\.\.\.", "0", equation)
    left = False
    m = re.match("([a-zA-Z]+),([a-zA-Z]+)->([a-zA-Z]+)$", dotted)
    if m is None:
        m = re.match("0([a-zA-Z]+),([a-zA-Z]+)->0([a-zA-Z]+)$", dotted)
        left = m is not None
    if m is None:
        m = re.match("([a-zA-Z]{2,})0,([a-zA-Z]+)->([a-zA-Z]+)0$", dotted)
    if m is None:
        raise ModelError(
            f"EinsumDense: invalid equation {equation!r}; write [X],[Y]->[Z], ...[X],[Y]->...[Z] or [X]...,[Y]->[Z]..."
        )
    input_spec, weight_spec, output_spec = m.groups()
    elided = len(input_shape) - len(input_spec)
    if elided < 0 or ("0" not in dotted and elided != 0):
        raise ShapeError(f"EinsumDense {equation!r} does not fit an input of rank {len(input_shape)}")
    out = list(output_shape)
    out.insert(0, input_shape[0])
    if elided > 0 and left:
        for i in range(1, elided):
            out.insert(1, input_shape[i])
    elif elided > 0:
        out.extend(input_shape[len(input_shape) - elided :])
    if left:
        in_map = {c: i + elided for i, c in enumerate(input_spec)}
        out_map = {c: i + elided for i, c in enumerate(output_spec)}
    else:
        in_map = {c: i for i, c in enumerate(input_spec)}
        out_map = {c: i for i, c in enumerate(output_spec)}
    if len(out) != len(output_spec) + max(elided, 0):
        raise ModelError(
            f"EinsumDense {equation!r}: output_shape {tuple(output_shape)} needs one entry per output "
            f"dimension after the batch dimension"
        )
    for c in input_spec:
        if c in out_map and out[out_map[c]] is not None and out[out_map[c]] != input_shape[in_map[c]]:
            raise ShapeError(
                f"EinsumDense {equation!r}: input and output shape differ at shared dimension '{c}' "
                f"({input_shape[in_map[c]]} vs {out[out_map[c]]})"
            )
    for c in output_spec:
        if c not in input_spec and c not in weight_spec:
            raise ModelError(f"EinsumDense {equation!r}: output dimension '{c}' is in neither the input nor the weight")
    kernel: list[Any] = []
    for c in weight_spec:
        if c in out_map:
            kernel.append(out[out_map[c]])
        elif c in in_map:
            kernel.append(input_shape[in_map[c]])
        else:
            raise ModelError(f"EinsumDense {equation!r}: weight dimension '{c}' is in neither the input nor the output")
    if not all(isinstance(d, int) for d in kernel):
        raise ShapeError(f"EinsumDense {equation!r}: the kernel shape {tuple(kernel)} must be known (set output_shape)")
    bias: tuple[int, ...] | None = None
    if bias_axes is not None:
        for c in bias_axes:
            if c not in output_spec:
                raise ModelError(f"EinsumDense: bias axis '{c}' is not in the output spec '{output_spec}'")
        first = min(output_spec.find(c) for c in bias_axes)
        shift = elided if left else 0
        sizes = {c: out[i + shift] for i, c in enumerate(output_spec)}
        dims = [sizes[c] if c in bias_axes else 1 for c in output_spec[first:]]
        if not left:
            dims += [1] * max(elided, 0)
        if not all(isinstance(d, int) for d in dims):
            raise ShapeError(f"EinsumDense {equation!r}: the bias shape {tuple(dims)} must be known (set output_shape)")
        bias = tuple(dims)
    # The equation with the ellipsis spelled out in unused letters.
    used = set(input_spec + weight_spec + output_spec)
    spare = "".join(c for c in string.ascii_letters if c not in used)[: max(elided, 0)]
    if left:
        explicit = f"{spare}{input_spec},{weight_spec}->{spare}{output_spec}"
    elif "0" in dotted:
        explicit = f"{input_spec}{spare},{weight_spec}->{output_spec}{spare}"
    else:
        explicit = f"{input_spec},{weight_spec}->{output_spec}"
    return explicit, tuple(int(d) for d in kernel), bias


class EinsumDense(Layer):
    """Keras EinsumDense: y = activation(einsum(equation, x, kernel) + bias)."""

    def __init__(
        self,
        equation: str,
        output_shape: Any,
        activation: str | None = None,
        bias_axes: str | None = None,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(equation, str):
            raise ModelError(f"EinsumDense equation must be a string, got {equation!r}")
        self.equation = equation
        if isinstance(output_shape, int) and not isinstance(output_shape, bool):
            self.partial_output_shape: tuple[Any, ...] = (output_shape,)
        elif isinstance(output_shape, list | tuple):
            self.partial_output_shape = tuple(output_shape)
        else:
            raise ModelError(f"EinsumDense output_shape must be an int or a tuple, got {output_shape!r}")
        if bias_axes is not None and not isinstance(bias_axes, str):
            raise ModelError(f"EinsumDense bias_axes must be a string of output letters, got {bias_axes!r}")
        self.bias_axes = bias_axes
        self.activation = activation
        self._act = get_activation(activation)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = self.regularizer(kernel_regularizer)
        self.bias_regularizer = self.regularizer(bias_regularizer)
        self.kernel_constraint = kernel_constraint
        self.bias_constraint = bias_constraint

    def build(self, input_types: list[TensorType]) -> None:
        (t,) = input_types
        self._explicit, kernel, bias = analyze_einsum(self.equation, self.bias_axes, t.shape, self.partial_output_shape)
        self.kernel = self.add_weight("kernel", kernel, self.kernel_initializer)
        self.bias = self.add_weight("bias", bias, self.bias_initializer) if bias is not None else None

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        return self._emit(b, x, self.kernel, self.bias)

    def _emit(self, b: Builder, x: Value, kernel: Value, bias: Value | None) -> Value:
        y = emit_einsum(b, self._explicit, x, kernel)
        if bias is not None:
            y = b.op("add", [y, bias])
        return apply_activation(b, y, self._act)

    def emit_scaled(self, b: Builder, x: Value, scale: float) -> Value:
        """This layer's output times `scale` (no activation), with the scale on the weights."""
        if self._act is not None:
            raise ModelError("emit_scaled needs a layer without activation")
        c = b.constant(np.asarray(scale, self.dtype), self.dtype)
        with b.scope(self.name):
            kernel = b.op("mul", [self.kernel, c])
            bias = b.op("mul", [self.bias, c]) if self.bias is not None else None
            return self._emit(b, x, kernel, bias)
