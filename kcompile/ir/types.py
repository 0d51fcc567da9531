"""Tensor types of the IR: a dtype and a shape whose dimensions are ints or symbols.

A symbolic dimension is a string (`"batch"`, `"seq"`): it stands for a size known only when the
graph runs. Two equal symbols denote the same size; `None` written by a user becomes a fresh
symbol. Shape rules treat a symbol as "any size >= 0" and never guess it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError

Dim = int | str
Shape = tuple[Dim, ...]

# dtype name -> numpy dtype; the names are the ones users write (`dtype="int32"`).
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "float16": np.dtype(np.float16),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "bool": np.dtype(np.bool_),
}
FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})
INT_DTYPES = frozenset({"int32", "int64"})

_fresh = itertools.count()


def fresh_dim(prefix: str = "d") -> str:
    """A symbol no other dimension shares."""
    return f"{prefix}{next(_fresh)}"


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ShapeError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return dtype


def dtype_of(array: np.ndarray) -> str:
    for name, dt in DTYPES.items():
        if array.dtype == dt:
            return name
    raise ShapeError(f"unsupported array dtype {array.dtype}")


def is_static(dim: Dim) -> bool:
    return isinstance(dim, int)


def format_dim(dim: Dim) -> str:
    return str(dim) if isinstance(dim, int) else "None" if dim == "batch" else dim


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: Shape

    def __post_init__(self) -> None:
        check_dtype(self.dtype)
        for d in self.shape:
            if isinstance(d, bool) or not isinstance(d, int | str) or (isinstance(d, int) and d < 0):
                raise ShapeError(f"bad dimension {d!r} in shape {self.shape!r}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def numel(self) -> int | None:
        n = 1
        for d in self.shape:
            if not isinstance(d, int):
                return None
            n *= d
        return n

    def with_shape(self, shape: Shape) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: str) -> TensorType:
        return TensorType(dtype, self.shape)

    def matches(self, array: np.ndarray, bindings: dict[str, int] | None = None) -> bool:
        """Whether a concrete array fits this type; binds symbols consistently in `bindings`."""
        if array.dtype != DTYPES[self.dtype] or array.ndim != self.rank:
            return False
        env = {} if bindings is None else bindings
        for want, got in zip(self.shape, array.shape, strict=True):
            if isinstance(want, int):
                if want != got:
                    return False
            elif env.setdefault(want, got) != got:
                return False
        return True

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(format_dim(d) for d in self.shape)}]"


def broadcast_shapes(a: Shape, b: Shape) -> Shape:
    """NumPy broadcasting over possibly-symbolic dims; raises ShapeError when sizes conflict.

    A symbol against an int n > 1 gives n (the symbol must equal n at run time); a symbol
    against 1 gives the symbol; two different symbols give the first (they must agree).
    """
    out: list[Dim] = []
    for i in range(max(len(a), len(b))):
        x = a[len(a) - 1 - i] if i < len(a) else 1
        y = b[len(b) - 1 - i] if i < len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif isinstance(x, int) and isinstance(y, int):
            raise ShapeError(f"cannot broadcast shapes {_fmt(a)} and {_fmt(b)}")
        else:
            out.append(x if isinstance(x, int) else y if isinstance(y, int) else x)
    return tuple(reversed(out))


def _fmt(shape: Shape) -> str:
    return "(" + ", ".join(format_dim(d) for d in shape) + ")"


def normalize_axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < rank:
        raise ShapeError(f"{what} {axis} is out of range for a rank-{rank} tensor")
    return axis % rank
