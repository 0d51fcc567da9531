"""Keras 3 metrics as graph builders plus Python accumulators.

A metric's graph part gives, per batch, the sum of its per-sample values and their count
(`batch_values(b, y_true, y_pred) -> (total, count)`); the Python part accumulates both over the
epoch and reports total / count, which is how Keras' stateful `Mean`-based metrics behave (the
epoch value is not a mean of batch means).

Per-sample values, as `keras/src/metrics/*`: accuracy = [y_true == y_pred]; binary accuracy
= mean over the last axis of [y_true == (y_pred > threshold)]; categorical = [argmax y_true ==
argmax y_pred]; sparse categorical = [y_true == argmax y_pred]; top-k = [y_pred[true class] is
among the k largest] (`in_top_k`: fewer than k classes score strictly higher); MAE/MSE = the
mean over the last axis.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelError
from ..ir.builder import Builder
from ..ir.graph import Value
from .losses import as_float, const, match_rank, mean_last, sparse_labels


class Metric:
    default_name = "metric"

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.default_name
        self.reset_state()

    # Graph ---------------------------------------------------------------------------------
    def values(self, b: Builder, y_true: Value, y_pred: Value) -> Value:
        raise NotImplementedError

    def batch_values(self, b: Builder, y_true: Value, y_pred: Value) -> tuple[Value, Value]:
        v = self.values(b, y_true, y_pred)
        axes = tuple(range(v.type.rank))
        total = b.op("reduce_sum", [v], axes=axes) if axes else v
        count = b.op("size", [v], dtype=v.type.dtype)
        return total, count

    # Accumulation --------------------------------------------------------------------------
    def reset_state(self) -> None:
        self.total = 0.0
        self.count = 0.0

    def update(self, total: float, count: float) -> None:
        self.total += float(total)
        self.count += float(count)

    def result(self) -> float:
        return self.total / self.count if self.count else 0.0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}'>"


def _hit(b: Builder, a: Value, c: Value, dtype: str) -> Value:
    return b.op("cast", [b.op("compare", [a, c], mode="equal")], to=dtype)


class Accuracy(Metric):
    default_name = "accuracy"

    def values(self, b: Builder, y_true: Value, y_pred: Value) -> Value:
        y_true = as_float(b, match_rank(b, y_true, y_pred), y_pred.type.dtype)
        return _hit(b, y_true, y_pred, y_pred.type.dtype)


class BinaryAccuracy(Metric):
    default_name = "binary_accuracy"

    def __init__(self, name: str | None = None, threshold: float = 0.5) -> None:
        super().__init__(name)
        self.threshold = float(threshold)

    def values(self, b: Builder, y_true: Value, y_pred: Value) -> Value:
        dt = y_pred.type.dtype
        y_true = as_float(b, match_rank(b, y_true, y_pred), dt)
        above = b.op("cast", [b.op("compare", [y_pred, const(b, self.threshold, y_pred)], mode="greater")], to=dt)
        return mean_last(b, _hit(b, y_true, above, dt))


class CategoricalAccuracy(Metric):
    default_name = "categorical_accuracy"

    def values(self, b: Builder, y_true: Value, y_pred: Value) -> Value:
        dt = y_pred.type.dtype
        return _hit(b, b.op("argmax", [y_true], axis=-1), b.op("argmax", [y_pred], axis=-1), dt)


class SparseCategoricalAccuracy(Metric):
    default_name = "sparse_categorical_accuracy"

    def values(self, b: Builder, y_true: Value, y_pred: Value) -> Value:
        return _hit(b, sparse_labels(b, y_true, y_pred), b.op("argmax", [y_pred], axis=-1), y_pred.type.dtype)


class TopKCategoricalAccuracy(Metric):
    default_name = "top_k_categorical_accuracy"
    sparse = False

    def __init__(self, k: int = 5, name: str | None = None) -> None:
        super().__init__(name)
        self.k = int(k)

    def values(self, b: Builder, y_true: Value, y_pred: Value) -> Value:
        dt = y_pred.type.dtype
        labels = sparse_labels(b, y_true, y_pred) if self.sparse else b.op("argmax", [y_true], axis=-1)
        n = y_pred.type.shape[-1]
        if not isinstance(n, int):
            raise ModelError(f"top-k accuracy needs a known number of classes, got {y_pred.type}")
        onehot = b.op("one_hot", [labels], depth=n, dtype=dt)
        target = b.op("reduce_sum", [b.op("mul", [onehot, y_pred])], axes=(-1 % y_pred.type.rank,), keepdims=True)
        above = b.op("cast", [b.op("compare", [y_pred, target], mode="greater")], to=dt)
        higher = b.op("reduce_sum", [above], axes=(-1 % y_pred.type.rank,))
        return b.op("cast", [b.op("compare", [higher, const(b, float(self.k), higher)], mode="less")], to=dt)


class SparseTopKCategoricalAccuracy(TopKCategoricalAccuracy):
    default_name = "sparse_top_k_categorical_accuracy"
    sparse = True


class MeanAbsoluteError(Metric):
    default_name = "mean_absolute_error"

    def values(self, b: Builder, y_true: Value, y_pred: Value) -> Value:
        y_true = as_float(b, match_rank(b, y_true, y_pred), y_pred.type.dtype)
        return mean_last(b, b.op("abs", [b.op("sub", [y_pred, y_true])]))


class MeanSquaredError(Metric):
    default_name = "mean_squared_error"

    def values(self, b: Builder, y_true: Value, y_pred: Value) -> Value:
        y_true = as_float(b, match_rank(b, y_true, y_pred), y_pred.type.dtype)
        d = b.op("sub", [y_pred, y_true])
        return mean_last(b, b.op("mul", [d, d]))


class Mean(Metric):
    """The running mean of a scalar reported per batch (the loss trackers)."""

    default_name = "mean"


_ALIASES: dict[str, type[Metric]] = {
    "binary_accuracy": BinaryAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "mae": MeanAbsoluteError,
    "mean_absolute_error": MeanAbsoluteError,
    "mse": MeanSquaredError,
    "mean_squared_error": MeanSquaredError,
}


def get(identifier: Any, y_true: Value, y_pred: Value, sparse_loss: bool = False) -> Metric:
    """A metric object; "accuracy"/"acc" picks its kind from the shapes, as Keras' compile_utils."""
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    if not isinstance(identifier, str):
        raise ModelError(f"a metric must be a name or a kcompile Metric, got {type(identifier).__name__}")
    key = identifier.lower()
    if key in ("accuracy", "acc"):
        if y_pred.type.shape[-1] == 1:
            return BinaryAccuracy(name=identifier)
        if (
            sparse_loss
            or y_true.type.rank < y_pred.type.rank
            or (y_true.type.shape[-1] == 1 and y_pred.type.shape[-1] != 1)
        ):
            return SparseCategoricalAccuracy(name=identifier)
        return CategoricalAccuracy(name=identifier)
    if key in _ALIASES:
        return _ALIASES[key](name=identifier)
    raise ModelError(f"unknown metric {identifier!r}; known: accuracy, {', '.join(sorted(_ALIASES))}")
