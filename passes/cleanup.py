"""DeadCodeEliminationPass: nodes whose outputs reach no graph output, and unused params, go."""

from __future__ import annotations

from kcompile.ir.graph import Graph

from .base import Pass, PassResult


class DeadCodeEliminationPass(Pass):
    name = "dce"

    def run(self, graph: Graph) -> PassResult:
        removed = graph.remove_dead()
        return PassResult(graph, removed > 0, {"removed": removed} if removed else {})
