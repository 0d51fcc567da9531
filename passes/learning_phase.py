"""FoldLearningPhasePass: the learning phase becomes a constant, and every phase-dependent op
becomes what its registry entry's `fold_phase` says (`dropout(x) -> x` at 0,
`batch_norm(x, ..., phase) -> batch_norm(x, ...)` with moving statistics at 0).
"""

from __future__ import annotations

import numpy as np

from kcompile.ir.graph import Graph, Node, Value
from kcompile.ir.types import TensorType
from kcompile.ops.registry import get_op

from .base import Pass, PassResult


class FoldLearningPhasePass(Pass):
    name = "fold-learning-phase"

    def __init__(self, training: bool = False) -> None:
        self.training = training

    def run(self, graph: Graph) -> PassResult:
        phase = graph.learning_phase
        if phase is None:
            return PassResult(graph, False)
        const = Value(graph.fresh_name("learning_phase_const"), TensorType("bool", ()))
        const_node = Node("constant", [], {"value": np.array(self.training)}, [const])
        const.producer = const_node
        stats = {"folded": 0}
        nodes: list[Node] = []
        for node in graph.nodes:
            if node.op == "learning_phase":
                nodes.append(const_node)
                continue
            node.inputs = [const if v is phase else v for v in node.inputs]
            fold = get_op(node.op).fold_phase
            replacement = fold(node, self.training) if fold is not None and const in node.inputs else None
            if isinstance(replacement, Node):
                for out in replacement.outputs:
                    out.producer = replacement
                nodes.append(replacement)
                stats["folded"] += 1
            elif isinstance(replacement, Value):
                graph.replace_uses(node.outputs[0], replacement)  # later nodes are still in graph.nodes
                stats["folded"] += 1
            else:
                nodes.append(node)
        graph.nodes = nodes
        graph.outputs = [const if v is phase else v for v in graph.outputs]
        graph.learning_phase = None
        graph.remove_dead()
        return PassResult(graph, True, stats)
