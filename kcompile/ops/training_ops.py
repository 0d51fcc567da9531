"""Primitive ops that training needs besides the forward ops: the adjoints of the structural and
window ops (what gradient rules emit), comparisons and index ops for losses and metrics, and the
random mask of training-mode dropout.

- `expand_like(x, like)`: x broadcast to like's shape; `reshape_like(x, like)`: x with like's shape.
- `size(x, axes)`: the number of elements of x along `axes` (all when empty), as an x-typed scalar.
- `slice(x, axes, starts, ends)`: the adjoint of `pad` (and `pad` of it).
- `gather_grad(dy, indices, data_like)`: zeros shaped like data with dy scatter-added at indices.
- `conv_grad_input(dy, w, x_like)` / `conv_grad_weight(x, dy, w_like)`: the adjoints of `conv`
  (attributes as conv); `avg_pool_grad(dy, x_like)` / `max_pool_grad(x, dy)`: of pooling. Max
  pooling routes each window's gradient to its first maximum (row-major), as torch and onnxruntime.
- `compare(a, b, mode)` -> bool; `argmax(x, axis)` -> int64; `one_hot(indices, depth)`.
- `dropout_mask(x, rate, seed)`: keep-mask / (1 - rate) shaped like x; training-mode dropout is
  `x * dropout_mask(x)`, so the backward pass reuses the forward's mask.

The window adjoints lower to ONNX: dx of a convolution to one Conv with the flipped kernel
(stride 1, where the emitter runs it blocked), else MatMul + Col2Im (2D, one group) or
ConvTranspose; dw to GEMMs over columns (made by a one-hot Conv in 1D and 2D, by slices in 3D);
max pooling's to MaxPool + MaxUnpool (ScatterElements where windows overlap). They need static
spatial sizes (the batch may stay symbolic).
"""

from __future__ import annotations

import itertools
import string
from typing import Any

import numpy as np

from ..errors import LoweringError, ShapeError
from ..ir.types import FLOAT_DTYPES, INT_DTYPES, TensorType, broadcast_shapes, normalize_axis
from .nn import _WINDOW_ATTRS, _windows, conv_pads
from .registry import Attr, OnnxEmitter, OpDef, RefContext, register


def _onnx_type(dtype: str) -> int:
    from onnx import helper

    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def _static(t: TensorType, what: str) -> tuple[int, ...]:
    if not all(isinstance(d, int) for d in t.shape):
        raise LoweringError(f"{what} needs static sizes here, got {t}")
    return tuple(int(d) for d in t.shape)  # type: ignore[arg-type]


def _int64(e: OnnxEmitter, values: Any, hint: str) -> str:
    return e.const(np.array(values, np.int64), hint)


# expand_like / reshape_like / size -----------------------------------------------------------
def _expand_like_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    x, like = types
    try:
        shape = broadcast_shapes(x.shape, like.shape)
    except ShapeError:
        raise ShapeError(f"expand_like cannot broadcast {x} to {like}") from None
    return [x.with_shape(shape)]


register(
    OpDef(
        "expand_like",
        inputs=("x", "like"),
        infer=_expand_like_infer,
        reference=lambda ctx, xs, a: [np.broadcast_to(xs[0], np.broadcast_shapes(xs[0].shape, xs[1].shape)).copy()],
        onnx=lambda e, ins, a, types: e.emit("Expand", [ins[0], e.emit("Shape", [ins[1]])[0]]),
        doc="y = x broadcast to the shape of `like` (like's values are not read)",
    )
)


def _reshape_like_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    x, like = types
    n, m = x.numel(), like.numel()
    if n is not None and m is not None and n != m:
        raise ShapeError(f"reshape_like cannot reshape {x} to the shape of {like}")
    return [x.with_shape(like.shape)]


register(
    OpDef(
        "reshape_like",
        inputs=("x", "like"),
        infer=_reshape_like_infer,
        reference=lambda ctx, xs, a: [xs[0].reshape(xs[1].shape)],
        onnx=lambda e, ins, a, types: e.emit("Reshape", [ins[0], e.emit("Shape", [ins[1]])[0]]),
        doc="y = x reshaped to the shape of `like` (like's values are not read)",
    )
)


def _size_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    for ax in a["axes"]:
        normalize_axis(ax, types[0].rank)
    return [TensorType(a["dtype"], ())]


def _size_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    x = xs[0]
    n = x.size if not a["axes"] else int(np.prod([x.shape[ax] for ax in a["axes"]]))
    return [np.array(n, dtype=a["dtype"])]


def _size_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    if not a["axes"]:
        n = e.emit("Size", [ins[0]])[0]
    else:
        dims = e.emit("Gather", [e.emit("Shape", [ins[0]])[0], e.const(np.array(a["axes"], np.int64), "axes")])[0]
        n = e.emit("ReduceProd", [dims], keepdims=0)[0]
    return e.emit("Cast", [n], to=_onnx_type(a["dtype"]))


register(
    OpDef(
        "size",
        inputs=("x",),
        attrs=(Attr("axes", "ints", ()), Attr("dtype", "dtype", "float32")),
        infer=_size_infer,
        reference=_size_ref,
        onnx=_size_onnx,
        doc="y = the number of elements of x along `axes` (all axes when empty), a scalar of `dtype`",
    )
)


# slice ---------------------------------------------------------------------------------
def _slice_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    (x,) = types
    axes, starts, ends = a["axes"], a["starts"], a["ends"]
    if not len(axes) == len(starts) == len(ends):
        raise ShapeError(f"slice needs as many starts and ends as axes, got {axes}, {starts}, {ends}")
    shape = list(x.shape)
    for ax, s, t in zip(axes, starts, ends, strict=True):
        ax = normalize_axis(ax, x.rank)
        d = x.shape[ax]
        if not isinstance(d, int):
            raise ShapeError(f"slice needs a static size on axis {ax}, got {x}")
        if not 0 <= s <= t <= d:
            raise ShapeError(f"slice [{s}:{t}] does not fit axis {ax} of {x}")
        shape[ax] = t - s
    return [x.with_shape(tuple(shape))]


def _slice_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    index = [slice(None)] * xs[0].ndim
    for ax, s, t in zip(a["axes"], a["starts"], a["ends"], strict=True):
        index[ax] = slice(s, t)
    return [xs[0][tuple(index)].copy()]


def _slice_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    consts = [e.const(np.array(a[k], np.int64), k) for k in ("starts", "ends", "axes")]
    return e.emit("Slice", [ins[0], *consts])


register(
    OpDef(
        "slice",
        inputs=("x",),
        attrs=(Attr("axes", "ints"), Attr("starts", "ints"), Attr("ends", "ints")),
        infer=_slice_infer,
        reference=_slice_ref,
        onnx=_slice_onnx,
        doc="y = x[starts:ends] along each of `axes` (static, non-negative bounds)",
    )
)


# gather_grad ---------------------------------------------------------------------------------
def _gather_grad_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    dy, idx, data = types
    if idx.dtype not in INT_DTYPES:
        raise ShapeError(f"gather_grad indices must be int32 or int64, got {idx}")
    normalize_axis(a["axis"], data.rank)
    if dy.rank != data.rank - 1 + idx.rank or dy.dtype != data.dtype:
        raise ShapeError(f"gather_grad: {dy} is not the gradient of gathering {idx} from {data}")
    return [data]


def _gather_grad_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    dy, idx, data = xs
    axis = a["axis"] % data.ndim
    out = np.zeros(data.shape, dy.dtype)
    view = np.moveaxis(out, axis, 0)  # a view: writes land in `out`
    r = idx.ndim
    moved = np.moveaxis(dy, list(range(axis, axis + r)), list(range(r)))
    flat = idx.astype(np.int64).reshape(-1) % data.shape[axis]
    np.add.at(view, flat, moved.reshape((flat.size, *view.shape[1:])))
    return [out]


def _gather_grad_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    dy, idx, data = ins
    data_t, idx_t = types[2], types[1]
    rank, r = data_t.rank, idx_t.rank
    axis = a["axis"] % rank
    n = data_t.shape[axis]
    if not isinstance(n, int):
        raise LoweringError(f"gather_grad needs a static size on the gathered axis, got {data_t}")
    if idx_t.dtype != "int64":
        idx = e.emit("Cast", [idx], to=_onnx_type("int64"))[0]
    nn_ = e.const(np.array(n, np.int64), "n")
    idx = e.emit("Mod", [e.emit("Add", [idx, nn_])[0], nn_])[0]  # negative indices count from the end
    perm_data = [axis, *[i for i in range(rank) if i != axis]]
    dy_rank = rank - 1 + r
    perm_dy = [*range(axis, axis + r), *[i for i in range(dy_rank) if not axis <= i < axis + r]]
    data_moved = e.emit("Transpose", [data], perm=perm_data)[0] if axis != 0 else data
    zeros = e.emit("ConstantOfShape", [e.emit("Shape", [data_moved])[0]], value=_tensor(np.zeros(1, data_t.dtype)))[0]
    updates = e.emit("Transpose", [dy], perm=perm_dy)[0] if perm_dy != list(range(dy_rank)) else dy
    index = e.emit("Unsqueeze", [idx, e.const(np.array([-1], np.int64), "axes")])[0]
    out = e.emit("ScatterND", [zeros, index, updates], reduction="add")[0]
    inverse = list(np.argsort(perm_data))
    return e.emit("Transpose", [out], perm=[int(i) for i in inverse]) if axis != 0 else [out]


def _tensor(array: np.ndarray) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(array)


register(
    OpDef(
        "gather_grad",
        inputs=("dy", "indices", "data_like"),
        attrs=(Attr("axis", "int", 0),),
        infer=_gather_grad_infer,
        reference=_gather_grad_ref,
        onnx=_gather_grad_onnx,
        doc="y = zeros shaped like data with dy added at `indices` along `axis` (repeats accumulate)",
    )
)


# window adjoints -----------------------------------------------------------------------------
def _window_params(a: dict[str, Any], nd: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return a["strides"] or (1,) * nd, a.get("dilations") or (1,) * nd


def _scatter_windows(
    contrib: Any, shape: tuple[int, ...], kernel: tuple[int, ...], a: dict[str, Any], out: tuple[int, ...]
) -> np.ndarray:
    """Adjoint of `_windows`: sum contrib(k) [N, C, *out] into the padded input at window offset k."""
    nd = len(kernel)
    strides, dil = _window_params(a, nd)
    pads = conv_pads(shape[2:], kernel, a)
    padded = tuple(n + pb + pe for n, (pb, pe) in zip(shape[2:], pads, strict=True))
    acc: np.ndarray | None = None
    for kk in itertools.product(*(range(k) for k in kernel)):
        c = contrib(kk)
        if acc is None:
            acc = np.zeros(shape[:2] + padded, c.dtype)
        index = (slice(None), slice(None)) + tuple(
            slice(k * d, k * d + s * (o - 1) + 1, s) for k, d, s, o in zip(kk, dil, strides, out, strict=True)
        )
        acc[index] += c
    assert acc is not None
    crop = (slice(None), slice(None)) + tuple(slice(pb, pb + n) for n, (pb, _) in zip(shape[2:], pads, strict=True))
    return acc[crop]


def _transpose_pads(
    spatial: tuple[int, ...], out: tuple[int, ...], kernel: tuple[int, ...], a: dict[str, Any]
) -> dict[str, Any]:
    """ConvTranspose attributes that map a window op's output grid back onto its input exactly."""
    nd = len(kernel)
    strides, dil = _window_params(a, nd)
    pads = conv_pads(spatial, kernel, a)
    extra = []
    for n, o, k, s, d, (pb, pe) in zip(spatial, out, kernel, strides, dil, pads, strict=True):
        extra.append(n - (s * (o - 1) + (k - 1) * d + 1 - pb - pe))
    return {
        "strides": list(strides),
        "dilations": list(dil),
        "pads": [p[0] for p in pads] + [p[1] for p in pads],
        "output_padding": extra,
    }


def _conv_out(x: TensorType, w: TensorType, a: dict[str, Any]) -> TensorType:
    from .nn import _conv_infer

    return _conv_infer([x, w], a)[0]


def _conv_grad_input_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    dy, w, x = types
    want = _conv_out(x, w, a)
    if dy.rank != want.rank or dy.dtype != want.dtype:
        raise ShapeError(f"conv_grad_input: {dy} is not the gradient of conv({x}, {w}) = {want}")
    return [x]


def _conv_grad_input_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    dy, w, x = xs
    g = a["group"]
    n, o = dy.shape[:2]
    c = x.shape[1]
    dyg = dy.reshape((n, g, o // g) + dy.shape[2:])
    wg = w.reshape((g, o // g, c // g) + w.shape[2:])

    def contrib(kk: tuple[int, ...]) -> np.ndarray:
        index: tuple[Any, ...] = (Ellipsis, *kk)
        part = np.einsum("ngo...,goc->ngc...", dyg, wg[index])
        return part.reshape((n, c) + dy.shape[2:])

    dx = _scatter_windows(contrib, x.shape, w.shape[2:], a, dy.shape[2:])
    return [dx.astype(dy.dtype)]


def _conv_grad_input_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    dy_t, w_t, x_t = types
    spatial = _static(x_t.with_shape(x_t.shape[2:]), "conv_grad_input")
    kernel = tuple(int(k) for k in w_t.shape[2:])  # type: ignore[arg-type]
    out = _static(dy_t.with_shape(dy_t.shape[2:]), "conv_grad_input")
    strides, dil = _window_params(a, len(kernel))
    pads = conv_pads(spatial, kernel, a)
    if dy_t.dtype == "float32":  # onnxruntime's Conv, Col2Im: float32
        w_shape = _static(w_t, "conv_grad_input")
        flipped = _flipped_pads(spatial, out, kernel, strides, dil, pads)
        if flipped is not None and a["group"] == 1 and e.blocked_conv((w_shape[1], w_shape[0], *kernel)):
            return _conv_grad_input_flipped(e, ins[0], ins[1], len(kernel), flipped, dil)
        if a["group"] == 1 and len(kernel) == 2:  # onnxruntime's Col2Im: 2D
            return _conv_grad_input_col2im(e, ins[0], ins[1], w_shape, spatial, strides, dil, pads)
    attrs = _transpose_pads(spatial, out, kernel, a)
    return e.emit("ConvTranspose", ins[:2], group=a["group"], **attrs)


def _flipped_pads(
    spatial: tuple[int, ...],
    out: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    dil: tuple[int, ...],
    pads: list[tuple[int, int]],
) -> list[int] | None:
    """The pads of the stride-1 convolution of dy with the flipped kernel that gives dx, or None
    where there is none (strided, or padding wider than the kernel's reach)."""
    # dx[i] = sum_k dy[i + pb - k*d] w[k] = sum_k' dy[i - ((K-1)d - pb) + k'*d] w[K-1-k']: a
    # convolution of dy padded by (K-1)d - pb before and n - out + pb after.
    if any(s != 1 for s in strides):
        return None
    begin = [(k - 1) * d - pb for k, d, (pb, _) in zip(kernel, dil, pads, strict=True)]
    end = [n - o + pb for n, o, (pb, _) in zip(spatial, out, pads, strict=True)]
    return begin + end if min(begin + end) >= 0 else None


def _conv_grad_input_flipped(
    e: OnnxEmitter, dy: str, w: str, nd: int, pads: list[int], dil: tuple[int, ...]
) -> list[str]:
    # Stride 1, one group: dx = conv(dy, w~) with w~[c, o] = w[o, c] flipped along every spatial
    # axis. In blocked (NCHWc) kernels one Conv beats a GEMM plus col2im, with no column buffer
    # (the bench CNN's second layer: 1.4 against 2.2 ms); in NCHW ones (im2col + GEMM over the
    # larger padded grid) it loses (3.2 ms), hence only when `e.blocked_conv` says w~ runs blocked.
    wf = e.emit("Transpose", [w], perm=[1, 0, *range(2, 2 + nd)])[0]
    axes = list(range(2, 2 + nd))
    wf = e.emit(
        "Slice",
        [wf, _int64(e, [-1] * nd, "starts"), _int64(e, [-(2**63)] * nd, "ends"), _int64(e, axes, "axes"),
         _int64(e, [-1] * nd, "steps")],
    )[0]  # fmt: skip
    return e.emit("Conv", [dy, wf], dilations=list(dil), pads=pads)


def _conv_grad_input_col2im(
    e: OnnxEmitter,
    dy: str,
    w: str,
    w_shape: tuple[int, ...],
    spatial: tuple[int, ...],
    strides: tuple[int, ...],
    dil: tuple[int, ...],
    pads: list[tuple[int, int]],
) -> list[str]:
    # dx = col2im(w^T dy): one batched MatMul of [C*K, O] against every sample's [O, P]
    # (onnxruntime's ConvTranspose runs the same two steps, with one small GEMM per sample).
    o, c, kernel = w_shape[0], w_shape[1], w_shape[2:]
    k = int(np.prod(kernel))
    wt = e.emit("Transpose", [e.emit("Reshape", [w, _int64(e, [o, c * k], "shape")])[0]])[0]
    # Materialized once as [1, C*K, O]: straight into the MatMul, onnxruntime would fuse the
    # transpose into it and MLAS would transpose w again for every sample.
    wt = e.emit("Reshape", [wt, _int64(e, [1, c * k, o], "shape")])[0]
    dyr = e.emit("Reshape", [dy, _int64(e, [0, o, -1], "shape")])[0]
    cols = e.emit("MatMul", [wt, dyr])[0]  # [N, C*K, P]
    return e.emit(
        "Col2Im",
        [cols, _int64(e, spatial, "image_shape"), _int64(e, kernel, "block")],
        strides=list(strides),
        dilations=list(dil),
        pads=[p[0] for p in pads] + [p[1] for p in pads],
    )


_CONV_ATTRS = (*_WINDOW_ATTRS, Attr("dilations", "ints", ()), Attr("group", "int", 1))

register(
    OpDef(
        "conv_grad_input",
        inputs=("dy", "w", "x_like"),
        attrs=_CONV_ATTRS,
        infer=_conv_grad_input_infer,
        reference=_conv_grad_input_ref,
        onnx=_conv_grad_input_onnx,
        doc="dx of y = conv(x, w) given dy (a transposed convolution); attributes as conv",
    )
)


def _conv_grad_weight_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    x, dy, w = types
    want = _conv_out(x, w, a)
    if dy.rank != want.rank or dy.dtype != want.dtype:
        raise ShapeError(f"conv_grad_weight: {dy} is not the gradient of conv({x}, {w}) = {want}")
    return [w]


def _conv_grad_weight_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    x, dy, w = xs
    nd = x.ndim - 2
    g = a["group"]
    n, c = x.shape[:2]
    o = w.shape[0]
    win = _windows(x, w.shape[2:], a, 0.0)  # [N, C, *out, *k]
    win = win.reshape((n, g, c // g) + win.shape[2:])
    dyg = dy.reshape((n, g, o // g) + dy.shape[2:])
    letters = string.ascii_lowercase
    out_ax, k_ax = letters[:nd], letters[nd : 2 * nd]
    dw = np.einsum(f"NGC{out_ax}{k_ax},NGO{out_ax}->GOC{k_ax}", win, dyg, optimize=True)
    return [dw.reshape(w.shape).astype(x.dtype)]


def _conv_grad_weight_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    # dw[o, c, k] = sum_{n, p} x_pad[n, c, p*s + k*d] dy[n, o, p]: the columns x_pad[.., p*s + k*d]
    # of every kernel offset k, stacked, meet dy in one matrix product.
    x, dy, _ = ins
    x_t, dy_t, w_t = types
    nd = x_t.rank - 2
    spatial = _static(x_t.with_shape(x_t.shape[2:]), "conv_grad_weight")
    w_shape = _static(w_t, "conv_grad_weight")
    strides, dil = _window_params(a, nd)
    pads = conv_pads(spatial, w_shape[2:], a)
    if nd <= 2 and x_t.dtype == "float32":  # onnxruntime's Conv: float32, at most 3 spatial axes
        positions = int(np.prod(_static(dy_t.with_shape(dy_t.shape[2:]), "conv_grad_weight")))
        return _conv_grad_weight_unfolded(e, x, dy, a["group"], spatial, positions, w_shape, strides, dil, pads)
    if any(pb or pe for pb, pe in pads):
        flat = [0, 0] + [p[0] for p in pads] + [0, 0] + [p[1] for p in pads]
        x = e.emit("Pad", [x, _int64(e, flat, "pads")])[0]
    padded = tuple(n + pb + pe for n, (pb, pe) in zip(spatial, pads, strict=True))
    if all(s == 1 for s in strides):
        return _conv_grad_weight_shifted(e, x, dy, a["group"], padded, w_shape, dil)
    return _conv_grad_weight_strided(e, x, dy, a["group"], padded, w_shape, strides, dil)


def _columns_times_dy(e: OnnxEmitter, cols: str, dyg: str, g: int, w_shape: tuple[int, ...]) -> list[str]:
    """dw from the columns [g, Cg*K, N*P] and dy [g, Og, N*P]. The columns, the larger operand, go
    on the left: MLAS packs the right operand, so packing dy instead of them saves a copy. (The
    product is reshaped before its transpose, or onnxruntime would fuse the transpose into the
    Gemm by swapping its operands back.)"""
    o, cg, kernel = w_shape[0], w_shape[1], w_shape[2:]
    if g == 1:
        squeeze = _int64(e, [0], "axes")
        cols, dyg = (e.emit("Squeeze", [v, squeeze])[0] for v in (cols, dyg))
        total = e.emit("Gemm", [cols, dyg], transB=1)[0]  # [Cg*K, Og]
    else:
        total = e.emit("MatMul", [cols, e.emit("Transpose", [dyg], perm=[0, 2, 1])[0]])[0]  # [g, Cg*K, Og]
    total = e.emit("Reshape", [total, _int64(e, [g, cg, int(np.prod(kernel)), o // g], "shape")])[0]
    total = e.emit("Transpose", [total], perm=[0, 3, 1, 2])[0]  # [g, Og, Cg, K]
    return e.emit("Reshape", [total, _int64(e, list(w_shape), "shape")])


def _conv_grad_weight_unfolded(
    e: OnnxEmitter,
    x: str,
    dy: str,
    g: int,
    spatial: tuple[int, ...],
    positions: int,
    w_shape: tuple[int, ...],
    strides: tuple[int, ...],
    dil: tuple[int, ...],
    pads: list[tuple[int, int]],
) -> list[str]:
    # The columns come from onnxruntime's own im2col, a Conv with K one-hot kernels: each copies
    # its element exactly (x*1 plus zeros; only an inf in x would spread as NaN).
    # - Columns no larger than dy (C*K <= O): x as [C, 1, N, *spatial], the batch one more spatial
    #   axis, gives cols[c, k, n, p] = x_pad[n, c, p*s + k*d], already [C*K, N*P] in memory; one
    #   GEMM with the batch inside the contraction meets dy as [O, N*P].
    # - Otherwise (few input channels): x as [N*C, 1, *spatial] gives [N, C*K, P], and per-sample
    #   products summed over the batch read dy in place; only the smaller columns are transposed.
    nd = len(strides)
    o, cg, kernel = w_shape[0], w_shape[1], w_shape[2:]
    k_total = int(np.prod(kernel))
    per_sample = g * cg * k_total < o
    lead = () if per_sample else (1,)  # the batch axis, when it is a spatial axis of the Conv
    onehot = np.zeros((k_total, 1, *(1,) * len(lead), *kernel), np.float32)
    for i, kk in enumerate(itertools.product(*(range(k) for k in kernel))):
        onehot[(i, 0, *(0,) * len(lead), *kk)] = 1.0
    conv_attrs: dict[str, Any] = {
        "strides": [*lead, *strides],
        "dilations": [*lead, *dil],
        "pads": [*(0,) * len(lead), *(p[0] for p in pads), *(0,) * len(lead), *(p[1] for p in pads)],
    }
    if per_sample:
        xs = e.emit("Reshape", [x, _int64(e, [-1, 1, *spatial], "shape")])[0]  # [N*C, 1, *spatial]
        cols = e.emit("Conv", [xs, e.const(onehot, "onehot")], **conv_attrs)[0]  # [N*C, K, *out]
        cols = e.emit("Reshape", [cols, _int64(e, [-1, g, cg * k_total, positions], "shape")])[0]
        cols = e.emit("Transpose", [cols], perm=[0, 1, 3, 2])[0]  # [N, g, P, Cg*K]
        dyg = e.emit("Reshape", [dy, _int64(e, [0, g, o // g, -1], "shape")])[0]  # [N, g, Og, P]
        total = e.emit("MatMul", [dyg, cols])[0]  # [N, g, Og, Cg*K]
        total = e.emit("ReduceSum", [total, _int64(e, [0], "axes")], keepdims=0)[0]
        return e.emit("Reshape", [total, _int64(e, list(w_shape), "shape")])
    # [C, N, *spatial] (a single channel needs only the reshape), then [C, 1, N, *spatial]
    xt = e.emit("Transpose", [x], perm=[1, 0, *range(2, 2 + nd)])[0] if g * cg > 1 else x
    xt = e.emit("Reshape", [xt, _int64(e, [g * cg, 1, -1, *spatial], "shape")])[0]
    cols = e.emit("Conv", [xt, e.const(onehot, "onehot")], **conv_attrs)[0]  # [C, K, N, *out]
    cols = e.emit("Reshape", [cols, _int64(e, [g, cg * k_total, -1], "shape")])[0]  # [g, Cg*K, N*P]
    dyt = e.emit("Transpose", [dy], perm=[1, 0, *range(2, 2 + nd)])[0]  # [O, N, *out]
    dyg = e.emit("Reshape", [dyt, _int64(e, [g, o // g, -1], "shape")])[0]  # [g, Og, N*P]
    return _columns_times_dy(e, cols, dyg, g, w_shape)


def _conv_grad_weight_shifted(
    e: OnnxEmitter, x: str, dy: str, g: int, padded: tuple[int, ...], w_shape: tuple[int, ...], dil: tuple[int, ...]
) -> list[str]:
    # Stride 1. The batch moves inside the contraction: x as [C, N, *spatial] and dy as
    # [O, N*P], so one GEMM with a long inner dimension (N*P) does all the work, with no per-sample
    # products to sum afterwards. The columns are cheap copies: the trailing axes are cropped once
    # per trailing kernel offset; after flattening, each offset k1 along the first spatial axis is
    # one contiguous run of the crop (rows k1*d1 .. k1*d1 + P1, each already P2*..*Pnd wide).
    nd = len(padded)
    o, cg, kernel = w_shape[0], w_shape[1], w_shape[2:]
    out = tuple(n - (k - 1) * d for n, k, d in zip(padded, kernel, dil, strict=True))
    trailing = int(np.prod(out[1:]))
    xt = e.emit("Transpose", [x], perm=[1, 0, *range(2, 2 + nd)])[0]  # [C, N, *spatial]
    crops: dict[tuple[int, ...], str] = {}
    for kt in itertools.product(*(range(k) for k in kernel[1:])):
        crop = xt
        if nd > 1:
            starts = [k * d for k, d in zip(kt, dil[1:], strict=True)]
            ends = [st + n for st, n in zip(starts, out[1:], strict=True)]
            axes = _int64(e, list(range(3, 2 + nd)), "axes")
            crop = e.emit("Slice", [xt, _int64(e, starts, "starts"), _int64(e, ends, "ends"), axes])[0]
        crops[kt] = e.emit("Reshape", [crop, _int64(e, [g * cg, -1, padded[0] * trailing], "shape")])[0]
    rows = out[0] * trailing
    columns = []
    for kk in itertools.product(*(range(k) for k in kernel)):
        start = kk[0] * dil[0] * trailing
        run = e.emit("Slice", [crops[kk[1:]], _int64(e, [start], "starts"), _int64(e, [start + rows], "ends"),
                               _int64(e, [2], "axes")])[0]  # fmt: skip
        columns.append(e.emit("Reshape", [run, _int64(e, [g, cg, 1, -1], "shape")])[0])  # [g, Cg, 1, N*P]
    cols = e.emit("Concat", columns, axis=2)[0] if len(columns) > 1 else columns[0]  # [g, Cg, K, N*P]
    cols = e.emit("Reshape", [cols, _int64(e, [g, cg * len(columns), -1], "shape")])[0]
    dyt = e.emit("Transpose", [dy], perm=[1, 0, *range(2, 2 + nd)])[0]  # [O, N, *out]
    dyg = e.emit("Reshape", [dyt, _int64(e, [g, o // g, -1], "shape")])[0]  # [g, Og, N*P]
    return _columns_times_dy(e, cols, dyg, g, w_shape)


def _conv_grad_weight_strided(
    e: OnnxEmitter,
    x: str,
    dy: str,
    g: int,
    padded: tuple[int, ...],
    w_shape: tuple[int, ...],
    strides: tuple[int, ...],
    dil: tuple[int, ...],
) -> list[str]:
    # The columns x_pad[.., p*s + k*d] for every kernel offset k are strided slices of x; stacked
    # [N, g, Cg*K, P] they meet dy [N, g, P, Og] in one batched MatMul, summed over the batch.
    nd = len(padded)
    o, cg, kernel = w_shape[0], w_shape[1], w_shape[2:]
    out = tuple((n - ((k - 1) * dd + 1)) // ss + 1 for n, k, dd, ss in zip(padded, kernel, dil, strides, strict=True))
    positions = int(np.prod(out))
    axes = _int64(e, list(range(2, 2 + nd)), "axes")
    steps = _int64(e, list(strides), "steps")
    col_shape = _int64(e, [0, g, cg, 1, positions], "shape")
    columns = []
    for kk in itertools.product(*(range(k) for k in kernel)):
        starts = [k * dd for k, dd in zip(kk, dil, strict=True)]
        ends = [st + ss * (n - 1) + 1 for st, ss, n in zip(starts, strides, out, strict=True)]
        cut = e.emit("Slice", [x, _int64(e, starts, "starts"), _int64(e, ends, "ends"), axes, steps])[0]
        columns.append(e.emit("Reshape", [cut, col_shape])[0])  # [N, g, Cg, 1, P]
    cols = e.emit("Concat", columns, axis=3)[0] if len(columns) > 1 else columns[0]  # [N, g, Cg, K, P]
    cols = e.emit("Reshape", [cols, _int64(e, [0, g, cg * len(columns), positions], "shape")])[0]
    dyg = e.emit("Reshape", [dy, _int64(e, [0, g, o // g, positions], "shape")])[0]
    dyt = e.emit("Transpose", [dyg], perm=[0, 1, 3, 2])[0]  # [N, g, P, Og]
    per_sample = e.emit("MatMul", [cols, dyt])[0]  # [N, g, Cg*K, Og]
    total = e.emit("ReduceSum", [per_sample, _int64(e, [0], "axes")], keepdims=0)[0]
    total = e.emit("Transpose", [total], perm=[0, 2, 1])[0]  # [g, Og, Cg*K]
    return e.emit("Reshape", [total, _int64(e, list(w_shape), "shape")])


register(
    OpDef(
        "conv_grad_weight",
        inputs=("x", "dy", "w_like"),
        attrs=_CONV_ATTRS,
        infer=_conv_grad_weight_infer,
        reference=_conv_grad_weight_ref,
        onnx=_conv_grad_weight_onnx,
        doc="dw of y = conv(x, w) given dy; attributes as conv",
    )
)


def _pool_out(x: TensorType, a: dict[str, Any]) -> TensorType:
    from .nn import _pool_infer

    return _pool_infer([x], a)[0]


def _avg_pool_grad_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    dy, x = types
    want = _pool_out(x, a)
    if dy.rank != want.rank or dy.dtype != x.dtype:
        raise ShapeError(f"avg_pool_grad: {dy} is not the gradient of avg_pool({x}) = {want}")
    return [x]


def _pool_counts(spatial: tuple[int, ...], a: dict[str, Any], dtype: Any) -> np.ndarray:
    ones = np.ones((1, 1, *spatial), dtype)
    return _windows(ones, a["kernel"], a, 0.0).sum(axis=tuple(range(-len(spatial), 0)))


def _avg_pool_grad_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    dy, x = xs
    scaled = dy / _pool_counts(x.shape[2:], a, dy.dtype)
    dx = _scatter_windows(lambda kk: scaled, x.shape, a["kernel"], a, dy.shape[2:])
    return [dx.astype(dy.dtype)]


def _avg_pool_grad_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    _dy_t, x_t = types
    xs = _static(x_t.with_shape(x_t.shape[1:]), "avg_pool_grad")
    c, spatial = xs[0], xs[1:]
    kernel = tuple(a["kernel"])
    counts = _pool_counts(spatial, a, np.dtype(x_t.dtype))
    scaled = e.emit("Div", [ins[0], e.const(counts.astype(x_t.dtype), "counts")])[0]
    ones = e.const(np.ones((c, 1, *kernel), x_t.dtype), "ones")
    attrs = _transpose_pads(spatial, tuple(int(d) for d in counts.shape[2:]), kernel, a)
    attrs.pop("dilations")
    return e.emit("ConvTranspose", [scaled, ones], group=c, **attrs)


register(
    OpDef(
        "avg_pool_grad",
        inputs=("dy", "x_like"),
        attrs=(Attr("kernel", "ints"), *_WINDOW_ATTRS),
        infer=_avg_pool_grad_infer,
        reference=_avg_pool_grad_ref,
        onnx=_avg_pool_grad_onnx,
        doc="dx of y = avg_pool(x) given dy (padding excluded from each window's count)",
    )
)


def _max_pool_grad_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    x, dy = types
    want = _pool_out(x, a)
    if dy.rank != want.rank or dy.dtype != x.dtype:
        raise ShapeError(f"max_pool_grad: {dy} is not the gradient of max_pool({x}) = {want}")
    return [x]


def _max_pool_grad_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    x, dy = xs
    kernel = tuple(a["kernel"])
    nd = len(kernel)
    win = _windows(x, kernel, a, -np.inf)  # [N, C, *out, *k]
    out = win.shape[2 : 2 + nd]
    first = win.reshape(win.shape[: 2 + nd] + (-1,)).argmax(axis=-1)  # first maximum, row-major
    offsets = np.unravel_index(first, kernel)

    def contrib(kk: tuple[int, ...]) -> np.ndarray:
        hit = np.ones(first.shape, bool)
        for off, k in zip(offsets, kk, strict=True):
            hit &= off == k
        return np.where(hit, dy, 0).astype(dy.dtype)

    return [_scatter_windows(contrib, x.shape, kernel, a, out)]


def _pool_attrs(a: dict[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {"kernel_shape": list(a["kernel"]), "auto_pad": a["auto_pad"]}
    if a["strides"]:
        attrs["strides"] = list(a["strides"])
    if a["pads"] and a["auto_pad"] == "NOTSET":
        attrs["pads"] = list(a["pads"])
    return attrs


def _tiled_pool(x_t: TensorType, a: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(spatial, out) when the pooling windows tile x without overlap or padding (strides equal
    the kernel, no padding; the rows and columns past the last window are dropped), else None."""
    kernel = tuple(a["kernel"])
    spatial = x_t.shape[2:]
    if not all(isinstance(d, int) for d in spatial) or tuple(a["strides"] or ()) != kernel:
        return None
    sizes = tuple(int(d) for d in spatial)  # type: ignore[arg-type]
    if any(pb or pe for pb, pe in conv_pads(sizes, kernel, a)) or any(
        n < k for n, k in zip(sizes, kernel, strict=True)
    ):
        return None
    return sizes, tuple(n // k for n, k in zip(sizes, kernel, strict=True))


def _max_pool_grad_tiled(
    e: OnnxEmitter,
    ins: list[str],
    a: dict[str, Any],
    types: list[TensorType],
    spatial: tuple[int, ...],
    out: tuple[int, ...],
) -> list[str]:
    # Windows tile x. Row-major, the first maximum of a window is at the first offset t whose
    # "prefix box" (offsets 0..t_i along every axis, anchored at the window's origin) holds the
    # window's maximum: every earlier offset's box lies in the rows (planes) before t's or left of
    # t in t's row, where no maximum is. Each box maximum is a MaxPool with the box as kernel and
    # the window as stride (MLAS kernels, reading x once each); y = max_pool(x) is the forward's
    # (onnxruntime merges the two). The first hit gives each window's flat offset into x, and
    # MaxUnpool lays dy at those places, zeros elsewhere (rows past the last window included).
    x, dy = ins
    kernel = tuple(a["kernel"])
    nd = len(kernel)
    flat = [int(np.prod(spatial[i + 1 :])) for i in range(nd)]  # x's spatial strides, in elements
    size = int(np.prod(spatial))
    # Offsets below 2**24 are exact in float32, whose Where is cheaper than int64's.
    off_dtype = np.float32 if size < 2**24 else np.int64
    y = e.emit("MaxPool", [x], **_pool_attrs(a))[0]
    axes = _int64(e, list(range(2, 2 + nd)), "axes")
    offsets = list(itertools.product(*(range(k) for k in kernel)))

    def flat_offset(t: tuple[int, ...]) -> str:
        return e.const(np.array(sum(ti * f for ti, f in zip(t, flat, strict=True)), off_dtype), "offset")

    chosen = flat_offset(offsets[-1])  # no earlier box hit: the last offset
    for t in reversed(offsets[:-1]):
        box = [ti + 1 for ti in t]
        boxed = e.emit("MaxPool", [x], kernel_shape=box, strides=list(kernel))[0]
        sizes = [(n - b) // k + 1 for n, b, k in zip(spatial, box, kernel, strict=True)]
        if tuple(sizes) != out:  # a smaller box fits one more window where x has leftover rows
            zeros = _int64(e, [0] * nd, "starts")
            boxed = e.emit("Slice", [boxed, zeros, _int64(e, out, "ends"), axes])[0]
        hit = e.emit("Equal", [boxed, y])[0]
        chosen = e.emit("Where", [hit, flat_offset(t), chosen])[0]
    # Flat index into x: window origin + chosen offset + (n*C + c) * size.
    origins = np.zeros(out, np.int64)
    for i, (o, k, f) in enumerate(zip(out, kernel, flat, strict=True)):
        origins = origins + (np.arange(o, dtype=np.int64) * k * f).reshape((o,) + (1,) * (nd - 1 - i))
    within = e.emit("Add", [chosen, e.const(origins.astype(off_dtype), "origins")])[0]
    if off_dtype != np.int64:
        within = e.emit("Cast", [within], to=_onnx_type("int64"))[0]
    # N and C come from dy: a Shape or Size of x would keep onnxruntime from leaving x in its
    # blocked (NCHWc) layout between the convolution and the max pools that read it.
    lead = e.emit("Shape", [dy], end=2)[0]
    planes_n = e.emit("Div", [e.emit("Size", [dy])[0], e.const(np.array(int(np.prod(out)), np.int64), "window_count")])[
        0
    ]
    one = _int64(e, 1, "one")
    planes = e.emit("Range", [_int64(e, 0, "zero"), planes_n, one])[0]  # n*C + c
    planes = e.emit("Mul", [planes, _int64(e, size, "size")])[0]
    planes = e.emit("Reshape", [planes, e.emit("Concat", [lead, _int64(e, [1] * nd, "ones")], axis=0)[0]])[0]
    index = e.emit("Add", [within, planes])[0]
    x_shape = e.emit("Concat", [lead, _int64(e, spatial, "spatial")], axis=0)[0]
    return e.emit("MaxUnpool", [dy, index, x_shape], kernel_shape=list(kernel), strides=list(kernel))


def _max_pool_grad_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    tiled = _tiled_pool(types[0], a)
    if tiled is not None and types[0].dtype == "float32":  # onnxruntime's MaxUnpool is float32 only
        return _max_pool_grad_tiled(e, ins, a, types, *tiled)
    x, dy = ins
    _, indices = e.emit("MaxPool", [x], n_out=2, **_pool_attrs(a))  # flat indices into x (N, C included)
    flat = e.const(np.array([-1], np.int64), "flat")
    n = e.emit("Unsqueeze", [e.emit("Size", [x])[0], e.const(np.array([0], np.int64), "axes")])[0]
    zeros = e.emit("ConstantOfShape", [n], value=_tensor(np.zeros(1, types[0].dtype)))[0]
    scattered = e.emit(
        "ScatterElements",
        [zeros, e.emit("Reshape", [indices, flat])[0], e.emit("Reshape", [dy, flat])[0]],
        axis=0,
        reduction="add",
    )[0]
    return e.emit("Reshape", [scattered, e.emit("Shape", [x])[0]])


register(
    OpDef(
        "max_pool_grad",
        inputs=("x", "dy"),
        attrs=(Attr("kernel", "ints"), *_WINDOW_ATTRS),
        infer=_max_pool_grad_infer,
        reference=_max_pool_grad_ref,
        onnx=_max_pool_grad_onnx,
        doc="dx of y = max_pool(x) given dy: each window's dy goes to its first maximum (row-major)",
    )
)


# comparisons and index ops ----------------------------------------------------------------
_COMPARE = {
    "equal": (np.equal, "Equal"),
    "greater": (np.greater, "Greater"),
    "greater_equal": (np.greater_equal, "GreaterOrEqual"),
    "less": (np.less, "Less"),
    "less_equal": (np.less_equal, "LessOrEqual"),
}


def _compare_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    x, y = types
    if x.dtype != y.dtype:
        raise ShapeError(f"compare operands have different dtypes: {x} and {y}")
    try:
        return [TensorType("bool", broadcast_shapes(x.shape, y.shape))]
    except ShapeError:
        raise ShapeError(f"cannot broadcast {x} with {y}") from None


register(
    OpDef(
        "compare",
        inputs=("a", "b"),
        attrs=(Attr("mode", "str", choices=tuple(_COMPARE)),),
        infer=_compare_infer,
        reference=lambda ctx, xs, a: [np.asarray(_COMPARE[a["mode"]][0](xs[0], xs[1]))],
        onnx=lambda e, ins, a, types: e.emit(_COMPARE[a["mode"]][1], ins),
        doc="y = a <mode> b elementwise (equal, greater, greater_equal, less, less_equal), bool",
    )
)


def _argmax_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    (x,) = types
    axis = normalize_axis(a["axis"], x.rank)
    shape = tuple(1 if i == axis else d for i, d in enumerate(x.shape) if a["keepdims"] or i != axis)
    return [TensorType("int64", shape)]


register(
    OpDef(
        "argmax",
        inputs=("x",),
        attrs=(Attr("axis", "int", -1), Attr("keepdims", "bool", False)),
        infer=_argmax_infer,
        reference=lambda ctx, xs, a: [
            np.asarray(np.argmax(xs[0], axis=a["axis"], keepdims=a["keepdims"])).astype(np.int64)
        ],
        onnx=lambda e, ins, a, types: e.emit("ArgMax", ins, axis=a["axis"], keepdims=int(a["keepdims"])),
        doc="y = the index of the first maximum along `axis` (int64)",
    )
)


def _one_hot_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    (idx,) = types
    if idx.dtype not in INT_DTYPES:
        raise ShapeError(f"one_hot needs integer indices, got {idx}")
    if a["depth"] <= 0:
        raise ShapeError(f"one_hot depth must be positive, got {a['depth']}")
    return [TensorType(a["dtype"], (*idx.shape, a["depth"]))]


def _one_hot_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    depth = e.const(np.array(a["depth"], np.int64), "depth")
    values = e.const(np.array([0, 1], a["dtype"]), "onehot_values")
    return e.emit("OneHot", [ins[0], depth, values], axis=-1)


register(
    OpDef(
        "one_hot",
        inputs=("indices",),
        attrs=(Attr("depth", "int"), Attr("dtype", "dtype", "float32")),
        infer=_one_hot_infer,
        reference=lambda ctx, xs, a: [(xs[0][..., None] == np.arange(a["depth"])).astype(a["dtype"])],
        onnx=_one_hot_onnx,
        doc="y[..., k] = 1 where indices == k else 0, a new last axis of size `depth`",
    )
)


# dropout_mask --------------------------------------------------------------------------------
def _mask_scale(rate: float) -> float:
    return 0.0 if rate >= 1.0 else 1.0 / (1.0 - rate)


def _dropout_mask_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    if types[0].dtype not in FLOAT_DTYPES:
        raise ShapeError(f"dropout_mask needs a floating-point input, got {types[0]}")
    if not 0.0 <= a["rate"] <= 1.0:
        raise ShapeError(f"dropout rate must be in [0, 1], got {a['rate']}")
    return [types[0]]


def _dropout_mask_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    keep = ctx.rng(a["seed"]).random(xs[0].shape) >= a["rate"]
    return [(keep * _mask_scale(a["rate"])).astype(xs[0].dtype)]


def _dropout_mask_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    dtype = types[0].dtype
    draw = e.emit("RandomUniformLike", [ins[0]], dtype=_onnx_type(dtype), seed=float(a["seed"]))[0]
    keep = e.emit("GreaterOrEqual", [draw, e.const(np.array(a["rate"], dtype), "rate")])[0]
    mask = e.emit("Cast", [keep], to=_onnx_type(dtype))[0]
    return e.emit("Mul", [mask, e.const(np.array(_mask_scale(a["rate"]), dtype), "scale")])


register(
    OpDef(
        "dropout_mask",
        inputs=("x",),
        attrs=(Attr("rate", "float"), Attr("seed", "int", 0)),
        infer=_dropout_mask_infer,
        reference=_dropout_mask_ref,
        onnx=_dropout_mask_onnx,
        doc="y = keep / (1 - rate), keep ~ Bernoulli(1 - rate), shaped like x (seeded; a new draw per run)",
    )
)
