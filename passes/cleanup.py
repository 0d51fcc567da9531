"""DeadCodeEliminationPass: nodes whose outputs reach no graph output, and unused params, go;
weights that folding renamed (`conv2d/kernel_1`) get their plain names back."""

from __future__ import annotations

from kcompile.ir.graph import Graph

from .base import Pass, PassResult
from .rewrite import tidy_param_names


class DeadCodeEliminationPass(Pass):
    name = "dce"

    def run(self, graph: Graph) -> PassResult:
        removed = graph.remove_dead()
        tidy_param_names(graph)
        return PassResult(graph, removed > 0, {"removed": removed} if removed else {})
