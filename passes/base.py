"""Passes are named units: `run(graph) -> PassResult(graph, changed, stats)`.

The PassManager runs a list of passes in order, verifies the graph after each one (a pass that
breaks an invariant is reported by name), and records what each pass did in the graph's metadata
(`pass.<name>` -> counts), which `--emit summary` shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kcompile.errors import GraphError
from kcompile.ir.graph import Graph


@dataclass
class PassResult:
    graph: Graph
    changed: bool
    stats: dict[str, int] = field(default_factory=dict)


class Pass:
    name = "pass"

    def run(self, graph: Graph) -> PassResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


@dataclass
class PassRecord:
    name: str
    seconds: float
    nodes_before: int
    nodes_after: int
    changed: bool
    stats: dict[str, int]


class PassManager:
    def __init__(self, passes: list[Pass], verify: bool = True) -> None:
        self.passes = passes
        self.verify = verify
        self.records: list[PassRecord] = []

    def run(self, graph: Graph) -> Graph:
        for p in self.passes:
            before = len(graph.nodes)
            start = time.perf_counter()
            result = p.run(graph)
            elapsed = time.perf_counter() - start
            graph = result.graph
            if self.verify:
                try:
                    graph.verify()
                except GraphError as err:
                    raise GraphError(f"after pass {p.name}: {err.message}") from None
            self.records.append(PassRecord(p.name, elapsed, before, len(graph.nodes), result.changed, result.stats))
            if result.stats:
                graph.metadata[f"pass.{p.name}"] = ", ".join(f"{k}={v}" for k, v in sorted(result.stats.items()))
        return graph
