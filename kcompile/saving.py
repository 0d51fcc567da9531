"""`model.save("m.keras")`: a kcompile model as a Keras 3 archive, read back by `kc.load`.

The archive has Keras' three members, laid out as Keras writes them (see `keras_import`):
- `config.json`: the model's class (Functional or Sequential) and every layer's config (its
  constructor arguments by Keras name, from `Layer.get_config()`), and for a functional model each
  layer call as an inbound node whose tensors name `[layer, node index, tensor index]`; elementwise
  arithmetic on tensors (`0.5 * (a + b)`) is saved as Keras operation nodes. When the model is
  compiled, `compile_config` holds the optimizer, loss, loss weights and metrics.
- `model.weights.h5`: `layers/<snake_case class name, made unique>/vars/<i>` in `model.layers`
  order, each `vars` group named after its object; a layer's sub-objects (an RNN's cell, the two
  directions of a Bidirectional, the layer or model a TimeDistributed wraps) are child groups
  named as Keras' attributes. When the model has been compiled, `optimizer/vars` holds the
  iteration count, the learning rate and every slot in the order Keras' optimizer creates its
  variables, so that both Keras and `kc.load` resume training exactly where it stopped.
- `metadata.json`: the format version and the writer.
The file is written atomically: an interrupted save leaves the previous file intact.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ModelError
from .fileio import write_atomic
from .keras_import import KerasOp
from .layers.base import InputLayer, KTensor, Layer, LayerCall, snake_case
from .layers.merging import Elementwise

if TYPE_CHECKING:
    from .model import Model

FORMAT_VERSION = "3.15.1"  # the Keras archive version these files follow
_OPS = {
    "add": "Add",
    "sub": "Subtract",
    "mul": "Multiply",
    "div": "Divide",
    "pow": "Power",
    "neg": "Negative",
    "matmul": "Matmul",
}
# Keras' attribute names for the sub-objects whose variables a layer saves in child groups.
_CHILD_ATTR = {
    "lstm_cell": "cell",
    "gru_cell": "cell",
    "simple_rnn_cell": "cell",
    "query": "query_dense",
    "key": "key_dense",
    "value": "value_dense",
    "attention_output": "output_dense",
    "gate": "_gate_dense",  # a private attribute: Keras walks it after the public ones
}
# Optimizers whose Keras `build` creates their first slot kinds in one `add_optimizer_variables`
# call, which interleaves them per weight; any other kind is a block of its own.
_INTERLEAVED = {"Adam": 2, "AdamW": 2}
# Arguments Keras' `from_config` reads although they have defaults (kcompile's configs hold only
# the arguments given), with those defaults.
_KERAS_NEEDS: dict[str, dict[str, Any]] = {"Rescaling": {"offset": 0.0}}
# Layers whose Keras constructor takes no `trainable` (their get_config leaves it out).
_NO_TRAINABLE = {"SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D"}


def save_model(model: Model, path: str | os.PathLike[str], overwrite: bool = True) -> None:
    """Write `model` (structure, weights, and optimizer state when compiled) to a `.keras` file."""
    import h5py

    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ModelError(f"model.save writes a Keras 3 archive: give a path ending in .keras, got {path!r}")
    if not overwrite and os.path.exists(path):
        raise ModelError(f"{path} exists; pass overwrite=True to replace it")
    config = {
        "module": _model_module(model),
        "class_name": _model_class(model),
        "config": model_config(model),
        "registered_name": None,
        "build_config": {"input_shape": None},
        "compile_config": compile_config(model),
    }
    weights = io.BytesIO()
    with h5py.File(weights, "w") as f:
        write_weights(model, f)
        write_optimizer(model, f)
    metadata = {
        "keras_version": FORMAT_VERSION,
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        "writer": "kcompile",
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", json.dumps(metadata))
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("model.weights.h5", weights.getvalue())
    write_atomic(path, buf.getvalue())


def _model_module(model: Model) -> str:
    return "keras" if _model_class(model) == "Sequential" else "keras.src.models.functional"


def _model_class(model: Model) -> str:
    from .model import Sequential

    return "Sequential" if isinstance(model, Sequential) else "Functional"


# Config -----------------------------------------------------------------------------------------
def _json_value(value: Any, where: str) -> Any:
    if isinstance(value, Layer):
        return layer_entry(value)
    if isinstance(value, dict):
        return {str(k): _json_value(v, where) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v, where) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is Ellipsis:
        return {"class_name": "__ellipsis__", "config": {}}
    if isinstance(value, slice):
        return {"class_name": "__slice__", "config": {"start": value.start, "stop": value.stop, "step": value.step}}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    get_config = getattr(value, "get_config", None)
    if callable(get_config):  # regularizers, schedules
        return {"module": "keras", "class_name": type(value).__name__, "config": get_config(), "registered_name": None}
    raise ModelError(f"{where}: cannot save the argument value {value!r} ({type(value).__name__})")


def layer_config(layer: Layer) -> dict[str, Any]:
    cls = type(layer).__name__
    config = {
        **_KERAS_NEEDS.get(cls, {}),
        **layer.get_config(),
        "name": layer.name,
        "trainable": layer.trainable,
        "dtype": layer.dtype,
    }
    if cls in _NO_TRAINABLE:
        del config["trainable"]
    return {k: _json_value(v, f"layer '{layer.name}'") for k, v in config.items()}


def layer_entry(layer: Layer) -> dict[str, Any]:
    """A layer as Keras serializes it: {module, class_name, config, registered_name}."""
    from .model import Model

    if isinstance(layer, Model):
        return {
            "module": _model_module(layer),
            "class_name": _model_class(layer),
            "config": model_config(layer),
            "registered_name": None,
        }
    return {
        "module": "keras.layers",
        "class_name": type(layer).__name__,
        "config": layer_config(layer),
        "registered_name": None,
    }


def _input_entry(layer: InputLayer) -> dict[str, Any]:
    shape = [d if isinstance(d, int) else None for d in layer.type.shape]
    if layer.type.shape and not isinstance(layer.type.shape[0], int):
        shape[0] = None
    return {
        "module": "keras.layers",
        "class_name": "InputLayer",
        "config": {"batch_shape": shape, "dtype": layer.dtype, "sparse": False, "name": layer.name},
        "registered_name": None,
        "name": layer.name,
        "inbound_nodes": [],
    }


def model_config(model: Model) -> dict[str, Any]:
    from .model import Sequential

    if isinstance(model, Sequential):
        (t,) = model.inputs
        stack = [_input_entry(t._call.layer)]  # type: ignore[arg-type]
        stack += [layer_entry(layer) for layer in model.layers]
        return {"name": model.name, "trainable": model.trainable, "layers": stack}
    node_index: dict[int, int] = {}  # LayerCall -> its index among its layer's calls in this model
    counts: dict[int, int] = {}
    for call in model._order:
        node_index[id(call)] = counts.get(id(call.layer), 0)
        counts[id(call.layer)] = node_index[id(call)] + 1

    def ref(t: KTensor) -> dict[str, Any]:
        shape = [d if isinstance(d, int) else None for d in t.type.shape]
        shape[0] = None
        history = [t._call.layer.name, node_index.get(id(t._call), 0), t._index]
        return {
            "class_name": "__keras_tensor__",
            "config": {"shape": shape, "dtype": t.dtype, "keras_history": history},
        }

    entries: list[dict[str, Any]] = []
    for layer in model.layers:
        if isinstance(layer, InputLayer):
            entries.append(_input_entry(layer))
            continue
        calls = [c for c in model._order if c.layer is layer]
        if isinstance(layer, Elementwise):
            entry = _op_entry(layer)
        elif isinstance(layer, KerasOp):  # an operation node read from a Keras archive, written back as one
            entry = {"module": "keras.src.ops.numpy", "class_name": layer.op, "config": dict(layer.config),
                     "registered_name": layer.op}  # fmt: skip
        else:
            entry = layer_entry(layer)
        entry["name"] = layer.name
        entry["inbound_nodes"] = [_node(layer, call, ref) for call in calls]
        entries.append(entry)

    def ends(ts: list[KTensor]) -> list[list[Any]]:
        return [ref(t)["config"]["keras_history"] for t in ts]

    return {
        "name": model.name,
        "trainable": model.trainable,
        "layers": entries,
        # One input is written bare, as Keras does for `Model(x, y)`: a list makes Keras expect a
        # list of arrays and warn when given one array.
        "input_layers": ends(model.inputs) if len(model.inputs) != 1 else ends(model.inputs)[0],
        "output_layers": ends(model.outputs) if not model._single_output else ends(model.outputs)[0],
    }


def _op_entry(layer: Elementwise) -> dict[str, Any]:
    if layer.op not in _OPS:
        raise ModelError(f"layer '{layer.name}': the operation {layer.op!r} cannot be saved as a Keras operation")
    op = _OPS[layer.op]
    return {"module": "keras.src.ops.numpy", "class_name": op, "config": {"name": layer.name}, "registered_name": op}


def _node(layer: Layer, call: LayerCall, ref: Any) -> dict[str, Any]:
    """One call as Keras records it: positional args and keyword args, tensors by reference."""
    keras_args = getattr(layer, "keras_call_args", None)
    if keras_args is not None:
        args, kwargs = keras_args(call)
    elif isinstance(layer, KerasOp):
        operands = iter(call.inputs)
        args = [next(operands) if c is None else c for c in layer._template]
        kwargs = dict(layer._kw)
    elif isinstance(layer, Elementwise):
        operands = iter(call.inputs)
        args = [next(operands) if c is None else np.asarray(c).tolist() for c in layer._operands]
        kwargs = {}
    elif layer.takes_list and not isinstance(layer, _model_type()):
        args, kwargs = [list(call.inputs)], {}
    else:
        args, kwargs = [call.inputs[0] if len(call.inputs) == 1 else list(call.inputs)], {}

    def encode(v: Any) -> Any:
        if isinstance(v, KTensor):
            return ref(v)
        if isinstance(v, list | tuple):
            return [encode(x) for x in v]
        if isinstance(v, dict):
            return {k: encode(x) for k, x in v.items()}
        return _json_value(v, f"layer '{layer.name}'")

    return {"args": encode(args), "kwargs": encode(kwargs)}


def _model_type() -> type:
    from .model import Model

    return Model


def compile_config(model: Model) -> dict[str, Any] | None:
    spec = getattr(model, "_train_spec", None)
    opt = getattr(model, "optimizer", None)
    if spec is None or opt is None:
        return None

    def plain(v: Any) -> Any:
        if v is None or isinstance(v, str | int | float | bool):
            return v
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        get_config = getattr(v, "get_config", None)
        if callable(get_config):
            return {"module": "keras", "class_name": type(v).__name__, "config": get_config(), "registered_name": None}
        raise ModelError(f"cannot save the compile() argument {v!r}: give losses and metrics by name")

    opt_config = opt.get_config()
    lr = opt_config.get("learning_rate")
    if isinstance(lr, dict):  # a schedule: Keras finds its class only with the module named
        opt_config["learning_rate"] = {"module": "keras.optimizers.schedules", **lr, "registered_name": None}
    return {
        "optimizer": {
            "module": "keras.optimizers",
            "class_name": type(opt).__name__,
            "config": opt_config,
            "registered_name": None,
        },
        "loss": plain(spec["loss"]),
        "loss_weights": plain(spec["loss_weights"]),
        "metrics": plain(spec["metrics"]),
    }


# Weights ----------------------------------------------------------------------------------------
def _unique(base: str, used: dict[str, int]) -> str:
    n = used.get(base, 0)
    used[base] = n + 1
    return base if n == 0 else f"{base}_{n}"


def write_weights(model: Model, f: Any) -> None:
    f.create_group("vars").attrs["name"] = model.name
    _write_container(model, f.create_group("layers"), set())


def _write_container(model: Model, group: Any, visited: set[int]) -> None:
    used: dict[str, int] = {}
    for layer in model.layers:
        name = _unique(snake_case(type(layer).__name__), used)
        if id(layer) in visited:  # a layer shared with an enclosing model: saved once, where first met
            continue
        visited.add(id(layer))
        _write_object(layer, group.create_group(name), visited)


def _write_object(layer: Layer, group: Any, visited: set[int]) -> None:
    """A layer's `vars` group and its children, where Keras' attribute walk puts them: a model's
    layers under `layers/`, the layer a TimeDistributed wraps under `layer/` (a model there keeps
    its own `layers/`), anything else by the owner path of its Params."""
    from .layers.wrappers import TimeDistributed
    from .model import Model as ModelType

    group.create_group("vars").attrs["name"] = layer.name
    if isinstance(layer, ModelType):
        _write_container(layer, group.create_group("layers"), visited)
    elif isinstance(layer, TimeDistributed):
        if id(layer.layer) not in visited:  # a wrapped layer also used elsewhere is saved once, as Keras does
            visited.add(id(layer.layer))
            _write_object(layer.layer, group.create_group("layer"), visited)
    else:
        _write_params(layer, group)


def _write_params(layer: Layer, group: Any) -> None:
    """A layer's Params into `vars` groups by owner path (`bidirectional/forward_gru/gru_cell`)."""
    children: dict[tuple[str, ...], Any] = {(): group}
    counts: dict[tuple[str, ...], int] = {}
    for p in layer.weights:
        parts = p.name.split("/")[:-1]
        owner = tuple(parts[parts.index(layer.name) + 1 :]) if layer.name in parts else ()
        for depth in range(1, len(owner) + 1):
            key = owner[:depth]
            if key not in children:
                parent = children[key[:-1]]
                attr = _CHILD_ATTR.get(key[-1], _direction(key[-1]))
                child = parent.create_group(attr)
                child.create_group("vars").attrs["name"] = key[-1]
                children[key] = child
        i = counts.get(owner, 0)
        counts[owner] = i + 1
        children[owner]["vars"].create_dataset(str(i), data=p.data)


def _direction(name: str) -> str:
    if name.startswith("forward_"):
        return "forward_layer"
    if name.startswith("backward_"):
        return "backward_layer"
    return name


def write_optimizer(model: Model, f: Any) -> None:
    """`optimizer/vars` in Keras' order: iterations, the learning rate (absent with a schedule, as
    Keras has no variable for it then), then the slots of the trainable weights as Keras' `build`
    creates them: the first `_INTERLEAVED` slot kinds per weight in turn (Adam's m and v), each
    further kind as one block over the weights (Adam's vhat; RMSprop's velocity, momentum and
    average gradient). A weight without slots yet (compiled, never trained) gets fresh ones, so
    Keras finds as many variables as it built. `kcompile_slots` names each slot for `kc.load`."""
    from .training.optimizers import LearningRateSchedule

    opt = getattr(model, "optimizer", None)
    if opt is None:
        return
    if getattr(model, "_runner", None) is not None:
        model._after_steps()  # type: ignore[attr-defined]
    group = f.create_group("optimizer")
    vars_group = group.create_group("vars")
    vars_group.attrs["name"] = type(opt).__name__.lower()
    arrays = [np.asarray(opt.iterations, np.int64)]
    if not isinstance(opt.learning_rate, LearningRateSchedule):
        arrays.append(np.asarray(opt.current_learning_rate(), np.float32))
    kinds = opt.slots()
    trainable = [w for w in model.weights if w.trainable]
    values = {w.name: opt.variables.get(w.name) or [init(tuple(w.data.shape)) for _, init in kinds] for w in trainable}
    first_slot, order = keras_slot_order(model)
    arrays += [values[name][k] for name, k in order]
    for i, value in enumerate(arrays):
        vars_group.create_dataset(str(i), data=value)
    vars_group.attrs["kcompile_slots"] = json.dumps({"first": first_slot, "slots": [list(o) for o in order]})


def keras_slot_order(model: Model) -> tuple[int, list[tuple[str, int]]]:
    """Where Keras' `optimizer/vars` of `model.optimizer` start their slots (after iterations and
    the learning rate, which a schedule has not), and which (weight name, slot kind) each holds."""
    from .training.optimizers import LearningRateSchedule

    opt = model.optimizer  # type: ignore[attr-defined]
    first = 1 if isinstance(opt.learning_rate, LearningRateSchedule) else 2
    kinds = len(opt.slots())
    trainable = [w.name for w in model.weights if w.trainable]
    together = min(_INTERLEAVED.get(type(opt).__name__, 1), kinds)
    order = [(w, k) for w in trainable for k in range(together)]
    order += [(w, k) for k in range(together, kinds) for w in trainable]
    return first, order


def restore_optimizer(model: Model, h5: Any) -> None:
    """Put the optimizer state written by `write_optimizer` back (after `model.compile`)."""
    opt = getattr(model, "optimizer", None)
    if opt is None or "optimizer" not in h5 or "kcompile_slots" not in h5["optimizer/vars"].attrs:
        return
    vars_group = h5["optimizer/vars"]
    opt.iterations = int(np.asarray(vars_group["0"]))
    written = json.loads(vars_group.attrs["kcompile_slots"])
    if isinstance(written, list):  # a plain list of (weight, kind): its slots start at index 2
        written = {"first": 2, "slots": written}
    slots: dict[str, dict[int, np.ndarray]] = {}
    for i, (weight, kind) in enumerate(written["slots"]):
        slots.setdefault(weight, {})[int(kind)] = np.asarray(vars_group[str(i + written["first"])])
    opt.variables = {weight: [by_kind[k] for k in sorted(by_kind)] for weight, by_kind in slots.items()}


__all__ = ["compile_config", "layer_config", "layer_entry", "model_config", "restore_optimizer", "save_model"]
