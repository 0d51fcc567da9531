"""ConstantFoldingPass and CSEPass.

Constant folding: a node all of whose inputs are constants (constant nodes, and weights when
`constant_params`, as in inference export) is evaluated with the reference interpreter and
replaced by its value. A value derived from a weight stays a named, frozen weight (so the ONNX
initializer keeps the scoped name); other results become `constant` nodes.

CSE: two nodes with the same op, the same input values and equal attributes on the same device
compute the same thing; the later one is replaced by the earlier. Ops that draw random numbers
are never merged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kcompile.ir.builder import Builder
from kcompile.ir.graph import Graph, Node, Param
from kcompile.ops.registry import get_op

from .base import Pass, PassResult
from .rewrite import Constants, new_const, tidy_param_names

# Ops whose value is not a function of their inputs alone.
IMPURE = frozenset({"dropout", "learning_phase"})
MAX_FOLD_ELEMENTS = 1 << 26


class _Ctx:
    training = False

    def rng(self, seed: int) -> np.random.Generator:  # never reached: random ops are not folded
        raise AssertionError("random op reached constant folding")


class ConstantFoldingPass(Pass):
    name = "constant-folding"

    def __init__(self, constant_params: bool = True) -> None:
        self.consts = Constants(params=constant_params)

    def run(self, graph: Graph) -> PassResult:
        folded = 0
        b = Builder(graph)
        for node in list(graph.nodes):
            if node.op in IMPURE or node.op == "constant" or not node.inputs:
                continue
            values = [self.consts.value(v) for v in node.inputs]
            if any(v is None for v in values):
                continue
            opdef = get_op(node.op)
            assert opdef.reference is not None
            outs = opdef.reference(_Ctx(), values, node.attrs)  # type: ignore[arg-type]
            if sum(np.asarray(o).size for o in outs) > MAX_FOLD_ELEMENTS:
                continue
            like = next((v for v in node.inputs if isinstance(v, Param)), None)
            start = len(graph.nodes)
            with b.device(node.device), b.loc(node.loc):
                news = [
                    new_const(b, np.asarray(o).astype(v.type.dtype), like)
                    for o, v in zip(outs, node.outputs, strict=True)
                ]
            added = graph.nodes[start:]
            del graph.nodes[start:]
            at = graph.nodes.index(node)
            graph.nodes[at:at] = added
            for old, new in zip(node.outputs, news, strict=True):
                graph.replace_uses(old, new)
            folded += 1
        graph.remove_dead()
        tidy_param_names(graph)
        return PassResult(graph, folded > 0, {"folded": folded} if folded else {})


def _attr_key(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, tuple):
        return tuple(_attr_key(v) for v in value)
    return value


class CSEPass(Pass):
    name = "cse"

    def run(self, graph: Graph) -> PassResult:
        seen: dict[Any, Node] = {}
        merged = 0
        for node in graph.nodes:
            if node.op in IMPURE:
                continue
            # Placement is the user's intent: replicas on two devices are not merged.
            attrs = tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items()))
            key = (node.op, node.device, tuple(id(v) for v in node.inputs), attrs)
            first = seen.get(key)
            if first is None:
                seen[key] = node
                continue
            for old, new in zip(node.outputs, first.outputs, strict=True):
                graph.replace_uses(old, new)
            merged += 1
        graph.remove_dead()
        return PassResult(graph, merged > 0, {"merged": merged} if merged else {})
