"""Convolution and pooling layers (channels-last by default, as Keras).

Conv{1,2,3}D(x[N, *spatial, C]) = act(T_back(conv(T(x), kernel^T)) + bias), where T moves the
channel axis to position 1 and kernel[*k, C/groups, filters] (Keras' layout) is transposed to
ONNX's [filters, C/groups, *k]. 'same' padding is SAME_UPPER (the extra pixel at the end);
'causal' pads (k - 1) * dilation at the start of the time axis. Average pooling excludes padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ModelError, ShapeError
from ..ir.builder import Builder
from ..ir.graph import Value
from ..ir.types import TensorType
from .activations import apply_activation, get_activation
from .base import Layer

_PADDINGS = {"valid": "VALID", "same": "SAME_UPPER"}


def _tuple(name: str, value: Any, rank: int) -> tuple[int, ...]:
    vals = (value,) * rank if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(vals) != rank or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in vals):
        raise ModelError(f"{name} must be a positive int or a tuple of {rank} positive ints, got {value!r}")
    return vals


def _data_format(value: str | None) -> bool:
    """True when channels come last (Keras' default image_data_format)."""
    fmt = value or "channels_last"
    if fmt not in ("channels_last", "channels_first"):
        raise ModelError(f"data_format must be 'channels_last' or 'channels_first', got {value!r}")
    return fmt == "channels_last"


def to_channels_first(b: Builder, x: Value) -> Value:
    r = x.type.rank
    return b.op("transpose", [x], perm=(0, r - 1, *range(1, r - 1)))


def to_channels_last(b: Builder, x: Value) -> Value:
    r = x.type.rank
    return b.op("transpose", [x], perm=(0, *range(2, r), 1))


class _Conv(Layer):
    rank = 2

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        data_format: str | None = None,
        dilation_rate: int | Sequence[int] = 1,
        groups: int = 1,
        activation: str | None = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.kernel_regularizer = self.regularizer(kernel_regularizer)
        self.bias_regularizer = self.regularizer(bias_regularizer)
        kind = type(self).__name__
        if isinstance(filters, bool) or not isinstance(filters, int) or filters <= 0:
            raise ModelError(f"{kind}: filters must be a positive integer, got {filters!r}")
        self.filters = filters
        self.kernel_size = _tuple(f"{kind} kernel_size", kernel_size, self.rank)
        self.strides = _tuple(f"{kind} strides", strides, self.rank)
        self.dilation_rate = _tuple(f"{kind} dilation_rate", dilation_rate, self.rank)
        padding = str(padding).lower()
        allowed = ("valid", "same", "causal") if self.rank == 1 else ("valid", "same")
        if padding not in allowed:
            raise ModelError(f"{kind}: padding must be one of {allowed}, got {padding!r}")
        self.padding = padding
        self.channels_last = _data_format(data_format)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0 or filters % groups:
            raise ModelError(f"{kind}: groups must be a positive divisor of filters ({filters}), got {groups!r}")
        self.groups = groups
        self.activation = activation
        self._act = get_activation(activation)
        self.use_bias = use_bias
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer

    def build(self, input_types: list[TensorType]) -> None:
        (t,) = input_types
        if t.rank != self.rank + 2:
            raise ShapeError(
                f"expects a rank-{self.rank + 2} input (batch, {self.rank} spatial dims, channels), got {t}"
            )
        c = t.shape[-1] if self.channels_last else t.shape[1]
        if not isinstance(c, int):
            raise ShapeError(f"needs a known number of input channels, got {t}")
        name, shape = self.kernel_for(c)
        self.kernel = self.add_weight(name, shape, self.kernel_initializer)
        self.bias = self.add_weight("bias", (self.filters,), self.bias_initializer) if self.use_bias else None

    def kernel_for(self, channels: int) -> tuple[str, tuple[int, ...]]:
        """The kernel's Keras name and shape for `channels` input channels."""
        if channels % self.groups:
            raise ShapeError(f"input channels {channels} are not divisible by groups {self.groups}")
        return "kernel", (*self.kernel_size, channels // self.groups, self.filters)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        n = self.rank
        if x.type.rank != n + 2:
            raise ShapeError(f"expects a rank-{n + 2} input, got {x.type}")
        xc = to_channels_first(b, x) if self.channels_last else x
        w = self.onnx_kernel(b)
        attrs: dict[str, Any] = {"strides": self.strides, "dilations": self.dilation_rate, "group": self.conv_groups()}
        if self.padding == "causal":
            attrs.update(auto_pad="NOTSET", pads=((self.kernel_size[0] - 1) * self.dilation_rate[0], 0))
        else:
            attrs["auto_pad"] = _PADDINGS[self.padding]
        y = b.op("conv", [xc, w], **attrs)
        if self.channels_last:
            y = to_channels_last(b, y)
        if self.bias is not None:
            bias: Value = self.bias
            if not self.channels_last:
                bias = b.op("reshape", [bias], shape=(-1,) + (1,) * n)
            y = b.op("add", [y, bias])
        return apply_activation(b, y, self._act)

    def onnx_kernel(self, b: Builder) -> Value:
        """Keras kernel [*k, C/g, F] -> ONNX [F, C/g, *k]."""
        n = self.rank
        return b.op("transpose", [self.kernel], perm=(n + 1, n, *range(n)))

    def conv_groups(self) -> int:
        return self.groups


class Conv1D(_Conv):
    rank = 1


class Conv2D(_Conv):
    rank = 2


class Conv3D(_Conv):
    rank = 3


class _DepthwiseConv(_Conv):
    """One filter bank per input channel: output channel c * depth_multiplier + m."""

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        depth_multiplier: int = 1,
        data_format: str | None = None,
        dilation_rate: int | Sequence[int] = 1,
        activation: str | None = None,
        use_bias: bool = True,
        depthwise_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        depthwise_regularizer: Any = None,
        bias_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(depth_multiplier, bool) or not isinstance(depth_multiplier, int) or depth_multiplier <= 0:
            raise ModelError(
                f"{type(self).__name__}: depth_multiplier must be a positive integer, got {depth_multiplier!r}"
            )
        self.depth_multiplier = depth_multiplier
        super().__init__(
            1,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            dilation_rate=dilation_rate,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=depthwise_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=depthwise_regularizer,  # the depthwise kernel is `self.kernel`
            bias_regularizer=bias_regularizer,
            **kwargs,
        )

    def kernel_for(self, channels: int) -> tuple[str, tuple[int, ...]]:
        self.filters = channels * self.depth_multiplier
        return "depthwise_kernel", (*self.kernel_size, channels, self.depth_multiplier)

    def onnx_kernel(self, b: Builder) -> Value:
        """Keras depthwise kernel [*k, C, M] -> ONNX [C * M, 1, *k] (group = C)."""
        n = self.rank
        w = b.op("transpose", [self.kernel], perm=(n, n + 1, *range(n)))
        return b.op("reshape", [w], shape=(-1, 1, *self.kernel_size))

    def conv_groups(self) -> int:
        return self.kernel.type.shape[self.rank]  # type: ignore[return-value]


class DepthwiseConv1D(_DepthwiseConv):
    rank = 1


class DepthwiseConv2D(_DepthwiseConv):
    rank = 2


class _ZeroPadding(Layer):
    """Zeros around the spatial dims: `padding` is an int, one int per dim, or (before, after) pairs."""

    rank = 2

    def __init__(self, padding: Any = 1, data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        kind = type(self).__name__
        if isinstance(padding, int) and not isinstance(padding, bool):
            pairs = [(padding, padding)] * self.rank
        elif isinstance(padding, list | tuple) and len(padding) == self.rank:
            pairs = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]  # type: ignore[misc]
        elif isinstance(padding, list | tuple) and self.rank == 1 and len(padding) == 2:
            pairs = [tuple(padding)]  # type: ignore[list-item]
        else:
            raise ModelError(f"{kind}: padding must be an int, {self.rank} ints, or {self.rank} (before, after) pairs")
        if any(len(p) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in p) for p in pairs):
            raise ModelError(f"{kind}: paddings must be non-negative ints, got {padding!r}")
        self.padding = tuple(tuple(p) for p in pairs)
        self.channels_last = _data_format(data_format)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        r = x.type.rank
        if r != self.rank + 2:
            raise ShapeError(f"expects a rank-{self.rank + 2} input, got {x.type}")
        first = 1 if self.channels_last else 2
        begins, ends = [0] * r, [0] * r
        for i, (lo, hi) in enumerate(self.padding):
            begins[first + i], ends[first + i] = lo, hi
        return b.op("pad", [x], pads=(*begins, *ends))


class ZeroPadding1D(_ZeroPadding):
    rank = 1


class ZeroPadding2D(_ZeroPadding):
    rank = 2


class ZeroPadding3D(_ZeroPadding):
    rank = 3


class _Pool(Layer):
    rank = 2
    op = "max_pool"

    def __init__(
        self,
        pool_size: int | Sequence[int] = 2,
        strides: int | Sequence[int] | None = None,
        padding: str = "valid",
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        kind = type(self).__name__
        self.pool_size = _tuple(f"{kind} pool_size", pool_size, self.rank)
        self.strides = self.pool_size if strides is None else _tuple(f"{kind} strides", strides, self.rank)
        padding = str(padding).lower()
        if padding not in _PADDINGS:
            raise ModelError(f"{kind}: padding must be 'valid' or 'same', got {padding!r}")
        self.padding = padding
        self.channels_last = _data_format(data_format)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        if x.type.rank != self.rank + 2:
            raise ShapeError(f"expects a rank-{self.rank + 2} input, got {x.type}")
        xc = to_channels_first(b, x) if self.channels_last else x
        y = b.op(self.op, [xc], kernel=self.pool_size, strides=self.strides, auto_pad=_PADDINGS[self.padding])
        return to_channels_last(b, y) if self.channels_last else y


class MaxPooling1D(_Pool):
    rank, op = 1, "max_pool"


class MaxPooling2D(_Pool):
    rank, op = 2, "max_pool"


class MaxPooling3D(_Pool):
    rank, op = 3, "max_pool"


class AveragePooling1D(_Pool):
    rank, op = 1, "avg_pool"


class AveragePooling2D(_Pool):
    rank, op = 2, "avg_pool"


class AveragePooling3D(_Pool):
    rank, op = 3, "avg_pool"


class _GlobalPool(Layer):
    rank = 2
    op = "reduce_mean"

    def __init__(self, data_format: str | None = None, keepdims: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels_last = _data_format(data_format)
        self.keepdims = bool(keepdims)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        if x.type.rank != self.rank + 2:
            raise ShapeError(f"expects a rank-{self.rank + 2} input, got {x.type}")
        axes = tuple(range(1, self.rank + 1)) if self.channels_last else tuple(range(2, self.rank + 2))
        return b.op(self.op, [x], axes=axes, keepdims=self.keepdims)


class GlobalAveragePooling1D(_GlobalPool):
    rank, op = 1, "reduce_mean"


class GlobalAveragePooling2D(_GlobalPool):
    rank, op = 2, "reduce_mean"


class GlobalAveragePooling3D(_GlobalPool):
    rank, op = 3, "reduce_mean"


class GlobalMaxPooling1D(_GlobalPool):
    rank, op = 1, "reduce_max"


class GlobalMaxPooling2D(_GlobalPool):
    rank, op = 2, "reduce_max"


class GlobalMaxPooling3D(_GlobalPool):
    rank, op = 3, "reduce_max"
