"""Blocked (NCHWc) convolutions for weights that change at run time.

onnxruntime's NchwcTransformer moves a Conv into MLAS's blocked kernels, with channels in blocks
of 8 (AVX2) or 16 (AVX-512), only when its filter is a constant it can reorder once. In a training
step the filters are state fed every step, so those Convs stay in the NCHW im2col + GEMM path,
which is about 1.2-2x slower. `block_runtime_convs` does the transformer's work for them: the
filter reorder becomes graph nodes (a Reshape, Transpose, Reshape of the small filter), and the Conv
becomes onnxruntime's own blocked ops,

    ReorderInput(x) -> com.microsoft.nchwc Conv(x', reorder(w), b) -> ReorderOutput

whose numbers equal the plain Conv's up to float32 summation order. `nchwc_block()` finds the
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
    """A filter [O, C, KH, KW] in MLAS's OIHWBiBo order: [O/B, C/B, KH, KW, C%B, O%B]."""
    o, c, kh, kw = w.shape
    return w.reshape(o // block, block, c // block, block, kh, kw).transpose(0, 2, 4, 5, 3, 1).reshape(w.shape)


@functools.cache
def nchwc_block() -> int | None:
    """onnxruntime's NCHWc block size on this machine, or None without blocked convolutions."""
    import onnxruntime as ort

    n = _PROBE_CHANNELS
    w = np.arange(n * n * 9, dtype=np.float32).reshape(n, n, 3, 3)  # distinct values: the order shows
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "nchwc_probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, n, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, n, 8, 8])],
        [numpy_helper.from_array(w, "w")],
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
    for block in (4, 8, 16):
        if written.shape == w.shape and np.array_equal(written, reorder_filter(w, block)):
            return block
    return None


def block_runtime_convs(model: onnx.ModelProto, block: int) -> int:
    """Rewrite, in place, every 2D, ungrouped float Conv of `model` whose filter is computed or fed
    at run time and whose channel counts are multiples of `block`; returns how many."""
    graph = model.graph
    constant = {t.name for t in graph.initializer} | {
        o for node in graph.node if node.op_type == "Constant" for o in node.output
    }
    shapes = _static_shapes(model)
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        w_shape = shapes.get(node.input[1]) if node.op_type == "Conv" and node.domain in ("", "ai.onnx") else None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            w_shape is None
            or node.input[1] in constant
            or len(w_shape) != 4
            or attrs.get("group", 1) != 1
            or w_shape[0] % block
            or w_shape[1] % block
        ):
            nodes.append(node)
            continue
        nodes.extend(_blocked(node, attrs, w_shape, block))
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        if not any(op.domain == NCHWC_DOMAIN for op in model.opset_import):
            model.opset_import.append(helper.make_opsetid(NCHWC_DOMAIN, 1))
    return count


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of the float tensors onnx's shape inference can tell (filters are small and
    static: a parameter, or a reshape or slice of one)."""
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


def _blocked(node: onnx.NodeProto, attrs: dict[str, Any], w_shape: tuple[int, ...], block: int) -> list[onnx.NodeProto]:
    o, c, kh, kw = w_shape
    base = node.name or node.output[0]

    def name(suffix: str) -> str:
        return f"{base}/nchwc/{suffix}"

    def shape_const(suffix: str, dims: list[int]) -> onnx.NodeProto:
        return helper.make_node(
            "Constant", [], [name(suffix)], name=name(suffix), value=numpy_helper.from_array(np.array(dims, np.int64))
        )

    x, w = node.input[0], node.input[1]
    bias = list(node.input[2:3])
    conv_attrs = {k: v for k, v in attrs.items() if k in ("auto_pad", "pads", "strides", "dilations")}
    return [
        shape_const("split", [o // block, block, c // block, block, kh, kw]),
        helper.make_node("Reshape", [w, name("split")], [name("w6")], name=name("w6")),
        helper.make_node("Transpose", [name("w6")], [name("w6t")], name=name("w6t"), perm=[0, 2, 4, 5, 3, 1]),
        shape_const("shape", list(w_shape)),
        helper.make_node("Reshape", [name("w6t"), name("shape")], [name("w")], name=name("w")),
        helper.make_node("ReorderInput", [x], [name("x")], name=name("x"), domain=NCHWC_DOMAIN, channels_last=0),
        helper.make_node(
            "Conv",
            [name("x"), name("w"), *bias],
            [name("y")],
            name=name("conv"),
            domain=NCHWC_DOMAIN,
            group=1,
            **conv_attrs,
        ),
        helper.make_node(
            "ReorderOutput",
            [name("y")],
            list(node.output),
            name=name("y"),
            domain=NCHWC_DOMAIN,
            channels_last=0,
            channels=o,
        ),
    ]
