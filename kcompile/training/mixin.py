"""The Keras training API on models: `compile`, `fit`, `evaluate`, `train_on_batch`,
`test_on_batch`, and the `History` that `fit` returns.

`compile()` only records the configuration. The step graphs are built on the first call that sees
data (the targets' shapes decide what "accuracy" means, as in Keras) and rebuilt only when the
targets' signature or the trainable set changes. Between calls the weights live in the engine;
`fit` copies them back to the model after every epoch, `train_on_batch` after every call, so
`get_weights()`, `predict()` and callbacks see the trained values; weights assigned by the user
(`set_weights`) are sent back to the engine before the next step.

Sample weights (`sample_weight=`, or `class_weight=` turned into them as Keras'
`class_weight_to_sample_weights` does) scale each sample's loss before the mean over the batch
(Keras' "sum_over_batch_size": sum(w * l) / batch size); metrics stay unweighted, as Keras'
`metrics=`. An engine built for weights takes each target packed with its weights
(`losses.pack_weighted_target`) and serves unweighted calls with weights 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ModelError
from . import losses as losses_mod
from . import metrics as metrics_mod
from . import optimizers as optimizers_mod
from .callbacks import Callback, CallbackList, History, ProgbarLogger
from .metrics import Metric


class TrainingMixin:
    """Mixed into `kcompile.Model`; the training methods live here."""

    # Set by Model; declared for type checkers.
    inputs: Any
    outputs: Any
    layers: Any
    weights: Any
    name: str

    # compile -------------------------------------------------------------------------------
    def compile(
        self,
        optimizer: Any = "rmsprop",
        loss: Any = None,
        loss_weights: Any = None,
        metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        unknown = set(kwargs) - {
            "run_eagerly",
            "jit_compile",
            "steps_per_execution",
            "auto_scale_loss",
            "weighted_metrics",
        }
        if unknown:
            raise ModelError(f"compile() got unknown argument(s): {', '.join(sorted(unknown))}")
        self.optimizer = optimizers_mod.get(optimizer)
        self._train_spec = {"loss": loss, "loss_weights": loss_weights, "metrics": metrics}
        self._runner: Any = None
        self._runner_key: Any = None
        self._weighted_engine = False
        self.stop_training = False
        self.history: History | None = None
        self.compiled_metrics_names: list[str] = []

    def _check_compiled(self) -> None:
        if getattr(self, "_train_spec", None) is None:
            raise ModelError(f"model '{self.name}' must be compiled first: call model.compile(optimizer, loss, ...)")

    # Data ------------------------------------------------------------------------------------
    def _as_inputs(self, x: Any) -> list[np.ndarray]:
        names = [t.name for t in self.inputs]
        if isinstance(x, dict):
            missing = [n for n in names if n not in x]
            if missing:
                raise ModelError(f"missing input(s) {missing}; the model takes {names}")
            items = [x[n] for n in names]
        elif isinstance(x, list | tuple):
            items = list(x)
        else:
            items = [x]
        if len(items) != len(names):
            raise ModelError(f"model '{self.name}' takes {len(names)} input(s) {names}, got {len(items)}")
        out = []
        for t, a in zip(self.inputs, items, strict=True):
            arr = np.ascontiguousarray(np.asarray(a), dtype=t.dtype)
            if arr.ndim != len(t.shape) or any(
                d is not None and d != s for d, s in zip(t.shape[1:], arr.shape[1:], strict=False)
            ):
                raise ModelError(f"input '{t.name}' expects shape {t.shape}, got {arr.shape}")
            out.append(arr)
        return out

    def _as_targets(self, y: Any) -> list[np.ndarray]:
        names = [t.name for t in self.outputs]
        if isinstance(y, dict):
            items = [y[n] for n in names]
        elif isinstance(y, list | tuple) and len(names) > 1:
            items = list(y)
        else:
            items = [y]
        if len(items) != len(names):
            raise ModelError(f"model '{self.name}' has {len(names)} output(s) {names}, got {len(items)} target(s)")
        out = []
        for a in items:
            arr = np.asarray(a)
            arr = arr.astype(np.int64 if arr.dtype.kind in "iu" else np.float32, copy=False)
            out.append(np.ascontiguousarray(arr))
        return out

    def _sample_weights(self, sample_weight: Any, class_weight: Any, ys: list[np.ndarray]) -> list[np.ndarray] | None:
        """One float32 [N] weight array per output, or None when no weighting was asked for."""
        if sample_weight is not None and class_weight is not None:
            raise ModelError("give sample_weight or class_weight, not both (Keras refuses both at once)")
        n = ys[0].shape[0]
        if class_weight is not None:
            if len(ys) != 1:
                raise ModelError("class_weight is only supported for models with a single output")
            if not isinstance(class_weight, dict):
                raise ModelError(
                    f"class_weight must be a dict {{class index: weight}}, got {type(class_weight).__name__}"
                )
            y = ys[0]
            if y.ndim > 1:
                y = np.argmax(y, axis=-1) if y.shape[-1] != 1 else np.squeeze(y, axis=-1)
            classes = np.round(y).astype(np.int64).reshape(n, -1)[:, 0]
            table = {int(k): float(v) for k, v in class_weight.items()}
            return [np.array([table.get(int(c), 1.0) for c in classes], np.float32)]
        if sample_weight is None:
            return None
        names = [t.name for t in self.outputs]
        if isinstance(sample_weight, dict):
            items = [sample_weight.get(name) for name in names]
        elif isinstance(sample_weight, list | tuple) and len(names) > 1:
            if len(sample_weight) != len(names):
                raise ModelError(f"sample_weight has {len(sample_weight)} entries for {len(names)} outputs")
            items = list(sample_weight)
        else:
            items = [sample_weight] * len(names)
        out = []
        for name, w in zip(names, items, strict=True):
            arr = np.ones(n, np.float32) if w is None else np.asarray(w, np.float32)
            if arr.ndim == 2 and arr.shape[1] == 1:
                arr = arr[:, 0]
            if arr.shape != (n,):
                raise ModelError(f"sample_weight for output '{name}' must have shape ({n},), got {arr.shape}")
            out.append(np.ascontiguousarray(arr))
        return out

    def _engine_targets(self, ys: list[np.ndarray], sws: list[np.ndarray] | None) -> list[np.ndarray]:
        """The target arrays the current engine takes (packed with weights when it is weighted)."""
        if not self._weighted_engine:
            return ys
        if sws is None:
            sws = [np.ones(y.shape[0], np.float32) for y in ys]
        return [losses_mod.pack_weighted_target(y, w) for y, w in zip(ys, sws, strict=True)]

    # The engine ------------------------------------------------------------------------------
    def _per_output(self, spec: Any, what: str) -> list[Any]:
        names = [t.name for t in self.outputs]
        if isinstance(spec, dict):
            unknown = set(spec) - set(names)
            if unknown:
                raise ModelError(f"{what} names unknown output(s) {sorted(unknown)}; the outputs are {names}")
            return [spec.get(n) for n in names]
        if isinstance(spec, list | tuple) and len(names) > 1 and what != "metrics":
            if len(spec) != len(names):
                raise ModelError(f"{what} has {len(spec)} entries for {len(names)} outputs")
            return list(spec)
        if (
            what == "metrics"
            and isinstance(spec, list | tuple)
            and len(names) > 1
            and all(isinstance(m, list | tuple) for m in spec)
        ):
            return list(spec)
        return [spec] * len(names)

    def _engine(self, y: list[np.ndarray], weighted: bool = False) -> Any:
        from ..ir.types import TensorType
        from .step import StepRunner, build_eval_graph, build_train_graph, target_types

        self._check_compiled()
        y_types = target_types(y)
        trainable = tuple(id(w) for w in self.weights if w.trainable)
        key = (tuple(y_types), trainable)
        if self._runner is not None and self._runner_key == key and (self._weighted_engine or not weighted):
            self._runner.reload_changed_params()
            return self._runner
        if self._runner is not None:
            self._runner.sync_to_model()
        _refuse_recurrent_dropout(self.layers)
        spec = self._train_spec
        loss_list = [losses_mod.get(lo) if lo is not None else None for lo in self._per_output(spec["loss"], "loss")]
        weights = spec["loss_weights"]
        weight_list = (
            [1.0 if w is None else float(w) for w in self._per_output(weights, "loss_weights")]
            if weights is not None
            else [1.0] * len(loss_list)
        )
        graph_preds = [
            TensorType(t.dtype, ("batch", *(d if d is not None else f"d{i}" for i, d in enumerate(t.shape[1:]))))
            for t in self.outputs
        ]
        from ..ir.builder import Builder

        scratch = Builder()
        metric_lists: list[list[Metric]] = []
        names: list[str] = []
        multi = len(self.outputs) > 1
        for i, (ms, yt, pt, lo) in enumerate(
            zip(self._per_output(spec["metrics"], "metrics"), y_types, graph_preds, loss_list, strict=True)
        ):
            items = [] if ms is None else list(ms) if isinstance(ms, list | tuple) else [ms]
            yv = scratch.input(f"y{i}", yt)
            pv = scratch.input(f"p{i}", pt)
            sparse = isinstance(lo, losses_mod.SparseCategoricalCrossentropy)
            objs = [metrics_mod.get(m, yv, pv, sparse_loss=sparse) for m in items]
            metric_lists.append(objs)
            names.extend(f"{self.outputs[i].name}_{m.name}" if multi else m.name for m in objs)
        step_losses: list[Any] = loss_list
        step_metrics = metric_lists
        step_types = y_types
        if weighted:
            step_losses = [
                None if lo is None else losses_mod.SampleWeighted(lo, t)
                for lo, t in zip(loss_list, y_types, strict=True)
            ]
            step_metrics = [[_Unpacked(m, t) for m in ms] for ms, t in zip(metric_lists, y_types, strict=True)]
            step_types = [losses_mod.packed_type(t) for t in y_types]
        train = build_train_graph(self, self.optimizer, step_losses, weight_list, step_metrics, step_types)
        evaluate = build_eval_graph(self, step_losses, weight_list, step_metrics, step_types)
        self._runner = StepRunner(train, evaluate, self.optimizer)
        self._runner_key = key
        self._weighted_engine = weighted
        self._metric_objs = [m for ms in metric_lists for m in ms]
        self.compiled_metrics_names = names
        return self._runner

    def _after_steps(self) -> None:
        self._runner.sync_to_model()
        self._compiled = None  # the inference compile caches the old weights

    # Logs --------------------------------------------------------------------------------------
    def _results(self, loss_total: float, loss_count: float, metric_acc: list[Metric]) -> dict[str, float]:
        logs = {"loss": loss_total / loss_count if loss_count else 0.0}
        for name, m in zip(self.compiled_metrics_names, metric_acc, strict=True):
            logs[name] = m.result()
        return logs

    def _fresh_metrics(self) -> list[Metric]:
        out = []
        for m in self._metric_objs:
            acc = Metric(m.name)
            out.append(acc)
        return out

    # fit -----------------------------------------------------------------------------------------
    def fit(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        epochs: int = 1,
        verbose: Any = "auto",
        callbacks: Sequence[Callback] | None = None,
        validation_split: float = 0.0,
        validation_data: Any = None,
        shuffle: bool = True,
        initial_epoch: int = 0,
        validation_batch_size: int | None = None,
        validation_freq: int = 1,
        seed: int | None = None,
        sample_weight: Any = None,
        class_weight: Any = None,
    ) -> History:
        self._check_compiled()
        xs, ys = self._as_inputs(x), self._as_targets(y)
        n = _num_samples(xs + ys)
        sws = self._sample_weights(sample_weight, class_weight, ys)
        if not 0.0 <= validation_split < 1.0:
            raise ModelError(f"validation_split must be in [0, 1), got {validation_split}")
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, list | tuple) or len(validation_data) not in (2, 3):
                raise ModelError("validation_data must be a tuple (x_val, y_val)")
            val_ys = self._as_targets(validation_data[1])
            val_sw = validation_data[2] if len(validation_data) == 3 else None
            val = (self._as_inputs(validation_data[0]), val_ys, self._sample_weights(val_sw, None, val_ys))
        elif validation_split:
            # As Keras: the last fraction of the samples, taken before any shuffling.
            split = int(np.floor(n * (1.0 - validation_split)))
            if split in (0, n):
                raise ModelError(f"validation_split={validation_split} leaves no data for training or validation")
            val = ([a[split:] for a in xs], [a[split:] for a in ys], None if sws is None else [w[split:] for w in sws])
            xs, ys = [a[:split] for a in xs], [a[:split] for a in ys]
            sws = None if sws is None else [w[:split] for w in sws]
            n = split
        batch_size = batch_size or 32
        if batch_size <= 0:
            raise ModelError(f"batch_size must be positive, got {batch_size}")
        # Weighted validation data makes the engine weighted from the start (one engine per fit).
        runner = self._engine(ys, weighted=sws is not None or (val is not None and val[2] is not None))
        ys = self._engine_targets(ys, sws)
        steps = -(-n // batch_size)
        verbose = 1 if verbose == "auto" else int(verbose)
        self.history = History()
        cbs: list[Callback] = list(callbacks or [])
        if verbose:
            cbs.append(ProgbarLogger(verbose))
        cbs.append(self.history)
        cb = CallbackList(cbs, self, {"epochs": epochs, "steps": steps, "verbose": verbose})
        rng = np.random.default_rng(seed if seed is not None else _draw_seed())
        self.stop_training = False
        logs: dict[str, float] = {}
        cb.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            cb.on_epoch_begin(epoch)
            runner.reload_changed_params()
            accs = self._fresh_metrics()
            loss_total = loss_count = 0.0
            order = rng.permutation(n) if shuffle else None
            for step in range(steps):
                cb.on_train_batch_begin(step)
                lo, hi = step * batch_size, min((step + 1) * batch_size, n)
                if order is None:
                    batch = [a[lo:hi] for a in xs + ys]
                else:
                    idx = order[lo:hi]
                    batch = [a[idx] for a in xs + ys]
                values = runner.train_step(batch)
                size = hi - lo
                loss_total += values[0] * size
                loss_count += size
                for j, m in enumerate(accs):
                    m.update(values[1 + 2 * j], values[2 + 2 * j])
                logs = self._results(loss_total, loss_count, accs)
                cb.on_train_batch_end(step, logs)
                if self.stop_training:
                    break
            self._after_steps()
            if val is not None and (epoch + 1 - initial_epoch) % validation_freq == 0:
                val_logs = self._evaluate_arrays(val[0], val[1], validation_batch_size or batch_size, val[2])
                logs.update({f"val_{k}": v for k, v in val_logs.items()})
            cb.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cb.on_train_end(logs)
        self._after_steps()
        return self.history

    # evaluate / batches ----------------------------------------------------------------------------
    def _evaluate_arrays(
        self, xs: list[np.ndarray], ys: list[np.ndarray], batch_size: int, sws: list[np.ndarray] | None = None
    ) -> dict[str, float]:
        runner = self._engine(ys, weighted=sws is not None)
        n = _num_samples(xs + ys)
        ys = self._engine_targets(ys, sws)
        accs = self._fresh_metrics()
        loss_total = loss_count = 0.0
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            values = runner.eval_step([a[lo:hi] for a in xs + ys])
            loss_total += values[0] * (hi - lo)
            loss_count += hi - lo
            for j, m in enumerate(accs):
                m.update(values[1 + 2 * j], values[2 + 2 * j])
        return self._results(loss_total, loss_count, accs)

    def evaluate(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        verbose: Any = "auto",
        return_dict: bool = False,
        sample_weight: Any = None,
    ) -> Any:
        self._check_compiled()
        ys = self._as_targets(y)
        sws = self._sample_weights(sample_weight, None, ys)
        logs = self._evaluate_arrays(self._as_inputs(x), ys, batch_size or 32, sws)
        if verbose not in (0, "auto", False):
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        return _returned(logs, return_dict)

    def train_on_batch(
        self, x: Any, y: Any = None, sample_weight: Any = None, class_weight: Any = None, return_dict: bool = False
    ) -> Any:
        self._check_compiled()
        xs, ys = self._as_inputs(x), self._as_targets(y)
        sws = self._sample_weights(sample_weight, class_weight, ys)
        runner = self._engine(ys, weighted=sws is not None)
        values = runner.train_step(xs + self._engine_targets(ys, sws))
        self._after_steps()
        accs = self._fresh_metrics()
        for j, m in enumerate(accs):
            m.update(values[1 + 2 * j], values[2 + 2 * j])
        return _returned(self._results(values[0], 1.0, accs), return_dict)

    def test_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None, return_dict: bool = False) -> Any:
        self._check_compiled()
        xs, ys = self._as_inputs(x), self._as_targets(y)
        sws = self._sample_weights(sample_weight, None, ys)
        return _returned(self._evaluate_arrays(xs, ys, max(_num_samples(xs + ys), 1), sws), return_dict)

    # Saving ----------------------------------------------------------------------------------------
    def export(self, filepath: str, opset: int | None = None) -> None:
        """Write the model for inference as ONNX (learning phase folded to 0, -O2), atomically."""
        from ..api import compile as compile_model

        if getattr(self, "_runner", None) is not None:
            self._after_steps()
        compile_model(self, learning_phase=0, opset=opset).save(filepath)

    def save_weights(self, filepath: str, overwrite: bool = True) -> None:
        """Weights (in `weights` order, by name) and, when compiled, the optimizer's iteration
        count, learning rate and slots, in one HDF5 file written atomically."""
        import io
        import json
        import os

        import h5py

        from ..fileio import write_atomic

        path = os.fspath(filepath)
        if not overwrite and os.path.exists(path):
            raise ModelError(f"{path} exists; pass overwrite=True to replace it")
        if getattr(self, "_runner", None) is not None:
            self._after_steps()
        buf = io.BytesIO()
        with h5py.File(buf, "w") as f:
            group = f.create_group("weights")
            for i, w in enumerate(self.weights):
                ds = group.create_dataset(str(i), data=w.data)
                ds.attrs["name"] = w.name
            opt = getattr(self, "optimizer", None)
            if opt is not None:
                og = f.create_group("optimizer")
                og.attrs["class_name"] = type(opt).__name__
                og.attrs["config"] = json.dumps(opt.get_config(), default=float)
                og.attrs["iterations"] = opt.iterations
                for name, slots in opt.variables.items():
                    for j, v in enumerate(slots):
                        og.create_dataset(f"{name}/{j}", data=v)
        write_atomic(path, buf.getvalue())

    def load_weights(self, filepath: str) -> None:
        import os

        import h5py

        path = os.fspath(filepath)
        if not os.path.exists(path):
            raise ModelError(f"no weights file {path}")
        with h5py.File(path, "r") as f:
            group = f["weights"]
            stored = [(group[str(i)].attrs["name"], np.asarray(group[str(i)])) for i in range(len(group))]
            # Weights match by position, as Keras' structural loading: a model built again gets
            # fresh automatic names (dense_2 for dense) but the same structure and shapes.
            weights = self.weights
            shapes = [tuple(w.data.shape) for w in weights]
            if [a.shape for _, a in stored] != shapes:
                raise ModelError(
                    f"{path} holds weights {[(n, a.shape) for n, a in stored]}, "
                    f"the model has {[(w.name, s) for w, s in zip(weights, shapes, strict=True)]}"
                )
            renamed = {str(n): w.name for (n, _), w in zip(stored, weights, strict=True)}
            self.set_weights([a for _, a in stored])  # type: ignore[attr-defined]
            opt = getattr(self, "optimizer", None)
            if opt is not None and "optimizer" in f:
                og = f["optimizer"]
                opt.iterations = int(og.attrs["iterations"])
                variables: dict[str, list[np.ndarray]] = {}

                def visit(name: str, obj: Any) -> None:
                    if isinstance(obj, h5py.Dataset):
                        weight, j = name.rsplit("/", 1)
                        variables.setdefault(weight, []).append((int(j), np.asarray(obj)))  # type: ignore[arg-type]

                og.visititems(visit)
                opt.variables = {renamed.get(k, k): [a for _, a in sorted(v)] for k, v in variables.items()}  # type: ignore[misc]
                if getattr(self, "_runner", None) is not None:
                    self._runner.load_slots()

    @property
    def metrics_names(self) -> list[str]:
        return ["loss", *getattr(self, "compiled_metrics_names", [])]


def _refuse_recurrent_dropout(layers: Any) -> None:
    """Keras drops recurrent inputs/states in training; the recurrent ops here have no dropout,
    so training such a layer would silently differ from Keras."""
    for layer in layers:
        inner = [getattr(layer, "layer", None), *getattr(layer, "layers", [])]
        _refuse_recurrent_dropout([i for i in inner if i is not None and i is not layer])
        rates = {k: getattr(layer, k, 0.0) for k in ("dropout", "recurrent_dropout")}
        if hasattr(layer, "recurrent_dropout") and any(rates.values()):
            detail = ", ".join(f"{k}={v}" for k, v in rates.items() if v)
            raise ModelError(
                f"cannot train {type(layer).__name__} '{layer.name}' with {detail}: recurrent dropout is not "
                "implemented for training; set dropout=0 and recurrent_dropout=0 (or add a Dropout layer)"
            )


class _Unpacked(Metric):
    """A metric of a weighted engine: reads the target out of the packed target input, unweighted."""

    def __init__(self, metric: Metric, target: Any) -> None:
        super().__init__(metric.name)
        self.metric, self.target = metric, target

    def batch_values(self, b: Any, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        target, _ = losses_mod.unpack_weighted_target(b, y_true, self.target)
        return self.metric.batch_values(b, target, y_pred)


def _returned(logs: dict[str, float], return_dict: bool) -> Any:
    if return_dict:
        return logs
    values = list(logs.values())
    return values[0] if len(values) == 1 else values


def _num_samples(arrays: list[np.ndarray]) -> int:
    sizes = {a.shape[0] for a in arrays}
    if len(sizes) != 1:
        raise ModelError(f"all inputs and targets must have the same number of samples, got {sorted(sizes)}")
    n = sizes.pop()
    if n == 0:
        raise ModelError("there are no samples to train on")
    return int(n)


def _draw_seed() -> int:
    from ..initializers import rng

    return int(rng().integers(0, 2**31 - 1))
