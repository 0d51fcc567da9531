"""Optimisation passes: every rule fires on a model built for it, changes the op list as it
says, and leaves the numbers alone (onnxruntime with its own optimizer off, against -O0)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from kcompile.passes import BOUNDARY, FUSION, LAYOUT, SIMPLIFY, PassManager

import kcompile as kc
from kcompile import layers
from kcompile.ir import run_graph

Builder = Callable[[], kc.Model]


def randomize(model: kc.Model, seed: int = 0) -> kc.Model:
    rng = np.random.default_rng(seed)
    values = []
    for w in model.weights:
        v = rng.standard_normal(w.type.shape).astype(np.float32) * 0.5
        values.append(np.abs(v) + 0.5 if w.name.endswith("moving_variance") else v)
    model.set_weights(values)
    return model


def conv_bn_relu() -> kc.Model:
    x = kc.Input(shape=(9, 9, 3), name="x")
    h = layers.Conv2D(8, 3, strides=2, padding="same")(x)
    h = layers.Activation("relu")(layers.BatchNormalization()(h))
    h = layers.MaxPooling2D(padding="same")(h)
    h = layers.Conv2D(4, 3, padding="valid", activation="relu")(h)
    return kc.Model(x, layers.Dense(5, activation="softmax")(layers.Flatten()(h)))


def residual() -> kc.Model:
    x = kc.Input(shape=(8, 8, 4), name="x")
    a = layers.Conv2D(4, 1, activation="relu")(x)
    b = layers.Conv2D(4, 3, padding="same")(a)
    h = layers.add([a, b])
    h = layers.concatenate([h, layers.Conv2D(2, 1)(h)], axis=-1)
    h = layers.BatchNormalization(axis=-1)(h)
    g = layers.GlobalAveragePooling2D()(h)
    m = layers.GlobalMaxPooling2D()(h)
    return kc.Model(x, [layers.Dense(3, activation="softmax")(g), m])


def mobile_block() -> kc.Model:
    x = kc.Input(shape=(9, 9, 4), name="x")
    h = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(8, 1, use_bias=False)(x)))
    h = layers.ZeroPadding2D(((0, 1), (0, 1)))(h)
    h = layers.DepthwiseConv2D(3, strides=2, use_bias=False)(h)
    h = layers.ReLU(6.0)(layers.BatchNormalization()(h))
    h = layers.BatchNormalization()(layers.Conv2D(4, 1, use_bias=False)(h))
    h = layers.add([h, layers.DepthwiseConv2D(1, padding="same")(h)])
    return kc.Model(x, layers.GlobalAveragePooling2D()(h))


def mlp() -> kc.Model:
    x = kc.Input(shape=(12,), name="x")
    h = layers.Dense(16, activation="relu")(x)
    h = layers.BatchNormalization()(layers.Dropout(0.3)(h))
    h = layers.Dense(8)(h)
    h = layers.BatchNormalization()(h)
    return kc.Model(x, layers.Activation("tanh")(h))


def softmax_axis() -> kc.Model:
    x = kc.Input(shape=(4, 4, 3), name="x")
    h = layers.Conv2D(3, 1)(x)
    h = layers.Activation("softmax")(h)  # over channels, i.e. across the layout change
    return kc.Model(x, layers.Reshape((16, 3))(layers.Reshape((48,))(h)))


def replicated() -> kc.Model:
    inner = kc.Sequential([kc.Input(shape=(6,)), layers.Dense(4)])
    x = kc.Input(shape=(6,), name="x")
    y = inner(x) * 1.0 + inner(x)
    return kc.Model(x, y)


def decoder() -> kc.Model:
    x = kc.Input(shape=(4, 5, 3), name="x")
    h = layers.Conv2DTranspose(6, 3, strides=2, padding="same")(x)
    h = layers.ReLU()(layers.BatchNormalization()(h))
    h = layers.SeparableConv2D(4, 3, padding="same", depth_multiplier=2)(h)
    h = layers.BatchNormalization()(layers.Conv2DTranspose(2, 2, strides=2, use_bias=False)(h))
    return kc.Model(x, layers.Activation("sigmoid")(h))


def normalized_mlp() -> kc.Model:
    """Normalization (a fixed mean/variance) before a Dense: the standardisation folds into its Gemm."""
    x = kc.Input(shape=(5,), name="x")
    rng = np.random.default_rng(7)
    norm = layers.Normalization(mean=rng.normal(size=5).tolist(), variance=rng.uniform(0.5, 2.0, 5).tolist())
    h = layers.Dense(6, activation="relu")(layers.Dense(8, bias_initializer="ones")(norm(x)))
    return kc.Model(x, h)


def boundary() -> kc.Model:
    """What BOUNDARY leaves at the inputs: a Conv1D over 2 channels (strided, 'same'), and a
    Permute that only moves a unit axis."""
    x = kc.Input(shape=(11, 2), name="x")
    h = layers.Conv1D(4, 3, strides=2, padding="same", activation="relu")(x)
    y = kc.Input(shape=(5, 1), name="y")
    return kc.Model([x, y], [h, layers.Activation("tanh")(layers.Permute((2, 1))(y))])


MODELS: dict[str, Builder] = {
    "conv_bn_relu": conv_bn_relu,
    "residual": residual,
    "mlp": mlp,
    "mobile_block": mobile_block,
    "softmax_axis": softmax_axis,
    "replicated": replicated,
    "decoder": decoder,
    "normalized_mlp": normalized_mlp,
    "boundary": boundary,
}


def onnx_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return list(
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)
    )


def feeds_for(model: kc.Model, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t._call.layer.name: rng.standard_normal((batch, *t.shape[1:])).astype(np.float32) for t in model.inputs}


@pytest.mark.parametrize("level", [1, 2, 3])
@pytest.mark.parametrize("name", list(MODELS))
def test_levels_keep_the_numbers(name: str, level: int) -> None:
    model = randomize(MODELS[name]())
    base = kc.compile(model, level=0).onnx_model
    opt = kc.compile(model, level=level).onnx_model
    onnx.checker.check_model(opt, full_check=True)
    for batch in (1, 4):
        feeds = feeds_for(model, batch)
        want = onnx_outputs(base, feeds)
        got = onnx_outputs(opt, feeds)
        for w, g in zip(want, got, strict=True):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)
        # The optimised IR itself (reference interpreter) agrees too.
        ref = run_graph(kc.optimize(model.to_graph(), level=level), feeds)
        for w, r in zip(want, ref, strict=True):
            np.testing.assert_allclose(r, w, rtol=2e-5, atol=2e-5)


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_conv_net_keeps_one_transpose_at_the_input() -> None:
    model = randomize(conv_bn_relu())
    before = op_types(kc.compile(model, level=0).onnx_model)
    after = op_types(kc.compile(model, level=2).onnx_model)
    assert before.count("Transpose") >= 8 and before.count("Mul") >= 1
    # The one left at the input folds into the first conv (3 channels): a reshape, no transpose.
    assert "Transpose" not in after and after[0] == "Reshape"
    assert "BatchNormalization" not in after and "Mul" not in after and "Add" not in after
    assert after.count("Conv") == 2 and after.count("Gemm") == 1
    assert len(after) < len(before) / 2


def test_nchw_input_layout_needs_no_transpose() -> None:
    model = randomize(conv_bn_relu())
    nchw = kc.compile(model, input_layout="NCHW")
    assert "Transpose" not in op_types(nchw.onnx_model)
    x = np.random.default_rng(0).standard_normal((2, 9, 9, 3)).astype(np.float32)
    np.testing.assert_allclose(nchw(x.transpose(0, 3, 1, 2)), kc.compile(model, level=0)(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(kc.KCompileError, match="input layout must be"):
        kc.compile(model, input_layout="NWHC")


def test_residual_and_concat_layout_and_pooling() -> None:
    model = randomize(residual())
    after = op_types(kc.compile(model, level=2).onnx_model)
    # The input's transpose folds into the first conv (4 channels); the outputs are channel vectors.
    assert "Transpose" not in after and after[0] == "Reshape"
    # Global pooling without keepdims is one Reduce* node each, with no Flatten after it.
    assert after.count("Concat") == 1 and after.count("ReduceMean") == 1 and after.count("ReduceMax") == 1
    assert "Flatten" not in after and "GlobalAveragePool" not in after


def test_mobile_block_has_no_transpose_inside() -> None:
    after = op_types(kc.compile(randomize(mobile_block()), level=2).onnx_model)
    assert "Transpose" not in after and after[0] == "Reshape"  # 4 input channels fold into the conv
    assert after.count("Conv") == 4 and "Mul" not in after and "BatchNormalization" not in after
    assert "Pad" not in after  # the ZeroPadding lives in the depthwise conv's pads


def test_boundary_transposes_become_reshapes() -> None:
    model = randomize(boundary())
    proto = kc.compile(model, level=2).onnx_model
    producer = {o: n for n in proto.graph.node for o in n.output}
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    fold = producer[conv.input[0]]
    assert fold.op_type == "Reshape" and fold.input[0] == "x"  # the conv reads x's bytes as they are
    assert [a.ints for a in conv.attribute if a.name == "strides"] == [[4]]  # stride 2 x 2 channels
    # Only the channels-last output of the conv is transposed; the Permute became a reshape.
    assert op_types(proto).count("Transpose") == 1
    assert producer[proto.graph.output[1].name].op_type in {"Reshape", "Tanh"}


def test_wide_or_dilated_inputs_keep_their_transpose() -> None:
    for channels, dilation in ((8, 1), (3, 2)):
        x = kc.Input(shape=(9, 9, channels), name="x")
        model = randomize(kc.Model(x, layers.Conv2D(4, 3, dilation_rate=dilation)(x)))
        pm = PassManager([])
        after = op_types(kc.compile(model, level=2, manager=pm).onnx_model)
        assert after[0] == "Transpose"
        reasons = "\n".join(pm.explanations())
        assert "fold-channels-into-conv did not apply" in reasons
        assert ("8 channels" if channels == 8 else "dilated") in reasons


def test_mlp_bn_folds_into_gemm() -> None:
    model = randomize(mlp())
    after = op_types(kc.compile(model, level=2).onnx_model)
    assert after == ["Gemm", "Relu", "Gemm", "Tanh"]


def test_replicas_on_two_devices_are_not_merged() -> None:
    x = kc.Input(shape=(6,), name="x")
    inner = kc.Sequential([kc.Input(shape=(6,)), layers.Dense(4)])
    with kc.device("gpu:0"):
        a = inner(x)
    with kc.device("gpu:1"):
        b = inner(x)
    model = randomize(kc.Model(x, layers.add([a, b])))
    graph = kc.compile(model, level=2).graph
    assert {n.device for n in graph.nodes} >= {"gpu:0", "gpu:1"}
    # Without placement the two identical calls are one computation.
    assert op_types(kc.compile(randomize(replicated()), level=2).onnx_model).count("Gemm") == 1


def apply(model: kc.Model, passes: list[str]) -> tuple[list[str], list[str], kc.Model]:
    before = [n.op for n in kc.optimize(model.to_graph(), level=0).nodes]
    after = [n.op for n in kc.optimize(model.to_graph(), passes=passes).nodes]
    return before, after, model


def check_same(model: kc.Model, passes: list[str]) -> None:
    feeds = feeds_for(model, 3, seed=5)
    (want,) = run_graph(kc.optimize(model.to_graph(), level=0), feeds)
    (got,) = run_graph(kc.optimize(model.to_graph(), passes=passes), feeds)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kc.compile(model, passes=passes)(*feeds.values()), want, rtol=1e-5, atol=1e-6)


def simplify_model() -> kc.Model:
    x = kc.Input(shape=(3, 4), name="x")
    y = layers.Reshape((12,))(layers.Reshape((4, 3))(x))  # merge-reshapes, then a no-op reshape
    y = (y - 0.0) / 1.0 * 1.0 + 0.0  # neutral arithmetic
    y = layers.Activation("linear")(y)
    return kc.Model(x, layers.Reshape((3, 4))(y))


def test_simplify_rules() -> None:
    model = simplify_model()
    before, after, _ = apply(model, ["simplify"])
    assert before.count("reshape") == 3 and {"sub", "div", "mul", "add"} <= set(before)
    assert after == []  # the whole model is the identity
    check_same(model, ["simplify"])


def fusion_model() -> kc.Model:
    x = kc.Input(shape=(5, 5, 2), name="x")
    h = layers.Conv2D(3, 3, padding="same")(x)
    h = h * np.array([1.0, 2.0, -1.0], np.float32)  # per-channel scale after conv (channels-last)
    h = layers.Flatten()(h)
    d = layers.Dense(4)(h)
    d = (d + np.arange(4, dtype=np.float32)) * np.array([2.0, 1.0, 0.5, 3.0], np.float32)
    return kc.Model(x, d)


def dense_scale_model() -> kc.Model:
    x2 = kc.Input(shape=(4,), name="x")
    return kc.Model(x2, layers.Dense(3, use_bias=False)(x2) * np.array([1.0, -2.0, 0.5], np.float32))


def left_const_model() -> kc.Model:
    x = kc.Input(shape=(4, 4, 2), name="x")
    h = layers.Conv2D(2, 1)(x)
    h = np.array([1.0, -1.0], np.float32) - h  # constant on the left of a binary op
    return kc.Model(x, layers.MaxPooling2D()(h))


def test_fusion_scale_and_shift_into_conv_and_gemm() -> None:
    model = randomize(fusion_model())
    ops = [n.op for n in kc.optimize(model.to_graph(), level=2).nodes]
    assert ops == ["reshape", "conv", "reshape", "gemm"]  # the input transpose folds into the conv
    check_same(model, ["simplify", "constant-folding", "layout", "constant-folding", "fusion", "dce"])
    model2 = randomize(dense_scale_model())
    assert [n.op for n in kc.optimize(model2.to_graph(), level=2).nodes] == ["matmul"]
    check_same(model2, ["constant-folding", "fusion"])


def test_layout_const_on_the_left() -> None:
    model = randomize(left_const_model())
    ops = [n.op for n in kc.optimize(model.to_graph(), level=2).nodes]
    # Out of the channels-first region; the way in (2 channels) folds into the conv.
    assert ops.count("transpose") == 1 and ops[0] == "reshape"
    check_same(model, ["constant-folding", "layout", "constant-folding", "fusion", "dce"])


def test_explain_rewrites_names_the_reason() -> None:
    x = kc.Input(shape=(6, 6, 2), name="x")
    conv = layers.Conv2D(3, 3)(x)
    bn = layers.BatchNormalization()(conv)
    model = randomize(kc.Model(x, [bn, conv]))  # the conv output is needed on its own
    pm = PassManager([])
    kc.compile(model, level=2, manager=pm)
    reasons = "\n".join(pm.explanations())
    assert "fold-scale-into-conv did not apply" in reasons and "has other users" in reasons


def test_time_passes_table_and_print_after() -> None:
    printed: list[str] = []
    pm = PassManager([], print_after="fusion", printer=printed.append)
    kc.compile(randomize(conv_bn_relu()), level=2, manager=pm)
    table = pm.timing_table()
    assert table.splitlines()[0].split()[:4] == ["pass", "time", "ms", "nodes"]
    assert "layout" in table and "fusion" in table and "total" in table
    assert len(printed) == 1 and printed[0].startswith("// after fusion\ngraph ")


def test_pass_counts_are_recorded_in_model_metadata() -> None:
    proto = kc.compile(randomize(conv_bn_relu()), level=2).onnx_model
    meta = {p.key: p.value for p in proto.metadata_props}
    assert "batch-norm-to-affine=1" in meta["pass.fusion"]
    assert meta["pass.fold-learning-phase"] == "folded=1"


def test_unknown_pass_suggests_the_nearest() -> None:
    with pytest.raises(kc.KCompileError, match="did you mean 'fusion'"):
        kc.compile(mlp(), passes=["fusoin"])


def ir_only_cases() -> list[kc.ir.Graph]:  # type: ignore[name-defined]
    """Rules that no layer produces a target for, exercised on hand-built IR."""
    from kcompile.ir import Builder, TensorType

    b = Builder()
    x = b.input("x", TensorType("float32", ("batch", 3)))
    y = b.op("cast", [b.op("identity", [x])], to="float32")
    y = b.op("transpose", [b.op("reshape", [y], shape=(0, 3))], perm=(0, 1))
    b.graph.outputs = [b.op("relu", [y])]
    # A Gemm whose input is scaled per feature (what a Normalization before a Dense becomes when
    # the Gemm formed first).
    from kcompile.ir.graph import Param

    g = Builder()
    x = g.input("x", TensorType("float32", ("batch", 3)))
    rng = np.random.default_rng(5)
    scaled = g.op("mul", [x, g.constant(rng.uniform(0.5, 2.0, 3).astype("float32"))])
    w = Param("w", rng.normal(size=(3, 2)).astype("float32"))
    c = Param("c", rng.normal(size=2).astype("float32"))
    g.graph.outputs = [g.op("gemm", [scaled, w, c])]
    return [b.graph, g.graph]


def test_every_rule_fires_somewhere() -> None:
    fired: set[str] = set()
    builders = [*MODELS.values(), simplify_model, fusion_model, dense_scale_model, left_const_model]
    for build in builders:
        pm = PassManager([])
        kc.compile(randomize(build()), level=2, manager=pm)
        for record in pm.records:
            fired.update(record.stats)
    for graph in ir_only_cases():
        pm = PassManager([])
        kc.optimize(graph, level=2, manager=pm)
        for record in pm.records:
            fired.update(record.stats)
    rules = {r.name for rs in (SIMPLIFY, LAYOUT, BOUNDARY, FUSION) for r in rs.rules}
    assert rules - fired == set()


def test_ir_only_cases_keep_the_numbers() -> None:
    from kcompile.ir import run_graph

    x = np.random.default_rng(9).normal(size=(4, 3)).astype("float32")
    for graph in ir_only_cases():
        want = run_graph(graph, {"x": x})
        got = run_graph(kc.optimize(graph, level=2), {"x": x})
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_lowering_drops_dead_nodes_and_unused_optional_outputs() -> None:
    x = kc.Input(shape=(6,), name="x")
    h = layers.LSTM(5)(layers.Embedding(20, 4)(x))
    model = randomize(kc.Model(x, layers.Dense(1)(h)))
    compiled = kc.compile(model, level=2)
    graph = compiled.onnx_model.graph
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    assert all(o in read for n in graph.node for o in n.output if o), "a node's output is never read"
    (lstm,) = [n for n in graph.node if n.op_type == "LSTM"]
    assert lstm.output[0] == ""  # only the final state is read: no full sequence
    ids = np.random.default_rng(1).integers(0, 20, (3, 6)).astype(np.float32)
    (want,) = run_graph(compiled.graph, {"x": ids})
    np.testing.assert_allclose(compiled(ids), want, rtol=1e-5, atol=1e-6)


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def test_embedding_into_recurrent_layer_transposes_indices_not_rows() -> None:
    x = kc.Input(shape=(7,), name="x")
    h = layers.GRU(5)(layers.LSTM(6, return_sequences=True)(layers.Embedding(20, 4)(x)))
    model = randomize(kc.Model(x, layers.Dense(1)(h)))
    compiled = kc.compile(model, level=2)
    graph = compiled.onnx_model.graph
    made_by = _producers(graph)
    (lstm,) = [n for n in graph.node if n.op_type == "LSTM"]
    gather = made_by[lstm.input[0]]  # time-major rows, gathered in that order
    assert gather.op_type == "Gather"
    assert made_by[gather.input[1]].op_type == "Transpose"
    assert {"kcompile.op": "gather"}.items() <= {p.key: p.value for p in gather.metadata_props}.items()
    assert not any(n.op_type == "Transpose" and made_by[n.input[0]].op_type == "Gather" for n in graph.node)
    ids = np.random.default_rng(2).integers(0, 20, (3, 7)).astype(np.float32)
    (want,) = run_graph(compiled.graph, {"x": ids})
    (got,) = onnx_outputs(compiled.onnx_model, {"x": ids})  # onnxruntime's own rewrites off
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("other_reader", ["layer", "model output"])
def test_gathered_rows_with_other_readers_are_transposed_themselves(other_reader: str) -> None:
    x = kc.Input(shape=(7,), name="x")
    e = layers.Embedding(20, 4)(x)
    if other_reader == "layer":
        model = kc.Model(
            x, layers.Dense(1)(layers.Concatenate()([layers.LSTM(5)(e), layers.GlobalAveragePooling1D()(e)]))
        )
    else:
        model = kc.Model(x, [layers.Dense(1)(layers.LSTM(5)(e)), e])
    compiled = kc.compile(randomize(model), level=2)
    graph = compiled.onnx_model.graph
    made_by = _producers(graph)
    (lstm,) = [n for n in graph.node if n.op_type == "LSTM"]
    transpose = made_by[lstm.input[0]]
    assert transpose.op_type == "Transpose" and made_by[transpose.input[0]].op_type == "Gather"
    ids = np.random.default_rng(3).integers(0, 20, (3, 7)).astype(np.float32)
    want = run_graph(compiled.graph, {"x": ids})
    for g, w in zip(onnx_outputs(compiled.onnx_model, {"x": ids}), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
