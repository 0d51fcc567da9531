"""Rewrites as data: a rule is (pattern, check, replacement); rule sets are run to a fixpoint by
one driver, `apply_rules`.

A pattern is a small tree of `P(op, *inputs)` (matching a node producing the value) and
`V(name)` leaves (matching any value, binding it by name). `P(...)` nodes are bound too when given
`name=`. The root pattern matches the node being visited. A non-root matched node whose output is
used outside the match makes the rule not apply (fusing it would duplicate work), unless the
rule allows it.

`check(m)` returns None when the rule applies, else the reason it does not (`"bias is not a
constant"`); a match whose nodes sit on different devices never applies. Reasons of rules that
matched structurally are kept for `--explain-rewrites`.
`replace(m, b)` emits the replacement through a Builder and returns the value(s) that take the
place of the root's output(s).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kcompile.ir.builder import Builder
from kcompile.ir.graph import Graph, Node, Param, Value


# Patterns ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class V:
    """A leaf: any value, bound to `name` (the same name twice must bind the same value)."""

    name: str


@dataclass(frozen=True)
class P:
    """A node whose op is `op` (or one of several), with inputs matching `inputs` in order."""

    op: str | tuple[str, ...]
    inputs: tuple[P | V, ...] = ()
    name: str | None = None
    any_inputs: bool = False  # match whatever the inputs are (they are not bound)

    def __init__(self, op: str | tuple[str, ...], *inputs: P | V, name: str | None = None, any_inputs: bool = False):
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "inputs", tuple(inputs))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "any_inputs", any_inputs)

    def ops(self) -> tuple[str, ...]:
        return (self.op,) if isinstance(self.op, str) else self.op


@dataclass
class Match:
    root: Node
    values: dict[str, Value] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    inner: list[Node] = field(default_factory=list)  # matched nodes other than the root
    consts: Constants | None = None

    def __getitem__(self, name: str) -> Value:
        return self.values[name]

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def const(self, name: str) -> np.ndarray | None:
        assert self.consts is not None
        return self.consts.value(self.values[name])


class Constants:
    """Which values are compile-time constants: `constant` nodes, and Params when `params` (the
    inference pipelines, where weights are frozen into the exported file)."""

    def __init__(self, params: bool) -> None:
        self.params = params

    def value(self, v: Value) -> np.ndarray | None:
        if isinstance(v, Param):
            return v.data if self.params else None
        if v.producer is not None and v.producer.op == "constant":
            return v.producer.attrs["value"]  # type: ignore[no-any-return]
        return None

    def is_const(self, v: Value) -> bool:
        return self.value(v) is not None


def _match(pat: P | V, v: Value, m: Match, is_root: bool) -> bool:
    if isinstance(pat, V):
        bound = m.values.get(pat.name)
        if bound is not None and bound is not v:
            return False
        m.values[pat.name] = v
        return True
    node = m.root if is_root else v.producer
    if node is None or node.op not in pat.ops():
        return False
    if not is_root and len(node.outputs) != 1:
        return False
    if pat.name:
        m.nodes[pat.name] = node
    if not is_root:
        m.inner.append(node)
    if pat.any_inputs:
        return True
    if len(pat.inputs) != len(node.inputs):
        return False
    return all(_match(p, x, m, False) for p, x in zip(pat.inputs, node.inputs, strict=True))


# Rules ---------------------------------------------------------------------------------------
Check = Callable[[Match], str | None]
Replace = Callable[[Match, Builder], Value | Sequence[Value]]


@dataclass
class Rule:
    name: str
    pattern: P
    replace: Replace
    check: Check | None = None
    allow_shared: bool = False
    doc: str = ""


@dataclass
class RuleSet:
    name: str
    rules: list[Rule]

    def by_root_op(self) -> dict[str, list[Rule]]:
        table: dict[str, list[Rule]] = {}
        for r in self.rules:
            for op in r.pattern.ops():
                table.setdefault(op, []).append(r)
        return table


@dataclass
class Explanation:
    rule: str
    node: str
    reason: str

    def __str__(self) -> str:
        return f"{self.rule} did not apply at {self.node}: {self.reason}"


@dataclass
class RewriteStats:
    applied: dict[str, int] = field(default_factory=dict)
    explanations: list[Explanation] = field(default_factory=list)
    sweeps: int = 0

    @property
    def total(self) -> int:
        return sum(self.applied.values())

    def then(self, later: RewriteStats) -> RewriteStats:
        """The stats of this rewrite followed by `later` on the same graph."""
        applied = dict(self.applied)
        for rule, n in later.applied.items():
            applied[rule] = applied.get(rule, 0) + n
        return RewriteStats(applied, [*self.explanations, *later.explanations], self.sweeps + later.sweeps)


def _node_label(node: Node) -> str:
    where = f" ({node.loc})" if node.loc else ""
    return f"{node.op} %{node.outputs[0].name if node.outputs else '?'}{where}"


def apply_rules(graph: Graph, rulesets: Sequence[RuleSet], consts: Constants, max_sweeps: int = 50) -> RewriteStats:
    """Apply the rules until none applies (or `max_sweeps`); returns per-rule counts."""
    stats = RewriteStats()
    table: dict[str, list[Rule]] = {}
    for rs in rulesets:
        for op, rules in rs.by_root_op().items():
            table.setdefault(op, []).extend(rules)
    for _ in range(max_sweeps):
        stats.sweeps += 1
        changed = False
        explained: list[Explanation] = []
        uses = _use_counts(graph)
        dead: set[int] = set()
        for node in list(graph.nodes):
            if id(node) in dead or not any(uses.get(id(o), 0) or o in graph.outputs for o in node.outputs):
                continue
            for rule in table.get(node.op, ()):
                m = Match(node, consts=consts)
                if not _match(rule.pattern, node.outputs[0] if node.outputs else Value("", None), m, True):  # type: ignore[arg-type]
                    continue
                if any(id(n) in dead for n in m.inner):
                    continue
                reason = _device_reason(m)
                if reason is None and not rule.allow_shared:
                    reason = _shared_reason(m, uses)
                if reason is None and rule.check is not None:
                    reason = rule.check(m)
                if reason is not None:
                    if m.inner:  # only near misses: a multi-node pattern matched structurally
                        explained.append(Explanation(rule.name, _node_label(node), reason))
                    continue
                _apply(graph, rule, m)
                stats.applied[rule.name] = stats.applied.get(rule.name, 0) + 1
                changed = True
                dead.add(id(node))
                uses = _use_counts(graph)
                break
        graph.remove_dead()
        stats.explanations = explained
        if not changed:
            break
    return stats


def _use_counts(graph: Graph) -> dict[int, int]:
    counts: dict[int, int] = {}
    for n in graph.nodes:
        for v in n.inputs:
            counts[id(v)] = counts.get(id(v), 0) + 1
    for v in graph.outputs:
        counts[id(v)] = counts.get(id(v), 0) + 1
    return counts


def _device_reason(m: Match) -> str | None:
    for n in m.inner:
        if n.device != m.root.device:
            return f"the match crosses devices ({n.device or 'unplaced'} -> {m.root.device or 'unplaced'})"
    return None


def _shared_reason(m: Match, uses: dict[int, int]) -> str | None:
    inner_ids = {id(n) for n in m.inner} | {id(m.root)}
    for n in m.inner:
        out = n.outputs[0]
        internal = sum(1 for user in [m.root, *m.inner] if id(user) in inner_ids for v in user.inputs if v is out)
        if uses.get(id(out), 0) > internal:
            return f"%{out.name} ({n.op}) has other users"
    return None


def _apply(graph: Graph, rule: Rule, m: Match) -> None:
    root = m.root
    sub = Builder(graph)
    start = len(graph.nodes)
    with sub.device(root.device), sub.loc(root.loc), _scoped(sub, root.scope):
        result = rule.replace(m, sub)
    new_nodes = graph.nodes[start:]
    del graph.nodes[start:]
    at = graph.nodes.index(root)
    graph.nodes[at:at] = new_nodes
    results = [result] if isinstance(result, Value) else list(result)
    for old, new in zip(root.outputs, results, strict=True):
        if new.type.dtype != old.type.dtype or new.type.rank != old.type.rank:
            raise AssertionError(f"rule {rule.name} changed the type of %{old.name}: {old.type} -> {new.type}")
        graph.replace_uses(old, new)


class _scoped:
    """Enter a Builder scope path (`a/b`) component by component."""

    def __init__(self, b: Builder, path: str) -> None:
        self.b, self.parts, self.stack = b, [p for p in path.split("/") if p], []  # type: ignore[var-annotated]

    def __enter__(self) -> None:
        for p in self.parts:
            cm = self.b.scope(p)
            cm.__enter__()
            self.stack.append(cm)

    def __exit__(self, *exc: Any) -> None:
        for cm in reversed(self.stack):
            cm.__exit__(*exc)


_SUFFIX = re.compile(r"_\d+$")  # what Graph.fresh_name appends to keep names unique


def new_const(b: Builder, data: np.ndarray, like: Value | None = None) -> Value:
    """A compile-time constant for a rewrite's result. Derived from a weight (`like` is a Param),
    it becomes a frozen Param named after that weight, so the ONNX initializer keeps the
    weight's scoped name; otherwise a `constant` node."""
    data = np.ascontiguousarray(data)
    if isinstance(like, Param):
        # One folded weight per value: the uses of a shared weight fold to one shared weight.
        base = _SUFFIX.sub("", like.name) if like.initializer == "folded" else like.name
        for p in b.graph.params:
            if (
                p.initializer == "folded"
                and _SUFFIX.sub("", p.name) == base
                and p.data.dtype == data.dtype
                and np.array_equal(p.data, data)
            ):
                return p
        return b.param(Param(b.graph.fresh_name(base), data, trainable=False, initializer="folded"))
    return b.constant(data)


def tidy_param_names(graph: Graph) -> None:
    """`conv2d/kernel_1` becomes `conv2d/kernel` again once the original weight is gone."""
    taken = {v.name for v in graph.values()}
    for p in graph.params:
        base = _SUFFIX.sub("", p.name)
        if base != p.name and p.initializer == "folded" and base not in taken:
            taken.discard(p.name)
            graph._names.discard(p.name)
            p.name = base
            taken.add(base)
            graph.claim_name(base)
