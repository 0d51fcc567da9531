"""Blocked (NCHWc) convolutions for weights that change at run time.

onnxruntime's NchwcTransformer moves a Conv into MLAS's blocked kernels, with channels in blocks
of 8 (AVX2) or 16 (AVX-512), only when its filter is a constant it can reorder once. In a training
step the filters are state fed every step, so those Convs stay in the NCHW im2col + GEMM path,
which is about 1.2-2x slower. `block_runtime_convs` does the transformer's work for them: the
filter reorder becomes graph nodes (a Reshape, Transpose, Reshape of the small filter), and the Conv
becomes onnxruntime's own blocked ops,

    ReorderInput(x) -> com.microsoft.nchwc Conv(x', reorder(w), b) -> ReorderOutput

(no ReorderInput for an input with fewer channels than a block, which MLAS reads as NCHW; max
pools of the output pool it blocked), whose numbers equal the plain Conv's up to float32
summation order. `nchwc_block()` finds the
block size by letting onnxruntime optimize a constant-filter Conv and reading the filter it wrote;
None where its build has no blocked kernels (then nothing is rewritten).
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

NCHWC_DOMAIN = "com.microsoft.nchwc"
_PROBE_CHANNELS = 64  # a multiple of every block size MLAS uses (4, 8, 16)


def reorder_filter(w: np.ndarray, block: int) -> np.ndarray:
    """A filter [O, C, KH, KW] in MLAS's order: OIHWBiBo, [O/B, C/B, KH, KW, C%B, O%B], for a
    blocked input; OIHWBo, [O/B, C, KH, KW, O%B], for an NCHW one with fewer than B channels."""
    o, c, kh, kw = w.shape
    if c < block:
        return w.reshape(o // block, block, c, kh, kw).transpose(0, 2, 3, 4, 1).reshape(w.shape)
    return w.reshape(o // block, block, c // block, block, kh, kw).transpose(0, 2, 4, 5, 3, 1).reshape(w.shape)


@functools.cache
def nchwc_block() -> int | None:
    """onnxruntime's NCHWc block size on this machine, or None without blocked convolutions."""
    n = _PROBE_CHANNELS
    w = np.arange(n * n * 9, dtype=np.float32).reshape(n, n, 3, 3)  # distinct values: the order shows
    written = onnxruntime_filter(w)
    for block in (4, 8, 16):
        if written is not None and np.array_equal(written, reorder_filter(w, block)):
            return block
    return None


def onnxruntime_filter(w: np.ndarray) -> np.ndarray | None:
    """The filter onnxruntime's NchwcTransformer writes for a Conv with the constant filter `w`
    (on 8x8 images, 'same' padding), or None when it leaves that Conv unblocked."""
    import onnxruntime as ort

    o, c = w.shape[:2]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "nchwc_probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, c, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, o, 8, 8])],
        [numpy_helper.from_array(w.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        try:
            ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            optimized = onnx.load(opts.optimized_model_filepath)
        except Exception:  # no optimizer output: treat as no blocked kernels
            return None
    convs = [node for node in optimized.graph.node if node.domain == NCHWC_DOMAIN and node.op_type == "Conv"]
    filters = {t.name: numpy_helper.to_array(t) for t in optimized.graph.initializer}
    if len(convs) != 1 or convs[0].input[1] not in filters:
        return None
    written = filters[convs[0].input[1]]
    return written if written.shape == w.shape else None


def block_runtime_convs(model: onnx.ModelProto, block: int) -> int:
    """Rewrite, in place, every 2D, ungrouped float32 Conv of `model` whose filter is computed or
    fed at run time, with output channels a multiple of `block` and input channels a multiple or
    fewer; returns how many. MaxPools of such a Conv's output pool its blocked form (MLAS's
    blocked pooling), so the output is reordered back to NCHW only for its other readers."""
    graph = model.graph
    constant = {t.name for t in graph.initializer} | {
        o for node in graph.node if node.op_type == "Constant" for o in node.output
    }
    shapes = _static_shapes(model)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    blocked: dict[str, tuple[str, int]] = {}  # a rewritten Conv's output -> (its blocked form, channels)
    # Equal pools of one blocked tensor run once (onnxruntime merges equal nodes before its own
    # NCHWc pass, but not these): later readers of a repeat read the first one's output.
    pools: dict[tuple[str, str], str] = {}
    alias: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = alias.get(name, name)
        attrs = _attrs(node)
        if _poolable(node, attrs) and node.input[0] in blocked:
            key = (node.input[0], repr(sorted(_pool_attrs(attrs).items())))
            if key in pools and node.output[0] not in graph_outputs:
                alias[node.output[0]] = pools[key]
                continue
            pools.setdefault(key, node.output[0])
            nodes.extend(_blocked_pool(node, attrs, *blocked[node.input[0]]))
            continue
        w_shape = shapes.get(node.input[1]) if node.op_type == "Conv" and node.domain in ("", "ai.onnx") else None
        if w_shape is None or node.input[1] in constant or attrs.get("group", 1) != 1 or not blockable(w_shape, block):
            nodes.append(node)
            continue
        y = node.output[0]
        nchw_readers = y in graph_outputs or not all(_poolable(r, _attrs(r)) for r in readers.get(y, []))
        nodes.extend(_blocked_conv(node, attrs, w_shape, block, nchw_readers))
        blocked[y] = (_blocked_name(node, "y"), w_shape[0])
    if blocked:
        del graph.node[:]
        graph.node.extend(nodes)
        if not any(op.domain == NCHWC_DOMAIN for op in model.opset_import):
            model.opset_import.append(helper.make_opsetid(NCHWC_DOMAIN, 1))
    return len(blocked)


def blockable(w_shape: tuple[int, ...], block: int) -> bool:
    """Whether MLAS runs an ungrouped Conv with this filter blocked: 2D, the output channels a
    multiple of the block, the input channels a multiple or fewer."""
    return len(w_shape) == 4 and w_shape[0] % block == 0 and (w_shape[1] % block == 0 or w_shape[1] < block)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pool_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """A 2D MaxPool's attributes with ONNX's defaults filled in (equal dicts: equal pools)."""
    full = {"auto_pad": b"NOTSET", "ceil_mode": 0, "storage_order": 0, "strides": [1, 1], "pads": [0, 0, 0, 0]}
    full.update({k: v for k, v in attrs.items() if k != "dilations"})
    if full["auto_pad"] not in (b"NOTSET", "NOTSET"):
        full.pop("pads")
    return full


def _poolable(node: onnx.NodeProto, attrs: dict[str, Any]) -> bool:
    """A 2D MaxPool that MLAS's blocked pooling runs: the values only (no indices), no dilation."""
    return (
        node.op_type == "MaxPool"
        and node.domain in ("", "ai.onnx")
        and len(node.output) == 1
        and len(attrs.get("kernel_shape", ())) == 2
        and all(d == 1 for d in attrs.get("dilations", (1, 1)))
    )


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of the float32 tensors onnx's shape inference can tell (filters are small and
    static: a parameter, or a reshape or slice of one); other tensors have none, so only float32
    Convs are rewritten."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    out: dict[str, tuple[int, ...]] = {}
    for vi in [*inferred.input, *inferred.value_info, *inferred.output]:
        t = vi.type.tensor_type
        if t.elem_type == onnx.TensorProto.FLOAT and t.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            if all(isinstance(d, int) and d > 0 for d in dims):
                out[vi.name] = tuple(int(d) for d in dims)  # type: ignore[arg-type]
    for t in model.graph.initializer:
        out[t.name] = tuple(t.dims)
    return out


def _blocked_name(node: onnx.NodeProto, suffix: str) -> str:
    return f"{node.name or node.output[0]}/nchwc/{suffix}"


def _reorder_output(blocked: str, out: str, channels: int) -> onnx.NodeProto:
    return helper.make_node(
        "ReorderOutput",
        [blocked],
        [out],
        name=f"{out}/nchwc/nchw",
        domain=NCHWC_DOMAIN,
        channels_last=0,
        channels=channels,
    )


def _blocked_pool(node: onnx.NodeProto, attrs: dict[str, Any], x: str, channels: int) -> list[onnx.NodeProto]:
    name = _blocked_name(node, "y")
    kept = {k: v for k, v in attrs.items() if k != "dilations"}  # all 1 (`_poolable`)
    pool = helper.make_node("MaxPool", [x], [name], name=_blocked_name(node, "pool"), domain=NCHWC_DOMAIN, **kept)
    return [pool, _reorder_output(name, node.output[0], channels)]


def _blocked_conv(
    node: onnx.NodeProto, attrs: dict[str, Any], w_shape: tuple[int, ...], block: int, nchw_readers: bool
) -> list[onnx.NodeProto]:
    o, c, kh, kw = w_shape

    def name(suffix: str) -> str:
        return _blocked_name(node, suffix)

    def shape_const(suffix: str, dims: list[int]) -> onnx.NodeProto:
        return helper.make_node(
            "Constant", [], [name(suffix)], name=name(suffix), value=numpy_helper.from_array(np.array(dims, np.int64))
        )

    x, w = node.input[0], node.input[1]
    bias = list(node.input[2:3])
    conv_attrs = {k: v for k, v in attrs.items() if k in ("auto_pad", "pads", "strides", "dilations")}
    if c < block:  # MLAS reads an NCHW input with fewer channels than a block directly
        split, perm = [o // block, block, c, kh, kw], [0, 2, 3, 4, 1]
        nodes = []
    else:
        split, perm = [o // block, block, c // block, block, kh, kw], [0, 2, 4, 5, 3, 1]
        nodes = [
            helper.make_node("ReorderInput", [x], [name("x")], name=name("x"), domain=NCHWC_DOMAIN, channels_last=0)
        ]
        x = name("x")
    nodes += [
        shape_const("split", split),
        helper.make_node("Reshape", [w, name("split")], [name("w6")], name=name("w6")),
        helper.make_node("Transpose", [name("w6")], [name("w6t")], name=name("w6t"), perm=perm),
        shape_const("shape", list(w_shape)),
        helper.make_node("Reshape", [name("w6t"), name("shape")], [name("w")], name=name("w")),
        helper.make_node(
            "Conv",
            [x, name("w"), *bias],
            [name("y")],
            name=name("conv"),
            domain=NCHWC_DOMAIN,
            group=1,
            **conv_attrs,
        ),
    ]
    if nchw_readers:
        nodes.append(_reorder_output(name("y"), node.output[0], o))
    return nodes
