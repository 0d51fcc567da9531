"""Reshaping layers: Permute, RepeatVector, Cropping{1,2,3}D, UpSampling{1,2,3}D.

Permute(dims)(x) = transpose(x, (0, *dims)); RepeatVector(n)(x[N, F]) = x repeated to [N, n, F].
Cropping keeps x[begin : size - end] along each spatial axis (a `slice`; static sizes there).
UpSampling repeats every step / pixel / voxel `size` times along each spatial axis (Keras'
`ops.repeat`), as reshape -> concat of copies -> reshape. UpSampling2D(interpolation="bilinear")
is Keras' `ops.image.resize` (torch `interpolate(align_corners=False, antialias=False)`): output
pixel o along an axis of size n reads the source coordinate s = max((o + 0.5) / size - 0.5, 0),
y = (1 - f) * x[i] + f * x[min(i + 1, n - 1)] with i = floor(s), f = s - i; as a gather of the two
neighbours and constant weights per axis (static spatial sizes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ModelError, ShapeError
from ..ir.builder import Builder
from ..ir.graph import Value
from ..ops import training_ops  # noqa: F401  (registers `slice`)
from .base import Layer
from .conv import _data_format


def _int(layer: str, what: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ModelError(f"{layer}: {what} must be an integer >= {low}, got {value!r}")
    return int(value)


def _ints(layer: str, what: str, value: Any, n: int, low: int) -> tuple[int, ...]:
    """An int (repeated n times) or a sequence of n ints, each >= low (Keras' standardize_tuple)."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        value = (value,) * n
    if not isinstance(value, Sequence) or len(value) != n:
        raise ModelError(f"{layer}: {what} must be an int or a tuple of {n} ints, got {value!r}")
    return tuple(_int(layer, what, v, low) for v in value)


def _spatial_axes(rank: int, channels_last: bool) -> tuple[int, ...]:
    return tuple(range(1, rank - 1)) if channels_last else tuple(range(2, rank))


def _check_rank(layer: str, x: Value, rank: int, what: str) -> None:
    if x.type.rank != rank:
        raise ShapeError(f"{layer} expects a rank-{rank} input ({what}), got {x.type}")


def repeat(b: Builder, x: Value, axis: int, n: int) -> Value:
    """Keras `ops.repeat(x, n, axis)`: every entry along `axis` n times in a row (y[i*n + k] = x[i])."""
    if n == 1:
        return x
    r = x.type.rank
    tail = x.type.shape[axis + 1 :]
    if not all(isinstance(d, int) for d in tail):
        # Move the axis last: only its own (inferred) size may then be symbolic.
        perm = (*range(axis), *range(axis + 1, r), axis)
        inverse = tuple(int(i) for i in np.argsort(perm))
        y = repeat(b, b.op("transpose", [x], perm=perm), r - 1, n)
        return b.op("transpose", [y], perm=inverse)
    # [..., d, *tail] -> [..., d, 1, *tail] -> n copies on the new axis -> [..., d * n, *tail].
    x1 = b.op("reshape", [x], shape=(0,) * (axis + 1) + (1,) + tail)
    xn = b.op("concat", [x1] * n, axis=axis + 1)
    return b.op("reshape", [xn], shape=(0,) * axis + (-1,) + tail)


def _linear_resize_axis(b: Builder, x: Value, axis: int, factor: int) -> Value:
    """Half-pixel linear interpolation along `axis` to `factor` times its (static) size."""
    n = x.type.shape[axis]
    if not isinstance(n, int):
        raise ShapeError(f"bilinear upsampling needs static spatial sizes, got {x.type}")
    if factor == 1:
        return x
    out = np.arange(n * factor, dtype=np.float64)
    src = np.maximum((out + 0.5) * (n / (n * factor)) - 0.5, 0.0)
    i0 = src.astype(np.int64)  # floor: src >= 0
    i1 = np.minimum(i0 + 1, n - 1)
    f = src - i0
    dt = x.type.dtype
    bshape = (n * factor,) + (1,) * (x.type.rank - 1 - axis)
    g0 = b.op("gather", [x, b.constant(i0, "int64")], axis=axis)
    g1 = b.op("gather", [x, b.constant(i1, "int64")], axis=axis)
    w0 = b.constant((1.0 - f).astype(dt).reshape(bshape), dt)
    w1 = b.constant(f.astype(dt).reshape(bshape), dt)
    return b.op("add", [b.op("mul", [g0, w0]), b.op("mul", [g1, w1])])


class Permute(Layer):
    """Permute(dims)(x) = transpose(x, (0, *dims)); dims is a permutation of 1..rank-1."""

    def __init__(self, dims: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(dims, int) or not isinstance(dims, Sequence):
            raise ModelError(f"Permute dims must be a tuple of axes, got {dims!r}")
        self.dims = tuple(int(d) for d in dims)
        if sorted(self.dims) != list(range(1, len(self.dims) + 1)):
            raise ModelError(f"Permute dims must be a permutation of 1..{len(self.dims)}, got {dims!r}")

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        _check_rank("Permute", x, len(self.dims) + 1, f"batch and the {len(self.dims)} axes dims permutes")
        return b.op("transpose", [x], perm=(0, *self.dims))


class RepeatVector(Layer):
    """RepeatVector(n)(x[N, F]) = [N, n, F], every row the input vector."""

    def __init__(self, n: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n = _int("RepeatVector", "n", n, 1)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        _check_rank("RepeatVector", x, 2, "batch, features")
        x1 = b.op("reshape", [x], shape=(0, 1, -1))
        return x1 if self.n == 1 else b.op("concat", [x1] * self.n, axis=1)


class _Cropping(Layer):
    rank = 1

    def __init__(self, cropping: Any, data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        kind = type(self).__name__
        n = self.rank
        pairs: tuple[tuple[int, ...], ...]
        if isinstance(cropping, int | np.integer) and not isinstance(cropping, bool):
            pairs = ((int(cropping),) * 2,) * n
        elif isinstance(cropping, Sequence) and len(cropping) == n and n > 1:
            pairs = tuple(_ints(kind, "each cropping entry", c, 2, 0) for c in cropping)
        elif isinstance(cropping, Sequence) and n == 1:
            pairs = (_ints(kind, "cropping", cropping, 2, 0),)
        else:
            raise ModelError(
                f"{kind}: cropping must be an int, a tuple of {n} ints or a tuple of {n} (begin, end) pairs, "
                f"got {cropping!r}"
            )
        if any(c < 0 for p in pairs for c in p):
            raise ModelError(f"{kind}: cropping cannot be negative, got {cropping!r}")
        self.cropping = pairs[0] if n == 1 else pairs
        self._pairs = pairs
        self.channels_last = _data_format(data_format)
        self.data_format = "channels_last" if self.channels_last else "channels_first"

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        kind = type(self).__name__
        _check_rank(kind, x, self.rank + 2, f"batch, {self.rank} spatial axes, channels")
        axes, starts, ends = [], [], []
        for ax, (lo, hi) in zip(_spatial_axes(x.type.rank, self.channels_last), self._pairs, strict=True):
            if lo == hi == 0:
                continue
            d = x.type.shape[ax]
            if not isinstance(d, int):
                raise ShapeError(f"{kind} needs a static size on the cropped axis {ax}, got {x.type}")
            if lo + hi >= d:
                raise ShapeError(f"{kind} cropping {(lo, hi)} leaves nothing of axis {ax} (size {d}) of {x.type}")
            axes.append(ax)
            starts.append(lo)
            ends.append(d - hi)
        if not axes:
            return b.op("identity", [x])
        return b.op("slice", [x], axes=tuple(axes), starts=tuple(starts), ends=tuple(ends))


class Cropping1D(_Cropping):
    """Cropping1D(cropping=(begin, end))(x[N, steps, C]) = x[:, begin : steps - end, :]."""

    rank = 1

    def __init__(self, cropping: Any = (1, 1), **kwargs: Any) -> None:
        super().__init__(cropping, **kwargs)


class Cropping2D(_Cropping):
    rank = 2

    def __init__(self, cropping: Any = ((0, 0), (0, 0)), data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(cropping, data_format, **kwargs)


class Cropping3D(_Cropping):
    rank = 3

    def __init__(self, cropping: Any = ((1, 1), (1, 1), (1, 1)), data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(cropping, data_format, **kwargs)


class _UpSampling(Layer):
    rank = 1

    def __init__(self, size: Any, data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        kind = type(self).__name__
        sizes = _ints(kind, "size", size, self.rank, 1)
        self.size: int | tuple[int, ...] = sizes[0] if self.rank == 1 else sizes
        self._sizes = sizes
        self.channels_last = _data_format(data_format)
        self.data_format = "channels_last" if self.channels_last else "channels_first"

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        _check_rank(type(self).__name__, x, self.rank + 2, f"batch, {self.rank} spatial axes, channels")
        y = x
        for ax, n in zip(_spatial_axes(x.type.rank, self.channels_last), self._sizes, strict=True):
            y = self.resize_axis(b, y, ax, n)
        return b.op("identity", [y]) if y is x else y

    def resize_axis(self, b: Builder, x: Value, axis: int, factor: int) -> Value:
        return repeat(b, x, axis, factor)


class UpSampling1D(_UpSampling):
    """UpSampling1D(size)(x[N, steps, C]) = [N, steps * size, C], every step repeated."""

    rank = 1

    def __init__(self, size: int = 2, **kwargs: Any) -> None:
        if isinstance(size, bool) or not isinstance(size, int | np.integer):
            raise ModelError(f"UpSampling1D: size must be a positive integer, got {size!r}")
        super().__init__(size, **kwargs)


class UpSampling2D(_UpSampling):
    rank = 2
    INTERPOLATIONS = ("nearest", "bilinear")

    def __init__(
        self, size: Any = (2, 2), data_format: str | None = None, interpolation: str = "nearest", **kwargs: Any
    ) -> None:
        super().__init__(size, data_format, **kwargs)
        interp = str(interpolation).lower()
        if interp not in self.INTERPOLATIONS:
            raise ModelError(
                f"UpSampling2D: interpolation must be one of {self.INTERPOLATIONS} in kcompile, got {interpolation!r}"
            )
        self.interpolation = interp

    def resize_axis(self, b: Builder, x: Value, axis: int, factor: int) -> Value:
        if self.interpolation == "bilinear":
            return _linear_resize_axis(b, x, axis, factor)
        return repeat(b, x, axis, factor)


class UpSampling3D(_UpSampling):
    rank = 3

    def __init__(self, size: Any = (2, 2, 2), data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(size, data_format, **kwargs)
