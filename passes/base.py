"""Passes are named units: `run(graph) -> PassResult(graph, changed, stats)`.

The PassManager runs a list of passes in order, verifies the graph after each one (a pass that
breaks an invariant is reported by name), and records what each pass did in the graph's metadata
(`pass.<name>` -> counts), which `--emit summary` shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
    """Runs passes in order. `print_after` (a pass name or "all") receives the graph text after
    that pass through `printer`; `records` keeps time and node counts for `--time-passes`."""

    def __init__(
        self,
        passes: list[Pass],
        verify: bool = True,
        print_after: str | None = None,
        printer: Callable[[str], None] = print,
    ) -> None:
        self.passes = passes
        self.verify = verify
        self.print_after = print_after
        self.printer = printer
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
                key = f"pass.{p.name}"
                counts = dict(_parse_counts(graph.metadata.get(key, "")))
                for k, v in result.stats.items():
                    counts[k] = counts.get(k, 0) + v
                graph.metadata[key] = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
            if self.print_after in (p.name, "all"):
                self.printer(f"// after {p.name}\n{graph}")
        return graph

    def explanations(self) -> list[str]:
        """Why rules did not apply where they almost did, from every rewriting pass that ran."""
        out: list[str] = []
        for p in self.passes:
            out += getattr(p, "explanations", [])
        return out

    def timing_table(self) -> str:
        lines = [f"{'pass':<22} {'time ms':>9} {'nodes':>7} {'change':>7}  what"]
        for r in self.records:
            what = ", ".join(f"{k}={v}" for k, v in sorted(r.stats.items())) or "-"
            delta = r.nodes_after - r.nodes_before
            lines.append(f"{r.name:<22} {r.seconds * 1e3:>9.2f} {r.nodes_after:>7} {delta:>+7}  {what}")
        total = sum(r.seconds for r in self.records)
        lines.append(f"{'total':<22} {total * 1e3:>9.2f}")
        return "\n".join(lines)


def _parse_counts(text: str) -> list[tuple[str, int]]:
    pairs = [item.split("=") for item in text.split(", ") if "=" in item]
    return [(k, int(v)) for k, v in pairs]
