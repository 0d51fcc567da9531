"""The ops of Keras' noise layers (GaussianNoise, GaussianDropout, AlphaDropout, SpatialDropout).

- `phase_select(train, infer, phase)`: `train` when the learning phase is True, `infer` when it
  is False; `FoldLearningPhasePass` replaces it by the chosen input, so at inference the training
  branch is dead code and disappears. A layer whose training behaviour is not a plain `dropout`
  emits both branches and selects with it.
- `random_normal(x, mean, stddev, seed)`: values drawn from N(mean, stddev^2) shaped like x
  (seeded; a new draw per run, like `dropout_mask`). Its output carries no gradient.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ShapeError
from ..ir.types import FLOAT_DTYPES, TensorType
from .registry import Attr, OnnxEmitter, OpDef, RefContext, register


# phase_select --------------------------------------------------------------------------------
def _phase_select_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    train, infer, phase = types
    if phase != TensorType("bool", ()):
        raise ShapeError(f"phase_select's learning phase must be bool[], got {phase}")
    if train != infer:
        raise ShapeError(f"phase_select's branches must have one type, got {train} and {infer}")
    return [train]


def _phase_select_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    train, infer, phase = xs
    return [train if bool(phase) else infer]


register(
    OpDef(
        "phase_select",
        inputs=("train", "infer", "phase"),
        infer=_phase_select_infer,
        reference=_phase_select_ref,
        onnx=lambda e, ins, a, types: e.emit("Where", [ins[2], ins[0], ins[1]]),
        fold_phase=lambda node, training: node.inputs[0] if training else node.inputs[1],
        doc="y = train if the learning phase is True else infer (folded away once the phase is known)",
    )
)


# random_normal -------------------------------------------------------------------------------
def _random_normal_infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
    if types[0].dtype not in FLOAT_DTYPES:
        raise ShapeError(f"random_normal needs a floating-point input, got {types[0]}")
    if a["stddev"] < 0:
        raise ShapeError(f"random_normal stddev must be >= 0, got {a['stddev']}")
    return [types[0]]


def _random_normal_ref(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
    z = ctx.rng(a["seed"]).standard_normal(xs[0].shape)
    return [(a["mean"] + a["stddev"] * z).astype(xs[0].dtype)]


def _random_normal_onnx(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
    if a["stddev"] == 0.0:
        # onnxruntime's RandomNormalLike refuses scale 0; the draw is then the constant mean.
        mean = e.const(np.array(a["mean"], types[0].dtype), "mean")
        return e.emit("Expand", [mean, e.emit("Shape", [ins[0]])[0]])
    return e.emit("RandomNormalLike", [ins[0]], mean=float(a["mean"]), scale=float(a["stddev"]), seed=float(a["seed"]))


register(
    OpDef(
        "random_normal",
        inputs=("like",),
        attrs=(Attr("mean", "float", 0.0), Attr("stddev", "float", 1.0), Attr("seed", "int", 0)),
        infer=_random_normal_infer,
        reference=_random_normal_ref,
        onnx=_random_normal_onnx,
        doc="y ~ N(mean, stddev^2) shaped like x (seeded; a new draw per run)",
    )
)
