"""Recurrent ops: `lstm`, `gru`, `simple_rnn` over a whole sequence, one node each.

    lstm(x[N,T,I], w[1,4u,I], r[1,4u,u], b[1,8u], (h0[N,u], c0[N,u])?, mask[N,T]?) -> y, h, c
    gru(x, w[1,3u,I], r[1,3u,u], b[1,6u], h0[N,u]?, mask?)                        -> y, h
    simple_rnn(x, w[1,u,I], r[1,u,u], b[1,2u], h0[N,u]?, mask?)                    -> y, h

Weights are in ONNX's layout (gates [i, o, f, c] for the LSTM, [z, r, h] for the GRU; `b` is the
input bias then the recurrent bias); the Keras layers (`layers/recurrent.py`) produce them from
Keras' kernels with transposes, slices and concats that constant folding turns into frozen
weights. The data are batch-first and the time length may be symbolic. The cell equations are
Keras' (`keras/src/layers/rnn/{lstm,gru,simple_rnn}.py`):

    LSTM:  i, o, f = ra(.), c' = f * c + i * act(x Wc + h Rc + bc), h' = o * act(c')
    GRU:   z, r = ra(.); hh = act(x Wh + bWh + r * (h Rh + bRh))  (reset_after, ONNX linear_before_reset=1)
                         hh = act(x Wh + bWh + (r * h) Rh)        (not reset_after: bRh must be 0)
           h' = z * h + (1 - z) * hh
    RNN:   h' = act(x W + h R + b)

and so is the loop around them (`keras/src/backend/torch/rnn.py: rnn`):
- `go_backwards` processes x[:, ::-1] (and the mask reversed); the sequence output is in
  processing order, as Keras returns it, unless `output_order="time"` (what Bidirectional wants);
- with a mask, a masked step keeps the states and outputs the previous output (zeros before the
  first unmasked step), or zeros when `zero_output_for_mask`;
- y is the whole sequence [N,T,u] when `return_sequences`, else the last output [N,u].
An optional mask is the last input, announced by `masked=True` (so the states stay optional).

ONNX lowering: one ONNX LSTM/GRU/RNN node (time-major through transposes; `direction="reverse"`
for go_backwards). Without a mask that is all. ONNX's `sequence_lens` only expresses right
padding, so a mask is lowered by compaction: each row's unmasked steps are gathered to the front
(stable order, ScatterElements of a permutation + GatherElements), one ONNX recurrent node runs
with `sequence_lens` = the number of unmasked steps, and each step's Keras output is gathered back
from the last unmasked step at or before it (CumSum). Any mask, left padding and holes included,
stays one recurrent node over a symbolic time length, with no Loop or Scan.
Activations are those ONNX's recurrent ops take (see ACTIVATIONS); the layers refuse others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ShapeError
from ..ir.types import FLOAT_DTYPES, Dim, TensorType
from .registry import OPS, Attr, Infer, OnnxEmitter, OnnxLowering, OpDef, RefContext, Reference, register

# Keras activation name -> (kcompile op and attrs for the reference, ONNX RNN activation, alpha, beta).
# Exactly the Keras activations that ONNX's recurrent ops can apply inside the cell.
ACTIVATIONS: dict[str, tuple[str | None, dict[str, Any], str, float | None, float | None]] = {
    "tanh": ("tanh", {}, "Tanh", None, None),
    "sigmoid": ("sigmoid", {}, "Sigmoid", None, None),
    "relu": ("relu", {}, "Relu", None, None),
    "linear": (None, {}, "Affine", 1.0, 0.0),
    "hard_sigmoid": ("hard_sigmoid", {}, "HardSigmoid", 1.0 / 6.0, 0.5),  # relu6(x + 3) / 6
    "elu": ("elu", {"alpha": 1.0}, "Elu", 1.0, None),
    "softsign": ("softsign", {}, "Softsign", None, None),
    "softplus": ("softplus", {}, "Softplus", None, None),
    "leaky_relu": ("leaky_relu", {"alpha": 0.2}, "LeakyRelu", 0.2, None),
}
_ACT_NAMES = tuple(ACTIVATIONS)

# kind -> (gates, number of states, ONNX op type)
KINDS: dict[str, tuple[int, int, str]] = {"lstm": (4, 2, "LSTM"), "gru": (3, 1, "GRU"), "simple_rnn": (1, 1, "RNN")}


class _Ctx:
    training = False

    def rng(self, seed: int) -> np.random.Generator:  # pragma: no cover - activations draw nothing
        raise AssertionError


def _act_ref(name: str) -> Callable[[np.ndarray], np.ndarray]:
    op, attrs, *_ = ACTIVATIONS[name]
    if op is None:
        return lambda x: x
    opdef = OPS[op]
    full = opdef.check_attrs(attrs)
    assert opdef.reference is not None
    ref = opdef.reference
    return lambda x: ref(_Ctx(), [x], full)[0]


# shape rule ------------------------------------------------------------------------------------
def _split_inputs(kind: str, n: int, masked: bool) -> tuple[int, bool]:
    """How many initial states a node with n inputs has."""
    states = n - 4 - int(masked)
    want = KINDS[kind][1]
    if states not in (0, want):
        raise ShapeError(
            f"{kind} takes x, w, r, b, then {want} initial state(s) or none, then the mask if masked=True; "
            f"got {n} inputs (masked={masked})"
        )
    return states, masked


def _same(a: Dim, b: Dim) -> bool:
    return not (isinstance(a, int) and isinstance(b, int) and a != b)


def _infer(kind: str) -> Infer:
    gates, n_states, _ = KINDS[kind]

    def infer(types: list[TensorType], a: dict[str, Any]) -> list[TensorType]:
        x, w, r, b = types[:4]
        states, masked = _split_inputs(kind, len(types), a["masked"])
        if x.rank != 3 or x.dtype not in FLOAT_DTYPES:
            raise ShapeError(f"{kind} needs a floating-point input [batch, time, features], got {x}")
        if r.rank != 3 or not isinstance(r.shape[2], int):
            raise ShapeError(f"{kind} recurrent weights must be [1, {gates}u, u] with a static u, got {r}")
        u = r.shape[2]
        n, t = x.shape[0], x.shape[1]
        for name, v, want in (
            ("w", w, (1, gates * u, x.shape[2])),
            ("r", r, (1, gates * u, u)),
            ("b", b, (1, 2 * gates * u)),
        ):
            if v.dtype != x.dtype or v.rank != 3 - (name == "b") or not all(map(_same, v.shape, want)):
                raise ShapeError(f"{kind} weight {name} must be {x.dtype}{list(want)}, got {v}")
        for s in types[4 : 4 + states]:
            if s.dtype != x.dtype or s.rank != 2 or not _same(s.shape[0], n) or s.shape[1] != u:
                raise ShapeError(f"{kind} initial states must be {x.dtype}[{n}, {u}], got {s}")
        if masked:
            m = types[-1]
            if m.dtype != "bool" or m.rank != 2 or not _same(m.shape[0], n) or not _same(m.shape[1], t):
                raise ShapeError(f"{kind} mask must be bool[{n}, {t}], got {m}")
        y = x.with_shape((n, t, u) if a["return_sequences"] else (n, u))
        return [y] + [x.with_shape((n, u))] * n_states

    return infer


# reference -------------------------------------------------------------------------------------
Cell = Callable[[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray, np.ndarray], list[np.ndarray]]


def _cell(kind: str, a: dict[str, Any]) -> Cell:
    """One step: (x W + Wb for this step, h, states, R, Rb) -> new states (h first)."""
    act = _act_ref(a["activation"])
    ract = _act_ref(a.get("recurrent_activation", "sigmoid"))

    def lstm(xw: np.ndarray, h: np.ndarray, s: list[np.ndarray], r: np.ndarray, rb: np.ndarray) -> list[np.ndarray]:
        u = h.shape[1]
        z = xw + h @ r.T + rb
        i, o, f = ract(z[:, :u]), ract(z[:, u : 2 * u]), ract(z[:, 2 * u : 3 * u])
        c = f * s[1] + i * act(z[:, 3 * u :])
        return [o * act(c), c]

    def gru(xw: np.ndarray, h: np.ndarray, s: list[np.ndarray], r: np.ndarray, rb: np.ndarray) -> list[np.ndarray]:
        u = h.shape[1]
        hr = h @ r[: 2 * u].T + rb[: 2 * u]
        zg, rg = ract(xw[:, :u] + hr[:, :u]), ract(xw[:, u : 2 * u] + hr[:, u:])
        if a["reset_after"]:
            hh = act(xw[:, 2 * u :] + rg * (h @ r[2 * u :].T + rb[2 * u :]))
        else:
            hh = act(xw[:, 2 * u :] + (rg * h) @ r[2 * u :].T + rb[2 * u :])
        return [zg * h + (1 - zg) * hh]

    def simple_rnn(
        xw: np.ndarray, h: np.ndarray, s: list[np.ndarray], r: np.ndarray, rb: np.ndarray
    ) -> list[np.ndarray]:
        return [act(xw + h @ r.T + rb)]

    return {"lstm": lstm, "gru": gru, "simple_rnn": simple_rnn}[kind]


def _reference(kind: str) -> Reference:
    gates, n_states, _ = KINDS[kind]

    def reference(ctx: RefContext, xs: list[np.ndarray], a: dict[str, Any]) -> list[np.ndarray]:
        x, w, r, b = xs[:4]
        states, masked = _split_inputs(kind, len(xs), a["masked"])
        dt = x.dtype
        n, t = x.shape[:2]
        u = r.shape[2]
        w, r, b = w[0], r[0], b[0]
        wb, rb = b[: gates * u], b[gates * u :]
        cell = _cell(kind, a)
        s = [np.asarray(v, dt) for v in xs[4 : 4 + states]] or [np.zeros((n, u), dt) for _ in range(n_states)]
        mask = xs[-1].astype(bool) if masked else np.ones((n, t), bool)
        order = range(t - 1, -1, -1) if a["go_backwards"] else range(t)
        # x @ W for every step at once, as Keras and ONNX runtimes do (the state path is per step).
        xw = (x @ w.T + wb).astype(dt)
        y_prev = np.zeros((n, u), dt)
        ys = []
        for step in order:
            m = mask[:, step : step + 1]
            new = [v.astype(dt) for v in cell(xw[:, step], s[0], s, r, rb)]
            s = [np.where(m, nv, ov) for nv, ov in zip(new, s, strict=True)]
            y_prev = np.where(m, new[0], np.zeros_like(y_prev) if a["zero_output_for_mask"] else y_prev)
            ys.append(y_prev)
        if a["return_sequences"]:
            if a["go_backwards"] and a["output_order"] == "time":
                ys = ys[::-1]
            y = np.stack(ys, axis=1) if ys else np.zeros((n, 0, u), dt)
        else:
            y = y_prev
        return [y.astype(dt)] + [v.astype(dt) for v in s]

    return reference


# ONNX lowering ---------------------------------------------------------------------------------
_INT64_MIN = np.iinfo(np.int64).min


def _i64(*v: int) -> np.ndarray:
    return np.array(v, np.int64)


def _flip(e: OnnxEmitter, v: str, axis: int) -> str:
    """v reversed along `axis` (any size, symbolic included)."""
    return e.emit("Slice", [v, e.const(_i64(-1)), e.const(_i64(_INT64_MIN)), e.const(_i64(axis)), e.const(_i64(-1))])[0]


def _onnx_activations(kind: str, a: dict[str, Any]) -> dict[str, Any]:
    names = [a["activation"]] if kind == "simple_rnn" else [a["recurrent_activation"], a["activation"]]
    if kind == "lstm":
        names.append(a["activation"])  # f (gates), g (cell input), h (output)
    funcs, alphas, betas = [], [], []
    for name in names:
        _, _, func, alpha, beta = ACTIVATIONS[name]
        funcs.append(func)
        # onnxruntime reads alpha/beta only for the functions that take them, in order.
        if alpha is not None:
            alphas.append(alpha)
        if beta is not None:
            betas.append(beta)
    out: dict[str, Any] = {"activations": funcs}
    if alphas:
        out["activation_alpha"] = alphas
    if betas:
        out["activation_beta"] = betas
    return out


def _lower(kind: str) -> OnnxLowering:
    _, n_states, op_type = KINDS[kind]

    def lower(e: OnnxEmitter, ins: list[str], a: dict[str, Any], types: list[TensorType]) -> list[str]:
        x, w, r, b = ins[:4]
        states, masked = _split_inputs(kind, len(ins), a["masked"])
        u = int(types[2].shape[2])
        dtype = np.dtype(types[0].dtype)
        init = ins[4 : 4 + states]
        attrs: dict[str, Any] = {"hidden_size": u, **_onnx_activations(kind, a)}
        if kind == "gru":
            attrs["linear_before_reset"] = int(a["reset_after"])
        axes0 = e.const(_i64(0), "axes0")
        onnx_init = [e.emit("Unsqueeze", [s, axes0])[0] for s in init]
        want_seq = a["return_sequences"]
        backwards = a["go_backwards"]

        def run(xb: str, seq_lens: str, direction: str, need_y: bool) -> list[str]:
            """The ONNX node on batch-first xb; returns (y [N,T,u] or "", final states [N,u]...)."""
            xt = e.emit("Transpose", [xb], perm=[1, 0, 2])[0]
            onnx_ins = [xt, w, r, b, seq_lens, *onnx_init]
            while not onnx_ins[-1]:
                onnx_ins.pop()  # trailing optional inputs left out
            outs = e.emit(
                op_type,
                onnx_ins,
                n_out=1 + n_states,
                direction=direction,
                **attrs,
            )
            y = ""
            if need_y:  # [T, 1, N, u] -> [N, T, u]
                y = e.emit("Transpose", [e.emit("Squeeze", [outs[0], e.const(_i64(1), "axes1")])[0]], perm=[1, 0, 2])[0]
            return [y] + [e.emit("Squeeze", [s, axes0])[0] for s in outs[1:]]

        if not masked:
            # direction="reverse" is go_backwards; its Y is in time order (Y[t] follows x[t]).
            y, *finals = run(x, "", "reverse" if backwards else "forward", want_seq)
            if not want_seq:
                return [finals[0], *finals]
            if backwards and a["output_order"] == "processed":
                y = _flip(e, y, 1)
            return [y, *finals]

        # Masked: compaction. Everything below is in processing order.
        mask = ins[-1]
        if backwards:
            x, mask = _flip(e, x, 1), _flip(e, mask, 1)
        one_ax = e.const(_i64(1), "axes1")
        mi = e.emit("Cast", [mask], to=7)[0]  # int64 [N, T]
        cum = e.emit("CumSum", [mi, e.const(np.array(1, np.int64), "axis1")])[0]  # unmasked steps so far
        lens = e.emit("ReduceSum", [mi, one_ax], keepdims=1)[0]  # [N, 1]
        one = e.const(np.array(1, np.int64), "one_i64")
        inv_cum = e.emit("CumSum", [e.emit("Sub", [one, mi])[0], e.const(np.array(1, np.int64), "axis1")])[0]
        # Where each step goes in the compacted order: unmasked steps first, in order, then the rest.
        dest = e.emit(
            "Where",
            [
                mask,
                e.emit("Sub", [cum, one])[0],
                e.emit("Sub", [e.emit("Add", [lens, inv_cum])[0], one])[0],
            ],
        )[0]
        nt = e.emit("Shape", [mi])[0]
        t_len = e.emit("Gather", [nt, e.const(np.array(1, np.int64), "one_i64")], axis=0)[0]
        steps = e.emit("Range", [e.const(np.array(0, np.int64), "zero_i64"), t_len, one])[0]
        grid = e.emit("Expand", [e.emit("Unsqueeze", [steps, axes0])[0], nt])[0]  # [N, T]: t
        src = e.emit("ScatterElements", [grid, dest, grid], axis=1)[0]  # src[n, dest[n, t]] = t
        src3 = e.emit("Expand", [e.emit("Unsqueeze", [src, e.const(_i64(2), "axes2")])[0], e.emit("Shape", [x])[0]])[0]
        xc = e.emit("GatherElements", [x, src3], axis=1)[0]
        seq_lens = e.emit("Cast", [e.emit("Squeeze", [lens, one_ax])[0]], to=6)[0]  # int32 [N]
        yc, *finals = run(xc, seq_lens, "forward", want_seq)
        any_step = e.emit("Greater", [lens, e.const(np.array(0, np.int64), "zero_i64")])[0]  # [N, 1]
        # A row with no unmasked step keeps its initial state (ONNX leaves it undefined-ish).
        if init:
            finals = [e.emit("Where", [any_step, f, s])[0] for f, s in zip(finals, init, strict=True)]
        if not want_seq:
            if a["zero_output_for_mask"]:
                last = e.emit("Gather", [mask, e.const(_i64(-1), "last")], axis=1)[0]  # [N, 1]
            else:
                last = any_step
            return [e.emit("Where", [last, finals[0], e.const(np.zeros((), dtype), "zero")])[0], *finals]
        # Output at step t: the compacted output of the last unmasked step <= t (its index is cum - 1).
        idx = e.emit("Max", [e.emit("Sub", [cum, one])[0], e.const(np.array(0, np.int64), "zero_i64")])[0]
        idx3 = e.emit("Expand", [e.emit("Unsqueeze", [idx, e.const(_i64(2), "axes2")])[0], e.emit("Shape", [yc])[0]])[0]
        y = e.emit("GatherElements", [yc, idx3], axis=1)[0]
        keep = (
            mask
            if a["zero_output_for_mask"]
            else e.emit("Greater", [cum, e.const(np.array(0, np.int64), "zero_i64")])[0]
        )
        zero = e.const(np.zeros((), dtype), "zero")
        y = e.emit("Where", [e.emit("Unsqueeze", [keep, e.const(_i64(2), "axes2")])[0], y, zero])[0]
        if backwards and a["output_order"] == "time":
            y = _flip(e, y, 1)
        return [y, *finals]

    return lower


# Training: the recurrence unrolled into primitive ops ------------------------------------------
def unroll(b: Any, node: Any) -> list[Any]:
    """The node's outputs rebuilt from primitive ops (matmul, slice, activations, where, concat),
    one cell per step of its static time length, so that every op on the path has a gradient
    rule (`DecomposeForTrainingPass` calls this for training). The arithmetic is `reference`'s,
    except that x W + Wb is one matmul per step (x_t W + Wb), not one for all steps: the gradient
    of a step's slice of a precomputed x W would pad a whole [N, T, gates*u] tensor per step."""
    kind, a = node.op, node.attrs
    gates, n_states, _ = KINDS[kind]
    x, w, r, bias = node.inputs[:4]
    states, masked = _split_inputs(kind, len(node.inputs), a["masked"])
    t_len = x.type.shape[1]
    if not isinstance(t_len, int):
        raise ShapeError(symbolic_length_message(node))
    if t_len == 0:
        raise ShapeError(f"cannot train {kind} over an empty sequence (time length 0)")
    dt = x.type.dtype
    u = int(r.type.shape[2])
    gu = gates * u

    def cols(v: Any, lo: int, hi: int) -> Any:
        return b.op("slice", [v], axes=(v.type.rank - 1,), starts=(lo,), ends=(hi,))

    def activation(name: str, v: Any) -> Any:
        op, attrs, *_ = ACTIVATIONS[name]
        return v if op is None else b.op(op, [v], **attrs)

    def step_of(v: Any, t: int) -> Any:  # v[:, t] of a [N, T, I] value
        s = b.op("slice", [v], axes=(1,), starts=(t,), ends=(t + 1,))
        return b.op("reshape", [s], shape=(0, *v.type.shape[2:]))

    act = a["activation"]
    ract = a.get("recurrent_activation", "sigmoid")
    w_t = b.op("transpose", [b.op("reshape", [w], shape=(gu, -1))], perm=(1, 0))  # [I, gu]
    r_t = b.op("transpose", [b.op("reshape", [r], shape=(gu, u))], perm=(1, 0))  # [u, gu]
    flat_b = b.op("reshape", [bias], shape=(2 * gu,))
    wb, rb = cols(flat_b, 0, gu), cols(flat_b, gu, 2 * gu)
    # Zero states as [1, u]: broadcasting against the first step's [N, .] values gives [N, u].
    zero = b.constant(np.zeros((1, u), dt), dt)
    s = list(node.inputs[4 : 4 + states]) or [zero] * n_states
    mask = node.inputs[-1] if masked else None
    if kind == "gru":  # recurrent weights of the z, r gates and of the candidate h
        r_zr, rb_zr, r_h, rb_h = cols(r_t, 0, 2 * u), cols(rb, 0, 2 * u), cols(r_t, 2 * u, gu), cols(rb, 2 * u, gu)
        one = b.constant(np.ones((), dt), dt)

    def cell(xt: Any, s: list[Any]) -> list[Any]:
        h = s[0]
        if kind == "lstm":
            z = b.op("add", [b.op("add", [xt, b.op("matmul", [h, r_t])]), rb])
            i, o, f = (activation(ract, cols(z, k * u, (k + 1) * u)) for k in range(3))
            c = b.op("add", [b.op("mul", [f, s[1]]), b.op("mul", [i, activation(act, cols(z, 3 * u, 4 * u))])])
            return [b.op("mul", [o, activation(act, c)]), c]
        if kind == "gru":
            hr = b.op("add", [b.op("matmul", [h, r_zr]), rb_zr])
            zg = activation(ract, b.op("add", [cols(xt, 0, u), cols(hr, 0, u)]))
            rg = activation(ract, b.op("add", [cols(xt, u, 2 * u), cols(hr, u, 2 * u)]))
            if a["reset_after"]:
                inner = b.op("mul", [rg, b.op("add", [b.op("matmul", [h, r_h]), rb_h])])
            else:
                inner = b.op("add", [b.op("matmul", [b.op("mul", [rg, h]), r_h]), rb_h])
            hh = activation(act, b.op("add", [cols(xt, 2 * u, 3 * u), inner]))
            return [b.op("add", [b.op("mul", [zg, h]), b.op("mul", [b.op("sub", [one, zg]), hh])])]
        return [activation(act, b.op("add", [b.op("add", [xt, b.op("matmul", [h, r_t])]), rb]))]

    order = range(t_len - 1, -1, -1) if a["go_backwards"] else range(t_len)
    y_prev = zero
    ys = []
    for t in order:
        new = cell(b.op("add", [b.op("matmul", [step_of(x, t), w_t]), wb]), s)
        if mask is None:
            s, y_prev = new, new[0]
        else:
            m = b.op("reshape", [b.op("slice", [mask], axes=(1,), starts=(t,), ends=(t + 1,))], shape=(0, 1))
            s = [b.op("where", [m, nv, ov]) for nv, ov in zip(new, s, strict=True)]
            y_prev = b.op("where", [m, new[0], zero if a["zero_output_for_mask"] else y_prev])
        ys.append(y_prev)
    if a["return_sequences"]:
        if a["go_backwards"] and a["output_order"] == "time":
            ys = ys[::-1]
        y = b.op("concat", [b.op("reshape", [v], shape=(0, 1, u)) for v in ys], axis=1)
    else:
        y = y_prev
    return [y, *s]


def symbolic_length_message(node: Any) -> str:
    where = f"layer '{node.scope}'" if node.scope else f"op '{node.op}'"
    return (
        f"cannot train {where}: training unrolls the recurrence over a fixed sequence length, and its "
        f"input {node.inputs[0].type} has a variable one; give the model's Input a fixed sequence "
        "length (Input(shape=(steps, features)), or Embedding's input Input(shape=(steps,)))"
    )


def _refuse_gradient(ctx: Any, node: Any, douts: Any) -> Any:
    from .gradients import GradientError

    if not isinstance(node.inputs[0].type.shape[1], int):
        raise GradientError(symbolic_length_message(node), node.loc)
    raise GradientError(f"cannot differentiate op '{node.op}': {_NO_GRAD}", node.loc)


# The op itself has no rule; training differentiates its unrolled form (`unroll`).
_NO_GRAD = "a recurrent op is differentiated through its unrolled form: run DecomposeForTrainingPass first"
_refuse_gradient.unsupported_reason = _NO_GRAD  # type: ignore[attr-defined]

_COMMON = (
    Attr("activation", "str", "tanh", choices=_ACT_NAMES),
    Attr("go_backwards", "bool", False),
    Attr("return_sequences", "bool", False),
    Attr("zero_output_for_mask", "bool", False),
    Attr("masked", "bool", False),
    Attr("output_order", "str", "processed", choices=("processed", "time")),
)
_DOCS = {
    "lstm": "Keras LSTM over x[N,T,I] (ONNX-layout weights [i,o,f,c]); outputs y, final h, final c",
    "gru": "Keras GRU over x[N,T,I] (reset_after = ONNX linear_before_reset); outputs y, final h",
    "simple_rnn": "Keras SimpleRNN over x[N,T,I]; outputs y, final h",
}
_STATE_INPUTS = {"lstm": ("initial_h?", "initial_c?"), "gru": ("initial_h?",), "simple_rnn": ("initial_h?",)}

for _kind, (_gates, _n_states, _) in KINDS.items():
    _attrs: tuple[Attr, ...] = _COMMON
    if _kind != "simple_rnn":
        _attrs += (Attr("recurrent_activation", "str", "sigmoid", choices=_ACT_NAMES),)
    if _kind == "gru":
        _attrs += (Attr("reset_after", "bool", True),)
    register(
        OpDef(
            _kind,
            inputs=("x", "w", "r", "b", *_STATE_INPUTS[_kind], "mask?"),
            attrs=_attrs,
            infer=_infer(_kind),
            reference=_reference(_kind),
            onnx=_lower(_kind),
            grad=_refuse_gradient,
            doc=_DOCS[_kind],
            num_outputs=1 + _n_states,
        )
    )
