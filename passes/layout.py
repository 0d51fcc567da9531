"""LayoutPass: Keras layers are channels-last; convolution and pooling ops are channels-first, so
the layers wrap them in transposes. These rules move transposes towards the outputs, across ops
that do not care about layout, until pairs meet and cancel (`simplify`'s merge-transposes):

    u(transpose(x, p))                         -> transpose(u(x), p)        u elementwise unary
    f(transpose(x, p), c)                      -> transpose(f(x, c'), p)    c constant, c' = c laid out for x
    f(transpose(x, p), transpose(y, p))        -> transpose(f(x, y), p)     f elementwise binary
    batch_norm(transpose(x, p), ..., axis=a)   -> transpose(batch_norm(x, ..., axis=p[a]), p)
    softmax(transpose(x, p), axis=a)           -> transpose(softmax(x, axis=p[a]), p)
    reduce(transpose(x, p), axes)              -> reduce(x, p[axes]) (+ a transpose if the kept axes move)
    concat(transpose(x_i, p)..., axis=a)       -> transpose(concat(x_i..., axis=p[a]), p)
    pad(transpose(x, p), pads)                 -> transpose(pad(x, pads laid out for x), p)
    matmul(flatten(transpose(x, p)), W)        -> matmul(flatten(x), W')    W' = W's rows in x's order

A conv net ends with one transpose at its input (none with `--input-layout NCHW`) and none
inside; a Flatten + Dense head absorbs the last one into the Dense kernel. Once no pair is left,
BOUNDARY removes what remains at the input where it can:

    transpose(x, p), p moving only unit axes   -> reshape(x)            (the same bytes)
    conv(transpose(x, to channels-first), w)   -> conv(reshape(x, [N, 1, ..., W*C]), w')   C <= 4

The second reads a channels-last image as one channel whose rows hold each pixel's C values side
by side: the kernel w'[o, 0, .., kw*C + c] = w[o, c, .., kw] with the last stride and padding
scaled by C computes the same sums. A network's first convolution (RGB) then needs no transpose.

`TrainingLayoutPass` runs the same rules on a forward graph about to be differentiated, where
weights are values (TRAINING_LAYOUT adds: a bias or batch statistic follows the transpose as a
reshape); the Flatten keeps its transpose there, since the Dense kernel cannot absorb it.
"""

from __future__ import annotations

import numpy as np

from kcompile.ir.builder import Builder
from kcompile.ir.graph import Graph, Node, Value
from kcompile.ir.types import normalize_axis
from kcompile.ops.registry import OPS

from .base import Pass, PassResult
from .rewrite import Constants, Match, P, Rule, RuleSet, V, apply_rules, new_const
from .simplify import SIMPLIFY


def inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _unary_ops() -> tuple[str, ...]:
    return tuple(n for n, op in OPS.items() if op.elementwise and op.arity() == (1, 1))


def _binary_ops() -> tuple[str, ...]:
    return tuple(n for n, op in OPS.items() if op.elementwise and op.arity() == (2, 2))


def _push_unary(m: Match, b: Builder) -> Value:
    y = b.op(m.root.op, [m["x"]], **m.root.attrs)
    return b.op("transpose", [y], perm=m.node("t").attrs["perm"])


def _const_for_layout(c: np.ndarray, rank: int, perm: tuple[int, ...]) -> np.ndarray:
    """The constant that, broadcast against x, equals c broadcast against transpose(x, perm)."""
    full = c.reshape((1,) * (rank - c.ndim) + c.shape)
    return np.transpose(full, inverse(perm))


def _const_side_check(m: Match) -> str | None:
    if m.const("c") is None:
        return "the other operand is not a constant"
    if m["c"].type.rank > m["x"].type.rank:
        return "the constant has a higher rank than the transposed operand"
    return None


def _push_binary_const(left: bool):  # type: ignore[no-untyped-def]
    def replace(m: Match, b: Builder) -> Value:
        perm = m.node("t").attrs["perm"]
        c = m.const("c")
        assert c is not None
        c2 = new_const(b, _const_for_layout(c, len(perm), perm), m["c"])
        ins = [m["x"], c2] if left else [c2, m["x"]]
        return b.op("transpose", [b.op(m.root.op, ins, **m.root.attrs)], perm=perm)

    return replace


def _push_binary_both(m: Match, b: Builder) -> Value:
    y = b.op(m.root.op, [m["x"], m["y"]], **m.root.attrs)
    return b.op("transpose", [y], perm=m.node("t").attrs["perm"])


def _same_perm(m: Match) -> str | None:
    if m.node("t").attrs["perm"] != m.node("u").attrs["perm"]:
        return "the two transposes differ"
    return None


def _push_axis_op(m: Match, b: Builder) -> Value:
    perm = m.node("t").attrs["perm"]
    attrs = dict(m.root.attrs)
    attrs["axis"] = perm[normalize_axis(attrs["axis"], len(perm))]
    ins = [m["x"], *m.root.inputs[1:]]
    return b.op("transpose", [b.op(m.root.op, ins, **attrs)], perm=perm)


def _push_reduce(m: Match, b: Builder) -> Value:
    perm = m.node("t").attrs["perm"]
    rank = len(perm)
    axes = sorted(normalize_axis(a, rank) for a in m.root.attrs["axes"])
    keep = m.root.attrs["keepdims"]
    y = b.op(m.root.op, [m["x"]], axes=tuple(sorted(perm[a] for a in axes)), keepdims=keep)
    if keep:
        return b.op("transpose", [y], perm=perm)
    # Kept axes, in the transposed order, as positions among x's kept axes.
    kept_x = [i for i in range(rank) if i not in {perm[a] for a in axes}]
    order = tuple(kept_x.index(perm[i]) for i in range(rank) if i not in axes)
    return y if order == tuple(range(len(order))) else b.op("transpose", [y], perm=order)


def _push_pad(m: Match, b: Builder) -> Value:
    perm = m.node("t").attrs["perm"]
    r = len(perm)
    pads = m.root.attrs["pads"]
    begins, ends = [0] * r, [0] * r
    for i, axis in enumerate(perm):
        begins[axis], ends[axis] = pads[i], pads[r + i]
    y = b.op("pad", [m["x"]], pads=(*begins, *ends), value=m.root.attrs["value"])
    return b.op("transpose", [y], perm=perm)


def _concat_check(m: Match) -> str | None:
    perms = set()
    for v in m.root.inputs:
        if v.producer is None or v.producer.op != "transpose":
            return "not every input is transposed"
        perms.add(v.producer.attrs["perm"])
    return None if len(perms) == 1 else "the inputs are transposed differently"


def _push_concat(m: Match, b: Builder) -> Value:
    producers: list[Node] = [v.producer for v in m.root.inputs]  # type: ignore[misc]
    perm = producers[0].attrs["perm"]
    axis = perm[normalize_axis(m.root.attrs["axis"], len(perm))]
    y = b.op("concat", [p.inputs[0] for p in producers], axis=axis)
    return b.op("transpose", [y], perm=perm)


def _flatten_check(m: Match) -> str | None:
    if m.const("w") is None:
        return "the Dense kernel is not a constant"
    if m.node("flat").attrs["shape"] != (0, -1):
        return "the reshape is not a flatten"
    if not all(isinstance(d, int) for d in m["x"].type.shape[1:]):
        return "the flattened dims are not static"
    if m.node("t").attrs["perm"][0] != 0:
        return "the transpose moves the batch axis"
    return None


def _absorb_flatten(m: Match, b: Builder) -> Value:
    """Rows of W index transpose(x)'s flattened positions; re-index them by x's positions."""
    perm = m.node("t").attrs["perm"]
    w = m.const("w")
    assert w is not None
    dims = [int(d) for d in m["x"].type.shape[1:]]  # x's non-batch dims
    inner = tuple(p - 1 for p in perm[1:])
    rows = np.arange(int(np.prod(dims))).reshape(dims)  # x position -> flat index in x order
    order = np.transpose(rows, inner).reshape(-1)  # flat index in transposed order -> x flat index
    w2 = np.empty_like(w)
    w2[order] = w
    flat = b.op("reshape", [m["x"]], shape=(0, -1))
    return b.op(m.root.op, [flat, new_const(b, w2, m["w"])], **m.root.attrs)


T = "transpose"

LAYOUT = RuleSet(
    "layout",
    [
        Rule("push-transpose-unary", P(_unary_ops(), P(T, V("x"), name="t")), _push_unary, allow_shared=True),
        Rule(
            "push-transpose-binary-const-right",
            P(_binary_ops(), P(T, V("x"), name="t"), V("c")),
            _push_binary_const(left=True),
            check=_const_side_check,
            allow_shared=True,
        ),
        Rule(
            "push-transpose-binary-const-left",
            P(_binary_ops(), V("c"), P(T, V("x"), name="t")),
            _push_binary_const(left=False),
            check=_const_side_check,
            allow_shared=True,
        ),
        Rule(
            "push-transpose-binary-both",
            P(_binary_ops(), P(T, V("x"), name="t"), P(T, V("y"), name="u")),
            _push_binary_both,
            check=_same_perm,
            allow_shared=True,
        ),
        Rule(
            "push-transpose-batch-norm",
            P("batch_norm", any_inputs=True),
            _push_axis_op,
            check=lambda m: _first_input_transposed(m),
            allow_shared=True,
        ),
        Rule(
            "push-transpose-softmax",
            P("softmax", P(T, V("x"), name="t")),
            _push_axis_op,
            allow_shared=True,
        ),
        Rule(
            "push-transpose-reduce",
            P(("reduce_mean", "reduce_sum", "reduce_max"), P(T, V("x"), name="t")),
            _push_reduce,
            allow_shared=True,
        ),
        Rule("push-transpose-pad", P("pad", P(T, V("x"), name="t")), _push_pad, allow_shared=True),
        Rule("push-transpose-concat", P("concat", any_inputs=True), _push_concat, check=_concat_check),
        Rule(
            "absorb-flatten-transpose",
            P("matmul", P("reshape", P(T, V("x"), name="t"), name="flat"), V("w")),
            _absorb_flatten,
            check=_flatten_check,
        ),
    ],
)


def _first_input_transposed(m: Match) -> str | None:
    x = m.root.inputs[0]
    if x.producer is None or x.producer.op != T:
        return "the input is not transposed"
    m.nodes["t"] = x.producer
    m.values["x"] = x.producer.inputs[0]
    return None


def _unit_moves_only(perm: tuple[int, ...], shape: tuple[object, ...]) -> bool:
    """transpose(x, perm) keeps the order of x's axes that are not 1, so it is a reshape."""
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved)


def _reshape_target(out: tuple[object, ...]) -> tuple[int, ...] | None:
    """Reshape attrs giving `out`: static dims as they are, at most one symbolic dim as -1."""
    symbolic = [i for i, d in enumerate(out) if not isinstance(d, int)]
    if len(symbolic) > 1:
        return None
    return tuple(-1 if i in symbolic else int(d) for i, d in enumerate(out))  # type: ignore[call-overload]


def _transpose_as_reshape_check(m: Match) -> str | None:
    x = m["x"]
    if not _unit_moves_only(m.root.attrs["perm"], x.type.shape):
        return "the permutation reorders axes that are not 1"
    if _reshape_target(m.root.outputs[0].type.shape) is None:
        return "more than one dimension is symbolic"
    return None


def _transpose_as_reshape(m: Match, b: Builder) -> Value:
    shape = _reshape_target(m.root.outputs[0].type.shape)
    assert shape is not None
    return b.op("reshape", [m["x"]], shape=shape)


_MAX_FOLDED_CHANNELS = 4  # more channels: onnxruntime's blocked conv reads them through a fused reorder


def _channels_into_conv_check(m: Match) -> str | None:
    reason = _first_input_transposed(m)
    if reason:
        return reason
    m.inner.append(m.node("t"))  # a near miss from here on: explained under --explain-rewrites
    x, perm, a = m["x"], m.node("t").attrs["perm"], m.root.attrs
    r = x.type.rank
    if perm != (0, r - 1, *range(1, r - 1)):
        return "the transpose is not channels-last to channels-first"
    m.values["w"] = m.root.inputs[1]
    if m.const("w") is None:
        return "the kernel is not a constant"
    dims = x.type.shape[1:]
    if not all(isinstance(d, int) for d in dims):
        return "the spatial sizes or the channels are not static"
    if a["group"] != 1:
        return "a grouped convolution"
    if (a["dilations"] or (1,))[-1] != 1:
        return "the last spatial axis is dilated"
    if int(dims[-1]) > _MAX_FOLDED_CHANNELS:  # type: ignore[arg-type]
        return f"{dims[-1]} channels (folding pays off up to {_MAX_FOLDED_CHANNELS})"
    return None


def _channels_into_conv(m: Match, b: Builder) -> Value:
    from kcompile.ops.nn import conv_pads

    x, a = m["x"], m.root.attrs
    w = m.const("w")
    assert w is not None
    *spatial, c = (int(d) for d in x.type.shape[1:])  # type: ignore[arg-type]
    nd = len(spatial)
    kernel = tuple(int(k) for k in w.shape[2:])
    pads = conv_pads(tuple(spatial), kernel, a)
    strides = list(a["strides"] or (1,) * nd)
    strides[-1] *= c
    begins = [pb for pb, _ in pads[:-1]] + [pads[-1][0] * c]
    ends = [pe for _, pe in pads[:-1]] + [pads[-1][1] * c]
    wide = np.moveaxis(w, 1, -1).reshape(w.shape[0], 1, *kernel[:-1], kernel[-1] * c)
    flat = b.op("reshape", [x], shape=(0, 1, *spatial[:-1], spatial[-1] * c))
    attrs = {**a, "strides": tuple(strides), "pads": (*begins, *ends), "auto_pad": "NOTSET"}
    return b.op("conv", [flat, new_const(b, np.ascontiguousarray(wide), m["w"]), *m.root.inputs[2:]], **attrs)


BOUNDARY = RuleSet(
    "boundary",
    [
        Rule(
            "fold-channels-into-conv",
            P("conv", any_inputs=True),
            _channels_into_conv,
            check=_channels_into_conv_check,
        ),
        Rule(
            "transpose-as-reshape",
            P(T, V("x")),
            _transpose_as_reshape,
            check=_transpose_as_reshape_check,
            allow_shared=True,
        ),
    ],
)


class LayoutPass(Pass):
    name = "layout"

    def __init__(self) -> None:
        self.consts = Constants(params=True)
        self.explanations: list[str] = []

    def run(self, graph: Graph) -> PassResult:
        # BOUNDARY only once the transposes that cancel have met: its reshapes no longer move.
        stats = apply_rules(graph, (LAYOUT, SIMPLIFY), self.consts).then(apply_rules(graph, (BOUNDARY,), self.consts))
        named = {r.name for r in (*LAYOUT.rules, *BOUNDARY.rules)}
        self.explanations = [str(e) for e in stats.explanations if e.rule in named]
        return PassResult(graph, stats.total > 0, dict(stats.applied))


# Training: weights are values that change every step, not constants. A broadcast operand that is
# not a constant (a bias, a batch statistic) still follows the transpose when laying it out for x
# is a reshape (its non-unit dims keep their order):
#     f(transpose(x, p), v) -> transpose(f(x, reshape(v, v's shape laid out for x)), p)
def _vector_layout(v: Value, perm: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape of v laid out for x (see `_const_for_layout`) when that is a reshape of v."""
    rank = len(perm)
    shape = v.type.shape
    if v.type.rank > rank or not all(isinstance(d, int) for d in shape):
        return None
    full = (1,) * (rank - v.type.rank) + tuple(int(d) for d in shape)  # type: ignore[arg-type]
    source = inverse(perm)  # laid[i] = full[source[i]]
    laid = tuple(full[i] for i in source)
    order = [source[i] for i in range(rank) if laid[i] != 1]
    return laid if order == sorted(order) else None


def _vector_side_check(m: Match) -> str | None:
    if m.const("c") is not None:
        return "the other operand is a constant (push-transpose-binary-const applies)"
    if _vector_layout(m["c"], m.node("t").attrs["perm"]) is None:
        return f"laying out {m['c'].type} for the transposed operand is not a reshape"
    return None


def _push_binary_vector(left: bool):  # type: ignore[no-untyped-def]
    def replace(m: Match, b: Builder) -> Value:
        perm = m.node("t").attrs["perm"]
        laid = _vector_layout(m["c"], perm)
        assert laid is not None
        c2 = b.op("reshape", [m["c"]], shape=laid)
        ins = [m["x"], c2] if left else [c2, m["x"]]
        return b.op("transpose", [b.op(m.root.op, ins, **m.root.attrs)], perm=perm)

    return replace


TRAINING_LAYOUT = RuleSet(
    "training-layout",
    [
        Rule(
            "push-transpose-binary-vector-right",
            P(_binary_ops(), P(T, V("x"), name="t"), V("c")),
            _push_binary_vector(left=True),
            check=_vector_side_check,
            allow_shared=True,
        ),
        Rule(
            "push-transpose-binary-vector-left",
            P(_binary_ops(), V("c"), P(T, V("x"), name="t")),
            _push_binary_vector(left=False),
            check=_vector_side_check,
            allow_shared=True,
        ),
    ],
)


class TrainingLayoutPass(Pass):
    """LAYOUT on a training graph: weights are not constants (they are state updated every step),
    and broadcast operands that are values follow the transposes (TRAINING_LAYOUT)."""

    name = "training-layout"

    def __init__(self) -> None:
        self.consts = Constants(params=False)

    def run(self, graph: Graph) -> PassResult:
        stats = apply_rules(graph, (LAYOUT, TRAINING_LAYOUT, SIMPLIFY), self.consts)
        stats = stats.then(apply_rules(graph, (BOUNDARY,), self.consts))  # kernels are values: reshapes only
        return PassResult(graph, stats.total > 0, dict(stats.applied))
