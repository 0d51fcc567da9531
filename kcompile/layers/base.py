"""Layers, symbolic tensors and the functional call record.

Calling a layer on symbolic tensors (`KTensor`) does three things:
1. builds the layer once (creates its weights as `Param`s, named by the name scope active then:
   `block1/mylstm/kernel`);
2. infers the output types by emitting the layer's ops into a scratch graph (so every shape rule
   lives in the op registry, and a mismatch is reported against this call);
3. records a `LayerCall` (layer, inputs, device, name scope, source location) on the outputs.

A model replays its recorded calls through one `Builder` to produce the IR, so calling one layer
twice emits two sets of nodes referencing one set of Params: shared weights by identity.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import KCompileError, ModelError, ShapeError, SourceLoc
from ..initializers import initialize
from ..ir.builder import Builder
from ..ir.graph import Param, Value
from ..ir.types import Dim, TensorType, check_dtype, format_dim

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Placement and naming context ------------------------------------------------------------------
class _Context(threading.local):
    def __init__(self) -> None:
        self.devices: list[str] = []
        self.scopes: list[str] = []
        self.loc: SourceLoc | None = None
        # Set while the training step traces a model: (layer, output values) per replayed call.
        self.activity: list[tuple[Layer, list[Value]]] | None = None


_ctx = _Context()
_name_counts: dict[str, int] = {}

_DEVICE_RE = re.compile(r"^(cpu|gpu|cuda|tpu|npu)(:\d+)?$")


@contextmanager
def device(name: str) -> Iterator[None]:
    """Place the layer calls made inside on `name` (`cpu:0`, `gpu:1`), like `tf.device`."""
    name = name.strip().lower().removeprefix("/").removeprefix("device:")
    if not _DEVICE_RE.match(name):
        raise ModelError(f"unknown device {name!r}; write 'cpu:0', 'gpu:0', 'gpu:1', ...")
    if ":" not in name:
        name += ":0"
    _ctx.devices.append(name)
    try:
        yield
    finally:
        _ctx.devices.pop()


@contextmanager
def name_scope(name: str) -> Iterator[None]:
    """Prefix the names of weights created inside (`block1/dense/kernel`), like `tf.name_scope`."""
    if not name or "/" in name:
        raise ModelError(f"a name scope must be a non-empty name without '/', got {name!r}")
    _ctx.scopes.append(name)
    try:
        yield
    finally:
        _ctx.scopes.pop()


@contextmanager
def source_location(loc: SourceLoc | None) -> Iterator[None]:
    """Front ends (the `.k` translator) set where the layer calls inside come from."""
    saved, _ctx.loc = _ctx.loc, loc
    try:
        yield
    finally:
        _ctx.loc = saved


@contextmanager
def tracing_activity() -> Iterator[list[tuple[Layer, list[Value]]]]:
    """Collect, while active, the output values of every layer call a model replays whose layer
    has an `activity_regularizer` (Keras' `Layer.__call__` adds the penalty on those outputs)."""
    saved, _ctx.activity = _ctx.activity, []
    try:
        yield _ctx.activity
    finally:
        _ctx.activity = saved


def note_call_outputs(layer: Layer, outputs: list[Value]) -> None:
    """Called by a model for each layer call it replays (the calls Keras runs through `__call__`)."""
    if _ctx.activity is not None and getattr(layer, "activity_regularizer", None) is not None:
        _ctx.activity.append((layer, outputs))


def current_device() -> str | None:
    return _ctx.devices[-1] if _ctx.devices else None


def current_scope() -> str:
    return "/".join(_ctx.scopes)


def clear_session() -> None:
    """Restart automatic layer naming (`dense`, `dense_1`, ...), as `keras.backend.clear_session`."""
    _name_counts.clear()


def unique_name(base: str) -> str:
    n = _name_counts.get(base, 0)
    _name_counts[base] = n + 1
    return base if n == 0 else f"{base}_{n}"


def snake_case(name: str) -> str:
    """Keras' `to_snake_case`: Conv2D -> conv2d, BatchNormalization -> batch_normalization."""
    s = re.sub(r"\W+", "", name)
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", s)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def _caller_loc() -> SourceLoc | None:
    if _ctx.loc is not None:
        return _ctx.loc
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(_PKG_DIR + os.sep):
            return SourceLoc(frame.f_code.co_filename, frame.f_lineno, 0)
        frame = frame.f_back  # type: ignore[assignment]
    return None


# Symbolic tensors --------------------------------------------------------------------------
@dataclass(eq=False)
class LayerCall:
    """One call of a layer on symbolic tensors, replayed when a model emits its graph."""

    layer: Layer
    inputs: list[KTensor]
    kwargs: dict[str, Any]
    outputs: list[KTensor] = field(default_factory=list)
    device: str | None = None
    scope: str = ""
    loc: SourceLoc | None = None


class KTensor:
    """A symbolic tensor: the output of `Input(...)` or of a layer called on symbolic tensors."""

    # NumPy defers to KTensor's reflected operators (`np.array([...]) - t` records a layer).
    __array_ufunc__ = None

    def __init__(self, type: TensorType, call: LayerCall, index: int = 0) -> None:
        self.type = type
        self._call = call
        self._index = index

    @property
    def shape(self) -> tuple[int | None, ...]:
        return tuple(d if isinstance(d, int) else None for d in self.type.shape)

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def name(self) -> str:
        layer = self._call.layer
        return layer.name if len(self._call.outputs) <= 1 else f"{layer.name}_{self._index}"

    def origin(self) -> str:
        """Where this tensor comes from, for error messages."""
        layer = self._call.layer
        what = f"Input '{layer.name}'" if isinstance(layer, InputLayer) else f"layer '{layer.name}'"
        return f"{what} at {self._call.loc}" if self._call.loc else what

    def __repr__(self) -> str:
        return f"<KTensor {self.type} from {self.origin()}>"

    # Tensor arithmetic records elementwise op layers, as Keras 3's `ops.add` on KerasTensors.
    def _binary(self, op: str, other: Any, reverse: bool = False) -> KTensor:
        from .merging import Elementwise

        a, b = (other, self) if reverse else (self, other)
        out = Elementwise(op)([a, b])
        assert isinstance(out, KTensor)
        return out

    def __add__(self, other: Any) -> KTensor:
        return self._binary("add", other)

    def __radd__(self, other: Any) -> KTensor:
        return self._binary("add", other, reverse=True)

    def __sub__(self, other: Any) -> KTensor:
        return self._binary("sub", other)

    def __rsub__(self, other: Any) -> KTensor:
        return self._binary("sub", other, reverse=True)

    def __mul__(self, other: Any) -> KTensor:
        return self._binary("mul", other)

    def __rmul__(self, other: Any) -> KTensor:
        return self._binary("mul", other, reverse=True)

    def __truediv__(self, other: Any) -> KTensor:
        return self._binary("div", other)

    def __rtruediv__(self, other: Any) -> KTensor:
        return self._binary("div", other, reverse=True)

    def __pow__(self, other: Any) -> KTensor:
        return self._binary("pow", other)

    def __neg__(self) -> KTensor:
        from .merging import Elementwise

        out = Elementwise("neg")([self])
        assert isinstance(out, KTensor)
        return out

    def __matmul__(self, other: Any) -> KTensor:
        return self._binary("matmul", other)


def flatten_tensors(x: Any) -> list[Any]:
    if isinstance(x, list | tuple):
        return [t for item in x for t in flatten_tensors(item)]
    return [x]


# Layers ------------------------------------------------------------------------------------
_INPUT_ARGS = frozenset({"input_shape", "batch_size", "input_dim"})


class Layer:
    """Base of every layer. Subclasses implement `build(input_types)` and `call(b, inputs)`.

    `call` receives IR Values (one, or a list for layers taking several tensors) and emits ops
    through the Builder `b`; it returns a Value or a list of Values.
    """

    # True for layers whose output depends on the learning phase (Dropout, BatchNormalization).
    phase_dependent = False
    # True for layers that take a list of tensors (merging layers).
    takes_list = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Record the arguments each layer is constructed with (the outermost `__init__` call), so
        that `get_config()` can give them back as a Keras config."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_records_config", False):
            return

        @functools.wraps(init)
        def recording_init(self: Layer, *args: Any, **kw: Any) -> None:
            if "_init_call" not in self.__dict__:
                self.__dict__["_init_call"] = (init, args, dict(kw))
            init(self, *args, **kw)

        recording_init._records_config = True  # type: ignore[attr-defined]
        cls.__init__ = recording_init  # type: ignore[method-assign]

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments, by Keras name, plus `name`, `trainable` and `dtype`: what
        `type(layer)(**config)` rebuilds (weights aside). Layer-valued arguments stay objects."""
        config: dict[str, Any] = {}
        recorded = self.__dict__.get("_init_call")
        if recorded is not None:
            init, args, kw = recorded
            bound = inspect.signature(init).bind(self, *args, **kw)
            for pname, value in list(bound.arguments.items())[1:]:
                if inspect.signature(init).parameters[pname].kind is inspect.Parameter.VAR_KEYWORD:
                    # Keras' input_shape=/batch_size=/input_dim= only made the model's Input.
                    config.update({k: v for k, v in value.items() if k not in _INPUT_ARGS})
                else:
                    config[pname] = value
        config.update(name=self.name, trainable=self.trainable, dtype=self.dtype)
        return config

    def __init__(
        self,
        name: str | None = None,
        trainable: bool = True,
        dtype: str | None = None,
        activity_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        input_shape = kwargs.pop("input_shape", None)
        batch_size = kwargs.pop("batch_size", None)
        kwargs.pop("input_dim", None)
        if kwargs:
            raise ModelError(f"{type(self).__name__} got unknown argument(s): {', '.join(sorted(kwargs))}")
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ModelError(f"a layer name must be a non-empty string without '/', got {name!r}")
        self.name = name or unique_name(snake_case(type(self).__name__))
        self.dtype = check_dtype(dtype) if dtype else "float32"
        self._trainable = trainable
        # Keras' penalty on this layer's outputs: regularizer(output) / batch, per call, in training.
        self.activity_regularizer = Layer.regularizer(activity_regularizer)
        self.built = False
        self._weights: list[Param] = []
        self._trainable_created: set[int] = set()
        self._scope_at_init = current_scope()
        self._input_shape = tuple(input_shape) if input_shape is not None else None
        self._batch_size = batch_size
        self._calls: list[LayerCall] = []

    # Weights -------------------------------------------------------------------------------
    def add_weight(
        self, name: str, shape: Sequence[int], initializer: Any = "glorot_uniform", trainable: bool = True
    ) -> Param:
        shape = tuple(int(s) for s in shape)
        prefix = current_scope() or self._scope_at_init
        path = f"{prefix}/{self.name}/{name}" if prefix else f"{self.name}/{name}"
        param = Param(path, initialize(initializer, shape, self.dtype), trainable and self._trainable, str(initializer))
        self._weights.append(param)
        if trainable:
            self._trainable_created.add(id(param))
        return param

    @property
    def weights(self) -> list[Param]:
        """Keras order: this layer's trainable weights in creation order, then the others."""
        own = [w for w in self._weights if id(w) in self._trainable_created]
        own += [w for w in self._weights if id(w) not in self._trainable_created]
        return own

    @property
    def trainable_weights(self) -> list[Param]:
        return [w for w in self.weights if w.trainable]

    @property
    def non_trainable_weights(self) -> list[Param]:
        return [w for w in self.weights if not w.trainable]

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._trainable = bool(value)
        for w in self._weights:
            w.trainable = self._trainable and id(w) in self._trainable_created

    @staticmethod
    def regularizer(identifier: Any) -> Any:
        """A Keras regularizer argument (None, 'l2', a config dict, kc.regularizers.L2(...)),
        checked now; the trainer adds `<weight>_regularizer` penalties to the loss."""
        if identifier is None:
            return None
        from ..training.regularizers import get

        return get(identifier)

    def get_weights(self) -> list[np.ndarray]:
        return [w.data.copy() for w in self.weights]

    def set_weights(self, values: Sequence[np.ndarray]) -> None:
        weights = self.weights
        if len(values) != len(weights):
            raise ModelError(
                f"layer '{self.name}' has {len(weights)} weights ({', '.join(w.name for w in weights)}), "
                f"got {len(values)} values"
            )
        for w, v in zip(weights, values, strict=True):
            w.assign(np.asarray(v))

    def count_params(self) -> int:
        return sum(w.data.size for w in self.weights)

    @property
    def uses_learning_phase(self) -> bool:
        return self.phase_dependent

    # Calls ---------------------------------------------------------------------------------
    def build(self, input_types: list[TensorType]) -> None:
        """Create weights for inputs of these types. Layers without weights keep this no-op."""

    def call(self, b: Builder, inputs: Any, /, **kwargs: Any) -> Value | list[Value]:
        raise NotImplementedError

    def emit(self, b: Builder, inputs: list[Value], kwargs: dict[str, Any]) -> list[Value]:
        """Emit this layer's ops for one call, under a scope named after the layer."""
        with b.scope(self.name):
            out = self.call(b, inputs if self.takes_list else inputs[0], **kwargs)
        return list(out) if isinstance(out, list | tuple) else [out]

    def _coerce_inputs(self, inputs: Any) -> list[KTensor]:
        items = flatten_tensors(inputs)
        if not self.takes_list and len(items) != 1:
            raise ModelError(f"layer '{self.name}' ({type(self).__name__}) takes one tensor, got {len(items)}")
        for t in items:
            if not isinstance(t, KTensor):
                raise ModelError(
                    f"layer '{self.name}' ({type(self).__name__}) must be called on symbolic tensors "
                    f"(from kc.Input or another layer), got {type(t).__name__}"
                )
        return items

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        tensors = self._coerce_inputs(inputs)
        loc = _caller_loc()
        types = [t.type for t in tensors]
        try:
            if not self.built:
                self.build(types)
                self.built = True
            b = Builder()
            values = [b.input(f"in{i}", t) for i, t in enumerate(types)]
            with b.loc(loc):
                outs = self.emit(b, values, kwargs)
        except ShapeError as err:
            origins = "; ".join(f"{t.type} from {t.origin()}" for t in tensors)
            raise ShapeError(
                f"{type(self).__name__} layer '{self.name}': {err.message} (input: {origins})", loc
            ) from None
        except KCompileError as err:
            if err.loc is None:
                err.loc = loc
            raise
        call = LayerCall(self, tensors, dict(kwargs), [], current_device(), current_scope(), loc)
        call.outputs = [KTensor(v.type, call, i) for i, v in enumerate(outs)]
        self._calls.append(call)
        return call.outputs[0] if len(call.outputs) == 1 else tuple(call.outputs)

    def output_shape_text(self) -> str:
        shapes = {tuple(str(o.type) for o in c.outputs) for c in self._calls}
        if len(shapes) != 1:
            return "multiple" if shapes else "?"
        texts = [_keras_shape(o.type.shape) for o in self._calls[0].outputs]
        return texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"

    def device_text(self) -> str:
        devices = {c.device for c in self._calls}
        if len(devices) > 1:
            return "multiple"
        return next(iter(devices)) or "-" if devices else "-"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}'>"


def _keras_shape(shape: tuple[Dim, ...]) -> str:
    dims = [format_dim(d) if isinstance(d, int) else "None" for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


class InputLayer(Layer):
    """The source of a model input; `Input(...)` returns its symbolic output."""

    def __init__(
        self,
        shape: Sequence[int | None] | None = None,
        batch_size: int | None = None,
        dtype: str | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if shape is None:
            shape = kwargs.pop("input_shape", None)
        if shape is None:
            raise ModelError("Input needs a shape, e.g. Input(shape=(784,))")
        if isinstance(shape, int):
            shape = (shape,)
        super().__init__(name=name or unique_name("input_layer"), dtype=dtype, **kwargs)
        dims: list[Dim] = ["batch" if batch_size is None else int(batch_size)]
        for i, d in enumerate(shape):
            if d is None:
                dims.append(f"{self.name}_dim{i + 1}")
            elif isinstance(d, int | np.integer) and not isinstance(d, bool) and d > 0:
                dims.append(int(d))
            else:
                raise ModelError(f"Input shape {tuple(shape)!r} must hold positive ints or None")
        self.type = TensorType(self.dtype, tuple(dims))
        self.built = True
        call = LayerCall(self, [], {}, [], current_device(), current_scope(), _caller_loc())
        call.outputs = [KTensor(self.type, call)]
        self._calls.append(call)
        self.output = call.outputs[0]

    def call(self, b: Builder, inputs: Any, /, **kwargs: Any) -> Value:
        raise ModelError(f"InputLayer '{self.name}' cannot be called")


def Input(
    shape: Sequence[int | None] | None = None,
    batch_size: int | None = None,
    dtype: str | None = None,
    name: str | None = None,
    **kwargs: Any,
) -> KTensor:
    """A symbolic model input; the batch dimension is implicit (symbolic unless `batch_size`)."""
    return InputLayer(shape=shape, batch_size=batch_size, dtype=dtype, name=name, **kwargs).output
