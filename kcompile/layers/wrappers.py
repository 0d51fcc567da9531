"""TimeDistributed: one layer, or a model used as a layer, applied to every time slice.

TimeDistributed(layer)(x[N, T, *in]) = split(layer(merge(x)))  with
- merge: x -> [N*T, *in], a `reshape(-1, *in)`; when some of `in` are symbolic, the per-step axes
  are moved first (where reshape's 0 codes copy them), merged, and moved back;
- split: y[N*T, *out] -> [N, T, *out], a `reshape(N, T, *out)` when every size is known, else
  `unflatten_like(y, x, axes=2)`, which reads N and T from x at run time, so a symbolic batch and a
  symbolic (None) time length both survive, and the output keeps x's batch and time symbols.
Keras 3 runs `layer.call` on each slice `x[:, t]`; every layer here treats the samples of a batch
independently at inference, so one call on the N*T slices gives the same numbers.

The wrapped layer is built when the wrapper is first called, on a per-step Input `[batch, *in]`,
under the wrapper's name scope (Keras names its weights `time_distributed/dense/kernel`); a model
that is built already keeps its weights and names. The weights are the wrapped layer's (Keras'
`get_weights()` order), it keeps its own `trainable` flag, and setting the wrapper's flag sets the
wrapped layer's, as in Keras. Masks (Keras 3): the output carries the input's mask unchanged
(`MASK_PRESERVING` in recurrent.py); the outer [N, T] mask is not handed to the wrapped layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ModelError, ShapeError
from ..ir.builder import Builder
from ..ir.graph import Param, Value
from ..ir.types import TensorType
from .base import InputLayer, KTensor, Layer, LayerCall, current_scope
from .recurrent import _weight_scope


class TimeDistributed(Layer):
    """Keras' TimeDistributed wrapper: `TimeDistributed(Conv2D(8, 3))(video[N, T, H, W, C])`."""

    def __init__(self, layer: Layer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(layer, Layer) or isinstance(layer, InputLayer):
            raise ModelError(
                f"TimeDistributed wraps a layer or a model, got {type(layer).__name__}; "
                "write TimeDistributed(Dense(8)) or TimeDistributed(cnn)"
            )
        self.layer = layer
        self._step: LayerCall | None = None

    # Weights and flags are the wrapped layer's ------------------------------------------------
    @property
    def weights(self) -> list[Param]:
        return self.layer.weights

    def set_weights(self, values: Sequence[np.ndarray]) -> None:
        self.layer.set_weights(values)

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._trainable = bool(value)
        self.layer.trainable = value

    @property
    def uses_learning_phase(self) -> bool:
        return self.layer.uses_learning_phase

    def get_config(self) -> dict[str, Any]:
        return {"layer": self.layer, "name": self.name, "trainable": self.trainable, "dtype": self.dtype}

    # Calls ---------------------------------------------------------------------------------
    def build(self, input_types: list[TensorType]) -> None:
        x = input_types[0]
        if x.rank < 3:
            raise ShapeError(f"TimeDistributed needs an input [batch, time, ...] of rank 3 or more, got {x}")
        step = InputLayer(
            shape=[d if isinstance(d, int) else None for d in x.shape[2:]], dtype=x.dtype, name=f"{self.name}_step"
        )
        # Under the active name scope, or else the one active when the wrapper was made.
        at = self.name if current_scope() else "/".join(p for p in (self._scope_at_init, self.name) if p)
        with _weight_scope(at):
            out = self.layer(step.output)
        if not isinstance(out, KTensor):
            raise ModelError(
                f"TimeDistributed '{self.name}': the wrapped {type(self.layer).__name__} '{self.layer.name}' "
                f"gives {len(out)} outputs per step; TimeDistributed takes a layer with one output"
            )
        # The recorded per-step call: its kwargs (an RNN's state count and mask) are replayed.
        self._step = out._call

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        assert self._step is not None
        if x.type.rank < 3:
            raise ShapeError(f"TimeDistributed needs an input [batch, time, ...] of rank 3 or more, got {x.type}")
        (y,) = self.layer.emit(b, [_merge(b, x)], self._step.kwargs)
        if y.type.rank < 1:
            raise ShapeError(f"the wrapped layer gives a scalar per step, got {y.type}")
        return _split(b, y, x)


def _merge(b: Builder, x: Value) -> Value:
    """[N, T, *in] -> [N*T, *in]."""
    rest = x.type.shape[2:]
    if all(isinstance(d, int) for d in rest):
        return b.op("reshape", [x], shape=(-1, *rest))
    # Symbolic per-step sizes: [*in, N, T] -> [*in, N*T] copies them (0 codes), then back.
    k = len(rest)
    moved = b.op("transpose", [x], perm=(*range(2, k + 2), 0, 1))
    merged = b.op("reshape", [moved], shape=(*([0] * k), -1))
    return b.op("transpose", [merged], perm=(k, *range(k)))


def _split(b: Builder, y: Value, x: Value) -> Value:
    """[N*T, *out] -> [N, T, *out], N and T those of x."""
    head, out = x.type.shape[:2], y.type.shape[1:]
    if all(isinstance(d, int) for d in (*head, *out)):
        return b.op("reshape", [y], shape=(*head, *out))
    return b.op("unflatten_like", [y, x], axes=2)
