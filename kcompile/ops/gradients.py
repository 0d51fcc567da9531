"""Reverse-mode gradient rules, one per op, attached to the registry (`OPS[name].grad = rule`).

A rule is `rule(ctx, node, douts) -> dins`: given the forward node (its inputs and outputs are
values of the graph being differentiated) and the gradients of its outputs (`None` where an output
does not reach the loss), it emits the gradient computation through `ctx.b` (a Builder on the same
graph) and returns one gradient per input (`None`: no gradient flows to that input). `ctx.wants(i)`
says whether input i needs a gradient at all, so a rule never builds work nobody reads.

Conventions (those of Keras on the torch backend, which is what the training tests compare with):
subgradients at kinks are torch's (`relu'(0) = 0`, `clip` passes the bounds, `maximum` splits ties
evenly, `reduce_max` splits among equal maxima, `max_pool` sends to the first maximum); broadcast
operands get their gradient summed back to their own shape.

`NO_GRADIENT` marks ops whose outputs are piecewise constant or not floating point (comparisons,
argmax, one_hot, size, dropout_mask): gradient flow stops there. `unsupported(reason)` marks a rule
that exists but refuses, with a reason, in one configuration (second derivatives of max pooling).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import GraphError
from ..ir.builder import Builder
from ..ir.graph import Node, Value
from ..ir.types import FLOAT_DTYPES, Dim, Shape, TensorType
from . import training_ops  # noqa: F401  (the adjoint ops the rules emit)
from .elementwise import SELU_ALPHA, SELU_SCALE
from .registry import OPS

Grads = list[Value | None]


class GradientError(GraphError):
    """A graph cannot be differentiated (an op without a gradient rule, or a refused case)."""


class GradContext:
    """What a rule may use: a Builder on the graph, and which inputs need a gradient."""

    def __init__(self, b: Builder, wants: Sequence[bool]) -> None:
        self.b = b
        self._wants = list(wants)

    def wants(self, i: int) -> bool:
        return i < len(self._wants) and self._wants[i]

    def op(self, name: str, inputs: Sequence[Value], **attrs: Any) -> Value:
        return self.b.op(name, inputs, **attrs)

    def const(self, value: float, dtype: str) -> Value:
        return self.b.constant(np.array(value, dtype=dtype), dtype)


Rule = Callable[[GradContext, Node, list[Value | None]], Grads]


def NO_GRADIENT(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    """The op's outputs carry no gradient to its inputs."""
    return [None] * len(node.inputs)


def unsupported(reason: str) -> Rule:
    def rule(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
        raise GradientError(f"cannot differentiate op '{node.op}': {reason}", node.loc)

    rule.unsupported_reason = reason  # type: ignore[attr-defined]
    return rule


# Shape helpers -------------------------------------------------------------------------------
def sum_to(ctx: GradContext, g: Value, t: TensorType) -> Value:
    """Sum a broadcast gradient back to the shape `t` of the operand it flows to."""
    lead = g.type.rank - t.rank
    if lead > 0:
        g = ctx.op("reduce_sum", [g], axes=tuple(range(lead)))
    axes = tuple(i for i, d in enumerate(t.shape) if d == 1 and g.type.shape[i] != 1)
    if axes:
        g = ctx.op("reduce_sum", [g], axes=axes, keepdims=True)
    return g


def reshape_spec(src: Shape, dst: Shape) -> tuple[int, ...] | None:
    """A `reshape` spec taking a tensor of shape `src` to `dst`, or None when symbols forbid one."""
    spec: list[int] = []
    unknown = 0
    for i, d in enumerate(dst):
        if isinstance(d, int):
            spec.append(d if d != 0 else -1)
            unknown += d == 0
        elif i < len(src) and src[i] == d:
            spec.append(0)
        else:
            spec.append(-1)
            unknown += 1
    return tuple(spec) if unknown <= 1 else None


def keep_dims(ctx: GradContext, g: Value, x: TensorType, axes: Sequence[int], keepdims: bool) -> Value:
    """A reduction's output gradient with the reduced axes restored as size 1."""
    if keepdims:
        return g
    reduced = {a % x.rank for a in axes}
    target: Shape = tuple(1 if i in reduced else d for i, d in enumerate(x.shape))
    spec = reshape_spec(g.type.shape, target)
    if spec is None:
        raise GradientError(f"cannot restore the reduced axes {tuple(axes)} of {x}: too many unknown dimensions")
    return ctx.op("reshape", [g], shape=spec)


def _is_float(v: Value) -> bool:
    return v.type.dtype in FLOAT_DTYPES


def _mask(ctx: GradContext, x: Value, mode: str, bound: float | Value) -> Value:
    other = bound if isinstance(bound, Value) else ctx.const(bound, x.type.dtype)
    return ctx.op("cast", [ctx.op("compare", [x, other], mode=mode)], to=x.type.dtype)


def _phase_constant(v: Value) -> bool | None:
    """The learning phase's value when it is a folded constant, else None (dynamic)."""
    node = v.producer
    if node is not None and node.op == "constant":
        return bool(node.attrs["value"])
    return None


# Registration --------------------------------------------------------------------------------
RULES: dict[str, Rule] = {}


def rule(*names: str) -> Callable[[Rule], Rule]:
    def wrap(fn: Rule) -> Rule:
        for name in names:
            RULES[name] = fn
        return fn

    return wrap


def unary_rule(name: str, fn: Callable[[GradContext, Value, Value, Value, dict[str, Any]], Value]) -> None:
    """A rule for y = f(x): `fn(ctx, x, y, dy, attrs) -> dx`."""

    def r(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
        dy = douts[0]
        assert dy is not None
        return [fn(ctx, node.inputs[0], node.outputs[0], dy, node.attrs)]

    RULES[name] = r


def _mul(ctx: GradContext, *vs: Value) -> Value:
    out = vs[0]
    for v in vs[1:]:
        out = ctx.op("mul", [out, v])
    return out


# Elementwise unary ---------------------------------------------------------------------------
unary_rule("identity", lambda c, x, y, dy, a: dy)
unary_rule("neg", lambda c, x, y, dy, a: c.op("neg", [dy]))
unary_rule(
    "abs", lambda c, x, y, dy, a: _mul(c, dy, c.op("sub", [_mask(c, x, "greater", 0.0), _mask(c, x, "less", 0.0)]))
)
unary_rule(
    "relu",
    lambda c, x, y, dy, a: c.op(
        "where", [c.op("compare", [x, c.const(0, x.type.dtype)], mode="greater"), dy, c.const(0, dy.type.dtype)]
    ),
)
unary_rule("sigmoid", lambda c, x, y, dy, a: _mul(c, dy, y, c.op("sub", [c.const(1, y.type.dtype), y])))
unary_rule(
    "tanh", lambda c, x, y, dy, a: c.op("mul", [dy, c.op("sub", [c.const(1, y.type.dtype), c.op("mul", [y, y])])])
)
unary_rule("exp", lambda c, x, y, dy, a: c.op("mul", [dy, y]))
unary_rule("log", lambda c, x, y, dy, a: c.op("div", [dy, x]))
unary_rule("sqrt", lambda c, x, y, dy, a: c.op("div", [dy, c.op("mul", [y, c.const(2, y.type.dtype)])]))
unary_rule(
    "erf",
    lambda c, x, y, dy, a: _mul(
        c, dy, c.const(2 / math.sqrt(math.pi), x.type.dtype), c.op("exp", [c.op("neg", [c.op("mul", [x, x])])])
    ),
)
unary_rule("softplus", lambda c, x, y, dy, a: c.op("mul", [dy, c.op("sigmoid", [x])]))


def _softsign(c: GradContext, x: Value, y: Value, dy: Value, a: dict[str, Any]) -> Value:
    d = c.op("add", [c.const(1, x.type.dtype), c.op("abs", [x])])
    return c.op("div", [dy, c.op("mul", [d, d])])


unary_rule("softsign", _softsign)


def _positive_branch(c: GradContext, x: Value, dy: Value, pos: Value, neg: Value) -> Value:
    return c.op("where", [c.op("compare", [x, c.const(0, x.type.dtype)], mode="greater"), pos, neg])


unary_rule(
    "elu",
    lambda c, x, y, dy, a: _positive_branch(
        c, x, dy, dy, c.op("mul", [dy, c.op("add", [y, c.const(a["alpha"], y.type.dtype)])])
    ),
)
unary_rule(
    "selu",
    lambda c, x, y, dy, a: _positive_branch(
        c,
        x,
        dy,
        c.op("mul", [dy, c.const(SELU_SCALE, dy.type.dtype)]),
        c.op("mul", [dy, c.op("add", [y, c.const(SELU_SCALE * SELU_ALPHA, y.type.dtype)])]),
    ),
)
unary_rule(
    "leaky_relu",
    lambda c, x, y, dy, a: _positive_branch(c, x, dy, dy, c.op("mul", [dy, c.const(a["alpha"], dy.type.dtype)])),
)
unary_rule(
    "hard_sigmoid",
    lambda c, x, y, dy, a: _mul(
        c, dy, _mask(c, x, "greater", -3.0), _mask(c, x, "less", 3.0), c.const(1 / 6, dy.type.dtype)
    ),
)
unary_rule(
    "clip",
    lambda c, x, y, dy, a: _mul(c, dy, _mask(c, x, "greater_equal", a["lo"]), _mask(c, x, "less_equal", a["hi"])),
)


def _gelu(c: GradContext, x: Value, y: Value, dy: Value, a: dict[str, Any]) -> Value:
    dt = x.type.dtype
    if not a["approximate"]:
        cdf = _mul(
            c,
            c.op("add", [c.const(1, dt), c.op("erf", [c.op("mul", [x, c.const(1 / math.sqrt(2), dt)])])]),
            c.const(0.5, dt),
        )
        pdf = _mul(c, c.op("exp", [_mul(c, x, x, c.const(-0.5, dt))]), c.const(1 / math.sqrt(2 * math.pi), dt))
        return c.op("mul", [dy, c.op("add", [cdf, c.op("mul", [x, pdf])])])
    k = math.sqrt(2 / math.pi)
    x2 = c.op("mul", [x, x])
    inner = _mul(c, c.const(k, dt), c.op("add", [x, _mul(c, c.const(0.044715, dt), x2, x)]))
    t = c.op("tanh", [inner])
    one = c.const(1, dt)
    left = _mul(c, c.const(0.5, dt), c.op("add", [one, t]))
    dinner = _mul(c, c.const(k, dt), c.op("add", [one, _mul(c, c.const(3 * 0.044715, dt), x2)]))
    right = _mul(c, c.const(0.5, dt), x, c.op("sub", [one, c.op("mul", [t, t])]), dinner)
    return c.op("mul", [dy, c.op("add", [left, right])])


unary_rule("gelu", _gelu)


@rule("cast")
def _cast(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    x, dy = node.inputs[0], douts[0]
    if dy is None or not _is_float(x) or not _is_float(node.outputs[0]):
        return [None]
    return [ctx.op("cast", [dy], to=x.type.dtype)]


# Binary --------------------------------------------------------------------------------------
def _binary(fn: Callable[[GradContext, Value, Value, Value, Value, int], Value | None]) -> Rule:
    """A rule for y = f(a, b): `fn(ctx, a, b, y, dy, i)` gives the broadcast gradient of input i."""

    def r(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
        a, b = node.inputs
        dy = douts[0]
        assert dy is not None
        out: Grads = []
        for i, operand in enumerate((a, b)):
            g = fn(ctx, a, b, node.outputs[0], dy, i) if ctx.wants(i) else None
            out.append(sum_to(ctx, g, operand.type) if g is not None else None)
        return out

    return r


RULES["add"] = _binary(lambda c, a, b, y, dy, i: dy)
RULES["sub"] = _binary(lambda c, a, b, y, dy, i: dy if i == 0 else c.op("neg", [dy]))
RULES["mul"] = _binary(lambda c, a, b, y, dy, i: c.op("mul", [dy, b if i == 0 else a]))
RULES["div"] = _binary(
    lambda c, a, b, y, dy, i: c.op("div", [dy, b]) if i == 0 else c.op("neg", [c.op("div", [c.op("mul", [dy, y]), b])])
)


def _pow(c: GradContext, a: Value, b: Value, y: Value, dy: Value, i: int) -> Value:
    dt = a.type.dtype
    if i == 0:
        return _mul(c, dy, b, c.op("pow", [a, c.op("sub", [b, c.const(1, dt)])]))
    # d/db a^b = a^b log(a); torch takes it as 0 where a == 0.
    at_zero = c.op("compare", [a, c.const(0, dt)], mode="equal")
    return c.op("where", [at_zero, c.const(0, dt), _mul(c, dy, y, c.op("log", [a]))])


RULES["pow"] = _binary(_pow)


def _extremum(mode: str) -> Rule:
    # torch: the larger (smaller) operand takes the gradient, ties split it evenly.
    def fn(c: GradContext, a: Value, b: Value, y: Value, dy: Value, i: int) -> Value:
        dt = a.type.dtype
        share = c.op("add", [_mask(c, a, mode, b), _mul(c, _mask(c, a, "equal", b), c.const(0.5, dt))])
        if i == 1:
            share = c.op("sub", [c.const(1, dt), share])
        return c.op("mul", [dy, share])

    return _binary(fn)


RULES["maximum"] = _extremum("greater")
RULES["minimum"] = _extremum("less")


@rule("where")
def _where(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    cond, a, b = node.inputs
    dy = douts[0]
    assert dy is not None
    zero = ctx.const(0, dy.type.dtype)
    da = sum_to(ctx, ctx.op("where", [cond, dy, zero]), a.type) if ctx.wants(1) else None
    db = sum_to(ctx, ctx.op("where", [cond, zero, dy]), b.type) if ctx.wants(2) else None
    return [None, da, db]


# Structural ----------------------------------------------------------------------------------
@rule("transpose")
def _transpose(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    perm = node.attrs["perm"]
    inverse = tuple(int(i) for i in np.argsort(perm))
    assert douts[0] is not None
    return [ctx.op("transpose", [douts[0]], perm=inverse)]


@rule("reshape")
def _reshape(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    x, dy = node.inputs[0], douts[0]
    assert dy is not None
    spec = reshape_spec(dy.type.shape, x.type.shape)
    if spec is not None:
        return [ctx.op("reshape", [dy], shape=spec)]
    return [ctx.op("reshape_like", [dy, x])]


@rule("concat")
def _concat(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    dy = douts[0]
    assert dy is not None
    axis = node.attrs["axis"] % dy.type.rank
    out: Grads = []
    start = 0
    for i, x in enumerate(node.inputs):
        n = x.type.shape[axis]
        if not isinstance(n, int):
            raise GradientError(f"concat gradient needs static sizes along axis {axis}, got {x.type}", node.loc)
        out.append(ctx.op("slice", [dy], axes=(axis,), starts=(start,), ends=(start + n,)) if ctx.wants(i) else None)
        start += n
    return out


@rule("gather")
def _gather(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    data, idx = node.inputs
    assert douts[0] is not None
    return [ctx.op("gather_grad", [douts[0], idx, data], axis=node.attrs["axis"]), None]


RULES["constant"] = NO_GRADIENT
RULES["learning_phase"] = NO_GRADIENT


# Neural-network ops --------------------------------------------------------------------------
def _swap_last(ctx: GradContext, v: Value) -> Value:
    r = v.type.rank
    return ctx.op("transpose", [v], perm=(*range(r - 2), r - 1, r - 2))


@rule("matmul")
def _matmul(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    a, b = node.inputs
    dy = douts[0]
    assert dy is not None
    da = sum_to(ctx, ctx.op("matmul", [dy, _swap_last(ctx, b)]), a.type) if ctx.wants(0) else None
    db = sum_to(ctx, ctx.op("matmul", [_swap_last(ctx, a), dy]), b.type) if ctx.wants(1) else None
    return [da, db]


@rule("gemm")
def _gemm(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    a, b, c = node.inputs
    dy = douts[0]
    assert dy is not None
    da = ctx.op("matmul", [dy, _swap_last(ctx, b)]) if ctx.wants(0) else None
    db = ctx.op("matmul", [_swap_last(ctx, a), dy]) if ctx.wants(1) else None
    return [da, db, sum_to(ctx, dy, c.type) if ctx.wants(2) else None]


@rule("conv")
def _conv(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    x, w = node.inputs[:2]
    dy = douts[0]
    assert dy is not None
    attrs = node.attrs
    out: Grads = [
        ctx.op("conv_grad_input", [dy, w, x], **attrs) if ctx.wants(0) else None,
        ctx.op("conv_grad_weight", [x, dy, w], **attrs) if ctx.wants(1) else None,
    ]
    if len(node.inputs) == 3:
        axes = (0, *range(2, dy.type.rank))
        out.append(ctx.op("reduce_sum", [dy], axes=axes) if ctx.wants(2) else None)
    return out


@rule("conv_transpose")
def _conv_transpose(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    # y = conv_transpose(x, w) is the adjoint of z = conv(., w) with the same window attributes:
    # dx = conv(dy, w), and dw = conv_grad_weight(dy, x, w) (<conv_transpose(x, w), dy> = <x, conv(dy, w)>).
    x, w = node.inputs[:2]
    dy = douts[0]
    assert dy is not None
    a = node.attrs
    attrs = {"strides": a["strides"], "pads": a["pads"], "dilations": a["dilations"], "group": a["group"]}
    out: Grads = [
        ctx.op("conv", [dy, w], auto_pad="NOTSET", **attrs) if ctx.wants(0) else None,
        ctx.op("conv_grad_weight", [dy, x, w], auto_pad="NOTSET", **attrs) if ctx.wants(1) else None,
    ]
    if len(node.inputs) == 3:
        axes = (0, *range(2, dy.type.rank))
        out.append(ctx.op("reduce_sum", [dy], axes=axes) if ctx.wants(2) else None)
    return out


@rule("max_pool")
def _max_pool(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    assert douts[0] is not None
    return [ctx.op("max_pool_grad", [node.inputs[0], douts[0]], **node.attrs)]


@rule("avg_pool")
def _avg_pool(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    assert douts[0] is not None
    return [ctx.op("avg_pool_grad", [douts[0], node.inputs[0]], **node.attrs)]


@rule("softmax")
def _softmax(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    y, dy = node.outputs[0], douts[0]
    assert dy is not None
    s = ctx.op("reduce_sum", [ctx.op("mul", [dy, y])], axes=(node.attrs["axis"],), keepdims=True)
    return [ctx.op("mul", [y, ctx.op("sub", [dy, s])])]


@rule("log_softmax")
def _log_softmax(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    y, dy = node.outputs[0], douts[0]
    assert dy is not None
    s = ctx.op("reduce_sum", [dy], axes=(node.attrs["axis"],), keepdims=True)
    return [ctx.op("sub", [dy, ctx.op("mul", [ctx.op("exp", [y]), s])])]


def _count(ctx: GradContext, x: Value, axes: Sequence[int]) -> Value:
    dims = [x.type.shape[a % x.type.rank] for a in axes]
    if all(isinstance(d, int) for d in dims):
        return ctx.const(float(np.prod(dims)), x.type.dtype)  # type: ignore[arg-type]
    return ctx.op("size", [x], axes=tuple(a % x.type.rank for a in axes), dtype=x.type.dtype)


@rule("reduce_sum", "reduce_mean")
def _reduce_sum(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    x, dy = node.inputs[0], douts[0]
    assert dy is not None
    g = keep_dims(ctx, dy, x.type, node.attrs["axes"], node.attrs["keepdims"])
    if node.op == "reduce_mean":
        g = ctx.op("div", [g, _count(ctx, x, node.attrs["axes"])])
    return [ctx.op("expand_like", [g, x])]


@rule("reduce_max")
def _reduce_max(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    x, y, dy = node.inputs[0], node.outputs[0], douts[0]
    assert dy is not None
    axes, keep = node.attrs["axes"], node.attrs["keepdims"]
    hit = _mask(ctx, x, "equal", keep_dims(ctx, y, x.type, axes, keep))
    ties = ctx.op("reduce_sum", [hit], axes=axes, keepdims=True)
    return [ctx.op("mul", [hit, ctx.op("div", [keep_dims(ctx, dy, x.type, axes, keep), ties])])]


@rule("dropout")
def _dropout(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    phase = _phase_constant(node.inputs[1])
    if phase is False or node.attrs["rate"] == 0.0:
        return [douts[0], None]
    raise GradientError(
        "cannot differentiate 'dropout' in training mode: its random mask is not recoverable; "
        "decompose it first (DecomposeForTrainingPass rewrites it to x * dropout_mask(x))",
        node.loc,
    )


@rule("batch_norm")
def _batch_norm(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    x, gamma, _beta, mm, mv = node.inputs[:5]
    dy = douts[0]
    assert dy is not None
    rank = x.type.rank
    axis = node.attrs["axis"] % rank
    eps = node.attrs["epsilon"]
    dt = x.type.dtype
    others = tuple(i for i in range(rank) if i != axis)
    bshape = (-1,) + (1,) * (rank - 1 - axis)

    def along(v: Value) -> Value:
        return v if axis == rank - 1 else ctx.op("reshape", [v], shape=bshape)

    def total(v: Value) -> Value:
        return ctx.op("reduce_sum", [v], axes=others)

    def mean_keep(v: Value) -> Value:
        return ctx.op("reduce_mean", [v], axes=others, keepdims=True)

    def inference() -> Grads:
        inv = ctx.op("div", [ctx.const(1, dt), ctx.op("sqrt", [ctx.op("add", [mv, ctx.const(eps, dt)])])])
        centered = ctx.op("sub", [x, along(mm)])
        dxhat = ctx.op("mul", [dy, along(gamma)])
        dx = ctx.op("mul", [dxhat, along(inv)]) if ctx.wants(0) else None
        dg = total(_mul(ctx, dy, centered, along(inv))) if ctx.wants(1) else None
        dmm = ctx.op("neg", [ctx.op("mul", [total(dxhat), inv])]) if ctx.wants(3) else None
        dmv = None
        if ctx.wants(4):
            inv3 = _mul(ctx, inv, inv, inv, ctx.const(-0.5, dt))
            dmv = ctx.op("mul", [total(ctx.op("mul", [dxhat, centered])), inv3])
        return [dx, dg, total(dy) if ctx.wants(2) else None, dmm, dmv]

    def training() -> Grads:
        mean = mean_keep(x)
        centered = ctx.op("sub", [x, mean])
        var = mean_keep(ctx.op("mul", [centered, centered]))
        inv = ctx.op("div", [ctx.const(1, dt), ctx.op("sqrt", [ctx.op("add", [var, ctx.const(eps, dt)])])])
        xhat = ctx.op("mul", [centered, inv])
        dxhat = ctx.op("mul", [dy, along(gamma)])
        dx = None
        if ctx.wants(0):
            inner = ctx.op("sub", [dxhat, mean_keep(dxhat)])
            inner = ctx.op("sub", [inner, ctx.op("mul", [xhat, mean_keep(ctx.op("mul", [dxhat, xhat]))])])
            dx = ctx.op("mul", [inv, inner])
        dg = total(ctx.op("mul", [dy, xhat])) if ctx.wants(1) else None
        return [dx, dg, total(dy) if ctx.wants(2) else None, None, None]

    if len(node.inputs) == 5:
        return inference()
    phase = _phase_constant(node.inputs[5])
    if phase is not None:
        return [*(training() if phase else inference()), None]
    # A dynamic phase: both gradients, selected by the phase at run time.
    picked: Grads = []
    for g_train, g_inf in zip(training(), inference(), strict=True):
        if g_train is None and g_inf is None:
            picked.append(None)
            continue
        zero = ctx.const(0, dt)
        pair = [g_train if g_train is not None else zero, g_inf if g_inf is not None else zero]
        picked.append(ctx.op("where", [node.inputs[5], *pair]))
    return [*picked, None]


@rule("layer_norm")
def _layer_norm(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    # xhat = (x - mean) * inv over the normalised axes N = axis..rank-1, y = xhat * scale + bias:
    # dx = inv * (g - mean_N(g) - xhat * mean_N(g * xhat)) with g = dy * scale;
    # dscale = sum over the leading axes of dy * xhat, dbias = sum over the leading axes of dy.
    x, scale = node.inputs[0], node.inputs[1]
    dy = douts[0]
    assert dy is not None
    rank = x.type.rank
    axis = node.attrs["axis"] % rank
    norm_axes = tuple(range(axis, rank))
    dt = x.type.dtype

    def mean_keep(v: Value) -> Value:
        return ctx.op("reduce_mean", [v], axes=norm_axes, keepdims=True)

    def leading_sum(v: Value) -> Value:
        return ctx.op("reduce_sum", [v], axes=tuple(range(axis))) if axis else v

    centered = ctx.op("sub", [x, mean_keep(x)])
    var = mean_keep(ctx.op("mul", [centered, centered]))
    eps = ctx.const(node.attrs["epsilon"], dt)
    inv = ctx.op("div", [ctx.const(1, dt), ctx.op("sqrt", [ctx.op("add", [var, eps])])])
    xhat = ctx.op("mul", [centered, inv])
    dx = None
    if ctx.wants(0):
        g = ctx.op("mul", [dy, scale])
        inner = ctx.op("sub", [g, mean_keep(g)])
        inner = ctx.op("sub", [inner, ctx.op("mul", [xhat, mean_keep(ctx.op("mul", [g, xhat]))])])
        dx = ctx.op("mul", [inv, inner])
    dscale = leading_sum(ctx.op("mul", [dy, xhat])) if ctx.wants(1) else None
    grads: Grads = [dx, dscale]
    if len(node.inputs) == 3:
        grads.append(leading_sum(dy) if ctx.wants(2) else None)
    return grads


# The adjoint ops (training_ops) ---------------------------------------------------------------
for _name in ("size", "compare", "argmax", "one_hot", "dropout_mask"):
    RULES[_name] = NO_GRADIENT


# The noise ops (noise.py) ---------------------------------------------------------------------
RULES["random_normal"] = NO_GRADIENT


@rule("phase_select")
def _phase_select(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    # A phase still dynamic: the gradient goes to the branch the phase selects.
    phase = node.inputs[2]
    dy = douts[0]
    assert dy is not None
    zero = ctx.const(0, dy.type.dtype)
    return [
        ctx.op("where", [phase, dy, zero]) if ctx.wants(0) else None,
        ctx.op("where", [phase, zero, dy]) if ctx.wants(1) else None,
        None,
    ]


@rule("expand_like")
def _expand_like(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    assert douts[0] is not None
    return [sum_to(ctx, douts[0], node.inputs[0].type), None]


@rule("reshape_like")
def _reshape_like(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    assert douts[0] is not None
    return [ctx.op("reshape_like", [douts[0], node.inputs[0]]), None]


@rule("unflatten_like")
def _unflatten_like(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    assert douts[0] is not None
    return [ctx.op("reshape_like", [douts[0], node.inputs[0]]), None]


@rule("slice")
def _slice(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    x, dy = node.inputs[0], douts[0]
    assert dy is not None
    r = x.type.rank
    pads = [0] * (2 * r)
    for ax, s, t in zip(node.attrs["axes"], node.attrs["starts"], node.attrs["ends"], strict=True):
        ax %= r
        n = x.type.shape[ax]
        assert isinstance(n, int)
        pads[ax], pads[r + ax] = s, n - t
    return [ctx.op("pad", [dy], pads=tuple(pads))]


@rule("pad")
def _pad(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    x, dy = node.inputs[0], douts[0]
    assert dy is not None
    r = x.type.rank
    pads = node.attrs["pads"]
    axes = [i for i in range(r) if pads[i] or pads[r + i]]
    if not axes:
        return [dy]
    sizes: list[Dim] = [x.type.shape[i] for i in axes]
    if not all(isinstance(n, int) for n in sizes):
        raise GradientError(f"pad gradient needs static sizes on the padded axes, got {x.type}", node.loc)
    starts = tuple(pads[i] for i in axes)
    ends = tuple(pads[i] + int(n) for i, n in zip(axes, sizes, strict=True))
    return [ctx.op("slice", [dy], axes=tuple(axes), starts=starts, ends=ends)]


@rule("gather_grad")
def _gather_grad(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    assert douts[0] is not None
    return [ctx.op("gather", [douts[0], node.inputs[1]], axis=node.attrs["axis"]), None, None]


@rule("conv_grad_input")
def _conv_grad_input(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    dy, w, _ = node.inputs
    dz = douts[0]
    assert dz is not None
    return [
        ctx.op("conv", [dz, w], **node.attrs) if ctx.wants(0) else None,
        ctx.op("conv_grad_weight", [dz, dy, w], **node.attrs) if ctx.wants(1) else None,
        None,
    ]


@rule("conv_grad_weight")
def _conv_grad_weight(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    x, dy, _ = node.inputs
    dz = douts[0]
    assert dz is not None
    return [
        ctx.op("conv_grad_input", [dy, dz, x], **node.attrs) if ctx.wants(0) else None,
        ctx.op("conv", [x, dz], **node.attrs) if ctx.wants(1) else None,
        None,
    ]


@rule("avg_pool_grad")
def _avg_pool_grad(ctx: GradContext, node: Node, douts: list[Value | None]) -> Grads:
    assert douts[0] is not None
    return [ctx.op("avg_pool", [douts[0]], **node.attrs), None]


RULES["max_pool_grad"] = unsupported("second derivatives through max pooling are not implemented")


def register_gradients() -> None:
    """Attach every rule above to its registry entry (idempotent)."""
    for name, fn in RULES.items():
        if name in OPS:
            OPS[name].grad = fn


register_gradients()
