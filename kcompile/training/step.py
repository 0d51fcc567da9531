"""The compiled training step: forward + loss + backward + optimizer update as ONE graph, run by
onnxruntime with the weights and optimizer state kept in onnxruntime values between steps.

Graph (built by `build_train_graph`):
    inputs : model inputs, targets (`<output>_true`), `lr`, `t` (= iterations + 1, float32),
             then one input per state tensor: every model weight, every optimizer slot
    outputs: `loss` (the total: weighted losses + activity and weight penalties), per metric (total, count),
             then the new value of every state tensor that the step changes (trainable weights,
             slots, BatchNormalization moving statistics), in `plan.updated` order.

The model's graph is traced with `tracing_activity`, so the layers with an `activity_regularizer`
hand over their output values; their penalties (`regularizers.activity_penalties`) are built on
the forward graph at once and kept as extra outputs through the forward passes, then added to the
loss. The inference graph (`model.to_graph()` outside a step) never holds them.

Before differentiation the forward graph is optimized with the weights kept as values
(`optimize_forward`): transposes cancelled, so a conv net runs channels-first from its input to
its Flatten, forward and (by autodiff) backward; biases ride in the Conv; ReLU runs after max
pooling. After the update is appended, chains are simplified and duplicates merged
(`optimize_step`). The evaluation graph gets `optimize_forward` too; `optimize=False` builds
either plain.

The weights are graph inputs, not initializers, so no step re-serialises anything. `StepRunner`
keeps two onnxruntime buffers per updated state and two IO bindings that read one set and write
the other; each step flips the binding, so the outputs of step k are the inputs of step k+1
without a copy. Python binds the batch, the learning rate and t, runs, and reads the loss.
The sessions use `threads` intra-op threads: by default OMP_NUM_THREADS when it is set (as torch
does), else onnxruntime's one per physical core.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelError, RuntimeFailure
from ..ir.builder import Builder
from ..ir.graph import Graph, Param, Value
from ..ir.types import TensorType
from .losses import Loss
from .metrics import Metric
from .optimizers import Optimizer
from .regularizers import activity_penalties, check_activity_regularizers, penalties

if TYPE_CHECKING:
    import onnx


@dataclass
class StepPlan:
    """What a compiled step graph reads and writes, by name."""

    graph: Graph
    data_inputs: list[str]  # model inputs then targets
    states: list[str]  # every state input
    updated: list[str]  # the states the step writes, in output order (outputs after the scalars)
    scalars: list[str]  # loss, then metric totals and counts
    params: dict[str, Param] = field(default_factory=dict)  # state name -> model weight
    slots: dict[str, tuple[str, int]] = field(default_factory=dict)  # state name -> (weight name, slot index)


def _rename(graph: Graph, v: Value, name: str) -> None:
    graph._names.discard(v.name)
    v.name = graph.fresh_name(name)


def params_to_inputs(graph: Graph) -> dict[str, Param]:
    """Every Param becomes a graph input of the same name (its value is state fed per run)."""
    out: dict[str, Param] = {}
    for p in list(graph.params):
        graph._names.discard(p.name)
        v = graph.add_input(p.name, p.type)
        graph.replace_uses(p, v)
        out[v.name] = p
    graph.params = []
    return out


def target_types(y: Sequence[np.ndarray]) -> list[TensorType]:
    types = []
    for arr in y:
        dtype = "int64" if arr.dtype.kind in "iu" else "float32"
        types.append(TensorType(dtype, ("batch", *(int(d) for d in arr.shape[1:]))))
    return types


def add_loss_and_metrics(
    b: Builder,
    preds: list[Value],
    out_names: list[str],
    y_types: list[TensorType],
    losses: list[Loss | None],
    loss_weights: list[float],
    metrics: list[list[Metric]],
    regularized: Sequence[tuple[Value, Any]],
    activity: Sequence[Value] = (),
) -> tuple[list[str], Value, list[Value]]:
    """Target inputs, the total loss, and (total, count) per metric, emitted into b's graph. The
    total is Keras' `compute_loss`: the weighted losses, then the activity penalties (scalars
    already in the graph), then the weight penalties."""
    targets = [b.input(f"{name}_true", t) for name, t in zip(out_names, y_types, strict=True)]
    terms: list[Value] = []
    for loss, weight, y, p in zip(losses, loss_weights, targets, preds, strict=True):
        if loss is None:
            continue
        value = loss(b, y, p)
        if weight != 1.0:
            value = b.op("mul", [value, b.constant(np.array(weight, np.float32), "float32")])
        terms.append(value)
    terms.extend(activity)
    for w, reg in regularized:
        terms.append(reg(b, w))
    if not terms:
        raise ModelError("no loss to compute: give compile() a loss")
    total = terms[0]
    for t in terms[1:]:
        total = b.op("add", [total, t])
    scalars: list[Value] = []
    for ms, y, p in zip(metrics, targets, preds, strict=True):
        for m in ms:
            scalars.extend(m.batch_values(b, y, p))
    return [t.name for t in targets], total, scalars


def traced_forward(model: Any) -> tuple[Graph, int]:
    """The model's graph with its activity penalties appended to the outputs (after the
    predictions), and the number of predictions."""
    from kcompile.layers.base import tracing_activity

    check_activity_regularizers([model, *model.layers])
    with tracing_activity() as traced:
        graph = model.to_graph()
    n_out = len(graph.outputs)
    activity = activity_penalties(Builder(graph), traced)
    if activity:
        graph.outputs = [*graph.outputs, *activity]
        graph.verify()
    return graph, n_out


def optimize_forward(graph: Graph) -> Graph:
    """The forward graph, before differentiation: transposes cancelled (so the forward and, by
    autodiff, the backward run channels-first between the input and the flatten), biases in the
    Conv, ReLU after max pooling. Weights stay values (they change every step)."""
    from kcompile.passes import PassManager, SimplifyPass
    from kcompile.passes.fusion import TrainingFusionPass
    from kcompile.passes.layout import TrainingLayoutPass

    passes = [SimplifyPass(constant_params=False), TrainingLayoutPass(), TrainingFusionPass()]
    return PassManager(passes).run(graph)


def optimize_step(graph: Graph) -> Graph:
    """The whole step graph: chains (transposes of transposes) simplified, gradient identities
    used (`SimplifyGradientsPass`), duplicates merged."""
    from kcompile.passes import CSEPass, PassManager, SimplifyPass
    from kcompile.passes.autodiff import SimplifyGradientsPass

    return PassManager([SimplifyPass(constant_params=False), SimplifyGradientsPass(), CSEPass()]).run(graph)


def build_train_graph(
    model: Any,
    optimizer: Optimizer,
    losses: list[Loss | None],
    loss_weights: list[float],
    metrics: list[list[Metric]],
    y_types: list[TensorType],
    optimize: bool = True,
) -> StepPlan:
    from kcompile.passes import FoldLearningPhasePass
    from kcompile.passes.autodiff import DecomposeForTrainingPass, gradients

    graph, n_out = traced_forward(model)
    out_names = [v.name for v in graph.outputs[:n_out]]
    n_forward = len(graph.outputs)
    graph = FoldLearningPhasePass(training=True).run(graph).graph
    decompose = DecomposeForTrainingPass()
    graph = decompose.run(graph).graph
    if optimize:
        graph = optimize_forward(graph)
        # The passes replace output values in graph.outputs:
        # [*predictions, *activity penalties, *moving-statistic updates].
        decompose.updates = [(p, v) for (p, _), v in zip(decompose.updates, graph.outputs[n_forward:], strict=True)]
    preds = graph.outputs[:n_out]
    activity = graph.outputs[n_out:n_forward]
    b = Builder(graph)
    present = {id(p) for p in graph.params}
    regs = [(w, r) for w, r in penalties(model.layers) if id(w) in present and w.trainable]
    targets, loss, metric_values = add_loss_and_metrics(
        b, preds, out_names, y_types, losses, loss_weights, metrics, regs, activity
    )
    trainable = [p for p in graph.params if p.trainable]
    grads = gradients(graph, loss, trainable)
    pairs = [(p, g) for p, g in zip(trainable, grads, strict=True) if g is not None]
    lr = b.input("lr", TensorType("float32", ()))
    t = b.input("t", TensorType("float32", ()))
    slot_inputs: list[list[Value]] = []
    slot_names: dict[str, tuple[str, int]] = {}
    for p, _ in pairs:
        row = []
        for j, (suffix, _init) in enumerate(optimizer.slots()):
            v = b.input(f"{optimizer.name}/{p.name}/{suffix}", p.type)
            slot_names[v.name] = (p.name, j)
            row.append(v)
        slot_inputs.append(row)
    new_w, new_s = optimizer.apply(b, [p for p, _ in pairs], [g for _, g in pairs], slot_inputs, lr, t)
    updates: list[tuple[Value, Value]] = [(p, w) for (p, _), w in zip(pairs, new_w, strict=True)]
    for row_in, row_out in zip(slot_inputs, new_s, strict=True):
        updates.extend(zip(row_in, row_out, strict=True))
    updates.extend(decompose.updates)
    scalars = [loss, *metric_values]
    if optimize:
        graph.outputs = [*scalars, *(new for _, new in updates)]
        graph = optimize_step(graph)
        scalars = graph.outputs[: len(scalars)]
        updates = [(state, new) for (state, _), new in zip(updates, graph.outputs[len(scalars) :], strict=True)]
    names = ["loss"] + [f"metric{i // 2}_{'total' if i % 2 == 0 else 'count'}" for i in range(len(scalars) - 1)]
    names += [f"{state.name}:new" for state, _ in updates]
    outputs: list[Value] = []
    seen: set[int] = set()
    for name, value in zip(names, [*scalars, *(new for _, new in updates)], strict=True):
        if id(value) in seen or value.producer is None:  # an output must be a fresh node value
            value = b.op("identity", [value])
        seen.add(id(value))
        _rename(graph, value, name)
        outputs.append(value)
    graph.outputs = outputs
    graph.remove_dead()
    params = params_to_inputs(graph)
    state_names = [*params, *slot_names]
    updated = [s.name for s, _ in updates]
    data = [v.name for v in graph.inputs[: len(model.inputs)]] + targets
    graph.inputs = (
        [v for v in graph.inputs if v.name in data] + [lr, t] + [v for v in graph.inputs if v.name in set(state_names)]
    )
    graph.verify()
    return StepPlan(graph, data, state_names, updated, names[: len(scalars)], params, slot_names)


def build_eval_graph(
    model: Any,
    losses: list[Loss | None],
    loss_weights: list[float],
    metrics: list[list[Metric]],
    y_types: list[TensorType],
    optimize: bool = True,
) -> StepPlan:
    from kcompile.passes import DeadCodeEliminationPass, FoldLearningPhasePass, PassManager

    traced, n_out = traced_forward(model)
    graph = PassManager([FoldLearningPhasePass(training=False), DeadCodeEliminationPass()]).run(traced)
    out_names = [v.name for v in graph.outputs[:n_out]]
    if optimize:
        graph = optimize_forward(graph)
    b = Builder(graph)
    present = {id(p) for p in graph.params}
    regs = [(w, r) for w, r in penalties(model.layers) if id(w) in present and w.trainable]
    targets, loss, metric_values = add_loss_and_metrics(
        b, graph.outputs[:n_out], out_names, y_types, losses, loss_weights, metrics, regs, graph.outputs[n_out:]
    )
    _rename(graph, loss, "loss")
    for i, v in enumerate(metric_values):
        _rename(graph, v, f"metric{i // 2}_{'total' if i % 2 == 0 else 'count'}")
    graph.outputs = [loss, *metric_values]
    graph.remove_dead()
    params = params_to_inputs(graph)
    data = [v.name for v in graph.inputs[: len(model.inputs)]] + targets
    graph.verify()
    return StepPlan(graph, data, list(params), [], [v.name for v in graph.outputs], params, {})


def _env_threads() -> int:
    """OMP_NUM_THREADS when it is set to a number (the knob torch and NumPy's BLAS read), else 0:
    onnxruntime's default (one thread per physical core)."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() else 0


def step_onnx(graph: Graph, blocked: bool = True) -> onnx.ModelProto:
    """The step graph as onnxruntime runs it: the weights are state fed every step, so its Convs
    go to the blocked kernels by `block_runtime_convs` (onnxruntime's own transformer takes only
    constant filters) where this machine has them and `blocked` is set."""
    from kcompile.runtime import lower_to_onnx
    from kcompile.runtime.nchwc import block_runtime_convs, nchwc_block

    block = nchwc_block() if blocked else None
    model = lower_to_onnx(graph, conv_block=block)
    if block is not None:
        block_runtime_convs(model, block)
    return model


class StepRunner:
    """Runs a train step graph (and its eval graph) with the state resident in onnxruntime."""

    def __init__(
        self, train: StepPlan, evaluate: StepPlan | None, optimizer: Optimizer, threads: int | None = None
    ) -> None:
        import onnxruntime as ort

        self.plan, self.eval_plan, self.optimizer = train, evaluate, optimizer
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads is None:
            threads = _env_threads()
        if threads:
            opts.intra_op_num_threads = threads
        self.ort = ort
        self.session = self._load(train.graph, opts)
        self.eval_session = self._load(evaluate.graph, opts) if evaluate is not None else None
        # Two buffers per updated state (ping-pong), one per state the step only reads.
        updated = set(train.updated)
        self.buffers: dict[str, list[Any]] = {}
        for name in train.states:
            value = self._initial(name)
            self.buffers[name] = [ort.OrtValue.ortvalue_from_numpy(value)]
            if name in updated:
                self.buffers[name].append(ort.OrtValue.ortvalue_from_numpy(value.copy()))
        self.scalar_out = {n: ort.OrtValue.ortvalue_from_numpy(np.zeros((), np.float32)) for n in train.scalars}
        self.parity = 0
        self.bindings = [self._bind(p) for p in (0, 1)]
        self.eval_scalar_out = {
            n: ort.OrtValue.ortvalue_from_numpy(np.zeros((), np.float32))
            for n in (evaluate.scalars if evaluate else [])
        }
        self.eval_bindings = [self._bind_eval(p) for p in (0, 1)] if evaluate is not None else []
        self._seen: dict[str, np.ndarray] = {}
        self._remember_params()

    def _load(self, graph: Graph, opts: Any) -> Any:
        providers = ["CPUExecutionProvider"]
        try:
            return self.ort.InferenceSession(step_onnx(graph).SerializeToString(), opts, providers=providers)
        except Exception:  # an onnxruntime build whose blocked ops differ: the plain lowering
            pass
        try:
            return self.ort.InferenceSession(
                step_onnx(graph, blocked=False).SerializeToString(), opts, providers=providers
            )
        except Exception as err:
            raise RuntimeFailure(f"onnxruntime could not load the training step: {err}") from None

    def _initial(self, name: str) -> np.ndarray:
        if name in self.plan.params:
            return np.ascontiguousarray(self.plan.params[name].data)
        weight, j = self.plan.slots[name]
        p = next(q for q in self.plan.params.values() if q.name == weight)
        return np.ascontiguousarray(self.optimizer.init_slots(weight, p.data.shape)[j])

    def _current(self, name: str, parity: int) -> Any:
        bufs = self.buffers[name]
        return bufs[parity] if len(bufs) == 2 else bufs[0]

    def _bind(self, parity: int) -> Any:
        io = self.session.io_binding()
        for name in self.plan.states:
            io.bind_ortvalue_input(name, self._current(name, parity))
        for name in self.plan.scalars:
            io.bind_ortvalue_output(name, self.scalar_out[name])
        for name in self.plan.updated:
            io.bind_ortvalue_output(f"{name}:new", self.buffers[name][1 - parity])
        return io

    def _bind_eval(self, parity: int) -> Any:
        assert self.eval_plan is not None and self.eval_session is not None
        io = self.eval_session.io_binding()
        for name in self.eval_plan.states:
            io.bind_ortvalue_input(name, self._current(name, parity))
        for name in self.eval_plan.scalars:
            io.bind_ortvalue_output(name, self.eval_scalar_out[name])
        return io

    # Steps ---------------------------------------------------------------------------------
    def train_step(self, data: Sequence[np.ndarray]) -> list[float]:
        io = self.bindings[self.parity]
        for name, arr in zip(self.plan.data_inputs, data, strict=True):
            io.bind_cpu_input(name, arr)
        opt = self.optimizer
        io.bind_cpu_input("lr", np.array(opt.current_learning_rate(), np.float32))
        io.bind_cpu_input("t", np.array(opt.iterations + 1, np.float32))
        try:
            self.session.run_with_iobinding(io)
        except Exception as err:
            raise RuntimeFailure(f"onnxruntime failed to run the training step: {err}") from None
        self.parity ^= 1
        opt.iterations += 1
        return [float(self.scalar_out[n].numpy()) for n in self.plan.scalars]

    def eval_step(self, data: Sequence[np.ndarray]) -> list[float]:
        assert self.eval_plan is not None and self.eval_session is not None
        io = self.eval_bindings[self.parity]
        for name, arr in zip(self.eval_plan.data_inputs, data, strict=True):
            io.bind_cpu_input(name, arr)
        try:
            self.eval_session.run_with_iobinding(io)
        except Exception as err:
            raise RuntimeFailure(f"onnxruntime failed to run the evaluation step: {err}") from None
        return [float(self.eval_scalar_out[n].numpy()) for n in self.eval_plan.scalars]

    # State -----------------------------------------------------------------------------------
    def state(self, name: str) -> np.ndarray:
        return self._current(name, self.parity).numpy()

    def sync_to_model(self) -> None:
        """Copy the engine's weights and slots back to the Params and the optimizer."""
        for name, p in self.plan.params.items():
            if name in self.plan.updated:
                p.assign(self.state(name))
        for name, (weight, j) in self.plan.slots.items():
            self.optimizer.variables[weight][j] = self.state(name)
        self._remember_params()

    def _remember_params(self) -> None:
        # The arrays themselves (not ids): `set_weights` replaces them, and holding them keeps
        # a replaced array's id from being reused.
        self._seen = {name: p.data for name, p in self.plan.params.items()}

    def reload_changed_params(self) -> None:
        """Weights the user assigned since the last sync (set_weights) go into the engine."""
        for name, p in self.plan.params.items():
            if self._seen.get(name) is not p.data:
                for buf in self.buffers[name]:
                    buf.update_inplace(np.ascontiguousarray(p.data))
        self._remember_params()

    def load_slots(self) -> None:
        for name, (weight, j) in self.plan.slots.items():
            for buf in self.buffers[name]:
                buf.update_inplace(np.ascontiguousarray(self.optimizer.variables[weight][j]))
