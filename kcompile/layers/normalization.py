"""BatchNormalization with Keras 3 numerics.

y = (x - mean) / sqrt(var + epsilon) * gamma + beta along `axis`; epsilon 1e-3, momentum 0.99
("keep 99 %" of the moving statistics per update). At learning phase 0 mean/var are the moving
statistics; at 1 the batch's (biased variance). A layer with `trainable = False` always runs in
inference mode, as in Keras >= 2.1: it emits no learning-phase input at all.
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
