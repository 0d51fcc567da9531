"""Keras activation names -> IR. Each entry emits the ops of one activation on a Value.

`leaky_relu` as a string has slope 0.2, `hard_sigmoid` is relu6(x + 3) / 6, `gelu` is the exact
erf form, `swish`/`silu` is x * sigmoid(x): all as Keras 3 defines them.
"""

from __future__ import annotations

from collections.abc import Callable

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
