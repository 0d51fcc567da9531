"""Elementwise ops: unary activations and broadcasting binary arithmetic.

Unary ops keep their input type. Binary ops broadcast NumPy-style (symbolic dims allowed) and
require both operands to have one dtype: the layer API inserts casts, never the op.
Activation numerics follow Keras 3: `gelu` is the exact erf form unless `approximate`,
`hard_sigmoid(x) = relu6(x + 3) / 6`, `selu` uses Keras' constants.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ShapeError
from ..ir.types import FLOAT_DTYPES, TensorType, broadcast_shapes
from .registry import Attr, OnnxEmitter, OpDef, RefContext, register

SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805


def _erf(x: np.ndarray) -> np.ndarray:
    # math.erf is exact to double precision; vectorised over float64 then cast back.
    return np.vectorize(math.erf, otypes=[np.float64])(x.astype(np.float64)).astype(x.dtype)


def _same_type(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    return [types[0]]


def _float_only(name: str) -> Callable[[list[TensorType], dict[str, Any]], list[TensorType]]:
    def infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        if types[0].dtype not in FLOAT_DTYPES:
            raise ShapeError(f"{name} needs a floating-point input, got {types[0]}")
        return [types[0]]

    return infer


def unary(
    name: str,
    ref: Callable[..., np.ndarray],
    onnx: Callable[[OnnxEmitter, str, dict[str, Any]], str],
    attrs: tuple[Attr, ...] = (),
    floats_only: bool = True,
    doc: str = "",
) -> OpDef:
    def reference(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
        return [np.asarray(ref(xs[0], **a)).astype(xs[0].dtype, copy=False)]

    def lower(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
        return [onnx(e, ins[0], a)]

    return register(
        OpDef(
            name,
            inputs=("x",),
            attrs=attrs,
            infer=_float_only(name) if floats_only else _same_type,
            reference=reference,
            onnx=lower,
            doc=doc,
            elementwise=True,
        )
    )


def _simple(op_type: str, **fixed: Any) -> Callable[[OnnxEmitter, str, dict[str, Any]], str]:
    return lambda e, x, a: e.emit(op_type, [x], **fixed, **a)[0]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def _gelu(x: np.ndarray, approximate: bool) -> np.ndarray:
    if approximate:
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


unary("identity", lambda x: x, _simple("Identity"), floats_only=False, doc="y = x")
unary("neg", np.negative, _simple("Neg"), floats_only=False, doc="y = -x")
unary("abs", np.abs, _simple("Abs"), floats_only=False, doc="y = |x|")
unary("relu", lambda x: np.maximum(x, 0), _simple("Relu"), doc="y = max(x, 0)")
unary("sigmoid", _sigmoid, _simple("Sigmoid"), doc="y = 1 / (1 + exp(-x))")
unary("tanh", np.tanh, _simple("Tanh"), doc="y = tanh(x)")
unary("exp", np.exp, _simple("Exp"), doc="y = exp(x)")
unary("log", np.log, _simple("Log"), doc="y = log(x)")
unary("sqrt", np.sqrt, _simple("Sqrt"), doc="y = sqrt(x)")
unary("erf", _erf, _simple("Erf"), doc="y = erf(x)")
unary("softplus", lambda x: np.logaddexp(0, x), _simple("Softplus"), doc="y = log(1 + exp(x))")
unary("softsign", lambda x: x / (1 + np.abs(x)), _simple("Softsign"), doc="y = x / (1 + |x|)")
unary(
    "elu",
    lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
    _simple("Elu"),
    attrs=(Attr("alpha", "float", 1.0),),
    doc="y = x if x > 0 else alpha * (exp(x) - 1)",
)
unary(
    "selu",
    lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
    _simple("Selu", alpha=SELU_ALPHA, gamma=SELU_SCALE),
    doc="y = scale * elu(x, alpha) with Keras' constants",
)
unary(
    "leaky_relu",
    lambda x, alpha: np.where(x >= 0, x, alpha * x),
    _simple("LeakyRelu"),
    attrs=(Attr("alpha", "float", 0.2),),
    doc="y = x if x >= 0 else alpha * x",
)
unary(
    "hard_sigmoid",
    lambda x: np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    _simple("HardSigmoid", alpha=1.0 / 6.0, beta=0.5),
    doc="y = relu6(x + 3) / 6 (Keras 3)",
)
unary(
    "gelu",
    _gelu,
    lambda e, x, a: e.emit("Gelu", [x], approximate="tanh" if a["approximate"] else "none")[0],
    attrs=(Attr("approximate", "bool", False),),
    doc="exact: y = x * Phi(x); approximate: the tanh form",
)
unary(
    "clip",
    lambda x, lo, hi: np.clip(x, lo, hi),
    lambda e, x, a: e.emit("Clip", [x, e.const(np.array(a["lo"], np.float32)), e.const(np.array(a["hi"], np.float32))])[
        0
    ],
    attrs=(Attr("lo", "float"), Attr("hi", "float")),
    doc="y = min(max(x, lo), hi) (float32 bounds)",
)


def _cast_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    return [types[0].with_dtype(attrs["to"])]


def _cast_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    from onnx import helper

    return e.emit("Cast", ins, to=helper.np_dtype_to_tensor_dtype(np.dtype(a["to"])))


register(
    OpDef(
        "cast",
        inputs=("x",),
        attrs=(Attr("to", "dtype"),),
        infer=_cast_infer,
        reference=lambda ctx, xs, a: [xs[0].astype(a["to"])],
        onnx=_cast_onnx,
        doc="y = x converted to dtype `to`",
        elementwise=True,
    )
)


# Binary ------------------------------------------------------------------------------------
def _binary_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    a, b = types
    if a.dtype != b.dtype:
        raise ShapeError(f"operands have different dtypes: {a} and {b}")
    try:
        shape = broadcast_shapes(a.shape, b.shape)
    except ShapeError:
        raise ShapeError(f"cannot broadcast {a} with {b}") from None
    return [TensorType(a.dtype, shape)]


def binary(name: str, ref: Callable[[np.ndarray, np.ndarray], np.ndarray], onnx_type: str, doc: str) -> OpDef:
    return register(
        OpDef(
            name,
            inputs=("a", "b"),
            infer=_binary_infer,
            reference=lambda ctx, xs, a: [np.asarray(ref(xs[0], xs[1])).astype(xs[0].dtype, copy=False)],
            onnx=lambda e, ins, a, types: e.emit(onnx_type, ins),
            doc=doc,
            elementwise=True,
        )
    )


binary("add", np.add, "Add", "y = a + b (broadcasting)")
binary("sub", np.subtract, "Sub", "y = a - b (broadcasting)")
binary("mul", np.multiply, "Mul", "y = a * b (broadcasting)")
binary("div", np.divide, "Div", "y = a / b (broadcasting)")
binary("pow", np.power, "Pow", "y = a ** b (broadcasting)")
binary("maximum", np.maximum, "Max", "y = max(a, b) (broadcasting)")
binary("minimum", np.minimum, "Min", "y = min(a, b) (broadcasting)")


def _where_infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    c, a, b = types
    if c.dtype != "bool":
        raise ShapeError(f"where needs a bool condition, got {c}")
    (out,) = _binary_infer([a, b], attrs)
    return [out.with_shape(broadcast_shapes(c.shape, out.shape))]


register(
    OpDef(
        "where",
        inputs=("cond", "a", "b"),
        infer=_where_infer,
        reference=lambda ctx, xs, a: [np.where(xs[0], xs[1], xs[2]).astype(xs[1].dtype, copy=False)],
        onnx=lambda e, ins, a, types: e.emit("Where", ins),
        doc="y = a where cond else b (broadcasting)",
        elementwise=True,
    )
)
