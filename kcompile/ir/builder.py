"""The one graph builder. The Python layer API, the `.k` translator and the `.keras` importer all
emit IR through it.

`device(...)` and `scope(...)` are context managers whose innermost setting is stamped on every
node emitted inside them; `loc(...)` does the same for the source location.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import GraphError, ShapeError, SourceLoc
from ..ops.registry import get_op
from .graph import Graph, Node, Param, Value
from .types import TensorType


class Builder:
    def __init__(self, graph: Graph | None = None) -> None:
        self.graph = graph if graph is not None else Graph()
        self._device: str | None = None
        self._scope: list[str] = []
        self._loc: SourceLoc | None = None

    # Context -------------------------------------------------------------------------------
    @contextmanager
    def device(self, device: str | None) -> Iterator[None]:
        saved, self._device = self._device, device if device is not None else self._device
        try:
            yield
        finally:
            self._device = saved

    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    @contextmanager
    def loc(self, loc: SourceLoc | None) -> Iterator[None]:
        saved, self._loc = self._loc, loc if loc is not None else self._loc
        try:
            yield
        finally:
            self._loc = saved

    @property
    def scope_path(self) -> str:
        return "/".join(s for s in self._scope if s)

    # Emission ------------------------------------------------------------------------------
    def input(self, name: str, type: TensorType) -> Value:
        return self.graph.add_input(name, type)

    def param(self, param: Param) -> Param:
        return self.graph.add_param(param)

    def constant(self, value: Any, dtype: str = "float32") -> Value:
        array = np.asarray(value, dtype=dtype) if not isinstance(value, np.ndarray) else value
        return self.op("constant", [], value=array)

    def learning_phase(self) -> Value:
        """The graph's one learning-phase value (created on first use)."""
        if self.graph.learning_phase is None:
            node = self._make("learning_phase", [], {}, name_hint="learning_phase")
            node.device, node.scope, node.loc = None, "", None
            self.graph.learning_phase = node.outputs[0]
        return self.graph.learning_phase

    def op(self, name: str, inputs: Sequence[Value], **attrs: Any) -> Value:
        node = self._make(name, list(inputs), attrs)
        if len(node.outputs) != 1:
            raise GraphError(f"op '{name}' has {len(node.outputs)} outputs; use op_multi")
        return node.outputs[0]

    def op_multi(self, name: str, inputs: Sequence[Value], **attrs: Any) -> list[Value]:
        return self._make(name, list(inputs), attrs).outputs

    def _make(self, name: str, inputs: list[Value], attrs: dict[str, Any], name_hint: str = "") -> Node:
        opdef = get_op(name)
        opdef.check_arity(len(inputs))
        attrs = opdef.check_attrs(attrs)
        assert opdef.infer is not None
        try:
            out_types = opdef.infer([v.type for v in inputs], attrs)
        except ShapeError as err:
            raise ShapeError(err.message, err.loc or self._loc) from None
        for v in inputs:
            if isinstance(v, Param):
                self.graph.add_param(v)
        prefix = self.scope_path
        hint = name_hint or (f"{prefix}/{name}" if prefix else name)
        node = Node(name, inputs, attrs, device=self._device, scope=prefix, loc=self._loc)
        node.outputs = [Value(self.graph.fresh_name(hint), t, node) for t in out_types]
        self.graph.nodes.append(node)
        return node
