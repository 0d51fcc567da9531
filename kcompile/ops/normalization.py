"""`layer_norm`: normalisation over the trailing axes, one ONNX LayerNormalization node.

    layer_norm(x, scale[, bias], axis=k, epsilon=e)
        mean = mean(x over axes k..rank-1), var = mean((x - mean)^2)   (biased, as Keras' moments)
        y = (x - mean) / sqrt(var + e) * scale + bias

`scale` and `bias` have exactly the normalised shape `x.shape[k:]`. This is ONNX
LayerNormalization (opset 17+) with `stash_type=1`: the statistics are computed in float32 or
wider, as Keras computes them (`ops.layer_normalization` upcasts to at least float32).
Normalisations over other axis sets (Keras' LayerNormalization over leading or non-contiguous
axes, GroupNormalization, RMSNormalization) are compositions of primitive ops in the layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ShapeError
from ..ir.types import FLOAT_DTYPES, TensorType, normalize_axis
from .registry import Attr, OnnxEmitter, OpDef, RefContext, register


def _layer_norm_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    x = types[0]
    if x.dtype not in FLOAT_DTYPES:
        raise ShapeError(f"layer_norm needs a floating-point input, got {x}")
    axis = normalize_axis(a["axis"], x.rank, "layer_norm axis")
    want = x.shape[axis:]
    for name, t in zip(("scale", "bias"), types[1:], strict=False):
        if t.dtype != x.dtype or t.rank != len(want):
            raise ShapeError(f"layer_norm {name} must be {x.dtype} with the normalised shape {want}, got {t}")
        for d, w in zip(t.shape, want, strict=True):
            if isinstance(d, int) and isinstance(w, int) and d != w:
                raise ShapeError(f"layer_norm {name} must be {x.dtype} with the normalised shape {want}, got {t}")
    if a["epsilon"] <= 0:
        raise ShapeError(f"layer_norm epsilon must be positive, got {a['epsilon']}")
    return [x]


def _layer_norm_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    x = xs[0]
    axes = tuple(range(a["axis"] % x.ndim, x.ndim))
    wide = x.astype(np.promote_types(x.dtype, np.float32))
    mean = wide.mean(axis=axes, keepdims=True)
    var = np.square(wide - mean).mean(axis=axes, keepdims=True)
    y = (wide - mean) / np.sqrt(var + a["epsilon"]) * xs[1]
    if len(xs) == 3:
        y = y + xs[2]
    return [y.astype(x.dtype)]


def _layer_norm_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    axis = a["axis"] % types[0].rank
    return e.emit("LayerNormalization", ins, axis=axis, epsilon=float(a["epsilon"]), stash_type=1)


register(
    OpDef(
        "layer_norm",
        inputs=("x", "scale", "bias?"),
        attrs=(Attr("axis", "int", -1), Attr("epsilon", "float", 1e-3)),
        infer=_layer_norm_infer,
        reference=_layer_norm_ref,
        onnx=_layer_norm_onnx,
        doc=(
            "y = (x - mean) / sqrt(var + epsilon) * scale + bias, statistics (biased variance) over the "
            "axes axis..rank-1; scale and bias have the shape x.shape[axis:] (ONNX LayerNormalization)"
        ),
    )
)
