"""Attention layers with Keras 3.15 semantics: MultiHeadAttention, Attention, AdditiveAttention.

MultiHeadAttention(query[B, T, dim], value[B, S, dim], key=value):
    q = EinsumDense("abc,cde->abde")(query) * 1/sqrt(key_dim)      [B, T, N, key_dim]
    k, v = the `key` and `value` projections                        [B, S, N, key_dim / value_dim]
    p = masked softmax(einsum("aecd,abcd->acbe", k, q))             [B, N, T, S]
    y = EinsumDense("abcd,cde->abe")(einsum("acbe,aecd->abcd", p, v))
Every einsum lowers to transpose/reshape/matmul (`einsum_dense.emit_einsum`), so onnxruntime sees
MatMul and Softmax; the 1/sqrt(key_dim) scale folds into the query kernel at -O1 and up. Other
ranks and `attention_axes` follow Keras' generated equations; softmax over several attention axes
runs over them merged into one.

Masks (bool, True = attend), ANDed as Keras does: the query's and value's (and key's) implicit
masks (Embedding(mask_zero=True), Masking, through mask-preserving layers: `keras_mask`) or the
explicit `value_mask`/`key_mask`, `attention_mask`, the causal mask (row >= column, built from the
sequence positions; a constant when the lengths are static) and the sliding window. As in Keras
3.15.1, an explicit `query_mask` argument is ignored (the query mask is the query tensor's own),
the output carries the query mask, and the call clears the masks of its query, value and key
tensors for the attention layers called on them afterwards (Keras sets them to None in place).
Keras takes one of two softmax paths, and so does this layer:
- with no dropout, no returned scores and a rank-3 query (Keras' `dot_product_attention` path),
  masked scores are set to -0.7 * 3.38953e38: a row with every position masked averages all
  values uniformly;
- otherwise (Keras' `Softmax(mask=...)` path), masked scores are set to -1e9 and masked
  probabilities to 0: a fully masked row gives zeros.
Dropout acts on the probabilities while training and is the identity at inference.

Attention([query, value(, key)]): scores = query @ key^T (* scale) ("dot") or
concat_score_weight * sum(tanh(scale * (query + key)), -1) ("concat"); AdditiveAttention:
sum(scale * tanh(query + key), -1). Masked scores become `score - 1e9`, the softmax weights
multiply the value, and rows where the query mask is False become 0.
"""

from __future__ import annotations

import math
import string
from typing import Any

import numpy as np

from ..errors import ModelError, ShapeError
from ..initializers import rng
from ..ir.builder import Builder
from ..ir.graph import Param, Value
from ..ir.types import TensorType
from .base import KTensor, Layer, LayerCall, current_scope
from .einsum_dense import EinsumDense, emit_einsum
from .recurrent import MaskFn, MaskSource, _nonzero, _weight_scope, keras_mask

# Keras' torch `dot_product_attention` additive mask, and the Softmax layer's masked value.
SDPA_MASKED = float(np.float32(-0.7 * 3.38953e38))
SOFTMAX_MASKED = -1e9


# Mask and index helpers ----------------------------------------------------------------------
def _f32(b: Builder, value: float) -> Value:
    return b.constant(np.asarray(value, "float32"))


def _insert_axis(b: Builder, x: Value, pos: int) -> Value:
    """x with a new unit axis at `pos` (symbolic dims kept: append a 1, then transpose it in)."""
    r = x.type.rank
    pos = pos % (r + 1)
    y = b.op("reshape", [x], shape=(0,) * r + (1,))
    if pos == r:
        return y
    perm = list(range(r))
    perm.insert(pos, r)
    return b.op("transpose", [y], perm=tuple(perm))


def _as_float(b: Builder, m: Value) -> Value:
    return m if m.type.dtype == "float32" else b.op("cast", [m], to="float32")


def _index_column(b: Builder, x: Value, axis: int) -> Value:
    """float32 [n, 1] holding 0, 1, ..., n - 1, for n = x.shape[axis] (static or symbolic).

    A symbolic n has no iota op to count with, so the positions are read off an identity matrix:
    [1 | 0_{n x n}] ([n, n + 1]) read as [n + 1, n] is the identity over a zero row, whose
    column-wise argmax counts 0..n-1. The shapes come from `x` (its values are never used).
    """
    axis = axis % x.type.rank
    n = x.type.shape[axis]
    if isinstance(n, int):
        return b.constant(np.arange(n, dtype="float32").reshape(n, 1))
    others = tuple(i for i in range(x.type.rank) if i != axis)
    col = b.op("reshape", [b.op("reduce_max", [x], axes=others, keepdims=False)], shape=(0, 1))  # [n, 1]
    ones = b.op("expand_like", [_f32(b, 1.0), col])  # [n, 1]
    zeros = b.op("expand_like", [b.op("expand_like", [_f32(b, 0.0), col]), b.op("transpose", [col], perm=(1, 0))])
    m = b.op("concat", [ones, zeros], axis=1)  # [n, n + 1]
    eye = b.op("reshape_like", [m, b.op("transpose", [m], perm=(1, 0))])  # [n + 1, n]
    idx = b.op("argmax", [eye], axis=0, keepdims=True)  # [1, n]
    return b.op("transpose", [b.op("cast", [idx], to="float32")], perm=(1, 0))


def _positions(b: Builder, q: Value, q_axis: int, v: Value, v_axis: int) -> tuple[Value, Value]:
    """Row positions [T, 1] of q's axis and column positions [1, S] of v's axis."""
    rows = _index_column(b, q, q_axis)
    cols = b.op("transpose", [_index_column(b, v, v_axis)], perm=(1, 0))
    return rows, cols


def _causal(b: Builder, q: Value, q_axis: int, v: Value, v_axis: int) -> Value:
    """[T, S], true where column <= row (Keras' cumsum(ones) row >= column index)."""
    t, s = q.type.shape[q_axis], v.type.shape[v_axis]
    if isinstance(t, int) and isinstance(s, int):
        return b.constant(np.arange(t)[:, None] >= np.arange(s)[None, :], "bool")
    rows, cols = _positions(b, q, q_axis, v, v_axis)
    return b.op("compare", [rows, cols], mode="greater_equal")


def _band(b: Builder, q: Value, v: Value, window: int) -> Value:
    """[T, S], true where |row - column| < window (MultiHeadAttention's sliding window)."""
    t, s = q.type.shape[1], v.type.shape[1]
    if isinstance(t, int) and isinstance(s, int):
        return b.constant(np.abs(np.arange(t)[:, None] - np.arange(s)[None, :]) < window, "bool")
    rows, cols = _positions(b, q, 1, v, 1)
    dist = b.op("abs", [b.op("sub", [rows, cols])])
    return b.op("compare", [dist, _f32(b, float(window))], mode="less")


def _and(b: Builder, a: Value | None, m: Value) -> Value:
    """a AND m with broadcasting (a None: m). Masks are bool until two meet: then float 0/1
    multiplied (onnxruntime has no broadcasting And over all the shapes met here)."""
    return m if a is None else b.op("mul", [_as_float(b, a), _as_float(b, m)])


def _keep(b: Builder, m: Value) -> Value:
    """The bool form of a mask from `_and`."""
    return m if m.type.dtype == "bool" else b.op("compare", [m, _f32(b, 0.5)], mode="greater")


def _mask_of(t: KTensor) -> MaskSource | None:
    """The Keras mask `t` carries, unless a MultiHeadAttention call cleared it (see `_clear_masks`)."""
    return None if getattr(t, "_keras_mask_cleared", False) else keras_mask(t)


def _clear_masks(tensors: list[Any]) -> None:
    """Keras 3.15.1's MultiHeadAttention sets its query's, value's and key's masks to None in place
    (`backend.set_keras_mask(query, None)`, ...): the layers called on those tensors afterwards
    see no mask. The attention layers here honour that through `_mask_of`."""
    for t in tensors:
        if isinstance(t, KTensor):
            t._keras_mask_cleared = True  # type: ignore[attr-defined]


def _explicit_mask(layer: Layer, what: str, t: Any) -> MaskSource:
    if not isinstance(t, KTensor):
        raise ModelError(f"layer '{layer.name}': {what} must be a symbolic tensor, got {type(t).__name__}")
    return [t], _nonzero


def _pack(
    slots: list[tuple[str, MaskSource | None]],
) -> tuple[list[KTensor], tuple[tuple[str, int, MaskFn | None], ...]]:
    """Mask sources as extra call inputs, and the layout to find them again on replay."""
    tensors: list[KTensor] = []
    layout: list[tuple[str, int, MaskFn | None]] = []
    for name, source in slots:
        if source is None:
            layout.append((name, 0, None))
        else:
            tensors += source[0]
            layout.append((name, len(source[0]), source[1]))
    return tensors, tuple(layout)


def _unpack(b: Builder, inputs: list[Value], start: int, layout: Any) -> dict[str, Value]:
    """The bool masks of one recorded call, by slot name."""
    masks: dict[str, Value] = {}
    i = start
    for name, n, fn in layout:
        if n:
            masks[name] = fn(b, inputs[i : i + n])
            i += n
    return masks


def _slot_source(call: LayerCall, start: int, slot: str) -> MaskSource | None:
    i = start
    for name, n, fn in call.kwargs["masks"]:
        if name == slot and n:
            return call.inputs[i : i + n], fn
        i += n
    return None


def _rate(layer: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ModelError(f"{layer}: dropout must be a number in [0, 1], got {value!r}")
    return float(value)


# MultiHeadAttention ----------------------------------------------------------------------------
def _proj_equation(free_dims: int, bound_dims: int, output_dims: int) -> tuple[str, str, int]:
    """Keras' `_build_proj_equation`: equation, bias axes and output rank of a projection."""
    letters = string.ascii_lowercase
    inp = letters[:free_dims]
    out = inp
    inp += letters[free_dims : free_dims + bound_dims]
    kernel = letters[free_dims : free_dims + bound_dims]
    tail = letters[free_dims + bound_dims : free_dims + bound_dims + output_dims]
    return f"{inp},{kernel + tail}->{out + tail}", tail, len(out + tail)


def _attention_equations(rank: int, attn_axes: tuple[int, ...]) -> tuple[str, str, int]:
    """Keras' `_build_attention_equation`: the query-key product, the combination, and the rank
    of the scores."""
    letters = string.ascii_lowercase
    target = letters[:rank]
    batch_dims = tuple(i for i in range(rank) if i not in attn_axes + (rank - 1,))
    offset = rank
    source = ""
    for i in range(rank):
        if i in batch_dims or i == rank - 1:
            source += target[i]
        else:
            source += letters[offset]
            offset += 1
    product = "".join([target[i] for i in batch_dims] + [target[i] for i in attn_axes] + [source[i] for i in attn_axes])
    return f"{source},{target}->{product}", f"{product},{source}->{target}", len(product)


def _output_shape(rank: int, known: list[Any]) -> tuple[Any, ...]:
    return tuple([None] * (rank - len(known)) + list(known))


def _positive(layer: str, what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelError(f"{layer}: {what} must be a positive integer, got {value!r}")
    return value


class MultiHeadAttention(Layer):
    """Keras MultiHeadAttention; called as `mha(query, value, key=None, ...)` (see the module doc)."""

    takes_list = True

    def __init__(
        self,
        num_heads: int,
        key_dim: int,
        value_dim: int | None = None,
        dropout: float = 0.0,
        use_bias: bool = True,
        output_shape: Any = None,
        attention_axes: Any = None,
        sliding_window: int | None = None,
        flash_attention: Any = None,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        use_gate: bool = False,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        cls = "MultiHeadAttention"
        self.num_heads = _positive(cls, "num_heads", num_heads)
        self.key_dim = _positive(cls, "key_dim", key_dim)
        self.value_dim = _positive(cls, "value_dim", value_dim) if value_dim else self.key_dim
        self.dropout = _rate(cls, dropout)
        self.use_bias = bool(use_bias)
        self.use_gate = bool(use_gate)
        if output_shape:
            output_shape = (output_shape,) if isinstance(output_shape, int) else tuple(output_shape)
            for d in output_shape:
                _positive(cls, "output_shape entries", d)
        self._output_shape: tuple[int, ...] | None = output_shape or None
        if isinstance(attention_axes, int):
            attention_axes = (attention_axes,)
        elif attention_axes is not None and not isinstance(attention_axes, list | tuple):
            raise ModelError(f"{cls}: attention_axes must be an int, list or tuple, got {attention_axes!r}")
        self.attention_axes = tuple(attention_axes) if attention_axes is not None else None
        if sliding_window is not None:
            _positive(cls, "sliding_window", sliding_window)
        self.sliding_window = sliding_window
        self.flash_attention = flash_attention  # a kernel choice in Keras: no effect on the numbers
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = self.regularizer(kernel_regularizer)
        self.bias_regularizer = self.regularizer(bias_regularizer)
        self.activity_regularizer = self.regularizer(activity_regularizer)
        self.kernel_constraint = kernel_constraint
        self.bias_constraint = bias_constraint
        self.seed = int(seed) if seed is not None else int(rng().integers(0, 2**31 - 1))
        self.phase_dependent = self.dropout > 0.0
        self._sublayers: list[EinsumDense] = []

    # Weights -------------------------------------------------------------------------------
    def _dense(self, equation: str, shape: tuple[Any, ...], bias_axes: str, name: str, **kw: Any) -> EinsumDense:
        return EinsumDense(
            equation,
            output_shape=shape,
            bias_axes=bias_axes if self.use_bias else None,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            name=name,
            dtype=self.dtype,
            **kw,
        )

    def build_for(self, query: TensorType, value: TensorType, key: TensorType | None) -> None:
        key = value if key is None else key
        if query.rank < 3 or value.rank < 3 or key.rank < 3:
            raise ShapeError(
                f"MultiHeadAttention needs query, value and key of rank >= 3 ([batch, ..., features]), "
                f"got {query}, {value}, {key}"
            )
        if value.shape[1:-1] != key.shape[1:-1]:
            raise ShapeError(f"value and key must agree on every dimension but the last, got {value} and {key}")
        n, kd, vd = self.num_heads, self.key_dim, self.value_dim
        eq, bias, rank = _proj_equation(query.rank - 1, 1, 2)
        self._query_dense = self._dense(eq, _output_shape(rank - 1, [n, kd]), bias, "query")
        eq_k, bias_k, rank_k = _proj_equation(key.rank - 1, 1, 2)
        self._key_dense = self._dense(eq_k, _output_shape(rank_k - 1, [n, kd]), bias_k, "key")
        subs: list[tuple[EinsumDense, TensorType]] = [(self._query_dense, query), (self._key_dense, key)]
        self._gate_dense: EinsumDense | None = None
        if self.use_gate:
            self._gate_dense = self._dense(eq, _output_shape(rank - 1, [n, vd]), bias, "gate", activation="sigmoid")
            subs.append((self._gate_dense, query))
        eq_v, bias_v, rank_v = _proj_equation(value.rank - 1, 1, 2)
        self._value_dense = self._dense(eq_v, _output_shape(rank_v - 1, [n, vd]), bias_v, "value")
        subs.append((self._value_dense, value))
        # Attention over every axis but batch, heads and features unless attention_axes says.
        if self.attention_axes is None:
            self.attention_axes = tuple(range(1, rank - 2))
        else:
            self.attention_axes = tuple(a if a >= 0 else (rank - 1) + a for a in self.attention_axes)
        if any(not 0 < a < rank - 2 for a in self.attention_axes):
            raise ModelError(f"MultiHeadAttention: attention_axes {self.attention_axes} do not fit a query {query}")
        self._dot_equation, self._combine_equation, scores_rank = _attention_equations(rank, self.attention_axes)
        self._norm_axes = tuple(range(scores_rank - len(self.attention_axes), scores_rank))
        out = self._output_shape or (query.shape[-1],)
        eq_o, bias_o, rank_o = _proj_equation(query.rank - 1, 2, len(out))
        self._output_dense = self._dense(eq_o, _output_shape(rank_o - 1, list(out)), bias_o, "attention_output")
        proj = TensorType(query.dtype, (*query.shape[:-1], n, vd))
        subs.append((self._output_dense, proj))
        prefix = current_scope() or self._scope_at_init
        path = f"{prefix}/{self.name}" if prefix else self.name
        for sub, t in subs:
            with _weight_scope(path):
                sub.build([t])
            sub.built = True
        self._sublayers = [s for s, _ in subs]
        self.built = True

    @property
    def weights(self) -> list[Param]:
        return [w for sub in self._sublayers for w in sub.weights]

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._trainable = bool(value)
        for sub in self._sublayers:
            sub.trainable = value

    @property
    def query_dense(self) -> EinsumDense:
        return self._query_dense

    @property
    def key_dense(self) -> EinsumDense:
        return self._key_dense

    @property
    def value_dense(self) -> EinsumDense:
        return self._value_dense

    @property
    def output_dense(self) -> EinsumDense:
        return self._output_dense

    # Calls ---------------------------------------------------------------------------------
    def __call__(  # type: ignore[override]
        self,
        query: Any,
        value: Any = None,
        key: Any = None,
        query_mask: Any = None,
        value_mask: Any = None,
        key_mask: Any = None,
        attention_mask: Any = None,
        return_attention_scores: bool = False,
        training: Any = None,
        use_causal_mask: bool = False,
        **kwargs: Any,
    ) -> Any:
        if kwargs:
            raise ModelError(
                f"MultiHeadAttention layer '{self.name}' got unknown call argument(s): {', '.join(kwargs)}"
            )
        if value is None and isinstance(query, list | tuple) and 2 <= len(query) <= 3 and key is None:
            query, value, key = (*query, None)[:3]  # mha([query, value(, key)]), as the .k language calls
        if value is None:
            raise ModelError(
                f"MultiHeadAttention layer '{self.name}' needs a query and a value: mha(query, value), "
                "mha(x, x) for self-attention"
            )
        for what, t in (("query", query), ("value", value), ("key", key)):
            if t is not None and not isinstance(t, KTensor):
                raise ModelError(
                    f"MultiHeadAttention layer '{self.name}': {what} must be a symbolic tensor, got {type(t).__name__}"
                )
        if not self.built:
            self.build_for(query.type, value.type, key.type if key is not None else None)
        # Keras 3.15 replaces an explicit query_mask by the query's own mask.
        slots: list[tuple[str, MaskSource | None]] = [
            ("query", _mask_of(query)),
            ("value", _explicit_mask(self, "value_mask", value_mask) if value_mask is not None else _mask_of(value)),
        ]
        if key is not None:
            slots.append(("key", _explicit_mask(self, "key_mask", key_mask) if key_mask is not None else _mask_of(key)))
        if attention_mask is not None:
            slots.append(("attention", _explicit_mask(self, "attention_mask", attention_mask)))
        tensors, layout = _pack(slots)
        main = [query, value] + ([key] if key is not None else [])
        explicit = tuple(
            n for n, m in (("value", value_mask), ("key", key_mask), ("attention", attention_mask)) if m is not None
        )
        out = super().__call__(
            main + tensors,
            n_main=len(main),
            masks=layout,
            explicit=explicit,
            return_attention_scores=bool(return_attention_scores),
            use_causal_mask=bool(use_causal_mask),
        )
        _clear_masks(main)
        return out

    def keras_call_args(self, call: LayerCall) -> tuple[list[Any], dict[str, Any]]:
        """The call as Keras records it: `mha(query, value, key=..., value_mask=..., ...)`; masks
        Keras derives from the tensors themselves are left out."""
        n_main, k = call.kwargs["n_main"], call.kwargs
        kwargs: dict[str, Any] = {"key": call.inputs[2]} if n_main > 2 else {}
        for slot in k["explicit"]:
            source = _slot_source(call, n_main, slot)
            assert source is not None
            kwargs[f"{slot}_mask"] = source[0][0]
        kwargs.update(return_attention_scores=k["return_attention_scores"], use_causal_mask=k["use_causal_mask"])
        return [call.inputs[0], call.inputs[1]], kwargs

    def compute_output_mask(self, call: LayerCall, index: int) -> MaskSource | None:
        """Keras sets the query's mask on the attention output (not on the scores)."""
        return _slot_source(call, call.kwargs["n_main"], "query") if index == 0 else None

    def _attention_mask(self, b: Builder, q: Value, v: Value, masks: dict[str, Value], causal: bool) -> Value | None:
        """[B, T, S] (or broadcastable to it; bool or float 0/1): where a query position may attend
        to a key position. Keras' [1, T, S] causal and window masks stay [T, S] (broadcasting)."""
        mask: Value | None = None
        for name, axis in (("query", -1), ("value", -2), ("key", -2)):
            if name in masks:
                m = masks[name]
                if m.type.rank != q.type.rank - 1:
                    raise ShapeError(f"a {name} mask must be [batch, positions], got {m.type} for the {name}")
                mask = _and(b, mask, _insert_axis(b, m, axis))
        for fn in (lambda: _causal(b, q, 1, v, 1) if causal else None, lambda: self._window(b, q, v)):
            m2 = fn()
            if m2 is not None:
                mask = _and(b, mask, m2)
        if "attention" in masks:
            mask = _and(b, mask, masks["attention"]) if mask is not None else masks["attention"]
        return mask

    def _window(self, b: Builder, q: Value, v: Value) -> Value | None:
        return _band(b, q, v, self.sliding_window) if self.sliding_window is not None else None

    def _softmax(self, b: Builder, s: Value) -> Value:
        axes = self._norm_axes
        if len(axes) == 1:
            return b.op("softmax", [s], axis=axes[0])
        merged = b.op("reshape", [s], shape=(0,) * (s.type.rank - len(axes)) + (-1,))
        return b.op("reshape_like", [b.op("softmax", [merged], axis=-1), s])

    def call(self, b: Builder, inputs: Any, /, **kwargs: Any) -> Any:
        n_main = kwargs["n_main"]
        query, value = inputs[0], inputs[1]
        key = inputs[2] if n_main > 2 else value
        masks = _unpack(b, inputs, n_main, kwargs["masks"])
        with_scores = kwargs["return_attention_scores"]
        mask = self._attention_mask(b, query, value, masks, kwargs["use_causal_mask"])

        def project(sub: EinsumDense, x: Value) -> Value:
            return sub.emit(b, [x], {})[0]

        gate = project(self._gate_dense, query) if self._gate_dense is not None else None
        # (x @ W + b) / sqrt(key_dim) as x @ (W / sqrt(key_dim)) + b / sqrt(key_dim): constant
        # folding freezes the scaled weights, so no multiply is left at run time.
        q = self._query_dense.emit_scaled(b, query, 1.0 / math.sqrt(float(self.key_dim)))
        k = project(self._key_dense, key)
        v = project(self._value_dense, value)
        scores = emit_einsum(b, self._dot_equation, k, q)
        sdpa = self.dropout == 0.0 and not with_scores and q.type.rank == 4
        if mask is not None:
            # Keras expands the mask at the heads axis until it has the scores' rank; a mask with
            # no dims besides the attention ones broadcasts as it is.
            n_attn = 2 * len(self.attention_axes or ())
            while n_attn < mask.type.rank < scores.type.rank:
                mask = _insert_axis(b, mask, -n_attn - 1)
            keep = _keep(b, mask)
            fill = SDPA_MASKED if sdpa else SOFTMAX_MASKED
            p = self._softmax(b, b.op("where", [keep, scores, _f32(b, fill)]))
            if not sdpa:
                p = b.op("where", [keep, p, _f32(b, 0.0)])
        else:
            p = self._softmax(b, scores)
        attn = p
        if self.dropout > 0.0:
            attn = b.op("dropout", [p, b.learning_phase()], rate=self.dropout, seed=self.seed)
        y = emit_einsum(b, self._combine_equation, attn, v)
        if gate is not None:
            y = b.op("mul", [y, gate])
        y = project(self._output_dense, y)
        return [y, p] if with_scores else y


# Attention, AdditiveAttention ----------------------------------------------------------------
class Attention(Layer):
    """Keras Attention (Luong-style); called `layer([query, value(, key)], mask=[qm, vm], ...)`."""

    takes_list = True

    def __init__(
        self,
        use_scale: bool = False,
        score_mode: str = "dot",
        dropout: float = 0.0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if score_mode not in ("dot", "concat"):
            raise ModelError(f"{type(self).__name__}: score_mode must be 'dot' or 'concat', got {score_mode!r}")
        self.use_scale = bool(use_scale)
        self.score_mode = score_mode
        self.dropout = _rate(type(self).__name__, dropout)
        self.seed = int(seed) if seed is not None else int(rng().integers(0, 2**31 - 1))
        self.phase_dependent = self.dropout > 0.0

    def build(self, input_types: list[TensorType]) -> None:
        self.scale = self.add_weight("scale", (), "ones") if self.use_scale else None
        self.concat_score_weight = (
            self.add_weight("concat_score_weight", (), "ones") if self.score_mode == "concat" else None
        )

    def __call__(  # type: ignore[override]
        self,
        inputs: Any,
        mask: Any = None,
        training: Any = None,
        return_attention_scores: bool = False,
        use_causal_mask: bool = False,
        **kwargs: Any,
    ) -> Any:
        cls = type(self).__name__
        if kwargs:
            raise ModelError(f"{cls} layer '{self.name}' got unknown call argument(s): {', '.join(kwargs)}")
        if not isinstance(inputs, list | tuple) or not 2 <= len(inputs) <= 3:
            raise ModelError(
                f"{cls} layer '{self.name}' must be called on a list [query, value] or [query, value, key]"
            )
        for t in inputs:
            if not isinstance(t, KTensor):
                raise ModelError(
                    f"{cls} layer '{self.name}' must be called on symbolic tensors, got {type(t).__name__}"
                )
        main = list(inputs)
        slots: list[tuple[str, MaskSource | None]]
        if mask is None:  # Keras fills `mask` from the inputs' own masks
            slots = [("query", _mask_of(main[0])), ("value", _mask_of(main[1]))]
        else:
            if not isinstance(mask, list | tuple) or not 2 <= len(mask) <= 3:
                raise ModelError(f"{cls} layer '{self.name}': mask must be a list [query_mask, value_mask]")
            slots = [
                (name, _explicit_mask(self, f"{name} mask", m) if m is not None else None)
                for name, m in zip(("query", "value"), mask[:2], strict=True)
            ]
        tensors, layout = _pack(slots)
        return super().__call__(
            main + tensors,
            n_main=len(main),
            masks=layout,
            explicit=("query", "value") if mask is not None else (),
            return_attention_scores=bool(return_attention_scores),
            use_causal_mask=bool(use_causal_mask),
        )

    def keras_call_args(self, call: LayerCall) -> tuple[list[Any], dict[str, Any]]:
        """The call as Keras records it: `layer([query, value(, key)], mask=[qm, vm], ...)`."""
        n_main, k = call.kwargs["n_main"], call.kwargs
        kwargs: dict[str, Any] = {}
        if k["explicit"]:
            sources = [_slot_source(call, n_main, slot) for slot in k["explicit"]]
            kwargs["mask"] = [s[0][0] if s is not None else None for s in sources]
        kwargs.update(return_attention_scores=k["return_attention_scores"], use_causal_mask=k["use_causal_mask"])
        return [list(call.inputs[:n_main])], kwargs

    def compute_output_mask(self, call: LayerCall, index: int) -> MaskSource | None:
        """Keras: the output carries the query mask."""
        return _slot_source(call, call.kwargs["n_main"], "query") if index == 0 else None

    def _scores(self, b: Builder, q: Value, k: Value) -> Value:
        if self.score_mode == "dot":
            r = k.type.rank
            s = b.op("matmul", [q, b.op("transpose", [k], perm=(*range(r - 2), r - 1, r - 2))])
            return b.op("mul", [s, self.scale]) if self.scale is not None else s
        t = b.op("add", [_insert_axis(b, q, -2), _insert_axis(b, k, -3)])
        if self.scale is not None:
            t = b.op("mul", [self.scale, t])
        assert self.concat_score_weight is not None
        return b.op("mul", [self.concat_score_weight, b.op("reduce_sum", [b.op("tanh", [t])], axes=(-1,))])

    def call(self, b: Builder, inputs: Any, /, **kwargs: Any) -> Any:
        n_main = kwargs["n_main"]
        q, v = inputs[0], inputs[1]
        k = inputs[2] if n_main > 2 else v
        if q.type.rank < 3 or v.type.rank != q.type.rank or k.type.rank != q.type.rank:
            raise ShapeError(f"expects query, value and key [batch, steps, dim] of one rank, got {q.type}, {v.type}")
        masks = _unpack(b, inputs, n_main, kwargs["masks"])
        scores = self._scores(b, q, k)
        mask: Value | None = None
        if "value" in masks:
            mask = _insert_axis(b, masks["value"], -2)  # [B, 1, Tv]
        if kwargs["use_causal_mask"]:
            mask = _and(b, mask, _causal(b, q, -2, k, -2))
        if mask is not None:
            scores = b.op("where", [_keep(b, mask), scores, b.op("sub", [scores, _f32(b, 1.0e9)])])
        p = b.op("softmax", [scores], axis=-1)
        attn = b.op("dropout", [p, b.learning_phase()], rate=self.dropout, seed=self.seed) if self.dropout else p
        y = b.op("matmul", [attn, v])
        if "query" in masks:
            y = b.op("where", [_insert_axis(b, masks["query"], -1), y, _f32(b, 0.0)])
        return [y, p] if kwargs["return_attention_scores"] else y


class AdditiveAttention(Attention):
    """Keras AdditiveAttention (Bahdanau-style): scores = sum(scale * tanh(query + key), -1)."""

    def __init__(self, use_scale: bool = True, dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(use_scale=use_scale, dropout=dropout, **kwargs)

    def build(self, input_types: list[TensorType]) -> None:
        dim = input_types[0].shape[-1]
        if not isinstance(dim, int):
            raise ShapeError(f"AdditiveAttention needs a known query feature size, got {input_types[0]}")
        self.scale = self.add_weight("scale", (dim,), "glorot_uniform") if self.use_scale else None
        self.concat_score_weight = None

    def _scores(self, b: Builder, q: Value, k: Value) -> Value:
        t = b.op("tanh", [b.op("add", [_insert_axis(b, q, -2), _insert_axis(b, k, -3)])])
        if self.scale is not None:
            t = b.op("mul", [self.scale, t])
        return b.op("reduce_sum", [t], axes=(-1,))
