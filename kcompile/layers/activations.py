"""Keras activation names -> IR. Each entry emits the ops of one activation on a Value.

`leaky_relu` as a string has slope 0.2, `hard_sigmoid` is relu6(x + 3) / 6, `gelu` is the exact
erf form, `swish`/`silu` is x * sigmoid(x): all as Keras 3 defines them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import ModelError
from ..ir.builder import Builder
from ..ir.graph import Value

Activation = Callable[[Builder, Value], Value]


def _unary(op: str, **attrs: object) -> Activation:
    return lambda b, x: b.op(op, [x], **attrs)


def _swish(b: Builder, x: Value) -> Value:
    return b.op("mul", [x, b.op("sigmoid", [x])])


def _softmax(b: Builder, x: Value) -> Value:
    return b.op("softmax", [x], axis=-1)


def _log_softmax(b: Builder, x: Value) -> Value:
    return b.op("log_softmax", [x], axis=-1)


def _relu6(b: Builder, x: Value) -> Value:
    return b.op("clip", [x], lo=0.0, hi=6.0)


def _const(b: Builder, x: Value, value: float) -> Value:
    return b.constant(np.asarray(value, x.type.dtype), x.type.dtype)


def _hard_silu(b: Builder, x: Value) -> Value:  # x * relu6(x + 3) / 6 (torch hardswish)
    return b.op("mul", [x, b.op("hard_sigmoid", [x])])


def _mish(b: Builder, x: Value) -> Value:  # x * tanh(softplus(x))
    return b.op("mul", [x, b.op("tanh", [b.op("softplus", [x])])])


def _log_sigmoid(b: Builder, x: Value) -> Value:  # -softplus(-x)
    return b.op("neg", [b.op("softplus", [b.op("neg", [x])])])


def _tanh_shrink(b: Builder, x: Value) -> Value:  # x - tanh(x)
    return b.op("sub", [x, b.op("tanh", [x])])


def _soft_shrink(b: Builder, x: Value) -> Value:  # x - 0.5 above 0.5, x + 0.5 below -0.5, else 0
    return b.op("sub", [x, b.op("clip", [x], lo=-0.5, hi=0.5)])


def _hard_shrink(b: Builder, x: Value) -> Value:  # x where |x| > 0.5, else 0
    keep = b.op("compare", [b.op("abs", [x]), _const(b, x, 0.5)], mode="greater")
    return b.op("where", [keep, x, _const(b, x, 0.0)])


def _squareplus(b: Builder, x: Value) -> Value:  # (x + sqrt(x^2 + 4)) / 2
    root = b.op("sqrt", [b.op("add", [b.op("mul", [x, x]), _const(b, x, 4.0)])])
    return b.op("mul", [b.op("add", [x, root]), _const(b, x, 0.5)])


def _sparse_plus(b: Builder, x: Value) -> Value:  # 0 for x <= -1, x for x >= 1, (x + 1)^2 / 4 between
    x1 = b.op("add", [x, _const(b, x, 1.0)])
    quad = b.op("mul", [b.op("mul", [x1, x1]), _const(b, x, 0.25)])
    low = b.op("compare", [x, _const(b, x, -1.0)], mode="less_equal")
    high = b.op("compare", [x, _const(b, x, 1.0)], mode="greater_equal")
    return b.op("where", [low, _const(b, x, 0.0), b.op("where", [high, x, quad])])


def _sparse_sigmoid(b: Builder, x: Value) -> Value:  # clip((x + 1) / 2, 0, 1)
    half = b.op("mul", [b.op("add", [x, _const(b, x, 1.0)]), _const(b, x, 0.5)])
    return b.op("clip", [half], lo=0.0, hi=1.0)


def _glu(b: Builder, x: Value) -> Value:  # a * sigmoid(b) for the two halves of the last axis
    n = x.type.shape[-1]
    if not isinstance(n, int) or n % 2:
        raise ModelError(f"the 'glu' activation needs an even, known last dimension, got {x.type}")
    a = b.op("slice", [x], axes=(-1,), starts=(0,), ends=(n // 2,))
    g = b.op("slice", [x], axes=(-1,), starts=(n // 2,), ends=(n,))
    return b.op("mul", [a, b.op("sigmoid", [g])])


ACTIVATIONS: dict[str, Activation | None] = {
    "linear": None,
    "relu": _unary("relu"),
    "relu6": _relu6,
    "sigmoid": _unary("sigmoid"),
    "tanh": _unary("tanh"),
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "elu": _unary("elu", alpha=1.0),
    "selu": _unary("selu"),
    "gelu": _unary("gelu", approximate=False),
    "swish": _swish,
    "silu": _swish,
    "softplus": _unary("softplus"),
    "softsign": _unary("softsign"),
    "exponential": _unary("exp"),
    "leaky_relu": _unary("leaky_relu", alpha=0.2),
    "hard_sigmoid": _unary("hard_sigmoid"),
    "hard_silu": _hard_silu,
    "hard_swish": _hard_silu,
    "mish": _mish,
    "celu": _unary("elu", alpha=1.0),  # celu with Keras' default alpha 1 is elu
    "log_sigmoid": _log_sigmoid,
    "hard_tanh": _unary("clip", lo=-1.0, hi=1.0),
    "tanh_shrink": _tanh_shrink,
    "soft_shrink": _soft_shrink,
    "hard_shrink": _hard_shrink,
    "squareplus": _squareplus,
    "sparse_plus": _sparse_plus,
    "sparse_sigmoid": _sparse_sigmoid,
    "glu": _glu,
}


def get_activation(name: str | None) -> Activation | None:
    """The emitter for a Keras activation name (None and 'linear' mean no activation)."""
    if name is None:
        return None
    if not isinstance(name, str) or name.lower() not in ACTIVATIONS:
        import difflib

        near = difflib.get_close_matches(str(name).lower(), ACTIVATIONS, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f"; known: {', '.join(sorted(ACTIVATIONS))}"
        raise ModelError(f"unknown activation {name!r}{hint}")
    return ACTIVATIONS[name.lower()]


def apply_activation(b: Builder, x: Value, act: Activation | None) -> Value:
    return x if act is None else act(b, x)
