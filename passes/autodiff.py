"""Reverse-mode autodiff on the IR, and the rewrite that prepares a forward graph for it.

`gradients(graph, loss, wrt)` appends to `graph` the nodes computing d loss / d w for every w in
`wrt` (Params or other float values) and returns one gradient value per w (`None` when the loss
does not depend on w). It walks the nodes on a path from `wrt` to `loss` in reverse, calling each
op's registered gradient rule (`kcompile.ops.gradients`); a value used several times (a shared
weight) receives the sum of the gradients of all its uses. Ops without a rule are reported by
name, all at once, before anything is emitted.

`AutodiffPass(loss_index)`: graph -> the same graph whose outputs are `[loss, *gradients]`, one per
trainable param that the loss depends on (`pass.param_names` says which).

`SimplifyGradientsPass` (GRADIENT_RULES) uses identities of gradient graphs: the spatial sum of
a max-pooling gradient is the sum of the pooled gradient.

`DecomposeForTrainingPass` runs on a graph whose learning phase is folded to 1 and makes it
differentiable the way Keras trains:
- `dropout(x, 1) -> x * dropout_mask(x)` (one seeded mask, shared by forward and backward);
- `batch_norm(x, gamma, beta, mm, mv, 1)` -> batch statistics as Keras' `ops.moments`
  (mean, E[x^2] - mean^2: the biased variance), `y = (x - mean) * (rsqrt(var + eps) * gamma) + beta`,
  and the moving-statistic updates `moving * momentum + batch * (1 - momentum)`, appended to the
  graph's outputs and listed in `pass.updates` as (param, new value) pairs;
- `lstm`/`gru`/`simple_rnn` that depend on a trainable weight -> the recurrence unrolled over its
  static time length into primitive ops (`kcompile.ops.recurrent.unroll`), every output
  replaced. One with a symbolic time length stays, and its gradient rule refuses naming the layer
  and the fix (a fixed sequence length); one that no trainable weight reaches stays one ONNX node.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kcompile.ir.builder import Builder
from kcompile.ir.graph import Graph, Node, Param, Value
from kcompile.ir.types import FLOAT_DTYPES
from kcompile.ops.gradients import NO_GRADIENT, GradContext, GradientError
from kcompile.ops.recurrent import KINDS as RECURRENT
from kcompile.ops.recurrent import unroll
from kcompile.ops.registry import get_op

from .base import Pass, PassResult
from .rewrite import Constants, Match, P, Rule, RuleSet, V, apply_rules


def _is_float(v: Value) -> bool:
    return v.type.dtype in FLOAT_DTYPES


def gradients(graph: Graph, loss: Value, wrt: Sequence[Value], seed: Value | None = None) -> list[Value | None]:
    if not _is_float(loss):
        raise GradientError(f"cannot differentiate '{loss.name}': it is {loss.type}, not floating point")
    # Forward: the values that depend on some w (through ops that carry gradients).
    active: set[int] = {id(w) for w in wrt}
    for node in graph.nodes:
        if get_op(node.op).grad is NO_GRADIENT:
            continue
        if any(id(v) in active for v in node.inputs):
            active.update(id(o) for o in node.outputs if _is_float(o))
    # Backward: the active nodes that reach the loss, in reverse topological order.
    needed: set[int] = {id(loss)}
    path: list[Node] = []
    for node in reversed(graph.nodes):
        if any(id(o) in needed and id(o) in active for o in node.outputs):
            path.append(node)
            needed.update(id(v) for v in node.inputs)
    missing: dict[str, list[str]] = {}
    for node in path:
        if get_op(node.op).grad is None:
            missing.setdefault(node.op, []).append(node.outputs[0].name if node.outputs else node.op)
    if missing:
        detail = "; ".join(
            f"'{op}' (used by {', '.join(uses[:3])}{', ...' if len(uses) > 3 else ''})"
            for op, uses in sorted(missing.items())
        )
        raise GradientError(f"no gradient rule for op(s) {', '.join(sorted(missing))}: {detail}")

    b = Builder(graph)
    if seed is None:
        if not loss.type.is_static:
            raise GradientError(f"the loss '{loss.name}' must have a static shape (a scalar), got {loss.type}")
        seed = b.constant(np.ones(tuple(int(d) for d in loss.type.shape), loss.type.dtype), loss.type.dtype)
    grads: dict[int, Value] = {id(loss): seed}
    for node in path:
        douts = [grads.get(id(o)) for o in node.outputs]
        if all(d is None for d in douts):
            continue
        wants = [id(v) in active and _is_float(v) for v in node.inputs]
        rule = get_op(node.op).grad
        assert rule is not None
        with b.scope("grad"), b.scope(node.scope), b.loc(node.loc), b.device(node.device):
            results = rule(GradContext(b, wants), node, douts)
        if len(results) != len(node.inputs):
            raise GradientError(
                f"the gradient rule of '{node.op}' gave {len(results)} gradients for {len(node.inputs)} inputs"
            )
        for v, g, want in zip(node.inputs, results, wants, strict=True):
            if g is None or not want:
                continue
            _check(node, v, g)
            prev = grads.get(id(v))
            grads[id(v)] = g if prev is None else b.op("add", [prev, g])
    return [grads.get(id(w)) for w in wrt]


def _check(node: Node, v: Value, g: Value) -> None:
    ok = g.type.dtype == v.type.dtype and g.type.rank == v.type.rank
    ok = ok and all(
        p == q or not isinstance(p, int) or not isinstance(q, int)
        for p, q in zip(g.type.shape, v.type.shape, strict=True)
    )
    if not ok:
        raise GradientError(
            f"the gradient rule of '{node.op}' gave {g.type} for its input '{v.name}' of type {v.type}", node.loc
        )


class AutodiffPass(Pass):
    name = "autodiff"

    def __init__(self, loss_index: int = 0, wrt: Sequence[Param] | None = None) -> None:
        self.loss_index = loss_index
        self.wrt = wrt
        self.param_names: list[str] = []

    def run(self, graph: Graph) -> PassResult:
        loss = graph.outputs[self.loss_index]
        wrt = list(self.wrt) if self.wrt is not None else [p for p in graph.params if p.trainable]
        grads = gradients(graph, loss, wrt)
        pairs = [(w, g) for w, g in zip(wrt, grads, strict=True) if g is not None]
        self.param_names = [w.name for w, _ in pairs]
        graph.outputs = [loss, *(g for _, g in pairs)]
        return PassResult(graph, True, {"gradients": len(pairs), "without_gradient": len(wrt) - len(pairs)})


def _phase(v: Value) -> bool | None:
    node = v.producer
    return bool(node.attrs["value"]) if node is not None and node.op == "constant" else None


class DecomposeForTrainingPass(Pass):
    name = "decompose-for-training"

    def __init__(self) -> None:
        self.updates: list[tuple[Param, Value]] = []

    def run(self, graph: Graph) -> PassResult:
        old = graph.nodes
        graph.nodes = []
        b = Builder(graph)
        stats = {"dropout": 0, "batch_norm": 0, "recurrent": 0}
        subst: dict[int, Value] = {}
        # Values a trainable weight reaches: only recurrences among them need unrolling.
        active: set[int] = {id(p) for p in graph.params if p.trainable}
        for node in old:
            node.inputs = [subst.get(id(v), v) for v in node.inputs]
            if any(id(v) in active for v in node.inputs):
                active.update(id(o) for o in node.outputs)
            if (
                node.op in RECURRENT
                and isinstance(node.inputs[0].type.shape[1], int)
                and any(id(v) in active for v in node.inputs)
            ):
                with b.scope(node.scope), b.loc(node.loc), b.device(node.device):
                    outs = unroll(b, node)
                for o, new_o in zip(node.outputs, outs, strict=True):
                    subst[id(o)] = new_o
                    if id(o) in active:
                        active.add(id(new_o))
                stats["recurrent"] += 1
                continue
            phase = _phase(node.inputs[-1]) if node.op in ("dropout", "batch_norm") and node.inputs else None
            if node.op == "dropout" and phase:
                with b.scope(node.scope), b.loc(node.loc), b.device(node.device):
                    new = self._dropout(b, node)
                stats["dropout"] += 1
            elif node.op == "batch_norm" and len(node.inputs) == 6 and phase:
                with b.scope(node.scope), b.loc(node.loc), b.device(node.device):
                    new = self._batch_norm(b, node)
                stats["batch_norm"] += 1
            else:
                graph.nodes.append(node)
                continue
            subst[id(node.outputs[0])] = new
            if id(node.outputs[0]) in active:
                active.add(id(new))
        graph.outputs = [subst.get(id(v), v) for v in graph.outputs] + [new for _, new in self.updates]
        graph.remove_dead()
        return PassResult(graph, any(stats.values()), {k: v for k, v in stats.items() if v})

    @staticmethod
    def _dropout(b: Builder, node: Node) -> Value:
        x = node.inputs[0]
        if node.attrs["rate"] == 0.0:
            return x
        mask = b.op("dropout_mask", [x], rate=node.attrs["rate"], seed=node.attrs["seed"])
        return b.op("mul", [x, mask])

    def _batch_norm(self, b: Builder, node: Node) -> Value:
        x, gamma, beta, mm, mv = node.inputs[:5]
        rank = x.type.rank
        axis = node.attrs["axis"] % rank
        dt = x.type.dtype
        others = tuple(i for i in range(rank) if i != axis)
        momentum = node.attrs["momentum"]

        def along(v: Value) -> Value:
            return v if axis == rank - 1 else b.op("reshape", [v], shape=(-1,) + (1,) * (rank - 1 - axis))

        def const(value: float) -> Value:
            return b.constant(np.array(value, dt), dt)

        mean = b.op("reduce_mean", [x], axes=others)
        var = b.op("sub", [b.op("reduce_mean", [b.op("mul", [x, x])], axes=others), b.op("mul", [mean, mean])])
        rsqrt = b.op("div", [const(1.0), b.op("sqrt", [b.op("add", [var, const(node.attrs["epsilon"])])])])
        scale = b.op("mul", [rsqrt, gamma])
        y = b.op("add", [b.op("mul", [b.op("sub", [x, along(mean)]), along(scale)]), along(beta)])
        for moving, batch in ((mm, mean), (mv, var)):
            if isinstance(moving, Param):
                new = b.op("add", [b.op("mul", [moving, const(momentum)]), b.op("mul", [batch, const(1.0 - momentum)])])
                self.updates.append((moving, new))
        return y


# Rewrites of gradient graphs (rules, run by `SimplifyGradientsPass`):
#     reduce_sum(max_pool_grad(x, dy), axes ⊇ spatial) -> reduce_sum(dy, axes)
# max_pool_grad hands each window's dy to exactly one element of x, so summing over every spatial
# position sums dy: a conv bias's gradient is read off the pooled gradient, a fraction of the size.
def _covers_spatial(m: Match) -> str | None:
    rank = m.root.inputs[0].type.rank
    axes = {a % rank for a in m.root.attrs["axes"]}
    return None if set(range(2, rank)) <= axes else "the sum keeps a spatial axis"


GRADIENT_RULES = RuleSet(
    "gradients",
    [
        Rule(
            "sum-of-max-pool-grad",
            P("reduce_sum", P("max_pool_grad", V("x"), V("dy"))),
            lambda m, b: b.op("reduce_sum", [m["dy"]], **m.root.attrs),
            check=_covers_spatial,
            allow_shared=True,  # the pooled gradient still flows on to the conv
        )
    ],
)


class SimplifyGradientsPass(Pass):
    """GRADIENT_RULES on a graph holding gradients (weights are values, not constants)."""

    name = "simplify-gradients"

    def run(self, graph: Graph) -> PassResult:
        stats = apply_rules(graph, (GRADIENT_RULES,), Constants(params=False))
        return PassResult(graph, stats.total > 0, dict(stats.applied))
