"""FusionPass: fold inference-time affine arithmetic into the weights of the op before it.

    batch_norm(x, g, b, mean, var)       -> x * s + t        s = g / sqrt(var + eps), t = b - mean * s
    sub(x, c), div(x, c)                 -> add(x, -c), mul(x, 1 / c)    c a constant (no zero divisor)
    mul(conv(x, w[, c]), s)              -> conv(x, w * s, c * s)        s per output channel
    add(conv(x, w[, c]), t)              -> conv(x, w, c + t)            t per output channel
    mul(matmul(x, W), s)                 -> matmul(x, W * s)             s per output column
    matmul(mul(x, s), W)                 -> matmul(x, s[:, None] * W)    s per input feature
    matmul(add(x, t), W)                 -> add(matmul(x, W), t @ W)     t per input feature
    gemm(mul(x, s), W, c)                -> gemm(x, s[:, None] * W, c)   s per input feature
    gemm(add(x, t), W, c)                -> gemm(x, W, c + t @ W)        t per input feature
    add(matmul(x, W), c)                 -> gemm(x, W, c)                x of rank 2
    add(gemm(x, W, c), t)                -> gemm(x, W, c + t)
    mul(gemm(x, W, c), s)                -> gemm(x, W * s, c * s)
    mul(conv_transpose(x, w[, c]), s)    -> conv_transpose(x, w * s, c * s)   s per output channel
    add(conv_transpose(x, w[, c]), t)    -> conv_transpose(x, w, c + t)       t per output channel
    conv(pad(x, zeros on spatial axes), w) -> conv(x, w) with the padding in its pads

Every constant must broadcast along the output-channel axis only (axis 1 for conv, the last
axis for matmul/gemm): anything else is not a per-channel affine map and is left alone.

`TrainingFusionPass` (TRAINING_FUSION) is for a forward graph about to be differentiated: a bias
that is a value goes into the conv, and ReLU moves after max pooling.
"""

from __future__ import annotations

import numpy as np

from kcompile.ir.builder import Builder
from kcompile.ir.graph import Graph, Value
from kcompile.ir.types import normalize_axis

from .base import Pass, PassResult
from .rewrite import Constants, Match, P, Rule, RuleSet, V, apply_rules, new_const
from .simplify import SIMPLIFY


def per_channel(c: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """c as a [channels] vector if, broadcast against a rank-`rank` tensor, it varies along
    `axis` only; None otherwise."""
    if c.ndim > rank:
        return None
    full = c.reshape((1,) * (rank - c.ndim) + c.shape)
    for i, d in enumerate(full.shape):
        if i != axis and d != 1:
            return None
    vec = full.reshape(-1)
    if vec.size == 1:
        return np.full(channels, vec[0], c.dtype)
    return vec if vec.size == channels else None


def _bn_check(m: Match) -> str | None:
    if len(m.root.inputs) != 5:
        return "the batch norm still depends on the learning phase"
    if any(m.consts is None or m.consts.value(v) is None for v in m.root.inputs[1:]):
        return "its statistics or scale are not constants"
    return None


def _bn_to_affine(m: Match, b: Builder) -> Value:
    x = m.root.inputs[0]
    assert m.consts is not None
    g, beta, mean, var = (m.consts.value(v) for v in m.root.inputs[1:])
    assert g is not None and beta is not None and mean is not None and var is not None
    eps = m.root.attrs["epsilon"]
    scale = (g / np.sqrt(var + np.asarray(eps, var.dtype))).astype(var.dtype)
    shift = (beta - mean * scale).astype(var.dtype)
    axis = normalize_axis(m.root.attrs["axis"], x.type.rank)
    shape = (-1,) + (1,) * (x.type.rank - 1 - axis)
    s = new_const(b, scale.reshape(shape), m.root.inputs[1])
    t = new_const(b, shift.reshape(shape), m.root.inputs[2])
    return b.op("add", [b.op("mul", [x, s]), t])


def _channels(m: Match) -> tuple[int, int, int]:
    """(rank, channel axis, channel count) of the producing op's output."""
    y = m.node("op").outputs[0]
    axis = 1 if m.node("op").op == "conv" else y.type.rank - 1
    c = y.type.shape[axis]
    return y.type.rank, axis, c if isinstance(c, int) else -1


def _affine_check(m: Match) -> str | None:
    c = m.const("c")
    if c is None:
        return "the other operand is not a constant"
    w = m.node("op").inputs[1]
    if m.consts is None or m.consts.value(w) is None:
        return "the weights are not constants"
    if len(m.node("op").inputs) == 3 and m.consts.value(m.node("op").inputs[2]) is None:
        return "the bias is not a constant"
    rank, axis, channels = _channels(m)
    if per_channel(c, rank, axis, channels) is None:
        return f"the constant {m['c'].type} is not per output channel"
    return None


def _scale_weights(m: Match, b: Builder) -> Value:
    node = m.node("op")
    assert m.consts is not None
    rank, axis, channels = _channels(m)
    s = per_channel(m.const("c"), rank, axis, channels)  # type: ignore[arg-type]
    assert s is not None
    w = m.consts.value(node.inputs[1])
    assert w is not None
    # conv kernels are [O, I, *k]: scale rows; matmul/gemm kernels are [K, N]: scale columns.
    w2 = w * (s.reshape((-1,) + (1,) * (w.ndim - 1)) if node.op == "conv" else s)
    ins = [node.inputs[0], new_const(b, w2.astype(w.dtype), node.inputs[1])]
    if len(node.inputs) == 3:
        bias = m.consts.value(node.inputs[2])
        assert bias is not None
        ins.append(new_const(b, (bias * s).astype(bias.dtype), node.inputs[2]))  # s broadcasts on the last axis
    return b.op(node.op, ins, **node.attrs)


def _shift_bias(m: Match, b: Builder) -> Value:
    node = m.node("op")
    assert m.consts is not None
    rank, axis, channels = _channels(m)
    t = per_channel(m.const("c"), rank, axis, channels)  # type: ignore[arg-type]
    assert t is not None
    if len(node.inputs) == 3:
        old = m.consts.value(node.inputs[2])
        assert old is not None
        bias = new_const(b, (old + t).astype(old.dtype), node.inputs[2])  # t broadcasts on the last axis
    else:
        bias = new_const(b, t, m["c"])
    if node.op == "matmul":
        return b.op("gemm", [node.inputs[0], node.inputs[1], bias])
    return b.op(node.op, [node.inputs[0], node.inputs[1], bias], **node.attrs)


def _input_affine_check(m: Match) -> str | None:
    c, w = m.const("c"), m.const("w")
    if c is None:
        return "the other operand is not a constant"
    if w is None or w.ndim != 2:
        return "the kernel is not a constant matrix"
    if per_channel(c, m["x"].type.rank, m["x"].type.rank - 1, w.shape[0]) is None:
        return f"the constant {m['c'].type} is not per input feature"
    return None


def _input_scale(m: Match, b: Builder) -> Value:
    w = m.const("w")
    assert w is not None
    s = per_channel(m.const("c"), m["x"].type.rank, m["x"].type.rank - 1, w.shape[0])  # type: ignore[arg-type]
    assert s is not None
    return b.op("matmul", [m["x"], new_const(b, (s[:, None] * w).astype(w.dtype), m["w"])])


def _input_shift(m: Match, b: Builder) -> Value:
    w = m.const("w")
    assert w is not None
    t = per_channel(m.const("c"), m["x"].type.rank, m["x"].type.rank - 1, w.shape[0])  # type: ignore[arg-type]
    assert t is not None
    y = b.op("matmul", [m["x"], m["w"]])
    return b.op("add", [y, new_const(b, (t @ w).astype(w.dtype), m["c"])])


def _gemm_input_check(m: Match) -> str | None:
    if m.const("bias") is None:
        return "the gemm bias is not a constant"
    return _input_affine_check(m)


def _gemm_input_scale(m: Match, b: Builder) -> Value:
    w = m.const("w")
    assert w is not None
    s = per_channel(m.const("c"), 2, 1, w.shape[0])  # type: ignore[arg-type]
    assert s is not None
    return b.op("gemm", [m["x"], new_const(b, (s[:, None] * w).astype(w.dtype), m["w"]), m["bias"]])


def _gemm_input_shift(m: Match, b: Builder) -> Value:
    w, bias = m.const("w"), m.const("bias")
    assert w is not None and bias is not None
    t = per_channel(m.const("c"), 2, 1, w.shape[0])  # type: ignore[arg-type]
    assert t is not None
    return b.op("gemm", [m["x"], m["w"], new_const(b, (bias + t @ w).astype(bias.dtype), m["bias"])])


def _conv_pad_check(m: Match) -> str | None:
    x = m.root.inputs[0]
    pad = x.producer
    if pad is None or pad.op != "pad":
        return "the conv input is not padded"
    r = x.type.rank
    pads = pad.attrs["pads"]
    if pad.attrs["value"] != 0.0:
        return "the padding value is not zero"
    if pads[0] or pads[1] or pads[r] or pads[r + 1]:
        return "the pad touches the batch or channel axis"
    if m.root.attrs["auto_pad"] == "SAME_UPPER" and not all(isinstance(d, int) for d in x.type.shape[2:]):
        return "the conv pads 'same' over symbolic spatial sizes"
    m.nodes["pad"] = pad
    return None


def _fold_pad_into_conv(m: Match, b: Builder) -> Value:
    from kcompile.ops.nn import conv_pads

    conv, pad = m.root, m.node("pad")
    x = pad.inputs[0]
    r = x.type.rank
    nd = r - 2
    mid = conv.inputs[0].type.shape[2:]
    kernel = conv.inputs[1].type.shape[2:]
    own = conv_pads(tuple(int(d) for d in mid), tuple(int(k) for k in kernel), conv.attrs)
    extra = pad.attrs["pads"]
    begins = [own[i][0] + extra[2 + i] for i in range(nd)]
    ends = [own[i][1] + extra[r + 2 + i] for i in range(nd)]
    attrs = {**conv.attrs, "auto_pad": "NOTSET", "pads": (*begins, *ends)}
    return b.op("conv", [x, *conv.inputs[1:]], **attrs)


def _conv_transpose_affine_check(m: Match) -> str | None:
    node = m.node("op")
    if m.const("c") is None:
        return "the other operand is not a constant"
    if m.consts is None or any(m.consts.value(v) is None for v in node.inputs[1:]):
        return "the weights or the bias are not constants"
    y = node.outputs[0]
    channels = y.type.shape[1]
    if per_channel(m.const("c"), y.type.rank, 1, channels if isinstance(channels, int) else -1) is None:  # type: ignore[arg-type]
        return f"the constant {m['c'].type} is not per output channel"
    return None


def _conv_transpose_vector(m: Match) -> np.ndarray:
    y = m.node("op").outputs[0]
    v = per_channel(m.const("c"), y.type.rank, 1, int(y.type.shape[1]))  # type: ignore[arg-type]
    assert v is not None
    return v


def _scale_conv_transpose(m: Match, b: Builder) -> Value:
    # ConvTranspose kernels are [C, O/group, *k]; output channel gi * O/group + o reads w[gi's C, o].
    node = m.node("op")
    assert m.consts is not None
    s = _conv_transpose_vector(m)
    w = m.consts.value(node.inputs[1])
    assert w is not None
    g, og, nd = node.attrs["group"], w.shape[1], w.ndim - 2
    w2 = w.reshape((g, -1, og) + w.shape[2:]) * s.reshape((g, 1, og) + (1,) * nd)
    ins = [node.inputs[0], new_const(b, w2.reshape(w.shape).astype(w.dtype), node.inputs[1])]
    if len(node.inputs) == 3:
        bias = m.consts.value(node.inputs[2])
        assert bias is not None
        ins.append(new_const(b, (bias * s).astype(bias.dtype), node.inputs[2]))
    return b.op("conv_transpose", ins, **node.attrs)


def _shift_conv_transpose(m: Match, b: Builder) -> Value:
    node = m.node("op")
    assert m.consts is not None
    t = _conv_transpose_vector(m)
    if len(node.inputs) == 3:
        old = m.consts.value(node.inputs[2])
        assert old is not None
        bias = new_const(b, (old + t).astype(old.dtype), node.inputs[2])
    else:
        bias = new_const(b, t, m["c"])
    return b.op("conv_transpose", [node.inputs[0], node.inputs[1], bias], **node.attrs)


def _constant_operand_check(m: Match) -> str | None:
    c = m.const("c")
    if c is None:
        return "the other operand is not a constant"
    if c.dtype.kind != "f":
        return "the constant is not floating point"
    if m.root.op == "div" and not np.all(c != 0):
        return "the divisor has a zero"
    return None


def _sub_to_add(m: Match, b: Builder) -> Value:
    c = m.const("c")
    assert c is not None
    return b.op("add", [m["x"], new_const(b, np.negative(c), m["c"])])


def _div_to_mul(m: Match, b: Builder) -> Value:
    c = m.const("c")
    assert c is not None
    return b.op("mul", [m["x"], new_const(b, (np.ones((), c.dtype) / c).astype(c.dtype), m["c"])])


def _matmul_bias_check(m: Match) -> str | None:
    if m.node("op").inputs[0].type.rank != 2:
        return "the matmul input is not rank 2 (ONNX Gemm is 2-D)"
    return _affine_check(m)


FUSION = RuleSet(
    "fusion",
    [
        Rule("fold-pad-into-conv", P("conv", any_inputs=True), _fold_pad_into_conv, check=_conv_pad_check),
        Rule("batch-norm-to-affine", P("batch_norm", any_inputs=True), _bn_to_affine, check=_bn_check),
        # Affine maps written with sub/div (Keras' Normalization) take the mul/add form the
        # folding rules below match.
        Rule("sub-constant-to-add", P("sub", V("x"), V("c")), _sub_to_add, check=_constant_operand_check),
        Rule("div-constant-to-mul", P("div", V("x"), V("c")), _div_to_mul, check=_constant_operand_check),
        Rule(
            "fold-scale-into-conv",
            P("mul", P("conv", any_inputs=True, name="op"), V("c")),
            _scale_weights,
            check=_affine_check,
        ),
        Rule(
            "fold-shift-into-conv",
            P("add", P("conv", any_inputs=True, name="op"), V("c")),
            _shift_bias,
            check=_affine_check,
        ),
        Rule(
            "fold-scale-into-matmul",
            P("mul", P("matmul", any_inputs=True, name="op"), V("c")),
            _scale_weights,
            check=_affine_check,
        ),
        Rule(
            "fold-input-scale-into-matmul",
            P("matmul", P("mul", V("x"), V("c")), V("w")),
            _input_scale,
            check=_input_affine_check,
        ),
        Rule(
            "fold-input-shift-into-matmul",
            P("matmul", P("add", V("x"), V("c")), V("w")),
            _input_shift,
            check=_input_affine_check,
        ),
        Rule(
            "fold-input-scale-into-gemm",
            P("gemm", P("mul", V("x"), V("c")), V("w"), V("bias")),
            _gemm_input_scale,
            check=_gemm_input_check,
        ),
        Rule(
            "fold-input-shift-into-gemm",
            P("gemm", P("add", V("x"), V("c")), V("w"), V("bias")),
            _gemm_input_shift,
            check=_gemm_input_check,
        ),
        Rule(
            "matmul-add-to-gemm",
            P("add", P("matmul", any_inputs=True, name="op"), V("c")),
            _shift_bias,
            check=_matmul_bias_check,
        ),
        Rule(
            "fold-shift-into-gemm",
            P("add", P("gemm", any_inputs=True, name="op"), V("c")),
            _shift_bias,
            check=_affine_check,
        ),
        Rule(
            "fold-scale-into-gemm",
            P("mul", P("gemm", any_inputs=True, name="op"), V("c")),
            _scale_weights,
            check=_affine_check,
        ),
        Rule(
            "fold-scale-into-conv-transpose",
            P("mul", P("conv_transpose", any_inputs=True, name="op"), V("c")),
            _scale_conv_transpose,
            check=_conv_transpose_affine_check,
        ),
        Rule(
            "fold-shift-into-conv-transpose",
            P("add", P("conv_transpose", any_inputs=True, name="op"), V("c")),
            _shift_conv_transpose,
            check=_conv_transpose_affine_check,
        ),
    ],
)


class FusionPass(Pass):
    name = "fusion"

    def __init__(self) -> None:
        self.consts = Constants(params=True)
        self.explanations: list[str] = []

    def run(self, graph: Graph) -> PassResult:
        stats = apply_rules(graph, (FUSION, SIMPLIFY), self.consts)
        names = {r.name for r in FUSION.rules}
        self.explanations = [str(e) for e in stats.explanations if e.rule in names]
        return PassResult(graph, stats.total > 0, dict(stats.applied))


# Training (weights are values, not constants; both rules keep values and gradients exact):
#     add(conv(x, w[, c]), v)  -> conv(x, w, reshape(v, [C]) [+ c])   v a value per output channel
#     max_pool(relu(x))        -> relu(max_pool(x))
# relu is monotone, so the two orders give the same maximum, and the gradient reaches the same
# element: a window's first maximum of relu(x) is its first maximum of x when that is positive;
# otherwise relu' is 0 there in both orders. The pooled relu and its mask are a fraction of the
# size, and the bias rides in the Conv.
def _bias_value_check(m: Match) -> str | None:
    if m.consts is not None and m.consts.value(m["c"]) is not None:
        return "the bias is a constant (fold-shift-into-conv applies)"
    y = m.node("op").outputs[0]
    c, rank = m["c"].type, y.type.rank
    if c.rank > rank or c.dtype != y.type.dtype or not all(isinstance(d, int) for d in c.shape):
        return f"{c} is not a static per-channel operand of {y.type}"
    full = (1,) * (rank - c.rank) + tuple(c.shape)
    if any(d != 1 for i, d in enumerate(full) if i != 1) or full[1] != y.type.shape[1]:
        return f"{c} does not vary along the output channels only"
    return None


def _bias_into_conv(m: Match, b: Builder) -> Value:
    node = m.node("op")
    channels = node.outputs[0].type.shape[1]
    bias = b.op("reshape", [m["c"]], shape=(channels,))
    if len(node.inputs) == 3:
        bias = b.op("add", [node.inputs[2], bias])
    return b.op("conv", [node.inputs[0], node.inputs[1], bias], **node.attrs)


TRAINING_FUSION = RuleSet(
    "training-fusion",
    [
        Rule(
            "fold-bias-value-into-conv",
            P("add", P("conv", any_inputs=True, name="op"), V("c")),
            _bias_into_conv,
            check=_bias_value_check,
        ),
        Rule(
            "fold-bias-value-into-conv-left",
            P("add", V("c"), P("conv", any_inputs=True, name="op")),
            _bias_into_conv,
            check=_bias_value_check,
        ),
        Rule(
            "relu-after-max-pool",
            P("max_pool", P("relu", V("x"))),
            lambda m, b: b.op("relu", [b.op("max_pool", [m["x"]], **m.root.attrs)]),
        ),
    ],
)


class TrainingFusionPass(Pass):
    """TRAINING_FUSION on a forward graph about to be differentiated (weights are not constants)."""

    name = "training-fusion"

    def __init__(self) -> None:
        self.consts = Constants(params=False)

    def run(self, graph: Graph) -> PassResult:
        stats = apply_rules(graph, (TRAINING_FUSION, SIMPLIFY), self.consts)
        return PassResult(graph, stats.total > 0, dict(stats.applied))
