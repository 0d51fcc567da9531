"""Recurrent layers: SimpleRNN, LSTM, GRU, Bidirectional, and Masking, with Keras 3 semantics.

LSTM(x[N,T,I]) = lstm(x, W, R, B): Keras' cell weights kernel[I,4u], recurrent_kernel[u,4u] and
bias[4u] (gates [i, f, c, o]) are re-laid out in the graph into ONNX's W[1,4u,I], R[1,4u,u],
B[1,8u] (gates [i, o, f, c], zero recurrent bias) with transpose/slice/concat/reshape; constant
folding turns them into frozen weights, so an optimised ONNX file holds one LSTM node and its
weights. GRU is the same with [z, r, h] (no reorder) and bias[2,3u] (reset_after) or bias[3u];
SimpleRNN with kernel[I,u]. Weights are named as Keras 3 names them: `lstm/lstm_cell/kernel`,
`bidirectional/forward_lstm/lstm_cell/kernel`; `get_weights()` order and shapes are Keras'.

Bidirectional(layer) runs a copy of `layer` forward and one backward (the backward sequence put
back in time order) and merges them (concat, sum, mul, ave, or None: both); with return_state,
the forward states then the backward ones follow the output(s).

Masks (Keras: a masked step keeps the states and repeats the previous output):
- `layer(x, mask=m)` with an explicit bool/int [N,T] tensor (non-zero = keep);
- implicitly, the mask that `x` carries: the output of `Masking`, of an Embedding with
  `mask_zero=True` (read as the `mask_zero` attribute, so it works as soon as Embedding takes
  the argument), of a return_sequences RNN that had a mask, seen through mask-preserving layers
  (Dropout, Activation, Dense, ...). Until the layer API propagates masks itself, a layer here
  finds the producer of its input (`keras_mask`), adds the tensors the mask is computed from to its
  own inputs, and recomputes the mask (a compare and a reduction; CSE merges repeats).
dropout/recurrent_dropout are accepted and do nothing at inference (training refuses non-zero
rates: recurrent dropout is not implemented); `stateful=True` is refused; `unroll`,
`implementation`, `use_cudnn` are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np

from ..errors import ModelError, ShapeError
from ..ir.builder import Builder
from ..ir.graph import Param, Value
from ..ir.types import TensorType
from ..ops.recurrent import ACTIVATIONS
from .base import KTensor, Layer, LayerCall, current_scope, flatten_tensors, name_scope

MaskFn = Callable[[Builder, list[Value]], Value]
MaskSource = tuple[list[KTensor], MaskFn]

# Layers that hand their input's mask on unchanged (Keras `supports_masking` with the default
# `compute_mask`), by class name so that layers added later in other modules count too.
MASK_PRESERVING = frozenset(
    {
        "Activation", "ActivityRegularization", "AlphaDropout", "BatchNormalization", "Dense", "Dropout",
        "ELU", "GaussianDropout", "GaussianNoise", "Identity", "LayerNormalization", "LeakyReLU", "PReLU",
        "ReLU", "SpatialDropout1D", "TimeDistributed", "UnitNormalization",
    }
)  # fmt: skip


def keras_mask(t: KTensor) -> MaskSource | None:
    """The Keras mask `t` carries: the tensors it is computed from and how, or None."""
    if getattr(t, "_keras_mask_cleared", False):
        return None  # Keras' MultiHeadAttention clears its inputs' masks once it has used them
    call = t._call
    layer = call.layer
    compute = getattr(layer, "compute_output_mask", None)
    if compute is not None:
        return compute(call, t._index)  # type: ignore[no-any-return]
    if getattr(layer, "mask_zero", False) and call.inputs:  # Embedding(mask_zero=True)
        return [call.inputs[0]], _nonzero
    if type(layer).__name__ in MASK_PRESERVING and len(call.inputs) == 1:
        return keras_mask(call.inputs[0])
    if type(layer).__name__ in MASK_MERGING and len(call.inputs) >= 2:
        masks = [keras_mask(x) for x in call.inputs]
        return None if any(m is None for m in masks) else _or_masks(masks)  # type: ignore[arg-type]
    return None


# Merging layers whose output mask is the OR of their inputs' masks (None if an input has none).
MASK_MERGING = frozenset({"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"})


def _or_masks(masks: list[MaskSource]) -> MaskSource:
    first_tensors, first_fn = masks[0]
    if all([id(t) for t in ts] == [id(t) for t in first_tensors] and fn is first_fn for ts, fn in masks):
        return masks[0]  # the same mask on every input (one Embedding's padding): OR changes nothing
    sizes = [len(ts) for ts, _ in masks]

    def either(b: Builder, vs: list[Value]) -> Value:
        out: Value | None = None
        at = 0
        for (_, fn), n in zip(masks, sizes, strict=True):
            m = b.op("cast", [fn(b, vs[at : at + n])], to="float32")
            out = m if out is None else b.op("maximum", [out, m])
            at += n
        assert out is not None
        return b.op("compare", [out, b.constant(np.asarray(0.5, "float32"))], mode="greater")

    return [t for ts, _ in masks for t in ts], either


def _nonzero(b: Builder, vs: list[Value]) -> Value:
    """bool mask = (m != 0), Keras' cast of a mask (or of token ids, for mask_zero) to bool."""
    (m,) = vs
    if m.type.dtype == "bool":
        return m
    eq = b.op("compare", [m, b.constant(np.zeros((), m.type.dtype), m.type.dtype)], mode="equal")
    # not(eq), spelled with ops every runtime has (onnxruntime's Where takes no bool operands)
    eq01 = b.op("cast", [eq], to="float32")
    return b.op("compare", [eq01, b.constant(np.asarray(0.5, "float32"))], mode="less")


def _check_activation(layer: str, what: str, name: Any) -> str:
    key = "linear" if name is None else name
    if not isinstance(key, str) or key.lower() not in ACTIVATIONS:
        raise ModelError(
            f"{layer}: {what} {name!r} is not supported in a recurrent cell (ONNX's recurrent ops "
            f"take only {', '.join(ACTIVATIONS)})"
        )
    return key.lower()


def _rate(layer: str, what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ModelError(f"{layer}: {what} must be a number in [0, 1], got {value!r}")
    return float(value)


def _regularizer(layer: Layer, identifier: Any) -> Any:
    """Checked through the layer API's regularizer parsing where there is one."""
    parse = getattr(layer, "regularizer", None)
    return parse(identifier) if parse is not None and identifier is not None else identifier


@contextmanager
def _weight_scope(path: str) -> Iterator[None]:
    """Make `path` (a/b/c) the active name scope, whatever scope is active now."""
    with ExitStack() as stack:
        for part in path.split("/") if path else []:
            stack.enter_context(name_scope(part))
        yield


class _Recurrent(Layer):
    """How the recurrent layers are called: `layer(x, initial_state=..., mask=...)` or
    `layer([x, *states])`; the inputs the call records are [x, *initial_states, *mask sources]."""

    n_states = 1
    takes_list = True
    return_sequences = False

    def __call__(
        self, inputs: Any, initial_state: Any = None, mask: Any = None, training: Any = None, **kwargs: Any
    ) -> Any:
        if kwargs:
            raise ModelError(
                f"{type(self).__name__} layer '{self.name}' got unknown call argument(s): {', '.join(kwargs)}"
            )
        x, states, source = self._gather_call(inputs, initial_state, mask)
        tensors, fn = source if source is not None else ([], None)
        return super().__call__([x, *states, *tensors], n_states=len(states), mask_fn=fn)

    def keras_call_args(self, call: LayerCall) -> tuple[list[Any], dict[str, Any]]:
        """The call as Keras records it, `layer(x, initial_state=[...], mask=m)`; a mask that
        both Keras and kcompile derive from `x` itself (Masking, Embedding(mask_zero)) is left out."""
        n = call.kwargs.get("n_states", 0)
        x, states, sources = call.inputs[0], call.inputs[1 : 1 + n], call.inputs[1 + n :]
        kwargs: dict[str, Any] = {"initial_state": list(states)} if states else {}
        implicit = keras_mask(x)
        if sources and (implicit is None or [id(t) for t in implicit[0]] != [id(t) for t in sources]):
            if len(sources) != 1:
                raise ModelError(f"layer '{self.name}': its mask cannot be saved as one Keras mask tensor")
            kwargs["mask"] = sources[0]
        return [x], kwargs

    def _gather_call(self, inputs: Any, initial_state: Any, mask: Any) -> tuple[Any, list[Any], MaskSource | None]:
        if isinstance(inputs, list | tuple):  # Keras: layer([x, h0, c0])
            items = flatten_tensors(inputs)
            x, states = items[0], items[1:]
            if initial_state is not None:
                raise ModelError(
                    f"layer '{self.name}': give the initial state in the inputs list or as initial_state, not both"
                )
        else:
            x, states = inputs, flatten_tensors(initial_state) if initial_state is not None else []
        if not isinstance(x, KTensor):
            raise ModelError(
                f"layer '{self.name}' ({type(self).__name__}) must be called on a symbolic tensor, "
                f"got {type(x).__name__}"
            )
        want = self.n_states * self._directions()
        if states and len(states) != want:
            raise ModelError(
                f"layer '{self.name}' ({type(self).__name__}) takes {want} initial state tensor(s), got {len(states)}"
            )
        if mask is not None:
            if not isinstance(mask, KTensor):
                raise ModelError(
                    f"layer '{self.name}': mask must be a symbolic tensor [batch, time], got {type(mask).__name__}"
                )
            source: MaskSource | None = ([mask], _nonzero)
        else:
            source = keras_mask(x)
        return x, list(states), source

    def _directions(self) -> int:
        return 1

    @staticmethod
    def _split(inputs: list[Value], b: Builder, kwargs: dict[str, Any]) -> tuple[Value, list[Value], Value | None]:
        """x, the initial states and the bool [N, T] mask (or None) of one recorded call."""
        n_states, mask_fn = kwargs["n_states"], kwargs["mask_fn"]
        x, states, sources = inputs[0], list(inputs[1 : 1 + n_states]), list(inputs[1 + n_states :])
        if mask_fn is None:
            return x, states, None
        m = mask_fn(b, sources)
        if m.type.rank != 2 or m.type.dtype != "bool":
            raise ShapeError(f"an RNN mask must be [batch, time], got {m.type} for an input {x.type}")
        return x, states, m

    def _outputs_with_mask(self) -> int:
        return 1

    def compute_output_mask(self, call: LayerCall, index: int) -> MaskSource | None:
        """Keras: a return_sequences RNN hands its input mask on (on the output(s), not the states)."""
        fn = call.kwargs.get("mask_fn")
        if fn is None or not self.return_sequences or index >= self._outputs_with_mask():
            return None
        return call.inputs[1 + call.kwargs["n_states"] :], fn


class _RNN(_Recurrent):
    """The shared body of SimpleRNN, LSTM and GRU. Subclasses set `kind`, `gates`, `n_states`."""

    kind = "simple_rnn"
    gates = 1

    def __init__(
        self,
        units: int,
        activation: str | None = "tanh",
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        recurrent_initializer: Any = "orthogonal",
        bias_initializer: Any = "zeros",
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        unroll: bool = False,
        zero_output_for_mask: bool = False,
        seed: int | None = None,
        kernel_regularizer: Any = None,
        recurrent_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        recurrent_constraint: Any = None,
        bias_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        cls = type(self).__name__
        # Kept for the trainer's `<weight>_regularizer` convention (they change no inference
        # number; training recurrent layers is refused for now). Constraints act only on updates.
        self.kernel_regularizer = _regularizer(self, kernel_regularizer)
        self.recurrent_kernel_regularizer = _regularizer(self, recurrent_regularizer)
        self.bias_regularizer = _regularizer(self, bias_regularizer)
        self.activity_regularizer = _regularizer(self, activity_regularizer)
        self.kernel_constraint = kernel_constraint
        self.recurrent_constraint = recurrent_constraint
        self.bias_constraint = bias_constraint
        if isinstance(units, bool) or not isinstance(units, int) or units <= 0:
            raise ModelError(f"{cls}: units must be a positive integer, got {units!r}")
        if stateful:
            raise ModelError(f"{cls}: stateful=True is not supported (kcompile compiles stateless graphs)")
        self.units = units
        self.activation = _check_activation(cls, "activation", activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.bias_initializer = bias_initializer
        self.dropout = _rate(cls, "dropout", dropout)
        self.recurrent_dropout = _rate(cls, "recurrent_dropout", recurrent_dropout)
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = False
        self.unroll = bool(unroll)
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.seed = seed

    # Keras' constructor arguments, so that Bidirectional can make copies.
    def get_config(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "activation": self.activation,
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer,
            "recurrent_initializer": self.recurrent_initializer,
            "bias_initializer": self.bias_initializer,
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "return_sequences": self.return_sequences,
            "return_state": self.return_state,
            "go_backwards": self.go_backwards,
            "unroll": self.unroll,
            "zero_output_for_mask": self.zero_output_for_mask,
            "seed": self.seed,
            "kernel_regularizer": self.kernel_regularizer,
            "recurrent_regularizer": self.recurrent_kernel_regularizer,
            "bias_regularizer": self.bias_regularizer,
            "activity_regularizer": self.activity_regularizer,
            "kernel_constraint": self.kernel_constraint,
            "recurrent_constraint": self.recurrent_constraint,
            "bias_constraint": self.bias_constraint,
            "name": self.name,
            "trainable": self.trainable,
            "dtype": self.dtype,
        }

    @property
    def cell_name(self) -> str:
        return f"{self.kind}_cell"

    # Weights -------------------------------------------------------------------------------
    def build(self, input_types: list[TensorType]) -> None:
        x = input_types[0]
        if x.rank != 3 or not isinstance(x.shape[2], int):
            raise ShapeError(
                f"{type(self).__name__} needs an input [batch, time, features] with known features, got {x}"
            )
        u, g = self.units, self.gates
        cell = self.cell_name
        self.kernel = self.add_weight(f"{cell}/kernel", (x.shape[2], g * u), self.kernel_initializer)
        self.recurrent_kernel = self.add_weight(f"{cell}/recurrent_kernel", (u, g * u), self.recurrent_initializer)
        self.bias = self.add_weight(f"{cell}/bias", self._bias_shape(), self._bias_init()) if self.use_bias else None

    def _bias_shape(self) -> tuple[int, ...]:
        return (self.gates * self.units,)

    def _bias_init(self) -> Any:
        return self.bias_initializer

    def _onnx_weights(self, b: Builder) -> tuple[Value, Value, Value]:
        """W[1,gu,I], R[1,gu,u], B[1,2gu] in ONNX's gate order, from the Keras weights."""
        gu = self.gates * self.units
        w = self._rows(b, b.op("transpose", [self.kernel], perm=(1, 0)))
        r = self._rows(b, b.op("transpose", [self.recurrent_kernel], perm=(1, 0)))
        return (
            b.op("reshape", [w], shape=(1, gu, -1)),
            b.op("reshape", [r], shape=(1, gu, self.units)),
            self._onnx_bias(b),
        )

    def _onnx_bias(self, b: Builder) -> Value:
        """[input bias, recurrent bias] as [1, 2gu]; Keras has no recurrent bias (zeros)."""
        gu = self.gates * self.units
        if self.bias is None:
            return b.constant(np.zeros((1, 2 * gu), self.dtype), self.dtype)
        zeros = b.constant(np.zeros(gu, self.dtype), self.dtype)
        return b.op("reshape", [b.op("concat", [self._rows(b, self.bias), zeros], axis=0)], shape=(1, 2 * gu))

    def _rows(self, b: Builder, v: Value) -> Value:
        """Reorder gate blocks along axis 0 from Keras' order to ONNX's (identity but for LSTM)."""
        return v

    # Calls ---------------------------------------------------------------------------------
    def call(self, b: Builder, inputs: Any, /, **kwargs: Any) -> list[Value]:
        x, states, mask = self._split(inputs, b, kwargs)
        outs = self.emit_rnn(b, x, states, mask, output_order="processed", zero_output=self.zero_output_for_mask)
        return outs if self.return_state else [outs[0]]

    def emit_rnn(
        self, b: Builder, x: Value, states: list[Value], mask: Value | None, output_order: str, zero_output: bool
    ) -> list[Value]:
        if x.type.rank != 3 or x.type.shape[2] != self.kernel.type.shape[0]:
            raise ShapeError(f"expects inputs [batch, time, {self.kernel.type.shape[0]}], got {x.type}")
        w, r, bias = self._onnx_weights(b)
        attrs: dict[str, Any] = {
            "activation": self.activation,
            "go_backwards": self.go_backwards,
            "return_sequences": self.return_sequences,
            "zero_output_for_mask": zero_output,
            "masked": mask is not None,
            "output_order": output_order,
            **self._op_attrs(),
        }
        return b.op_multi(self.kind, [x, w, r, bias, *states, *([mask] if mask is not None else [])], **attrs)

    def _op_attrs(self) -> dict[str, Any]:
        return {}


class SimpleRNN(_RNN):
    kind, gates, n_states = "simple_rnn", 1, 1


class _GatedRNN(_RNN):
    """LSTM and GRU: an RNN with a recurrent (gate) activation besides its activation."""

    def __init__(
        self,
        units: int,
        activation: str | None,
        recurrent_activation: str | None,
        use_bias: bool,
        kernel_initializer: Any,
        recurrent_initializer: Any,
        bias_initializer: Any,
        implementation: int,
        use_cudnn: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            units, activation, use_bias, kernel_initializer, recurrent_initializer, bias_initializer, **kwargs
        )
        self.recurrent_activation = _check_activation(type(self).__name__, "recurrent_activation", recurrent_activation)
        self.implementation, self.use_cudnn = implementation, use_cudnn

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "recurrent_activation": self.recurrent_activation}

    def _op_attrs(self) -> dict[str, Any]:
        return {"recurrent_activation": self.recurrent_activation}


class LSTM(_GatedRNN):
    kind, gates, n_states = "lstm", 4, 2

    def __init__(
        self,
        units: int,
        activation: str | None = "tanh",
        recurrent_activation: str | None = "sigmoid",
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        recurrent_initializer: Any = "orthogonal",
        bias_initializer: Any = "zeros",
        unit_forget_bias: bool = True,
        implementation: int = 2,
        use_cudnn: Any = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            units,
            activation,
            recurrent_activation,
            use_bias,
            kernel_initializer,
            recurrent_initializer,
            bias_initializer,
            implementation,
            use_cudnn,
            **kwargs,
        )
        self.unit_forget_bias = bool(unit_forget_bias)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}

    def _bias_init(self) -> Any:
        if not self.unit_forget_bias:
            return self.bias_initializer
        # Keras: [init(u), ones(u), init(2u)] so the forget gate starts open.
        from ..initializers import initialize

        u = self.units
        parts = [initialize(self.bias_initializer, (u,), self.dtype), np.ones(u, self.dtype)]
        parts.append(initialize(self.bias_initializer, (2 * u,), self.dtype))
        return np.concatenate(parts)

    def _rows(self, b: Builder, v: Value) -> Value:
        # Keras [i, f, c, o] -> ONNX [i, o, f, c]
        u = self.units
        blocks = [b.op("slice", [v], axes=(0,), starts=(k * u,), ends=((k + 1) * u,)) for k in range(4)]
        return b.op("concat", [blocks[0], blocks[3], blocks[1], blocks[2]], axis=0)


class GRU(_GatedRNN):
    kind, gates, n_states = "gru", 3, 1

    def __init__(
        self,
        units: int,
        activation: str | None = "tanh",
        recurrent_activation: str | None = "sigmoid",
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        recurrent_initializer: Any = "orthogonal",
        bias_initializer: Any = "zeros",
        reset_after: bool = True,
        implementation: int = 2,
        use_cudnn: Any = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            units,
            activation,
            recurrent_activation,
            use_bias,
            kernel_initializer,
            recurrent_initializer,
            bias_initializer,
            implementation,
            use_cudnn,
            **kwargs,
        )
        self.reset_after = bool(reset_after)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "reset_after": self.reset_after}

    def _bias_shape(self) -> tuple[int, ...]:
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def _onnx_bias(self, b: Builder) -> Value:
        if self.reset_after and self.bias is not None:
            # bias[2, 3u]: row 0 the input bias (ONNX Wb), row 1 the recurrent bias (Rb).
            return b.op("reshape", [self.bias], shape=(1, 6 * self.units))
        return super()._onnx_bias(b)

    def _op_attrs(self) -> dict[str, Any]:
        return {**super()._op_attrs(), "reset_after": self.reset_after}


class Bidirectional(_Recurrent):
    """Keras' Bidirectional wrapper over one of the RNN layers above."""

    def __init__(
        self,
        layer: _RNN,
        merge_mode: str | None = "concat",
        weights: Any = None,
        backward_layer: _RNN | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(layer, _RNN):
            raise ModelError(f"Bidirectional wraps a SimpleRNN, LSTM or GRU layer, got {type(layer).__name__}")
        if merge_mode not in ("concat", "sum", "mul", "ave", None):
            raise ModelError(
                f"Bidirectional merge_mode must be one of 'concat', 'sum', 'mul', 'ave', None; got {merge_mode!r}"
            )
        if layer.built:
            raise ModelError(f"Bidirectional needs a layer that has not been called yet, got '{layer.name}'")
        self.merge_mode = merge_mode
        self.forward_layer = _copy(layer, name=f"forward_{layer.name.removeprefix('forward_')}")
        if backward_layer is None:
            self.backward_layer = _copy(
                layer, name=f"backward_{layer.name.removeprefix('backward_')}", go_backwards=True
            )
        else:
            if not isinstance(backward_layer, _RNN) or backward_layer.built:
                raise ModelError("Bidirectional backward_layer must be an RNN layer that has not been called yet")
            self.backward_layer = backward_layer
        fwd, bwd = self.forward_layer, self.backward_layer
        if fwd.go_backwards == bwd.go_backwards:
            raise ModelError("Bidirectional: the forward and backward layers must differ in go_backwards")
        for attr in ("return_sequences", "return_state"):
            if getattr(fwd, attr) != getattr(bwd, attr):
                raise ModelError(f"Bidirectional: the forward and backward layers differ in {attr}")
        # Keras: with return_sequences, masked steps output zeros in both directions.
        fwd.zero_output_for_mask = bwd.zero_output_for_mask = fwd.return_sequences
        self.return_sequences, self.return_state = fwd.return_sequences, fwd.return_state
        self.n_states = fwd.n_states
        self.stateful = False
        self._initial_weights = weights

    @property
    def layer(self) -> _RNN:
        return self.forward_layer

    def _directions(self) -> int:
        return 2

    def build(self, input_types: list[TensorType]) -> None:
        # The directions' weights live under this layer's name, inside the scope active now (or,
        # when none is, the one active when the layer was made).
        outer = "" if current_scope() else self._scope_at_init
        path = f"{outer}/{self.name}" if outer else self.name
        for sub in (self.forward_layer, self.backward_layer):
            with _weight_scope(path):
                sub.build(input_types[:1])
            sub.built = True
        if self._initial_weights is not None:
            self.set_weights(self._initial_weights)
            self._initial_weights = None

    @property
    def weights(self) -> list[Param]:
        return self.forward_layer.weights + self.backward_layer.weights

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._trainable = bool(value)
        self.forward_layer.trainable = value
        self.backward_layer.trainable = value

    def call(self, b: Builder, inputs: Any, /, **kwargs: Any) -> list[Value]:
        x, states, mask = self._split(inputs, b, kwargs)
        half = len(states) // 2
        fwd, bwd = self.forward_layer, self.backward_layer
        with b.scope(fwd.name):
            y, *fs = fwd.emit_rnn(b, x, states[:half], mask, "processed", fwd.zero_output_for_mask)
        # The backward sequence comes back in time order (Keras flips it when return_sequences).
        order = "time" if self.return_sequences else "processed"
        with b.scope(bwd.name):
            y_rev, *bs = bwd.emit_rnn(b, x, states[half:], mask, order, bwd.zero_output_for_mask)
        if self.merge_mode == "concat":
            outs = [b.op("concat", [y, y_rev], axis=-1)]
        elif self.merge_mode == "sum":
            outs = [b.op("add", [y, y_rev])]
        elif self.merge_mode == "mul":
            outs = [b.op("mul", [y, y_rev])]
        elif self.merge_mode == "ave":
            outs = [b.op("div", [b.op("add", [y, y_rev]), b.constant(np.array(2.0, self.dtype), self.dtype)])]
        else:
            outs = [y, y_rev]
        return outs + fs + bs if self.return_state else outs

    def _outputs_with_mask(self) -> int:
        return 2 if self.merge_mode is None else 1

    def get_config(self) -> dict[str, Any]:
        return {"merge_mode": self.merge_mode, "layer": self.forward_layer, "backward_layer": self.backward_layer}


def _copy(layer: _RNN, **changes: Any) -> _RNN:
    config = {**layer.get_config(), **changes}
    return type(layer)(**config)


class Masking(Layer):
    """Keras Masking: y = x * any(x != mask_value, axis=-1); the RNNs after it see the mask."""

    def __init__(self, mask_value: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(mask_value, bool) or not isinstance(mask_value, int | float):
            raise ModelError(f"Masking mask_value must be a number, got {mask_value!r}")
        self.mask_value = float(mask_value)

    def _not_masked(self, b: Builder, x: Value, keepdims: bool) -> Value:
        """1.0 where some feature differs from mask_value, else 0.0 (reduced over the last axis)."""
        if x.type.rank < 2:
            raise ShapeError(f"Masking needs an input [batch, ..., features], got {x.type}")
        dt = x.type.dtype
        eq = b.op("compare", [x, b.constant(np.asarray(self.mask_value, dt), dt)], mode="equal")
        differs = b.op("where", [eq, b.constant(np.zeros((), dt), dt), b.constant(np.ones((), dt), dt)])
        return b.op("reduce_max", [differs], axes=(-1,), keepdims=keepdims)

    def call(self, b: Builder, x: Value, /, **kwargs: Any) -> Value:
        return b.op("mul", [x, self._not_masked(b, x, keepdims=True)])

    def compute_output_mask(self, call: LayerCall, index: int) -> MaskSource | None:
        def mask(b: Builder, vs: list[Value]) -> Value:
            (x,) = vs
            keep = self._not_masked(b, x, keepdims=False)
            return b.op("compare", [keep, b.constant(np.zeros((), x.type.dtype), x.type.dtype)], mode="greater")

        return list(call.inputs[:1]), mask
