"""The training API and the step graph: losses and metrics against Keras' formulas (NumPy),
the onnxruntime step against the reference interpreter, fit/evaluate/train_on_batch behaviour,
frozen layers, callbacks, and resuming from a checkpoint."""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

import numpy as np
import pytest

import kcompile as kc
from kcompile.errors import ModelError
from kcompile.ir import Builder, TensorType, run_graph
from kcompile.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D
from kcompile.training import callbacks, losses, metrics, optimizers
from kcompile.training.step import build_train_graph

EPS = 1e-7


# Losses and metrics: Keras 3's definitions written in NumPy ----------------------------------
def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _cce(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p / p.sum(-1, keepdims=True), EPS, 1 - EPS)
    return -(t * np.log(p)).sum(-1)


def _bce(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(-1)


def _huber(t: np.ndarray, p: np.ndarray, d: float = 1.0) -> np.ndarray:
    e = np.abs(p - t)
    return np.where(e <= d, 0.5 * e**2, d * e - 0.5 * d**2).mean(-1)


def _kld(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    t, p = np.clip(t, EPS, 1), np.clip(p, EPS, 1)
    return (t * np.log(t / p)).sum(-1)


rng0 = np.random.default_rng(0)
LOGITS = rng0.standard_normal((6, 4))
PROBS = _softmax(LOGITS)
PROBS[0, 1] = 0.0  # exercises the clipping
LABELS = rng0.integers(0, 4, 6)
ONEHOT = np.eye(4)[LABELS]
BIN_T = rng0.integers(0, 2, (6, 3)).astype(float)
BIN_P = 1 / (1 + np.exp(-LOGITS[:, :3]))
REG_T, REG_P = rng0.standard_normal((6, 3)), rng0.standard_normal((6, 3)) * 2

LOSS_CASES: list[tuple[Any, np.ndarray, np.ndarray, np.ndarray]] = [
    (losses.CategoricalCrossentropy(), ONEHOT, PROBS, _cce(ONEHOT, PROBS)),
    (losses.CategoricalCrossentropy(from_logits=True), ONEHOT, LOGITS, _cce(ONEHOT, _softmax(LOGITS))),
    (losses.CategoricalCrossentropy(label_smoothing=0.1), ONEHOT, PROBS, _cce(ONEHOT * 0.9 + 0.1 / 4, PROBS)),
    (losses.SparseCategoricalCrossentropy(), LABELS, PROBS, _cce(ONEHOT, PROBS)),
    (losses.SparseCategoricalCrossentropy(from_logits=True), LABELS[:, None], LOGITS, _cce(ONEHOT, _softmax(LOGITS))),
    (losses.BinaryCrossentropy(), BIN_T, BIN_P, _bce(BIN_T, BIN_P)),
    (losses.BinaryCrossentropy(from_logits=True), BIN_T, LOGITS[:, :3], _bce(BIN_T, BIN_P)),
    (losses.MeanSquaredError(), REG_T, REG_P, ((REG_P - REG_T) ** 2).mean(-1)),
    (losses.MeanAbsoluteError(), REG_T, REG_P, np.abs(REG_P - REG_T).mean(-1)),
    (losses.Huber(), REG_T, REG_P, _huber(REG_T, REG_P)),
    (losses.Huber(delta=0.5), REG_T, REG_P, _huber(REG_T, REG_P, 0.5)),
    (losses.KLDivergence(), _softmax(REG_T), PROBS[:, :3] / PROBS[:, :3].sum(-1, keepdims=True), None),
]


def _run(fn: Any, t: np.ndarray, p: np.ndarray) -> np.ndarray:
    b = Builder()
    tv = b.input("t", TensorType(str(t.dtype), ("batch", *t.shape[1:])))
    pv = b.input("p", TensorType("float64", ("batch", *p.shape[1:])))
    out = fn(b, tv, pv)
    b.graph.outputs = list(out) if isinstance(out, tuple) else [out]
    return run_graph(b.graph, {"t": t, "p": p.astype(np.float64)})


@pytest.mark.parametrize("index", range(len(LOSS_CASES)))
def test_losses_match_keras_definitions(index: int) -> None:
    loss, t, p, per_sample = LOSS_CASES[index]
    if per_sample is None:
        per_sample = _kld(t, p)
    (got,) = _run(loss, t, p)
    np.testing.assert_allclose(got, per_sample.mean(), rtol=1e-10)
    loss.reduction = "sum"
    np.testing.assert_allclose(_run(loss, t, p)[0], per_sample.sum(), rtol=1e-10)
    loss.reduction = "sum_over_batch_size"


def test_regularizers_have_no_one_half() -> None:
    from kcompile.training import regularizers

    w = np.array([[1.0, -2.0], [0.5, 3.0]])
    b = Builder()
    wv = b.input("w", TensorType("float64", (2, 2)))
    b.graph.outputs = [regularizers.L2(0.1)(b, wv), regularizers.L1(0.2)(b, wv), regularizers.L1L2(0.2, 0.1)(b, wv)]
    l2, l1, both = run_graph(b.graph, {"w": w})
    np.testing.assert_allclose(l2, 0.1 * (w**2).sum())
    np.testing.assert_allclose(l1, 0.2 * np.abs(w).sum())
    np.testing.assert_allclose(both, l1 + l2)


METRIC_CASES = [
    ("accuracy", ONEHOT, PROBS, (PROBS.argmax(-1) == LABELS)),
    ("accuracy", LABELS, PROBS, (PROBS.argmax(-1) == LABELS)),
    ("accuracy", BIN_T[:, :1], BIN_P[:, :1], ((BIN_P[:, :1] > 0.5) == BIN_T[:, :1])[:, 0]),
    ("categorical_accuracy", ONEHOT, PROBS, (PROBS.argmax(-1) == LABELS)),
    ("sparse_categorical_accuracy", LABELS[:, None], PROBS, (PROBS.argmax(-1) == LABELS)),
    ("binary_accuracy", BIN_T, BIN_P, ((BIN_P > 0.5) == BIN_T).mean(-1)),
    ("mae", REG_T, REG_P, np.abs(REG_P - REG_T).mean(-1)),
    ("mse", REG_T, REG_P, ((REG_P - REG_T) ** 2).mean(-1)),
    (metrics.TopKCategoricalAccuracy(k=2), ONEHOT, PROBS, (PROBS > PROBS[np.arange(6), LABELS][:, None]).sum(-1) < 2),
    (
        metrics.SparseTopKCategoricalAccuracy(k=3),
        LABELS,
        PROBS,
        (PROBS > PROBS[np.arange(6), LABELS][:, None]).sum(-1) < 3,
    ),
]


@pytest.mark.parametrize("index", range(len(METRIC_CASES)))
def test_metrics_match_keras_definitions(index: int) -> None:
    ident, t, p, per_sample = METRIC_CASES[index]
    b = Builder()
    tv = b.input("t", TensorType(str(t.dtype), ("batch", *t.shape[1:])))
    pv = b.input("p", TensorType("float64", ("batch", *p.shape[1:])))
    m = metrics.get(ident, tv, pv)
    total, count = m.batch_values(b, tv, pv)
    b.graph.outputs = [total, count]
    got_total, got_count = run_graph(b.graph, {"t": t, "p": p})
    np.testing.assert_allclose(got_total, np.sum(per_sample), rtol=1e-12)
    assert got_count == np.size(per_sample)


def test_accuracy_resolves_like_keras() -> None:
    b = Builder()
    p = b.input("p", TensorType("float32", ("batch", 4)))
    sparse = b.input("s", TensorType("int64", ("batch",)))
    onehot = b.input("o", TensorType("float32", ("batch", 4)))
    p1 = b.input("p1", TensorType("float32", ("batch", 1)))
    assert isinstance(metrics.get("accuracy", sparse, p), metrics.SparseCategoricalAccuracy)
    assert isinstance(metrics.get("acc", onehot, p), metrics.CategoricalAccuracy)
    assert isinstance(metrics.get("accuracy", p1, p1), metrics.BinaryAccuracy)
    with pytest.raises(ModelError, match="unknown metric"):
        metrics.get("accuracyy", onehot, p)


def test_schedules_follow_keras() -> None:
    s = optimizers.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    assert s(0) == np.float32(0.1) and np.isclose(s(10), 0.05) and np.isclose(s(5), 0.1 * 0.5**0.5)
    assert np.isclose(optimizers.ExponentialDecay(0.1, 10, 0.5, staircase=True)(15), 0.05)
    p = optimizers.PiecewiseConstantDecay([3, 6], [1.0, 0.5, 0.1])
    assert [float(p(i)) for i in (0, 3, 4, 6, 7)] == [1.0, 1.0, 0.5, 0.5, np.float32(0.1)]
    assert np.isclose(optimizers.InverseTimeDecay(1.0, 1, 0.5)(2), 0.5)


# The step graph --------------------------------------------------------------------------------
def _cnn() -> kc.Model:
    return kc.Sequential(
        [
            kc.Input(shape=(6, 6, 2)),
            Conv2D(3, 3, padding="same", activation="relu"),
            BatchNormalization(),
            MaxPooling2D(),
            Flatten(),
            Dropout(0.0),
            Dense(4, activation="softmax"),
        ]
    )


def _blocked_cnn() -> kc.Model:
    """Channel counts that fill onnxruntime's NCHWc blocks (8 or 16): the step's Convs, the
    flipped-filter input gradient and the max pools after them run blocked."""
    return kc.Sequential(
        [
            kc.Input(shape=(10, 10, 1)),
            Conv2D(16, 3, activation="relu"),
            MaxPooling2D(),
            Conv2D(32, 3, padding="same", activation="relu"),
            MaxPooling2D(),
            Flatten(),
            Dense(4, activation="softmax"),
        ]
    )


@pytest.mark.parametrize("build", [_cnn, _blocked_cnn], ids=["batchnorm", "blocked"])
def test_step_graph_in_onnxruntime_matches_the_reference_interpreter(build: Any) -> None:
    from kcompile.runtime.nchwc import NCHWC_DOMAIN, nchwc_block

    from kcompile.training.step import step_onnx

    model = build()
    model.compile(optimizer=optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, *model.inputs[0].shape[1:])).astype(np.float32)
    y = rng.integers(0, 4, 5)
    runner = model._engine(model._as_targets(y))
    plan = runner.plan
    feeds = dict(zip(plan.data_inputs, [x, y.astype(np.int64)], strict=True))
    feeds.update({"lr": np.array(0.01, np.float32), "t": np.array(1.0, np.float32)})
    feeds.update({name: runner.state(name) for name in plan.states})
    want = run_graph(plan.graph, feeds, training=True)
    got = runner.train_step([x, y.astype(np.int64)])
    np.testing.assert_allclose(got, want[: len(plan.scalars)], rtol=1e-5)
    for name, w in zip(plan.updated, want[len(plan.scalars) :], strict=True):
        np.testing.assert_allclose(runner.state(name), w, rtol=1e-4, atol=1e-6, err_msg=name)
    # The weights are graph inputs, the graph has no initializer holding them.
    assert not plan.graph.params
    if build is _blocked_cnn and nchwc_block() is not None:
        blocked = [n.op_type for n in step_onnx(plan.graph).graph.node if n.domain == NCHWC_DOMAIN]
        assert blocked.count("Conv") == 3 and "MaxPool" in blocked, blocked


def test_missing_gradient_rule_is_reported_by_op_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from kcompile.ops import OPS

    monkeypatch.setattr(OPS["relu"], "grad", None)
    model = kc.Sequential([kc.Input(shape=(3,)), Dense(2, activation="relu")])
    with pytest.raises(kc.KCompileError, match=r"no gradient rule for op.*relu"):
        build_train_graph(
            model, optimizers.SGD(), [losses.get("mse")], [1.0], [[]], [TensorType("float32", ("batch", 2))]
        )


# fit / evaluate / train_on_batch -----------------------------------------------------------------
def _blobs(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3, 5)) * 3
    y = rng.integers(0, 3, n)
    return (centers[y] + rng.standard_normal((n, 5))).astype(np.float32), y


def _mlp() -> kc.Model:
    return kc.Sequential([kc.Input(shape=(5,)), Dense(16, activation="relu"), Dense(3, activation="softmax")])


def test_fit_learns_and_reports_a_keras_history() -> None:
    x, y = _blobs()
    model = _mlp()
    model.compile(optimizer=optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    out = io.StringIO()
    hist = model.fit(
        x, y, batch_size=32, epochs=8, validation_split=0.25, verbose=0, callbacks=[callbacks.ProgbarLogger(2, out)]
    )
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert hist.epoch == list(range(8))
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert hist.history["val_accuracy"][-1] > 0.85
    lines = out.getvalue().splitlines()
    assert lines[0] == "Epoch 1/8" and lines[1].startswith("10/10 - ")
    assert " - accuracy: " in lines[1] and lines[1].index("loss") < lines[1].index("val_accuracy")
    loss, acc = model.evaluate(x[300:], y[300:], verbose=0)
    assert np.isclose(loss, hist.history["val_loss"][-1], rtol=1e-5)
    assert np.isclose(acc, hist.history["val_accuracy"][-1])
    # predict sees the trained weights
    assert (model.predict(x[300:]).argmax(-1) == y[300:]).mean() == pytest.approx(acc)


def test_epoch_logs_accumulate_over_the_epoch_like_keras() -> None:
    x, y = _blobs(100)
    model = _mlp()
    model.compile(optimizer=optimizers.SGD(0.0), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(x, y, batch_size=30, epochs=1, shuffle=False, verbose=0)
    loss, acc = model.evaluate(x, y, batch_size=7, verbose=0)  # lr 0: the weights did not move
    assert np.isclose(hist.history["loss"][0], loss, rtol=1e-5)  # sample-weighted mean of batch losses
    assert np.isclose(hist.history["accuracy"][0], acc)


def test_set_weights_between_calls_reaches_the_engine() -> None:
    x, y = _blobs(64)
    model = _mlp()
    model.compile(optimizer=optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    start = model.get_weights()
    first = model.train_on_batch(x, y)
    model.set_weights(start)
    assert model.train_on_batch(x, y) == pytest.approx(first, rel=1e-6)


def test_frozen_batch_norm_stays_in_inference_mode() -> None:
    model = _cnn()
    bn = model.layers[1]
    bn.trainable = False
    model.compile(optimizer=optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    before = [w.copy() for w in bn.get_weights()]
    rng = np.random.default_rng(2)
    model.train_on_batch(rng.standard_normal((8, 6, 6, 2)), rng.integers(0, 4, 8))
    for a, b in zip(before, bn.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_batch_norm_moving_statistics_update_in_training() -> None:
    model = _cnn()
    model.compile(optimizer=optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
    bn = model.layers[1]
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 6, 6, 2)).astype(np.float32)
    conv_out = kc.Model(model.inputs, model.layers[0]._calls[0].outputs[0]).predict(x)
    mean, var = conv_out.mean((0, 1, 2)), (conv_out**2).mean((0, 1, 2)) - conv_out.mean((0, 1, 2)) ** 2
    mm, mv = bn.moving_mean.data.copy(), bn.moving_variance.data.copy()
    model.train_on_batch(x, rng.integers(0, 4, 8))
    np.testing.assert_allclose(bn.moving_mean.data, mm * 0.99 + mean * 0.01, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bn.moving_variance.data, mv * 0.99 + var * 0.01, rtol=1e-5, atol=1e-7)


def test_dropout_trains_with_a_fresh_mask_per_step() -> None:
    x, y = _blobs(64)
    model = kc.Sequential(
        [kc.Input(shape=(5,)), Dense(32, activation="relu"), Dropout(0.5), Dense(3, activation="softmax")]
    )
    model.compile(optimizer=optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
    a, b = model.train_on_batch(x, y), model.train_on_batch(x, y)
    assert a != b  # same weights (lr 0), different masks
    assert model.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0))  # inference: no dropout


def test_callbacks_early_stopping_scheduler_csv_and_plateau(tmp_path: Any) -> None:
    x, y = _blobs(200)
    model = _mlp()
    model.compile(optimizer=optimizers.SGD(0.05), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    seen_lr: list[float] = []
    stop = callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0, restore_best_weights=True)
    sched = callbacks.LearningRateScheduler(lambda epoch, lr: 0.05 / (epoch + 1))
    spy = callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen_lr.append(logs["learning_rate"]))
    log = tmp_path / "log.csv"
    hist = model.fit(x, y, epochs=5, verbose=0, callbacks=[sched, callbacks.CSVLogger(str(log)), stop, spy])
    assert len(hist.epoch) == 2 and stop.stopped_epoch == 1  # no improvement of >= 10 after epoch 0
    assert seen_lr == pytest.approx([0.05, 0.025])
    rows = list(csv.reader(open(log)))
    assert rows[0] == ["epoch", "accuracy", "learning_rate", "loss"] and len(rows) == 3
    plateau = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[plateau])
    assert float(model.optimizer.learning_rate) == pytest.approx(0.025 * 0.25)


def test_resume_from_saved_weights_is_bitwise_identical(tmp_path: Any) -> None:
    x, y = _blobs(96)

    def fresh() -> kc.Model:
        kc.clear_session()
        kc.set_random_seed(7)
        model = _mlp()
        model.compile(optimizer=optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy")
        return model

    straight = fresh()
    straight.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    first = fresh()
    first.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    path = tmp_path / "ckpt.weights.h5"
    first.save_weights(str(path))
    resumed = fresh()
    resumed.load_weights(str(path))
    assert resumed.optimizer.iterations == 12
    resumed.fit(x, y, batch_size=16, epochs=3, initial_epoch=2, shuffle=False, verbose=0)
    for a, b in zip(straight.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_compile_and_fit_errors_are_explained() -> None:
    model = _mlp()
    with pytest.raises(ModelError, match="must be compiled first"):
        model.fit(np.zeros((4, 5)), np.zeros(4))
    with pytest.raises(ModelError, match="unknown optimizer"):
        model.compile(optimizer="adamm", loss="mse")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ModelError, match="same number of samples"):
        model.fit(np.zeros((4, 5)), np.zeros(3), verbose=0)
    with pytest.raises(ModelError, match="expects shape"):
        model.fit(np.zeros((4, 6)), np.zeros(4), verbose=0)


def test_model_checkpoint_keeps_the_best_epoch(tmp_path: Any) -> None:
    x, y = _blobs()
    model = _mlp()
    model.compile(optimizer=optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    per_epoch: list[tuple[float, list[np.ndarray]]] = []
    record = callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: per_epoch.append((logs["val_loss"], model.get_weights()))
    )
    path = tmp_path / "best.h5"
    ckpt = callbacks.ModelCheckpoint(str(path), monitor="val_loss", save_best_only=True)
    model.fit(x, y, batch_size=32, epochs=6, validation_split=0.25, verbose=0, callbacks=[record, ckpt])
    best_loss, best_weights = min(per_epoch, key=lambda item: item[0])
    fresh = _mlp()
    fresh.load_weights(str(path))
    for got, want in zip(fresh.get_weights(), best_weights, strict=True):
        np.testing.assert_array_equal(got, want)
    assert ckpt.best == best_loss
    every = callbacks.ModelCheckpoint(str(tmp_path / "e{epoch}.h5"), save_best_only=False)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[every])
    assert (tmp_path / "e1.h5").exists() and (tmp_path / "e2.h5").exists()


def test_export_writes_inference_onnx_with_the_trained_weights(tmp_path: Any) -> None:
    import onnxruntime as ort

    x, y = _blobs()
    model = _mlp()
    model.compile(optimizer=optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    path = tmp_path / "trained.onnx"
    model.export(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [model.inputs[0]._call.layer.name]  # no learning phase
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x[:20]})
    np.testing.assert_allclose(got, model.predict(x[:20]), rtol=1e-5, atol=1e-6)


# Sample and class weights --------------------------------------------------------------------
@pytest.mark.parametrize("index", range(len(LOSS_CASES)))
def test_sample_weighted_losses_divide_by_the_batch_size(index: int) -> None:
    loss, t, p, per_sample = LOSS_CASES[index]
    if per_sample is None:
        per_sample = _kld(t, p)
    sw = np.linspace(0.0, 2.0, len(t))

    def weighted(b: Builder, tv: Any, pv: Any) -> Any:
        w = b.constant(sw, "float64")
        return loss(b, tv, pv, w)

    # Keras' "sum_over_batch_size": sum(w * l) / N, not / sum(w).
    np.testing.assert_allclose(_run(weighted, t, p)[0], (sw * per_sample).sum() / len(t), rtol=1e-10)


def test_packed_targets_round_trip() -> None:
    y = np.array([[3], [0], [7]], np.int64)
    sw = np.array([0.5, 1.0, 2.0], np.float32)
    b = Builder()
    packed = b.input("y", TensorType("float32", ("batch", 2)))
    target, w = losses.unpack_weighted_target(b, packed, TensorType("int64", ("batch", 1)))
    b.graph.outputs = [target, w]
    got_t, got_w = run_graph(b.graph, {"y": losses.pack_weighted_target(y, sw)})
    np.testing.assert_array_equal(got_t, y)
    np.testing.assert_array_equal(got_w, sw)


KERAS_HERE = os.path.join(os.path.dirname(__file__), "fixtures", "training")
with open(os.path.join(KERAS_HERE, "keras_training.json")) as _f:
    KERAS_INDEX = json.load(_f)
KERAS_DATA = np.load(os.path.join(KERAS_HERE, "keras_training.npz"))


def _keras_weights(prefix: str) -> list[np.ndarray]:
    out = []
    while f"{prefix}/{len(out)}" in KERAS_DATA:
        out.append(KERAS_DATA[f"{prefix}/{len(out)}"])
    return out


def _keras_model(spec: dict[str, Any]) -> kc.Model:
    from kcompile import layers
    from kcompile.training import regularizers

    stack: list[Any] = [kc.Input(shape=tuple(spec["input"]))]
    for cls, kwargs in spec["layers"]:
        kwargs = dict(kwargs)
        reg = kwargs.pop("kernel_regularizer", None)
        layer = getattr(layers, cls)(**kwargs)
        if reg is not None:
            layer.kernel_regularizer = regularizers.L2(reg)
        stack.append(layer)
    return kc.Sequential(stack)


@pytest.mark.parametrize("case", sorted(KERAS_INDEX["weighted"]))
def test_sample_and_class_weights_match_keras(case: str) -> None:
    mname, (cls, kwargs), how = KERAS_INDEX["weighted"][case]
    spec = KERAS_INDEX["models"][mname]
    x, y = KERAS_DATA[f"{mname}/x"], KERAS_DATA[f"{mname}/y"]
    if how.get("sample_weight"):
        weighting: dict[str, Any] = {"sample_weight": KERAS_DATA[f"weighted/{case}/sample_weight"]}
    else:
        weighting = {"class_weight": {int(k): v for k, v in how["class_weight"].items()}}

    def fresh() -> kc.Model:
        model = _keras_model(spec)
        model.set_weights(_keras_weights(f"{mname}/w0"))
        model.compile(optimizer=getattr(optimizers, cls)(**kwargs), loss=spec["loss"])
        return model

    def check(model: kc.Model, prefix: str) -> None:
        want = _keras_weights(prefix)
        got = model.get_weights()
        assert len(got) == len(want)
        for w, g, k in zip(model.weights, got, want, strict=True):
            np.testing.assert_allclose(g, k, rtol=1e-5, atol=1e-6, err_msg=f"{w.name} at {prefix}")

    model = fresh()
    want_losses = KERAS_DATA[f"weighted/{case}/loss"]
    for step in range(1, 4):
        loss = model.train_on_batch(x, y, **weighting)
        np.testing.assert_allclose(loss, want_losses[step - 1], rtol=1e-5, err_msg=f"loss at step {step}")
        if step in (1, 3):
            check(model, f"weighted/{case}/step{step}")
    got_eval = model.evaluate(x, y, batch_size=8, verbose=0, sample_weight=weighting.get("sample_weight"))
    np.testing.assert_allclose(got_eval, KERAS_DATA[f"weighted/{case}/evaluate"], rtol=1e-5)
    model = fresh()
    hist = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, **weighting)
    check(model, f"weighted/{case}/fit")
    np.testing.assert_allclose(hist.history["loss"], KERAS_DATA[f"weighted/{case}/fit_loss"], rtol=1e-5)


def test_weighting_errors_are_explained() -> None:
    x, y = _blobs()
    model = _mlp()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ModelError, match="not both"):
        model.fit(x, y, sample_weight=np.ones(len(x)), class_weight={0: 2.0}, verbose=0)
    with pytest.raises(ModelError, match=r"sample_weight .* must have shape"):
        model.fit(x, y, sample_weight=np.ones(3), verbose=0)


def test_weighted_validation_data_is_evaluated_with_its_weights() -> None:
    x, y = _blobs()
    sw = np.random.default_rng(5).uniform(0, 2, len(x)).astype(np.float32)
    model = _mlp()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(x[:300], y[:300], validation_data=(x[300:], y[300:], sw[300:]), epochs=1, verbose=0, seed=0)
    want = model.evaluate(x[300:], y[300:], sample_weight=sw[300:], verbose=0, return_dict=True)
    np.testing.assert_allclose(hist.history["val_loss"][0], want["loss"], rtol=1e-6)
    # Metrics stay unweighted (Keras' `metrics=`), the loss is weighted.
    plain = model.evaluate(x[300:], y[300:], verbose=0, return_dict=True)
    np.testing.assert_allclose(want["accuracy"], plain["accuracy"], rtol=1e-6)
    assert abs(want["loss"] - plain["loss"]) > 1e-4
