"""The example `.k` programs: each compiles to ONNX that onnxruntime runs, and each gives the same
IR (names, scopes, weights, devices; only source locations differ) and the same outputs as the
same model written with the Python API."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

import kcompile as kc
from kcompile import layers
from kcompile.ir.graph import Graph
from kcompile.ir.serialize import to_json
from kcompile.lang import load_program
from kcompile.lang.dot import model_to_dot

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# The same models with the Python API, built in the order the .k files build them --------------
def py_mnist() -> dict[str, kc.Model]:
    img = kc.Input(shape=(784,), name="img")
    x = layers.Dense(128, activation="relu")(img)
    x = layers.Dropout(0.5)(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    preds = layers.Dense(10, activation="softmax")(x)
    return {"mnist": kc.Model(img, preds, name="mnist")}


def py_classifier() -> dict[str, kc.Model]:
    classifier = kc.Sequential(
        [kc.Input(shape=(784,)), layers.Dense(32, activation="relu"), layers.Dense(10, activation="softmax")],
        name="classifier",
    )
    return {"classifier": classifier}


def py_replicas() -> dict[str, kc.Model]:
    classifier = py_classifier()["classifier"]
    a = kc.Input(shape=(20, 64))
    b = kc.Input(shape=(20, 64))
    shared = layers.Dense(32, activation="relu")
    merged = layers.concatenate([shared(a), shared(b)])
    siamese = kc.Model([a, b], layers.Dense(1, activation="sigmoid")(merged), name="siamese")
    x = kc.Input(shape=(784,))
    with kc.device("gpu:0"):
        y0 = classifier(x)
    with kc.device("gpu:1"):
        y1 = classifier(x)
    with kc.device("cpu:0"):
        preds = 0.5 * (y0 + y1)
    replicas = kc.Model(x, preds, name="replicas")
    return {"classifier": classifier, "siamese": siamese, "replicas": replicas}


def py_blocks() -> dict[str, kc.Model]:
    def conv_block(x: kc.layers.KTensor, filters: int) -> kc.layers.KTensor:
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.BatchNormalization()(x)
        return layers.MaxPooling2D(2)(x)

    img = kc.Input(shape=(28, 28, 1))
    with kc.name_scope("features"):
        x = conv_block(img, 32)
        x = conv_block(x, 64)
    x = layers.Flatten()(x)
    aux = layers.Dense(1, activation="sigmoid", name="aux")(x)
    x = layers.Dense(10, activation="softmax", name="digits")(x)
    cnn = kc.Model(img, [x, aux], name="cnn")

    img = kc.Input(shape=(28, 28, 1))
    cnn.trainable = False
    digits, _aux = cnn(img)
    finetune = kc.Model(img, layers.Dense(10, activation="softmax")(digits), name="finetune")
    return {"cnn": cnn, "finetune": finetune}


PYTHON: dict[str, Callable[[], dict[str, kc.Model]]] = {
    "mnist": py_mnist,
    "classifier": py_classifier,
    "replicas": py_replicas,
    "blocks": py_blocks,
}
MODELS = [
    ("mnist", "mnist"),
    ("classifier", "classifier"),
    ("replicas", "siamese"),
    ("replicas", "replicas"),
    ("blocks", "cnn"),
    ("blocks", "finetune"),
]


def build_both(file: str) -> tuple[dict[str, kc.Model], dict[str, kc.Model]]:
    kc.clear_session()
    kc.set_random_seed(7)
    from_k = load_program(str(EXAMPLES / f"{file}.k")).models
    kc.clear_session()
    kc.set_random_seed(7)
    from_py = PYTHON[file]()
    return from_k, from_py


_LOC_NOTE = re.compile(r"(, )?at \S+:\d+(:\d+)?$")


def strip_locs(ir_text: str) -> str:
    out = []
    for line in ir_text.splitlines():
        line = _LOC_NOTE.sub("", line).rstrip()
        out.append(line.removesuffix("  #").rstrip())
    return "\n".join(out)


def json_without_locs(graph: Graph) -> dict:
    doc = json.loads(to_json(graph))
    for node in doc["nodes"]:
        node.pop("loc")
    return doc


def randomize(model: kc.Model, seed: int = 0) -> None:
    """Non-zero weights everywhere (positive, so BatchNormalization variances stay valid)."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) for w in model.get_weights()])


def feed(model: kc.Model, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((3, *t.shape[1:]), dtype=np.float32) for t in model.inputs]


def test_example_files_are_the_issue_programs() -> None:
    for name in ("mnist", "classifier", "replicas", "blocks"):
        assert (EXAMPLES / f"{name}.k").is_file()
    text = (EXAMPLES / "replicas.k").read_text()
    assert 'import "classifier.k"' in text and "with device(" in text


@pytest.mark.parametrize(("file", "name"), MODELS)
def test_k_and_python_give_identical_ir(file: str, name: str) -> None:
    from_k, from_py = build_both(file)
    gk, gp = from_k[name].to_graph(), from_py[name].to_graph()
    assert strip_locs(str(gk)) == strip_locs(str(gp))
    assert json_without_locs(gk) == json_without_locs(gp)  # includes every weight's bytes


@pytest.mark.parametrize(("file", "name"), MODELS)
def test_k_nodes_point_into_the_k_files(file: str, name: str) -> None:
    from_k, _ = build_both(file)
    locs = [n.loc for n in from_k[name].to_graph().nodes if n.loc is not None]
    assert locs, "layer calls must record where they come from"
    assert all(loc.file.endswith(".k") and loc.line >= 1 and loc.col >= 1 for loc in locs)


@pytest.mark.parametrize(("file", "name"), MODELS)
def test_k_runs_in_onnxruntime_like_python(file: str, name: str) -> None:
    from_k, from_py = build_both(file)
    mk, mp = from_k[name], from_py[name]
    randomize(mk)
    mp.set_weights(mk.get_weights())
    ck, cp = kc.compile(mk), kc.compile(mp)
    onnx.checker.check_model(ck.onnx_model)
    xs = feed(mk)
    yk, yp = ck(*xs), cp(*xs)
    for a, b in zip(yk if isinstance(yk, list) else [yk], yp if isinstance(yp, list) else [yp], strict=True):
        assert a.shape[0] == 3 and np.all(np.isfinite(a))
        np.testing.assert_array_equal(a, b)


def test_siamese_shares_one_dense_weight_set() -> None:
    models = load_program(str(EXAMPLES / "replicas.k")).models
    siamese = models["siamese"]
    graph = siamese.to_graph()
    assert len(graph.params) == 4  # the shared Dense (kernel, bias) once, the head Dense once
    matmuls = [n for n in graph.nodes if n.op == "matmul"]
    assert len(matmuls) == 3 and matmuls[0].inputs[1] is matmuls[1].inputs[1]
    randomize(siamese)
    compiled = kc.compile(siamese)
    names = [i.name for i in compiled.onnx_model.graph.initializer]
    assert sorted(names) == sorted(p.name for p in graph.params)


def test_replicas_has_one_classifier_copy_on_three_devices() -> None:
    models = load_program(str(EXAMPLES / "replicas.k")).models
    replicas, classifier = models["replicas"], models["classifier"]
    graph = replicas.to_graph()
    assert {p.name for p in graph.params} == {w.name for w in classifier.weights}
    assert len(graph.params) == 4
    assert {n.device for n in graph.nodes} == {"gpu:0", "gpu:1", "cpu:0"}
    assert "device gpu:1" in str(graph)
    randomize(replicas)
    weights = {w.name for w in classifier.weights}
    onnx_names = [i.name for i in kc.compile(replicas, level=0).onnx_model.graph.initializer]
    assert sorted(n for n in onnx_names if n in weights) == sorted(weights)
    assert len([n for n in onnx_names if "kernel" in n]) == 2
    dot = model_to_dot(replicas)
    assert {m for m in re.findall(r'tooltip="([^"]+)"', dot)} == {"gpu:0", "gpu:1", "cpu:0"}


def test_replicas_stores_shared_weights_once_at_default_level() -> None:
    replicas = load_program(str(EXAMPLES / "replicas.k")).models["replicas"]
    randomize(replicas)
    names = [i.name for i in kc.compile(replicas).onnx_model.graph.initializer]
    assert len([n for n in names if "/dense" in n]) == 4  # classifier/dense/kernel, ... (stored once)


def test_blocks_defs_make_fresh_layers_and_finetune_freezes_cnn() -> None:
    models = load_program(str(EXAMPLES / "blocks.k")).models
    cnn, finetune = models["cnn"], models["finetune"]
    convs = [layer for layer in cnn.layers if isinstance(layer, layers.Conv2D)]
    assert len(convs) == 2 and convs[0].kernel is not convs[1].kernel
    assert all(w.name.startswith("features/") for layer in convs for w in layer.weights)
    assert [t.name for t in cnn.outputs] == ["digits", "aux"]
    assert not any(w.trainable for w in cnn.weights)
    trainable = [w.name for w in finetune.weights if w.trainable]
    assert trainable == ["dense/kernel", "dense/bias"]


def test_mnist_train_block_is_kept_as_data() -> None:
    program = load_program(str(EXAMPLES / "mnist.k"))
    spec = program.train_spec("mnist")
    assert spec is not None
    assert spec.optimizer.name == "SGD" and spec.optimizer.config == {"learning_rate": 0.5}
    assert spec.loss == "categorical_crossentropy" and spec.metrics == ("accuracy",)
    assert (spec.batch_size, spec.epochs) == (50, 5)
    assert spec.loc is not None and spec.loc.line == 12
    model = kc.load(str(EXAMPLES / "mnist.k"), model="mnist")
    assert model.name == "mnist" and model.train_spec == spec  # type: ignore[attr-defined]
    assert spec.fit_args() == {"batch_size": 50, "epochs": 5, "validation_split": 0.0, "shuffle": True}
    model.compile(**spec.compile_args())  # the settings are what keras.Model.compile takes
    assert type(model.optimizer).__name__ == "SGD"


def test_kc_load_picks_the_only_model_or_names_the_candidates() -> None:
    assert kc.load(str(EXAMPLES / "classifier.k")).name == "classifier"
    assert kc.load(str(EXAMPLES / "replicas.k") + ":siamese").name == "siamese"
    assert kc.load(str(EXAMPLES / "replicas.k"), model="classifier").name == "classifier"  # imported
    with pytest.raises(kc.KCompileError, match=r"defines 2 models \(siamese, replicas\)"):
        kc.load(str(EXAMPLES / "replicas.k"))
    with pytest.raises(kc.KCompileError, match="did you mean 'replicas'"):
        kc.load(str(EXAMPLES / "replicas.k"), model="replica")


def test_grammar_ships_as_package_data() -> None:
    import importlib.resources

    text = importlib.resources.files("kcompile.grammar").joinpath("kdsl.lark").read_text()
    assert text == (Path(__file__).resolve().parent.parent / "grammar" / "kdsl.lark").read_text()
