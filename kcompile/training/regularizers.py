"""Keras 3 regularizers as graph builders: `reg(b, w) -> scalar penalty`.

`L1(l1)(w) = l1 * sum(|w|)`, `L2(l2)(w) = l2 * sum(w^2)` (no one-half), `L1L2(l1, l2)` both.
The penalties are added to the training loss and to the evaluation loss (and so to the reported
losses), as Keras' `compute_loss` adds `model.losses`.

Weight penalties: a layer carries them as attributes named `<weight>_regularizer`
(`kernel_regularizer` applies to `layer.kernel`, `bias_regularizer` to `layer.bias`);
`penalties(model)` finds them.

Activity penalties: a layer's `activity_regularizer` applies to each output of each call that a
model makes of it (Keras' `Layer.__call__`): `reg(y) / y.shape[0]` for every output y of rank > 0,
`reg(y)` for a scalar; the batch size is read at run time. `activity_penalties(b, traced)` builds
them from the calls `layers.base.tracing_activity` recorded while the model's graph was traced.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelError
from ..ir.builder import Builder
from ..ir.graph import Param, Value
from ..ir.types import FLOAT_DTYPES


class Regularizer:
    def __call__(self, b: Builder, w: Value) -> Value:
        raise NotImplementedError

    def get_config(self) -> dict[str, float]:
        return dict(vars(self))


def _all_axes(w: Value) -> tuple[int, ...]:
    return tuple(range(w.type.rank))


class L1L2(Regularizer):
    def __init__(self, l1: float = 0.0, l2: float = 0.0) -> None:
        self.l1, self.l2 = float(l1), float(l2)

    def __call__(self, b: Builder, w: Value) -> Value:
        dt = w.type.dtype
        terms = []
        if self.l1:
            s = b.op("reduce_sum", [b.op("abs", [w])], axes=_all_axes(w))
            terms.append(b.op("mul", [b.constant(np.array(self.l1, dt), dt), s]))
        if self.l2:
            s = b.op("reduce_sum", [b.op("mul", [w, w])], axes=_all_axes(w))
            terms.append(b.op("mul", [b.constant(np.array(self.l2, dt), dt), s]))
        if not terms:
            return b.constant(np.array(0.0, dt), dt)
        return terms[0] if len(terms) == 1 else b.op("add", terms)

    def is_zero(self) -> bool:
        return not self.l1 and not self.l2


# Keras' configs: L1 {"l1"}, L2 {"l2"}, L1L2 {"l1", "l2"} (`from_config` is `cls(**config)`).
class L1(L1L2):
    def __init__(self, l1: float = 0.01) -> None:
        super().__init__(l1=l1)

    def get_config(self) -> dict[str, float]:
        return {"l1": self.l1}


class L2(L1L2):
    def __init__(self, l2: float = 0.01) -> None:
        super().__init__(l2=l2)

    def get_config(self) -> dict[str, float]:
        return {"l2": self.l2}


def l1(l1: float = 0.01) -> L1:
    return L1(l1)


def l2(l2: float = 0.01) -> L2:
    return L2(l2)


def get(identifier: Any) -> Regularizer | None:
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, str):
        table = {"l1": L1, "l2": L2, "l1_l2": L1L2, "l1l2": L1L2}
        if identifier.lower() in table:
            return table[identifier.lower()]()
    if isinstance(identifier, dict):
        name = str(identifier.get("class_name", "")).lower()
        config = identifier.get("config", {})
        table2 = {"l1": L1, "l2": L2, "l1l2": L1L2}
        if name in table2:
            return table2[name](**config)
    raise ModelError(f"unknown regularizer {identifier!r}; use kc.regularizers.L1/L2/L1L2 or 'l1', 'l2', 'l1_l2'")


def penalties(layers: list[Any]) -> list[tuple[Param, Regularizer]]:
    """(weight, regularizer) pairs from the `<weight>_regularizer` attributes of the layers and of
    the layers inside them (nested models, TimeDistributed, Bidirectional), each layer once."""
    out: list[tuple[Param, Regularizer]] = []
    for layer in _with_inner(layers):
        for attr, value in sorted(vars(layer).items()):
            if not attr.endswith("_regularizer") or value is None or attr == "activity_regularizer":
                continue
            reg = get(value)
            weight = getattr(layer, attr[: -len("_regularizer")], None)
            if isinstance(weight, Param) and reg is not None:
                out.append((weight, reg))
    return out


def _with_inner(layers: list[Any]) -> list[Any]:
    from ..layers.base import Layer

    out: list[Any] = []
    seen: set[int] = set()
    todo = list(layers)
    while todo:
        layer = todo.pop(0)
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        out.append(layer)
        inner = [v for v in vars(layer).values() if isinstance(v, Layer)]
        if hasattr(layer, "_order"):  # a model: its own layers
            inner += list(layer.layers)
        todo.extend(inner)
    return out


def activity_penalties(b: Builder, traced: list[tuple[Any, list[Value]]]) -> list[Value]:
    """One scalar per traced call output: Keras' `activity_regularizer(y) / y.shape[0]`
    (`divide_no_nan`; a batch is never empty here), `activity_regularizer(y)` for a scalar y."""
    out: list[Value] = []
    for layer, outputs in traced:
        reg = get(layer.activity_regularizer)
        if reg is None or (isinstance(reg, L1L2) and reg.is_zero()):
            continue  # Keras adds an exact 0
        for y in outputs:
            if y.type.dtype not in FLOAT_DTYPES:
                raise ModelError(
                    f"layer '{layer.name}' ({type(layer).__name__}) has an activity_regularizer, but its output is "
                    f"{y.type}; activity regularization needs a float output"
                )
            penalty = reg(b, y)
            if y.type.rank > 0:
                penalty = b.op("div", [penalty, b.op("size", [y], axes=(0,), dtype=y.type.dtype)])
            out.append(penalty)
    return out


def check_activity_regularizers(layers: list[Any]) -> None:
    """Refuse the activity regularizers whose Keras penalty falls on values kcompile's layers do not
    expose: MultiHeadAttention hands its regularizer to its query/key/value/output projections, and
    Bidirectional calls its forward and backward layers (whose regularizers then apply). A model's
    own activity_regularizer is refused too: Keras' Functional drops it, Sequential refuses it."""
    from ..layers.attention import MultiHeadAttention
    from ..layers.recurrent import Bidirectional

    for layer in _with_inner(layers):
        if hasattr(layer, "_order") and layer.activity_regularizer is not None:
            raise ModelError(
                f"model '{layer.name}' has an activity_regularizer, which Keras does not apply to a model; "
                "remove it, or add an ActivityRegularization layer after the model's output"
            )
        if isinstance(layer, MultiHeadAttention) and layer.activity_regularizer is not None:
            raise ModelError(
                f"cannot train MultiHeadAttention '{layer.name}' with an activity_regularizer: Keras applies it to "
                "the query, key, value and output projections, which kcompile does not regularize; remove it or "
                "put an ActivityRegularization layer after the attention"
            )
        if isinstance(layer, Bidirectional):
            for inner in (layer.forward_layer, layer.backward_layer):
                if inner.activity_regularizer is not None:
                    raise ModelError(
                        f"cannot train Bidirectional '{layer.name}': its {type(inner).__name__} '{inner.name}' has an "
                        "activity_regularizer, which Keras applies to each direction's outputs and kcompile does not "
                        "yet; remove it (an ActivityRegularization layer after the Bidirectional regularizes the "
                        "merged output instead)"
                    )
