"""Functional and Sequential models.

A `Model` is the recorded layer calls between its input and output tensors. `to_graph()` replays
them through one Builder into an IR Graph; calling a model on new tensors records one call of the
model as a layer, whose replay emits the inner calls again on the new inputs: the same layers,
so the same Params (model reuse shares weights, as in Keras).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import ModelError
from .ir.builder import Builder
from .ir.graph import Graph, Param, Value
from .ir.types import TensorType
from .layers.base import (
    InputLayer,
    KTensor,
    Layer,
    LayerCall,
    flatten_tensors,
    name_scope,
    note_call_outputs,
    unique_name,
)
from .training.mixin import TrainingMixin


def _as_list(x: Any, what: str) -> list[KTensor]:
    items = flatten_tensors(x)
    for t in items:
        if not isinstance(t, KTensor):
            raise ModelError(
                f"model {what} must be symbolic tensors (from kc.Input or a layer), got {type(t).__name__}"
            )
    return items


def keras_layer_order(inputs: list[KTensor], outputs: list[KTensor]) -> list[Layer]:
    """The layers between `inputs` and `outputs` as Keras' `map_graph` orders them: by depth
    (the longest path to an output; deepest first), ties in the order a depth-first walk from the
    outputs (in order, each call's inputs in order) first reaches each layer. A layer's depth is
    the largest over its calls, and a call's depth is one more than its deepest consumer's."""
    first_seen: dict[int, int] = {}
    layers: dict[int, Layer] = {}
    calls_in_order: list[LayerCall] = []  # post-order: inputs -> outputs
    finished: set[int] = set()
    stack: list[tuple[LayerCall, bool]] = [(t._call, False) for t in reversed(outputs)]
    while stack:
        call, expanded = stack.pop()
        if id(call) in finished:
            continue
        if expanded:
            finished.add(id(call))
            calls_in_order.append(call)
            continue
        first_seen.setdefault(id(call.layer), len(first_seen))
        layers[id(call.layer)] = call.layer
        stack.append((call, True))
        stack.extend((t._call, False) for t in reversed(call.inputs) if id(t._call) not in finished)
    call_depth: dict[int, int] = {}
    layer_depth: dict[int, int] = {}
    for call in reversed(calls_in_order):
        depth = max(call_depth.setdefault(id(call), 0), layer_depth.get(id(call.layer), 0))
        layer_depth[id(call.layer)] = call_depth[id(call)] = depth
        for t in call.inputs:
            call_depth[id(t._call)] = max(depth + 1, call_depth.get(id(t._call), 0))
    for t in inputs:  # inputs no output depends on still count, at depth 0
        if id(t._call.layer) not in layer_depth:
            layer_depth[id(t._call.layer)], first_seen[id(t._call.layer)] = 0, -1
            layers[id(t._call.layer)] = t._call.layer
    return sorted(layers.values(), key=lambda l: (-layer_depth[id(l)], first_seen[id(l)]))


class Model(TrainingMixin, Layer):
    """A functional model: `Model(inputs, outputs)`; callable like a layer (weights reused)."""

    takes_list = True

    def __init__(self, inputs: Any = None, outputs: Any = None, name: str | None = None, **kwargs: Any) -> None:
        base = "sequential" if isinstance(self, Sequential) else "functional"
        super().__init__(name=name or unique_name(base), **kwargs)
        self._inputs: list[KTensor] = []
        self._outputs: list[KTensor] = []
        self._order: list[LayerCall] = []
        self._single_output = True
        self._compiled: Any = None
        if inputs is not None or outputs is not None:
            if inputs is None or outputs is None:
                raise ModelError("Model needs both inputs= and outputs=")
            self._init_graph(inputs, outputs)

    def _init_graph(self, inputs: Any, outputs: Any) -> None:
        ins = _as_list(inputs, "inputs")
        outs = _as_list(outputs, "outputs")
        for t in ins:
            if not isinstance(t._call.layer, InputLayer):
                raise ModelError(f"model inputs must come from kc.Input(...); {t.origin()} is the output of a layer")
        if len({id(t) for t in ins}) != len(ins):
            raise ModelError("the same Input is listed twice among the model inputs")
        input_ids = {id(t) for t in ins}
        order: list[LayerCall] = []
        seen: set[int] = set()
        # Post-order walk from the outputs: each call after the calls producing its inputs.
        stack: list[tuple[LayerCall, bool]] = [(t._call, False) for t in reversed(outs)]
        while stack:
            call, expanded = stack.pop()
            if id(call) in seen:
                continue
            if isinstance(call.layer, InputLayer):
                if id(call.outputs[0]) not in input_ids:
                    raise ModelError(
                        f"the model's outputs depend on {call.outputs[0].origin()}, which is not among its inputs "
                        f"({', '.join(t.name for t in ins)})"
                    )
                seen.add(id(call))
                continue
            if expanded:
                seen.add(id(call))
                order.append(call)
                continue
            stack.append((call, True))
            stack.extend((t._call, False) for t in reversed(call.inputs) if id(t._call) not in seen)
        self._inputs, self._outputs, self._order = ins, outs, order
        self._single_output = not isinstance(outputs, list | tuple)
        self.built = True
        self._compiled = None
        names: dict[str, Layer] = {}
        for layer in self.layers:
            if names.setdefault(layer.name, layer) is not layer:
                raise ModelError(
                    f"the name \"{layer.name}\" is used by two layers of model '{self.name}'; "
                    "layer names must be unique"
                )

    # Structure -----------------------------------------------------------------------------
    @property
    def inputs(self) -> list[KTensor]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[KTensor]:
        return list(self._outputs)

    @property
    def input_layers(self) -> list[InputLayer]:
        return [t._call.layer for t in self._inputs]  # type: ignore[misc]

    @property
    def layers(self) -> list[Layer]:
        """Every layer, in Keras' functional order (so `get_weights()` orders weights as Keras)."""
        return keras_layer_order(self._inputs, self._outputs)

    def get_layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ModelError(f"model '{self.name}' has no layer '{name}'; it has {[l.name for l in self.layers]}")

    @property
    def weights(self) -> list[Param]:
        seen: set[int] = set()
        out: list[Param] = []
        for layer in self.layers:
            for w in layer.weights:
                if id(w) not in seen:
                    seen.add(id(w))
                    out.append(w)
        return out

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        # As Keras: freezing a model freezes every layer in it.
        self._trainable = bool(value)
        for layer in self.layers:
            layer.trainable = value
        self._compiled = None

    @property
    def uses_learning_phase(self) -> bool:
        return any(layer.uses_learning_phase for layer in self.layers)

    def set_weights(self, values: Sequence[np.ndarray]) -> None:
        super().set_weights(values)
        self._compiled = None

    # Graph ---------------------------------------------------------------------------------
    def _check_built(self) -> None:
        if not self._outputs:
            raise ModelError(f"model '{self.name}' has no inputs yet: give it an Input or call it on a tensor first")

    def build(self, input_types: list[TensorType]) -> None:
        self._check_built()

    def call(self, b: Builder, inputs: Any, /, **kwargs: Any) -> list[Value]:
        """Replay the recorded calls on `inputs` (one Value per model input)."""
        self._check_built()
        values = inputs if isinstance(inputs, list) else [inputs]
        if len(values) != len(self._inputs):
            raise ModelError(f"model '{self.name}' takes {len(self._inputs)} input(s), got {len(values)}")
        env: dict[int, Value] = {}
        for t, v in zip(self._inputs, values, strict=True):
            if v.type.rank != t.type.rank or any(
                isinstance(p, int) and isinstance(q, int) and p != q
                for p, q in zip(v.type.shape, t.type.shape, strict=True)
            ):
                from .errors import ShapeError

                raise ShapeError(f"input '{t.name}' expects {t.type}, got {v.type}")
            env[id(t)] = v
        for call in self._order:
            ins = [env[id(t)] for t in call.inputs]
            with b.device(call.device), b.loc(call.loc), b.scope(call.scope):
                outs = call.layer.emit(b, ins, call.kwargs)
            note_call_outputs(call.layer, outs)
            for t, v in zip(call.outputs, outs, strict=True):
                env[id(t)] = v
        return [env[id(t)] for t in self._outputs]

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        out = super().__call__(inputs, **kwargs)
        return out

    def to_graph(self) -> Graph:
        """The model as an IR graph: one input per model input, outputs named after their layers."""
        self._check_built()
        b = Builder(Graph(self.name))
        values = [b.input(t._call.layer.name, t.type) for t in self._inputs]
        outs = self.call(b, values)
        graph = b.graph
        final: list[Value] = []
        for t, v in zip(self._outputs, outs, strict=True):
            if v.producer is None or any(v is o for o in final):
                v = b.op("identity", [v])
            graph._names.discard(v.name)
            v.name = graph.fresh_name(t.name)
            final.append(v)
        graph.outputs = final
        graph.verify()
        return graph

    # Reporting -----------------------------------------------------------------------------
    def count_params(self) -> int:
        return sum(w.data.size for w in self.weights)

    def summary(self, print_fn: Any = print, line_length: int = 96) -> None:
        """A Keras-style table: layer (type), output shape, parameter count, device."""
        print_fn(self.summary_text(line_length))

    def summary_text(self, line_length: int = 96) -> str:
        cols = [0.38, 0.66, 0.80, 1.0]
        widths = [int(line_length * c) for c in cols]
        widths = [widths[0]] + [widths[i] - widths[i - 1] for i in range(1, len(widths))]

        def row(cells: list[str]) -> str:
            out = ""
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True)):
                text = cell if len(cell) < w else cell[: w - 2] + "…"
                out += text.rjust(w - 1) + " " if i == 2 else text.ljust(w)
            return out.rstrip()

        lines = [f'Model: "{self.name}"', "=" * line_length]
        lines.append(row(["Layer (type)", "Output Shape", "Param #", "Device"]))
        lines.append("=" * line_length)
        for layer in self.summary_layers():
            lines.append(
                row(
                    [
                        f"{layer.name} ({type(layer).__name__})",
                        layer.output_shape_text() if not isinstance(layer, InputLayer) else _shape(layer.type),
                        f"{layer.count_params():,}",
                        layer.device_text(),
                    ]
                )
            )
        lines.append("=" * line_length)
        total = self.count_params()
        trainable = sum(w.data.size for w in self.weights if w.trainable)
        lines.append(f" Total params: {total:,} ({_bytes(4 * total)})")
        lines.append(f" Trainable params: {trainable:,} ({_bytes(4 * trainable)})")
        lines.append(f" Non-trainable params: {total - trainable:,} ({_bytes(4 * (total - trainable))})")
        return "\n".join(lines)

    def summary_layers(self) -> list[Layer]:
        return self.layers

    # Inference -----------------------------------------------------------------------------
    def compiled(self) -> Any:
        """The inference-compiled form (learning phase 0), built once and cached."""
        if self._compiled is None:
            from .api import compile as compile_model

            self._compiled = compile_model(self)
        return self._compiled

    def predict(self, x: Any, batch_size: int = 32, verbose: int = 0) -> Any:
        return self.compiled().predict(x, batch_size=batch_size)

    def save(self, filepath: Any, overwrite: bool = True) -> None:
        """The whole model as a Keras 3 `.keras` archive: structure, weights and, once compiled,
        the compile settings and optimizer state (`kc.load` resumes training exactly)."""
        from .saving import save_model

        save_model(self, filepath, overwrite=overwrite)


def _shape(t: TensorType) -> str:
    dims = ["None" if isinstance(d, str) else str(d) for d in t.shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


class Sequential(Model):
    """A linear stack of layers. With an `Input` first (or `input_shape=` on the first layer) it is
    built at once; otherwise on its first call."""

    def __init__(self, layers: Sequence[Any] | None = None, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self._stack: list[Layer] = []
        self._input: KTensor | None = None
        for item in layers or []:
            self.add(item, rebuild=False)
        self._rebuild()

    def add(self, layer: Any, rebuild: bool = True) -> None:
        if isinstance(layer, KTensor):
            if self._input is not None or self._stack or not isinstance(layer._call.layer, InputLayer):
                raise ModelError("a Sequential model takes an Input only as its first element")
            self._input = layer
        elif isinstance(layer, InputLayer):
            if self._input is not None or self._stack:
                raise ModelError("a Sequential model takes an InputLayer only as its first element")
            self._input = layer.output
        elif isinstance(layer, Layer):
            if any(layer is l for l in self._stack):
                raise ModelError(f"layer '{layer.name}' is already in Sequential model '{self.name}'")
            self._stack.append(layer)
        else:
            raise ModelError(f"Sequential takes layers, got {type(layer).__name__}")
        if rebuild:
            self._rebuild()

    def pop(self) -> Layer:
        if not self._stack:
            raise ModelError(f"Sequential model '{self.name}' has no layers to pop")
        layer = self._stack.pop()
        self._rebuild()
        return layer

    def _rebuild(self) -> None:
        if self._input is None and self._stack and self._stack[0]._input_shape is not None:
            first = self._stack[0]
            from .layers.base import Input

            self._input = Input(shape=first._input_shape, batch_size=first._batch_size, dtype=first.dtype)
        if self._input is None or not self._stack:
            return
        x: Any = self._input
        # Keras builds a Sequential's layers inside the model's name scope: `mlp/dense/kernel`.
        with name_scope(self.name):
            for layer in self._stack:
                x = layer(x)
        self._init_graph(self._input, x)

    @property
    def layers(self) -> list[Layer]:
        return list(self._stack)

    def summary_layers(self) -> list[Layer]:
        return self.layers

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        if not self._outputs:
            tensors = flatten_tensors(inputs)
            if len(tensors) != 1 or not isinstance(tensors[0], KTensor):
                raise ModelError(f"Sequential model '{self.name}' takes one symbolic tensor")
            from .layers.base import Input

            shape = tensors[0].shape[1:]
            self._input = Input(shape=shape, dtype=tensors[0].dtype)
            self._rebuild()
        return super().__call__(inputs, **kwargs)
