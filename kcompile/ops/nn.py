"""Neural-network ops: matmul, convolution (and its transpose), pooling, softmax, reductions, and the
two ops that read the learning phase (dropout, batch_norm).

Convolution and pooling use ONNX's conventions: data NC<spatial>, kernels O(C/group)<spatial>,
`auto_pad="SAME_UPPER"` for Keras 'same' (the extra pixel of padding goes at the end). Keras'
channels-last layers reach them through explicit transposes that the layout pass cancels.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import LoweringError, ShapeError
from ..ir.types import FLOAT_DTYPES, Dim, TensorType, broadcast_shapes, fresh_dim, normalize_axis
from .registry import Attr, Infer, OnnxEmitter, OnnxLowering, OpDef, RefContext, register

AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER")


# matmul ------------------------------------------------------------------------------------
def _matmul_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    x, w = types
    if x.dtype != w.dtype:
        raise ShapeError(f"matmul operands have different dtypes: {x} and {w}")
    if x.rank < 2 or w.rank < 2:
        raise ShapeError(f"matmul needs operands of rank >= 2, got {x} and {w}")
    k1, k2 = x.shape[-1], w.shape[-2]
    if isinstance(k1, int) and isinstance(k2, int) and k1 != k2:
        raise ShapeError(f"matmul inner dimensions differ: {x} @ {w} ({k1} != {k2})")
    batch = broadcast_shapes(x.shape[:-2], w.shape[:-2])
    return [x.with_shape(batch + (x.shape[-2], w.shape[-1]))]


register(
    OpDef(
        "matmul",
        inputs=("a", "b"),
        infer=_matmul_infer,
        reference=lambda ctx, xs, a: [np.matmul(xs[0], xs[1])],
        onnx=lambda e, ins, a, types: e.emit("MatMul", ins),
        doc="y = a @ b with NumPy batch broadcasting (Dense: x[..., in] @ kernel[in, out])",
    )
)


def _gemm_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    x, w, c = types
    if x.rank != 2 or w.rank != 2:
        raise ShapeError(f"gemm needs rank-2 operands, got {x} and {w}")
    (y,) = _matmul_infer([x, w], a)
    try:
        shape = broadcast_shapes(y.shape, c.shape)
    except ShapeError:
        raise ShapeError(f"gemm bias {c} does not broadcast to {y}") from None
    if shape != y.shape or c.dtype != y.dtype:
        raise ShapeError(f"gemm bias {c} does not broadcast to {y}")
    return [y]


register(
    OpDef(
        "gemm",
        inputs=("a", "b", "c"),
        infer=_gemm_infer,
        reference=lambda ctx, xs, a: [(np.matmul(xs[0], xs[1]) + xs[2]).astype(xs[0].dtype)],
        onnx=lambda e, ins, a, types: e.emit("Gemm", ins),
        doc="y = a @ b + c for rank-2 a, b (a Dense layer in one ONNX Gemm)",
    )
)


# windows (conv, pooling) -------------------------------------------------------------------
def _window_out(size: Dim, k: int, s: int, d: int, pb: int, pe: int, auto_pad: str) -> Dim:
    if not isinstance(size, int):
        return fresh_dim()
    if auto_pad == "SAME_UPPER":
        return -(-size // s)
    span = (k - 1) * d + 1
    out = (size + pb + pe - span) // s + 1
    if out <= 0:
        raise ShapeError(f"window of size {k} (dilation {d}) does not fit a dimension of size {size}")
    return out


def _same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """Keras 'same' = ONNX SAME_UPPER: total padding split with the extra pixel at the end."""
    total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def conv_pads(spatial: tuple[int, ...], kernel: tuple[int, ...], a: dict[str, Any]) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial axis that a conv or pool with attrs `a` applies."""
    nd = len(kernel)
    strides, dil = a["strides"] or (1,) * nd, a.get("dilations") or (1,) * nd
    if a["auto_pad"] == "SAME_UPPER":
        return [_same_pads(n, k, s, d) for n, k, s, d in zip(spatial, kernel, strides, dil, strict=True)]
    if a["auto_pad"] == "VALID" or not a["pads"]:
        return [(0, 0)] * nd
    return list(zip(a["pads"][:nd], a["pads"][nd:], strict=True))


def _check_window_attrs(name: str, nd: int, a: dict[str, Any]) -> None:
    for key in ("strides", "dilations"):
        v = a.get(key)
        if v and (len(v) != nd or min(v) < 1):
            raise ShapeError(f"{name}: {key} {v} must hold {nd} positive values")
    if a["pads"] and len(a["pads"]) != 2 * nd:
        raise ShapeError(f"{name}: pads {a['pads']} must hold {2 * nd} values (begins, then ends)")


def _windows(x: np.ndarray, kernel: tuple[int, ...], a: dict[str, Any], fill: float) -> np.ndarray:
    """View of x [N, C, *spatial] as [N, C, *out, *kernel] windows (padding with `fill`)."""
    nd = len(kernel)
    strides, dil = a["strides"] or (1,) * nd, a.get("dilations") or (1,) * nd
    pads = conv_pads(x.shape[2:], kernel, a)
    xp = np.pad(x, [(0, 0), (0, 0), *pads], constant_values=fill)
    span = tuple((k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True))
    axes = tuple(range(2, 2 + nd))
    v = np.lib.stride_tricks.sliding_window_view(xp, span, axis=axes)
    index = (
        (slice(None), slice(None))
        + tuple(slice(None, None, s) for s in strides)
        + tuple(slice(None, None, d) for d in dil)
    )
    return v[index]


_WINDOW_ATTRS = (
    Attr("strides", "ints", ()),
    Attr("pads", "ints", ()),
    Attr("auto_pad", "str", "NOTSET", choices=AUTO_PADS),
)


# conv --------------------------------------------------------------------------------------
def _conv_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    x, w = types[0], types[1]
    nd = x.rank - 2
    if nd < 1 or w.rank != x.rank:
        raise ShapeError(f"conv needs data [N, C, *spatial] and kernel [O, C/group, *k] of one rank, got {x} and {w}")
    if x.dtype != w.dtype or x.dtype not in FLOAT_DTYPES:
        raise ShapeError(f"conv needs floating operands of one dtype, got {x} and {w}")
    _check_window_attrs("conv", nd, a)
    g = a["group"]
    c, o, ci = x.shape[1], w.shape[0], w.shape[1]
    if isinstance(c, int) and isinstance(ci, int) and c != ci * g:
        raise ShapeError(f"conv input has {c} channels, the kernel {w} expects {ci} x {g} groups")
    if isinstance(o, int) and o % g:
        raise ShapeError(f"conv output channels {o} are not divisible by group {g}")
    if len(types) == 3 and types[2].shape != (o,):
        raise ShapeError(f"conv bias must have shape ({o},), got {types[2]}")
    kernel = w.shape[2:]
    if not all(isinstance(k, int) for k in kernel):
        raise ShapeError(f"conv kernel size must be static, got {w}")
    strides = a["strides"] or (1,) * nd
    dil = a["dilations"] or (1,) * nd
    pads = a["pads"] or (0,) * (2 * nd)
    out = tuple(
        _window_out(x.shape[2 + i], int(kernel[i]), strides[i], dil[i], pads[i], pads[nd + i], a["auto_pad"])
        for i in range(nd)
    )
    return [x.with_shape((x.shape[0], o) + out)]


def _conv_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    x, w = xs[0], xs[1]
    nd = x.ndim - 2
    g = a["group"]
    win = _windows(x, w.shape[2:], a, 0.0)  # [N, C, *out, *k]
    n, c = x.shape[:2]
    o = w.shape[0]
    win = win.reshape((n, g, c // g) + win.shape[2:])
    wg = w.reshape((g, o // g) + w.shape[1:])
    letters = string.ascii_lowercase
    out_ax, k_ax = letters[:nd], letters[nd : 2 * nd]
    y = np.einsum(f"NGC{out_ax}{k_ax},GOC{k_ax}->NGO{out_ax}", win, wg, optimize=True)
    y = y.reshape((n, o) + y.shape[3:]).astype(x.dtype)
    if len(xs) == 3:
        y = y + xs[2].reshape((1, o) + (1,) * nd)
    return [y]


def _conv_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    attrs: dict[str, Any] = {"group": a["group"], "auto_pad": a["auto_pad"]}
    for key in ("strides", "dilations", "pads"):
        if a[key] and not (key == "pads" and a["auto_pad"] != "NOTSET"):
            attrs[key] = list(a[key])
    if a["auto_pad"] == "SAME_UPPER" and any(d > 1 for d in a["dilations"]):
        # onnxruntime rejects SAME_UPPER with dilation: spell the same padding out explicitly.
        spatial, kernel = types[0].shape[2:], types[1].shape[2:]
        if not all(isinstance(d, int) for d in (*spatial, *kernel)):
            raise LoweringError("a dilated 'same' convolution needs static spatial sizes for ONNX")
        pads = conv_pads(tuple(int(d) for d in spatial), tuple(int(k) for k in kernel), a)
        attrs.update(auto_pad="NOTSET", pads=[p[0] for p in pads] + [p[1] for p in pads])
    return e.emit("Conv", ins, **attrs)


register(
    OpDef(
        "conv",
        inputs=("x", "w", "b?"),
        attrs=(*_WINDOW_ATTRS, Attr("dilations", "ints", ()), Attr("group", "int", 1)),
        infer=_conv_infer,
        reference=_conv_ref,
        onnx=_conv_onnx,
        doc="N-d cross-correlation, ONNX Conv semantics (x NC*, w O(C/group)*, optional bias b[O])",
    )
)


# conv_transpose ----------------------------------------------------------------------------
# y = ConvTranspose(x, w): every input position i scatters x[n, c, i] * w[c, o, k] to the "full"
# output position i * s + k * d, of size s * (n - 1) + (k - 1) * d + 1 (+ output_padding zeros at
# the end); y is that full output with pads[:nd] cut from the start and pads[nd:] from the end.
# It is the adjoint of conv(., w) with the same strides, dilations, pads and group, which is what
# its gradient uses; output_padding < strides keeps that adjoint's output the size of x.
def _conv_transpose_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    x, w = types[0], types[1]
    nd = x.rank - 2
    if nd < 1 or w.rank != x.rank:
        raise ShapeError(
            f"conv_transpose needs data [N, C, *spatial] and kernel [C, O/group, *k] of one rank, got {x} and {w}"
        )
    if x.dtype != w.dtype or x.dtype not in FLOAT_DTYPES:
        raise ShapeError(f"conv_transpose needs floating operands of one dtype, got {x} and {w}")
    _check_window_attrs("conv_transpose", nd, a)
    g = a["group"]
    c, ci, og = x.shape[1], w.shape[0], w.shape[1]
    if isinstance(c, int) and isinstance(ci, int) and c != ci:
        raise ShapeError(f"conv_transpose input has {c} channels, the kernel {w} expects {ci}")
    if isinstance(ci, int) and ci % g:
        raise ShapeError(f"conv_transpose input channels {ci} are not divisible by group {g}")
    o = og * g if isinstance(og, int) else og
    if len(types) == 3 and types[2].shape != (o,):
        raise ShapeError(f"conv_transpose bias must have shape ({o},), got {types[2]}")
    kernel = w.shape[2:]
    if not all(isinstance(k, int) for k in kernel):
        raise ShapeError(f"conv_transpose kernel size must be static, got {w}")
    strides = a["strides"] or (1,) * nd
    dil = a["dilations"] or (1,) * nd
    pads = a["pads"] or (0,) * (2 * nd)
    extra = a["output_padding"] or (0,) * nd
    if len(extra) != nd or any(not 0 <= e < s for e, s in zip(extra, strides, strict=True)):
        raise ShapeError(f"conv_transpose output_padding {extra} must hold {nd} values in [0, strides {strides})")
    out: list[Dim] = []
    for i in range(nd):
        n = x.shape[2 + i]
        if not isinstance(n, int):
            out.append(fresh_dim())
            continue
        size = strides[i] * (n - 1) + extra[i] + (int(kernel[i]) - 1) * dil[i] + 1 - pads[i] - pads[nd + i]
        if size <= 0:
            raise ShapeError(f"conv_transpose pads {pads} remove the whole output of a dimension of size {n}")
        out.append(size)
    return [x.with_shape((x.shape[0], o, *out))]


def _conv_transpose_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    x, w = xs[0], xs[1]
    nd = x.ndim - 2
    g = a["group"]
    n, c = x.shape[:2]
    og, kernel, spatial = w.shape[1], w.shape[2:], x.shape[2:]
    strides, dil = a["strides"] or (1,) * nd, a["dilations"] or (1,) * nd
    pads = a["pads"] or (0,) * (2 * nd)
    extra = a["output_padding"] or (0,) * nd
    full = tuple(
        s * (i - 1) + (k - 1) * d + 1 + e for i, k, s, d, e in zip(spatial, kernel, strides, dil, extra, strict=True)
    )
    y = np.zeros((n, g * og, *full), np.result_type(x, w))
    xg = x.reshape((n, g, c // g) + spatial)
    wg = w.reshape((g, c // g, og) + kernel)
    for kk in itertools.product(*(range(k) for k in kernel)):
        index: tuple[Any, ...] = (Ellipsis, *kk)
        contrib = np.einsum("ngc...,gco->ngo...", xg, wg[index]).reshape((n, g * og) + spatial)
        at = tuple(
            slice(k * d, k * d + s * (i - 1) + 1, s) for k, d, s, i in zip(kk, dil, strides, spatial, strict=True)
        )
        y[(slice(None), slice(None), *at)] += contrib
    crop = tuple(slice(pads[i], full[i] - pads[nd + i]) for i in range(nd))
    y = y[(slice(None), slice(None), *crop)]
    if len(xs) == 3:
        y = y + xs[2].reshape((1, g * og) + (1,) * nd)
    return [y.astype(x.dtype)]


def _conv_transpose_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    attrs: dict[str, Any] = {"group": a["group"]}
    for key in ("strides", "dilations", "pads", "output_padding"):
        if a[key] and any(a[key]):
            attrs[key] = list(a[key])
    return e.emit("ConvTranspose", ins, **attrs)


register(
    OpDef(
        "conv_transpose",
        inputs=("x", "w", "b?"),
        attrs=(
            Attr("strides", "ints", ()),
            Attr("pads", "ints", ()),
            Attr("dilations", "ints", ()),
            Attr("group", "int", 1),
            Attr("output_padding", "ints", ()),
        ),
        infer=_conv_transpose_infer,
        reference=_conv_transpose_ref,
        onnx=_conv_transpose_onnx,
        doc=(
            "N-d transposed convolution, ONNX ConvTranspose semantics with explicit pads (x NC*, "
            "w C(O/group)*, optional bias b[O]): the adjoint of conv(., w) with the same attributes"
        ),
    )
)


# pooling -----------------------------------------------------------------------------------
def _pool_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    (x,) = types
    kernel = a["kernel"]
    nd = len(kernel)
    if x.rank != nd + 2:
        raise ShapeError(f"{nd}-d pooling needs a rank-{nd + 2} input [N, C, *spatial], got {x}")
    _check_window_attrs("pool", nd, a)
    strides = a["strides"] or (1,) * nd
    pads = a["pads"] or (0,) * (2 * nd)
    out = tuple(
        _window_out(x.shape[2 + i], kernel[i], strides[i], 1, pads[i], pads[nd + i], a["auto_pad"]) for i in range(nd)
    )
    return [x.with_shape(x.shape[:2] + out)]


def _max_pool_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    win = _windows(xs[0], a["kernel"], a, -np.inf)
    nd = len(a["kernel"])
    return [win.max(axis=tuple(range(-nd, 0)))]


def _avg_pool_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    # Padding never counts: each window's sum is divided by the number of real elements in it.
    x = xs[0]
    nd = len(a["kernel"])
    axes = tuple(range(-nd, 0))
    total = _windows(x, a["kernel"], a, 0.0).sum(axis=axes)
    count = _windows(np.ones((1, 1) + x.shape[2:], x.dtype), a["kernel"], a, 0.0).sum(axis=axes)
    return [(total / count).astype(x.dtype)]


def _pool_onnx(op_type: str) -> OnnxLowering:
    def lower(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
        attrs: dict[str, Any] = {"kernel_shape": list(a["kernel"]), "auto_pad": a["auto_pad"]}
        if a["strides"]:
            attrs["strides"] = list(a["strides"])
        if a["pads"] and a["auto_pad"] == "NOTSET":
            attrs["pads"] = list(a["pads"])
        if op_type == "AveragePool":
            attrs["count_include_pad"] = 0
        return e.emit(op_type, ins, **attrs)

    return lower


for _name, _ref, _type, _doc in (
    ("max_pool", _max_pool_ref, "MaxPool", "max over windows, ONNX MaxPool semantics"),
    ("avg_pool", _avg_pool_ref, "AveragePool", "mean over windows, padding excluded from the count"),
):
    register(
        OpDef(
            _name,
            inputs=("x",),
            attrs=(Attr("kernel", "ints"), *_WINDOW_ATTRS),
            infer=_pool_infer,
            reference=_ref,
            onnx=_pool_onnx(_type),
            doc=_doc,
        )
    )


# softmax and reductions --------------------------------------------------------------------
def _softmax_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    x = xs[0]
    z = np.exp(x - x.max(axis=a["axis"], keepdims=True))
    return [(z / z.sum(axis=a["axis"], keepdims=True)).astype(x.dtype)]


def _log_softmax_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    x = xs[0]
    z = x - x.max(axis=a["axis"], keepdims=True)
    return [(z - np.log(np.exp(z).sum(axis=a["axis"], keepdims=True))).astype(x.dtype)]


def _float_along_axis(name: str) -> Infer:
    def infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
        normalize_axis(a["axis"], types[0].rank)
        if types[0].dtype not in FLOAT_DTYPES:
            raise ShapeError(f"{name} needs a floating-point input, got {types[0]}")
        return [types[0]]

    return infer


register(
    OpDef(
        "softmax",
        inputs=("x",),
        attrs=(Attr("axis", "int", -1),),
        infer=_float_along_axis("softmax"),
        reference=_softmax_ref,
        onnx=lambda e, ins, a, types: e.emit("Softmax", ins, axis=a["axis"]),
        doc="y = exp(x) / sum(exp(x)) along `axis`",
    )
)
register(
    OpDef(
        "log_softmax",
        inputs=("x",),
        attrs=(Attr("axis", "int", -1),),
        infer=_float_along_axis("log_softmax"),
        reference=_log_softmax_ref,
        onnx=lambda e, ins, a, types: e.emit("LogSoftmax", ins, axis=a["axis"]),
        doc="y = x - log(sum(exp(x))) along `axis`, computed stably (Keras' log_softmax)",
    )
)


def _reduce_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    (x,) = types
    axes = {normalize_axis(ax, x.rank) for ax in a["axes"]}
    if a["keepdims"]:
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return [x.with_shape(shape)]


def reduction(name: str, fn: Callable[..., Any], onnx_type: str, global_type: str | None = None) -> OpDef:
    def reference(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
        return [np.asarray(fn(xs[0], axis=a["axes"], keepdims=a["keepdims"])).astype(xs[0].dtype)]

    def lower(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
        rank = types[0].rank
        if global_type and a["keepdims"] and rank >= 3 and sorted(x % rank for x in a["axes"]) == list(range(2, rank)):
            # Over every axis after the first two, keeping them: ONNX's global pooling, which
            # onnxruntime keeps in its blocked channels-first layout (a Reduce* would force a layout
            # change). Without keepdims, a Reduce* is one node where pooling needs a Flatten; the
            # layout change then comes before the reduction (on MobileNetV2's 3x3 head, within 1%).
            return e.emit(global_type, ins)
        axes = e.const(np.array(a["axes"], np.int64), "axes")
        return e.emit(onnx_type, [ins[0], axes], keepdims=int(a["keepdims"]))

    return register(
        OpDef(
            name,
            inputs=("x",),
            attrs=(Attr("axes", "ints"), Attr("keepdims", "bool", False)),
            infer=_reduce_infer,
            reference=reference,
            onnx=lower,
            doc=f"{onnx_type} over `axes`",
        )
    )


reduction("reduce_mean", np.mean, "ReduceMean", "GlobalAveragePool")
reduction("reduce_sum", np.sum, "ReduceSum")
reduction("reduce_max", np.max, "ReduceMax", "GlobalMaxPool")


# dropout -----------------------------------------------------------------------------------
def _dropout_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    if types[1] != TensorType("bool", ()):
        raise ShapeError(f"dropout's learning phase must be bool[], got {types[1]}")
    if not 0.0 <= a["rate"] <= 1.0:
        raise ShapeError(f"dropout rate must be in [0, 1], got {a['rate']}")
    return [types[0]]


def _dropout_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    x, training = xs
    if not bool(training) or a["rate"] == 0.0:
        return [x]
    if a["rate"] == 1.0:
        return [np.zeros_like(x)]
    keep = ctx.rng(a["seed"]).random(x.shape) >= a["rate"]
    return [(x * keep / (1.0 - a["rate"])).astype(x.dtype)]


def _dropout_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    ratio = e.const(np.array(a["rate"], dtype=types[0].dtype), "ratio")
    return e.emit("Dropout", [ins[0], ratio, ins[1]], seed=a["seed"])


register(
    OpDef(
        "dropout",
        inputs=("x", "training"),
        attrs=(Attr("rate", "float"), Attr("seed", "int", 0)),
        infer=_dropout_infer,
        reference=_dropout_ref,
        onnx=_dropout_onnx,
        fold_phase=lambda node, training: None if training else node.inputs[0],
        doc="training: y = x * mask / (1 - rate), mask ~ Bernoulli(1 - rate); inference: y = x",
    )
)


# batch_norm --------------------------------------------------------------------------------
def _bn_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    x = types[0]
    axis = normalize_axis(a["axis"], x.rank)
    c = x.shape[axis]
    for name, t in zip(("gamma", "beta", "moving_mean", "moving_variance"), types[1:5], strict=True):
        if t.rank != 1 or (isinstance(c, int) and t.shape[0] != c) or t.dtype != x.dtype:
            raise ShapeError(f"batch_norm {name} must be {x.dtype}[{c}], got {t}")
    if len(types) == 6 and types[5] != TensorType("bool", ()):
        raise ShapeError(f"batch_norm's learning phase must be bool[], got {types[5]}")
    return [x]


def _bn_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    x, gamma, beta, mean, var = xs[:5]
    axis = a["axis"] % x.ndim
    bshape = [1] * x.ndim
    bshape[axis] = -1
    if len(xs) == 6 and bool(xs[5]):
        others = tuple(i for i in range(x.ndim) if i != axis)
        mean = x.mean(axis=others)
        var = x.var(axis=others)  # biased, as Keras' ops.moments
    scale = gamma.reshape(bshape) / np.sqrt(var.reshape(bshape) + a["epsilon"])
    return [((x - mean.reshape(bshape)) * scale + beta.reshape(bshape)).astype(x.dtype)]


def _bn_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    x, gamma, beta, mean, var = ins[:5]
    rank = types[0].rank
    axis = a["axis"] % rank
    dtype = types[0].dtype
    eps = e.const(np.array(a["epsilon"], dtype), "epsilon")

    def along_axis(name: str) -> str:
        if axis == rank - 1:
            return name
        shape = np.array([-1] + [1] * (rank - 1 - axis), np.int64)
        return e.emit("Reshape", [name, e.const(shape, "bn_shape")])[0]

    # Inference: y = x * scale + shift with scale = gamma / sqrt(var + eps), shift = beta - mean * scale.
    scale = e.emit("Div", [gamma, e.emit("Sqrt", [e.emit("Add", [var, eps])[0]])[0]])[0]
    shift = e.emit("Sub", [beta, e.emit("Mul", [mean, scale])[0]])[0]
    y_inf = e.emit("Add", [e.emit("Mul", [x, along_axis(scale)])[0], along_axis(shift)])[0]
    if len(ins) == 5:
        return [y_inf]
    # Dynamic phase: batch statistics (biased variance) when training.
    others = e.const(np.array([i for i in range(rank) if i != axis], np.int64), "bn_axes")
    mu = e.emit("ReduceMean", [x, others], keepdims=1)[0]
    centered = e.emit("Sub", [x, mu])[0]
    bvar = e.emit("ReduceMean", [e.emit("Mul", [centered, centered])[0], others], keepdims=1)[0]
    inv = e.emit("Div", [along_axis(gamma), e.emit("Sqrt", [e.emit("Add", [bvar, eps])[0]])[0]])[0]
    y_train = e.emit("Add", [e.emit("Mul", [centered, inv])[0], along_axis(beta)])[0]
    return e.emit("Where", [ins[5], y_train, y_inf])


def _bn_fold_phase(node: Any, training: bool) -> Any:
    if training:
        return None
    from ..ir.graph import Node

    return Node("batch_norm", node.inputs[:5], dict(node.attrs), node.outputs, node.device, node.scope, node.loc)


register(
    OpDef(
        "batch_norm",
        inputs=("x", "gamma", "beta", "moving_mean", "moving_variance", "training?"),
        attrs=(Attr("axis", "int", -1), Attr("epsilon", "float", 1e-3), Attr("momentum", "float", 0.99)),
        infer=_bn_infer,
        reference=_bn_ref,
        onnx=_bn_onnx,
        fold_phase=_bn_fold_phase,
        doc=(
            "y = (x - mean) / sqrt(var + epsilon) * gamma + beta along `axis`; mean/var are the moving "
            "statistics, or the batch statistics (biased variance) when `training` is given and True"
        ),
    )
)
