"""Keras 3 weight regularizers as graph builders: `reg(b, w) -> scalar penalty`.

`L1(l1)(w) = l1 * sum(|w|)`, `L2(l2)(w) = l2 * sum(w^2)` (no one-half), `L1L2(l1, l2)` both.
The penalties are added to the training loss (and so to the reported loss), as Keras does.

A layer carries them as attributes named `<weight>_regularizer` (`kernel_regularizer` applies to
`layer.kernel`, `bias_regularizer` to `layer.bias`); `penalties(model)` finds them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelError
from ..ir.builder import Builder
from ..ir.graph import Param, Value


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


class L1(L1L2):
    def __init__(self, l1: float = 0.01) -> None:
        super().__init__(l1=l1)


class L2(L1L2):
    def __init__(self, l2: float = 0.01) -> None:
        super().__init__(l2=l2)


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
