"""Keras-style callbacks and the progress bar that `fit` prints.

Hooks and their order are Keras': on_train_begin, per epoch on_epoch_begin, per batch
on_train_batch_begin/end, on_epoch_end (logs include val_* after validation), on_train_end.
`model.stop_training = True` ends training after the current batch/epoch.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

import numpy as np

from ..errors import ModelError


class Callback:
    def __init__(self) -> None:
        self.model: Any = None
        self.params: dict[str, Any] = {}

    def set_model(self, model: Any) -> None:
        self.model = model

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None: ...
    def on_train_end(self, logs: dict[str, float] | None = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None: ...
    def on_train_batch_begin(self, batch: int, logs: dict[str, float] | None = None) -> None: ...
    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None: ...


class CallbackList(Callback):
    def __init__(self, callbacks: Iterable[Callback], model: Any, params: dict[str, Any]) -> None:
        super().__init__()
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise ModelError(f"callbacks must be kc.callbacks.Callback objects, got {type(cb).__name__}")
            cb.set_model(model)
            cb.set_params(params)

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self._call("on_train_begin", logs)

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        self._call("on_train_end", logs)

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._call("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._call("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._call("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._call("on_train_batch_end", batch, logs)


class History(Callback):
    """`history.history[name]` = one value per epoch; `history.epoch` = the epoch indices."""

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)


def _format_value(v: float) -> str:
    return f"{v:.4f}" if abs(v) > 1e-3 else f"{v:.4e}"


def _format_time(per_unit: float, unit: str = "step") -> str:
    if per_unit >= 1 or per_unit == 0:
        return f" {per_unit:.0f}s/{unit}"
    if per_unit >= 1e-3:
        return f" {per_unit * 1e3:.0f}ms/{unit}"
    return f" {per_unit * 1e6:.0f}us/{unit}"


class ProgbarLogger(Callback):
    """Keras 3's progress bar: `12/50 ━━━━━━━━━━━━━━━━━━━━ 1s 5ms/step - accuracy: 0.9 - loss: 0.3`.

    verbose=1 redraws one line per epoch (at most every 0.05 s), verbose=2 prints one line per
    epoch at its end. The values shown are the epoch's running values (as Keras' stateful metrics).
    """

    def __init__(self, verbose: int = 1, stream: TextIO | None = None, interval: float = 0.05) -> None:
        super().__init__()
        self.verbose, self.interval = verbose, interval
        self.stream = stream
        self._dynamic = False

    def _out(self) -> TextIO:
        return self.stream or sys.stdout

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        out = self._out()
        self._dynamic = bool(getattr(out, "isatty", lambda: False)()) or "ipykernel" in sys.modules

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.target = self.params.get("steps")
        self._start = time.time()
        self._last = 0.0
        self._width = 0
        self._first_step_end: float | None = None
        if self.verbose and self.params.get("epochs", 1) > 0:
            self._out().write(f"Epoch {epoch + 1}/{self.params.get('epochs')}\n")

    def _per_step(self, current: int, now: float) -> float:
        if current <= 1 or self._first_step_end is None:
            return (now - self._start) / max(current, 1)
        return (now - self._first_step_end) / (current - 1)

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        now = time.time()
        if batch == 0:
            self._first_step_end = now
        if self.verbose == 1 and (now - self._last >= self.interval or batch + 1 == self.target):
            self._draw(batch + 1, logs or {}, final=False, now=now)
            self._last = now

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        now = time.time()
        current = self.target or 0
        if self.verbose == 1:
            self._draw(current, logs or {}, final=True, now=now)
        elif self.verbose == 2:
            digits = int(math.log10(max(current, 1))) + 1
            per_step = _format_time(self._per_step(current, now))
            line = f"{current:{digits}d}/{current} - {now - self._start:.0f}s -{per_step}"
            line += "".join(f" - {k}: {_format_value(v)}" for k, v in _ordered(logs or {}))
            self._out().write(line + "\n")
        self._out().flush()

    def _draw(self, current: int, logs: dict[str, float], final: bool, now: float) -> None:
        target = self.target or 0
        digits = int(math.log10(max(target, 1))) + 1
        bar = f"{current:{digits}d}/{target} "
        filled = int(20 * current / target) if target else 0
        bar += "━" * filled + ("━" * (20 - filled) if self._dynamic else " " * (20 - filled))
        per = self._per_step(current, now)
        if final or current >= target:
            info = f" {now - self._start:.0f}s"
        else:
            info = f" {per * (target - current):.0f}s"
        info += _format_time(per)
        info += "".join(f" - {k}: {_format_value(v)}" for k, v in _ordered(logs))
        line = bar + info
        out = self._out()
        if self._dynamic:
            pad = " " * max(self._width - len(line), 0)
            out.write("\r" + line + pad + ("\n" if final else ""))
        elif final:
            out.write(line + "\n")
        self._width = len(line)
        out.flush()


def _ordered(logs: dict[str, float]) -> list[tuple[str, float]]:
    train = sorted((k, v) for k, v in logs.items() if not k.startswith("val_"))
    val = sorted((k, v) for k, v in logs.items() if k.startswith("val_"))
    return train + val


# Monitoring callbacks ----------------------------------------------------------------------
def _mode_op(mode: str, monitor: str) -> Callable[[float, float], bool]:
    if mode not in ("auto", "min", "max"):
        raise ModelError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "max" or (mode == "auto" and ("acc" in monitor or monitor.endswith("auc"))):
        return lambda a, b: a > b
    return lambda a, b: a < b


class EarlyStopping(Callback):
    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ) -> None:
        super().__init__()
        self.monitor, self.patience, self.verbose = monitor, patience, verbose
        self.baseline, self.restore_best_weights, self.start_from_epoch = (
            baseline,
            restore_best_weights,
            start_from_epoch,
        )
        self.better = _mode_op(mode, monitor)
        self.min_delta = abs(min_delta) if self.better(1, 0) else -abs(min_delta)
        self.stopped_epoch = 0

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.wait = 0
        self.best: float | None = None
        self.best_weights: list[np.ndarray] | None = None
        self.best_epoch = 0
        self.stopped_epoch = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        current = (logs or {}).get(self.monitor)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
        self.wait += 1
        if self.best is None or self.better(current - self.min_delta, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self.better(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class LearningRateScheduler(Callback):
    def __init__(self, schedule: Callable[[int, float], float], verbose: int = 0) -> None:
        super().__init__()
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        lr = float(self.model.optimizer.current_learning_rate())
        new = float(self.schedule(epoch, lr))
        self.model.optimizer.learning_rate = new
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {new}.")

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.current_learning_rate())


class ReduceLROnPlateau(Callback):
    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        super().__init__()
        if factor >= 1.0:
            raise ModelError("ReduceLROnPlateau does not support a factor >= 1.0")
        self.monitor, self.factor, self.patience, self.verbose = monitor, factor, patience, verbose
        self.min_delta, self.cooldown, self.min_lr = min_delta, cooldown, min_lr
        self.better = _mode_op(mode, monitor)
        self.min_delta = abs(min_delta) if self.better(1, 0) else -abs(min_delta)

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.best: float | None = None
        self.wait = 0
        self.cooldown_counter = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs if logs is not None else {}
        logs["learning_rate"] = float(self.model.optimizer.current_learning_rate())
        current = logs.get(self.monitor)
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.best is None or self.better(current - self.min_delta, self.best):
            self.best, self.wait = current, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = float(self.model.optimizer.current_learning_rate())
                if old > np.float32(self.min_lr):
                    new = max(old * self.factor, self.min_lr)
                    self.model.optimizer.learning_rate = new
                    if self.verbose:
                        print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


class CSVLogger(Callback):
    """One row per epoch: `epoch` then the sorted log keys."""

    def __init__(self, filename: str, separator: str = ",", append: bool = False) -> None:
        super().__init__()
        self.filename, self.sep, self.append = os.fspath(filename), separator, append
        self.keys: list[str] | None = None

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        exists = self.append and os.path.exists(self.filename) and os.path.getsize(self.filename) > 0
        self.file = open(self.filename, "a" if self.append else "w", newline="")
        self.keys = None
        self._header_written = exists

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
        writer = csv.writer(self.file, delimiter=self.sep)
        if not self._header_written:
            writer.writerow(["epoch", *self.keys])
            self._header_written = True
        writer.writerow([epoch, *(logs.get(k, "NA") for k in self.keys)])
        self.file.flush()

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        self.file.close()


class TerminateOnNaN(Callback):
    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: Invalid loss, terminating training")
            self.model.stop_training = True


class LambdaCallback(Callback):
    def __init__(self, **hooks: Callable[..., Any]) -> None:
        super().__init__()
        for name, fn in hooks.items():
            if not hasattr(Callback, name):
                raise ModelError(f"LambdaCallback has no hook {name!r}")
            setattr(self, name, fn)


class ModelCheckpoint(Callback):
    """Save the model after every epoch, or only when `monitor` improves (`save_best_only`):
    a `.keras` path gets the whole model (`model.save`: structure, weights, optimizer state; `kc.load`
    resumes it), another path the weights with the optimizer state (`save_weights`).
    `save_weights_only` left None follows the path; given, it must agree with it, as in Keras.
    `filepath` may hold `{epoch}` and log keys (`{val_loss:.3f}`). Writes are atomic: an
    interrupted save leaves the previous checkpoint intact."""

    def __init__(
        self,
        filepath: str,
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        mode: str = "auto",
        save_weights_only: bool | None = None,
    ) -> None:
        super().__init__()
        self.filepath, self.monitor, self.verbose = str(filepath), monitor, verbose
        whole = self.filepath.endswith(".keras")
        if save_weights_only is not None and bool(save_weights_only) == whole:
            want = "a path ending in .weights.h5" if save_weights_only else "a path ending in .keras"
            raise ModelError(
                f"ModelCheckpoint(save_weights_only={save_weights_only}) needs {want}, got {self.filepath!r}"
            )
        self.save_best_only, self.save_weights_only = save_best_only, not whole
        self.better = _mode_op(mode, monitor)
        self.best: float | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        try:
            path = self.filepath.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError) as err:
            raise ModelError(f"ModelCheckpoint filepath {self.filepath!r} cannot be formatted: {err}") from None
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                raise ModelError(f"ModelCheckpoint monitors {self.monitor!r}, which is not in the logs {sorted(logs)}")
            if self.best is not None and not self.better(current, self.best):
                return
            if self.verbose:
                print(f"Epoch {epoch + 1}: {self.monitor} improved to {current:.5f}, saving model to {path}")
            self.best = current
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)


# TensorBoard ---------------------------------------------------------------------------------
# An event file is a TFRecord stream: per record, the length (uint64 LE), the masked CRC-32C of
# those 8 bytes (uint32 LE), the data, the masked CRC-32C of the data. Each record is one
# `tensorflow.Event` protobuf (tensorflow/core/util/event.proto):
#     Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
#     Summary { repeated Value value = 1; }    (tensorflow/core/framework/summary.proto)
#     Value   { string tag = 1; float simple_value = 2; }
# The first record of a file carries file_version "brain.Event:2"; every later one a scalar.
def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)  # Castagnoli, reflected
        table.append(c)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    import struct

    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 fields: negative values as their two's complement
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def event_bytes(wall_time: float, step: int = 0, file_version: str | None = None, scalars: Any = ()) -> bytes:
    """One serialized Event: the file version, or a Summary of (tag, value) scalars."""
    import struct

    out = _field(1, 1) + struct.pack("<d", wall_time)
    if step:
        out += _field(2, 0) + _varint(step)
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())
    values = b"".join(
        _length_delimited(1, _length_delimited(1, tag.encode()) + _field(2, 5) + struct.pack("<f", value))
        for tag, value in scalars
    )
    if values:
        out += _length_delimited(5, values)
    return out


class EventFileWriter:
    """Appends scalar events to `<logdir>/events.out.tfevents.<time>.<host>.<pid>.<n>.v2`."""

    _count = 0

    def __init__(self, logdir: str) -> None:
        import socket

        os.makedirs(logdir, exist_ok=True)
        EventFileWriter._count += 1
        now = time.time()
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.{EventFileWriter._count}.v2"
        self.path = os.path.join(logdir, name)
        self._file = open(self.path, "wb")  # closed by close()
        self._file.write(tfrecord(event_bytes(now, file_version="brain.Event:2")))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._file.write(tfrecord(event_bytes(time.time(), step, scalars=[(tag, float(value))])))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoard(Callback):
    """Scalar logs for TensorBoard, written without TensorFlow, as Keras' TensorBoard callback
    writes them: per epoch `epoch_<name>` (loss, metrics, learning_rate) at step = epoch index,
    training values under `<log_dir>/train`, `val_*` values (prefix dropped) under
    `<log_dir>/validation`; with `update_freq="batch"` or N, also `batch_<name>` every N batches
    at step = the global batch count (from 1)."""

    def __init__(self, log_dir: str = "logs", update_freq: str | int = "epoch") -> None:
        super().__init__()
        if update_freq == "batch":
            update_freq = 1
        if update_freq != "epoch" and not (isinstance(update_freq, int) and update_freq > 0):
            raise ModelError(f"update_freq must be 'epoch', 'batch' or a positive integer, got {update_freq!r}")
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self._writers: dict[str, EventFileWriter] = {}
        self._global_batch = 0

    def _writer(self, run: str) -> EventFileWriter:
        if run not in self._writers:
            self._writers[run] = EventFileWriter(os.path.join(self.log_dir, run))
        return self._writers[run]

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self._global_batch = 0

    def on_train_batch_begin(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._global_batch += 1

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        if self.update_freq == "epoch" or self._global_batch % int(self.update_freq):
            return
        writer = self._writer("train")
        for name, value in (logs or {}).items():
            writer.scalar(f"batch_{name}", value, self._global_batch)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        opt = getattr(self.model, "optimizer", None)
        if opt is not None and hasattr(opt, "current_learning_rate"):
            train["learning_rate"] = float(opt.current_learning_rate())
        for run, values in (("train", train), ("validation", val)):
            if values:
                writer = self._writer(run)
                for name, value in values.items():
                    writer.scalar(f"epoch_{name}", value, epoch)
                writer.flush()

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
