"""Convolution and pooling layers (channels-last by default, as Keras).

Conv{1,2,3}D(x[N, *spatial, C]) = act(T_back(conv(T(x), kernel^T)) + bias), where T moves the
channel axis to position 1 and kernel[*k, C/groups, filters] (Keras' layout) is transposed to
ONNX's [filters, C/groups, *k]. 'same' padding is SAME_UPPER (the extra pixel at the end);
'causal' pads (k - 1) * dilation at the start of the time axis. Average pooling excludes padding.

Conv{1,2,3}DTranspose(x) = act(T_back(conv_transpose(T(x), kernel^T)) + bias), kernel [*k, filters,
C] -> ONNX ConvTranspose's [C, filters, *k], Keras' 'valid'/'same'/output_padding turned into
explicit pads (`transpose_pads`). SeparableConv{1,2}D(x) = act(T_back(conv(conv(T(x), depthwise,
group=C), pointwise)) + bias).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ModelError, ShapeError
from ..ir.builder import Builder
from ..ir.graph import Value
from ..ir.types import TensorType
from .activations import apply_activation, get_activation
from .base import KTensor, Layer, LayerCall

_PADDINGS = {"valid": "VALID", "same": "SAME_UPPER"}


def _tuple(name: str, value: Any, rank: int, least: int = 1) -> tuple[int, ...]:
    vals = (value,) * rank if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(vals) != rank or any(isinstance(v, bool) or not isinstance(v, int) or v < least for v in vals):
        what = "positive" if least == 1 else "non-negative"
        raise ModelError(f"{name} must be a {what} int or a tuple of {rank} {what} ints, got {value!r}")
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
    causal = True  # Conv1D takes padding='causal'; Keras' other convolutions do not

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
        allowed = ("valid", "same", "causal") if self.rank == 1 and self.causal else ("valid", "same")
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
        y = self.convolve(b, xc)
        if self.channels_last:
            y = to_channels_last(b, y)
        if self.bias is not None:
            bias: Value = self.bias
            if not self.channels_last:
                bias = b.op("reshape", [bias], shape=(-1,) + (1,) * n)
            y = b.op("add", [y, bias])
        return apply_activation(b, y, self._act)

    def convolve(self, b: Builder, xc: Value) -> Value:
        """The layer's convolution of channels-first xc, before bias and activation."""
        attrs: dict[str, Any] = {"strides": self.strides, "dilations": self.dilation_rate, "group": self.conv_groups()}
        if self.padding == "causal":
            attrs.update(auto_pad="NOTSET", pads=((self.kernel_size[0] - 1) * self.dilation_rate[0], 0))
        else:
            attrs["auto_pad"] = _PADDINGS[self.padding]
        return b.op("conv", [xc, self.onnx_kernel(b)], **attrs)

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

    causal = False

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
        return "kernel", (*self.kernel_size, channels, self.depth_multiplier)  # Keras names it `kernel`

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


def transpose_pads(
    kernel: int, stride: int, dilation: int, padding: str, output_padding: int | None
) -> tuple[int, int, int]:
    """Keras' transposed-convolution padding on one axis as conv_transpose's (pad begin, pad end,
    output_padding).

    Keras (keras/src/backend/common/backend_utils.py) pads the stride-dilated input with
    (left, right) before a correlation with the flipped kernel; that is the full transposed output
    [0, s * (n - 1) + ke) (ke = (kernel - 1) * dilation + 1, zero beyond) seen through the window
    that starts at ke - 1 - left and ends ke - 1 - right before the full output's end. A negative
    end crop is zeros appended: output_padding. Nothing depends on the input size.
    """
    ke = (kernel - 1) * dilation + 1
    if padding == "valid":
        extra = max(ke, stride) - ke if output_padding is None else output_padding
        left, right = ke - 1, ke - 1 + extra
    else:
        total = stride + ke - 2 if output_padding is None else ke + ke % 2 - 2 + output_padding
        left = min(total // 2 + total % 2, ke - 1)
        right = total - left
    end = ke - 1 - right
    return ke - 1 - left, max(end, 0), max(-end, 0)


class _ConvTranspose(_Conv):
    """y = act(conv_transpose(x, kernel) + bias), Keras' kernel [*k, filters, C] in ONNX's
    ConvTranspose layout [C, filters, *k]; Keras' output size is s * (n - 1) + ke + output_padding
    ('valid', output_padding defaulting to max(ke, s) - ke), n * s ('same' without output_padding),
    or s * (n - 1) + ke % 2 + output_padding ('same')."""

    causal = False

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        output_padding: int | Sequence[int] | None = None,
        data_format: str | None = None,
        dilation_rate: int | Sequence[int] = 1,
        activation: str | None = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            dilation_rate=dilation_rate,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            **kwargs,
        )
        kind = type(self).__name__
        self.output_padding = (
            None if output_padding is None else _tuple(f"{kind} output_padding", output_padding, self.rank, least=0)
        )
        if self.output_padding is not None and any(
            p >= s for p, s in zip(self.output_padding, self.strides, strict=True)
        ):
            raise ModelError(
                f"{kind}: output_padding {self.output_padding} must be less than strides {self.strides} on every axis"
            )
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ModelError(
                f"{kind}: strides {self.strides} > 1 cannot be combined with dilation_rate {self.dilation_rate} > 1"
            )

    def kernel_for(self, channels: int) -> tuple[str, tuple[int, ...]]:
        return "kernel", (*self.kernel_size, self.filters, channels)

    def convolve(self, b: Builder, xc: Value) -> Value:
        extra = self.output_padding or (None,) * self.rank
        axes = [
            transpose_pads(k, s, d, self.padding, p)
            for k, s, d, p in zip(self.kernel_size, self.strides, self.dilation_rate, extra, strict=True)
        ]
        # Keras kernel [*k, F, C] -> ONNX [C, F, *k]: the same axis swap as a convolution's kernel.
        return b.op(
            "conv_transpose",
            [xc, self.onnx_kernel(b)],
            strides=self.strides,
            dilations=self.dilation_rate,
            pads=tuple(a[0] for a in axes) + tuple(a[1] for a in axes),
            output_padding=tuple(a[2] for a in axes),
        )


class Conv1DTranspose(_ConvTranspose):
    rank = 1


class Conv2DTranspose(_ConvTranspose):
    rank = 2


class Conv3DTranspose(_ConvTranspose):
    rank = 3


class _SeparableConv(_DepthwiseConv):
    """A depthwise convolution (depthwise_kernel [*k, C, depth_multiplier], strides, padding,
    dilation) then a 1x1 convolution (pointwise_kernel [1.., C * depth_multiplier, filters]), then
    bias and activation, as Keras' separable_conv: two ONNX Conv nodes."""

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        data_format: str | None = None,
        dilation_rate: int | Sequence[int] = 1,
        depth_multiplier: int = 1,
        activation: str | None = None,
        use_bias: bool = True,
        depthwise_initializer: Any = "glorot_uniform",
        pointwise_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        depthwise_regularizer: Any = None,
        pointwise_regularizer: Any = None,
        bias_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            kernel_size,
            strides=strides,
            padding=padding,
            depth_multiplier=depth_multiplier,
            data_format=data_format,
            dilation_rate=dilation_rate,
            activation=activation,
            use_bias=use_bias,
            depthwise_initializer=depthwise_initializer,
            bias_initializer=bias_initializer,
            depthwise_regularizer=depthwise_regularizer,  # the depthwise kernel is `self.kernel`
            bias_regularizer=bias_regularizer,
            **kwargs,
        )
        if isinstance(filters, bool) or not isinstance(filters, int) or filters <= 0:
            raise ModelError(f"{type(self).__name__}: filters must be a positive integer, got {filters!r}")
        self.filters = filters
        self.pointwise_initializer = pointwise_initializer
        self.pointwise_kernel_regularizer = self.regularizer(pointwise_regularizer)

    def build(self, input_types: list[TensorType]) -> None:
        (t,) = input_types
        if t.rank != self.rank + 2:
            raise ShapeError(
                f"expects a rank-{self.rank + 2} input (batch, {self.rank} spatial dims, channels), got {t}"
            )
        c = t.shape[-1] if self.channels_last else t.shape[1]
        if not isinstance(c, int):
            raise ShapeError(f"needs a known number of input channels, got {t}")
        m = self.depth_multiplier
        self.kernel = self.add_weight("depthwise_kernel", (*self.kernel_size, c, m), self.kernel_initializer)
        self.pointwise_kernel = self.add_weight(
            "pointwise_kernel", (*(1,) * self.rank, c * m, self.filters), self.pointwise_initializer
        )
        self.bias = self.add_weight("bias", (self.filters,), self.bias_initializer) if self.use_bias else None

    def convolve(self, b: Builder, xc: Value) -> Value:
        n = self.rank
        h = super().convolve(b, xc)
        pointwise = b.op("transpose", [self.pointwise_kernel], perm=(n + 1, n, *range(n)))
        return b.op("conv", [h, pointwise], auto_pad="VALID")


class SeparableConv1D(_SeparableConv):
    rank = 1


class SeparableConv2D(_SeparableConv):
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
    """The mean over time; with a Keras mask (the one its input carries, from Embedding(mask_zero)
    or Masking, or `mask=` [N, T]) the mean of the unmasked steps: sum(x * m) / sum(m), as Keras."""

    rank, op = 1, "reduce_mean"
    takes_list = True

    def __call__(self, inputs: Any, mask: Any = None, **kwargs: Any) -> Any:
        from .recurrent import MaskSource, _nonzero, keras_mask

        x = inputs[0] if isinstance(inputs, list | tuple) and len(inputs) == 1 else inputs
        source: MaskSource | None = None
        if mask is not None:
            source = ([mask], _nonzero)
        elif isinstance(x, KTensor):
            source = keras_mask(x)
        tensors, fn = source if source is not None else ([], None)
        return super().__call__([x, *tensors], mask_fn=fn, **kwargs)

    def call(self, b: Builder, inputs: Any, /, mask_fn: Any = None, **kwargs: Any) -> Value:
        x, *sources = inputs
        if mask_fn is None:
            return super().call(b, x)
        if x.type.rank != 3:
            raise ShapeError(f"expects a rank-3 input, got {x.type}")
        m = b.op("cast", [mask_fn(b, sources)], to=x.type.dtype)  # [N, T], 1 where kept
        m = b.op("reshape", [m], shape=(0, 0, 1) if self.channels_last else (0, 1, -1))
        axis = 1 if self.channels_last else 2
        total = b.op("reduce_sum", [b.op("mul", [x, m])], axes=(axis,), keepdims=self.keepdims)
        count = b.op("reduce_sum", [m], axes=(axis,), keepdims=self.keepdims)
        return b.op("div", [total, count])

    def keras_call_args(self, call: LayerCall) -> tuple[list[Any], dict[str, Any]]:
        """`layer(x)`, or `layer(x, mask=m)` when the mask is not the one `x` carries."""
        from .recurrent import keras_mask

        x, sources = call.inputs[0], call.inputs[1:]
        implicit = keras_mask(x)
        if sources and (implicit is None or [id(t) for t in implicit[0]] != [id(t) for t in sources]):
            return [x], {"mask": sources[0]}
        return [x], {}


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
