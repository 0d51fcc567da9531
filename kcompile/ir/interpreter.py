"""The NumPy reference interpreter: the definition of what a graph computes.

`run_graph(graph, feeds, training=False, seed=0)` evaluates every node with its op's reference
implementation. Feeds are checked against the input types (symbolic dims bound consistently).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import RuntimeFailure
from ..ops.registry import get_op
from .graph import Graph, Value
from .types import DTYPES


class _Context:
    def __init__(self, training: bool, seed: int) -> None:
        self.training = training
        self._seed = seed
        self._draws = 0

    def rng(self, seed: int) -> np.random.Generator:
        # Each random op draw gets its own stream, reproducible for a given (run seed, op seed).
        self._draws += 1
        return np.random.default_rng([self._seed, seed, self._draws])


def check_feeds(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Feeds matched to graph inputs by name, with dtypes and shapes checked."""
    missing = [v.name for v in graph.inputs if v.name not in feeds]
    if missing:
        raise RuntimeFailure(f"missing input(s) {', '.join(missing)}; the model takes {[v.name for v in graph.inputs]}")
    extra = sorted(set(feeds) - {v.name for v in graph.inputs})
    if extra:
        raise RuntimeFailure(f"unknown input(s) {', '.join(extra)}; the model takes {[v.name for v in graph.inputs]}")
    bindings: dict[str, int] = {}
    out = {}
    for v in graph.inputs:
        array = np.asarray(feeds[v.name])
        if array.dtype != DTYPES[v.type.dtype] and np.can_cast(array.dtype, DTYPES[v.type.dtype], "same_kind"):
            array = array.astype(v.type.dtype)
        if not v.type.matches(array, bindings):
            raise RuntimeFailure(f"input '{v.name}' expects {v.type}, got {array.dtype}{list(array.shape)}")
        out[v.name] = array
    return out


def run_graph(graph: Graph, feeds: Mapping[str, np.ndarray], training: bool = False, seed: int = 0) -> list[np.ndarray]:
    ctx = _Context(training, seed)
    env: dict[int, np.ndarray] = {}
    checked = check_feeds(graph, feeds)
    for v in graph.inputs:
        env[id(v)] = checked[v.name]
    for p in graph.params:
        env[id(p)] = p.data
    for node in graph.nodes:
        opdef = get_op(node.op)
        assert opdef.reference is not None
        results = opdef.reference(ctx, [_get(env, v) for v in node.inputs], node.attrs)
        for out, r in zip(node.outputs, results, strict=True):
            env[id(out)] = np.asarray(r)
    return [_get(env, v) for v in graph.outputs]


def _get(env: dict[int, np.ndarray], v: Value) -> np.ndarray:
    try:
        return env[id(v)]
    except KeyError:
        raise RuntimeFailure(f"value '{v.name}' is used before it is computed") from None
