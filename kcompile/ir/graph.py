"""The graph IR: Values (SSA edges), Params (weights), Nodes (op applications), Graphs.

Invariants (checked by `verify`):
- every Value has exactly one definition: a graph input, a Param, or one output of one Node;
- `graph.nodes` is in topological order: a node's inputs are defined before it;
- weights are shared by identity: one `Param` object, referenced by every node that uses it,
  appears once in `graph.params` (and so once in every ONNX file and checkpoint);
- the learning phase, when the graph has phase-dependent ops, is the single bool[] output of the
  graph's one `learning_phase` node (Keras' `K.learning_phase()`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SourceLoc
from .types import TensorType, dtype_of


class Value:
    """An SSA edge: a typed tensor produced once and used by any number of nodes."""

    __slots__ = ("name", "producer", "type")

    def __init__(self, name: str, type: TensorType, producer: Node | None = None) -> None:
        self.name = name
        self.type = type
        self.producer = producer

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Param(Value):
    """A named weight. Several nodes referencing one Param share that weight."""

    __slots__ = ("data", "initializer", "trainable")

    def __init__(self, name: str, data: np.ndarray, trainable: bool = True, initializer: str = "") -> None:
        super().__init__(name, TensorType(dtype_of(data), tuple(int(d) for d in data.shape)))
        self.data = data
        self.trainable = trainable
        self.initializer = initializer

    def assign(self, data: np.ndarray) -> None:
        """Replace the weight's value; the new value must have the same shape and dtype."""
        from ..errors import ShapeError

        array = np.asarray(data)
        if array.shape != self.data.shape:
            raise ShapeError(
                f"weight '{self.name}' has shape {self.data.shape}, cannot assign a value of shape {array.shape}"
            )
        self.data = array.astype(self.data.dtype, copy=True)

    def __repr__(self) -> str:
        return f"@{self.name}: {self.type}"


@dataclass(eq=False)
class Node:
    """One application of a registered op. `meta` is free space for analyses."""

    op: str
    inputs: list[Value]
    attrs: dict[str, Any]
    outputs: list[Value] = field(default_factory=list)
    device: str | None = None
    scope: str = ""
    loc: SourceLoc | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        ins = ", ".join(("@" if isinstance(v, Param) else "%") + v.name for v in self.inputs)
        outs = ", ".join("%" + v.name for v in self.outputs)
        return f"{outs} = {self.op}({ins})"


class Graph:
    """A function from `inputs` to `outputs`, with its weights in `params`."""

    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.params: list[Param] = []
        self.learning_phase: Value | None = None
        self.metadata: dict[str, str] = {}
        self._names: set[str] = set()

    # Names ---------------------------------------------------------------------------------
    def fresh_name(self, hint: str) -> str:
        """A value name unique in this graph, derived from `hint`."""
        base = hint or "v"
        name, i = base, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def claim_name(self, name: str) -> None:
        self._names.add(name)

    # Construction --------------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        value = Value(self.fresh_name(name), type)
        self.inputs.append(value)
        return value

    def add_param(self, param: Param) -> Param:
        if not any(p is param for p in self.params):
            self.params.append(param)
            self._names.add(param.name)
        return param

    # Queries -------------------------------------------------------------------------------
    def values(self) -> Iterator[Value]:
        yield from self.inputs
        yield from self.params
        for node in self.nodes:
            yield from node.outputs

    def users(self) -> dict[Value, list[Node]]:
        uses: dict[Value, list[Node]] = {}
        for node in self.nodes:
            for v in node.inputs:
                uses.setdefault(v, []).append(node)
        return uses

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
        return counts

    def count_params(self, trainable: bool | None = None) -> int:
        return sum(p.data.size for p in self.params if trainable is None or p.trainable == trainable)

    # Rewriting -----------------------------------------------------------------------------
    def replace_uses(self, old: Value, new: Value) -> None:
        """Make every use of `old` (by nodes and graph outputs) a use of `new`."""
        for node in self.nodes:
            node.inputs = [new if v is old else v for v in node.inputs]
        self.outputs = [new if v is old else v for v in self.outputs]
        if self.learning_phase is old:
            self.learning_phase = new

    def remove_dead(self) -> int:
        """Drop nodes none of whose outputs reach a graph output, and unused params."""
        live: set[int] = {id(v) for v in self.outputs}
        kept: list[Node] = []
        for node in reversed(self.nodes):
            if any(id(o) in live for o in node.outputs):
                kept.append(node)
                live.update(id(v) for v in node.inputs)
        removed = len(self.nodes) - len(kept)
        self.nodes = list(reversed(kept))
        self.params = [p for p in self.params if id(p) in live]
        if self.learning_phase is not None and id(self.learning_phase) not in live:
            self.learning_phase = None
        return removed

    def verify(self) -> None:
        from .verify import verify

        verify(self)

    def __str__(self) -> str:
        from .printer import print_graph

        return print_graph(self)


def topo_order(nodes: Iterable[Node]) -> list[Node]:
    """Nodes sorted so that producers come before users (stable for already-sorted input)."""
    nodes = list(nodes)
    produced = {id(o): n for n in nodes for o in n.outputs}
    done: set[int] = set()
    order: list[Node] = []

    def visit(n: Node) -> None:
        stack = [(n, False)]
        while stack:
            cur, expanded = stack.pop()
            if id(cur) in done:
                continue
            if expanded:
                done.add(id(cur))
                order.append(cur)
                continue
            stack.append((cur, True))
            for v in reversed(cur.inputs):
                dep = produced.get(id(v))
                if dep is not None and id(dep) not in done:
                    stack.append((dep, False))

    for n in nodes:
        visit(n)
    return order
