"""Keras 3 `.keras` archives -> `kc.Model`, rebuilt through the same layer objects as the Python API.

    model = kc.load("model.keras")          # or: kcompile model.keras -o model.onnx

An archive is a zip of `metadata.json`, `config.json` (the model's structure: every layer's
class and constructor config, and for functional models each call of each layer as an inbound
node) and `model.weights.h5` (every variable). Reading it:
1. `config.json` -> layers: each entry's `class_name` names a `kcompile.layers` class, built with
   its Keras config (`layer_kwargs`: initializers and constraints dropped, since the weights are
   loaded and constraints only act in training; options kcompile does not implement refused by
   name unless they hold the value that has no effect). Sequential, functional and nested models
   are rebuilt recursively; a functional model's inbound nodes are replayed in dependency order, so
   a layer called twice (shared weights) is one layer with two calls. Keras operations recorded as
   graph nodes (`x + 1`, `x[:, 0]`, the `not_equal`/`any` that compute masks) become `KerasOp`
   layers.
2. `model.weights.h5` -> weights: every object's variables sit in a `vars` group whose `name`
   attribute is the object's name; the chain of those names from a layer down to a `vars` group is
   the owner path of its variables (`bidirectional/forward_gru/gru_cell`), the same path kcompile
   gives its Params (`bidirectional/forward_gru/gru_cell/kernel`). Each layer's arrays are matched
   to its Params by owner path and position, shapes checked.
Nothing in an archive is executed: a `Lambda` layer or any custom (registered) class is refused
with its name; malformed archives raise `KCompileError`, never a traceback.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import warnings
import zipfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import layers as kl
from .errors import KCompileError, SourceLoc
from .ir.builder import Builder
from .ir.graph import Param, Value
from .layers.base import Input, KTensor, Layer, source_location
from .model import Model, Sequential

_MAX_CONFIG_BYTES = 64 << 20
_MODEL_CLASSES = {"Functional", "Model", "Sequential"}

# Config keys that carry nothing kcompile needs: the layer's weights are loaded from the archive
# (initializers), constraints act only on training updates, and these select implementations.
_DROP_SUFFIXES = ("_initializer", "_constraint")
_DROP = {"name", "trainable", "dtype", "unroll", "implementation", "use_cudnn", "flash_attention", "build_config"}
# Keys a kcompile layer may not take, accepted when they hold the value that changes nothing.
_NO_EFFECT: dict[str, Any] = {
    "quantization_config": None,
    "lora_rank": None,
    "lora_alpha": None,
    "lora_enabled": False,
    "synchronized": False,
    "renorm": False,
    "renorm_clipping": None,
    "renorm_momentum": None,
    "stateful": False,
    "sparse": False,
    "ragged": False,
    "optional": False,
    "noise_shape": None,
    "seed": None,
    "time_major": False,
    "zero_output_for_mask": None,
}
# Keys whose value does not matter once another key switches them off.
_IGNORED_WHEN_OFF = {"renorm_momentum": "renorm", "lora_alpha": "lora_rank"}


@dataclass
class KerasArchive:
    """The parsed members of a `.keras` file."""

    path: str
    config: dict[str, Any]
    metadata: dict[str, Any]
    weights: Any  # an open h5py.File (read-only, in memory)


def is_keras_archive(path: str) -> bool:
    return os.path.splitext(path)[1] == ".keras"


def read_archive(path: str) -> KerasArchive:
    """Open and check a `.keras` archive; every defect is a KCompileError naming the file."""
    import h5py

    if not os.path.isfile(path):
        raise KCompileError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            for member in ("config.json", "model.weights.h5"):
                if member not in names:
                    what = "a .keras archive from keras.Model.save()" if names else "an empty zip"
                    raise KCompileError(f"{path}: not {what}: it has no {member}")
            for member in ("config.json", "metadata.json"):
                if member in names and zf.getinfo(member).file_size > _MAX_CONFIG_BYTES:
                    raise KCompileError(f"{path}: {member} is larger than {_MAX_CONFIG_BYTES >> 20} MiB")
            config = _json(path, "config.json", zf.read("config.json"))
            metadata = _json(path, "metadata.json", zf.read("metadata.json")) if "metadata.json" in names else {}
            weights_bytes = zf.read("model.weights.h5")
    except zipfile.BadZipFile:
        raise KCompileError(f"{path}: not a .keras archive (not a zip file)") from None
    except (OSError, EOFError, zipfile.LargeZipFile, NotImplementedError) as err:
        raise KCompileError(f"{path}: cannot read the archive: {err}") from None
    if not isinstance(config, dict) or "class_name" not in config or "config" not in config:
        raise KCompileError(f"{path}: config.json is not a Keras model config (no class_name/config)")
    try:
        weights = h5py.File(io.BytesIO(weights_bytes), "r")
    except (OSError, ValueError) as err:
        raise KCompileError(f"{path}: model.weights.h5 is not a readable HDF5 file ({err})") from None
    return KerasArchive(path, config, metadata if isinstance(metadata, dict) else {}, weights)


def _json(path: str, member: str, data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise KCompileError(f"{path}: {member} is not valid JSON ({err})") from None


def load_keras(path: str) -> Model:
    """Rebuild the model in a `.keras` file with its weights. Errors point at the file."""
    archive = read_archive(path)
    where = SourceLoc(path, 0)
    try:
        with source_location(where):
            model = model_from_config(archive.config)
            load_weights(model, archive.weights)
            compile_from_config(model, archive.config.get("compile_config"), archive.weights)
    except KCompileError as err:
        err.loc = where
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise KCompileError(f"malformed model config or weights ({type(err).__name__}: {err})", where) from None
    finally:
        archive.weights.close()
    return model


def compile_from_config(model: Model, config: Any, h5: Any) -> None:
    """Compile the model as it was when saved (optimizer, loss, metrics) and restore the
    optimizer's state, so `fit`/`train_on_batch` continue where training stopped. A compile
    setting kcompile cannot take leaves the model uncompiled, with a warning, as Keras does."""
    if not isinstance(config, dict) or config.get("optimizer") is None or config.get("loss") is None:
        return
    from .training import optimizers

    def plain(v: Any) -> Any:  # Keras' serialized loss/metric objects -> their registered names
        if isinstance(v, dict) and "class_name" in v:
            return {"class_name": v["class_name"], "config": v.get("config", {})}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    try:
        model.compile(
            optimizer=optimizers.get(config["optimizer"]),
            loss=plain(config.get("loss")),
            loss_weights=config.get("loss_weights"),
            metrics=plain(config.get("metrics")),
        )
    except KCompileError as err:
        warnings.warn(
            f"the model is loaded uncompiled: its compile settings are not supported ({err.message})", stacklevel=2
        )
        return
    _restore_optimizer(model, h5)


def _restore_optimizer(model: Model, h5: Any) -> None:
    """Iterations and slots from `optimizer/vars`: kcompile's layout (`kcompile_slots` names each
    slot) or Keras' (`saving.keras_slot_order`: iterations, the learning rate unless a schedule,
    then the slots as Keras' `build` creates them)."""
    from .saving import keras_slot_order, restore_optimizer

    opt = getattr(model, "optimizer", None)
    if opt is None or "optimizer" not in h5 or "vars" not in h5["optimizer"]:
        return
    vars_group = h5["optimizer/vars"]
    if "kcompile_slots" in vars_group.attrs:
        restore_optimizer(model, h5)
        return
    first, order = keras_slot_order(model)
    arrays = [np.asarray(vars_group[str(i)]) for i in range(len(vars_group))]
    shapes = {w.name: w.data.shape for w in model.weights}
    if len(arrays) != first + len(order) or any(
        arrays[first + i].shape != shapes[name] for i, (name, _) in enumerate(order)
    ):
        warnings.warn(
            "the optimizer state in the archive does not match the optimizer and weights; training restarts it",
            stacklevel=2,
        )
        return
    slots: dict[str, dict[int, np.ndarray]] = {}
    for i, (name, kind) in enumerate(order):
        slots.setdefault(name, {})[kind] = arrays[first + i].astype(np.float32)
    opt.iterations = int(arrays[0])
    opt.variables = {name: [by_kind[k] for k in sorted(by_kind)] for name, by_kind in slots.items()}


# Config -> layers ----------------------------------------------------------------------------
def model_from_config(entry: dict[str, Any]) -> Model:
    """A Sequential or functional model from its config entry ({class_name, config})."""
    cls, cfg = entry.get("class_name"), entry.get("config")
    if not isinstance(cfg, dict):
        raise KCompileError(f"the config of model {cls!r} is not an object")
    if cls == "Sequential":
        return _sequential(cfg)
    if cls in ("Functional", "Model"):
        if "layers" not in cfg:
            raise KCompileError(
                f"model {cfg.get('name')!r} is a subclassed keras.Model: its structure is Python code, "
                "which kcompile never runs; save a functional or Sequential model"
            )
        return _functional(cfg)
    raise KCompileError(f"the archive holds a {cls!r}, not a Keras model")


def _check_supported(entry: dict[str, Any]) -> str:
    cls = entry.get("class_name")
    raw = entry.get("config")
    cfg: dict[str, Any] = raw if isinstance(raw, dict) else {}
    name = cfg.get("name", entry.get("name", "?"))
    if not isinstance(cls, str):
        raise KCompileError(f"layer {name!r} has no class_name")
    module = str(entry.get("module") or "")
    if cls == "Lambda":
        raise KCompileError(
            f"layer '{name}' is a Lambda layer: its Python code is stored in the file and kcompile never "
            "executes code from a model file; rebuild that step from built-in layers"
        )
    registered = entry.get("registered_name")
    custom = (module and not module.startswith("keras")) or (
        isinstance(registered, str) and registered != cls and not module.startswith("keras")
    )
    if custom:
        raise KCompileError(
            f"layer '{name}' is a custom class {registered or cls!r} (module {module or '?'}): its code is not in "
            "the file and kcompile never imports it; use built-in layers"
        )
    return cls


def layer_from_config(entry: dict[str, Any]) -> Layer:
    """One layer (or nested model) from its config entry."""
    cls = _check_supported(entry)
    if cls in _MODEL_CLASSES:
        return model_from_config(entry)
    cfg = entry["config"]
    if str(entry.get("module") or "").startswith("keras.src.ops"):
        return KerasOp(cls, cfg)
    target = getattr(kl, cls, None) if cls in kl.__all__ else None
    if not (inspect.isclass(target) and issubclass(target, Layer)) or cls in ("Layer", "InputLayer"):
        from .lang.builtins import did_you_mean

        choices = [n for n in kl.__all__ if inspect.isclass(getattr(kl, n)) and n not in ("Layer", "KTensor")]
        raise KCompileError(
            f"layer '{cfg.get('name', '?')}' is a {cls}, which kcompile does not support{did_you_mean(cls, choices)}"
        )
    kwargs = layer_kwargs(target, cls, cfg)
    try:
        return target(**kwargs)  # type: ignore[no-any-return]
    except KCompileError as err:
        err.message = f"layer '{cfg.get('name', '?')}' ({cls}): {err.message}"
        raise


def accepted_args(cls: type) -> tuple[set[str], bool]:
    """The keyword arguments a layer class takes (following **kwargs into its bases), and whether
    it takes any keyword (a **kwargs that ends nowhere)."""
    names: set[str] = {"name", "trainable", "dtype"}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names - {"self"}, False
        if klass is Layer:
            break
    return names - {"self"}, False


def layer_kwargs(target: type, class_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """Map a Keras layer config to kcompile constructor kwargs (the same argument names)."""
    accepted, _ = accepted_args(target)
    out: dict[str, Any] = {}
    name = config.get("name")
    if isinstance(name, str):
        out["name"] = name
    if "trainable" in config:
        out["trainable"] = bool(config["trainable"])
    for key, value in config.items():
        if key in _DROP or key.endswith(_DROP_SUFFIXES):
            continue
        if key in _IGNORED_WHEN_OFF and not config.get(_IGNORED_WHEN_OFF[key]):
            continue
        if key not in accepted:
            if key in _NO_EFFECT and (value == _NO_EFFECT[key] or key == "seed"):
                continue
            if key.endswith("_regularizer") and value is None:
                continue
            raise KCompileError(f"layer '{name}' ({class_name}): kcompile does not support the option {key}={value!r}")
        out[key] = _config_value(value)
    return out


def _config_value(value: Any) -> Any:
    if isinstance(value, dict) and "class_name" in value and "config" in value:
        cls = value["class_name"]
        if cls in _MODEL_CLASSES or (isinstance(cls, str) and cls in kl.__all__) or cls == "Lambda":
            return layer_from_config(value)  # a wrapped layer: Bidirectional, TimeDistributed
        return value  # a serialized object the layer parses itself (regularizer, activation)
    if isinstance(value, list):
        return tuple(_config_value(v) for v in value)
    return value


def _input_layer(cfg: dict[str, Any]) -> KTensor:
    shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
    if not isinstance(shape, list) or not shape:
        raise KCompileError(f"InputLayer {cfg.get('name')!r} has no batch_shape")
    dtype = cfg.get("dtype", "float32")
    if isinstance(dtype, dict):
        dtype = dtype.get("config", {}).get("name", "float32")
    if dtype in ("mixed_float16", "mixed_bfloat16", "float16", "bfloat16", "float64"):
        dtype = "float32"
    if cfg.get("sparse") or cfg.get("ragged"):
        raise KCompileError(f"Input {cfg.get('name')!r} is sparse/ragged; kcompile takes dense inputs")
    batch = shape[0] if isinstance(shape[0], int) else None
    return Input(shape=tuple(shape[1:]), batch_size=batch, dtype=dtype, name=cfg.get("name"))


def _sequential(cfg: dict[str, Any]) -> Sequential:
    items: list[Any] = []
    for entry in cfg.get("layers", []):
        if entry.get("class_name") == "InputLayer":
            items.append(_input_layer(entry["config"]))
        else:
            items.append(layer_from_config(entry))
    if items and not isinstance(items[0], KTensor):
        shape = cfg.get("build_input_shape")
        if isinstance(shape, list) and len(shape) > 1:
            items.insert(0, Input(shape=tuple(shape[1:])))
    model = Sequential(items, name=cfg.get("name"), trainable=bool(cfg.get("trainable", True)))
    return model


class _MaskOf:
    """`not_equal(ids, 0)` / `any(not_equal(x, v), axis=-1)`: a Keras mask, passed to kcompile
    layers as the tensor it is computed from when that tensor already is the mask's meaning."""

    def __init__(self, tensor: KTensor, how: str) -> None:
        self.tensor, self.how = tensor, how


def _functional(cfg: dict[str, Any]) -> Model:
    entries = cfg.get("layers")
    if not isinstance(entries, list):
        raise KCompileError(f"model {cfg.get('name')!r}: config has no layer list")
    layers: dict[str, Any] = {}
    produced: dict[tuple[str, int], tuple[Any, ...]] = {}
    pending: deque[tuple[str, int, dict[str, Any]]] = deque()
    for entry in entries:
        name = entry.get("name") or entry.get("config", {}).get("name")
        if not isinstance(name, str):
            raise KCompileError("a layer in the config has no name")
        if entry.get("class_name") == "InputLayer":
            produced[(name, 0)] = (_input_layer(entry["config"]),)
            continue
        layers[name] = layer_from_config(entry)
        for i, node in enumerate(entry.get("inbound_nodes") or []):
            pending.append((name, i, node))

    def tensor(history: Any) -> Any:
        lname, node_index, index = history
        outs = produced.get((lname, node_index))
        if outs is None:
            raise _NotYet
        return outs[index]

    def decode(obj: Any) -> Any:
        if isinstance(obj, dict) and obj.get("class_name") == "__keras_tensor__":
            return tensor(obj["config"]["keras_history"])
        if isinstance(obj, dict) and obj.get("class_name") == "__slice__":
            c = obj["config"]
            return slice(c.get("start"), c.get("stop"), c.get("step"))
        if isinstance(obj, dict) and obj.get("class_name") == "__ellipsis__":
            return Ellipsis
        if isinstance(obj, list):
            return [decode(v) for v in obj]
        if isinstance(obj, dict) and not ("class_name" in obj and "config" in obj):
            return {k: decode(v) for k, v in obj.items()}
        return obj

    stalled = 0
    while pending:
        name, i, node = pending.popleft()
        try:
            args = decode(node.get("args", []))
            kwargs = decode(node.get("kwargs", {}))
        except _NotYet:
            pending.append((name, i, node))
            stalled += 1
            if stalled > len(pending):
                missing = ", ".join(sorted({n for n, _, _ in pending}))
                raise KCompileError(
                    f"model {cfg.get('name')!r}: the calls of {missing} use tensors no layer produces"
                ) from None
            continue
        stalled = 0
        out = _call(layers[name], name, args, kwargs)
        produced[(name, i)] = out if isinstance(out, tuple) else (out,)

    def ends(spec: Any) -> tuple[list[Any], bool]:
        if isinstance(spec, list) and spec and isinstance(spec[0], str):
            spec = [spec]
            single = True
        else:
            single = False
        try:
            return [tensor(s) for s in spec], single
        except _NotYet:
            raise KCompileError(f"model {cfg.get('name')!r}: an input/output names an unknown layer call") from None

    inputs, one_in = ends(cfg.get("input_layers"))
    outputs, one_out = ends(cfg.get("output_layers"))
    for t in outputs:
        if isinstance(t, _MaskOf):
            raise KCompileError(f"model {cfg.get('name')!r}: a mask computation is a model output")
    return Model(
        inputs[0] if one_in else inputs,
        outputs[0] if one_out else outputs,
        name=cfg.get("name"),
        trainable=bool(cfg.get("trainable", True)),
    )


class _NotYet(Exception):
    """A node's input is produced by a call not replayed yet."""


def _takes(layer: Any, arg: str) -> bool:
    try:
        params = inspect.signature(type(layer).__call__).parameters
    except (TypeError, ValueError):
        return False
    return arg in params


def _call(layer: Any, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    kwargs = {k: v for k, v in kwargs.items() if k != "training" and v is not None}
    if isinstance(layer, KerasOp):
        return layer.apply(args, kwargs)
    mask = kwargs.pop("mask", None)
    if mask is not None and _implied(mask, args):
        mask = None  # kcompile derives the same mask from the input (Masking, Embedding(mask_zero))
    if mask is not None:
        if _takes(layer, "mask"):
            kwargs["mask"] = _mask_tensor(mask, name)
        elif not isinstance(layer, Model):
            raise KCompileError(
                f"layer '{name}' ({type(layer).__name__}) is called with a Keras mask, which kcompile's "
                f"{type(layer).__name__} does not take"
            )
        # A nested model finds the masks of its inputs through kcompile's own mask propagation.
    for key, value in list(kwargs.items()):
        if isinstance(value, _MaskOf):
            kwargs[key] = _mask_tensor(value, name)
    for a in args:
        if isinstance(a, _MaskOf):
            raise KCompileError(f"layer '{name}' takes a mask computation as data; kcompile does not support that")
    try:
        return layer(*args, **kwargs)
    except TypeError as err:
        raise KCompileError(f"layer '{name}' ({type(layer).__name__}) cannot be called as recorded: {err}") from None


def _implied(mask: Any, args: list[Any]) -> bool:
    """Whether `mask` is the mask kcompile's own propagation finds on the call's first input."""
    from .layers.recurrent import keras_mask

    first = args[0] if args else None
    if isinstance(first, list | tuple):
        first = first[0] if first else None
    return isinstance(mask, _MaskOf) and isinstance(first, KTensor) and keras_mask(first) is not None


def _mask_tensor(mask: Any, name: str) -> Any:
    if isinstance(mask, list):
        return [None if m is None else _mask_tensor(m, name) for m in mask]
    if isinstance(mask, _MaskOf):
        if mask.how != "nonzero":
            raise KCompileError(f"layer '{name}': its mask comes from a computation kcompile cannot pass on")
        return mask.tensor
    if isinstance(mask, KTensor):
        return mask
    raise KCompileError(f"layer '{name}': unsupported mask value {mask!r}")


# Keras operations recorded in functional models --------------------------------------------
_BINARY = {
    "Add": "add",
    "Subtract": "sub",
    "Multiply": "mul",
    "Divide": "div",
    "TrueDivide": "div",
    "Power": "pow",
    "Maximum": "maximum",
    "Minimum": "minimum",
    "Matmul": "matmul",
}
_UNARY = {
    "Negative": "neg",
    "Abs": "abs",
    "Absolute": "abs",
    "Exp": "exp",
    "Log": "log",
    "Sqrt": "sqrt",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "Relu": "relu",
    "Softplus": "softplus",
    "Erf": "erf",
}
_REDUCE = {"Mean": "reduce_mean", "Sum": "reduce_sum", "Max": "reduce_max"}


class KerasOp(Layer):
    """A Keras operation applied in a functional model (`keras.ops.add`, `x[:, 0]`, ...).

    `apply(args, kwargs)` records one call; `call` emits it with the constants bound then. Mask
    computations (`not_equal`, `any`) become `_MaskOf` markers consumed by `mask=` arguments."""

    takes_list = True

    def __init__(self, op: str, config: dict[str, Any]) -> None:
        super().__init__(name=config.get("name"))
        self.op, self.config = op, dict(config)
        self._template: list[Any] = []
        self._kw: dict[str, Any] = {}

    def apply(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if self.op == "NotEqual":
            x, other = args
            if isinstance(x, KTensor) and not isinstance(other, KTensor):
                # != 0 is the mask kcompile reads from the tensor itself; other values (Masking's
                # mask_value) only as the implicit mask of the layer that computes it.
                return _MaskOf(x, "nonzero" if np.all(np.asarray(other) == 0) else "not_equal")
            raise KCompileError(f"operation '{self.name}' (not_equal) is supported only as a mask computation")
        if self.op in ("LogicalOr", "LogicalAnd") and all(isinstance(a, _MaskOf) for a in args):
            first, second = args
            if first.tensor is second.tensor and first.how == second.how:
                return first  # a merge layer's mask of two inputs carrying the same mask
            return _MaskOf(first.tensor, "combined")
        if self.op == "Any":
            (m,) = args
            axis = self.config.get("axis", kwargs.get("axis"))
            if isinstance(m, _MaskOf) and m.how in ("nonzero", "not_equal") and axis in (-1, m.tensor.type.rank - 1):
                return _MaskOf(m.tensor, "any_not_equal")
            raise KCompileError(f"operation '{self.name}' (any) is supported only as Masking's mask computation")
        if self.op not in _BINARY and self.op not in _UNARY and self.op not in _REDUCE and self.op not in _OTHER:
            raise KCompileError(
                f"operation '{self.name}' ({self.op}) in the model is not supported by kcompile's .keras import"
            )
        flat = _flatten_args(args)
        self._template = [None if isinstance(a, KTensor) else a for a in flat]
        self._kw = kwargs
        tensors = [a for a in flat if isinstance(a, KTensor)]
        if not tensors:
            raise KCompileError(f"operation '{self.name}' ({self.op}) has no tensor operand")
        return self(tensors)

    def call(self, b: Builder, inputs: list[Value], /, **kwargs: Any) -> Value:
        it = iter(inputs)
        vals = [next(it) if a is None else a for a in self._template]
        dtype = inputs[0].type.dtype
        cfg = {**self.config, **self._kw}

        def tensor(v: Any) -> Value:
            return v if isinstance(v, Value) else b.constant(np.asarray(v, dtype), dtype)

        if self.op in _BINARY:
            return b.op(_BINARY[self.op], [tensor(vals[0]), tensor(vals[1])])
        if self.op in _UNARY:
            return b.op(_UNARY[self.op], [tensor(vals[0])])
        if self.op in _REDUCE:
            x = tensor(vals[0])
            axis = cfg.get("axis")
            axes = tuple(range(x.type.rank)) if axis is None else tuple(np.atleast_1d(axis).tolist())
            return b.op(_REDUCE[self.op], [x], axes=axes, keepdims=bool(cfg.get("keepdims", False)))
        return _OTHER[self.op](b, vals, cfg, tensor)


def _flatten_args(args: list[Any]) -> list[Any]:
    out: list[Any] = []
    for a in args:
        if isinstance(a, list | tuple) and any(isinstance(x, KTensor) for x in a):
            out.extend(a)
        else:
            out.append(a)
    return out


def _get_item(b: Builder, vals: list[Any], cfg: dict[str, Any], tensor: Any) -> Value:
    """`x[key]` with slices of step 1, integers and one Ellipsis (NumPy basic indexing)."""
    x, key = vals[0], vals[1:]
    if len(key) == 1 and isinstance(key[0], list | tuple):
        key = list(key[0])
    rank = x.type.rank
    if sum(1 for k in key if k is Ellipsis) > 1 or len([k for k in key if k is not Ellipsis]) > rank:
        raise KCompileError(f"unsupported index {key!r} for a rank-{rank} tensor")
    if Ellipsis in key:
        at = key.index(Ellipsis)
        key = [*key[:at], *[slice(None)] * (rank - len(key) + 1), *key[at + 1 :]]
    axes: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    drop: set[int] = set()
    for axis, k in enumerate(key):
        if isinstance(k, slice):
            if k.step not in (None, 1):
                raise KCompileError("slicing with a step is not supported by kcompile's .keras import")
            if k.start is not None or k.stop is not None:
                axes.append(axis)
                starts.append(0 if k.start is None else int(k.start))
                ends.append(2**62 if k.stop is None else int(k.stop))
        elif isinstance(k, int | np.integer) and not isinstance(k, bool):
            axes.append(axis)
            starts.append(int(k))
            ends.append(int(k) + 1 if k != -1 else 2**62)
            drop.add(axis)
        else:
            raise KCompileError(f"unsupported index {k!r} in a slicing operation")
    y = b.op("slice", [x], axes=tuple(axes), starts=tuple(starts), ends=tuple(ends)) if axes else x
    if not drop:
        return y
    if 0 in drop:
        raise KCompileError("indexing the batch axis of a tensor is not supported")
    inner = [int(d) if isinstance(d, int) else -1 for i, d in enumerate(y.type.shape) if i and i not in drop]
    if inner.count(-1) > 1:
        raise KCompileError("integer indexing of a tensor with several symbolic dimensions is not supported")
    return b.op("reshape", [y], shape=(0, *inner))


def _concatenate(b: Builder, vals: list[Any], cfg: dict[str, Any], tensor: Any) -> Value:
    return b.op("concat", [tensor(v) for v in vals], axis=int(cfg.get("axis", 0)))


def _cast(b: Builder, vals: list[Any], cfg: dict[str, Any], tensor: Any) -> Value:
    dtype = cfg.get("dtype")
    if isinstance(dtype, dict):
        dtype = dtype.get("config", {}).get("name")
    return b.op("cast", [tensor(vals[0])], to=str(dtype))


def _softmax(b: Builder, vals: list[Any], cfg: dict[str, Any], tensor: Any) -> Value:
    return b.op("softmax", [tensor(vals[0])], axis=int(cfg.get("axis", -1)))


def _transpose(b: Builder, vals: list[Any], cfg: dict[str, Any], tensor: Any) -> Value:
    x = tensor(vals[0])
    axes = cfg.get("axes")
    perm = tuple(reversed(range(x.type.rank))) if axes is None else tuple(int(a) for a in axes)
    return b.op("transpose", [x], perm=perm)


def _expand_dims(b: Builder, vals: list[Any], cfg: dict[str, Any], tensor: Any) -> Value:
    x = tensor(vals[0])
    axis = int(cfg.get("axis", -1))
    rank = x.type.rank + 1
    axis = axis % rank
    if axis == 0:
        raise KCompileError("expand_dims on the batch axis is not supported")
    inner = [int(d) if isinstance(d, int) else -1 for d in x.type.shape[1:]]
    if inner.count(-1) > 1:
        raise KCompileError("expand_dims of a tensor with several symbolic dimensions is not supported")
    inner.insert(axis - 1, 1)
    return b.op("reshape", [x], shape=(0, *inner))


_OTHER: dict[str, Callable[..., Value]] = {
    "GetItem": _get_item,
    "Concatenate": _concatenate,
    "Cast": _cast,
    "Softmax": _softmax,
    "Transpose": _transpose,
    "ExpandDims": _expand_dims,
}


# Weights ---------------------------------------------------------------------------------------
def _vars_groups(group: Any, owner: tuple[str, ...], out: list[tuple[tuple[str, ...], list[np.ndarray]]]) -> None:
    """Every `vars` group under `group` in Keras' save order (own variables first, then children
    by attribute name, private ones last), with the owner-name path of its variables."""
    import h5py

    here = owner
    if "vars" in group and isinstance(group["vars"], h5py.Group):
        vars_group = group["vars"]
        name = vars_group.attrs.get("name")
        here = (*owner, str(name.decode() if isinstance(name, bytes) else name)) if name is not None else owner
        arrays = [np.asarray(vars_group[k]) for k in sorted(vars_group, key=lambda s: int(s) if s.isdigit() else -1)]
        out.append((here, arrays))
    children = [k for k in group if k != "vars" and isinstance(group[k], h5py.Group)]
    for key in sorted(children, key=lambda s: f"~{s}" if s.startswith("_") else s):
        _vars_groups(group[key], here, out)


def _owner(param: Param, layer: Layer) -> tuple[str, ...]:
    parts = param.name.split("/")[:-1]
    if layer.name in parts:
        parts = parts[parts.index(layer.name) :]
    return tuple(parts)


def _assign(layer: Layer, found: list[tuple[tuple[str, ...], list[np.ndarray]]]) -> None:
    params = layer.weights
    arrays = [(owner, a) for owner, arrs in found for a in arrs]
    if len(arrays) != len(params):
        raise KCompileError(
            f"layer '{layer.name}' ({type(layer).__name__}) has {len(params)} weights in kcompile "
            f"({', '.join(p.name for p in params) or 'none'}) but {len(arrays)} in the archive"
        )
    if not params:
        return
    by_owner: dict[tuple[str, ...], list[np.ndarray]] = {}
    for owner, a in arrays:
        by_owner.setdefault(owner, []).append(a)
    owners = [_owner(p, layer) for p in params]
    if set(owners) == set(by_owner) and all(owners.count(o) == len(v) for o, v in by_owner.items()):
        queues = {o: deque(v) for o, v in by_owner.items()}
        values = [queues[o].popleft() for o in owners]
    else:  # names differ: Keras' save order, which equals get_weights() order for these layers
        values = [a for _, a in arrays]
    for p, v in zip(params, values, strict=True):
        if tuple(p.type.shape) != v.shape:
            raise KCompileError(
                f"layer '{layer.name}': weight {p.name} has shape {tuple(p.type.shape)} in kcompile but "
                f"{v.shape} in the archive"
            )
        p.assign(v.astype(p.type.dtype, copy=False))


def load_weights(model: Model, h5: Any) -> None:
    """Set every weight of `model` (built from the archive's config) from `model.weights.h5`."""
    _load_container(model, h5, "")


def _load_container(model: Model, group: Any, where: str) -> None:
    import h5py

    if "layers" not in group:
        if any(w for w in model.weights):
            raise KCompileError(f"model.weights.h5 has no '{where}layers' group")
        return
    container = group["layers"]
    by_name: dict[str, Any] = {}
    for key in container:
        sub = container[key]
        if isinstance(sub, h5py.Group) and "vars" in sub:
            name = sub["vars"].attrs.get("name")
            by_name[str(name.decode() if isinstance(name, bytes) else name)] = sub
    loaded: set[int] = set()
    for layer in model.layers:
        if id(layer) in loaded or (not layer.weights and not isinstance(layer, Model)):
            continue
        loaded.add(id(layer))
        sub = by_name.get(layer.name)
        if sub is None:
            raise KCompileError(f"model.weights.h5 holds no weights for layer '{layer.name}'")
        if isinstance(layer, Model):
            _load_container(layer, sub, f"{where}layers/{layer.name}/")
            continue
        found: list[tuple[tuple[str, ...], list[np.ndarray]]] = []
        _vars_groups(sub, (), found)
        _assign(layer, found)


__all__ = [
    "KerasArchive",
    "KerasOp",
    "layer_from_config",
    "layer_kwargs",
    "load_keras",
    "model_from_config",
    "read_archive",
]
