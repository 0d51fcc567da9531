"""The readable text form of a graph (`kcompile ... --emit ir`), one line per param and node:

graph mnist(%img: float32[None, 784]) -> (%dense_2) {
  param @dense/kernel: float32[784, 128]  # trainable, 100352 values
  %dense/matmul: float32[None, 128] = matmul(%img, @dense/kernel)  # device gpu:0, at m.py:4
  ...
  return %dense_2
}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .graph import Graph, Param, Value


def _ref(v: Value) -> str:
    return ("@" if isinstance(v, Param) else "%") + v.name


def _attr(v: Any) -> str:
    if isinstance(v, np.ndarray):
        if v.size <= 8:
            return f"{v.dtype}{list(v.shape)} {np.array2string(v.reshape(-1), separator=', ')}"
        return f"{v.dtype}{list(v.shape)} <{v.size} values>"
    if isinstance(v, tuple):
        return "[" + ", ".join(_attr(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    return repr(v) if isinstance(v, str) else str(v)


def print_graph(graph: Graph) -> str:
    ins = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    outs = ", ".join(_ref(v) for v in graph.outputs)
    lines = [f"graph {graph.name}({ins}) -> ({outs}) {{"]
    for p in graph.params:
        flag = "trainable" if p.trainable else "frozen"
        lines.append(f"  param @{p.name}: {p.type}  # {flag}, {p.data.size} values")
    for node in graph.nodes:
        attrs = ", ".join(f"{k}={_attr(v)}" for k, v in node.attrs.items())
        args = ", ".join(_ref(v) for v in node.inputs)
        lhs = ", ".join(f"%{o.name}: {o.type}" for o in node.outputs)
        call = f"{node.op}({args}{', ' if args and attrs else ''}{attrs})"
        notes = []
        if node.device:
            notes.append(f"device {node.device}")
        if node.loc:
            notes.append(f"at {node.loc}")
        lines.append(f"  {lhs} = {call}" + (f"  # {', '.join(notes)}" if notes else ""))
    lines.append(f"  return {outs}")
    lines.append("}")
    return "\n".join(lines)
