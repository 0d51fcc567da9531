"""Keras 3 losses as graph builders: `loss(b, y_true, y_pred) -> scalar Value`.

Each loss first computes Keras' per-sample values (`call`), then reduces them as Keras'
`reduce_weighted_values` does: "sum_over_batch_size" (the default) is the sum over all elements
divided by their count, "sum" the plain sum, "none" no reduction. Numerics follow
`keras/src/backend/torch/nn.py`: probabilities are renormalised (categorical) and clipped to
[1e-7, 1 - 1e-7] before the log; `from_logits=True` uses log_softmax / the stable logistic form.

With sample weights the per-sample values are multiplied by them before the reduction, so
"sum_over_batch_size" is sum(w * l) / batch size, not / sum(w) (Keras' `reduce_weighted_values`).
`SampleWeighted` wraps a loss for a step graph whose target input carries the weights
(`pack_weighted_target`: the target flattened to [N, k] float32, the weight as column k).

Strings resolve as Keras' `losses.get`; "crossentropy"-style strings pick binary / sparse /
categorical from the shapes, as `compile_utils` does for a bare "accuracy".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelError
from ..ir.builder import Builder
from ..ir.graph import Value
from ..ir.types import TensorType

EPSILON = 1e-7  # keras.backend.epsilon()


def const(b: Builder, value: float, like: Value) -> Value:
    return b.constant(np.array(value, like.type.dtype), like.type.dtype)


def match_rank(b: Builder, y_true: Value, y_pred: Value) -> Value:
    """Keras' `squeeze_or_expand_to_same_rank` for y_true against y_pred (by a size-1 axis)."""
    rt, rp = y_true.type.rank, y_pred.type.rank
    if rt == rp + 1 and y_true.type.shape[-1] == 1:
        return b.op("reshape", [y_true], shape=tuple(0 for _ in range(rp)))
    if rp == rt + 1 and y_pred.type.shape[-1] == 1:
        return b.op("reshape", [y_true], shape=(*(0 for _ in range(rt)), 1))
    return y_true


def as_float(b: Builder, v: Value, dtype: str) -> Value:
    return v if v.type.dtype == dtype else b.op("cast", [v], to=dtype)


def mean_last(b: Builder, v: Value) -> Value:
    return b.op("reduce_mean", [v], axes=(-1 % v.type.rank,))


class Loss:
    """Base: subclasses implement `call(b, y_true, y_pred)` (per-sample values)."""

    default_name = "loss"
    sparse_targets = False  # y_true holds class indices

    def __init__(self, reduction: str | None = "sum_over_batch_size", name: str | None = None) -> None:
        if reduction not in ("sum_over_batch_size", "sum", "none", None, "mean"):
            raise ModelError(f"unknown loss reduction {reduction!r}; use 'sum_over_batch_size', 'sum' or 'none'")
        self.reduction = reduction
        self.name = name or self.default_name

    def call(self, b: Builder, y_true: Value, y_pred: Value) -> Value:
        raise NotImplementedError

    def __call__(self, b: Builder, y_true: Value, y_pred: Value, sample_weight: Value | None = None) -> Value:
        if not self.sparse_targets:
            y_true = as_float(b, match_rank(b, y_true, y_pred), y_pred.type.dtype)
        values = self.call(b, y_true, y_pred)
        if sample_weight is not None:
            sw = as_float(b, sample_weight, values.type.dtype)
            # Keras' squeeze_or_expand_to_same_rank: drop a trailing 1 or add trailing 1s.
            if sw.type.rank > values.type.rank:
                sw = b.op("reshape", [sw], shape=tuple(0 for _ in range(values.type.rank)))
            elif sw.type.rank < values.type.rank:
                sw = b.op(
                    "reshape",
                    [sw],
                    shape=(*(0 for _ in range(sw.type.rank)), *(1,) * (values.type.rank - sw.type.rank)),
                )
            values = b.op("mul", [values, sw])
        if self.reduction in ("none", None) or values.type.rank == 0:
            return values
        axes = tuple(range(values.type.rank))
        return b.op("reduce_sum" if self.reduction == "sum" else "reduce_mean", [values], axes=axes)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}'>"


class MeanSquaredError(Loss):
    default_name = "mean_squared_error"

    def call(self, b: Builder, y_true: Value, y_pred: Value) -> Value:
        d = b.op("sub", [y_pred, y_true])
        return mean_last(b, b.op("mul", [d, d]))


class MeanAbsoluteError(Loss):
    default_name = "mean_absolute_error"

    def call(self, b: Builder, y_true: Value, y_pred: Value) -> Value:
        return mean_last(b, b.op("abs", [b.op("sub", [y_pred, y_true])]))


class Huber(Loss):
    default_name = "huber_loss"

    def __init__(self, delta: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delta = float(delta)

    def call(self, b: Builder, y_true: Value, y_pred: Value) -> Value:
        err = b.op("sub", [y_pred, y_true])
        abs_err = b.op("abs", [err])
        quad = b.op("mul", [const(b, 0.5, err), b.op("mul", [err, err])])
        lin = b.op("sub", [b.op("mul", [const(b, self.delta, err), abs_err]), const(b, 0.5 * self.delta**2, err)])
        small = b.op("compare", [abs_err, const(b, self.delta, err)], mode="less_equal")
        return mean_last(b, b.op("where", [small, quad, lin]))


class KLDivergence(Loss):
    default_name = "kl_divergence"

    def call(self, b: Builder, y_true: Value, y_pred: Value) -> Value:
        t = b.op("clip", [y_true], lo=EPSILON, hi=1.0)
        p = b.op("clip", [y_pred], lo=EPSILON, hi=1.0)
        kl = b.op("mul", [t, b.op("log", [b.op("div", [t, p])])])
        return b.op("reduce_sum", [kl], axes=(-1 % kl.type.rank,))


def _log_probs(b: Builder, y_pred: Value, from_logits: bool, axis: int) -> Value:
    if from_logits:
        return b.op("log_softmax", [y_pred], axis=axis)
    total = b.op("reduce_sum", [y_pred], axes=(axis,), keepdims=True)
    p = b.op("clip", [b.op("div", [y_pred, total])], lo=EPSILON, hi=1.0 - EPSILON)
    return b.op("log", [p])


class CategoricalCrossentropy(Loss):
    default_name = "categorical_crossentropy"

    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.from_logits, self.label_smoothing, self.axis = bool(from_logits), float(label_smoothing), axis

    def call(self, b: Builder, y_true: Value, y_pred: Value) -> Value:
        axis = self.axis % y_pred.type.rank
        if self.label_smoothing:
            n = y_pred.type.shape[axis]
            if not isinstance(n, int):
                raise ModelError("label smoothing needs a known number of classes")
            ls = self.label_smoothing
            y_true = b.op("add", [b.op("mul", [y_true, const(b, 1 - ls, y_true)]), const(b, ls / n, y_true)])
        log_p = _log_probs(b, y_pred, self.from_logits, axis)
        return b.op("neg", [b.op("reduce_sum", [b.op("mul", [y_true, log_p])], axes=(axis,))])


class SparseCategoricalCrossentropy(Loss):
    default_name = "sparse_categorical_crossentropy"
    sparse_targets = True

    def __init__(self, from_logits: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.from_logits = bool(from_logits)

    def call(self, b: Builder, y_true: Value, y_pred: Value) -> Value:
        labels = sparse_labels(b, y_true, y_pred)
        n = y_pred.type.shape[-1]
        if not isinstance(n, int):
            raise ModelError(f"sparse categorical crossentropy needs a known number of classes, got {y_pred.type}")
        onehot = b.op("one_hot", [labels], depth=n, dtype=y_pred.type.dtype)
        log_p = _log_probs(b, y_pred, self.from_logits, y_pred.type.rank - 1)
        return b.op("neg", [b.op("reduce_sum", [b.op("mul", [onehot, log_p])], axes=(y_pred.type.rank - 1,))])


def sparse_labels(b: Builder, y_true: Value, y_pred: Value) -> Value:
    """Class indices (int64) shaped like y_pred without its class axis."""
    if y_true.type.rank == y_pred.type.rank and y_true.type.shape[-1] == 1:
        y_true = b.op("reshape", [y_true], shape=tuple(0 for _ in range(y_true.type.rank - 1)))
    if y_true.type.rank != y_pred.type.rank - 1:
        raise ModelError(f"sparse targets {y_true.type} do not fit predictions {y_pred.type}")
    return y_true if y_true.type.dtype == "int64" else b.op("cast", [y_true], to="int64")


class BinaryCrossentropy(Loss):
    default_name = "binary_crossentropy"

    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.from_logits, self.label_smoothing = bool(from_logits), float(label_smoothing)

    def call(self, b: Builder, y_true: Value, y_pred: Value) -> Value:
        if self.label_smoothing:
            ls = self.label_smoothing
            y_true = b.op("add", [b.op("mul", [y_true, const(b, 1 - ls, y_true)]), const(b, 0.5 * ls, y_true)])
        if self.from_logits:
            # softplus(x) - x * t: -t log(sigmoid(x)) - (1 - t) log(1 - sigmoid(x)), stably.
            per = b.op("sub", [b.op("softplus", [y_pred]), b.op("mul", [y_pred, y_true])])
        else:
            p = b.op("clip", [y_pred], lo=EPSILON, hi=1.0 - EPSILON)
            one = const(b, 1.0, p)
            pos = b.op("mul", [y_true, b.op("log", [p])])
            neg = b.op("mul", [b.op("sub", [one, y_true]), b.op("log", [b.op("sub", [one, p])])])
            per = b.op("neg", [b.op("add", [pos, neg])])
        return mean_last(b, per)


def pack_weighted_target(y: np.ndarray, sample_weight: np.ndarray) -> np.ndarray:
    """[N, ...] targets and [N] weights -> float32 [N, k + 1]: the target's values, then the weight.
    Class indices stay exact (float32 holds every integer below 2**24)."""
    n = y.shape[0]
    return np.concatenate([y.reshape(n, -1).astype(np.float32), sample_weight.reshape(n, 1).astype(np.float32)], 1)


def packed_type(y: TensorType) -> TensorType:
    k = int(np.prod([int(d) for d in y.shape[1:]], dtype=np.int64))
    return TensorType("float32", (y.shape[0], k + 1))


def unpack_weighted_target(b: Builder, packed: Value, y: TensorType) -> tuple[Value, Value]:
    """The inverse of `pack_weighted_target` in the graph: (target of type y, weights [N])."""
    k = int(packed.type.shape[1]) - 1
    cols = b.op("slice", [packed], axes=(1,), starts=(0,), ends=(k,))
    target = b.op("reshape", [cols], shape=(0, *(int(d) for d in y.shape[1:])))
    if y.dtype != "float32":
        target = b.op("cast", [target], to=y.dtype)
    w = b.op("slice", [packed], axes=(1,), starts=(k,), ends=(k + 1,))
    return target, b.op("reshape", [w], shape=(0,))


class SampleWeighted(Loss):
    """`loss` reading its target and sample weights from one packed target input (see above)."""

    def __init__(self, loss: Loss, target: TensorType) -> None:
        super().__init__(reduction=loss.reduction, name=loss.name)
        self.loss, self.target = loss, target

    def __call__(self, b: Builder, y_true: Value, y_pred: Value, sample_weight: Value | None = None) -> Value:
        target, w = unpack_weighted_target(b, y_true, self.target)
        return self.loss(b, target, y_pred, w)


_ALIASES: dict[str, type[Loss]] = {
    "mse": MeanSquaredError,
    "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError,
    "mean_absolute_error": MeanAbsoluteError,
    "huber": Huber,
    "huber_loss": Huber,
    "kld": KLDivergence,
    "kl_divergence": KLDivergence,
    "kullback_leibler_divergence": KLDivergence,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
}


def get(identifier: Any) -> Loss:
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in _ALIASES:
            return _ALIASES[key](name=identifier)
        raise ModelError(f"unknown loss {identifier!r}; known: {', '.join(sorted(_ALIASES))}")
    raise ModelError(f"a loss must be a name or a kcompile Loss, got {type(identifier).__name__}")
