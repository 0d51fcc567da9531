"""The typed graph IR (see `graph.py` for its invariants)."""

from .builder import Builder
from .graph import Graph, Node, Param, Value, topo_order
from .interpreter import run_graph
from .printer import print_graph
from .serialize import from_json, to_json
from .types import DTYPES, Dim, Shape, TensorType

__all__ = [
    "DTYPES",
    "Builder",
    "Dim",
    "Graph",
    "Node",
    "Param",
    "Shape",
    "TensorType",
    "Value",
    "from_json",
    "print_graph",
    "run_graph",
    "to_json",
    "topo_order",
]
