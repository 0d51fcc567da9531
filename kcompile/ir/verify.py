"""The IR verifier: checks the invariants stated in `graph.py` and re-derives every type."""

from __future__ import annotations

from ..errors import GraphError, KCompileError
from ..ops.registry import get_op
from .graph import Graph, Param
from .types import TensorType


def verify(graph: Graph) -> None:
    defined: set[int] = set()
    names: dict[str, object] = {}

    def define(v: object, name: str, what: str) -> None:
        if id(v) in defined:
            raise GraphError(f"{what} '{name}' is defined twice")
        if name in names and names[name] is not v:
            raise GraphError(f"two values are named '{name}'")
        defined.add(id(v))
        names[name] = v

    for v in graph.inputs:
        if isinstance(v, Param) or v.producer is not None:
            raise GraphError(f"graph input '{v.name}' must be a plain value")
        define(v, v.name, "input")
    param_ids = set()
    for p in graph.params:
        if not isinstance(p, Param):
            raise GraphError(f"'{p.name}' in graph.params is not a Param")
        if p.data.shape != tuple(p.type.shape):
            raise GraphError(f"param '{p.name}' holds shape {p.data.shape} but is typed {p.type}")
        define(p, p.name, "param")
        param_ids.add(id(p))
    phase_nodes = 0
    for node in graph.nodes:
        where = f"node {node!r}" + (f" (scope '{node.scope}')" if node.scope else "")
        try:
            opdef = get_op(node.op)
            opdef.check_arity(len(node.inputs))
            if opdef.check_attrs(node.attrs) != node.attrs:
                raise GraphError("attributes are not normalised (defaults missing or lists not tuples)")
        except GraphError as err:
            raise GraphError(f"{where}: {err.message}") from None
        for v in node.inputs:
            if isinstance(v, Param) and id(v) not in param_ids:
                raise GraphError(f"{where}: uses param '{v.name}' that is missing from graph.params")
            if id(v) not in defined:
                raise GraphError(f"{where}: input '{v.name}' is used before it is defined")
        assert opdef.infer is not None
        try:
            expect = opdef.infer([v.type for v in node.inputs], node.attrs)
        except KCompileError as err:
            raise GraphError(f"{where}: {err.message}") from None
        if len(expect) != len(node.outputs):
            raise GraphError(f"{where}: op gives {len(expect)} outputs, node has {len(node.outputs)}")
        for out, t in zip(node.outputs, expect, strict=True):
            if out.producer is not node:
                raise GraphError(f"{where}: output '{out.name}' does not point back to its node")
            if not _compatible(out.type, t):
                raise GraphError(f"{where}: output '{out.name}' is typed {out.type}, the op gives {t}")
            define(out, out.name, "value")
        if node.op == "learning_phase":
            phase_nodes += 1
            if graph.learning_phase is not node.outputs[0]:
                raise GraphError("the learning_phase node's output is not graph.learning_phase")
    if phase_nodes > 1:
        raise GraphError("a graph has at most one learning_phase node")
    if graph.learning_phase is not None and id(graph.learning_phase) not in defined:
        raise GraphError("graph.learning_phase is not defined in the graph")
    for v in graph.outputs:
        if id(v) not in defined:
            raise GraphError(f"graph output '{v.name}' is not defined in the graph")


def _compatible(have: TensorType, want: TensorType) -> bool:
    # Symbols freshly minted by a shape rule (unknown sizes) match any symbol or size.
    if have.dtype != want.dtype or have.rank != want.rank:
        return False
    return all(a == b or isinstance(a, str) or isinstance(b, str) for a, b in zip(have.shape, want.shape, strict=True))
