"""`.keras` import against Keras 3 itself: whole models saved by Keras (tests/fixtures/models/,
made by make_keras_model_fixtures.py) are loaded with `kc.load`, and their outputs (reference
interpreter and onnxruntime), `get_weights()` order and weight names are compared with what Keras
computed and reported. Malformed and unsupported archives must give a KCompileError."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from typing import Any

import numpy as np
import pytest

import kcompile as kc
from kcompile.errors import KCompileError
from kcompile.ir import run_graph

MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "models")
with open(os.path.join(MODELS, "index.json")) as _f:
    INDEX: dict[str, Any] = json.load(_f)
RTOL, ATOL = 1e-4, 1e-6

_IO: dict[str, np.ndarray] = {}


def io_arrays() -> dict[str, np.ndarray]:
    if not _IO:
        with np.load(os.path.join(MODELS, "io.npz")) as npz:
            _IO.update({k: npz[k] for k in npz.files})
    return _IO


def path_of(name: str) -> str:
    return os.path.join(MODELS, INDEX["models"][name]["file"])


def runs(name: str) -> list[tuple[str, dict[str, np.ndarray], list[np.ndarray]]]:
    entry, data = INDEX["models"][name], io_arrays()
    out = []
    for key in entry["runs"]:
        feeds = {n: data[f"{key}/in{i}"] for i, n in enumerate(entry["inputs"])}
        wants = [data[f"{key}/out{k}"] for k in range(entry["outputs"])]
        out.append((key, feeds, wants))
    return out


def check(got: Any, wants: list[np.ndarray], how: str) -> None:
    gots = got if isinstance(got, list) else [got]
    assert len(gots) == len(wants), f"{how}: {len(gots)} outputs, Keras has {len(wants)}"
    for k, (g, w) in enumerate(zip(gots, wants, strict=True)):
        g = np.asarray(g)
        assert g.shape == w.shape, f"{how} output {k}: shape {g.shape} != Keras {w.shape}"
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=f"{how} output {k} vs Keras")


@pytest.mark.parametrize("name", sorted(INDEX["models"]))
def test_imported_model_matches_keras(name: str) -> None:
    model = kc.load(path_of(name))
    entry = INDEX["models"][name]
    # get_weights() follows Keras' order, names and values.
    weights = model.get_weights()
    assert [w.name for w in model.weights] == [w["path"] for w in entry["weights"]]
    assert [list(w.shape) for w in weights] == [w["shape"] for w in entry["weights"]]
    for w, want in zip(weights, entry["weights"], strict=True):
        w64 = np.asarray(w, np.float64)
        np.testing.assert_allclose([w64.sum(), (w64**2).sum()], [want["sum"], want["sum_sq"]], rtol=1e-6, atol=1e-6)
    assert model.count_params() == entry["count_params"]
    graph = kc.optimize(model.to_graph(), level=0)
    compiled = kc.compile(model, level=2)
    for key, feeds, wants in runs(name):  # batch sizes 1 and 3, and two lengths where variable
        check(run_graph(graph, feeds), wants, f"{key}, reference -O0")
        check(compiled(feeds), wants, f"{key}, onnxruntime -O2")


def test_weights_move_both_ways() -> None:
    """A user can take weights out of an imported model and put them into a kcompile-built twin."""
    model = kc.load(path_of("mlp_sequential"))
    twin = kc.Sequential(
        [
            kc.Input(shape=(20,)),
            kc.layers.Dense(32, activation="relu"),
            kc.layers.BatchNormalization(),
            kc.layers.Dropout(0.3),
            kc.layers.Dense(16, activation="tanh"),
            kc.layers.Dense(4, activation="softmax"),
        ]
    )
    twin.set_weights(model.get_weights())
    _, feeds, wants = runs("mlp_sequential")[-1]
    check(twin.predict(next(iter(feeds.values()))), wants, "twin")


def test_cli_converts_a_keras_file(tmp_path: Any) -> None:
    import onnx
    import onnxruntime as ort

    out = tmp_path / "m.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "kcompile", path_of("multi_io_ops"), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    _, feeds, wants = runs("multi_io_ops")[-1]
    check(sess.run(None, feeds), wants, "kcompile CLI + onnxruntime")


# Refusals and malformed archives ---------------------------------------------------------------
def rewrite(tmp_path: Any, source: str, edit: Any, name: str = "bad.keras") -> str:
    """A copy of a fixture archive with config.json (a dict) changed by `edit`."""
    with zipfile.ZipFile(path_of(source)) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    return str(path)


def load_error(path: str) -> str:
    with pytest.raises(KCompileError) as info:
        kc.load(path)
    return str(info.value)


def first_dense(config: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in config["config"]["layers"] if e["class_name"] == "Dense")


def test_lambda_layer_is_refused_by_name_and_never_run(tmp_path: Any) -> None:
    def edit(config: dict[str, Any]) -> None:
        entry = first_dense(config)
        entry["class_name"] = "Lambda"
        # Keras stores a Lambda's code (marshalled bytecode); a loader that ran it would exit here.
        entry["config"]["function"] = {"class_name": "__lambda__", "config": {"code": "raise SystemExit(3)"}}

    msg = load_error(rewrite(tmp_path, "mlp_sequential", edit))
    assert "'dense'" in msg and "Lambda" in msg and "never" in msg


def test_custom_layer_is_refused_by_name(tmp_path: Any) -> None:
    def edit(config: dict[str, Any]) -> None:
        entry = first_dense(config)
        entry.update(module="my_project.layers", class_name="FancyDense", registered_name="Custom>FancyDense")

    msg = load_error(rewrite(tmp_path, "mlp_sequential", edit))
    assert "'dense'" in msg and "Custom>FancyDense" in msg


def test_unknown_layer_suggests_the_nearest(tmp_path: Any) -> None:
    def edit(config: dict[str, Any]) -> None:
        first_dense(config)["class_name"] = "Dence"

    msg = load_error(rewrite(tmp_path, "mlp_sequential", edit))
    assert "Dence" in msg and "did you mean 'Dense'" in msg


def test_unsupported_option_is_named(tmp_path: Any) -> None:
    def edit(config: dict[str, Any]) -> None:
        first_dense(config)["config"]["lora_rank"] = 4

    msg = load_error(rewrite(tmp_path, "mlp_sequential", edit))
    assert "lora_rank=4" in msg and "'dense'" in msg


def test_activity_regularizer_is_imported_and_leaves_inference_alone(tmp_path: Any) -> None:
    """Keras' serialized activity_regularizer is parsed (the training loss uses it; see
    tests/test_activity_regularizers.py); the outputs stay Keras' outputs."""
    reg = {"module": "keras.regularizers", "class_name": "L1L2", "config": {"l1": 0.5, "l2": 0.25}}

    def edit(config: dict[str, Any]) -> None:
        first_dense(config)["config"]["activity_regularizer"] = reg

    model = kc.load(rewrite(tmp_path, "mlp_sequential", edit, "activity.keras"))
    dense = next(layer for layer in model.layers if isinstance(layer, kc.layers.Dense))
    assert (dense.activity_regularizer.l1, dense.activity_regularizer.l2) == (0.5, 0.25)
    for key, feeds, wants in runs("mlp_sequential"):
        check(kc.compile(model, level=2)(feeds), wants, f"{key}, onnxruntime -O2")

    def bad(config: dict[str, Any]) -> None:
        first_dense(config)["config"]["activity_regularizer"] = {"class_name": "Orthogonal", "config": {}}

    assert "regularizer" in load_error(rewrite(tmp_path, "mlp_sequential", bad))


def test_weight_shape_mismatch_is_reported(tmp_path: Any) -> None:
    def edit(config: dict[str, Any]) -> None:
        first_dense(config)["config"]["units"] = 31

    msg = load_error(rewrite(tmp_path, "mlp_sequential", edit))
    assert "shape" in msg and "dense" in msg


@pytest.mark.parametrize(
    ("what", "make"),
    [
        ("not a zip", lambda: b"this is not a zip file"),
        ("empty zip", lambda: _zip({})),
        ("no weights", lambda: _zip({"config.json": b"{}"})),
        ("bad json", lambda: _zip({"config.json": b"{not json", "model.weights.h5": b""})),
        ("not hdf5", lambda: _zip({"config.json": _config_bytes(), "model.weights.h5": b"garbage"})),
        ("truncated", lambda: open(path_of("mlp_sequential"), "rb").read()[:3000]),
    ],
)
def test_malformed_archives_raise_kcompile_errors(tmp_path: Any, what: str, make: Any) -> None:
    path = tmp_path / "m.keras"
    path.write_bytes(make())
    msg = load_error(str(path))
    assert str(path) in msg


def test_cli_reports_a_bad_archive_without_a_traceback(tmp_path: Any) -> None:
    path = tmp_path / "m.keras"
    path.write_bytes(b"PK\x03\x04 broken")
    out = tmp_path / "m.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "kcompile", str(path), "-o", str(out)], capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "m.keras" in proc.stderr
    assert not out.exists()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    return buf.getvalue()


def _config_bytes() -> bytes:
    with zipfile.ZipFile(path_of("mlp_sequential")) as zf:
        return zf.read("config.json")


@pytest.mark.parametrize("name", sorted(n for n, e in INDEX["models"].items() if e.get("trained")))
def test_imported_compiled_model_resumes_training_like_keras(name: str) -> None:
    """A Keras model trained one step and saved (optimizer state included) is loaded compiled;
    one more `train_on_batch` gives Keras' weights after its second step."""
    model = kc.load(path_of(name))
    assert model.optimizer is not None and model.optimizer.iterations == 1
    data = io_arrays()
    n_in = len(INDEX["models"][name]["inputs"])
    xs = [data[f"{name}/train/in{i}"] for i in range(n_in)]
    model.train_on_batch(xs if n_in > 1 else xs[0], data[f"{name}/train/y"])
    for j, got in enumerate(model.get_weights()):
        np.testing.assert_allclose(got, data[f"{name}/train/after{j}"], rtol=1e-5, atol=1e-6, err_msg=f"weight {j}")
