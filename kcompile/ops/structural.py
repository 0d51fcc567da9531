"""Ops that move data without arithmetic, and the graph's sources.

`reshape` follows ONNX: in `shape`, 0 copies the input's dimension at that position and one -1
is inferred, so a symbolic batch survives `Flatten` (`shape=(0, -1)`).
`unflatten_like(x, like, axes=k)` splits x's first axis into like's first k axes, read at run
time: `[N*T, ...] -> [N, T, ...]` with N and T symbolic (TimeDistributed's way back).
`constant` holds an array; `learning_phase` is the graph's bool[] Keras learning phase.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ShapeError
from ..ir.types import INT_DTYPES, Dim, TensorType, dtype_of, fresh_dim, normalize_axis
from .registry import Attr, OnnxEmitter, OpDef, RefContext, register


def _prod(dims: list[Dim]) -> int:
    n = 1
    for d in dims:
        assert isinstance(d, int)
        n *= d
    return n


# transpose ---------------------------------------------------------------------------------
def _transpose_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    (x,) = types
    perm = a["perm"]
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"transpose permutation {perm} does not fit a rank-{x.rank} tensor {x}")
    return [x.with_shape(tuple(x.shape[p] for p in perm))]


register(
    OpDef(
        "transpose",
        inputs=("x",),
        attrs=(Attr("perm", "ints"),),
        infer=_transpose_infer,
        reference=lambda ctx, xs, a: [np.transpose(xs[0], a["perm"])],
        onnx=lambda e, ins, a, types: e.emit("Transpose", ins, perm=list(a["perm"])),
        doc="y = x with axes permuted: y.shape[i] = x.shape[perm[i]]",
    )
)


# reshape -----------------------------------------------------------------------------------
def reshape_dims(in_shape: tuple[Dim, ...], spec: tuple[int, ...]) -> tuple[Dim, ...]:
    """Output dims of an ONNX-style reshape (0 copies, -1 infers) over possibly symbolic dims."""
    if sum(1 for s in spec if s == -1) > 1:
        raise ShapeError(f"reshape target {spec} has more than one -1")
    out: list[Dim] = []
    for i, s in enumerate(spec):
        if s == 0:
            if i >= len(in_shape):
                raise ShapeError(f"reshape target {spec}: 0 at position {i} copies nothing from rank {len(in_shape)}")
            out.append(in_shape[i])
        elif s < -1:
            raise ShapeError(f"reshape target {spec} has a negative size {s}")
        else:
            out.append(s)
    if -1 not in spec:
        known_in = [d for i, d in enumerate(in_shape) if not (i < len(spec) and spec[i] == 0)]
        known_out = [d for i, d in enumerate(out) if spec[i] != 0]
        if all(isinstance(d, int) for d in known_in + known_out):
            if _prod(known_in) != _prod(known_out):
                raise ShapeError(f"cannot reshape {_fmt(in_shape)} to {_fmt(tuple(out))}")
        return tuple(out)
    # One -1: divide what the input holds by what the other output dims hold, cancelling the
    # dimensions that are copied (they may be symbolic).
    copied = {i for i, s in enumerate(spec) if s == 0}
    rest_in = [d for i, d in enumerate(in_shape) if i not in copied]
    rest_out = [d for i, d in enumerate(out) if i not in copied and spec[i] != -1]
    for d in list(rest_out):
        if isinstance(d, str) and d in rest_in:
            rest_in.remove(d)
            rest_out.remove(d)
    if all(isinstance(d, int) for d in rest_in + rest_out):
        num, den = _prod(rest_in), _prod(rest_out)
        if den == 0 or num % den:
            raise ShapeError(f"cannot reshape {_fmt(in_shape)} to {_fmt(tuple(out))}")
        inferred: Dim = num // den
    else:
        inferred = fresh_dim()
    return tuple(inferred if s == -1 else d for s, d in zip(spec, out, strict=True))


def _fmt(shape: tuple[Dim, ...]) -> str:
    return "(" + ", ".join("None" if isinstance(d, str) else str(d) for d in shape) + ")"


def _reshape_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    x = xs[0]
    target = [x.shape[i] if s == 0 else s for i, s in enumerate(a["shape"])]
    return [x.reshape(target)]


register(
    OpDef(
        "reshape",
        inputs=("x",),
        attrs=(Attr("shape", "ints"),),
        infer=lambda types, a: [types[0].with_shape(reshape_dims(types[0].shape, a["shape"]))],
        reference=_reshape_ref,
        onnx=lambda e, ins, a, types: e.emit("Reshape", [ins[0], e.const(np.array(a["shape"], np.int64), "shape")]),
        doc="y = x reshaped; in `shape` 0 copies the input dim, -1 is inferred",
    )
)


# unflatten_like ----------------------------------------------------------------------------
def _unflatten_like_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    x, like = types
    k = a["axes"]
    if x.rank < 1 or not 1 <= k <= like.rank:
        raise ShapeError(f"unflatten_like cannot split the first axis of {x} into the first {k} axes of {like}")
    head = like.shape[:k]
    if isinstance(x.shape[0], int) and all(isinstance(d, int) for d in head) and _prod(list(head)) != x.shape[0]:
        raise ShapeError(f"unflatten_like cannot split the first axis of {x} into {_fmt(head)}, the head of {like}")
    return [x.with_shape(head + x.shape[1:])]


def _unflatten_like_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    head = e.emit("Shape", [ins[1]], end=a["axes"])[0]
    tail = e.emit("Shape", [ins[0]], start=1)[0]
    return e.emit("Reshape", [ins[0], e.emit("Concat", [head, tail], axis=0)[0]])


register(
    OpDef(
        "unflatten_like",
        inputs=("x", "like"),
        attrs=(Attr("axes", "int"),),
        infer=_unflatten_like_infer,
        reference=lambda ctx, xs, a: [xs[0].reshape(xs[1].shape[: a["axes"]] + xs[0].shape[1:])],
        onnx=_unflatten_like_onnx,
        doc="y = x with its first axis split into the first `axes` axes of `like` (like's values are not read)",
    )
)


# concat ------------------------------------------------------------------------------------
def _concat_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    first = types[0]
    axis = normalize_axis(a["axis"], first.rank)
    total: Dim = 0
    for t in types:
        if t.dtype != first.dtype or t.rank != first.rank:
            raise ShapeError(f"cannot concatenate {first} with {t}")
        for i, (p, q) in enumerate(zip(first.shape, t.shape, strict=True)):
            if i != axis and p != q and isinstance(p, int) and isinstance(q, int):
                raise ShapeError(f"cannot concatenate {first} with {t} on axis {a['axis']}: dimension {i} differs")
        d = t.shape[axis]
        total = total + d if isinstance(total, int) and isinstance(d, int) else fresh_dim()
    shape = list(first.shape)
    shape[axis] = total
    return [first.with_shape(tuple(shape))]


register(
    OpDef(
        "concat",
        inputs=("xs",),
        attrs=(Attr("axis", "int", -1),),
        variadic=True,
        infer=_concat_infer,
        reference=lambda ctx, xs, a: [np.concatenate(xs, axis=a["axis"])],
        onnx=lambda e, ins, a, types: e.emit("Concat", ins, axis=a["axis"]),
        doc="y = the inputs joined along `axis`",
    )
)


# pad ---------------------------------------------------------------------------------------
def _pad_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    (x,) = types
    pads = a["pads"]
    if len(pads) != 2 * x.rank or min(pads) < 0:
        raise ShapeError(f"pad needs {2 * x.rank} non-negative pads (begins, then ends) for {x}, got {pads}")
    shape = tuple(
        d + pads[i] + pads[x.rank + i]
        if isinstance(d, int)
        else (d if pads[i] + pads[x.rank + i] == 0 else fresh_dim())
        for i, d in enumerate(x.shape)
    )
    return [x.with_shape(shape)]


def _pad_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    x, pads, r = xs[0], a["pads"], xs[0].ndim
    return [np.pad(x, [(pads[i], pads[r + i]) for i in range(r)], constant_values=a["value"])]


def _pad_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    value = e.const(np.array(a["value"], dtype=types[0].dtype), "pad_value")
    return e.emit("Pad", [ins[0], e.const(np.array(a["pads"], np.int64), "pads"), value], mode="constant")


register(
    OpDef(
        "pad",
        inputs=("x",),
        attrs=(Attr("pads", "ints"), Attr("value", "float", 0.0)),
        infer=_pad_infer,
        reference=_pad_ref,
        onnx=_pad_onnx,
        doc="y = x surrounded by `value`: pads[i] before and pads[rank + i] after axis i",
    )
)


# gather ------------------------------------------------------------------------------------
def _gather_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    data, idx = types
    if idx.dtype not in INT_DTYPES:
        raise ShapeError(f"gather indices must be int32 or int64, got {idx}")
    axis = normalize_axis(a["axis"], data.rank)
    return [data.with_shape(data.shape[:axis] + idx.shape + data.shape[axis + 1 :])]


def _gather_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    data, idx = xs
    n = data.shape[a["axis"]]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"gather index out of range [{-n}, {n})")
    return [np.take(data, idx, axis=a["axis"])]


register(
    OpDef(
        "gather",
        inputs=("data", "indices"),
        attrs=(Attr("axis", "int", 0),),
        infer=_gather_infer,
        reference=_gather_ref,
        onnx=lambda e, ins, a, types: e.emit("Gather", ins, axis=a["axis"]),
        doc="y = data indexed along `axis` by `indices` (Embedding's lookup)",
    )
)


# sources -----------------------------------------------------------------------------------
register(
    OpDef(
        "constant",
        inputs=(),
        attrs=(Attr("value", "array"),),
        infer=lambda types, a: [TensorType(dtype_of(a["value"]), tuple(int(d) for d in a["value"].shape))],
        reference=lambda ctx, xs, a: [a["value"]],
        onnx=lambda e, ins, a, types: [e.const(a["value"])],
        doc="y = value",
    )
)


def _phase_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    return [e.graph_input("learning_phase", TensorType("bool", ()))]


register(
    OpDef(
        "learning_phase",
        inputs=(),
        infer=lambda types, a: [TensorType("bool", ())],
        reference=lambda ctx, xs, a: [np.array(ctx.training)],
        onnx=_phase_onnx,
        doc="y = the Keras learning phase (True while training); an ONNX input when left dynamic",
    )
)
