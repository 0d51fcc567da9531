"""The Keras 3 normalization layers, with Keras' numerics (checked against Keras fixtures).

- BatchNormalization: y = (x - mean) / sqrt(var + epsilon) * gamma + beta along `axis`; epsilon
  1e-3, momentum 0.99 ("keep 99 %" of the moving statistics per update). At learning phase 0
  mean/var are the moving statistics; at 1 the batch's (biased variance). A layer with
  `trainable = False` always runs in inference mode, as in Keras >= 2.1: it emits no
  learning-phase input at all.
- LayerNormalization over trailing axes -> one `layer_norm` op (ONNX LayerNormalization);
  over other axes, and with `rms_scaling`, Keras' arithmetic in primitives.
- GroupNormalization, RMSNormalization, UnitNormalization -> reductions and elementwise ops.
- Normalization (preprocessing, inference only) -> (x - mean) / max(sqrt(variance), 1e-7).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelError, ShapeError
from ..ir.builder import Builder
from ..ir.graph import Value
from ..ir.types import TensorType, normalize_axis
from .base import Layer


class BatchNormalization(Layer):
    phase_dependent = True

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        moving_mean_initializer: Any = "zeros",
        moving_variance_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.beta_regularizer = self.regularizer(beta_regularizer)
        self.gamma_regularizer = self.regularizer(gamma_regularizer)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ModelError(f"BatchNormalization axis must be an int, got {axis!r}")
        if not 0.0 <= momentum <= 1.0 or epsilon <= 0:
            raise ModelError(f"BatchNormalization needs 0 <= momentum <= 1 and epsilon > 0, got {momentum}, {epsilon}")
        self.axis, self.momentum, self.epsilon = axis, float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.initializers = (gamma_initializer, beta_initializer, moving_mean_initializer, moving_variance_initializer)

    def build(self, input_types: list[TensorType]) -> None:
        (t,) = input_types
        axis = normalize_axis(self.axis, t.rank, "BatchNormalization axis")
        c = t.shape[axis]
        if not isinstance(c, int):
            raise ShapeError(f"needs a known size on axis {self.axis}, got {t}")
        g, b, m, v = self.initializers
        self.gamma = self.add_weight("gamma", (c,), g) if self.scale else None
        self.beta = self.add_weight("beta", (c,), b) if self.center else None
        self.moving_mean = self.add_weight("moving_mean", (c,), m, trainable=False)
        self.moving_variance = self.add_weight("moving_variance", (c,), v, trainable=False)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        c = self.moving_mean.type.shape[0]
        axis = normalize_axis(self.axis, x.type.rank, "BatchNormalization axis")
        if x.type.shape[axis] != c:
            raise ShapeError(f"was built for {c} features on axis {self.axis}, got {x.type}")
        gamma = self.gamma if self.gamma is not None else b.constant(np.ones(c, x.type.dtype))
        beta = self.beta if self.beta is not None else b.constant(np.zeros(c, x.type.dtype))
        ins = [x, gamma, beta, self.moving_mean, self.moving_variance]
        if self.trainable:
            ins.append(b.learning_phase())
        return b.op("batch_norm", ins, axis=axis, epsilon=self.epsilon, momentum=self.momentum)

    @property
    def uses_learning_phase(self) -> bool:
        return self.trainable


# Shared helpers ------------------------------------------------------------------------------
def _axis_list(axis: Any, layer: str) -> list[int]:
    """Keras' `axis` argument (an int or a list/tuple of ints) as a list."""
    items = list(axis) if isinstance(axis, list | tuple) else [axis]
    for a in items:
        if isinstance(a, bool) or not isinstance(a, int | np.integer):
            raise ModelError(f"{layer} axis must be an int or a list of ints, got {axis!r}")
    return [int(a) for a in items]


def _static_dims(t: TensorType, axes: list[int], layer: str) -> tuple[int, ...]:
    dims = []
    for a in axes:
        d = t.shape[a]
        if not isinstance(d, int):
            raise ShapeError(f"{layer} needs a known size on axis {a}, got {t}")
        dims.append(d)
    return tuple(dims)


def _positive_axes(axes: list[int], rank: int, layer: str) -> list[int]:
    out = [normalize_axis(a, rank, f"{layer} axis") for a in axes]
    if len(set(out)) != len(out):
        raise ShapeError(f"{layer} axis {axes} names one axis twice for a rank-{rank} input")
    return out


def _const(b: Builder, value: float, dtype: str) -> Value:
    return b.constant(np.array(value, dtype), dtype)


def _rsqrt(b: Builder, v: Value, epsilon: float) -> Value:
    """1 / sqrt(v + epsilon)."""
    dt = v.type.dtype
    return b.op("div", [_const(b, 1.0, dt), b.op("sqrt", [b.op("add", [v, _const(b, epsilon, dt)])])])


def _broadcast_weight(b: Builder, w: Value, rank: int, axes: list[int]) -> Value:
    """A weight over `axes` (Keras' sorted order) as a rank-`rank` tensor, sizes 1 elsewhere.
    Like Keras' `_broadcast`, a plain reshape: a weight built over axes whose sorted order is not
    the positional one (e.g. [-1, 1]) keeps its flat order."""
    shape = [1] * rank
    for a, d in zip(axes, w.type.shape, strict=True):
        shape[a] = int(d)  # type: ignore[arg-type]
    if list(w.type.shape) == shape[rank - w.type.rank :] and all(s == 1 for s in shape[: rank - w.type.rank]):
        return w
    return b.op("reshape", [w], shape=tuple(shape))


# LayerNormalization --------------------------------------------------------------------------
class LayerNormalization(Layer):
    """Keras 3 LayerNormalization: per example, statistics over `axis` (an int or a list).

    Over trailing axes it is one `layer_norm` op (ONNX LayerNormalization). Over other axis sets
    it is Keras' `moments` arithmetic: mean, var = E[x^2] - mean^2, inv = rsqrt(var + eps) * gamma,
    y = x * inv + (beta - mean * inv). `rms_scaling=True` (deprecated in Keras) does not centre:
    y = x * rsqrt(var + eps) * gamma with the biased variance, and has no beta.
    """

    def __init__(
        self,
        axis: int | list[int] | tuple[int, ...] = -1,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        rms_scaling: bool = False,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.axis = _axis_list(axis, "LayerNormalization")
        if epsilon <= 0:
            raise ModelError(f"LayerNormalization epsilon must be positive, got {epsilon}")
        self.epsilon = float(epsilon)
        self.center, self.scale, self.rms_scaling = bool(center), bool(scale), bool(rms_scaling)
        self.initializers = (gamma_initializer, beta_initializer)
        self.beta_regularizer = self.regularizer(beta_regularizer)
        self.gamma_regularizer = self.regularizer(gamma_regularizer)

    def build(self, input_types: list[TensorType]) -> None:
        (t,) = input_types
        self.axes = sorted(self.axis)  # Keras sorts the raw values: weights follow that order
        _positive_axes(self.axes, t.rank, "LayerNormalization")
        shape = _static_dims(t, self.axes, "LayerNormalization")
        g, bt = self.initializers
        self.gamma = self.add_weight("gamma", shape, g) if self.scale or self.rms_scaling else None
        self.beta = self.add_weight("beta", shape, bt) if self.center and not self.rms_scaling else None

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        rank, dt = x.type.rank, x.type.dtype
        pos = _positive_axes(self.axes, rank, "LayerNormalization")
        shape = _static_dims(x.type, self.axes, "LayerNormalization")
        for w in (self.gamma, self.beta):
            if w is not None and w.type.shape != shape:
                raise ShapeError(f"was built for sizes {w.type.shape} on axes {self.axes}, got {x.type}")
        norm = tuple(sorted(pos))
        if self.rms_scaling:
            mean = b.op("reduce_mean", [x], axes=norm, keepdims=True)
            centered = b.op("sub", [x, mean])
            var = b.op("reduce_mean", [b.op("mul", [centered, centered])], axes=norm, keepdims=True)
            y = b.op("mul", [x, _rsqrt(b, var, self.epsilon)])
            assert self.gamma is not None
            return b.op("mul", [y, _broadcast_weight(b, self.gamma, rank, self.axes)])
        if list(norm) == list(range(rank - len(norm), rank)):
            # Trailing axes: one layer_norm; its scale/bias have the shape x.shape[k:].
            k = rank - len(norm)
            tail = tuple(int(d) for d in x.type.shape[k:])  # type: ignore[arg-type]

            def trailing(w: Value) -> Value:
                return w if w.type.shape == tail else b.op("reshape", [w], shape=tail)

            gamma = trailing(self.gamma) if self.gamma is not None else b.constant(np.ones(tail, dt), dt)
            ins = [x, gamma] + ([trailing(self.beta)] if self.beta is not None else [])
            return b.op("layer_norm", ins, axis=k, epsilon=self.epsilon)
        # Keras' moments path: y = x * inv + (beta - mean * inv).
        mean = b.op("reduce_mean", [x], axes=norm, keepdims=True)
        sq = b.op("reduce_mean", [b.op("mul", [x, x])], axes=norm, keepdims=True)
        var = b.op("sub", [sq, b.op("mul", [mean, mean])])
        inv = _rsqrt(b, var, self.epsilon)
        if self.gamma is not None:
            inv = b.op("mul", [inv, _broadcast_weight(b, self.gamma, rank, self.axes)])
        res = b.op("neg", [b.op("mul", [mean, inv])])
        if self.beta is not None:
            res = b.op("add", [res, _broadcast_weight(b, self.beta, rank, self.axes)])
        return b.op("add", [b.op("mul", [x, inv]), res])


# GroupNormalization --------------------------------------------------------------------------
class GroupNormalization(Layer):
    """Keras 3 GroupNormalization: the channels on `axis` split into `groups`; per example and
    group, statistics over the group's channels and every other non-batch axis.

    Composed of primitives in x's own shape (so any axis and any symbolic spatial size work):
    per-channel means of x and x^2 over the non-channel axes, reshaped to [N, groups, C/groups]
    and averaged again (equal counts per channel make this the group mean); var = E[x^2] - mean^2
    as Keras' `moments`; then Keras' y = x * inv + (beta - mean * inv) with inv = rsqrt(var + eps)
    * gamma per channel. ONNX GroupNormalization is not used: onnxruntime runs it as its function
    body (primitives) on CPU, and its layout is channels-first only.
    """

    def __init__(
        self,
        groups: int = 32,
        axis: int = -1,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(groups, bool) or not isinstance(groups, int) or (groups <= 0 and groups != -1):
            raise ModelError(f"GroupNormalization groups must be a positive int or -1, got {groups!r}")
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ModelError(f"GroupNormalization axis must be an int, got {axis!r}")
        if epsilon <= 0:
            raise ModelError(f"GroupNormalization epsilon must be positive, got {epsilon}")
        self.groups, self.axis, self.epsilon = groups, axis, float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.initializers = (gamma_initializer, beta_initializer)
        self.beta_regularizer = self.regularizer(beta_regularizer)
        self.gamma_regularizer = self.regularizer(gamma_regularizer)

    def _channel_axis(self, t: TensorType) -> int:
        axis = normalize_axis(self.axis, t.rank, "GroupNormalization axis")
        if axis == 0:
            raise ShapeError(f"axis {self.axis} is the batch axis; GroupNormalization needs a channel axis")
        return axis

    def build(self, input_types: list[TensorType]) -> None:
        (t,) = input_types
        (c,) = _static_dims(t, [self._channel_axis(t)], "GroupNormalization")
        if self.groups == -1:
            self.groups = c
        if c < self.groups or c % self.groups:
            raise ShapeError(f"{c} channels cannot be split into {self.groups} groups of equal size")
        g, bt = self.initializers
        self.gamma = self.add_weight("gamma", (c,), g) if self.scale else None
        self.beta = self.add_weight("beta", (c,), bt) if self.center else None

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        rank, dt = x.type.rank, x.type.dtype
        axis = self._channel_axis(x.type)
        (c,) = _static_dims(x.type, [axis], "GroupNormalization")
        g = self.groups
        if c % g or (self.gamma is not None and self.gamma.type.shape != (c,)):
            raise ShapeError(f"was built for {g} groups of the channels on axis {self.axis}, got {x.type}")
        others = tuple(i for i in range(1, rank) if i not in (axis,))

        def group_mean(v: Value) -> Value:
            per_channel = b.op("reduce_mean", [v], axes=others, keepdims=True) if others else v
            grouped = b.op("reshape", [per_channel], shape=(0, g, c // g))
            return b.op("reduce_mean", [grouped], axes=(2,), keepdims=True)  # [N, g, 1]

        mean = group_mean(x)
        var = b.op("sub", [group_mean(b.op("mul", [x, x])), b.op("mul", [mean, mean])])
        gamma = self.gamma if self.gamma is not None else b.constant(np.ones(c, dt), dt)
        beta = self.beta if self.beta is not None else b.constant(np.zeros(c, dt), dt)
        inv = b.op("mul", [_rsqrt(b, var, self.epsilon), b.op("reshape", [gamma], shape=(g, c // g))])
        res = b.op("sub", [b.op("reshape", [beta], shape=(g, c // g)), b.op("mul", [mean, inv])])
        # [N, g, c/g] -> [N, 1.., c, ..1]: per example and channel, broadcast over the rest.
        spec = tuple(0 if i == 0 else c if i == axis else 1 for i in range(rank))
        inv_c = b.op("reshape", [inv], shape=spec)
        res_c = b.op("reshape", [res], shape=spec)
        return b.op("add", [b.op("mul", [x, inv_c]), res_c])


# RMSNormalization ----------------------------------------------------------------------------
class RMSNormalization(Layer):
    """Keras 3 RMSNormalization: y = x * rsqrt(mean(x^2 over axis) + epsilon) * scale.

    One weight, `scale` (initialised to ones, not configurable in Keras). Keras multiplies by
    `scale` without broadcasting it to the normalised axes, so only trailing axes are meaningful
    (other axis sets fail or misapply the scale in Keras); kcompile accepts trailing axes only.
    """

    def __init__(self, axis: int | list[int] | tuple[int, ...] = -1, epsilon: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axis = _axis_list(axis, "RMSNormalization")
        if epsilon <= 0:
            raise ModelError(f"RMSNormalization epsilon must be positive, got {epsilon}")
        self.epsilon = float(epsilon)

    def _trailing(self, t: TensorType) -> tuple[int, ...]:
        axes = sorted(self.axis)
        pos = _positive_axes(axes, t.rank, "RMSNormalization")
        if pos != list(range(t.rank - len(pos), t.rank)):
            raise ShapeError(
                f"axis {self.axis} must be the trailing axes of {t} (in order): Keras multiplies by "
                "the scale without broadcasting it to other axes"
            )
        return tuple(pos)

    def build(self, input_types: list[TensorType]) -> None:
        (t,) = input_types
        pos = self._trailing(t)
        self.scale = self.add_weight("scale", _static_dims(t, list(pos), "RMSNormalization"), "ones")

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        pos = self._trailing(x.type)
        if tuple(x.type.shape[pos[0] :]) != self.scale.type.shape:
            raise ShapeError(f"was built for sizes {self.scale.type.shape} on axes {self.axis}, got {x.type}")
        ms = b.op("reduce_mean", [b.op("mul", [x, x])], axes=pos, keepdims=True)
        return b.op("mul", [b.op("mul", [x, _rsqrt(b, ms, self.epsilon)]), self.scale])


# UnitNormalization ---------------------------------------------------------------------------
class UnitNormalization(Layer):
    """Keras 3 UnitNormalization: y = x * min(rsqrt(sum(x^2 over axis)), 1e12), computed as
    x / sqrt(max(sum(x^2), 1e-24)) (the same value, without an infinity for an all-zero slice)."""

    def __init__(self, axis: int | list[int] | tuple[int, ...] = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axis = _axis_list(axis, "UnitNormalization")

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        axes = tuple(sorted(_positive_axes(self.axis, x.type.rank, "UnitNormalization")))
        ss = b.op("reduce_sum", [b.op("mul", [x, x])], axes=axes, keepdims=True)
        floor = _const(b, 1e-24, x.type.dtype)
        return b.op("div", [x, b.op("sqrt", [b.op("maximum", [ss, floor])])])


# Normalization (preprocessing) ---------------------------------------------------------------
KERAS_EPSILON = 1e-7  # keras.config.epsilon(), which Normalization reads


class Normalization(Layer):
    """Keras 3 Normalization (inference): y = (x - mean) / max(sqrt(variance), 1e-7), or with
    `invert=True` y = mean + x * max(sqrt(variance), 1e-7).

    `axis` (an int, a list, or None for scalar statistics) names the axes that keep their own
    statistics. Given `mean` and `variance`, they are constants (aligned right-to-left to the kept
    axes, as Keras does); without them the layer has Keras' non-trainable weights `mean`,
    `variance` (the kept axes' shape) and `count` (int32, unused at inference), which a saved
    adapted model fills.
    """

    def __init__(
        self,
        axis: int | list[int] | tuple[int, ...] | None = -1,
        mean: Any = None,
        variance: Any = None,
        invert: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.axis = [] if axis is None else _axis_list(axis, "Normalization")
        if (mean is None) != (variance is None):
            raise ModelError("Normalization needs both `mean` and `variance`, or neither")
        self.input_mean = None if mean is None else np.asarray(mean, self.dtype)
        self.input_variance = None if variance is None else np.asarray(variance, self.dtype)
        if self.input_mean is not None and self.input_variance is not None:
            if self.input_mean.shape != self.input_variance.shape:
                raise ModelError(
                    f"Normalization mean and variance must have one shape, got {self.input_mean.shape} "
                    f"and {self.input_variance.shape}"
                )
            if self.input_mean.ndim > len(self.axis):
                raise ModelError(
                    f"Normalization mean of shape {self.input_mean.shape} has more dimensions than the "
                    f"axes it is kept along ({tuple(self.axis)})"
                )
            if np.any(self.input_variance < 0):
                raise ModelError("Normalization variance must not be negative")
        self.invert = bool(invert)

    def _kept(self, t: TensorType) -> tuple[list[int], tuple[int, ...]]:
        keep = sorted(_positive_axes(self.axis, t.rank, "Normalization"))
        return keep, _static_dims(t, keep, "Normalization")

    def build(self, input_types: list[TensorType]) -> None:
        (t,) = input_types
        _, shape = self._kept(t)
        if self.input_mean is None:
            self.mean = self.add_weight("mean", shape, "zeros", trainable=False)
            self.variance = self.add_weight("variance", shape, "ones", trainable=False)
            # Keras' adapt counter: an int32 scalar; the dtype is set for this one weight.
            saved, self.dtype = self.dtype, "int32"
            try:
                self.count = self.add_weight("count", (), "zeros", trainable=False)
            finally:
                self.dtype = saved

    def _statistics(self, b: Builder, t: TensorType) -> tuple[Value, Value]:
        keep, shape = self._kept(t)
        bshape = [1] * t.rank
        for a, d in zip(keep, shape, strict=True):
            bshape[a] = d
        if self.input_mean is None:
            if self.mean.type.shape != shape:
                raise ShapeError(f"was built for sizes {self.mean.type.shape} on axes {self.axis}, got {t}")
            spec = tuple(bshape)
            return b.op("reshape", [self.mean], shape=spec), b.op("reshape", [self.variance], shape=spec)
        assert self.input_variance is not None
        # Keras: each dimension of the given statistics maps to a kept axis, right to left.
        expanded = [1] * t.rank
        for i in range(1, self.input_mean.ndim + 1):
            expanded[keep[-i]] = self.input_mean.shape[-i]
        try:
            mean = np.broadcast_to(self.input_mean.reshape(expanded), bshape)
            var = np.broadcast_to(self.input_variance.reshape(expanded), bshape)
        except ValueError:
            raise ShapeError(
                f"mean/variance of shape {self.input_mean.shape} do not broadcast to the kept axes {tuple(keep)}"
            ) from None
        dt = t.dtype
        return b.constant(np.ascontiguousarray(mean, dt), dt), b.constant(np.ascontiguousarray(var, dt), dt)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        mean, var = self._statistics(b, x.type)
        std = b.op("maximum", [b.op("sqrt", [var]), _const(b, KERAS_EPSILON, x.type.dtype)])
        if self.invert:
            return b.op("add", [mean, b.op("mul", [x, std])])
        return b.op("div", [b.op("sub", [x, mean]), std])
