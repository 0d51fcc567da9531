"""Core layers: Dense, Activation, Dropout, Flatten, Reshape, Embedding, Identity, Rescaling, and
the activation layers (ReLU, LeakyReLU, PReLU, ELU, Softmax).

Dense(x[..., in]) = act(x @ kernel[in, out] + bias[out]); Dropout(x) = x when the learning phase
is 0; Embedding(ids) = embeddings[ids] with embeddings[input_dim, output_dim];
Rescaling(x) = cast(x) * scale + offset; PReLU(x) = relu(x) - alpha * relu(-x) with alpha shaped
like x without the batch axis (size 1 on `shared_axes`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelError, ShapeError
from ..initializers import rng
from ..ir.builder import Builder
from ..ir.graph import Value
from ..ir.types import INT_DTYPES, TensorType
from ..ops import training_ops  # noqa: F401  (registers `compare`)
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
    """Keras ReLU: x above `threshold` (else 0), clipped to [0, max_value], minus
    negative_slope * (threshold - x) below the threshold."""

    def __init__(
        self, max_value: float | None = None, negative_slope: float = 0.0, threshold: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if max_value is not None and max_value < 0:
            raise ModelError(f"ReLU max_value must be >= 0, got {max_value}")
        if negative_slope < 0:
            raise ModelError(f"ReLU negative_slope must be >= 0, got {negative_slope}")
        if threshold < 0:
            raise ModelError(f"ReLU threshold must be >= 0, got {threshold}")
        self.max_value, self.negative_slope, self.threshold = max_value, float(negative_slope), float(threshold)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        if self.threshold != 0.0:
            return self._thresholded(b, x)
        if self.negative_slope == 0.0:
            if self.max_value is not None:
                return b.op("clip", [x], lo=0.0, hi=float(self.max_value))
            return b.op("relu", [x])
        y = b.op("leaky_relu", [x], alpha=self.negative_slope)
        if self.max_value is not None:
            y = b.op("minimum", [y, b.constant(np.asarray(self.max_value, x.type.dtype))])
        return y

    def _thresholded(self, b: Builder, x: Value) -> Value:
        # Keras: clip(x if x > threshold else 0, 0, max_value) - negative_slope * relu(threshold - x).
        dt = x.type.dtype
        t = b.constant(np.asarray(self.threshold, dt))
        above = b.op("compare", [x, t], mode="greater")
        y = b.op("where", [above, x, b.constant(np.asarray(0.0, dt))])
        if self.max_value is not None:
            y = b.op("clip", [y], lo=0.0, hi=float(self.max_value))
        if self.negative_slope != 0.0:
            below = b.op("relu", [b.op("sub", [t, x])])
            y = b.op("sub", [y, b.op("mul", [b.constant(np.asarray(self.negative_slope, dt)), below])])
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

    def __init__(self, rate: float, noise_shape: Any = None, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ModelError(f"Dropout rate must be a number in [0, 1], got {rate!r}")
        if noise_shape is not None and (isinstance(noise_shape, str) or not isinstance(noise_shape, list | tuple)):
            raise ModelError(f"Dropout noise_shape must be a tuple (None or 1 per axis), got {noise_shape!r}")
        self.rate = float(rate)
        # Keras' noise_shape: the mask's shape, None meaning the input's size (1: shared along that axis).
        self.noise_shape = tuple(noise_shape) if noise_shape is not None else None
        self.seed = int(seed) if seed is not None else int(rng().integers(0, 2**31 - 1))

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        shared = self._shared_axes(x)
        if not shared:
            return b.op("dropout", [x, b.learning_phase()], rate=self.rate, seed=self.seed)
        # One draw per position of noise_shape, broadcast along the shared axes.
        like = b.op("reduce_max", [x], axes=shared, keepdims=True)
        mask = b.op("dropout_mask", [like], rate=self.rate, seed=self.seed)
        return b.op("phase_select", [b.op("mul", [x, mask]), x, b.learning_phase()])

    def _shared_axes(self, x: Value) -> tuple[int, ...]:
        if self.noise_shape is None:
            return ()
        if len(self.noise_shape) != x.type.rank:
            raise ShapeError(f"Dropout noise_shape {self.noise_shape} does not have the rank of {x.type}")
        axes = []
        for i, (n, d) in enumerate(zip(self.noise_shape, x.type.shape, strict=True)):
            if n is None or n == d:
                continue
            if n != 1:
                raise ShapeError(f"Dropout noise_shape {self.noise_shape} must hold None, 1 or the input's sizes")
            axes.append(i)
        return tuple(axes)


class Flatten(Layer):
    """[N, ...] -> [N, prod(...)] in channels-last order; a channels_first input is moved to
    channels-last first, as Keras does, so the flattened order is the same for both formats."""

    def __init__(self, data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        fmt = data_format or "channels_last"
        if fmt not in ("channels_last", "channels_first"):
            raise ModelError(f"Flatten data_format must be 'channels_last' or 'channels_first', got {data_format!r}")
        self.data_format = fmt

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        if x.type.rank == 1:
            return b.op("reshape", [x], shape=(-1, 1))
        if self.data_format == "channels_first" and x.type.rank > 2:
            r = x.type.rank
            x = b.op("transpose", [x], perm=(0, *range(2, r), 1))
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


class Identity(Layer):
    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        return b.op("identity", [x])


def _scalar_or_array(layer: str, what: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelError(f"{layer}: {what} must be a number or a sequence of numbers, got {value!r}") from None
    if arr.dtype == object or not np.all(np.isfinite(arr)):
        raise ModelError(f"{layer}: {what} must hold finite numbers, got {value!r}")
    return arr


class Rescaling(Layer):
    """Rescaling(scale, offset)(x) = cast(x, dtype) * scale + offset (scale, offset broadcast
    against the trailing axes, as NumPy)."""

    def __init__(self, scale: Any, offset: Any = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale, self.offset = scale, offset
        self._scale = _scalar_or_array("Rescaling", "scale", scale)
        self._offset = _scalar_or_array("Rescaling", "offset", offset)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        dt = self.dtype
        if x.type.dtype != dt:
            x = b.op("cast", [x], to=dt)
        for arr in (self._scale, self._offset):
            if arr.ndim > x.type.rank:
                raise ShapeError(f"Rescaling's {arr.shape}-shaped scale/offset does not broadcast against {x.type}")
        y = b.op("mul", [x, b.constant(self._scale.astype(dt), dt)])
        return b.op("add", [y, b.constant(self._offset.astype(dt), dt)])


class PReLU(Layer):
    """PReLU(x) = relu(x) - alpha * relu(-x) (Keras' formula), alpha[input shape without batch]
    with size 1 on the `shared_axes`."""

    def __init__(
        self,
        alpha_initializer: Any = "zeros",
        alpha_regularizer: Any = None,
        alpha_constraint: Any = None,
        shared_axes: int | list[int] | tuple[int, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if alpha_constraint is not None:
            raise ModelError(f"PReLU: alpha_constraint is not supported, got {alpha_constraint!r}")
        self.alpha_initializer = alpha_initializer
        self.alpha_regularizer = self.regularizer(alpha_regularizer)
        if shared_axes is None:
            self.shared_axes: tuple[int, ...] | None = None
        else:
            axes = (shared_axes,) if isinstance(shared_axes, int) else tuple(shared_axes)
            if any(isinstance(a, bool) or not isinstance(a, int) or a < 1 for a in axes):
                raise ModelError(f"PReLU: shared_axes must be axes >= 1 (the batch is axis 0), got {shared_axes!r}")
            self.shared_axes = axes

    def build(self, input_types: list[TensorType]) -> None:
        (t,) = input_types
        shared = set(self.shared_axes or ())
        if any(a >= t.rank for a in shared):
            raise ShapeError(f"PReLU shared_axes {self.shared_axes} do not exist in {t}")
        shape = []
        for i, d in enumerate(t.shape[1:], start=1):
            if i in shared:
                shape.append(1)
            elif isinstance(d, int):
                shape.append(d)
            else:
                raise ShapeError(f"PReLU needs a static size on axis {i} (or share it with shared_axes), got {t}")
        self.alpha = self.add_weight("alpha", shape, self.alpha_initializer)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        neg = b.op("mul", [b.op("neg", [self.alpha]), b.op("relu", [b.op("neg", [x])])])
        return b.op("add", [b.op("relu", [x]), neg])
