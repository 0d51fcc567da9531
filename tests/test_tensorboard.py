"""The TensorBoard callback's event files, read back by a decoder written here from the TFRecord
and protobuf wire formats (CRCs checked with a bitwise CRC-32C, not the callback's table), and by
TensorBoard's own EventAccumulator when the `tensorboard` package is installed."""

from __future__ import annotations

import glob
import os
import struct
from typing import Any

import numpy as np
import pytest

import kcompile as kc
from kcompile.errors import ModelError
from kcompile.layers import Dense
from kcompile.training import callbacks, optimizers


def crc32c_bitwise(data: bytes) -> int:
    """CRC-32C bit by bit with the unreflected polynomial 0x1EDC6F41 on reflected bytes."""

    def reflect(v: int, bits: int) -> int:
        return int(f"{v:0{bits}b}"[::-1], 2)

    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= reflect(byte, 8) << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1EDC6F41 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return reflect(crc, 32) ^ 0xFFFFFFFF


def masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        (len_crc,) = struct.unpack_from("<I", data, pos + 8)
        assert len_crc == masked(crc32c_bitwise(data[pos : pos + 8])), "length CRC"
        body = data[pos + 12 : pos + 12 + length]
        (body_crc,) = struct.unpack_from("<I", data, pos + 12 + length)
        assert body_crc == masked(crc32c_bitwise(body)), "data CRC"
        out.append(body)
        pos += 12 + length + 4
    assert pos == len(data)
    return out


def parse(msg: bytes) -> dict[int, list[Any]]:
    """Protobuf wire format -> {field: [values]} (varint, fixed64, length-delimited, fixed32)."""
    fields: dict[int, list[Any]] = {}
    pos = 0

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            byte = msg[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while pos < len(msg):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value: Any = varint()
        elif wire == 1:
            value = msg[pos : pos + 8]
            pos += 8
        elif wire == 2:
            n = varint()
            value = msg[pos : pos + n]
            pos += n
        elif wire == 5:
            value = msg[pos : pos + 4]
            pos += 4
        else:
            raise AssertionError(f"wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def scalars(path: str) -> tuple[str, dict[str, list[tuple[int, float]]]]:
    """(file_version, {tag: [(step, value)]}) of one event file."""
    records = [parse(r) for r in read_records(path)]
    version = records[0][3][0].decode()
    out: dict[str, list[tuple[int, float]]] = {}
    for ev in records[1:]:
        assert struct.unpack("<d", ev[1][0])[0] > 1.6e9  # wall time in seconds
        step = ev.get(2, [0])[0]
        for value in parse(ev[5][0])[1]:
            v = parse(value)
            out.setdefault(v[1][0].decode(), []).append((step, struct.unpack("<f", v[2][0])[0]))
    return version, out


def test_crc32c_matches_a_bitwise_implementation() -> None:
    assert callbacks.crc32c(b"123456789") == 0xE3069283 == crc32c_bitwise(b"123456789")  # the CRC-32C check value
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 64, 1000):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert callbacks.crc32c(data) == crc32c_bitwise(data)


def _fit(tmp_path: Any, update_freq: Any) -> tuple[kc.Model, Any, str]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
    model = kc.Sequential([kc.Input(shape=(3,)), Dense(4, activation="tanh"), Dense(1)])
    model.compile(optimizer=optimizers.SGD(0.05), loss="mse", metrics=["mae"])
    log_dir = str(tmp_path / "logs")
    cb = callbacks.TensorBoard(log_dir, update_freq=update_freq)
    hist = model.fit(x, y, batch_size=10, epochs=3, validation_split=0.25, verbose=0, callbacks=[cb], seed=0)
    return model, hist, log_dir


def test_epoch_scalars_are_written_like_keras(tmp_path: Any) -> None:
    _, hist, log_dir = _fit(tmp_path, "epoch")
    (train_file,) = glob.glob(os.path.join(log_dir, "train", "events.out.tfevents.*"))
    (val_file,) = glob.glob(os.path.join(log_dir, "validation", "events.out.tfevents.*"))
    version, train = scalars(train_file)
    assert version == "brain.Event:2"
    assert sorted(train) == ["epoch_learning_rate", "epoch_loss", "epoch_mae"]
    for tag, key in (("epoch_loss", "loss"), ("epoch_mae", "mae")):
        assert [s for s, _ in train[tag]] == [0, 1, 2]
        np.testing.assert_allclose([v for _, v in train[tag]], hist.history[key], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in train["epoch_learning_rate"]], [0.05] * 3, rtol=1e-6)
    _, val = scalars(val_file)
    assert sorted(val) == ["epoch_loss", "epoch_mae"]
    np.testing.assert_allclose([v for _, v in val["epoch_loss"]], hist.history["val_loss"], rtol=1e-6)


def test_batch_scalars_every_n_batches(tmp_path: Any) -> None:
    _, _, log_dir = _fit(tmp_path, 2)
    (train_file,) = glob.glob(os.path.join(log_dir, "train", "events.out.tfevents.*"))
    _, train = scalars(train_file)
    # 30 training samples in batches of 10: 3 batches per epoch, 9 in all; every 2nd is logged.
    assert [s for s, _ in train["batch_loss"]] == [2, 4, 6, 8]
    assert len(train["epoch_loss"]) == 3


def test_update_freq_is_checked() -> None:
    with pytest.raises(ModelError, match="update_freq"):
        callbacks.TensorBoard("logs", update_freq=0)


def test_tensorboard_reads_the_files(tmp_path: Any) -> None:
    ea_mod = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard is not installed (it is in the test extras); the decoder above checks the files",
    )
    _, hist, log_dir = _fit(tmp_path, "epoch")
    acc = ea_mod.EventAccumulator(os.path.join(log_dir, "train"))
    acc.Reload()
    events = acc.Scalars("epoch_loss")
    assert [e.step for e in events] == [0, 1, 2]
    np.testing.assert_allclose([e.value for e in events], hist.history["loss"], rtol=1e-6)
    val = ea_mod.EventAccumulator(os.path.join(log_dir, "validation"))
    val.Reload()
    np.testing.assert_allclose([e.value for e in val.Scalars("epoch_loss")], hist.history["val_loss"], rtol=1e-6)
