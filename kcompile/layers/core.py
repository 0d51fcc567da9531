"""Core layers: Dense, Activation, Dropout, Flatten, Reshape, Embedding.

Dense(x[..., in]) = act(x @ kernel[in, out] + bias[out]); Dropout(x) = x when the learning phase
is 0; Embedding(ids) = embeddings[ids] with embeddings[input_dim, output_dim].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelError, ShapeError
from ..initializers import rng
from ..ir.builder import Builder
from ..ir.graph import Value
from ..ir.types import INT_DTYPES, TensorType
from .activations import apply_activation, get_activation
from .base import Layer


def _positive_int(layer: str, what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelError(f"{layer}: {what} must be a positive integer, got {value!r}")
    return value


class Dense(Layer):
    def __init__(
        self,
        units: int,
        activation: str | None = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.units = _positive_int("Dense", "units", units)
        self.kernel_regularizer = self.regularizer(kernel_regularizer)
        self.bias_regularizer = self.regularizer(bias_regularizer)
        self.activation = activation
        self._act = get_activation(activation)
        self.use_bias = use_bias
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer

    def build(self, input_types: list[TensorType]) -> None:
        (t,) = input_types
        if t.rank < 2 or not isinstance(t.shape[-1], int):
            raise ShapeError(f"Dense needs an input of rank >= 2 with a known last dimension, got {t}")
        self.kernel = self.add_weight("kernel", (t.shape[-1], self.units), self.kernel_initializer)
        self.bias = self.add_weight("bias", (self.units,), self.bias_initializer) if self.use_bias else None

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        want = self.kernel.type.shape[0]
        if x.type.shape[-1] != want:
            raise ShapeError(
                f"expects inputs whose last dimension is {want} (its kernel is {self.kernel.type}), got {x.type}"
            )
        y = b.op("matmul", [x, self.kernel])
        if self.bias is not None:
            y = b.op("add", [y, self.bias])
        return apply_activation(b, y, self._act)


class Activation(Layer):
    def __init__(self, activation: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.activation = activation
        self._act = get_activation(activation)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        return apply_activation(b, x, self._act)


class ReLU(Layer):
    """Keras ReLU: min(max_value, x) for x >= 0, negative_slope * x below (threshold 0)."""

    def __init__(
        self, max_value: float | None = None, negative_slope: float = 0.0, threshold: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if max_value is not None and max_value < 0:
            raise ModelError(f"ReLU max_value must be >= 0, got {max_value}")
        if negative_slope < 0:
            raise ModelError(f"ReLU negative_slope must be >= 0, got {negative_slope}")
        if threshold != 0.0:
            raise ModelError("ReLU with a non-zero threshold is not supported yet; use threshold=0")
        self.max_value, self.negative_slope, self.threshold = max_value, float(negative_slope), float(threshold)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        if self.negative_slope == 0.0:
            if self.max_value is not None:
                return b.op("clip", [x], lo=0.0, hi=float(self.max_value))
            return b.op("relu", [x])
        y = b.op("leaky_relu", [x], alpha=self.negative_slope)
        if self.max_value is not None:
            y = b.op("minimum", [y, b.constant(np.asarray(self.max_value, x.type.dtype))])
        return y


class LeakyReLU(Layer):
    def __init__(self, negative_slope: float = 0.3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.negative_slope = float(negative_slope)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        return b.op("leaky_relu", [x], alpha=self.negative_slope)


class ELU(Layer):
    def __init__(self, alpha: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alpha = float(alpha)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        return b.op("elu", [x], alpha=self.alpha)


class Softmax(Layer):
    def __init__(self, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axis = axis

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        return b.op("softmax", [x], axis=self.axis)


class Dropout(Layer):
    """Inverted dropout while training; the identity at inference (learning phase 0)."""

    phase_dependent = True

    def __init__(self, rate: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ModelError(f"Dropout rate must be a number in [0, 1], got {rate!r}")
        self.rate = float(rate)
        self.seed = int(seed) if seed is not None else int(rng().integers(0, 2**31 - 1))

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        return b.op("dropout", [x, b.learning_phase()], rate=self.rate, seed=self.seed)


class Flatten(Layer):
    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        if x.type.rank == 1:
            return b.op("reshape", [x], shape=(-1, 1))
        return b.op("reshape", [x], shape=(0, -1))


class Reshape(Layer):
    """Reshape the non-batch dimensions to `target_shape` (one entry may be -1)."""

    def __init__(self, target_shape: tuple[int, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        target = tuple(target_shape) if isinstance(target_shape, list | tuple) else (target_shape,)
        if any(isinstance(d, bool) or not isinstance(d, int) or d == 0 or d < -1 for d in target):
            raise ModelError(f"Reshape target_shape must hold positive ints and at most one -1, got {target_shape!r}")
        if sum(1 for d in target if d == -1) > 1:
            raise ModelError(f"Reshape target_shape may hold one -1, got {target_shape!r}")
        self.target_shape = target

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        return b.op("reshape", [x], shape=(0, *self.target_shape))


class Embedding(Layer):
    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        embeddings_initializer: Any = "random_uniform",
        embeddings_regularizer: Any = None,
        mask_zero: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.embeddings_regularizer = self.regularizer(embeddings_regularizer)
        # Id 0 is padding: the recurrent layers after this one skip those steps (Keras' mask).
        self.mask_zero = bool(mask_zero)
        self.input_dim = _positive_int("Embedding", "input_dim", input_dim)
        self.output_dim = _positive_int("Embedding", "output_dim", output_dim)
        self.embeddings_initializer = embeddings_initializer

    def build(self, input_types: list[TensorType]) -> None:
        self.embeddings = self.add_weight("embeddings", (self.input_dim, self.output_dim), self.embeddings_initializer)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        if x.type.dtype not in INT_DTYPES:
            x = b.op("cast", [x], to="int64")
        return b.op("gather", [self.embeddings, x], axis=0)
