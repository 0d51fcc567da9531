"""Regularization layers: the identity at inference (learning phase 0), Keras' noise in training.

- SpatialDropout{1,2,3}D(rate)(x) = x * dropout_mask(m) in training, with m shaped
  [N, 1.., C] (channels_last) or [N, C, 1..] (channels_first): whole feature maps are dropped and
  the kept ones scaled by 1 / (1 - rate), one draw per sample and channel.
- GaussianNoise(stddev)(x) = x + N(0, stddev^2) in training.
- GaussianDropout(rate)(x) = x * N(1, rate / (1 - rate)) in training.
- AlphaDropout(rate, noise_shape)(x) = a * (x * keep + alpha_p * (1 - keep)) + b in training,
  keep ~ Bernoulli(1 - rate) of shape noise_shape (None entries: x's size), alpha_p = -selu_alpha *
  selu_scale, a = ((1 - rate) * (1 + rate * alpha_p^2))^-1/2, b = -a * alpha_p * rate.
- ActivityRegularization(l1, l2)(x) = x, with `activity_regularizer=L1L2(l1, l2)`: as in Keras, each
  call adds (l1 * sum|x| + l2 * sum x^2) / batch to the training and evaluation losses
  (`training.regularizers.activity_penalties`); the inference graph is the identity.

Each training branch is selected by `phase_select(train, x, learning_phase)`, which the
learning-phase folding pass replaces by one branch: at phase 0 only x remains. A rate (stddev) of
0 is the identity in both phases, as in Keras.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ModelError, ShapeError
from ..initializers import rng
from ..ir.builder import Builder
from ..ir.graph import Value
from ..ops import noise as _noise_ops  # noqa: F401  (registers phase_select, random_normal)
from ..ops import training_ops  # noqa: F401  (registers dropout_mask, compare)
from ..ops.elementwise import SELU_ALPHA, SELU_SCALE
from ..training.regularizers import L1L2
from .base import Layer
from .conv import _data_format


def _rate(layer: str, what: str, value: Any, high: float, closed: bool) -> float:
    ok = isinstance(value, int | float | np.floating) and not isinstance(value, bool)
    ok = ok and 0 <= value and (value <= high if closed else value < high)
    if not ok:
        raise ModelError(f"{layer}: {what} must be a number in [0, {high}{']' if closed else ')'}, got {value!r}")
    return float(value)


def _seed(seed: Any) -> int:
    return int(seed) if seed is not None else int(rng().integers(0, 2**31 - 1))


def _select(b: Builder, train: Value, x: Value) -> Value:
    return b.op("phase_select", [train, x, b.learning_phase()])


def _const(b: Builder, value: float, x: Value) -> Value:
    return b.constant(np.array(value, x.type.dtype), x.type.dtype)


def _noise_like(b: Builder, x: Value, broadcast_axes: Sequence[int]) -> Value:
    """A value shaped like x with size 1 on `broadcast_axes` (a draw's shape, Keras' noise_shape)."""
    if not broadcast_axes:
        return x
    return b.op("reduce_max", [x], axes=tuple(broadcast_axes), keepdims=True)


class _SpatialDropout(Layer):
    phase_dependent = True
    rank = 1

    def __init__(self, rate: float, data_format: str | None = None, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rate = _rate(type(self).__name__, "rate", rate, 1.0, closed=True)
        self.seed = seed
        self._seed = _seed(seed)
        self.channels_last = _data_format(data_format)
        self.data_format = "channels_last" if self.channels_last else "channels_first"

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        r = self.rank + 2
        if x.type.rank != r:
            raise ShapeError(
                f"{type(self).__name__} expects a rank-{r} input (batch, {self.rank} spatial axes, channels), "
                f"got {x.type}"
            )
        if self.rate == 0.0:
            return b.op("identity", [x])
        spatial = tuple(range(1, r - 1)) if self.channels_last else tuple(range(2, r))
        mask = b.op("dropout_mask", [_noise_like(b, x, spatial)], rate=self.rate, seed=self._seed)
        return _select(b, b.op("mul", [x, mask]), x)


class SpatialDropout1D(_SpatialDropout):
    """Dropout of whole channels of x[N, steps, C] (noise shape [N, 1, C])."""

    rank = 1

    def __init__(self, rate: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(rate, None, seed, **kwargs)


class SpatialDropout2D(_SpatialDropout):
    rank = 2


class SpatialDropout3D(_SpatialDropout):
    rank = 3


class GaussianNoise(Layer):
    phase_dependent = True

    def __init__(self, stddev: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stddev = _rate("GaussianNoise", "stddev", stddev, 1.0, closed=True)
        self.seed = seed
        self._seed = _seed(seed)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        if self.stddev == 0.0:
            return b.op("identity", [x])
        noise = b.op("random_normal", [x], mean=0.0, stddev=self.stddev, seed=self._seed)
        return _select(b, b.op("add", [x, noise]), x)


class GaussianDropout(Layer):
    phase_dependent = True

    def __init__(self, rate: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # rate 1 has no finite training behaviour (Keras divides by 1 - rate).
        self.rate = _rate("GaussianDropout", "rate", rate, 1.0, closed=False)
        self.seed = seed
        self._seed = _seed(seed)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        if self.rate == 0.0:
            return b.op("identity", [x])
        stddev = math.sqrt(self.rate / (1.0 - self.rate))
        noise = b.op("random_normal", [x], mean=1.0, stddev=stddev, seed=self._seed)
        return _select(b, b.op("mul", [x, noise]), x)


class AlphaDropout(Layer):
    phase_dependent = True

    def __init__(
        self, rate: float, noise_shape: Sequence[int | None] | None = None, seed: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.rate = _rate("AlphaDropout", "rate", rate, 1.0, closed=False)
        if noise_shape is not None and (isinstance(noise_shape, str) or not isinstance(noise_shape, Sequence)):
            raise ModelError(f"AlphaDropout: noise_shape must be a tuple (None or 1 per axis), got {noise_shape!r}")
        self.noise_shape = tuple(noise_shape) if noise_shape is not None else None
        self.seed = seed
        self._seed = _seed(seed)

    def _broadcast_axes(self, x: Value) -> tuple[int, ...]:
        if self.noise_shape is None:
            return ()
        if len(self.noise_shape) != x.type.rank:
            raise ShapeError(f"AlphaDropout noise_shape {self.noise_shape} does not have the rank of {x.type}")
        axes = []
        for i, (n, d) in enumerate(zip(self.noise_shape, x.type.shape, strict=True)):
            if n is None or n == d:
                continue
            if n != 1:
                raise ShapeError(
                    f"AlphaDropout noise_shape {self.noise_shape} must hold None, 1 or the input's size per axis, "
                    f"got {n} for axis {i} of {x.type}"
                )
            axes.append(i)
        return tuple(axes)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        if self.rate == 0.0:
            return b.op("identity", [x])
        rate = self.rate
        alpha_p = -SELU_ALPHA * SELU_SCALE
        a = ((1 - rate) * (1 + rate * alpha_p**2)) ** -0.5
        shift = -a * alpha_p * rate
        mask = b.op("dropout_mask", [_noise_like(b, x, self._broadcast_axes(x))], rate=rate, seed=self._seed)
        keep = b.op("cast", [b.op("compare", [mask, _const(b, 0.0, x)], mode="greater")], to=x.type.dtype)
        dropped = b.op("sub", [_const(b, 1.0, x), keep])
        y = b.op("add", [b.op("mul", [x, keep]), b.op("mul", [_const(b, alpha_p, x), dropped])])
        train = b.op("add", [b.op("mul", [_const(b, a, x), y]), _const(b, shift, x)])
        return _select(b, train, x)


class ActivityRegularization(Layer):
    """The identity whose calls add Keras' activity penalty (l1 * sum|x| + l2 * sum x^2) / batch to
    the training and evaluation losses."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0, **kwargs: Any) -> None:
        if "activity_regularizer" in kwargs:
            raise ModelError("ActivityRegularization sets its activity_regularizer from l1 and l2; do not pass one")
        l1 = _rate("ActivityRegularization", "l1", l1, math.inf, closed=False)
        l2 = _rate("ActivityRegularization", "l2", l2, math.inf, closed=False)
        super().__init__(activity_regularizer=L1L2(l1=l1, l2=l2), **kwargs)
        self.l1, self.l2 = l1, l2

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        return b.op("identity", [x])
