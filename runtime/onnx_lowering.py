"""IR -> ONNX ModelProto.

Every node is lowered by its registry entry's `onnx` rule through an `_Emitter`. The file:
- opset 21 by default (at most 26, the newest the pinned onnxruntime runs) and IR version 10;
- graph inputs typed from the IR, symbolic dims as `dim_param` (the batch is "batch");
- one initializer per Param, named by its scoped path (a shared weight is stored once);
- each node's device, scope and source location kept in the node's `metadata_props`;
- no node that no output needs, and a gathered-rows transpose done on the indices instead;
- passes `onnx.checker.check_model(full_check=True)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kcompile import __version__
from kcompile.errors import LoweringError
from kcompile.ir.graph import Graph, Node
from kcompile.ir.types import DTYPES, TensorType
from kcompile.ops.registry import get_op

DEFAULT_OPSET = 21
MAX_OPSET = 26  # the newest ai.onnx opset onnxruntime 1.31 runs
MIN_OPSET = 21  # Gelu (20) and the input-axes reductions (18) are used
IR_VERSION = 10


def onnx_dtype(dtype: str) -> int:
    return int(helper.np_dtype_to_tensor_dtype(DTYPES[dtype]))


def value_info(name: str, t: TensorType) -> onnx.ValueInfoProto:
    # Symbolic dims become dim_param (named), static ones dim_value.
    return helper.make_tensor_value_info(name, onnx_dtype(t.dtype), list(t.shape))


class _Emitter:
    def __init__(self, conv_block: int | None = None) -> None:
        self.conv_block = conv_block
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self._names: set[str] = set()
        self._consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self._graph_inputs: dict[str, str] = {}
        self.current: Node | None = None
        self.hint = "v"

    def fresh(self, hint: str) -> str:
        name, i = hint, 1
        while name in self._names:
            name = f"{hint}_{i}"
            i += 1
        self._names.add(name)
        return name

    def blocked_conv(self, w_shape: tuple[int, ...]) -> bool:
        from .nchwc import blockable

        return self.conv_block is not None and blockable(w_shape, self.conv_block)

    def emit(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> list[str]:
        outs = [self.fresh(self.hint) for _ in range(n_out)]
        node = helper.make_node(op_type, list(inputs), outs, name=self.fresh(f"{self.hint}/{op_type}"), **attrs)
        if self.current is not None:
            meta = {"kcompile.op": self.current.op}
            if self.current.device:
                meta["kcompile.device"] = self.current.device
            if self.current.scope:
                meta["kcompile.scope"] = self.current.scope
            if self.current.loc:
                meta["kcompile.loc"] = str(self.current.loc)
            for k, v in meta.items():
                entry = node.metadata_props.add()
                entry.key, entry.value = k, v
        self.nodes.append(node)
        return outs

    def const(self, array: np.ndarray, hint: str = "const") -> str:
        # Identical small constants are stored once.
        array = np.asarray(array)
        key = (str(array.dtype), array.shape, array.tobytes())
        if key in self._consts:
            return self._consts[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        self._consts[key] = name
        return name

    def initializer(self, name: str, array: np.ndarray) -> str:
        name = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def graph_input(self, name: str, type: TensorType) -> str:
        if name not in self._graph_inputs:
            onnx_name = self.fresh(name)
            self.inputs.append(value_info(onnx_name, type))
            self._graph_inputs[name] = onnx_name
        return self._graph_inputs[name]


def _live(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    """The nodes that the graph outputs need, with the unused optional outputs of the rest left
    unnamed (an op's lowering emits all it can produce; e.g. onnxruntime's LSTM then skips the
    full sequence when only the final state is read)."""
    live = set(outputs)
    kept: list[onnx.NodeProto] = []
    for n in reversed(nodes):
        if not any(o in live for o in n.output):
            continue
        schema = onnx.defs.get_schema(n.op_type, domain=n.domain)
        for i, o in enumerate(n.output):
            formal = schema.outputs[min(i, len(schema.outputs) - 1)]
            if o not in live and formal.option == onnx.defs.OpSchema.FormalParameterOption.Optional:
                n.output[i] = ""
        while n.output and not n.output[-1]:
            n.output.pop()
        live.update(x for x in n.input if x)
        kept.append(n)
    return kept[::-1]


def _gather_transposed_indices(
    nodes: list[onnx.NodeProto], outputs: list[str], ranks: dict[str, int], fresh: Callable[[str], str]
) -> list[onnx.NodeProto]:
    """Transpose(Gather(data, idx, axis=0), perm), where perm moves only the axes that come from
    idx and the Transpose is the Gather's one reader -> Gather(data, Transpose(idx, perm[:r])).
    The same values, with the transpose moving one index per row instead of the gathered rows: an
    embedding feeding a recurrent layer (batch-first -> time-major) is this pattern. `ranks` holds
    the ranks of the graph's inputs and initializers (the rewrite needs data's); each new node
    keeps the metadata (device, scope, location) of the node it stands for."""
    readers = dict.fromkeys(outputs, 1)  # a graph output counts as a reader
    for n in nodes:
        for x in n.input:
            readers[x] = readers.get(x, 0) + 1
    producer = {o: n for n in nodes for o in n.output}
    replaced: dict[int, list[onnx.NodeProto]] = {}
    gone: set[int] = set()
    for n in nodes:
        g = producer.get(n.input[0]) if n.op_type == "Transpose" and n.input else None
        if g is None or g.op_type != "Gather" or readers[g.output[0]] != 1 or g.input[0] not in ranks:
            continue
        if any(a.name == "axis" and a.i != 0 for a in g.attribute):
            continue
        perm = list(next(a.ints for a in n.attribute if a.name == "perm"))
        r = len(perm) - ranks[g.input[0]] + 1  # idx's rank: the gathered axes come first
        if r < 1 or sorted(perm[:r]) != list(range(r)) or perm[r:] != list(range(r, len(perm))):
            continue
        idx_t = fresh(f"{n.output[0]}/indices")
        transpose = helper.make_node("Transpose", [g.input[1]], [idx_t], name=idx_t, perm=perm[:r])
        gather = helper.make_node("Gather", [g.input[0], idx_t], list(n.output), name=n.name, axis=0)
        transpose.metadata_props.extend(n.metadata_props)
        gather.metadata_props.extend(g.metadata_props)
        replaced[id(n)] = [transpose, gather]
        gone.add(id(g))
    return [m for n in nodes if id(n) not in gone for m in replaced.get(id(n), [n])]


def lower_to_onnx(
    graph: Graph, opset: int = DEFAULT_OPSET, check: bool = True, conv_block: int | None = None
) -> onnx.ModelProto:
    """`graph` as an ONNX model. `conv_block` (an NCHWc block size) says the model will run with
    its Convs in blocked kernels even where the filter is not a constant
    (`nchwc.block_runtime_convs`), so lowerings may prefer a Conv to GEMM-based forms there."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise LoweringError(
            f"opset {opset} is not supported: choose {MIN_OPSET}..{MAX_OPSET} (onnxruntime runs <= {MAX_OPSET})"
        )
    e = _Emitter(conv_block)
    names: dict[int, str] = {}
    for v in graph.inputs:
        names[id(v)] = e.graph_input(v.name, v.type)
    if graph.learning_phase is not None:
        e.graph_input("learning_phase", TensorType("bool", ()))  # the name is part of the interface
    for p in graph.params:
        names[id(p)] = e.initializer(p.name, p.data)
    # Reserve output names so that no intermediate value takes them.
    out_names = [e.fresh(v.name) for v in graph.outputs]
    produced_by_node: set[str] = set()
    for node in graph.nodes:
        opdef = get_op(node.op)
        if opdef.onnx is None:
            raise LoweringError(f"op '{node.op}' has no ONNX lowering", node.loc)
        e.current, e.hint = node, node.outputs[0].name if node.outputs else node.op
        try:
            ins = [names[id(v)] for v in node.inputs]
        except KeyError:
            raise LoweringError(f"node {node!r} uses a value that is not defined before it") from None
        outs = opdef.onnx(e, ins, node.attrs, [v.type for v in node.inputs])
        for v, name in zip(node.outputs, outs, strict=True):
            names[id(v)] = name
    e.current = None
    for n in e.nodes:
        produced_by_node.update(n.output)
    outputs = []
    renamed: dict[str, str] = {}
    for v, name in zip(graph.outputs, out_names, strict=True):
        inner = names[id(v)]
        if inner in produced_by_node and inner not in renamed:
            renamed[inner] = name  # the producing node writes the output directly
        else:
            e.nodes.append(helper.make_node("Identity", [renamed.get(inner, inner)], [name], name=f"{name}/output"))
        outputs.append(value_info(name, v.type))
    for n in e.nodes:
        n.input[:] = [renamed.get(x, x) for x in n.input]
        n.output[:] = [renamed.get(x, x) for x in n.output]
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in e.inputs}
    ranks.update({t.name: len(t.dims) for t in e.initializers})
    nodes = _gather_transposed_indices(_live(e.nodes, out_names), out_names, ranks, e.fresh)
    # Constants only dead nodes read go too (weights stay: they are the model's named state).
    read = {x for n in nodes for x in n.input} | {names[id(p)] for p in graph.params}
    inits = [t for t in e.initializers if t.name in read]
    g = helper.make_graph(nodes, graph.name, e.inputs, outputs, inits)
    model = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="kcompile",
        producer_version=__version__,
    )
    model.ir_version = IR_VERSION
    for key, text in sorted(graph.metadata.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, text
    if check:
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as err:
            raise LoweringError(f"the ONNX model failed onnx.checker: {err}") from None
    return model
