"""JSON (de)serialisation of graphs: `to_json(graph) -> str`, `from_json(text) -> Graph`.

Arrays (param values, constant attrs) are stored as base64 of their little-endian bytes with
dtype and shape, so a round trip is bit-exact. Shared params stay shared: nodes refer to params by
name, and each param is written once. Nothing in the format is executable.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from ..errors import GraphError, KCompileError, SourceLoc
from ..ops.registry import get_op
from .graph import Graph, Node, Param, Value
from .types import DTYPES, TensorType

FORMAT = "kcompile-ir"
VERSION = 1


def _enc_array(a: np.ndarray) -> dict[str, Any]:
    data = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False)
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": base64.b64encode(data.tobytes()).decode()}


def _dec_array(d: dict[str, Any]) -> np.ndarray:
    if d.get("dtype") not in DTYPES:
        raise GraphError(f"unsupported array dtype {d.get('dtype')!r} in IR JSON")
    raw = base64.b64decode(d["data"])
    dtype = np.dtype(d["dtype"]).newbyteorder("<")
    return np.frombuffer(raw, dtype=dtype).reshape(d["shape"]).astype(d["dtype"])


def _enc_attr(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return {"ndarray": _enc_array(v)}
    if isinstance(v, tuple):
        return {"tuple": [_enc_attr(x) for x in v]}
    if isinstance(v, np.generic):
        return v.item()
    return v


def _dec_attr(v: Any) -> Any:
    if isinstance(v, dict):
        if "ndarray" in v:
            return _dec_array(v["ndarray"])
        if "tuple" in v:
            return tuple(_dec_attr(x) for x in v["tuple"])
        raise GraphError(f"unknown attribute encoding {sorted(v)} in IR JSON")
    return v


def _enc_type(t: TensorType) -> dict[str, Any]:
    return {"dtype": t.dtype, "shape": list(t.shape)}


def _dec_type(d: dict[str, Any]) -> TensorType:
    return TensorType(d["dtype"], tuple(d["shape"]))


def to_json(graph: Graph, with_data: bool = True) -> str:
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "name": graph.name,
        "metadata": graph.metadata,
        "inputs": [{"name": v.name, **_enc_type(v.type)} for v in graph.inputs],
        "params": [
            {
                "name": p.name,
                **_enc_type(p.type),
                "trainable": p.trainable,
                "initializer": p.initializer,
                **({"value": _enc_array(p.data)} if with_data else {}),
            }
            for p in graph.params
        ],
        "nodes": [
            {
                "op": n.op,
                "inputs": [v.name for v in n.inputs],
                "attrs": {k: _enc_attr(v) for k, v in n.attrs.items()},
                "outputs": [{"name": o.name, **_enc_type(o.type)} for o in n.outputs],
                "device": n.device,
                "scope": n.scope,
                "loc": [n.loc.file, n.loc.line, n.loc.col] if n.loc else None,
            }
            for n in graph.nodes
        ],
        "outputs": [v.name for v in graph.outputs],
        "learning_phase": graph.learning_phase.name if graph.learning_phase is not None else None,
    }
    return json.dumps(doc, indent=1)


def from_json(text: str) -> Graph:
    try:
        doc = json.loads(text)
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise GraphError(f"not a {FORMAT} v{VERSION} document")
        graph = Graph(doc["name"])
        graph.metadata = dict(doc.get("metadata", {}))
        env: dict[str, Value] = {}
        for d in doc["inputs"]:
            v = Value(d["name"], _dec_type(d))
            graph.inputs.append(v)
            graph.claim_name(v.name)
            env[v.name] = v
        for d in doc["params"]:
            t = _dec_type(d)
            data = _dec_array(d["value"]) if "value" in d else np.zeros(tuple(int(d) for d in t.shape), DTYPES[t.dtype])
            p = Param(d["name"], data, bool(d["trainable"]), d.get("initializer", ""))
            graph.add_param(p)
            env[p.name] = p
        for d in doc["nodes"]:
            get_op(d["op"])
            loc = SourceLoc(*d["loc"]) if d.get("loc") else None
            attrs = {k: _dec_attr(v) for k, v in d["attrs"].items()}
            node = Node(
                d["op"], [env[name] for name in d["inputs"]], attrs, [], d.get("device"), d.get("scope", ""), loc
            )
            for o in d["outputs"]:
                v = Value(o["name"], _dec_type(o), node)
                node.outputs.append(v)
                graph.claim_name(v.name)
                env[v.name] = v
            graph.nodes.append(node)
        graph.outputs = [env[name] for name in doc["outputs"]]
        if doc.get("learning_phase"):
            graph.learning_phase = env[doc["learning_phase"]]
    except KCompileError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise GraphError(f"malformed IR JSON: {type(err).__name__}: {err}") from None
    graph.verify()
    return graph
