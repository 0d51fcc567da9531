"""SimplifyPass: algebraic no-ops and chains, as rules.

identity(x)                          -> x
transpose(x, identity perm)          -> x
transpose(transpose(x, p), q)        -> transpose(x, p[q])     (-> x when that is the identity)
reshape(reshape(x, s), t)            -> reshape(x, t)          (when t's copied dims survive s)
reshape(x, s) with type(x) == result -> x                      (same dims, so same layout)
cast(x, to=dtype(x))                 -> x
add(x, 0), sub(x, 0), mul(x, 1), div(x, 1) with a constant not widening x -> x
"""

from __future__ import annotations

import numpy as np

from kcompile.ir.builder import Builder
from kcompile.ir.graph import Graph, Value
from kcompile.ir.types import broadcast_shapes

from .base import Pass, PassResult
from .rewrite import Constants, Match, P, Rule, RuleSet, V, apply_rules


def compose(p: tuple[int, ...], q: tuple[int, ...]) -> tuple[int, ...]:
    """transpose(transpose(x, p), q) == transpose(x, compose(p, q))."""
    return tuple(p[i] for i in q)


def _is_identity(perm: tuple[int, ...]) -> bool:
    return perm == tuple(range(len(perm)))


def _transpose_pair(m: Match, b: Builder) -> Value:
    perm = compose(m.node("inner").attrs["perm"], m.root.attrs["perm"])
    return m["x"] if _is_identity(perm) else b.op("transpose", [m["x"]], perm=perm)


def _reshape_chain_check(m: Match) -> str | None:
    x, mid = m["x"], m.node("inner").outputs[0]
    for i, s in enumerate(m.root.attrs["shape"]):
        if s == 0 and (i >= x.type.rank or mid.type.shape[i] != x.type.shape[i]):
            return f"dimension {i} copied by the outer reshape is changed by the inner one"
    return None


def _neutral(value: float):  # type: ignore[no-untyped-def]
    def check(m: Match) -> str | None:
        c = m.const("c")
        if c is None:
            return "the other operand is not a constant"
        if not np.all(c == value):
            return f"the constant is not {value:g} everywhere"
        if broadcast_shapes(m["x"].type.shape, m["c"].type.shape) != m["x"].type.shape:
            return "the constant broadcasts x to a larger shape"
        return None

    return check


SIMPLIFY = RuleSet(
    "simplify",
    [
        Rule("remove-identity", P("identity", V("x")), lambda m, b: m["x"]),
        Rule(
            "remove-identity-transpose",
            P("transpose", V("x")),
            lambda m, b: m["x"],
            check=lambda m: None if _is_identity(m.root.attrs["perm"]) else "the permutation moves axes",
        ),
        Rule(
            "merge-transposes",
            P("transpose", P("transpose", V("x"), name="inner")),
            _transpose_pair,
            allow_shared=True,  # a transpose is cheap to duplicate, and the pair often cancels
        ),
        Rule(
            "merge-reshapes",
            P("reshape", P("reshape", V("x"), name="inner")),
            lambda m, b: b.op("reshape", [m["x"]], shape=m.root.attrs["shape"]),
            check=_reshape_chain_check,
            allow_shared=True,
        ),
        Rule(
            "remove-noop-reshape",
            P("reshape", V("x")),
            lambda m, b: m["x"],
            # Equal types (equal symbols denote equal sizes) make a row-major reshape the identity.
            check=lambda m: None if m["x"].type == m.root.outputs[0].type else "the reshape changes the shape",
        ),
        Rule(
            "remove-noop-cast",
            P("cast", V("x")),
            lambda m, b: m["x"],
            check=lambda m: None if m.root.attrs["to"] == m["x"].type.dtype else "the cast changes the dtype",
        ),
        Rule("add-zero", P("add", V("x"), V("c")), lambda m, b: m["x"], check=_neutral(0.0)),
        Rule("sub-zero", P("sub", V("x"), V("c")), lambda m, b: m["x"], check=_neutral(0.0)),
        Rule("mul-one", P("mul", V("x"), V("c")), lambda m, b: m["x"], check=_neutral(1.0)),
        Rule("div-one", P("div", V("x"), V("c")), lambda m, b: m["x"], check=_neutral(1.0)),
    ],
)


class SimplifyPass(Pass):
    name = "simplify"
    rulesets = (SIMPLIFY,)

    def __init__(self, constant_params: bool = True) -> None:
        self.consts = Constants(params=constant_params)
        self.explanations: list[str] = []

    def run(self, graph: Graph) -> PassResult:
        stats = apply_rules(graph, self.rulesets, self.consts)
        self.explanations = [str(e) for e in stats.explanations]
        return PassResult(graph, stats.total > 0, dict(stats.applied))
