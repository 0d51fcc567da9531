"""`model.save("m.keras")` and `kc.load`: the whole model (structure, weights, compile settings and
optimizer state) survives the round trip; training resumes exactly; writes are atomic."""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any

import numpy as np
import pytest

import kcompile as kc
from kcompile import layers as L
from kcompile.errors import KCompileError


def rich_model() -> kc.Model:
    """Shared layers, a nested Sequential, an LSTM over an Embedding mask, BatchNormalization,
    tensor arithmetic (saved as Keras operation nodes) and two outputs."""
    ids = kc.Input(shape=(6,), dtype="int32", name="ids")
    img = kc.Input(shape=(8, 8, 2), name="img")
    h = L.LSTM(5, name="encoder")(L.Embedding(20, 4, mask_zero=True)(ids))
    shared = L.Conv2D(3, 3, padding="same", activation="relu", name="shared_conv")
    c = L.BatchNormalization()(shared(shared(L.Conv2D(3, 1)(img))))
    inner = kc.Sequential([kc.Input(shape=(192,)), L.Dense(6, activation="relu")], name="inner")
    z = L.Concatenate()([h, inner(L.Flatten()(c))])
    probs = L.Dense(3, activation="softmax", name="probs")(0.5 * z + 1.0)
    score = L.Dense(1, name="score")(z)
    return kc.Model([ids, img], [probs, score], name="rich")


def batch(rng: np.random.Generator, n: int = 4) -> list[np.ndarray]:
    return [rng.integers(0, 20, (n, 6)).astype("int32"), rng.standard_normal((n, 8, 8, 2)).astype("float32")]


def randomize(model: kc.Model, rng: np.random.Generator) -> None:
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) for w in model.get_weights()])


def test_round_trip_keeps_structure_weights_and_outputs(tmp_path: Any) -> None:
    rng = np.random.default_rng(0)
    model = rich_model()
    randomize(model, rng)
    path = str(tmp_path / "rich.keras")
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["config.json", "metadata.json", "model.weights.h5"]
        config = json.loads(zf.read("config.json"))
    assert config["class_name"] == "Functional"
    shared = next(e for e in config["config"]["layers"] if e["name"] == "shared_conv")
    assert len(shared["inbound_nodes"]) == 2  # one layer, two calls: one set of weights
    loaded = kc.load(path)
    assert [w.name for w in loaded.weights] == [w.name for w in model.weights]
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    xs = batch(rng)
    for got, want in zip(loaded.predict(xs), model.predict(xs), strict=True):
        np.testing.assert_array_equal(got, want)


def test_resume_from_a_saved_model_equals_training_straight_through(tmp_path: Any) -> None:
    """Train 2 epochs, save, load, train 1 more == train 3 epochs (bitwise: SGD, no shuffle)."""
    rng = np.random.default_rng(1)
    xs, y = batch(rng, 16), rng.integers(0, 3, 16)
    ys = [y, rng.standard_normal((16, 1)).astype("float32")]

    def fresh() -> kc.Model:
        kc.clear_session()
        model = rich_model()
        model.set_weights([np.random.default_rng(2).uniform(-0.3, 0.3, w.shape).astype(w.dtype)
                           for w in model.get_weights()])  # fmt: skip
        model.compile(optimizer=kc.optimizers.SGD(0.05, momentum=0.9), loss=["sparse_categorical_crossentropy", "mse"],
                      loss_weights=[1.0, 0.5], metrics=[["accuracy"], []])  # fmt: skip
        return model

    straight = fresh()
    straight.fit(xs, ys, batch_size=8, epochs=3, shuffle=False, verbose=0)
    first = fresh()
    first.fit(xs, ys, batch_size=8, epochs=2, shuffle=False, verbose=0)
    path = str(tmp_path / "ckpt.keras")
    first.save(path)
    resumed = kc.load(path)
    assert resumed.optimizer is not None and resumed.optimizer.iterations == 4
    resumed.fit(xs, ys, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_sequential_round_trip(tmp_path: Any) -> None:
    model = kc.Sequential([kc.Input(shape=(5,)), L.Dense(4, activation="relu"), L.Dropout(0.2), L.Dense(2)], name="seq")
    randomize(model, np.random.default_rng(3))
    path = str(tmp_path / "seq.keras")
    model.save(path)
    loaded = kc.load(path)
    assert type(loaded) is kc.Sequential and [w.name for w in loaded.weights] == [w.name for w in model.weights]
    x = np.random.default_rng(4).standard_normal((3, 5)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_time_distributed_weights_round_trip_in_keras_layout(tmp_path: Any) -> None:
    """A TimeDistributed's wrapped layer (or model) is saved under its `layer` group, as Keras
    does (tests/test_saved_by_kcompile.py checks Keras reads it); kc.load reads it back."""
    cnn = kc.Sequential([kc.Input(shape=(5, 5, 2)), L.Conv2D(3, 3), L.GlobalAveragePooling2D()], name="cnn")
    frames = kc.Input(shape=(4, 5, 5, 2))
    y = L.TimeDistributed(L.Dense(2))(L.TimeDistributed(cnn)(frames))
    model = kc.Model(frames, y)
    randomize(model, np.random.default_rng(7))
    path = str(tmp_path / "td.keras")
    model.save(path)
    import h5py

    with zipfile.ZipFile(path) as zf, h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r") as f:
        assert f["layers/time_distributed/layer/layers/conv2d/vars/0"].shape == (3, 3, 2, 3)
        assert f["layers/time_distributed_1/layer/vars/0"].shape == (3, 2)
    loaded = kc.load(path)
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(8).standard_normal((2, 4, 5, 5, 2)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_interrupted_save_keeps_the_previous_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = kc.Sequential([kc.Input(shape=(3,)), L.Dense(2)])
    path = str(tmp_path / "m.keras")
    model.save(path)
    before = open(path, "rb").read()

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        model.save(path)
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]  # no temporary file left behind


def test_save_needs_a_keras_suffix(tmp_path: Any) -> None:
    model = kc.Sequential([kc.Input(shape=(3,)), L.Dense(2)])
    with pytest.raises(KCompileError, match=r"\.keras"):
        model.save(str(tmp_path / "m.h5"))


def test_model_checkpoint_to_a_keras_path_saves_the_whole_model(tmp_path: Any) -> None:
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((32, 5)).astype("float32"), rng.integers(0, 2, 32)
    model = kc.Sequential([kc.Input(shape=(5,)), L.Dense(4, activation="relu"), L.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    path = str(tmp_path / "best.keras")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[kc.callbacks.ModelCheckpoint(path, monitor="loss")])
    loaded = kc.load(path)
    assert loaded.optimizer is not None and loaded.optimizer.iterations == 8
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(KCompileError, match=r"\.weights\.h5"):
        kc.callbacks.ModelCheckpoint(path, save_weights_only=True)


def test_an_imported_model_with_keras_operations_saves_and_loads_again(tmp_path: Any) -> None:
    """Operation nodes read from a Keras archive (`x * 0.5 + 1`, `x[:, 0:3]`) are written back as
    Keras operation nodes, so the saved file loads again with the same outputs."""
    fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "models")
    model = kc.load(os.path.join(fixtures, "multi_io_ops.keras"))
    path = str(tmp_path / "again.keras")
    model.save(path)
    again = kc.load(path)
    rng = np.random.default_rng(6)
    feeds = [rng.standard_normal((2, 12, 12, 3)).astype("float32"), rng.standard_normal((2, 7)).astype("float32")]
    for got, want in zip(again.predict(feeds), model.predict(feeds), strict=True):
        np.testing.assert_array_equal(got, want)
